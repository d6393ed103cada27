//! Promise 6 of the foundation: whatever the checks cache, a change committed by one
//! session is seen by the very next statement of every other session.
use integration_tests::*;
use sqlx::Executor;
use uuid::Uuid;

#[tokio::test]
async fn commits_are_seen_by_the_next_statement_of_other_sessions() {
    let db = TestDb::create("stale").await;
    let mut reader = db.session().await;
    let mut writer = db.session().await;
    let (alice, bob, org) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());

    // Cancellation.
    let sub = subscribe(&mut writer, alice, "pro").await;
    assert!(has_feature(&mut reader, alice, "advanced_agents").await, "pro grants agents");
    assert!(has_feature(&mut reader, alice, "advanced_agents").await, "cached answer, same value");
    sqlx::query("select entitlements.cancel($1, false)").bind(sub).execute(&mut writer).await.unwrap();
    assert!(!has_feature(&mut reader, alice, "advanced_agents").await, "a cancellation is seen at once");

    // A grant, and its revocation.
    assert!(!has_feature(&mut reader, bob, "sso").await);
    let grant: Uuid = sqlx::query_scalar("select entitlements.grant_feature($1, 'sso', reason => 'pilot')")
        .bind(bob)
        .fetch_one(&mut writer)
        .await
        .unwrap();
    assert!(has_feature(&mut reader, bob, "sso").await, "a grant is seen at once");
    sqlx::query("select entitlements.revoke_grant($1, 'pilot over')").bind(grant).execute(&mut writer).await.unwrap();
    assert!(!has_feature(&mut reader, bob, "sso").await, "a revocation is seen at once");

    // A catalog change.
    subscribe(&mut writer, bob, "pro").await;
    assert!(has_feature(&mut reader, bob, "advanced_agents").await);
    let mut catalog = demo_catalog();
    catalog["plans"][1]["entitlements"]["advanced_agents"] = serde_json::json!(false);
    sqlx::query("select entitlements.apply_catalog($1)").bind(&catalog).execute(&mut writer).await.unwrap();
    assert!(!has_feature(&mut reader, bob, "advanced_agents").await, "a catalog change is seen at once");

    // Membership.
    sqlx::query("select entitlements.subscribe($1, 'enterprise')").bind(org).execute(&mut writer).await.unwrap();
    assert!(!has_feature(&mut reader, alice, "sso").await);
    sqlx::query("select entitlements.add_member($1, $2)").bind(org).bind(alice).execute(&mut writer).await.unwrap();
    assert!(has_feature(&mut reader, alice, "sso").await, "a new membership is seen at once");
    sqlx::query("select entitlements.remove_member($1, $2)").bind(org).bind(alice).execute(&mut writer).await.unwrap();
    assert!(!has_feature(&mut reader, alice, "sso").await, "a removed membership is seen at once");
}

#[tokio::test]
async fn snapshots_decide_what_a_transaction_sees() {
    let db = TestDb::create("snapshots").await;
    let mut reader = db.session().await;
    let mut writer = db.session().await;
    let carol = Uuid::new_v4();
    let sub = subscribe(&mut writer, carol, "pro").await;

    // READ COMMITTED: the next statement inside an open transaction sees the commit.
    reader.execute("begin").await.unwrap();
    assert!(has_feature(&mut reader, carol, "advanced_agents").await);
    sqlx::query("select entitlements.cancel($1, false)").bind(sub).execute(&mut writer).await.unwrap();
    assert!(!has_feature(&mut reader, carol, "advanced_agents").await, "read committed: next statement sees it");
    reader.execute("commit").await.unwrap();

    // REPEATABLE READ: the transaction keeps its snapshot, as for any table.
    let sub = subscribe(&mut writer, carol, "pro").await;
    reader.execute("begin isolation level repeatable read").await.unwrap();
    assert!(has_feature(&mut reader, carol, "advanced_agents").await);
    sqlx::query("select entitlements.cancel($1, false)").bind(sub).execute(&mut writer).await.unwrap();
    assert!(has_feature(&mut reader, carol, "advanced_agents").await, "repeatable read: the snapshot still grants");
    reader.execute("commit").await.unwrap();
    assert!(!has_feature(&mut reader, carol, "advanced_agents").await, "after commit the cancellation shows");

    // Uncommitted changes are invisible to others, and a rollback leaves nothing behind
    // in the writer's own cache either.
    let dave = Uuid::new_v4();
    writer.execute("begin").await.unwrap();
    subscribe(&mut writer, dave, "pro").await;
    assert!(has_feature(&mut writer, dave, "advanced_agents").await, "the writer sees its own change");
    assert!(!has_feature(&mut reader, dave, "advanced_agents").await, "others do not see it before commit");
    writer.execute("rollback").await.unwrap();
    assert!(!has_feature(&mut writer, dave, "advanced_agents").await, "after rollback the writer does not either");
    assert!(!has_feature(&mut reader, dave, "advanced_agents").await);

    // A savepoint rolled back inside a transaction.
    writer.execute("begin").await.unwrap();
    writer.execute("savepoint s").await.unwrap();
    subscribe(&mut writer, dave, "pro").await;
    assert!(has_feature(&mut writer, dave, "advanced_agents").await);
    writer.execute("rollback to savepoint s").await.unwrap();
    assert!(!has_feature(&mut writer, dave, "advanced_agents").await, "rolled-back savepoint is not served from cache");
    writer.execute("commit").await.unwrap();
}
