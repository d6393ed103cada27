//! Seats hold under concurrency: many sessions adding members at once to one
//! organization never exceed its seats.
mod common;

use common::*;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_never_exceed_seats() {
    let db = fresh_db("seats").await;
    let org = Uuid::new_v4();
    // business: 5 seats per unit, quantity 2 = 10 seats.
    sqlx::query("select entitlements.subscribe($1, 'business', quantity => 2)")
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();

    let clients = 48;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (pool, barrier) = (db.pool.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            barrier.wait().await;
            sqlx::query("select entitlements.add_member($1, $2)")
                .bind(org)
                .bind(Uuid::new_v4())
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(|e| sqlstate(&e))
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Some(code)) if code == "PT403" => refused += 1,
            Err(other) => panic!("unexpected failure: {other:?}"),
        }
    }
    let members: i64 = sqlx::query_scalar("select count(*) from entitlements.members where organization_id = $1")
        .bind(org)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ok, 10, "exactly the seats went through");
    assert_eq!(refused, clients - 10, "every other add was refused with PT403");
    assert_eq!(members, 10);
}
