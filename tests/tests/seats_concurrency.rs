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

/// Under REPEATABLE READ and SERIALIZABLE every client's snapshot is taken before it adds
/// (a `select` first, as an app's transaction would): counting members in that snapshot
/// alone would let all of them in. The seat check makes the second of two concurrent adders
/// fail with 40001; retried, seats still hold.
async fn snapshot_isolation_holds_seats(level: &str, dbname: &str) {
    let db = fresh_db(dbname).await;
    let org = Uuid::new_v4();
    sqlx::query("select entitlements.subscribe($1, 'business', quantity => 2)")
        .bind(org)
        .execute(&db.pool)
        .await
        .unwrap();
    let clients = 24;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (pool, barrier, level) = (db.pool.clone(), barrier.clone(), level.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            let user = Uuid::new_v4();
            let mut first = true;
            // Bounded retries of serialization failures, as an app must do.
            for _ in 0..200 {
                let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("set transaction isolation level {level}")))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                sqlx::query("select count(*) from entitlements.members").execute(&mut *tx).await.unwrap();
                if first {
                    barrier.wait().await;
                    first = false;
                }
                let added =
                    sqlx::query("select entitlements.add_member($1, $2)").bind(org).bind(user).execute(&mut *tx).await;
                let result = match added {
                    Ok(_) => tx.commit().await.map(|_| ()),
                    Err(e) => Err(e),
                };
                match result.map_err(|e| sqlstate(&e)) {
                    Ok(()) => return Ok(()),
                    Err(Some(code)) if code == "40001" || code == "40P01" => continue,
                    Err(other) => return Err(other),
                }
            }
            panic!("no outcome after 200 serialization retries");
        }));
    }
    let (mut ok, mut refused) = (0, 0);
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
    assert_eq!(members, 10, "{level}: the organization holds exactly its 10 seats");
    assert_eq!((ok, refused), (10, clients - 10), "{level}: the seats went through, every other add got PT403");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeatable_read_adds_never_exceed_seats() {
    snapshot_isolation_holds_seats("repeatable read", "seats_rr").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serializable_adds_never_exceed_seats() {
    snapshot_isolation_holds_seats("serializable", "seats_ser").await;
}

/// Moving members into an organization with UPDATE takes seats as INSERT does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_moves_never_exceed_seats() {
    let db = fresh_db("seats_move").await;
    let (big, small) = (Uuid::new_v4(), Uuid::new_v4());
    sqlx::query("select entitlements.subscribe($1, 'enterprise')").bind(big).execute(&db.pool).await.unwrap();
    sqlx::query("select entitlements.subscribe($1, 'business')").bind(small).execute(&db.pool).await.unwrap();
    let clients = 20;
    let mut users = Vec::new();
    for _ in 0..clients {
        let u = Uuid::new_v4();
        sqlx::query("select entitlements.add_member($1, $2)").bind(big).bind(u).execute(&db.pool).await.unwrap();
        users.push(u);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(clients));
    let mut tasks = Vec::new();
    for u in users {
        let (pool, barrier) = (db.pool.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = pool.acquire().await.unwrap();
            barrier.wait().await;
            sqlx::query(
                "update entitlements.members set organization_id = $1 where organization_id = $2 and user_id = $3",
            )
            .bind(small)
            .bind(big)
            .bind(u)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(|e| sqlstate(&e))
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => ok += 1,
            Err(Some(code)) if code == "PT403" => refused += 1,
            Err(other) => panic!("unexpected failure: {other:?}"),
        }
    }
    let members: i64 = sqlx::query_scalar("select count(*) from entitlements.members where organization_id = $1")
        .bind(small)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!((ok, refused, members), (5, clients - 5, 5), "business has 5 seats: five moves, the rest PT403");
}
