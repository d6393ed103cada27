//! Seats hold under concurrency: many sessions adding members to one organization at once
//! (under every isolation level), or moving members into it, never exceed its seats.
use integration_tests::*;
use uuid::Uuid;

/// An organization on `plan` (business: 5 seats a unit).
async fn organization(db: &TestDb, plan: &str, quantity: i32) -> Uuid {
    let org = Uuid::new_v4();
    sqlx::query("select entitlements.subscribe($1, $2, quantity => $3)")
        .bind(org)
        .bind(plan)
        .bind(quantity)
        .execute(&db.pool)
        .await
        .unwrap();
    org
}

async fn members(db: &TestDb, org: Uuid) -> i64 {
    sqlx::query_scalar("select count(*) from entitlements.members where organization_id = $1")
        .bind(org)
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// (went through, refused with PT403); any other failure fails the test.
fn tally(outcomes: Vec<Result<(), Option<String>>>) -> (usize, usize) {
    let (mut ok, mut refused) = (0, 0);
    for outcome in outcomes {
        match outcome {
            Ok(()) => ok += 1,
            Err(Some(code)) if code == "PT403" => refused += 1,
            Err(other) => panic!("unexpected failure: {other:?}"),
        }
    }
    (ok, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_adds_never_exceed_seats() {
    let db = TestDb::create("seats").await;
    let org = organization(&db, "business", 2).await; // 10 seats
    let clients = 48;
    let outcomes = race(clients, |_, start| {
        let pool = db.pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            start.wait().await;
            sqlx::query("select entitlements.add_member($1, $2)")
                .bind(org)
                .bind(Uuid::new_v4())
                .execute(&mut *conn)
                .await
                .map(|_| ())
                .map_err(|e| sqlstate(&e))
        }
    })
    .await;
    let (ok, refused) = tally(outcomes);
    assert_eq!(ok, 10, "exactly the seats went through");
    assert_eq!(refused, clients - 10, "every other add was refused with PT403");
    assert_eq!(members(&db, org).await, 10);
}

/// Under REPEATABLE READ and SERIALIZABLE every client's snapshot is taken before it adds
/// (a `select` first, as an app's transaction would): counting members in that snapshot
/// alone would let all of them in. The seat check makes the second of two concurrent adders
/// fail with 40001; retried, seats still hold.
async fn snapshot_isolation_holds_seats(level: &'static str, dbname: &str) {
    let db = TestDb::create(dbname).await;
    let org = organization(&db, "business", 2).await;
    let clients = 24;
    let outcomes = race(clients, |_, start| {
        let pool = db.pool.clone();
        async move {
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
                    start.wait().await;
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
        }
    })
    .await;
    let (ok, refused) = tally(outcomes);
    assert_eq!(members(&db, org).await, 10, "{level}: the organization holds exactly its 10 seats");
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
    let db = TestDb::create("seats_move").await;
    let big = organization(&db, "enterprise", 1).await;
    let small = organization(&db, "business", 1).await;
    let clients = 20;
    let mut users = Vec::new();
    for _ in 0..clients {
        let u = Uuid::new_v4();
        sqlx::query("select entitlements.add_member($1, $2)").bind(big).bind(u).execute(&db.pool).await.unwrap();
        users.push(u);
    }
    let outcomes = race(clients, |i, start| {
        let (pool, user) = (db.pool.clone(), users[i]);
        async move {
            let mut conn = pool.acquire().await.unwrap();
            start.wait().await;
            sqlx::query(
                "update entitlements.members set organization_id = $1 where organization_id = $2 and user_id = $3",
            )
            .bind(small)
            .bind(big)
            .bind(user)
            .execute(&mut *conn)
            .await
            .map(|_| ())
            .map_err(|e| sqlstate(&e))
        }
    })
    .await;
    let (ok, refused) = tally(outcomes);
    assert_eq!(
        (ok, refused, members(&db, small).await),
        (5, clients - 5, 5),
        "business has 5 seats: five moves, the rest PT403"
    );
}
