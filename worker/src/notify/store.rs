//! The database side of delivery: thin calls of the contract's functions
//! (`entitlements.delivery_claim`, `delivery_done`, `delivery_failed`) and the row a claim
//! returns. Every decision (which deliveries are due, the backoff, when a delivery is dead)
//! is the extension's.
use crate::config::Secret;
use crate::db::Failure;
use crate::{Error, Result};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

/// The two channels of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Webhook,
    Email,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }

    fn parse(s: &str) -> Option<Channel> {
        match s {
            "webhook" => Some(Channel::Webhook),
            "email" => Some(Channel::Email),
            _ => None,
        }
    }
}

/// One claimed delivery (a row of `entitlements.delivery_work`). Debug never shows the
/// webhook secret (deliveries are logged at debug level).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub delivery_id: i64,
    pub event_id: i64,
    pub kind: String,
    pub customer_id: Option<Uuid>,
    pub channel: Channel,
    /// The URL, or the email address.
    pub target: String,
    /// The same for every attempt of this delivery: `webhook-id`, and the email's Message-ID.
    pub message_id: String,
    /// Webhooks: exactly the JSON to POST.
    pub body: Option<serde_json::Value>,
    /// Webhooks: `whsec_<base64>`.
    pub secret: Option<Secret>,
    pub email_to_name: Option<String>,
    pub subject: Option<String>,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
    /// Attempts made before this one.
    pub attempts: i32,
}

#[derive(sqlx::FromRow)]
struct Row {
    delivery_id: i64,
    event_id: i64,
    kind: String,
    customer_id: Option<Uuid>,
    channel: String,
    target: String,
    message_id: String,
    body: Option<serde_json::Value>,
    secret: Option<String>,
    email_to_name: Option<String>,
    subject: Option<String>,
    body_text: Option<String>,
    body_html: Option<String>,
    attempts: i32,
}

impl TryFrom<Row> for Delivery {
    type Error = Error;

    fn try_from(r: Row) -> Result<Delivery> {
        let channel = Channel::parse(&r.channel)
            .ok_or_else(|| Error::Unexpected(format!("delivery {}: unknown channel {:?}", r.delivery_id, r.channel)))?;
        Ok(Delivery {
            delivery_id: r.delivery_id,
            event_id: r.event_id,
            kind: r.kind,
            customer_id: r.customer_id,
            channel,
            target: r.target,
            message_id: r.message_id,
            body: r.body,
            secret: r.secret.map(Secret::new),
            email_to_name: r.email_to_name,
            subject: r.subject,
            body_text: r.body_text,
            body_html: r.body_html,
            attempts: r.attempts,
        })
    }
}

/// Lease up to `max` due deliveries of `channels` to `holder` (`entitlements.delivery_claim`).
pub async fn claim(
    pool: &PgPool,
    holder: &str,
    lease: Duration,
    max: usize,
    channels: &[Channel],
) -> Result<Vec<Delivery>> {
    let channels: Vec<&str> = channels.iter().map(|c| c.as_str()).collect();
    let rows: Vec<Row> = sqlx::query_as(
        "select delivery_id, event_id, kind, customer_id, channel, target, message_id, body, secret,
                email_to_name, subject, body_text, body_html, attempts
           from entitlements.delivery_claim($1, make_interval(secs => $2), $3, $4)",
    )
    .bind(holder)
    .bind(lease.as_secs_f64())
    .bind(i32::try_from(max).unwrap_or(i32::MAX))
    .bind(channels)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(Delivery::try_from).collect()
}

/// Record the successful attempt (`entitlements.delivery_done`); false when `holder` lost
/// the lease (nothing was recorded).
pub async fn done(
    pool: &PgPool,
    delivery_id: i64,
    holder: &str,
    status_code: Option<i32>,
    latency_ms: i32,
) -> Result<bool> {
    let recorded: Option<bool> = sqlx::query_scalar("select entitlements.delivery_done($1, $2, $3, $4)")
        .bind(delivery_id)
        .bind(holder)
        .bind(status_code)
        .bind(latency_ms)
        .fetch_one(pool)
        .await?;
    Ok(recorded.unwrap_or(false))
}

/// Record a failed attempt (`entitlements.delivery_failed`). `permanent`: retrying cannot
/// help (an SMTP 5xx refusal); the delivery is dead at once.
pub async fn failed(
    pool: &PgPool,
    delivery_id: i64,
    holder: &str,
    attempt: &FailedAttempt<'_>,
    latency_ms: i32,
) -> Result<Failure> {
    let (outcome, retry_in): (String, Option<f64>) = sqlx::query_as(
        "select f.outcome, extract(epoch from f.next_attempt_at - now())::float8
           from entitlements.delivery_failed($1, $2, $3, $4, $5, $6) f",
    )
    .bind(delivery_id)
    .bind(holder)
    .bind(attempt.error)
    .bind(attempt.status)
    .bind(latency_ms)
    .bind(attempt.permanent)
    .fetch_one(pool)
    .await?;
    Failure::from_row(&outcome, retry_in)
}

/// A failed attempt as recorded: the error (kept for admins), the HTTP status or SMTP code,
/// and whether retrying could help.
pub struct FailedAttempt<'a> {
    pub error: &'a str,
    pub status: Option<i32>,
    pub permanent: bool,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn webhook(url: &str) -> Delivery {
        Delivery {
            delivery_id: 1,
            event_id: 10,
            kind: "subscription.created".into(),
            customer_id: Some(Uuid::from_u128(7)),
            channel: Channel::Webhook,
            target: url.into(),
            message_id: "msg_p5jXN8AQM9LWM0D4loKWxJek".into(),
            body: Some(
                json!({"type": "subscription.created", "timestamp": "2026-01-01T00:00:00Z", "data": {"plan": "pro"}}),
            ),
            secret: Some(Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")),
            email_to_name: None,
            subject: None,
            body_text: None,
            body_html: None,
            attempts: 0,
        }
    }

    pub(crate) fn email() -> Delivery {
        Delivery {
            delivery_id: 2,
            channel: Channel::Email,
            target: "ada@example.org".into(),
            message_id: "evt-10-email-2".into(),
            body: None,
            secret: None,
            email_to_name: Some("Ada Lovelace".into()),
            subject: Some("Welcome to Pro".into()),
            body_text: Some("Hello Ada, welcome.".into()),
            body_html: Some("<p>Hello Ada, <b>welcome</b>.</p>".into()),
            ..webhook("unused")
        }
    }

    #[test]
    fn a_claimed_delivery_never_shows_its_secret() {
        let shown = format!("{:?}", webhook("https://app.example.org/hooks"));
        assert!(!shown.contains("MfKQ9r8G"), "{shown}");
        assert!(shown.contains("Secret(***)"), "{shown}");
    }

    #[test]
    fn channels_read_as_the_contract_writes_them() {
        assert_eq!(Channel::parse("webhook"), Some(Channel::Webhook));
        assert_eq!(Channel::parse("email"), Some(Channel::Email));
        assert_eq!(Channel::parse("sms"), None);
        assert_eq!(Channel::Email.as_str(), "email");
    }
}
