//! Checks on a read replica (issue #15): a streaming hot standby answers has_feature,
//! entitlements() and check like the primary, sees a change by the first statement after it
//! has replayed the commit (its per-backend cache included), and refuses counting and slots
//! with 25006 instead of answering from a copy.
use integration_tests::*;
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};
use uuid::Uuid;

async fn entitlements_of(conn: &mut PgConnection, customer: Uuid) -> Value {
    // as_of is the instant of the statement: the one field two servers cannot share.
    sqlx::query_scalar("select entitlements.entitlements($1) - 'as_of'").bind(customer).fetch_one(conn).await.unwrap()
}

async fn sql(conn: &mut PgConnection, query: &str, customer: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(query.to_owned())).bind(customer).execute(conn).await.map(|_| ())
}

/// For the rest of this transaction, `user` signed in the way PostgREST signs a request in.
async fn sign_in(tx: &mut PgConnection, user: Uuid) {
    sqlx::query("set local role authenticated").execute(&mut *tx).await.unwrap();
    sqlx::query("select set_config('request.jwt.claims', json_build_object('sub', $1::text, 'role', 'authenticated')::text, true)")
        .bind(user)
        .execute(&mut *tx)
        .await
        .unwrap();
}

/// Rows of the app's table `user` sees through its policy, signed in as PostgREST signs in.
async fn visible_notes(conn: &mut PgConnection, user: Uuid) -> i64 {
    let mut tx = conn.begin().await.unwrap();
    sign_in(&mut tx, user).await;
    let n: i64 = sqlx::query_scalar("select count(*) from notes").fetch_one(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    n
}

#[tokio::test]
async fn a_hot_standby_answers_checks_and_sees_each_replayed_commit() {
    let db = TestDb::create("replica").await;
    // Both servers judge at one fixed instant (the test clock), so windows and reset times
    // agree whenever the test runs, midnight included.
    let clock = "set entitlements.clock = '2026-06-15 12:00:00+00'";
    let mut w = db.session().await;
    sqlx::query(clock).execute(&mut w).await.unwrap();
    let (alice, bob, org) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let sub = subscribe(&mut w, alice, "pro").await;
    subscribe(&mut w, org, "enterprise").await;
    sqlx::query("select entitlements.add_member($1, $2)").bind(org).bind(bob).execute(&mut w).await.unwrap();
    sql(&mut w, "select entitlements.consume($1, 'api_requests', 7)", alice).await.unwrap();
    // An app's table behind a policy that asks has_feature per row, readable by API users.
    w.execute(
        "create table notes (owner uuid not null, body text);
         alter table notes enable row level security;
         create policy agents_only on notes for select to authenticated
             using (owner = entitlements.current_user_id() and entitlements.has_feature(owner, 'advanced_agents'));
         grant select on notes to authenticated;",
    )
    .await
    .unwrap();
    sqlx::query("insert into notes select c, 'note' from unnest($1::uuid[]) c, generate_series(1, 3)")
        .bind(vec![alice, bob, org])
        .execute(&mut w)
        .await
        .unwrap();

    let replica = Replica::start("checks");
    let mut r = PgConnection::connect(&replica.url(&db.name)).await.expect("connect to the replica");
    sqlx::query(clock).execute(&mut r).await.unwrap();
    replica.catch_up(&db.pool, &mut r).await;
    let standby: bool = sqlx::query_scalar("select pg_is_in_recovery()").fetch_one(&mut r).await.unwrap();
    assert!(standby, "the replica is a hot standby");

    // The same answers as the primary, usage included.
    for (c, f) in [(alice, "advanced_agents"), (alice, "sso"), (bob, "sso"), (bob, "advanced_agents"), (org, "sso")] {
        assert_eq!(has_feature(&mut r, c, f).await, has_feature(&mut w, c, f).await, "has_feature({c}, {f})");
    }
    for c in [alice, bob, org] {
        assert_eq!(entitlements_of(&mut r, c).await, entitlements_of(&mut w, c).await, "entitlements({c})");
    }
    let used = entitlements_of(&mut r, alice).await["features"]["api_requests"]["used"].clone();
    assert_eq!(used, serde_json::json!(7), "usage counted on the primary is read on the replica");
    let hook = "select entitlements.custom_access_token_hook(jsonb_build_object('user_id', $1, 'claims', \
                jsonb_build_object('sub', $1, 'role', 'authenticated')))";
    let on_replica: Value = sqlx::query_scalar(hook).bind(bob).fetch_one(&mut r).await.unwrap();
    let on_primary: Value = sqlx::query_scalar(hook).bind(bob).fetch_one(&mut w).await.unwrap();
    assert_eq!(on_replica, on_primary, "the access-token hook answers on the replica");
    assert_eq!(on_replica["claims"]["entitlements"]["plan"], "enterprise", "through the organization");
    let check = "select row(c.*)::text from entitlements.check($1, 'api_requests', 3) c";
    let on_replica: String = sqlx::query_scalar(check).bind(alice).fetch_one(&mut r).await.unwrap();
    let on_primary: String = sqlx::query_scalar(check).bind(alice).fetch_one(&mut w).await.unwrap();
    assert_eq!(on_replica, on_primary, "check answers on the replica");

    // A cached answer on the replica, then changes on the primary: each is seen by the first
    // statement after the replica has replayed its commit.
    assert!(has_feature(&mut r, alice, "advanced_agents").await);
    assert!(has_feature(&mut r, alice, "advanced_agents").await, "cached, same value");
    assert_eq!(visible_notes(&mut r, alice).await, 3, "the app's policy on the replica: alice's own notes");
    sqlx::query("select entitlements.cancel($1, false)").bind(sub).execute(&mut w).await.unwrap();
    replica.catch_up(&db.pool, &mut r).await;
    assert!(!has_feature(&mut r, alice, "advanced_agents").await, "a cancellation is seen once replayed");
    assert_eq!(visible_notes(&mut r, alice).await, 0, "and by the app's policy, row by row");

    assert!(has_feature(&mut r, bob, "sso").await, "the organization's plan reaches its member");
    sqlx::query("select entitlements.remove_member($1, $2)").bind(org).bind(bob).execute(&mut w).await.unwrap();
    replica.catch_up(&db.pool, &mut r).await;
    assert!(!has_feature(&mut r, bob, "sso").await, "a removed membership is seen once replayed");

    let grant: Uuid = sqlx::query_scalar("select entitlements.grant_feature($1, 'sso', reason => 'pilot')")
        .bind(bob)
        .fetch_one(&mut w)
        .await
        .unwrap();
    replica.catch_up(&db.pool, &mut r).await;
    assert!(has_feature(&mut r, bob, "sso").await, "a grant is seen once replayed");
    sqlx::query("select entitlements.revoke_grant($1, 'pilot over')").bind(grant).execute(&mut w).await.unwrap();
    replica.catch_up(&db.pool, &mut r).await;
    assert!(!has_feature(&mut r, bob, "sso").await, "a revocation is seen once replayed");

    // The signed-in user's own check, as PostgREST runs it on a replica.
    let mut tx = r.begin().await.unwrap();
    sign_in(&mut tx, alice).await;
    let own: bool =
        sqlx::query_scalar("select entitlements.has_feature('kb_files')").fetch_one(&mut *tx).await.unwrap();
    let others: i64 = sqlx::query_scalar("select count(*) from entitlements.subscriptions where customer_id <> $1")
        .bind(alice)
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert!(own, "a signed-in user's own check answers on the replica (free plan's kb_files)");
    assert_eq!(others, 0, "row security holds on the replica");

    // Counting and slots are the primary's: refused with 25006, naming the verb.
    for (query, verb) in [
        ("select entitlements.consume($1, 'api_requests')", "consume"),
        ("select entitlements.consume($1, 'api_requests', 1, 'key-1')", "consume"),
        ("select entitlements.try_consume($1, 'api_requests')", "try_consume"),
        ("select entitlements.acquire($1, 'api_concurrency')", "acquire"),
        ("select entitlements.slots_in_use($1, 'api_concurrency')", "slots_in_use"),
    ] {
        let e = sql(&mut r, query, alice).await.expect_err(query);
        assert_eq!(sqlstate(&e).as_deref(), Some("25006"), "{query}: {e}");
        let message = e.as_database_error().unwrap().message().to_owned();
        assert!(message.contains(&format!("{verb} cannot run on a read replica")), "{query}: {message}");
    }
    let e = sql(&mut r, "select entitlements.subscribe($1, 'pro')", alice).await.expect_err("subscribe on a replica");
    assert_eq!(sqlstate(&e).as_deref(), Some("25006"), "{e}");

    // Nothing was counted by the refusals: the primary still has 7.
    let used = entitlements_of(&mut w, alice).await["features"]["api_requests"]["used"].clone();
    assert_eq!(used, serde_json::json!(7));
}
