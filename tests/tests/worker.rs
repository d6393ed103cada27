//! The worker binary against a real database: it connects, applies a catalog, serves
//! /healthz over real HTTP, and stops cleanly on SIGTERM.
mod common;

use common::*;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

fn worker() -> Command {
    let bin = std::env::var("ENTITLEMENTS_WORKER_BIN").unwrap_or_else(|_| "entitlements-worker".into());
    let mut c = Command::new(bin);
    c.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    c
}

async fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn help_documents_the_configuration() {
    let out = worker().arg("--help").output().await.expect("entitlements-worker is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in ["DATABASE_URL", "ENTITLEMENTS_LISTEN_ADDR", "apply-catalog", "serve"] {
        assert!(text.contains(needle), "--help mentions {needle}:\n{text}");
    }
}

#[tokio::test]
async fn applies_a_catalog_and_serves_health() {
    let db = fresh_db("worker").await;
    let file = std::env::temp_dir().join("pe_worker_catalog.json");
    let mut catalog: serde_json::Value = serde_json::from_str(include_str!("../../examples/catalog.json")).unwrap();
    catalog["plans"][1]["price_cents"] = serde_json::json!(2900);
    std::fs::write(&file, catalog.to_string()).unwrap();
    let out = worker().env("DATABASE_URL", &db.url).arg("apply-catalog").arg(&file).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let changes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(changes["plans"]["updated"], serde_json::json!(["pro"]));

    // A catalog the extension refuses makes the command fail with the database's message.
    std::fs::write(&file, r#"{"plans": [{"key": "x", "entitlements": {"nope": true}}]}"#).unwrap();
    let out = worker().env("DATABASE_URL", &db.url).arg("apply-catalog").arg(&file).output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown feature"));

    let addr = "127.0.0.1:18931";
    let mut child =
        worker().env("DATABASE_URL", &db.url).env("ENTITLEMENTS_LISTEN_ADDR", addr).arg("serve").spawn().unwrap();
    let mut body = String::new();
    for _ in 0..100 {
        if let Ok(b) = http_get(addr, "/healthz").await {
            body = b;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(body.starts_with("HTTP/1.1 200"), "healthz answers 200: {body}");
    assert!(body.contains("\"database\":\"reachable\""));
    let pid = child.id().unwrap() as i32;
    // SAFETY: sending a signal to our own child process.
    unsafe { libc_kill(pid, 15) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.expect("exits within 10 s").unwrap();
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
    let _ = db.name;
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

#[tokio::test]
async fn refuses_a_database_without_the_extension() {
    let out = worker().env("DATABASE_URL", admin_url()).arg("check").output().await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not installed"));
}
