//! The scheduler against a real database with real worker processes: two replicas never
//! run one task at the same time, and a failing task is retried with backoff and shows in
//! /healthz and /metrics.
use integration_tests::*;
use sqlx::Connection;

fn scheduled_worker(db: &TestDb, id: &str, schedule: &str) -> tokio::process::Command {
    // The housekeeping tasks (partitions, retention) stay out of these tests' way unless named.
    let mut schedule = schedule.to_owned();
    for quiet in ["usage_partitions", "retention", "time_events"] {
        if !schedule.contains(quiet) {
            schedule.push_str(&format!(",{quiet}=off"));
        }
    }
    let mut c = worker_command();
    c.arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("ENTITLEMENTS_WORKER_ID", id)
        .env("ENTITLEMENTS_SCHEDULE", schedule);
    c
}

/// Runs of `task` with this outcome.
async fn runs(db: &TestDb, task: &str, outcome: &str) -> i64 {
    sqlx::query_scalar("select count(*) from entitlements.task_runs where task = $1 and outcome = $2")
        .bind(task)
        .bind(outcome)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_workers_never_run_one_task_at_once() {
    let db = TestDb::create("sched_two_workers").await;
    let sub = db.ended_trial().await;

    // Hold the ended trial's row: the first expire_subscriptions run blocks on it, in flight
    // (holding the task's lock) for as long as this transaction stays open. Without the
    // per-task lock the other worker's runs would block on the row too, overlapping it.
    let mut blocker = db.session().await;
    let mut tx = blocker.begin().await.unwrap();
    sqlx::query("select 1 from entitlements.subscriptions where id = $1 for update")
        .bind(sub)
        .execute(&mut *tx)
        .await
        .unwrap();

    let schedule = "expire_subscriptions=100ms,correct_entitlements=100ms,health_snapshot=100ms";
    let a = Worker::start(scheduled_worker(&db, "worker-a", schedule)).await;
    let b = Worker::start(scheduled_worker(&db, "worker-b", schedule)).await;

    eventually(WAIT, "one expire_subscriptions run waits on the row", || async {
        (db.task_runs_waiting().await >= 1).then_some(())
    })
    .await;
    // The other worker keeps trying every 100 ms and is turned away each time.
    eventually(WAIT, "skipped expire_subscriptions runs", || async {
        (runs(&db, "expire_subscriptions", "skipped").await >= 3).then_some(())
    })
    .await;
    assert_eq!(
        db.task_runs_waiting().await,
        1,
        "only one run of the task is in flight, the other worker's are skipped"
    );
    // Still so after three more turned-away tries, with the blocked run in flight for 0.5 s.
    let skipped = runs(&db, "expire_subscriptions", "skipped").await;
    eventually(WAIT, "three more skipped runs while the run waits half a second", || async {
        let waited: f64 = sqlx::query_scalar(
            "select coalesce(max(extract(epoch from clock_timestamp() - query_start)), 0)::float8
               from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock' and query like '%run_task%'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (runs(&db, "expire_subscriptions", "skipped").await >= skipped + 3 && waited >= 0.5).then_some(())
    })
    .await;
    assert_eq!(db.task_runs_waiting().await, 1);
    tx.commit().await.unwrap();

    // The blocked run finishes; both keep running every task for a while.
    eventually(WAIT, "the blocked run is recorded", || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from entitlements.task_runs
              where task = 'expire_subscriptions' and outcome = 'ok' and rows_touched = 1",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (n == 1).then_some(())
    })
    .await;
    eventually(WAIT, "three ok runs by each worker", || async {
        let fewest: i64 = sqlx::query_scalar(
            "select min(n) from (
               select count(r.id) as n
                 from (values ('worker-a'), ('worker-b')) w (worker)
                 left join entitlements.task_runs r on r.worker = w.worker and r.outcome = 'ok'
                group by w.worker) c",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        (fewest >= 3).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;

    // No two recorded runs of one task overlap in time.
    let overlaps: Vec<(String, i64, i64)> = sqlx::query_as(
        "select a.task, a.id, b.id from entitlements.task_runs a
           join entitlements.task_runs b on b.task = a.task and b.id > a.id
          where a.outcome <> 'skipped' and b.outcome <> 'skipped'
            and b.started_at < a.finished_at and a.started_at < b.finished_at",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(overlaps.is_empty(), "overlapping runs: {overlaps:?}");

    let waited: f64 = sqlx::query_scalar(
        "select extract(epoch from finished_at - started_at)::float8 from entitlements.task_runs
          where task = 'expire_subscriptions' and rows_touched = 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(waited >= 0.5, "the blocked run was in flight while the other worker tried ({waited} s)");
    let status: String = sqlx::query_scalar("select status from entitlements.subscriptions where id = $1")
        .bind(sub)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "canceled");

    // Both replicas did real work, and nothing failed.
    let per_worker: Vec<(String, i64)> = sqlx::query_as(
        "select worker, count(*) from entitlements.task_runs where outcome = 'ok' group by worker order by worker",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        per_worker.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>(),
        ["worker-a", "worker-b"],
        "{per_worker:?}"
    );
    let errors: i64 = sqlx::query_scalar("select count(*) from entitlements.task_runs where outcome = 'error'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(errors, 0);
}

#[tokio::test]
async fn a_failing_task_is_retried_with_backoff_and_reported() {
    let db = TestDb::create("sched_failing").await;
    db.ended_trial().await;
    // Every update of a subscription fails, so expire_subscriptions fails.
    sqlx::raw_sql(
        "create function public.refuse() returns trigger language plpgsql as
           $$ begin raise exception 'refused by the test'; end $$;
         create trigger refuse before update on entitlements.subscriptions
           for each row execute function public.refuse();",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    // An hour's interval: every run after the first is a retry.
    let mut cmd = scheduled_worker(
        &db,
        "worker-f",
        "expire_subscriptions=1h,correct_entitlements=off,health_snapshot=off,prune_task_runs=off",
    );
    cmd.env("ENTITLEMENTS_RETRY_INITIAL", "200ms").env("ENTITLEMENTS_RETRY_MAX", "800ms");
    let w = Worker::start(cmd).await;

    let starts: Vec<f64> = eventually(WAIT, "four failed runs", || async {
        let starts: Vec<f64> = sqlx::query_scalar(
            "select extract(epoch from started_at)::float8 from entitlements.task_runs
              where task = 'expire_subscriptions' and outcome = 'error' order by started_at",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap();
        (starts.len() >= 4).then_some(starts)
    })
    .await;
    let gaps: Vec<f64> = starts.windows(2).map(|p| p[1] - p[0]).collect();
    // 200 ms, 400 ms, then capped at 800 ms (each at least that; the run itself adds a little).
    assert!(gaps[0] >= 0.19 && gaps[1] >= 0.39 && gaps[2] >= 0.79, "backoff doubles up to the cap: {gaps:?}");

    let (code, health) = w.get_json("/healthz").await;
    assert_eq!(code, 200, "the database is fine: {health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["failing_tasks"], serde_json::json!(["expire_subscriptions"]), "{health}");
    let task = &health["tasks"]["expire_subscriptions"];
    assert!(task["consecutive_failures"].as_u64().unwrap() >= 3, "{health}");
    assert!(task["last_error"].as_str().unwrap().contains("refused by the test"), "{health}");
    assert_eq!(health["recent_runs"]["expire_subscriptions"]["outcome"], "error", "{health}");

    let metrics = w.metrics().await;
    let failed =
        sample(&metrics, "entitlements_task_runs_total", &[("task", "expire_subscriptions"), ("outcome", "error")]);
    assert!(failed.unwrap_or(0.0) >= 3.0, "failures are counted:\n{metrics}");
    let streak = sample(&metrics, "entitlements_task_consecutive_failures", &[("task", "expire_subscriptions")]);
    assert!(streak.unwrap_or(0.0) >= 3.0, "the failure streak is a gauge:\n{metrics}");

    // Fixed: the next retry succeeds and health is ok again.
    sqlx::query("drop trigger refuse on entitlements.subscriptions").execute(&db.pool).await.unwrap();
    let health = eventually(WAIT, "the task recovers", || async {
        let (_, h) = w.get_json("/healthz").await;
        (h["status"] == "ok").then_some(h)
    })
    .await;
    assert_eq!(health["tasks"]["expire_subscriptions"]["last_outcome"], "ok", "{health}");
    assert_eq!(health["tasks"]["expire_subscriptions"]["consecutive_failures"], 0, "{health}");
    let metrics = w.metrics().await;
    assert_eq!(
        sample(&metrics, "entitlements_task_runs_total", &[("task", "expire_subscriptions"), ("outcome", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "entitlements_task_consecutive_failures", &[("task", "expire_subscriptions")]),
        Some(0.0)
    );
    assert!(w.log().contains("refused by the test"), "failures are logged");

    w.stop().await;
}

#[tokio::test]
async fn the_stripe_reconcile_is_scheduled_locked_and_recorded() {
    let db = TestDb::create("sched_stripe").await;
    let key = "sk_test_sched_KEY-NOT-IN-RECORDS";
    let stripe = LocalStripe::start(key).await;

    // While another worker holds the reconcile's lease, the scheduled runs are skipped.
    let mut holder = db.session().await;
    let leased: bool =
        sqlx::query_scalar("select entitlements.take_lease('task:reconcile_stripe', 'another-worker', '1 hour')")
            .fetch_one(&mut holder)
            .await
            .unwrap();
    assert!(leased);

    let mut cmd = scheduled_worker(&db, "worker-s", "reconcile_stripe=200ms,expire_subscriptions=off,correct_entitlements=off,health_snapshot=off,prune_task_runs=off");
    cmd.env("STRIPE_SECRET_KEY", key).env("STRIPE_API_BASE", &stripe.base);
    let w = Worker::start(cmd).await;
    eventually(WAIT, "skipped reconcile runs", || async {
        (runs(&db, "reconcile_stripe", "skipped").await >= 2).then_some(())
    })
    .await;
    assert_eq!(runs(&db, "reconcile_stripe", "ok").await, 0, "no reconcile ran while the lease was held elsewhere");
    let released: bool =
        sqlx::query_scalar("select entitlements.release_lease('task:reconcile_stripe', 'another-worker')")
            .fetch_one(&mut holder)
            .await
            .unwrap();
    assert!(released);

    eventually(WAIT, "a reconcile run", || async { (runs(&db, "reconcile_stripe", "ok").await >= 1).then_some(()) })
        .await;
    let details: serde_json::Value = sqlx::query_scalar(
        "select details from entitlements.task_runs where task = 'reconcile_stripe' and outcome = 'ok' limit 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(details["seen"], 0, "the reconcile's report is the run's details: {details}");
    let metrics = w.metrics().await;
    assert!(
        sample(&metrics, "entitlements_task_runs_total", &[("task", "reconcile_stripe"), ("outcome", "ok")])
            .unwrap_or(0.0)
            >= 1.0
    );
    w.stop().await;

    // An unreachable Stripe API: recorded as a failure (without the key) and in /healthz.
    let mut cmd = scheduled_worker(
        &db,
        "worker-s2",
        "reconcile_stripe=1h,expire_subscriptions=off,correct_entitlements=off,health_snapshot=off,prune_task_runs=off",
    );
    cmd.env("STRIPE_SECRET_KEY", key).env("STRIPE_API_BASE", format!("http://{}/", free_addr()));
    let w = Worker::start(cmd).await;
    let error: String = eventually(WAIT, "a failed reconcile run", || async {
        sqlx::query_scalar::<_, String>(
            "select error from entitlements.task_runs where task = 'reconcile_stripe' and outcome = 'error' limit 1",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    })
    .await;
    assert!(!error.contains(key), "{error}");
    let (_, health) = w.get_json("/healthz").await;
    assert_eq!(health["failing_tasks"], serde_json::json!(["reconcile_stripe"]), "{health}");
    let log = w.stop().await;
    assert!(!log.contains(key), "the key is not logged");
}
