//! No transaction stays open while the Stripe API answers: the applier fetches a
//! subscription holding a lease (a committed row with an expiry), never a lock of an open
//! transaction. Checked against a Stripe API that does not answer until told to.
use integration_tests::stripe::*;
use integration_tests::*;
use serde_json::json;

#[tokio::test]
async fn no_transaction_is_open_while_stripe_answers() {
    let db = TestDb::create("stripe_leases").await;
    // A "Stripe API" that tells us what it was asked and answers (an error) only when released.
    let (asked_tx, mut asked) = tokio::sync::mpsc::channel::<String>(4);
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let api = FakeHttp::start(move |request: Request| {
        let (asked_tx, mut release) = (asked_tx.clone(), release.clone());
        async move {
            let _ = asked_tx.send(request.target).await;
            let _ = release.wait_for(|released| *released).await;
            (404, json!({"error": {"message": "No such subscription", "type": "invalid_request_error"}}))
        }
    })
    .await;
    let base = format!("{}/", api.base);

    let secret = "whsec_leases";
    let w = Worker::serve(
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
    let request = tokio::time::timeout(WAIT, asked.recv()).await.expect("the worker asks the API");
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
    db.wait_until(
        "select attempts = 1 and last_error is not null from entitlements.stripe_events where id = 'evt_lease_1'",
        "the failed attempt to be recorded",
    )
    .await;
    db.wait_until("select not exists (select 1 from entitlements.leases)", "the lease to be given back").await;
    w.stop().await;
}
