//! Helpers for the Stripe tests: a worker process with Stripe configured, deliveries signed
//! here (with hmac/sha2 directly, not with the worker's code), and waiting for the database.
#![allow(dead_code)]

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sqlx::PgPool;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::process::{Child, Command};

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// A free local port (bound, then released for the server about to start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn worker_bin() -> String {
    std::env::var("ENTITLEMENTS_WORKER_BIN").unwrap_or_else(|_| "entitlements-worker".into())
}

/// `Stripe-Signature` as Stripe computes it: HMAC-SHA256 of "{t}.{body}", hex.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
    json!({"id": id, "object": "event", "type": kind, "created": created, "api_version": "2025-03-31.basil",
           "livemode": false, "data": {"object": object}})
    .to_string()
}

/// A subscription as the current API (2025-03-31 and later) shapes it: periods on the items.
pub fn subscription(id: &str, customer: &str, price: &str, status: &str, start: i64, end: i64) -> Value {
    json!({"id": id, "object": "subscription", "customer": customer, "status": status,
           "cancel_at_period_end": false, "metadata": {},
           "items": {"object": "list", "data": [{"id": format!("si_{id}"), "object": "subscription_item",
               "price": {"id": price, "object": "price"}, "quantity": 1,
               "current_period_start": start, "current_period_end": end}]}})
}

pub struct Worker {
    pub child: Child,
    pub addr: String,
    pub log: std::path::PathBuf,
}

impl Worker {
    /// `entitlements-worker serve` with the scheduler off; waits until /healthz answers.
    pub async fn start(name: &str, database_url: &str, env: &[(&str, &str)]) -> Worker {
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::env::temp_dir().join(format!("pe_stripe_{name}.log"));
        let mut cmd = Command::new(worker_bin());
        cmd.arg("serve")
            .env("DATABASE_URL", database_url)
            .env("ENTITLEMENTS_LISTEN_ADDR", &addr)
            .env("ENTITLEMENTS_SCHEDULER", "false")
            .env("RUST_LOG", "info")
            .env_remove("STRIPE_WEBHOOK_SECRET")
            .env_remove("STRIPE_SECRET_KEY")
            .env_remove("STRIPE_API_BASE")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("entitlements-worker is installed (or ENTITLEMENTS_WORKER_BIN)");
        let w = Worker { child, addr, log };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if let Ok(r) = client.get(format!("http://{}/healthz", w.addr)).send().await {
                if r.status().is_success() {
                    return w;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("worker did not come up; log:\n{}", w.logs());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// POST a delivery with the given `Stripe-Signature` (None: no header).
    pub async fn deliver(&self, body: &str, signature: Option<&str>) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .post(self.url("/webhooks/stripe"))
            .header("content-type", "application/json; charset=utf-8")
            .body(body.to_owned());
        if let Some(s) = signature {
            req = req.header("Stripe-Signature", s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics")).await.unwrap().text().await.unwrap()
    }

    /// SIGTERM, and wait for the exit.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling our own child process.
            unsafe { kill(pid as i32, 15) };
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Poll `query` (a boolean scalar) until it is true; panics with `what` after `secs`.
pub async fn wait_for(pool: &PgPool, query: &str, secs: u64, what: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let ok: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned())).fetch_one(pool).await.unwrap();
        if ok {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn status_of(pool: &PgPool, stripe_id: &str) -> Option<String> {
    sqlx::query_scalar("select status from entitlements.subscriptions where stripe_subscription_id = $1")
        .bind(stripe_id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

pub async fn events_stored(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from entitlements.stripe_events").fetch_one(pool).await.unwrap()
}
