//! Database access: a pool, and thin calls of extension functions.
use crate::{Error, Result};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// A pool of at most `max_connections`, checked to reach a database with the extension.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?.application_name("entitlements-worker");
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await?;
    extension_version(&pool).await?;
    tracing::info!("connected to the database");
    Ok(pool)
}

/// The installed extension's version; refused when it is older than this worker (built
/// from the same release: the workspace version), whose SQL calls it may not have.
pub async fn extension_version(pool: &PgPool) -> Result<String> {
    let installed =
        sqlx::query_scalar::<_, String>("select extversion from pg_extension where extname = 'pg_entitlements'")
            .fetch_optional(pool)
            .await?
            .ok_or(Error::ExtensionMissing)?;
    let needed = env!("CARGO_PKG_VERSION");
    if older(&installed, needed) {
        return Err(Error::ExtensionOutdated { installed, needed });
    }
    Ok(installed)
}

/// Is version `a` older than `b` (dotted numbers; a part that is not a number counts as 0)?
fn older(a: &str, b: &str) -> bool {
    let parts = |v: &str| v.split('.').map(|p| p.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>();
    parts(a) < parts(b)
}

pub async fn apply_catalog_file(pool: &PgPool, path: &Path) -> Result<serde_json::Value> {
    let shown = path.display().to_string();
    let text = tokio::fs::read_to_string(path).await.map_err(|source| Error::Io { path: shown.clone(), source })?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Json { path: shown, source })?;
    let changes = sqlx::query_scalar::<_, serde_json::Value>("select entitlements.apply_catalog($1)")
        .bind(doc)
        .fetch_one(pool)
        .await?;
    Ok(changes)
}

pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("select 1").execute(pool).await.is_ok()
}

/// The latest run of each task by any worker (skipped runs left out), as a JSON object
/// keyed by task.
pub async fn latest_task_runs(pool: &PgPool) -> Result<serde_json::Value> {
    let v = sqlx::query_scalar::<_, serde_json::Value>(
        "select coalesce(jsonb_object_agg(task, jsonb_build_object(
                    'outcome', outcome, 'finished_at', finished_at, 'rows_touched', rows_touched,
                    'error', error, 'worker', worker)), '{}')
           from (select distinct on (task) * from entitlements.task_runs
                  where outcome <> 'skipped' order by task, started_at desc) latest",
    )
    .fetch_one(pool)
    .await?;
    Ok(v)
}

/// Stripe events that failed `settings.stripe_max_attempts` times and wait for an admin
/// (`entitlements.stripe_retry_event`).
pub async fn stripe_dead_letters(pool: &PgPool) -> Result<i64> {
    let n = sqlx::query_scalar::<_, i64>("select count(*) from entitlements.stripe_events where dead_at is not null")
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// Deliveries pending and dead per channel (`entitlements.delivery_stats`):
/// `{"pending": {"webhook": n, "email": n}, "dead": {...}}`.
pub async fn delivery_stats(pool: &PgPool) -> Result<serde_json::Value> {
    let v = sqlx::query_scalar::<_, serde_json::Value>("select entitlements.delivery_stats()").fetch_one(pool).await?;
    Ok(v)
}

/// Open security alerts per severity (`entitlements.open_alert_counts`).
pub async fn open_alert_counts(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query_as::<_, (String, i64)>("select severity, open from entitlements.open_alert_counts()")
        .fetch_all(pool)
        .await?;
    Ok(rows)
}

/// Counts a refusal the worker saw for the security rules (`entitlements.record_signal`).
pub async fn record_signal(pool: &PgPool, kind: &str, subject: &str, detail: &str) -> Result<()> {
    sqlx::query("select entitlements.record_signal($1, $2, $3)")
        .bind(kind)
        .bind(subject)
        .bind(detail)
        .execute(pool)
        .await?;
    Ok(())
}

/// LISTEN on `channel` until `shutdown`, waking `wake` on every notification. On a
/// connection of its own (outside the pool, whose connections are budgeted in context.rs);
/// a lost connection is re-established and also wakes (notifications may have been missed
/// meanwhile; the waiter reads the table, which is the truth, not the payload).
pub async fn listen(
    url: &str,
    channel: &str,
    wake: std::sync::Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut listener: Option<sqlx::postgres::PgListener> = None;
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let Some(l) = listener.as_mut() else {
            match connect_listener(url, channel).await {
                Ok(l) => {
                    listener = Some(l);
                    wake.notify_one();
                }
                Err(e) => {
                    tracing::warn!(%channel, error = %Error::from(e), "LISTEN failed; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
            continue;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = l.try_recv() => match received {
                Ok(_) => wake.notify_one(),
                Err(e) => {
                    tracing::warn!(%channel, error = %Error::from(e), "LISTEN connection lost; reconnecting");
                    listener = None;
                }
            },
        }
    }
}

async fn connect_listener(url: &str, channel: &str) -> std::result::Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut l = sqlx::postgres::PgListener::connect(url).await?;
    l.listen(channel).await?;
    Ok(l)
}

/// A lease of the extension (`entitlements.take_lease`): outside work one worker does at a
/// time, held as a row with an expiry rather than by a transaction left open.
pub struct Lease {
    pub name: String,
    /// Unique per attempt, so two tasks of one worker never share a lease.
    pub holder: String,
    pub ttl_seconds: u32,
}

impl Lease {
    pub fn new(name: impl Into<String>, worker: &str, ttl_seconds: u32) -> Lease {
        Lease { name: name.into(), holder: format!("{worker}:{}", uuid::Uuid::new_v4()), ttl_seconds }
    }

    /// Take it, or renew it when held already; false when another holder has it.
    pub async fn take(&self, pool: &PgPool) -> Result<bool> {
        let taken = sqlx::query_scalar("select entitlements.take_lease($1, $2, make_interval(secs => $3))")
            .bind(&self.name)
            .bind(&self.holder)
            .bind(f64::from(self.ttl_seconds))
            .fetch_one(pool)
            .await?;
        Ok(taken)
    }

    /// Give it back; if this fails, it expires.
    pub async fn release(&self, pool: &PgPool) {
        let _ = sqlx::query("select entitlements.release_lease($1, $2)")
            .bind(&self.name)
            .bind(&self.holder)
            .execute(pool)
            .await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare_by_number() {
        assert!(super::older("0.1.0", "0.2.0"));
        assert!(super::older("0.2.0", "0.10.0"));
        assert!(!super::older("0.2.0", "0.2.0"));
        assert!(!super::older("0.3.0", "0.2.0"));
    }
}

/// What the extension made of a failed attempt of leased work (`entitlements.failure`, from
/// `delivery_failed` and `provision_failed`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failure {
    /// Recorded; tried again in this many seconds.
    Retry(f64),
    /// Recorded for the last time: dead or failed until an admin retries it.
    Final,
    /// Not recorded: the lease had run out, and another worker may hold the work now.
    LeaseLost,
}

impl Failure {
    /// From the row's outcome and the seconds until its next attempt.
    pub fn from_row(outcome: &str, retry_in: Option<f64>) -> Result<Failure> {
        match (outcome, retry_in) {
            ("retry", Some(secs)) => Ok(Failure::Retry(secs)),
            ("final", _) => Ok(Failure::Final),
            ("lease_lost", _) => Ok(Failure::LeaseLost),
            _ => Err(Error::Database(sqlx::Error::Protocol(format!("unexpected failure outcome {outcome:?}")))),
        }
    }
}
