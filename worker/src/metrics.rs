//! Prometheus metrics through the `metrics` facade: any module records with
//! `metrics::counter!(...)` / `histogram!` / `gauge!` and it shows on `GET /metrics`.
use crate::{Error, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Seconds: maintenance tasks run from milliseconds to minutes.
const DURATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0];

/// Install the process-wide recorder once; later calls return the same handle.
pub fn install() -> Result<PrometheusHandle> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .map_err(|e| Error::Metrics(e.to_string()))?
        .install_recorder()
        .map_err(|e| Error::Metrics(e.to_string()))?;
    describe();
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    metrics::describe_counter!(
        "entitlements_task_runs_total",
        "Maintenance task runs by task and outcome (ok, error, skipped)."
    );
    metrics::describe_histogram!(
        "entitlements_task_duration_seconds",
        metrics::Unit::Seconds,
        "Duration of task runs."
    );
    metrics::describe_counter!("entitlements_task_rows_touched_total", "Rows changed by maintenance tasks.");
    metrics::describe_gauge!(
        "entitlements_task_consecutive_failures",
        "Failures in a row per task; 0 after a success."
    );
    metrics::describe_gauge!(
        "entitlements_task_last_success_timestamp_seconds",
        "Unix time of the last successful run per task."
    );
    metrics::describe_gauge!(
        "entitlements_subscriptions",
        "Subscriptions by status, from the latest health_snapshot run."
    );
    metrics::describe_gauge!(
        "entitlements_subscriptions_to_tidy",
        "Subscriptions whose stored status no longer grants by the rules (health_snapshot)."
    );
    metrics::describe_gauge!("entitlements_database_up", "1 when the last health check reached the database.");
}

/// The histogram buckets need periodic upkeep when no HTTP listener of the exporter runs.
pub async fn upkeep(handle: PrometheusHandle, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}
