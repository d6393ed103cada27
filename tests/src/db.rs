//! A fresh database per test in the cluster `make test` started.
use crate::wait::{eventually, WAIT};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::str::FromStr;
use uuid::Uuid;

/// The demo catalog every test database starts with.
pub const DEMO_CATALOG: &str = include_str!("../../examples/catalog.json");

pub fn demo_catalog() -> serde_json::Value {
    serde_json::from_str(DEMO_CATALOG).expect("examples/catalog.json is JSON")
}

pub fn admin_url() -> String {
    std::env::var("ENTITLEMENTS_TEST_ADMIN_URL")
        .expect("ENTITLEMENTS_TEST_ADMIN_URL is not set: run the integration tests through `make test`")
}

/// A database of its own, `it_<name>_<pid>` (so runs sharing a cluster never meet), with the
/// extension and the demo catalog. Dropped with the `TestDb` when the test passes; after a
/// failure it is left behind to look at, until a later run of the same test drops it.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn create(name: &str) -> TestDb {
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await.expect("connect to the test cluster");
        // Left behind by an earlier run of this test that is over (its process is gone).
        let earlier: Vec<String> = sqlx::query_scalar("select datname from pg_database where datname like $1")
            .bind(format!("it\\_{}\\_%", name.replace('_', "\\_")))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        for db in earlier {
            let pid = db.rsplit('_').next().unwrap_or_default();
            if pid.parse::<u32>().is_ok() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                drop_database(&mut conn, &db).await;
            }
        }
        // The name is a test's identifier, never outside input.
        let name = format!("it_{name}_{}", std::process::id());
        drop_database(&mut conn, &name).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&mut conn).await.unwrap();
        let opts = PgConnectOptions::from_str(&admin).unwrap().database(&name);
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => admin.clone(),
        };
        let pool = PgPoolOptions::new().max_connections(60).connect_with(opts).await.unwrap();
        let workers = citus_workers();
        if !workers.is_empty() {
            citus_database(&pool, &name, &workers).await;
        }
        sqlx::query("create extension pg_entitlements").execute(&pool).await.unwrap();
        sqlx::query("select entitlements.apply_catalog($1)").bind(demo_catalog()).execute(&pool).await.unwrap();
        TestDb { name, url, pool }
    }

    /// A new session of its own (not from the pool): a backend that has cached nothing.
    pub async fn session(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("open a session")
    }

    /// `has_feature` asked by a new session.
    pub async fn has_feature(&self, customer: Uuid, feature: &str) -> bool {
        has_feature(&mut self.session().await, customer, feature).await
    }

    /// Poll `query` (a boolean scalar) until it is true; panic naming `what` after [`WAIT`].
    pub async fn wait_until(&self, query: &str, what: &str) {
        eventually(WAIT, what, || async {
            let ok: bool =
                sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned())).fetch_one(&self.pool).await.unwrap();
            ok.then_some(())
        })
        .await
    }

    /// A bigint scalar.
    pub async fn count(&self, query: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned())).fetch_one(&self.pool).await.unwrap()
    }

    pub async fn link_stripe_customer(&self, customer: Uuid, stripe_customer: &str) {
        sqlx::query("select entitlements.link_stripe_customer($1, $2)")
            .bind(customer)
            .bind(stripe_customer)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    pub async fn override_feature(&self, customer: Uuid, feature: &str, value: serde_json::Value) {
        sqlx::query("select entitlements.override_feature($1, $2, $3, reason => 'test')")
            .bind(customer)
            .bind(feature)
            .bind(value)
            .execute(&self.pool)
            .await
            .unwrap();
    }

    /// Rows of `entitlements.usage_drift()`: counters that differ from the ledger.
    pub async fn usage_drift(&self) -> i64 {
        self.count("select count(*) from entitlements.usage_drift()").await
    }

    /// A manual trial that ended a minute ago: expire_subscriptions has one row to update.
    pub async fn ended_trial(&self) -> Uuid {
        let sub: Uuid = sqlx::query_scalar("select entitlements.subscribe(gen_random_uuid(), 'pro', 'trialing')")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        sqlx::query("update entitlements.subscriptions set trial_end = now() - interval '1 minute' where id = $1")
            .bind(sub)
            .execute(&self.pool)
            .await
            .unwrap();
        sub
    }

    /// Task runs of this database waiting on a lock (a row another session holds).
    pub async fn task_runs_waiting(&self) -> i64 {
        self.count(
            "select count(*) from pg_stat_activity
              where datname = current_database() and wait_event_type = 'Lock' and query like '%run_task%'",
        )
        .await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        // Drop runs inside the test's runtime: the drop gets a thread and a runtime of its own.
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin_url()).await.expect("connect to the test cluster");
                drop_database(&mut conn, &name).await;
                for worker in citus_workers() {
                    let mut conn =
                        PgConnection::connect(&worker_url(&worker, "postgres")).await.expect("connect to a worker");
                    drop_database(&mut conn, &name).await;
                }
            })
        })
        .join();
        assert!(dropped.is_ok(), "dropping the test database {} failed", self.name);
    }
}

