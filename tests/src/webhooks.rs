//! An app's webhook endpoint: an HTTP server on 127.0.0.1 that verifies every request's
//! Standard Webhooks signature itself (https://www.standardwebhooks.com; hmac/sha2/base64
//! here, independently of the worker's code), records it, and answers as the test says (2xx,
//! an error status the first N times, or never).
//!
//! A request is verified when `webhook-signature` holds a `v1,<base64>` equal to
//! HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}"), key = the base64 after `whsec_`
//! of the secret, and the timestamp is within [`TOLERANCE`] of now. An unverified request is
//! answered 401, whatever the script says.
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How far `webhook-timestamp` may be from now (the Standard Webhooks libraries' default).
pub const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Status(u16),
    /// This status, after a delay.
    Delayed(Duration, u16),
    /// Never: the request waits until the receiver is dropped (for a sender's timeout, or a
    /// sender killed mid-request).
    Hang,
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// 0 for the first request, counting every request.
    pub index: usize,
    pub method: String,
    /// Path and query.
    pub target: String,
    pub id: Option<String>,
    pub timestamp: Option<i64>,
    pub signature: Option<String>,
    pub content_type: Option<String>,
    pub verified: bool,
    /// Why it did not verify.
    pub refusal: Option<String>,
    /// The body as JSON (Null when it is not JSON).
    pub body: Value,
    pub raw: String,
    /// The status answered; None while hanging (or never).
    pub answered: Option<u16>,
    /// Unix seconds when it arrived.
    pub received_at: f64,
}

type Script = Box<dyn Fn(&Received) -> Answer + Send>;

struct Shared {
    secret: String,
    received: Mutex<Vec<Received>>,
    script: Mutex<Script>,
    stop: watch::Receiver<()>,
}

/// The endpoint, answering 200 to every verified request until told otherwise; stopped when
/// dropped (hanging requests are then closed).
pub struct WebhookReceiver {
    /// `http://127.0.0.1:PORT/webhooks`; any path is accepted.
    pub url: String,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub secret: String,
    shared: Arc<Shared>,
    _stop: watch::Sender<()>,
    server: JoinHandle<()>,
}

impl WebhookReceiver {
    /// Start one with `secret` (`whsec_<base64>`), e.g. what add_webhook_endpoint returned.
    pub async fn start(secret: &str) -> WebhookReceiver {
        let (stop_tx, stop_rx) = watch::channel(());
        let shared = Arc::new(Shared {
            secret: secret.to_owned(),
            received: Mutex::new(Vec::new()),
            script: Mutex::new(Box::new(|_| Answer::Status(200))),
            stop: stop_rx,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap().to_string();
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("the webhook receiver");
        });
        WebhookReceiver {
            url: format!("http://{addr}/webhooks"),
            addr,
            secret: secret.to_owned(),
            shared,
            _stop: stop_tx,
            server,
        }
    }

    /// Answer every verified request from now on with `answer`.
    pub fn respond(&self, answer: Answer) {
        self.script(move |_| answer);
    }

    /// Answer `status` to the first `n` requests (counting every request since the start),
    /// 200 after that.
    pub fn fail_first(&self, n: usize, status: u16) {
        self.script(move |r| if r.index < n { Answer::Status(status) } else { Answer::Status(200) });
    }

    /// Hang on the first `n` requests, 200 after that.
    pub fn hang_first(&self, n: usize) {
        self.script(move |r| if r.index < n { Answer::Hang } else { Answer::Status(200) });
    }

    /// Decide each verified request's answer with `f`.
    pub fn script(&self, f: impl Fn(&Received) -> Answer + Send + 'static) {
        *self.shared.script.lock().unwrap() = Box::new(f);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The `webhook-id` of every verified request, in arrival order, repeats kept (whatever
    /// was answered: a resend after a failed attempt shows twice).
    pub fn verified_ids(&self) -> Vec<String> {
        self.received().into_iter().filter(|r| r.verified).filter_map(|r| r.id).collect()
    }

    /// The `webhook-id` of every verified request answered 2xx (what the app accepted), in
    /// order, repeats kept: exactly-once per id means each appears once here.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.verified && r.answered.is_some_and(|s| (200..300).contains(&s)))
            .filter_map(|r| r.id)
            .collect()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (id, timestamp_text, signature) =
        (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
    let timestamp = timestamp_text.as_deref().and_then(|t| t.parse::<i64>().ok());
    let refusal = match (&id, &timestamp_text, &signature) {
        (Some(id), Some(ts), Some(sig)) => verify(&shared.secret, id, ts, sig, &body, unix_now()).err(),
        _ => Some("missing webhook-id, webhook-timestamp or webhook-signature".to_owned()),
    };
    let index = {
        let mut received = shared.received.lock().unwrap();
        let index = received.len();
        received.push(Received {
            index,
            method: method.to_string(),
            target: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
            id,
            timestamp,
            signature,
            content_type: header("content-type"),
            verified: refusal.is_none(),
            refusal: refusal.clone(),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            raw: String::from_utf8_lossy(&body).into_owned(),
            answered: None,
            received_at: SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64(),
        });
        index
    };
    let answer = match &refusal {
        Some(_) => Answer::Status(401),
        None => {
            let record = shared.received.lock().unwrap()[index].clone();
            (shared.script.lock().unwrap())(&record)
        }
    };
    let status = match answer {
        Answer::Status(s) => s,
        Answer::Delayed(d, s) => {
            tokio::time::sleep(d).await;
            s
        }
        Answer::Hang => {
            // Until the receiver is dropped (its sender closes the channel).
            let mut stop = shared.stop.clone();
            while stop.changed().await.is_ok() {}
            return (StatusCode::SERVICE_UNAVAILABLE, "stopped".into());
        }
    };
    shared.received.lock().unwrap()[index].answered = Some(status);
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, refusal.unwrap_or_else(|| "ok".into()))
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` for `secret` (`whsec_<base64>`).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = BASE64.decode(secret.strip_prefix("whsec_").unwrap_or(secret)).expect("a whsec_<base64> secret");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// Check a request as a Standard Webhooks receiver does: the timestamp within [`TOLERANCE`]
/// of `now` (Unix seconds), and one of the space-separated `v1,` signatures matching.
pub fn verify(secret: &str, id: &str, timestamp: &str, signatures: &str, body: &[u8], now: i64) -> Result<(), String> {
    let ts: i64 = timestamp.parse().map_err(|_| format!("webhook-timestamp {timestamp:?} is not Unix seconds"))?;
    if (now - ts).unsigned_abs() > TOLERANCE.as_secs() {
        return Err(format!("webhook-timestamp {ts} is more than {}s from now ({now})", TOLERANCE.as_secs()));
    }
    let expected = sign(secret, id, ts, body);
    let matches =
        signatures.split(' ').any(|s| s.starts_with("v1,") && constant_time_eq(s.as_bytes(), expected.as_bytes()));
    if matches {
        Ok(())
    } else {
        Err("no webhook-signature matches".into())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}
