//! App webhooks, signed the Standard Webhooks way (https://www.standardwebhooks.com):
//! `webhook-id` (the delivery's message id, the same on every attempt), `webhook-timestamp`
//! (Unix seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256>` over
//! `"{id}.{timestamp}.{body}"`, keyed with the base64-decoded part of the endpoint's secret
//! after `whsec_`. The body is serialized once and the signature covers exactly those bytes.
use super::store::Delivery;
use super::Attempt;
use crate::{Error, Result};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// How much of a refusing endpoint's answer is kept in the attempt's error.
const ANSWER_EXCERPT: usize = 300;

/// A secret that is not `whsec_<base64>`; never quotes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadSecret;

impl std::fmt::Display for BadSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the endpoint's signing secret is not whsec_ followed by base64")
    }
}

/// The HMAC key of a secret: the base64 after `whsec_` (a secret without the prefix is
/// taken whole, as the Standard Webhooks libraries do).
pub fn secret_key(secret: &str) -> std::result::Result<Vec<u8>, BadSecret> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    match BASE64.decode(encoded.trim()) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(BadSecret),
    }
}

/// `v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> std::result::Result<String, BadSecret> {
    let key = secret_key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes keys of any length");
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

/// The HTTP client of every webhook delivery.
#[derive(Clone)]
pub struct Webhooks {
    client: reqwest::Client,
    timeout: Duration,
}

impl Webhooks {
    /// A client whose every request (connect, send, answer) ends after `timeout`; redirects
    /// are not followed (a 3xx is a failed attempt: the endpoint's URL is what was registered).
    pub fn new(timeout: Duration) -> Result<Webhooks> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("entitlements-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Config(format!("webhook HTTP client: {}", describe(e))))?;
        Ok(Webhooks { client, timeout })
    }

    /// POST one delivery: 2xx is done; any other status, a transport error or the timeout
    /// is a failed attempt.
    pub async fn send(&self, delivery: &Delivery) -> Attempt {
        let Some(body) = &delivery.body else { return Attempt::failed(None, "the delivery has no body") };
        let Some(secret) = &delivery.secret else { return Attempt::failed(None, "the endpoint has no secret") };
        let body = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(e) => return Attempt::failed(None, format!("the body does not serialize: {e}")),
        };
        let timestamp = unix_now();
        let signature = match sign(secret.expose(), &delivery.message_id, timestamp, &body) {
            Ok(s) => s,
            Err(e) => return Attempt::failed(None, e.to_string()),
        };
        let sent = self
            .client
            .post(&delivery.target)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &delivery.message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        let mut answer = match sent {
            Ok(a) => a,
            Err(e) if e.is_timeout() => {
                return Attempt::failed(None, format!("timed out after {}s", self.timeout.as_secs_f64()))
            }
            Err(e) => return Attempt::failed(None, describe(e)),
        };
        let status = answer.status();
        if status.is_success() {
            return Attempt::done(Some(i32::from(status.as_u16())));
        }
        // What the endpoint said, cut short: often the reason (a bad signature, a parse error).
        let mut excerpt = Vec::new();
        while excerpt.len() < ANSWER_EXCERPT {
            match answer.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                _ => break,
            }
        }
        let mut error = format!("HTTP {status}");
        let text = String::from_utf8_lossy(&excerpt[..excerpt.len().min(ANSWER_EXCERPT)]).trim().to_owned();
        if !text.is_empty() {
            error.push_str(": ");
            error.push_str(&text);
        }
        Attempt::failed(Some(i32::from(status.as_u16())), error)
    }
}

/// A transport error in words: reqwest's own, then its causes (connection refused, a TLS
/// failure), never the URL (which may carry a token in its query).
fn describe(e: reqwest::Error) -> String {
    use std::error::Error as _;
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// The endpoint's scheme, host and path: how a webhook target is logged (no query, no
/// credentials).
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!("{}://{}{}", u.scheme(), u.host_str().unwrap_or(""), u.path()),
        Err(_) => "(not a URL)".into(),
    }
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::store::tests::webhook;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::{Arc, Mutex};

    #[test]
    fn signs_the_standard_webhooks_test_vector() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        // Without the prefix the same key (as the reference libraries take it).
        assert_eq!(
            sign(
                "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            Ok(signature)
        );
        let err = sign("whsec_not base64!", "m", 1, b"{}").unwrap_err().to_string();
        assert!(!err.contains("not base64!"), "{err}");
        assert!(sign("whsec_", "m", 1, b"{}").is_err());
    }

    #[test]
    fn logged_urls_lose_their_query_and_credentials() {
        assert_eq!(shown_url("https://u:pw@app.example.org/hooks?token=abc"), "https://app.example.org/hooks");
        assert_eq!(shown_url("nope"), "(not a URL)");
    }

    type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

    /// An endpoint answering `status` (after `delay`), recording what it received.
    async fn endpoint(status: StatusCode, delay: Duration) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::post({
                let seen = seen.clone();
                move |headers: HeaderMap, body: axum::body::Bytes| async move {
                    seen.lock().unwrap().push((headers, body.to_vec()));
                    tokio::time::sleep(delay).await;
                    (status, "signature mismatch")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks?token=abc", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, seen)
    }

    #[tokio::test]
    async fn posts_the_body_signed_and_reads_the_answer() {
        let (url, seen) = endpoint(StatusCode::NO_CONTENT, Duration::ZERO).await;
        let delivery = webhook(&url);
        let attempt = Webhooks::new(Duration::from_secs(5)).unwrap().send(&delivery).await;
        assert_eq!(attempt, Attempt::done(Some(204)));
        let (headers, body) = seen.lock().unwrap().pop().unwrap();
        assert_eq!(body, serde_json::to_vec(delivery.body.as_ref().unwrap()).unwrap());
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        assert_eq!(header("content-type"), "application/json");
        assert_eq!(header("webhook-id"), "msg_p5jXN8AQM9LWM0D4loKWxJek");
        let timestamp: i64 = header("webhook-timestamp").parse().unwrap();
        assert!((unix_now() - timestamp).abs() < 60);
        let expected = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", &header("webhook-id"), timestamp, &body).unwrap();
        assert_eq!(header("webhook-signature"), expected);
    }

    #[tokio::test]
    async fn a_refusal_a_timeout_and_no_server_are_failed_attempts() {
        let (url, _) = endpoint(StatusCode::UNAUTHORIZED, Duration::ZERO).await;
        let attempt = Webhooks::new(Duration::from_secs(5)).unwrap().send(&webhook(&url)).await;
        assert_eq!(attempt.status, Some(401));
        assert_eq!(attempt.error.as_deref(), Some("HTTP 401 Unauthorized: signature mismatch"));

        let (url, _) = endpoint(StatusCode::OK, Duration::from_secs(5)).await;
        let attempt = Webhooks::new(Duration::from_millis(300)).unwrap().send(&webhook(&url)).await;
        assert_eq!(attempt.status, None);
        assert_eq!(attempt.error.as_deref(), Some("timed out after 0.3s"));

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let attempt = Webhooks::new(Duration::from_secs(5))
            .unwrap()
            .send(&webhook(&format!("http://{closed}/hooks?token=abc")))
            .await;
        let error = attempt.error.unwrap();
        assert!(!error.contains("token=abc") && !error.is_empty(), "{error}");

        let mut no_secret = webhook(&url);
        no_secret.secret = None;
        let attempt = Webhooks::new(Duration::from_secs(5)).unwrap().send(&no_secret).await;
        assert_eq!(attempt.error.as_deref(), Some("the endpoint has no secret"));
    }
}