/// The Citus workers beside the coordinator at ENTITLEMENTS_TEST_ADMIN_URL, when the tests run
/// on a Citus cluster (scripts/test_citus.sh): `host:port,host:port`.
fn citus_workers() -> Vec<String> {
    std::env::var("ENTITLEMENTS_TEST_CITUS_WORKERS")
        .map(|v| v.split(',').map(str::trim).filter(|w| !w.is_empty()).map(str::to_owned).collect())
        .unwrap_or_default()
}

fn worker_url(worker: &str, database: &str) -> String {
    format!("postgres://postgres@{worker}/{database}")
}

/// A Citus database: the same database on every worker, citus in each, the workers in the
/// coordinator's metadata. `create extension pg_entitlements` then reaches every node.
async fn citus_database(coordinator: &PgPool, name: &str, workers: &[String]) {
    for worker in workers {
        let mut conn = PgConnection::connect(&worker_url(worker, "postgres")).await.expect("connect to a worker");
        drop_database(&mut conn, name).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&mut conn).await.unwrap();
        let mut conn = PgConnection::connect(&worker_url(worker, name)).await.expect("connect to a worker");
        sqlx::query("create extension citus").execute(&mut conn).await.unwrap();
    }
    sqlx::query("create extension citus").execute(coordinator).await.unwrap();
    let coordinator_port = PgConnectOptions::from_str(&admin_url()).unwrap().get_port();
    sqlx::query("select citus_set_coordinator_host('127.0.0.1', $1)")
        .bind(i32::from(coordinator_port))
        .execute(coordinator)
        .await
        .unwrap();
    for worker in workers {
        let (host, port) = worker.rsplit_once(':').expect("a worker is host:port");
        sqlx::query("select citus_add_node($1, $2)")
            .bind(host)
            .bind(port.parse::<i32>().expect("a worker's port"))
            .execute(coordinator)
            .await
            .unwrap();
    }
}

async fn drop_database(admin: &mut PgConnection, name: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {name} with (force)")))
        .execute(admin)
        .await
        .unwrap();
}

pub async fn has_feature(conn: &mut PgConnection, customer: Uuid, feature: &str) -> bool {
    sqlx::query_scalar("select entitlements.has_feature($1, $2)")
        .bind(customer)
        .bind(feature)
        .fetch_one(conn)
        .await
        .unwrap()
}

pub async fn subscribe(conn: &mut PgConnection, customer: Uuid, plan: &str) -> Uuid {
    sqlx::query_scalar("select entitlements.subscribe($1, $2)").bind(customer).bind(plan).fetch_one(conn).await.unwrap()
}

/// The SQLSTATE of a database error.
pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}
