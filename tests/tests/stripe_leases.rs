//! No transaction stays open while the Stripe API answers: the applier fetches a
//! subscription holding a lease (a committed row with an expiry), never a lock of an open
//! transaction. Checked against a Stripe API that does not answer until told to.
mod common;
#[path = "common/stripe.rs"]
mod stripe;

use common::*;
use serde_json::json;
use std::time::Duration;
use stripe::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn no_transaction_is_open_while_stripe_answers() {
    let db = fresh_db("stripe_leases").await;
    // A "Stripe API" that accepts, reads the request, tells us, and answers only when released.
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/", api.local_addr().unwrap());
    let (asked_tx, mut asked) = tokio::sync::mpsc::channel::<String>(4);
    let (release_tx, release) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = api.accept().await else { break };
            let (asked_tx, mut release) = (asked_tx.clone(), release.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let _ = asked_tx.send(String::from_utf8_lossy(&buf[..n]).into_owned()).await;
                while !*release.borrow() {
                    if release.changed().await.is_err() {
                        return;
                    }
                }
                let body =
                    json!({"error": {"message": "No such subscription", "type": "invalid_request_error"}}).to_string();
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });

    let secret = "whsec_leases";
    let w = Worker::start(
        "leases",
        &db.url,
        &[("STRIPE_WEBHOOK_SECRET", secret), ("STRIPE_SECRET_KEY", "sk_test_leases"), ("STRIPE_API_BASE", &base)],
    )
    .await;
    let now = now();
    let body = event(
        "evt_lease_1",
        "customer.subscription.updated",
        now,
        subscription("sub_lease1", "cus_lease1", "price_pro_monthly", "active", now - 60, now + 86_400),
    );
    assert_eq!(w.deliver(&body, Some(&signature(secret, now, &body))).await.0, 200);

    // The worker is now waiting for the API.
    let request = tokio::time::timeout(Duration::from_secs(30), asked.recv()).await.expect("the worker asks the API");
    assert!(request.unwrap_or_default().contains("/v1/subscriptions/sub_lease1"));
    let (leases, open): (i64, i64) = sqlx::query_as(
        "select (select count(*) from entitlements.leases where name = 'stripe_subscription:sub_lease1'),
                (select count(*) from pg_stat_activity
                  where application_name = 'entitlements-worker' and state like 'idle in transaction%')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(leases, 1, "the fetch holds the subscription's lease");
    assert_eq!(open, 0, "and no worker connection sits in an open transaction while Stripe answers");

    // Stripe answers (an error): the attempt is recorded, the lease given back.
    release_tx.send(true).unwrap();
    wait_for(
        &db.pool,
        "select attempts = 1 and last_error is not null from entitlements.stripe_events where id = 'evt_lease_1'",
        30,
        "the failed attempt to be recorded",
    )
    .await;
    wait_for(&db.pool, "select not exists (select 1 from entitlements.leases)", 30, "the lease to be given back").await;
    w.stop().await;
}
