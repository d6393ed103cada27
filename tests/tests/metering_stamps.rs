//! The stamps on counter windows (usage_counters.stamp, valid_until, sole) let a session
//! that has never resolved a customer count in one statement. These tests make sure a
//! stamp is trusted only while it is true: another session's committed change, the
//! passing of time, this transaction's own uncommitted change, and a feature with
//! several limited periods all send the count back to the rules.
use integration_tests::*;
use sqlx::{Executor, PgConnection};
use uuid::Uuid;

async fn try_consume(conn: &mut PgConnection, customer: Uuid, feature: &str, amount: i32) -> (bool, f64) {
    sqlx::query_as("select allowed, used::float8 from entitlements.try_consume($1, $2, $3)")
        .bind(customer)
        .bind(feature)
        .bind(amount)
        .fetch_one(conn)
        .await
        .unwrap()
}

async fn stamped_windows(db: &TestDb, customer: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from entitlements.usage_counters where customer_id = $1 and stamp is not null")
        .bind(customer)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_committed_limit_change_voids_the_stamps() {
    let db = TestDb::create("stamps_version").await;
    let customer = Uuid::new_v4();
    let mut first = db.session().await;
    subscribe(&mut first, customer, "business").await;
    db.override_feature(customer, "api_requests", serde_json::json!({"limit": 5, "period": "month"})).await;

    assert_eq!(try_consume(&mut first, customer, "api_requests", 1).await, (true, 1.0));
    assert_eq!(stamped_windows(&db, customer).await, 1, "the first count stamps its window");
    // A session that never saw the customer counts through the stamp.
    let mut second = db.session().await;
    assert_eq!(try_consume(&mut second, customer, "api_requests", 1).await, (true, 2.0));

    // Another session lowers the limit to 2: the stamps (limit 5) no longer hold.
    db.override_feature(customer, "api_requests", serde_json::json!({"limit": 2, "period": "month"})).await;
    let mut third = db.session().await;
    let (allowed, used) = try_consume(&mut third, customer, "api_requests", 1).await;
    assert!(!allowed, "counted against a limit that changed (used {used})");
    assert_eq!(db.usage_drift().await, 0);
}

#[tokio::test]
async fn a_stamp_expires_when_the_rules_change_by_time() {
    let db = TestDb::create("stamps_time").await;
    // No subscription: the Free plan's audio_minutes is 60 a month. A boost of 10 for two
    // seconds makes it 70, then 60 again with no change to any row.
    let customer = Uuid::new_v4();
    sqlx::query("select entitlements.boost_quota($1, 'audio_minutes', 10, expires_at => clock_timestamp() + interval '2 seconds', reason => 'stamp test')")
        .bind(customer)
        .execute(&db.pool)
        .await
        .unwrap();
    let expired = format!(
        "select clock_timestamp() > (select max(expires_at) from entitlements.grants where customer_id = '{customer}')"
    );
    let mut first = db.session().await;
    assert_eq!(try_consume(&mut first, customer, "audio_minutes", 1).await, (true, 1.0));
    assert_eq!(stamped_windows(&db, customer).await, 1);
    db.wait_until(&expired, "the boost to expire").await;

    // 1 used + 60 more fits the boosted 70 the stamp was made under, not the 60 of now.
    let mut later = db.session().await;
    let (allowed, used) = try_consume(&mut later, customer, "audio_minutes", 60).await;
    assert!(!allowed, "counted against a boost that had expired (used {used})");
    assert_eq!(try_consume(&mut later, customer, "audio_minutes", 59).await, (true, 60.0));
    assert_eq!(db.usage_drift().await, 0);
}

#[tokio::test]
async fn a_change_in_this_transaction_is_seen_before_it_commits() {
    let db = TestDb::create("stamps_own_write").await;
    let customer = Uuid::new_v4();
    let mut first = db.session().await;
    subscribe(&mut first, customer, "business").await;
    db.override_feature(customer, "api_requests", serde_json::json!({"limit": 5, "period": "month"})).await;
    assert_eq!(try_consume(&mut first, customer, "api_requests", 1).await, (true, 1.0));

    // A fresh session lowers the limit and consumes in one transaction: the version has
    // not moved yet (it moves at commit), so only the transaction's own write says the
    // stamp is stale.
    let mut other = db.session().await;
    other.execute("begin").await.unwrap();
    sqlx::query("select entitlements.override_feature($1, 'api_requests', '{\"limit\": 1, \"period\": \"month\"}', reason => 'stamp test')")
        .bind(customer)
        .execute(&mut other)
        .await
        .unwrap();
    let (allowed, used) = try_consume(&mut other, customer, "api_requests", 1).await;
    assert!(!allowed, "counted against the limit this transaction had just replaced (used {used})");
    other.execute("rollback").await.unwrap();
    assert_eq!(db.usage_drift().await, 0);
}

#[tokio::test]
async fn a_feature_with_several_periods_counts_in_all_of_them() {
    let db = TestDb::create("stamps_periods").await;
    // No subscription: the Free plan's api_requests is 500 a day and 5,000 a month.
    let customer = Uuid::new_v4();
    let mut first = db.session().await;
    assert!(try_consume(&mut first, customer, "api_requests", 1).await.0);
    for _ in 0..3 {
        let mut fresh = db.session().await;
        assert!(try_consume(&mut fresh, customer, "api_requests", 1).await.0);
    }
    let per_period: Vec<(String, f64)> = sqlx::query_as(
        "select period, sum(used)::float8 from entitlements.usage_counters where customer_id = $1 group by 1 order by 1",
    )
    .bind(customer)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(per_period, vec![("day".to_owned(), 4.0), ("month".to_owned(), 4.0)]);
    // One ledger row per call, counted in both periods.
    let ledger: Vec<Vec<String>> =
        sqlx::query_scalar("select periods from entitlements.usage_ledger where customer_id = $1")
            .bind(customer)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(ledger.len(), 4, "{ledger:?}");
    assert!(ledger.iter().all(|p| p.len() == 2), "{ledger:?}");
    assert_eq!(db.usage_drift().await, 0);
}

/// A count through a stamp updates the counter row and inserts the ledger row without
/// the executor (extension/src/metering/stamps.rs, ledger.rs). When the counter row's page is full the new
/// version lands elsewhere and the primary key needs an entry for it; the ledger row
/// must land in the month's partition and in each of its indexes. amcheck finds every
/// row version in every index, and the counts still equal the ledger.
#[tokio::test]
async fn counting_on_stamps_keeps_the_indexes_whole() {
    let db = TestDb::create("stamps_index").await;
    let mut first = db.session().await;
    // One transaction each: a count stamps only what is committed.
    for step in [
        "create table stamp_customers as select gen_random_uuid() as id from generate_series(1, 300)",
        "select count(entitlements.subscribe(id, 'business')) from stamp_customers",
        "select count(entitlements.consume(id, 'api_requests')) from stamp_customers",
    ] {
        first.execute(step).await.unwrap();
    }
    // This month's partition (the rows so far move into it): the next rows are routed.
    sqlx::query("select entitlements.ensure_usage_partitions(0)").execute(&db.pool).await.unwrap();
    // A session that never saw these customers counts each once, through the stamps. The
    // windows were just inserted, so their pages are full: most updates cannot be HOT.
    let mut second = db.session().await;
    second.execute("begin").await.unwrap();
    let (counted, updated, hot): (i64, i64, i64) = sqlx::query_as(
        "select (select count(entitlements.consume(id, 'api_requests')) from stamp_customers),
                pg_stat_get_xact_tuples_updated('entitlements.usage_counters'::regclass),
                pg_stat_get_xact_tuples_hot_updated('entitlements.usage_counters'::regclass)",
    )
    .fetch_one(&mut second)
    .await
    .unwrap();
    second.execute("commit").await.unwrap();
    assert_eq!((counted, updated), (300, 300));
    assert!(hot < updated, "every update was HOT ({hot}): the test did not reach the index upkeep");

    sqlx::query("create extension amcheck").execute(&db.pool).await.unwrap();
    let checked: i64 = sqlx::query_scalar(
        "select count(bt_index_check(i.indexrelid, heapallindexed => true))
           from pg_index i
          where i.indrelid = 'entitlements.usage_counters'::regclass
             or i.indrelid in (select inhrelid from pg_inherits where inhparent = 'entitlements.usage_ledger'::regclass)",
    )
    .fetch_one(&db.pool)
    .await
    .expect("every row version is in every index of the counters and the ledger");
    assert_eq!(checked, 5, "the counters' primary key, two indexes on each ledger partition");
    let (in_month, in_default): (i64, i64) = sqlx::query_as(
        "select (select count(*) from entitlements.usage_ledger l
                  where l.tableoid <> 'entitlements.usage_ledger_default'::regclass
                    and l.at >= date_trunc('month', now(), 'UTC') and l.at < date_trunc('month', now(), 'UTC') + interval '1 month'),
                (select count(*) from entitlements.usage_ledger_default)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((in_month, in_default), (600, 0), "every ledger row in this month's partition");
    let mut check = db.session().await;
    check.execute("set enable_seqscan = off").await.unwrap();
    let by_index: i64 = sqlx::query_scalar(
        "select count(*) from stamp_customers s
          where (select sum(c.used) from entitlements.usage_counters c
                  where c.customer_id = s.id and c.feature_key = 'api_requests') = 2",
    )
    .fetch_one(&mut check)
    .await
    .unwrap_or(-1);
    assert_eq!(by_index, 300, "each customer counted twice, found through the index");
    assert_eq!(db.usage_drift().await, 0);
}

async fn seen(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("select tbl from seen order by tbl").fetch_all(&db.pool).await.unwrap()
}

/// An operator's trigger on the ledger or the counters still fires for a count through a
/// stamp: the writes without the executor step aside for it.
#[tokio::test]
async fn an_operators_triggers_still_fire() {
    let db = TestDb::create("stamps_trigger").await;
    let customer = Uuid::new_v4();
    let mut first = db.session().await;
    subscribe(&mut first, customer, "business").await;
    assert_eq!(try_consume(&mut first, customer, "api_requests", 1).await, (true, 1.0));
    db.pool
        .execute(
            "create table seen (customer uuid, tbl text);
             create function seen_row() returns trigger language plpgsql as $$
             begin insert into public.seen values (new.customer_id, tg_table_name); return new; end $$;
             create trigger seen_ledger after insert on entitlements.usage_ledger
                 for each row execute function seen_row();",
        )
        .await
        .unwrap();
    let mut second = db.session().await;
    assert_eq!(try_consume(&mut second, customer, "api_requests", 1).await, (true, 2.0));
    assert_eq!(seen(&db).await, ["usage_ledger_default"], "the ledger trigger fired");

    db.pool
        .execute("create trigger seen_counters after update on entitlements.usage_counters for each row execute function seen_row()")
        .await
        .unwrap();
    let mut third = db.session().await;
    assert_eq!(try_consume(&mut third, customer, "api_requests", 1).await, (true, 3.0));
    assert_eq!(
        seen(&db).await,
        ["usage_counters", "usage_ledger_default", "usage_ledger_default"],
        "both triggers fired"
    );
    assert_eq!(db.usage_drift().await, 0);
}

/// Counting through a stamp writes rows datum by datum (extension/src/metering/stamps.rs, ledger.rs). When an
/// operator changes what a column is (its type or typmod, NOT NULL, its default) those
/// writes step aside and the executor counts, applying the change.
#[tokio::test]
async fn altered_columns_send_counts_through_the_executor() {
    // (what the operator changes, the count that follows, what only the executor gives)
    let cases: [(&str, &str, &str); 4] = [
        (
            "alter table entitlements.usage_ledger alter column overage set default 7",
            "select (entitlements.try_consume($1, 'api_requests', 1)).allowed::text",
            "select string_agg(overage::text, ',' order by id) from entitlements.usage_ledger where customer_id = $1",
        ),
        (
            "delete from entitlements.usage_ledger; alter table entitlements.usage_ledger alter column idempotency_key set not null",
            "select (entitlements.try_consume($1, 'api_requests', 1)).allowed::text",
            "",
        ),
        (
            "alter table entitlements.usage_ledger alter column amount type numeric(10, 0)",
            "select (entitlements.try_consume($1, 'api_requests', 1.4)).allowed::text",
            "select string_agg(amount::text, ',' order by id) from entitlements.usage_ledger where customer_id = $1",
        ),
        (
            "alter table entitlements.usage_counters alter column used type numeric(20, 0)",
            "select (entitlements.try_consume($1, 'api_requests', 1.4)).allowed::text",
            "select sum(used)::text from entitlements.usage_counters where customer_id = $1 and feature_key = 'api_requests'",
        ),
    ];
    let expected = ["0,7", "23502", "1,1", "2"];
    for (i, ((alter, count, observe), want)) in cases.iter().zip(expected).enumerate() {
        let db = TestDb::create(&format!("stamps_shape_{i}")).await;
        let customer = Uuid::new_v4();
        let mut first = db.session().await;
        subscribe(&mut first, customer, "business").await;
        assert_eq!(try_consume(&mut first, customer, "api_requests", 1).await, (true, 1.0));
        assert!(stamped_windows(&db, customer).await > 0, "case {i}: the window is stamped");
        db.pool.execute(*alter).await.unwrap();
        let mut second = db.session().await;
        let counted: Result<String, _> = sqlx::query_scalar(*count).bind(customer).fetch_one(&mut second).await;
        let seen = match counted {
            Err(e) => sqlstate(&e).unwrap_or_default(),
            Ok(allowed) => {
                assert_eq!(allowed, "true", "case {i}");
                sqlx::query_scalar::<_, String>(*observe).bind(customer).fetch_one(&db.pool).await.unwrap()
            }
        };
        assert_eq!(seen, want, "case {i}: after `{alter}`");
    }
}

/// A partition attached while a count waits for the default partition: the count's row
/// lands in the new partition, never in the default (whose constraint now excludes it).
#[tokio::test]
async fn a_partition_attached_concurrently_takes_the_row() {
    let db = TestDb::create("stamps_attach").await;
    let customer = Uuid::new_v4();
    let mut first = db.session().await;
    subscribe(&mut first, customer, "business").await;
    assert_eq!(try_consume(&mut first, customer, "api_requests", 1).await, (true, 1.0));
    // Every row so far is in the default partition: no monthly partition exists yet.
    let mut attacher = db.session().await;
    attacher.execute("begin").await.unwrap();
    attacher
        .execute(
            "create table entitlements.usage_ledger_now (like entitlements.usage_ledger including defaults including constraints);
             alter table entitlements.usage_ledger_now add primary key (id, at);
             with moved as (delete from entitlements.usage_ledger_default returning *)
             insert into entitlements.usage_ledger_now select * from moved;",
        )
        .await
        .unwrap();
    let attach = format!(
        "alter table entitlements.usage_ledger attach partition entitlements.usage_ledger_now
             for values from ('{0}') to ('{1}')",
        "2000-01-01", "2100-01-01"
    );
    attacher.execute(sqlx::AssertSqlSafe(attach)).await.unwrap();
    // The count starts while the ATTACH is not committed and waits for its locks.
    let mut second = db.session().await;
    let pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut second).await.unwrap();
    let counting = tokio::spawn(async move {
        let r: (bool,) = sqlx::query_as("select (entitlements.try_consume($1, 'api_requests', 1)).allowed")
            .bind(customer)
            .fetch_one(&mut second)
            .await
            .unwrap();
        r.0
    });
    // Wait until the count is blocked on a lock, then commit the ATTACH.
    let blocked = format!("select exists (select 1 from pg_locks where pid = {pid} and not granted)");
    db.wait_until(&blocked, "the count to wait for the ATTACH").await;
    attacher.execute("commit").await.unwrap();
    assert!(counting.await.unwrap(), "the count went through");
    let (in_new, in_default): (i64, i64) = sqlx::query_as(
        "select (select count(*) from entitlements.usage_ledger_now), (select count(*) from entitlements.usage_ledger_default)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((in_new, in_default), (2, 0), "both rows in the attached partition, none in the default");
    assert_eq!(db.usage_drift().await, 0);
}
