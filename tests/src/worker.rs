//! `entitlements-worker` as a child process.
use crate::http::{free_addr, get_json, http_get};
use serde_json::Value;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

/// Every setting the worker reads from the environment: cleared for each worker a test starts
/// (nothing inherited changes what a test sees), and each documented in `--help`.
pub const WORKER_SETTINGS: [&str; 41] = [
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
    "ENTITLEMENTS_PROVISION",
    "ENTITLEMENTS_KUBE_URL",
    "ENTITLEMENTS_SYNAPSE_IMAGE",
    "ENTITLEMENTS_DATA_STORAGE_CLASS",
    "ENTITLEMENTS_MEDIA_STORAGE_CLASS",
    "ENTITLEMENTS_INGRESS_CLASS",
    "ENTITLEMENTS_CLUSTER_ISSUER",
    "ENTITLEMENTS_PROVISION_RESYNC",
    "ENTITLEMENTS_PROVISION_LEASE",
    "ENTITLEMENTS_PROVISION_CONCURRENCY",
    "ENTITLEMENTS_PROVISION_REQUEUE",
    "ENTITLEMENTS_NAMESPACE_STUCK_AFTER",
    "ENTITLEMENTS_DELIVERY",
    "ENTITLEMENTS_SMTP_URL",
    "ENTITLEMENTS_EMAIL_FROM",
    "ENTITLEMENTS_DELIVERY_CONCURRENCY",
    "ENTITLEMENTS_DELIVERY_LEASE",
    "ENTITLEMENTS_WEBHOOK_TIMEOUT",
    "ENTITLEMENTS_CONSOLE",
    "ENTITLEMENTS_CONSOLE_SECRET",
    "ENTITLEMENTS_CONSOLE_ROLE",
    "ENTITLEMENTS_PUBLIC_URL",
    "SUPABASE_JWT_SECRET",
    "SUPABASE_JWKS_URL",
    "ENTITLEMENTS_CONSOLE_SESSION",
    "ENTITLEMENTS_SIGN_IN_PER_MINUTE",
];

/// The installed binary (`make install`), or ENTITLEMENTS_WORKER_BIN.
pub fn worker_bin() -> String {
    std::env::var("ENTITLEMENTS_WORKER_BIN").unwrap_or_else(|_| "entitlements-worker".into())
}

/// A command for the worker with a clean environment (RUST_LOG=info), its output piped: for a
/// one-shot command use `.output()`, for `serve` hand it to [`Worker::start`].
pub fn worker_command() -> Command {
    let mut c = Command::new(worker_bin());
    for var in WORKER_SETTINGS {
        c.env_remove(var);
    }
    c.env("RUST_LOG", "info");
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    c
}

/// A running `entitlements-worker serve`. Its stderr (the log) is collected as it comes, so a
/// chatty worker never blocks on a full pipe; killed if dropped while running.
pub struct Worker {
    pub child: Child,
    pub addr: String,
    log: Arc<Mutex<String>>,
}

impl Worker {
    /// `serve` for `database_url` with the scheduler off and these settings; ready when it returns.
    pub async fn serve(database_url: &str, env: &[(&str, &str)]) -> Worker {
        let mut cmd = worker_command();
        cmd.arg("serve").env("DATABASE_URL", database_url).env("ENTITLEMENTS_SCHEDULER", "false");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Worker::start(cmd).await
    }

    /// Spawn `cmd` (from [`worker_command`], with `serve`) on a free port and wait until ready.
    pub async fn start(cmd: Command) -> Worker {
        let mut w = Worker::spawn(cmd, &free_addr());
        w.ready().await;
        w
    }

    /// Spawn `cmd` listening on `addr` (ENTITLEMENTS_LISTEN_ADDR), without waiting.
    pub fn spawn(mut cmd: Command, addr: &str) -> Worker {
        cmd.env("ENTITLEMENTS_LISTEN_ADDR", addr);
        let mut child = cmd.spawn().expect("entitlements-worker is installed (or set ENTITLEMENTS_WORKER_BIN)");
        let log = collect(child.stderr.take().expect("stderr is piped"));
        let _ = child.stdout.take().map(collect);
        Worker { child, addr: addr.to_owned(), log }
    }

    /// Wait until /healthz answers at all (any status); panics with the log if the worker exits
    /// first or does not answer within 20 s.
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

    /// Everything the worker logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `GET path`: (status, head, body).
    pub async fn get(&self, path: &str) -> (u16, String, String) {
        http_get(&self.addr, path).await.unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", self.log()))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        get_json(&self.addr, path).await
    }

    /// The body of /metrics.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = self.get("/metrics").await;
        assert_eq!(status, 200, "/metrics answers 200");
        body
    }

    /// POST a Stripe delivery with this `Stripe-Signature` (None: no header): (status, JSON reply).
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

    /// Send SIGTERM, and return at once.
    pub fn sigterm(&self) {
        let pid = self.child.id().expect("worker still running") as i32;
        // SAFETY: sending a signal to our own child process.
        assert_eq!(unsafe { kill(pid, 15) }, 0, "send SIGTERM");
    }

    /// Wait for the exit, at most `limit` (panics with the log after that).
    pub async fn exit_within(&mut self, limit: Duration) -> ExitStatus {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("worker did not exit within {limit:?}:\n{}", self.log()))
            .unwrap()
    }

    /// SIGTERM, then wait up to `limit`: the exit status and how long it took.
    pub async fn terminate(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.sigterm();
        let status = self.exit_within(limit).await;
        (status, started.elapsed())
    }

    /// SIGTERM, and the worker exits cleanly within 10 s. Returns the log.
    pub async fn stop(mut self) -> String {
        let (status, _) = self.terminate(Duration::from_secs(10)).await;
        let log = self.log();
        assert!(status.success(), "SIGTERM is a clean exit: {status:?}\n{log}");
        log
    }
}

extern "C" {
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Read `from` to its end in the background, into a string the caller can look at any time.
pub(crate) fn collect(mut from: impl AsyncRead + Unpin + Send + 'static) -> Arc<Mutex<String>> {
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    log
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
