//! Promotion codes under concurrency: many sessions redeeming one code at once are counted
//! one at a time, so exactly `max_redemptions` of them get a discount, whatever the isolation
//! level, and the coupon's count always equals the discounts it made.
use integration_tests::*;
use uuid::Uuid;

async fn subscriptions(db: &TestDb, n: usize) -> Vec<Uuid> {
    let mut subs = Vec::with_capacity(n);
    for _ in 0..n {
        let id: Uuid = sqlx::query_scalar("select entitlements.subscribe($1, 'pro')")
            .bind(Uuid::new_v4())
            .fetch_one(&db.pool)
            .await
            .unwrap();
        subs.push(id);
    }
    subs
}

async fn counted(db: &TestDb) -> (i32, i64) {
    let redeemed: i32 = sqlx::query_scalar("select times_redeemed from entitlements.coupons where code = 'LAUNCH10'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let discounts: i64 =
        sqlx::query_scalar("select count(*) from entitlements.discounts").fetch_one(&db.pool).await.unwrap();
    (redeemed, discounts)
}

/// 32 sessions, each redeeming the code on its own subscription, all at once.
async fn race_for_code(db: &TestDb, begin: &'static str) -> Vec<Result<(), Option<String>>> {
    sqlx::query("select entitlements.create_coupon('LAUNCH10', percent_off => 20, max_redemptions => 10)")
        .execute(&db.pool)
        .await
        .unwrap();
    let subs = subscriptions(db, 32).await;
    race(subs.len(), |i, start| {
        let pool = db.pool.clone();
        let sub = subs[i];
        async move {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query(begin).execute(&mut *conn).await.unwrap();
            // The snapshot is taken before the race, as an app's transaction would.
            sqlx::query("select count(*) from entitlements.coupons").execute(&mut *conn).await.unwrap();
            start.wait().await;
            // Mixed case: codes match case-insensitively.
            let outcome = sqlx::query("select entitlements.redeem($1, 'launch10')").bind(sub).execute(&mut *conn).await;
            let end = if outcome.is_ok() { "commit" } else { "rollback" };
            sqlx::query(end).execute(&mut *conn).await.unwrap();
            outcome.map(|_| ()).map_err(|e| sqlstate(&e))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_two_sessions_redeem_a_code_of_ten_exactly_ten_times() {
    let db = TestDb::create("coupon_race").await;
    let outcomes = race_for_code(&db, "begin isolation level read committed").await;
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    let exhausted = outcomes.iter().filter(|o| matches!(o, Err(Some(c)) if c == "22023")).count();
    assert_eq!((ok, exhausted), (10, 22), "exactly ten went through, every other was refused: {outcomes:?}");
    assert_eq!(counted(&db).await, (10, 10), "the coupon counts what it made");
}

/// Under REPEATABLE READ a session whose snapshot predates another's redemption cannot
/// count on it: it fails with 40001 (the app retries), never redeems past the maximum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_repeatable_read_redemptions_never_pass_the_maximum() {
    let db = TestDb::create("coupon_race_rr").await;
    let outcomes = race_for_code(&db, "begin isolation level repeatable read").await;
    let ok = outcomes.iter().filter(|o| o.is_ok()).count();
    for o in &outcomes {
        assert!(
            matches!(o, Ok(()) | Err(Some(_))) && !matches!(o, Err(Some(c)) if c != "22023" && c != "40001"),
            "only redeemed, exhausted or a serialization failure: {o:?}"
        );
    }
    assert!((1..=10).contains(&ok), "{ok} redemptions");
    assert_eq!(counted(&db).await, (ok as i32, ok as i64), "the coupon counts what it made");
}

/// The test clock is the superuser's. In a fresh session the library is not loaded yet, so a
/// plain role's SET makes a placeholder: loading the library (its first call) drops that
/// value, and a SET afterwards is refused.
#[tokio::test]
async fn a_plain_role_cannot_move_the_clock() {
    use sqlx::{AssertSqlSafe, Connection};
    let db = TestDb::create("clock_role").await;
    let role = format!("clock_plain_{}", std::process::id());
    // (Left behind by an earlier run that stopped half way, if any: roles are the cluster's.)
    sqlx::query(AssertSqlSafe(format!("drop role if exists {role}"))).execute(&db.pool).await.unwrap();
    sqlx::query(AssertSqlSafe(format!("create role {role} login"))).execute(&db.pool).await.unwrap();
    let mut plain = sqlx::PgConnection::connect(&db.url.replacen("postgres@", &format!("{role}@"), 1)).await.unwrap();
    sqlx::query("set entitlements.clock = '2000-01-01 00:00:00+00'").execute(&mut plain).await.unwrap();
    let real: bool = sqlx::query_scalar("select entitlements.now() > '2026-01-01'::timestamptz")
        .fetch_one(&mut plain)
        .await
        .unwrap();
    assert!(real, "the placeholder set before the library loaded is dropped");
    let refused =
        sqlx::query("set entitlements.clock = '2000-01-01 00:00:00+00'").execute(&mut plain).await.unwrap_err();
    assert_eq!(sqlstate(&refused).as_deref(), Some("42501"));
    plain.close().await.unwrap();
    sqlx::query(AssertSqlSafe(format!("drop role {role}"))).execute(&db.pool).await.unwrap();
}
