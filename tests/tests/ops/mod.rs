//! Helpers for the operations tests (scheduler.rs, worker_ops.rs): the worker binary as a
//! real child process, plain HTTP/1.1 against it, and SIGTERM.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// The installed binary (`make install`), or ENTITLEMENTS_WORKER_BIN.
pub fn worker_bin() -> String {
    std::env::var("ENTITLEMENTS_WORKER_BIN").unwrap_or_else(|_| "entitlements-worker".into())
}

/// A command for the worker with a clean configuration environment: nothing inherited can
/// change what a test sees.
pub fn worker_command() -> Command {
    let mut c = Command::new(worker_bin());
    for var in [
        "DATABASE_URL",
        "ENTITLEMENTS_CONFIG",
        "ENTITLEMENTS_LISTEN_ADDR",
        "ENTITLEMENTS_LOG_FORMAT",
        "ENTITLEMENTS_WORKER_ID",
        "ENTITLEMENTS_SCHEDULE",
        "ENTITLEMENTS_SCHEDULER",
        "ENTITLEMENTS_RETRY_INITIAL",
        "ENTITLEMENTS_RETRY_MAX",
        "ENTITLEMENTS_SHUTDOWN_TIMEOUT",
        "ENTITLEMENTS_MAX_CONNECTIONS",
        "ENTITLEMENTS_READ_TIMEOUT",
        "STRIPE_WEBHOOK_SECRET",
        "STRIPE_SECRET_KEY",
        "STRIPE_API_BASE",
    ] {
        c.env_remove(var);
    }
    c.env("RUST_LOG", "info");
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    c
}

/// A running `entitlements-worker serve`, its stderr collected as it comes (so a chatty
/// worker never blocks on a full pipe).
pub struct Worker {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<String>>,
}

impl Worker {
    pub fn spawn(mut cmd: Command, addr: &str) -> Worker {
        cmd.env("ENTITLEMENTS_LISTEN_ADDR", addr);
        let mut child = cmd.spawn().expect("start entitlements-worker");
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink).await;
        });
        Worker { child, addr: addr.to_owned(), log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Wait until /healthz answers at all (any status).
    pub async fn ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if http_get(&self.addr, "/healthz").await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("worker exited early ({status:?}):\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("worker did not answer on {} within 20 s:\n{}", self.addr, self.log());
    }

    /// SIGTERM, then wait up to `limit`; returns the exit status and how long it took.
    pub async fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = self.child.id().expect("worker still running") as i32;
        let started = Instant::now();
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { kill(pid, 15) }, 0, "send SIGTERM");
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("worker did not exit within {limit:?} of SIGTERM:\n{}", self.log()))
            .unwrap();
        (status, started.elapsed())
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// A free local port (bound and released; good enough for a test).
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// A plain HTTP/1.1 GET: (status code, headers, body).
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

pub async fn get_json(addr: &str, path: &str) -> (u16, serde_json::Value) {
    let (status, _, body) = http_get(addr, path).await.expect("GET");
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is JSON ({e}): {body}")))
}

/// The value of one Prometheus sample: metric `name` with (at least) these labels.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
        if metric != name || !labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            return None;
        }
        value.parse().ok()
    })
}

/// Poll `check` every 50 ms until it returns Some, or panic after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
