//! A thin Stripe API client: only what the worker reads (one subscription, the list of
//! subscriptions). Every call carries an `Idempotency-Key`, reused by its retries; the key
//! travels in the `Authorization` header only and is never logged or put in an error.
use crate::config::Secret;
use crate::{Error, Result};
use serde_json::Value;
use std::time::Duration;

pub const DEFAULT_API_BASE: &str = "https://api.stripe.com/";
const ATTEMPTS: u32 = 3;

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: Secret,
}

impl Client {
    pub fn new(key: &Secret, base: Option<&str>) -> Result<Client> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("entitlements-worker/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::StripeHttp(e.without_url().to_string()))?;
        let base = base.unwrap_or(DEFAULT_API_BASE).trim_end_matches('/').to_owned();
        Ok(Client { http, base, key: key.clone() })
    }

    /// The subscription as Stripe has it now, its customer expanded (so the customer's
    /// metadata.entitlements_customer_id can link it); None when Stripe does not know it.
    pub async fn subscription(&self, id: &str) -> Result<Option<Value>> {
        if !id.starts_with("sub_") || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(Error::Stripe { status: 0, message: format!("not a subscription id: {id:?}") });
        }
        self.get(&format!("/v1/subscriptions/{id}"), &[("expand[]", "customer")]).await
    }

    /// One page of all subscriptions (every status), oldest id after `starting_after`.
    pub async fn list_subscriptions(&self, starting_after: Option<&str>) -> Result<Value> {
        let mut query = vec![("status", "all"), ("limit", "100"), ("expand[]", "data.customer")];
        if let Some(after) = starting_after {
            query.push(("starting_after", after));
        }
        self.get("/v1/subscriptions", &query)
            .await?
            .ok_or_else(|| Error::Stripe { status: 404, message: "GET /v1/subscriptions: not found".into() })
    }

    /// GET with retries on 429, 5xx and connection errors; None on 404.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Option<Value>> {
        let idempotency_key = uuid::Uuid::new_v4().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .get(format!("{}{path}", self.base))
                .query(query)
                .bearer_auth(self.key.expose())
                .header("Idempotency-Key", &idempotency_key)
                .send()
                .await;
            let retryable = match sent {
                Ok(resp) if resp.status().is_success() => {
                    let body =
                        resp.json::<Value>().await.map_err(|e| Error::StripeHttp(e.without_url().to_string()))?;
                    return Ok(Some(body));
                }
                Ok(resp) if resp.status() == reqwest::StatusCode::NOT_FOUND => return Ok(None),
                Ok(resp) => {
                    let status = resp.status();
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    let message = body["error"]["message"].as_str().unwrap_or("no message").to_owned();
                    let err = Error::Stripe { status: status.as_u16(), message: format!("GET {path}: {message}") };
                    if !(status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) {
                        return Err(err);
                    }
                    err
                }
                Err(e) => Error::StripeHttp(format!("GET {path}: {}", e.without_url())),
            };
            if attempt >= ATTEMPTS {
                return Err(retryable);
            }
            tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(attempt))).await;
        }
    }
}
