//! The maintenance scheduler: one loop per configured task, each calling
//! `entitlements.run_task` on its interval. Replicas are safe because the extension takes an
//! advisory lock per task (the loser's run is recorded as `skipped`). A failed run is retried
//! after a backoff that doubles per failure (`retry_initial` .. `retry_max`), and shows in
//! /healthz (the `TaskBoard`) and /metrics. `reconcile_stripe` (scheduled only with a Stripe
//! secret key) runs in the worker under the same lock and is recorded in the same table.
//!
//! Which tasks exist, and how often each runs by default, is the extension's answer
//! (`entitlements.tasks()`), asked once connected; the worker adds only its own
//! `reconcile_stripe`.
use crate::config::{Config, RECONCILE_STRIPE};
use crate::db::Lease;
use crate::metrics::{
    SUBSCRIPTIONS, SUBSCRIPTIONS_TO_TIDY, TASK_CONSECUTIVE_FAILURES, TASK_DURATION, TASK_LAST_SUCCESS,
    TASK_ROWS_TOUCHED, TASK_RUNS,
};
use crate::{Context, Error, Result};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One row of `entitlements.task_runs`, as the extension returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRun {
    pub id: Option<i64>,
    pub task: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub rows_touched: i64,
    /// `ok`, `error` or `skipped` (another worker was running the same task).
    pub outcome: String,
    pub error: Option<String>,
    pub worker: Option<String>,
    pub details: Option<serde_json::Value>,
}

/// A task this worker can run and how often it runs unless configured otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownTask {
    pub name: String,
    pub every: Duration,
}

/// How often the worker's own `reconcile_stripe` runs unless configured otherwise.
const RECONCILE_EVERY: Duration = Duration::from_secs(3600);

/// Every task this worker can run: the extension's with their default intervals
/// (`entitlements.tasks()`), then its own `reconcile_stripe`.
pub async fn known_tasks(pool: &PgPool) -> Result<Vec<KnownTask>> {
    let rows: Vec<(String, f64)> =
        sqlx::query_as("select t.name, extract(epoch from t.every)::float8 from entitlements.tasks() t")
            .fetch_all(pool)
            .await?;
    let mut tasks: Vec<KnownTask> = rows
        .into_iter()
        .map(|(name, secs)| KnownTask { name, every: Duration::from_secs_f64(secs.max(1.0)) })
        .collect();
    tasks.push(KnownTask { name: RECONCILE_STRIPE.to_owned(), every: RECONCILE_EVERY });
    Ok(tasks)
}

/// Refuse a task name the worker cannot run, naming those it can.
pub fn check_task(task: &str, known: &[KnownTask], place: &'static str) -> Result<()> {
    if known.iter().any(|k| k.name == task) {
        return Ok(());
    }
    let names: Vec<&str> = known.iter().map(|k| k.name.as_str()).collect();
    Err(Error::UnknownTask { task: task.to_owned(), place, known: names.join(", ") })
}

/// The tasks to run and their intervals: every known task at its configured interval, else
/// its default one; `off` leaves it out, and so does a missing Stripe secret key for the
/// reconcile. A configured name that is not a known task is refused.
pub fn schedule(config: &Config, known: &[KnownTask]) -> Result<BTreeMap<String, Duration>> {
    for task in config.scheduler.intervals.keys() {
        check_task(task, known, " in the schedule")?;
    }
    let mut schedule = BTreeMap::new();
    for task in known {
        if task.name == RECONCILE_STRIPE && config.stripe.secret_key.is_none() {
            continue;
        }
        if let Some(interval) = config.scheduler.intervals.get(&task.name).copied().unwrap_or(Some(task.every)) {
            schedule.insert(task.name.clone(), interval);
        }
    }
    Ok(schedule)
}

/// Run one task now, the extension's or the worker's own, and return its recorded run (also
/// when the task failed: the failure is in `outcome`/`error`, and in the table).
pub async fn run_task(pool: &PgPool, config: &Config, task: &str) -> Result<TaskRun> {
    if task == RECONCILE_STRIPE {
        reconcile_stripe(pool, config).await
    } else {
        run_sql_task(pool, task, &config.worker_id).await
    }
}

/// Run one extension task now (`entitlements.run_task`) and return its recorded run.
pub async fn run_sql_task(pool: &PgPool, task: &str, worker: &str) -> Result<TaskRun> {
    let row: serde_json::Value = sqlx::query_scalar("select to_jsonb(r) from entitlements.run_task($1, $2) r")
        .bind(task)
        .bind(worker)
        .fetch_one(pool)
        .await?;
    serde_json::from_value(row).map_err(|e| Error::Unexpected(format!("run record from run_task: {e}")))
}

