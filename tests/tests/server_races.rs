//! Adding servers concurrently: the plan's `servers` holds under REPEATABLE READ too, and a
//! domain is one live server's only even when two customers ask for it at once.
use integration_tests::*;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

async fn hosting_db(name: &str) -> TestDb {
    let db = TestDb::create(name).await;
    let catalog = json!({
        "features": [],
        "plans": [{"key": "host", "name": "Host", "public": true,
                   "entitlements": {"resources": {"servers": 2, "cpu": "1", "memory": "1Gi", "custom_domain": true}}}]
    });
    sqlx::query("select entitlements.apply_catalog($1)").bind(catalog).execute(&db.pool).await.unwrap();
    db
}

/// Wait until the session `pid` waits on a lock.
async fn blocked(db: &TestDb, pid: i32) {
    eventually(WAIT, "the second session waits on the first", || async {
        sqlx::query_scalar::<_, bool>(
            "select coalesce(wait_event_type = 'Lock', false) from pg_stat_activity where pid = $1",
        )
        .bind(pid)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
        .filter(|w| *w)
    })
    .await;
}

async fn pid(conn: &mut PgConnection) -> i32 {
    sqlx::query_scalar("select pg_backend_pid()").fetch_one(conn).await.unwrap()
}

#[tokio::test]
async fn repeatable_read_cannot_add_past_the_plan() {
    let db = hosting_db("races_rr").await;
    let customer = Uuid::new_v4();
    sqlx::query("select entitlements.subscribe($1, 'host')").bind(customer).execute(&db.pool).await.unwrap();
    // One server came with the subscription; the plan allows two. Two REPEATABLE READ
    // transactions, each with its snapshot taken before the other adds one.
    let mut a = db.session().await;
    let mut b = db.session().await;
    for c in [&mut a, &mut b] {
        sqlx::raw_sql("begin isolation level repeatable read; select 1").execute(&mut *c).await.unwrap();
    }
    sqlx::query("select entitlements.create_server($1, 'rr-a')").bind(customer).execute(&mut a).await.unwrap();
    let b_pid = pid(&mut b).await;
    let second = tokio::spawn(async move {
        let r = sqlx::query("select entitlements.create_server($1, 'rr-b')").bind(customer).execute(&mut b).await;
        (r.map(|_| ()), b)
    });
    blocked(&db, b_pid).await;
    sqlx::raw_sql("commit").execute(&mut a).await.unwrap();
    let (result, _b) = second.await.unwrap();
    let err = result.expect_err("the second transaction must not add a third server");
    assert_eq!(sqlstate(&err).as_deref(), Some("40001"), "a serialization failure to retry: {err}");
    let live: i64 = sqlx::query_scalar(
        "select count(*) from entitlements.servers where customer_id = $1 and phase not in ('terminating', 'terminated')",
    )
    .bind(customer)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(live, 2, "no more servers than the plan's two");
}

#[tokio::test]
async fn a_domain_is_one_live_servers() {
    let db = hosting_db("races_domain").await;
    let (c1, c2) = (Uuid::new_v4(), Uuid::new_v4());
    for c in [c1, c2] {
        sqlx::query("select entitlements.subscribe($1, 'host')").bind(c).execute(&db.pool).await.unwrap();
    }
    let mut a = db.session().await;
    let mut b = db.session().await;
    let mut tx = a.begin().await.unwrap();
    sqlx::query("select entitlements.create_server($1, 'dom-a', 'chat.example.org')")
        .bind(c1)
        .execute(&mut *tx)
        .await
        .unwrap();
    let b_pid = pid(&mut b).await;
    let second = tokio::spawn(async move {
        let r = sqlx::query("select entitlements.create_server($1, 'dom-b', 'chat.example.org')")
            .bind(c2)
            .execute(&mut b)
            .await;
        r.map(|_| ())
    });
    blocked(&db, b_pid).await;
    tx.commit().await.unwrap();
    let err = second.await.unwrap().expect_err("the second customer must not get the domain too");
    assert_eq!(sqlstate(&err).as_deref(), Some("23505"), "{err}");
    let owners: i64 =
        sqlx::query_scalar("select count(*) from entitlements.servers where 'chat.example.org' = any (domains)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(owners, 1);
}
