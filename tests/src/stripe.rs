//! Stripe payloads as Stripe sends them, signed here with hmac/sha2 (not with the worker's
//! code), and what the database made of them.
use crate::db::TestDb;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds.
pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// `Stripe-Signature` as Stripe computes it: HMAC-SHA256 of "{t}.{body}", hex.
pub fn signature(secret: &str, t: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// An event around `object`, as JSON text (what is signed and posted).
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

/// The status of the subscription with this Stripe id, if there is one.
pub async fn status_of(db: &TestDb, stripe_id: &str) -> Option<String> {
    sqlx::query_scalar("select status from entitlements.subscriptions where stripe_subscription_id = $1")
        .bind(stripe_id)
        .fetch_optional(&db.pool)
        .await
        .unwrap()
}

pub async fn events_stored(db: &TestDb) -> i64 {
    db.count("select count(*) from entitlements.stripe_events").await
}

/// Wait until the stored event `id` has been applied.
pub async fn wait_applied(db: &TestDb, id: &str) {
    let query = format!(
        "select coalesce((select applied_at is not null from entitlements.stripe_events where id = '{id}'), false)"
    );
    db.wait_until(&query, &format!("event {id} to be applied")).await
}
