//! Events that only the passing of time causes (issue #11), with real worker processes: a
//! manual trial that ends while nothing touches it gets its trial.ending before the end and
//! its access.suspended after it, exactly once each, with two workers running the tasks.
use integration_tests::*;
use uuid::Uuid;

fn scheduled_worker(db: &TestDb, id: &str) -> tokio::process::Command {
    let mut c = worker_command();
    c.arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("ENTITLEMENTS_WORKER_ID", id)
        .env(
            "ENTITLEMENTS_SCHEDULE",
            "time_events=100ms,expire_subscriptions=100ms,correct_entitlements=off,health_snapshot=off,\
             prune_task_runs=off,usage_partitions=off,retention=off",
        )
        .env("ENTITLEMENTS_DELIVERY", "false");
    c
}

async fn told(db: &TestDb, customer: Uuid, kind: &str) -> i64 {
    sqlx::query_scalar("select count(*) from entitlements.outbox where customer_id = $1 and kind = $2")
        .bind(customer)
        .bind(kind)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn ok_runs(db: &TestDb, task: &str) -> i64 {
    sqlx::query_scalar("select count(*) from entitlements.task_runs where task = $1 and outcome = 'ok'")
        .bind(task)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_trial_that_ends_on_its_own_is_told_once_by_two_workers() {
    let db = TestDb::create("time_events_trial").await;
    let customer = Uuid::new_v4();
    // A manual trial ending in 10 seconds (time enough for the workers to start): within trial_ending_notice (3 days) from the start.
    let sub: Uuid = sqlx::query_scalar(
        "select entitlements.subscribe($1, 'pro', 'trialing', trial_end => clock_timestamp() + interval '10 seconds')",
    )
    .bind(customer)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(told(&db, customer, "trial.ending").await, 0, "nothing is told before a task runs");

    let a = Worker::start(scheduled_worker(&db, "worker-a")).await;
    let b = Worker::start(scheduled_worker(&db, "worker-b")).await;
    eventually(WAIT, "trial.ending", || async { (told(&db, customer, "trial.ending").await > 0).then_some(()) }).await;
    let live: bool = sqlx::query_scalar("select entitlements.has_feature($1, 'advanced_agents')")
        .bind(customer)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(live, "trial.ending comes while the trial still grants");
    eventually(WAIT, "access.suspended after the trial end", || async {
        (told(&db, customer, "access.suspended").await > 0).then_some(())
    })
    .await;
    // Both workers go on running both tasks; many more runs tell nothing more.
    let (events_runs, expire_runs) = (ok_runs(&db, "time_events").await, ok_runs(&db, "expire_subscriptions").await);
    eventually(WAIT, "ten more runs of each task", || async {
        (ok_runs(&db, "time_events").await >= events_runs + 10
            && ok_runs(&db, "expire_subscriptions").await >= expire_runs + 10)
            .then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;

    assert_eq!(told(&db, customer, "trial.ending").await, 1, "trial.ending once");
    assert_eq!(told(&db, customer, "access.suspended").await, 1, "access.suspended once");
    let (reason, ended): (String, bool) = sqlx::query_as(
        "select o.payload ->> 'reason', (o.payload ->> 'access_ended_at')::timestamptz = s.trial_end
           from entitlements.outbox o join entitlements.subscriptions s on s.id = $2
          where o.customer_id = $1 and o.kind = 'access.suspended'",
    )
    .bind(customer)
    .bind(sub)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((reason.as_str(), ended), ("trial_ended", true), "why, and as of the trial end");
    let workers: i64 = db
        .count(
            "select count(distinct worker) from entitlements.task_runs where task = 'time_events' and outcome = 'ok'",
        )
        .await;
    assert_eq!(workers, 2, "both workers ran the task");
}
