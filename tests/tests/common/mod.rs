//! Shared helpers: every test gets its own database in the cluster `make test` started
//! (ENTITLEMENTS_TEST_ADMIN_URL), with the installed extension and the demo catalog.
#![allow(dead_code)]

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool};
use std::str::FromStr;

pub fn admin_url() -> String {
    std::env::var("ENTITLEMENTS_TEST_ADMIN_URL")
        .expect("ENTITLEMENTS_TEST_ADMIN_URL is not set: run the integration tests through `make test`")
}

pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

/// Create a fresh database with the extension and the demo catalog from examples/.
pub async fn fresh_db(name: &str) -> TestDb {
    let mut admin = PgConnection::connect(&admin_url()).await.expect("connect to the test cluster");
    let name = format!("it_{name}");
    // The name is ours (a test's identifier), never user input.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("drop database if exists {name} with (force)")))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&mut admin).await.unwrap();
    let opts = PgConnectOptions::from_str(&admin_url()).unwrap().database(&name);
    let url = url_for(&name);
    let pool = PgPoolOptions::new().max_connections(60).connect_with(opts).await.unwrap();
    sqlx::query("create extension pg_entitlements").execute(&pool).await.unwrap();
    let catalog: serde_json::Value =
        serde_json::from_str(include_str!("../../../examples/catalog.json")).expect("examples/catalog.json");
    sqlx::query("select entitlements.apply_catalog($1)").bind(catalog).execute(&pool).await.unwrap();
    TestDb { name, url, pool }
}

fn url_for(db: &str) -> String {
    let admin = admin_url();
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => admin,
    }
}

pub async fn session(db: &TestDb) -> PgConnection {
    PgConnection::connect(&db.url).await.expect("open a session")
}

pub async fn has_feature(conn: &mut PgConnection, customer: uuid::Uuid, feature: &str) -> bool {
    sqlx::query_scalar("select entitlements.has_feature($1, $2)")
        .bind(customer)
        .bind(feature)
        .fetch_one(conn)
        .await
        .unwrap()
}

pub async fn subscribe(conn: &mut PgConnection, customer: uuid::Uuid, plan: &str) -> uuid::Uuid {
    sqlx::query_scalar("select entitlements.subscribe($1, $2)").bind(customer).bind(plan).fetch_one(conn).await.unwrap()
}

pub fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}