/// What /healthz shows per task, as seen by this worker.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskHealth {
    pub interval_seconds: f64,
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub last_finished_at: Option<String>,
    pub consecutive_failures: u32,
    pub runs: u64,
}

#[derive(Debug, Clone, Default)]
pub struct TaskBoard(Arc<Mutex<BTreeMap<String, TaskHealth>>>);

impl TaskBoard {
    pub fn snapshot(&self) -> BTreeMap<String, TaskHealth> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn update(&self, task: &str, f: impl FnOnce(&mut TaskHealth)) {
        if let Ok(mut m) = self.0.lock() {
            f(m.entry(task.to_owned()).or_default());
        }
    }
}

/// Start one loop per scheduled task on the context's tracker; they stop at shutdown after
/// finishing the run in flight.
pub fn spawn(ctx: &Context) {
    // Task names were checked against the extension's in Context::new.
    for (task, interval) in ctx.schedule.iter() {
        ctx.tasks.update(task, |h| h.interval_seconds = interval.as_secs_f64());
        ctx.tracker.spawn(task_loop(ctx.clone(), task.clone(), *interval));
    }
}

async fn task_loop(ctx: Context, task: String, interval: Duration) {
    tracing::info!(%task, interval_seconds = interval.as_secs_f64(), "scheduled");
    let mut delay = Duration::ZERO;
    let mut failures: u32 = 0;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
        // Not raced against shutdown: a run that started finishes (in-flight work).
        let ok = run_and_record(&ctx, &task).await;
        if ok {
            failures = 0;
            delay = interval;
        } else {
            failures = failures.saturating_add(1);
            delay = backoff(ctx.config.scheduler.retry_initial, ctx.config.scheduler.retry_max, failures);
            tracing::warn!(%task, failures, retry_in_seconds = delay.as_secs_f64(), "task failed; retrying");
        }
    }
    tracing::info!(%task, "scheduler stopped");
}

/// `initial * 2^(failures-1)`, capped at `max`.
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
    initial.saturating_mul(factor).min(max)
}

/// Run a task once, update metrics and the board; true unless it failed.
pub async fn run_and_record(ctx: &Context, task: &str) -> bool {
    // A run is background work: it waits rather than take the connections kept for intake.
    let permit = ctx.background.acquire().await;
    let started = Instant::now();
    let result = run_task(&ctx.pool, &ctx.config, task).await;
    drop(permit);
    let elapsed = started.elapsed().as_secs_f64();
    let (outcome, error, rows, finished_at) = match &result {
        Ok(run) => (run.outcome.clone(), run.error.clone(), run.rows_touched, run.finished_at.clone()),
        Err(e) => ("error".to_owned(), Some(e.to_string()), 0, None),
    };
    let task_label = task.to_owned();
    metrics::counter!(TASK_RUNS, "task" => task_label.clone(), "outcome" => outcome.clone()).increment(1);
    if outcome != "skipped" {
        metrics::histogram!(TASK_DURATION, "task" => task_label.clone()).record(elapsed);
        metrics::counter!(TASK_ROWS_TOUCHED, "task" => task_label.clone()).increment(rows.max(0) as u64);
    }
    if let Ok(run) = &result {
        if task == "health_snapshot" && run.outcome == "ok" {
            export_snapshot(run.details.as_ref());
        }
    }
    let failed = outcome == "error";
    ctx.tasks.update(task, |h| {
        h.runs += 1;
        h.last_outcome = Some(outcome.clone());
        h.last_finished_at = finished_at.or_else(|| Some(unix_now().to_string()));
        // A skipped run (another replica had the task) says nothing about failures.
        if failed {
            h.consecutive_failures += 1;
            h.last_error = error.clone();
        } else if outcome == "ok" {
            h.consecutive_failures = 0;
            h.last_error = None;
        }
        metrics::gauge!(TASK_CONSECUTIVE_FAILURES, "task" => task_label.clone()).set(h.consecutive_failures as f64);
    });
    if failed {
        tracing::error!(%task, error = error.as_deref().unwrap_or(""), "task failed");
    } else {
        if outcome == "ok" {
            metrics::gauge!(TASK_LAST_SUCCESS, "task" => task_label).set(unix_now());
        }
        tracing::info!(%task, %outcome, rows_touched = rows, seconds = elapsed, "task run");
    }
    !failed
}

