//! Prometheus metrics through the `metrics` facade: every metric name is a constant here,
//! described once in `describe`; modules record with `metrics::counter!(metrics::NAME, ...)`
//! (the facade's macros with our constants) and it shows on `GET /metrics`.
use crate::{Error, Result};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::time::Duration;

// Scheduled tasks (label `task`).
/// Counter, by `task` and `outcome` (ok, error, skipped).
pub const TASK_RUNS: &str = "entitlements_task_runs_total";
/// Histogram, seconds, by `task`.
pub const TASK_DURATION: &str = "entitlements_task_duration_seconds";
/// Counter, by `task`.
pub const TASK_ROWS_TOUCHED: &str = "entitlements_task_rows_touched_total";
/// Gauge, by `task`.
pub const TASK_CONSECUTIVE_FAILURES: &str = "entitlements_task_consecutive_failures";
/// Gauge, Unix seconds, by `task`.
pub const TASK_LAST_SUCCESS: &str = "entitlements_task_last_success_timestamp_seconds";

// From the latest health_snapshot run.
/// Gauge, by `status`.
pub const SUBSCRIPTIONS: &str = "entitlements_subscriptions";
pub const SUBSCRIPTIONS_TO_TIDY: &str = "entitlements_subscriptions_to_tidy";

/// Gauge, 1 or 0.
pub const DATABASE_UP: &str = "entitlements_database_up";

// Stripe webhooks.
/// Counter, by `duplicate` (true, false).
pub const WEBHOOKS_RECEIVED: &str = "entitlements_webhooks_received_total";
/// Counter, by `reason` (signature::Refusal::reason, and oversized, unreadable,
/// malformed_event, not_configured, database).
pub const WEBHOOKS_REFUSED: &str = "entitlements_webhooks_refused_total";
/// Counter, by `outcome` (the first word of stripe_apply_event's answer).
pub const WEBHOOKS_APPLIED: &str = "entitlements_webhooks_applied_total";
pub const WEBHOOKS_FAILED: &str = "entitlements_webhooks_failed_total";
/// Histogram, seconds.
pub const WEBHOOK_APPLY_LAG: &str = "entitlements_webhook_apply_lag_seconds";
pub const WEBHOOKS_DEAD_LETTERS: &str = "entitlements_webhooks_dead_letters";

// Kubernetes provisioning (provision/).
/// Gauge: servers not converged, not failed, not terminated (entitlements.provision_stats).
pub const PROVISION_QUEUE_DEPTH: &str = "entitlements_provision_queue_depth";
/// Gauge, by `phase`.
pub const SERVERS: &str = "entitlements_servers";
/// Counter: attempts recorded with entitlements.provision_failed.
pub const PROVISION_FAILURES: &str = "entitlements_provision_failures_total";
/// Counter, by `verb` (apply, delete) and `kind`: write calls to the Kubernetes API.
pub const PROVISION_APPLIES: &str = "entitlements_provision_applies_total";
/// Histogram, seconds: from a server's creation to the first time it is reported ready.
pub const SERVER_TIME_TO_READY: &str = "entitlements_server_time_to_ready_seconds";

// Delivery of outbox events (notify/).
/// Counter, by `channel` (webhook, email) and `outcome` (delivered, failed, dead, lease_lost,
/// unrecorded): attempts and what became of them.
pub const DELIVERIES: &str = "entitlements_deliveries_total";
/// Histogram, seconds, by `channel`: one attempt, from the request (or SMTP connect) to the
/// answer.
pub const DELIVERY_LATENCY: &str = "entitlements_delivery_latency_seconds";
/// Gauges by channel: deliveries waiting to be sent, and dead letters (read at each scrape).
pub const DELIVERIES_PENDING: &str = "entitlements_deliveries_pending";
pub const DELIVERIES_DEAD: &str = "entitlements_deliveries_dead";

// Security monitoring (sql/monitoring/).
/// Gauge, by `severity` (info, low, medium, high, critical): open alerts (read at each scrape).
pub const SECURITY_ALERTS_OPEN: &str = "entitlements_security_alerts_open";

