//! Metering under real concurrency: many sessions racing on one customer's last units
//! never overshoot, every limit of a feature binds together, an idempotency key sent by
//! many sessions at once counts once, counters equal the ledger, each usage threshold is
//! announced once however many sessions race across it, and concurrency slots
//! are shared across sessions and freed by commit and by a crashed backend.
use integration_tests::*;
use sqlx::{Connection, Executor};
use uuid::Uuid;

async fn used(db: &TestDb, customer: Uuid) -> f64 {
    sqlx::query_scalar("select (entitlements.check($1, 'api_requests')).used::float8")
        .bind(customer)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// `clients` sessions each make `attempts` consumes of one unit, each in its own
/// transaction that stays open briefly (so commits overlap). Returns (allowed, refused).
async fn race_to_consume(db: &TestDb, customer: Uuid, clients: usize, attempts: usize) -> (usize, usize) {
    let outcomes = race(clients, |_, start| {
        let url = db.url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            start.wait().await;
            let (mut ok, mut refused) = (0, 0);
            for _ in 0..attempts {
                conn.execute("begin").await.unwrap();
                let r = sqlx::query("select entitlements.consume($1, 'api_requests')")
                    .bind(customer)
                    .execute(&mut conn)
                    .await;
                match r {
                    Ok(_) => {
                        conn.execute("select pg_sleep(0.002)").await.unwrap();
                        conn.execute("commit").await.unwrap();
                        ok += 1;
                    }
                    Err(e) => {
                        assert_eq!(sqlstate(&e).as_deref(), Some("PT429"), "only PT429 may refuse: {e}");
                        conn.execute("rollback").await.unwrap();
                        refused += 1;
                    }
                }
            }
            (ok, refused)
        }
    })
    .await;
    outcomes.into_iter().fold((0, 0), |(ok, refused), (o, r)| (ok + o, refused + r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_sessions_never_overshoot() {
    let db = TestDb::create("meter_race").await;
    let customer = Uuid::new_v4();
    db.override_feature(customer, "api_requests", serde_json::json!([{"limit": 300, "period": "day"}])).await;
    let (ok, refused) = race_to_consume(&db, customer, 32, 20).await;
    assert_eq!(ok, 300, "exactly the limit went through");
    assert_eq!(refused, 32 * 20 - 300);
    assert_eq!(used(&db, customer).await, 300.0);
    assert_eq!(db.usage_drift().await, 0, "counters equal the ledger");
    let stripes: i64 = sqlx::query_scalar("select count(*) from entitlements.usage_counters where customer_id = $1")
        .bind(customer)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(stripes > 1, "contention spread the count over stripes (got {stripes})");
}

/// The thresholds of quota.threshold events written for `customer`, in order.
async fn thresholds_crossed(db: &TestDb, customer: Uuid) -> Vec<f64> {
    sqlx::query_scalar(
        "select (payload ->> 'threshold')::float8 from entitlements.outbox
          where kind = 'quota.threshold' and customer_id = $1 order by id",
    )
    .bind(customer)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_sessions_cross_each_threshold_once() {
    let db = TestDb::create("meter_thresholds").await;
    let customer = Uuid::new_v4();
    db.override_feature(customer, "api_requests", serde_json::json!([{"limit": 1000, "period": "day"}])).await;
    // 32 sessions × 25 = 800: exactly onto the 80% line, by whichever count lands last,
    // with the sessions' own stripes and stamps in play.
    let (ok, refused) = race_to_consume(&db, customer, 32, 25).await;
    assert_eq!((ok, refused), (800, 0));
    assert_eq!(thresholds_crossed(&db, customer).await, vec![80.0], "80% once, as soon as it is reached");
    // Across 100%: 200 more go through, the rest are refused.
    let (ok, refused) = race_to_consume(&db, customer, 32, 10).await;
    assert_eq!((ok, refused), (200, 120));
    assert_eq!(thresholds_crossed(&db, customer).await, vec![80.0, 100.0], "then 100% once");
    assert_eq!(used(&db, customer).await, 1000.0);
    assert_eq!(db.usage_drift().await, 0, "counters equal the ledger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_limit_of_a_feature_binds_under_a_race() {
    let db = TestDb::create("meter_two_limits").await;
    // The month binds before the day: exactly 40 go through, whatever the day allows.
    let customer = Uuid::new_v4();
    db.override_feature(
        customer,
        "api_requests",
        serde_json::json!([{"limit": 1000, "period": "day"}, {"limit": 40, "period": "month"}]),
    )
    .await;
    let (ok, _) = race_to_consume(&db, customer, 32, 4).await;
    assert_eq!(ok, 40, "the month limit bound");
    // And the day binds before the month for another customer.
    let other = Uuid::new_v4();
    db.override_feature(
        other,
        "api_requests",
        serde_json::json!([{"limit": 25, "period": "day"}, {"limit": 1000, "period": "month"}]),
    )
    .await;
    let (ok, _) = race_to_consume(&db, other, 32, 4).await;
    assert_eq!(ok, 25, "the day limit bound");
    assert_eq!(db.usage_drift().await, 0, "counters equal the ledger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_from_many_sessions_counts_once() {
    let db = TestDb::create("meter_idempotency").await;
    let customer = Uuid::new_v4();
    let used_seen = race(32, |_, start| {
        let url = db.url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            start.wait().await;
            sqlx::query_scalar::<_, f64>("select (entitlements.consume($1, 'api_requests', 5, 'req-7')).used::float8")
                .bind(customer)
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    })
    .await;
    assert!(used_seen.iter().all(|&u| u == 5.0), "every caller sees the one consumption: {used_seen:?}");
    let rows: i64 =
        sqlx::query_scalar("select count(*) from entitlements.usage_ledger where idempotency_key = 'req-7'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, 1, "one ledger row");
    assert_eq!(used(&db, customer).await, 5.0, "counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrency_slots_are_shared_and_never_leak() {
    let db = TestDb::create("meter_slots").await;
    let customer = Uuid::new_v4(); // free plan: api_concurrency = 2
    let acquire = "select entitlements.acquire($1, 'api_concurrency')";
    let mut a = db.session().await;
    let mut b = db.session().await;
    a.execute("begin").await.unwrap();
    for _ in 0..2 {
        assert!(sqlx::query_scalar::<_, bool>(acquire).bind(customer).fetch_one(&mut a).await.unwrap());
    }
    b.execute("begin").await.unwrap();
    assert!(
        !sqlx::query_scalar::<_, bool>(acquire).bind(customer).fetch_one(&mut b).await.unwrap(),
        "both slots are held by A"
    );
    a.execute("commit").await.unwrap();
    assert!(
        sqlx::query_scalar::<_, bool>(acquire).bind(customer).fetch_one(&mut b).await.unwrap(),
        "A's commit freed its slots"
    );

    // A backend that dies holding slots frees them: the server releases its locks.
    let mut c = db.session().await;
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut c).await.unwrap();
    c.execute("begin").await.unwrap();
    assert!(sqlx::query_scalar::<_, bool>(acquire).bind(customer).fetch_one(&mut c).await.unwrap());
    assert!(
        !sqlx::query_scalar::<_, bool>(acquire).bind(customer).fetch_one(&mut a).await.unwrap(),
        "B and C hold both"
    );
    sqlx::query("select pg_terminate_backend($1)").bind(pid).execute(&db.pool).await.unwrap();
    let mut freed = false;
    for _ in 0..50 {
        if sqlx::query_scalar::<_, bool>(acquire).bind(customer).fetch_one(&mut a).await.unwrap() {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(freed, "the terminated backend's slot came back");
    b.execute("rollback").await.unwrap();
}

/// An error raised inside the common case's subtransaction (here a lock timeout while it
/// waits on a window another transaction is opening) rolls the subtransaction back before
/// it goes on: the session's next statement runs and its transactions end cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_inside_the_fast_path_leaves_the_session_usable() {
    let db = TestDb::create("meter_fast_error").await;
    let customer = Uuid::new_v4();
    let mut opener = db.session().await;
    opener.execute("begin").await.unwrap();
    sqlx::query("select entitlements.consume($1, 'api_requests', 1, 'key-a')")
        .bind(customer)
        .execute(&mut opener)
        .await
        .unwrap();
    let mut waiter = db.session().await;
    waiter.execute("set lock_timeout = '200ms'").await.unwrap();
    let err = sqlx::query("select entitlements.consume($1, 'api_requests')")
        .bind(customer)
        .execute(&mut waiter)
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err).as_deref(), Some("55P03"), "the lock timeout itself: {err}");
    waiter.execute("select 1").await.expect("the next statement runs (not 25P02)");
    waiter.execute("begin").await.unwrap();
    waiter.execute("rollback").await.expect("a transaction ends cleanly");
    opener.execute("rollback").await.unwrap();
    sqlx::query("select entitlements.consume($1, 'api_requests')").bind(customer).execute(&mut waiter).await.unwrap();
    assert_eq!(used(&db, customer).await, 1.0, "and counts once the window is free");
}