/// The health snapshot's subscription counts as gauges. The snapshot counts every status
/// of `entitlements.subscription_statuses()`, zeros included, so a status that drops to zero
/// shows 0 rather than its last value, and the list of statuses stays the extension's.
fn export_snapshot(details: Option<&serde_json::Value>) {
    let Some(details) = details else { return };
    if let Some(by_status) = details["subscriptions_by_status"].as_object() {
        for (status, n) in by_status {
            metrics::gauge!(SUBSCRIPTIONS, "status" => status.clone()).set(n.as_f64().unwrap_or(0.0));
        }
    }
    if let Some(n) = details["subscriptions_to_tidy"].as_f64() {
        metrics::gauge!(SUBSCRIPTIONS_TO_TIDY).set(n);
    }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or_default()
}

/// The Stripe reconcile runs in the worker, one at a time across replicas under a lease
/// (`entitlements.take_lease`, renewed page by page; no transaction stays open while the
/// Stripe API answers), and is recorded in the same table as the SQL tasks.
async fn reconcile_stripe(pool: &PgPool, config: &Config) -> Result<TaskRun> {
    let lease = Lease::new(format!("task:{RECONCILE_STRIPE}"), &config.worker_id, 120);
    let started: String = sqlx::query_scalar("select clock_timestamp()::text").fetch_one(pool).await?;
    let (outcome, rows, error, details) = if !lease.take(pool).await? {
        ("skipped", 0, None, serde_json::json!({"reason": "another run of this task is in progress"}))
    } else {
        let result = crate::stripe::reconcile(pool, &config.stripe, Some(&lease)).await;
        lease.release(pool).await;
        match result {
            Ok(report) => {
                let details = serde_json::to_value(&report).unwrap_or_default();
                if report.failed > 0 {
                    let message =
                        format!("{} subscription(s) not applied: {}", report.failed, report.errors.join("; "));
                    ("error", report.rows_touched(), Some(message), details)
                } else {
                    ("ok", report.rows_touched(), None, details)
                }
            }
            Err(e) => ("error", 0, Some(e.to_string()), serde_json::json!({})),
        }
    };
    let run: serde_json::Value = sqlx::query_scalar(
        "insert into entitlements.task_runs as r (task, started_at, finished_at, rows_touched, outcome, error, worker, details)
         values ($1, $2::timestamptz, greatest($2::timestamptz, clock_timestamp()), $3, $4, $5, $6, $7)
         returning to_jsonb(r)",
    )
    .bind(RECONCILE_STRIPE)
    .bind(&started)
    .bind(rows.max(0))
    .bind(outcome)
    .bind(error)
    .bind(&config.worker_id)
    .bind(details)
    .fetch_one(pool)
    .await?;
    serde_json::from_value(run).map_err(|e| Error::Unexpected(format!("run record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Config {
        let argv = ["entitlements-worker", "--database-url", "postgres://db/x"].into_iter().chain(args.iter().copied());
        Config::from_cli(&crate::config::Cli::try_parse_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn the_schedule_is_the_extensions_tasks_with_their_intervals() {
        let s = Duration::from_secs;
        let task = |name: &str, every: Duration| KnownTask { name: name.to_owned(), every };
        let known = vec![
            task("expire_subscriptions", s(60)),
            task("health_snapshot", s(60)),
            task("brand_new", s(900)),
            task(RECONCILE_STRIPE, RECONCILE_EVERY),
        ];
        let c = config(&["--schedule", "health_snapshot=off,expire_subscriptions=10s", "--stripe-secret-key", "sk_x"]);
        let planned = schedule(&c, &known).unwrap();
        assert_eq!(
            planned.into_iter().collect::<Vec<_>>(),
            vec![
                ("brand_new".to_owned(), s(900)),
                ("expire_subscriptions".to_owned(), s(10)),
                (RECONCILE_STRIPE.to_owned(), s(3600)),
            ],
            "configured, off, a task at the extension's default, and the reconcile with a key"
        );

        let err = schedule(&config(&["--schedule", "defrag=1s"]), &known).unwrap_err();
        assert!(err.is_configuration());
        assert_eq!(
            err.to_string(),
            "unknown task \"defrag\" in the schedule (known: expire_subscriptions, health_snapshot, brand_new, \
             reconcile_stripe)"
        );
        if std::env::var_os("STRIPE_SECRET_KEY").is_none() {
            let c = config(&["--schedule", "expire_subscriptions=1m"]);
            assert!(!schedule(&c, &known).unwrap().contains_key(RECONCILE_STRIPE), "no key, no reconcile");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        assert_eq!(backoff(s(5), s(60), 1), s(5));
        assert_eq!(backoff(s(5), s(60), 2), s(10));
        assert_eq!(backoff(s(5), s(60), 4), s(40));
        assert_eq!(backoff(s(5), s(60), 5), s(60));
        assert_eq!(backoff(s(5), s(60), 500), s(60));
    }
}