/// Seconds a new server takes to be ready: image pulls, volumes, a database and a certificate.
const TIME_TO_READY_BUCKETS: &[f64] = &[5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0];

/// Seconds: maintenance tasks run from milliseconds to minutes.
const DURATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0];

/// Install the Prometheus recorder and return the handle /metrics renders. The `metrics`
/// facade's macros record into one process-wide recorder (there is no other way to reach
/// them from every task without threading a recorder through each call), so this succeeds
/// once per process: one `Context` per process.
pub fn install() -> Result<PrometheusHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(SERVER_TIME_TO_READY.into()), TIME_TO_READY_BUCKETS)
        .map_err(|e| Error::Metrics(e.to_string()))?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), DURATION_BUCKETS)
        .map_err(|e| Error::Metrics(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    ::metrics::set_global_recorder(recorder).map_err(|e| Error::Metrics(e.to_string()))?;
    describe();
    Ok(handle)
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(TASK_RUNS, "Maintenance task runs by task and outcome (ok, error, skipped).");
    describe_histogram!(TASK_DURATION, Unit::Seconds, "Duration of task runs.");
    describe_counter!(TASK_ROWS_TOUCHED, "Rows changed by maintenance tasks.");
    describe_gauge!(TASK_CONSECUTIVE_FAILURES, "Failures in a row per task; 0 after a success.");
    describe_gauge!(TASK_LAST_SUCCESS, "Unix time of the last successful run per task.");
    describe_gauge!(SUBSCRIPTIONS, "Subscriptions by status, from the latest health_snapshot run.");
    describe_gauge!(
        SUBSCRIPTIONS_TO_TIDY,
        "Subscriptions whose stored status no longer grants by the rules (health_snapshot)."
    );
    describe_gauge!(DATABASE_UP, "1 when the last health check reached the database.");
    describe_counter!(WEBHOOKS_RECEIVED, "Stripe deliveries verified and stored (duplicate=true: already stored).");
    describe_counter!(WEBHOOKS_REFUSED, "Stripe deliveries refused, by reason; nothing was stored.");
    describe_counter!(WEBHOOKS_APPLIED, "Stripe events applied, by outcome.");
    describe_counter!(WEBHOOKS_FAILED, "Attempts to apply a Stripe event that failed (retried with backoff).");
    describe_histogram!(WEBHOOK_APPLY_LAG, Unit::Seconds, "From storing a Stripe event to applying it.");
    describe_gauge!(
        WEBHOOKS_DEAD_LETTERS,
        "Stripe events that failed every attempt and wait for entitlements.stripe_retry_event."
    );
    describe_gauge!(PROVISION_QUEUE_DEPTH, "Servers waiting to converge (not converged, failed or terminated).");
    describe_gauge!(SERVERS, "Servers by phase (entitlements.provision_stats).");
    describe_counter!(PROVISION_FAILURES, "Provisioning attempts that failed (retried with backoff in the database).");
    describe_counter!(PROVISION_APPLIES, "Write calls to the Kubernetes API, by verb and kind.");
    describe_counter!(
        DELIVERIES,
        "Delivery attempts of outbox events by channel and outcome (delivered, failed, dead, lease_lost, unrecorded)."
    );
    describe_histogram!(DELIVERY_LATENCY, Unit::Seconds, "Duration of one delivery attempt, by channel.");
    describe_gauge!(DELIVERIES_PENDING, "Notification deliveries waiting to be sent (due or backing off), by channel.");
    describe_gauge!(SECURITY_ALERTS_OPEN, "Open security alerts by severity (entitlements.open_alert_counts).");
    describe_gauge!(DELIVERIES_DEAD, "Notification deliveries dead until entitlements.retry_delivery, by channel.");
    describe_histogram!(
        SERVER_TIME_TO_READY,
        Unit::Seconds,
        "From a server's creation to the first time it was reported ready."
    );
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
