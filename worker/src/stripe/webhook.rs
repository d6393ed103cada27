//! `POST /webhooks/stripe`: verify the signature on the raw body, store the event once by id,
//! answer at once; the applier (applier.rs) applies it. A refused delivery stores nothing.
use super::signature::{self, Refusal};
use crate::metrics::{WEBHOOKS_RECEIVED, WEBHOOKS_REFUSED};
use crate::Context;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// Stripe's events are a few kilobytes; the largest (invoices with many lines) stay far below.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// An oversized body is read on and thrown away up to this size, so that a client still sending
/// gets to read the 413 instead of a reset connection; past it the connection is simply closed.
const DRAIN_LIMIT_BYTES: usize = 8 << 20;

type Reply = (StatusCode, Json<Value>);

fn refuse(status: StatusCode, reason: &'static str, message: &str) -> Reply {
    metrics::counter!(WEBHOOKS_REFUSED, "reason" => reason).increment(1);
    tracing::warn!(%reason, "refused a Stripe webhook delivery");
    (status, Json(json!({"error": message, "reason": reason})))
}

#[derive(serde::Deserialize)]
struct Head {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

enum Delivery {
    Read(Bytes),
    TooLarge,
    Unreadable,
}

/// Keeps at most `MAX_BODY_BYTES`; never holds more than that in memory.
async fn read_body(headers: &HeaderMap, mut body: Body) -> Delivery {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT_BYTES) {
        return Delivery::TooLarge;
    }
    let mut kept = Vec::with_capacity(declared.unwrap_or(0).min(MAX_BODY_BYTES));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return Delivery::Unreadable };
        let Ok(data) = frame.into_data() else { continue }; // trailers
        seen += data.len();
        if seen > DRAIN_LIMIT_BYTES {
            return Delivery::TooLarge;
        }
        if seen <= MAX_BODY_BYTES {
            kept.extend_from_slice(&data);
        }
    }
    if seen > MAX_BODY_BYTES {
        Delivery::TooLarge
    } else {
        Delivery::Read(kept.into())
    }
}

pub async fn receive(State(ctx): State<Context>, headers: HeaderMap, body: Body) -> Reply {
    let Some(secret) = ctx.config.stripe.webhook_secret.as_ref() else {
        // 503, not 4xx: Stripe keeps retrying until the deployment has its secret.
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "not_configured", "STRIPE_WEBHOOK_SECRET is not set");
    };
    let body = match read_body(&headers, body).await {
        Delivery::Read(b) => b,
        Delivery::TooLarge => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "oversized", "body too large"),
        Delivery::Unreadable => return refuse(StatusCode::BAD_REQUEST, "unreadable", "could not read the body"),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or_default();
    let header = headers.get("stripe-signature").and_then(|v| v.to_str().ok());
    if let Err(refusal) = signature::verify(header, &body, &signature::parse_secrets(secret.expose()), now) {
        let message = match refusal {
            Refusal::Missing => "missing Stripe-Signature header",
            Refusal::Malformed => "malformed Stripe-Signature header",
            Refusal::Stale => "signature timestamp outside the 300 s tolerance",
            Refusal::Mismatch => "no signature matches",
        };
        // Counted for the security rules (webhook_signature); a database that cannot take it
        // does not change the answer.
        if let Err(e) = crate::db::record_signal(&ctx.pool, "webhook_refused", "stripe", refusal.reason()).await {
            tracing::warn!(error = %e, "could not record a refused webhook for the security rules");
        }
        return refuse(StatusCode::BAD_REQUEST, refusal.reason(), message);
    }
    // Signed by Stripe, so well-formed in practice; checked anyway so a bad one stores nothing.
    let Ok(text) = std::str::from_utf8(&body) else {
        return refuse(StatusCode::BAD_REQUEST, "malformed_event", "body is not UTF-8");
    };
    let Ok(head) = serde_json::from_str::<Head>(text) else {
        return refuse(StatusCode::BAD_REQUEST, "malformed_event", "body is not a Stripe event");
    };
    // The raw text goes to jsonb as it is: no re-serialization on the hot path.
    let stored = sqlx::query_scalar::<_, bool>("select entitlements.stripe_record_event(($1::text)::jsonb)")
        .bind(text)
        .fetch_one(&ctx.pool)
        .await;
    match stored {
        Ok(new) => {
            let duplicate = if new { "false" } else { "true" };
            metrics::counter!(WEBHOOKS_RECEIVED, "duplicate" => duplicate).increment(1);
            tracing::debug!(event = %head.id, kind = %head.kind, new, "stored a Stripe event");
            if new {
                ctx.stripe_wake.notify_one();
            }
            (StatusCode::OK, Json(json!({"received": true, "duplicate": !new})))
        }
        // Class 22 (data exception): the event itself is unacceptable; retrying will not help.
        Err(sqlx::Error::Database(e)) if e.code().is_some_and(|c| c.starts_with("22")) => {
            refuse(StatusCode::BAD_REQUEST, "malformed_event", e.message())
        }
        Err(e) => {
            // 5xx: Stripe retries later. Nothing was stored.
            metrics::counter!(WEBHOOKS_REFUSED, "reason" => "database").increment(1);
            tracing::error!(error = %e, event = %head.id, "could not store a Stripe event");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "could not store the event; retry"})))
        }
    }
}
