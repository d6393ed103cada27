//! The worker against a Stripe-compatible API server: PyPI `localstripe`, started here on its
//! own port. `reconcile-stripe` repairs drift; webhooks that localstripe itself signs and
//! delivers are applied from the object as the API has it now, not from the payload.
//!
//! localstripe only speaks the pre-2025 API shape (periods on the subscription, `plan` on the
//! items, no prices). The current shape (periods on the items, `price`) and pagination are
//! served by a recording fake API ([`FakeHttp`]), which also checks the headers of every
//! outgoing call (Idempotency-Key, Authorization).
use integration_tests::stripe::*;
use integration_tests::*;
use serde_json::{json, Value};

const KEY: &str = "sk_test_entitlements_reconcile";

async fn reconcile(db: &TestDb, base: &str) -> (bool, Value, String) {
    let out = worker_command()
        .arg("reconcile-stripe")
        .env("DATABASE_URL", &db.url)
        .env("STRIPE_SECRET_KEY", KEY)
        .env("STRIPE_API_BASE", base)
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains(KEY), "the key never appears in the output");
    let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), report, stderr)
}

async fn sub_row(db: &TestDb, stripe_id: &str) -> (String, String, i64) {
    sqlx::query_as(
        "select plan_key, status, extract(epoch from current_period_end)::int8 from entitlements.subscriptions \
                    where stripe_subscription_id = $1",
    )
    .bind(stripe_id)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn reconcile_repairs_drift_against_localstripe() {
    let db = TestDb::create("stripe_reconcile").await;
    let ls = LocalStripe::start(KEY).await;
    ls.plans().await;
    let owner = uuid::Uuid::new_v4();
    let cus = ls.customer(Some(owner)).await;
    // Created while no worker was listening: only a reconcile can find it.
    let sub = ls.subscribe(&cus, "price_pro_monthly").await;
    let sub_id = sub["id"].as_str().unwrap();
    assert_eq!(sub["status"], "active");

    let (ok, report, log) = reconcile(&db, &ls.base).await;
    assert!(ok, "{log}");
    assert_eq!((report["seen"].as_i64(), report["created"].as_i64()), (Some(1), Some(1)), "{report}");
    assert_eq!(
        sub_row(&db, sub_id).await,
        ("pro".into(), "active".into(), sub["current_period_end"].as_i64().unwrap()),
        "plan from the price, status and the period (older API shape: on the subscription)"
    );
    let linked: Option<String> =
        sqlx::query_scalar("select stripe_customer_id from entitlements.customers where id = $1")
            .bind(owner)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(linked.as_deref(), Some(cus.as_str()), "linked through the customer's metadata");
    assert!(db.has_feature(owner, "advanced_agents").await);

    // Drift in the database (a bad manual edit): repaired.
    sqlx::query(
        "update entitlements.subscriptions set status = 'canceled', ended_at = now() where stripe_subscription_id = $1",
    )
    .bind(sub_id)
    .execute(&db.pool)
    .await
    .unwrap();
    assert!(!db.has_feature(owner, "advanced_agents").await);
    let (ok, report, log) = reconcile(&db, &ls.base).await;
    assert!(ok, "{log}");
    assert_eq!(report["updated"].as_i64(), Some(1), "{report}");
    assert_eq!(sub_row(&db, sub_id).await.1, "active");
    assert!(db.has_feature(owner, "advanced_agents").await);

    // Nothing changed: nothing written.
    let (ok, report, _) = reconcile(&db, &ls.base).await;
    assert!(ok);
    assert_eq!(
        (report["created"].as_i64(), report["updated"].as_i64(), report["unchanged"].as_i64()),
        (Some(0), Some(0), Some(1)),
        "{report}"
    );

    // Changes made in Stripe that no webhook told us about: an upgrade, then a cancellation.
    let item = sub["items"]["data"][0]["id"].as_str().unwrap();
    ls.post(
        &format!("/v1/subscriptions/{sub_id}"),
        &[("items[0][id]", item), ("items[0][plan]", "price_business_monthly")],
    )
    .await;
    let (ok, report, _) = reconcile(&db, &ls.base).await;
    assert!(ok);
    assert_eq!(report["updated"].as_i64(), Some(1));
    assert_eq!(sub_row(&db, sub_id).await.0, "business");
    ls.delete(&format!("/v1/subscriptions/{sub_id}")).await;
    reconcile(&db, &ls.base).await;
    assert_eq!(sub_row(&db, sub_id).await.1, "canceled");
    assert!(!db.has_feature(owner, "advanced_agents").await);

    // A Stripe customer nobody linked: reported, the rest still applied, non-zero exit.
    let stranger = ls.customer(None).await;
    let other = ls.subscribe(&stranger, "price_pro_monthly").await;
    let owner2 = uuid::Uuid::new_v4();
    let cus2 = ls.customer(Some(owner2)).await;
    let sub2 = ls.subscribe(&cus2, "price_pro_monthly").await;
    let (ok, report, log) = reconcile(&db, &ls.base).await;
    assert!(!ok, "a subscription that could not be applied makes the command fail");
    assert_eq!((report["failed"].as_i64(), report["created"].as_i64()), (Some(1), Some(1)), "{report}");
    assert!(log.contains(other["id"].as_str().unwrap()) && log.contains("not linked"), "{log}");
    assert_eq!(sub_row(&db, sub2["id"].as_str().unwrap()).await.1, "active");
}

#[tokio::test]
async fn webhooks_from_localstripe_apply_the_object_as_the_api_has_it() {
    let db = TestDb::create("stripe_localstripe_webhooks").await;
    let ls = LocalStripe::start(KEY).await;
    ls.plans().await;
    let secret = "whsec_from_localstripe";
    let w = Worker::serve(
        &db.url,
        &[("STRIPE_WEBHOOK_SECRET", secret), ("STRIPE_SECRET_KEY", KEY), ("STRIPE_API_BASE", &ls.base)],
    )
    .await;
    // localstripe signs and delivers its events to the worker, like Stripe.
    ls.post("/_config/webhooks/worker", &[("url", &w.url("/webhooks/stripe")), ("secret", secret)]).await;

    let owner = uuid::Uuid::new_v4();
    let cus = ls.customer(Some(owner)).await;
    let sub = ls.subscribe(&cus, "price_pro_monthly").await;
    let sub_id = sub["id"].as_str().unwrap().to_owned();
    db.wait_until(
        &format!(
            "select exists (select 1 from entitlements.subscriptions \
                                  where stripe_subscription_id = '{sub_id}' and status = 'active')"
        ),
        "localstripe's customer.subscription.created to be applied",
    )
    .await;
    assert!(db.has_feature(owner, "advanced_agents").await);

    // A correctly signed event whose payload says "canceled" while Stripe says "active": with
    // a key, the worker applies what the API says.
    let mut lie = sub.clone();
    lie["status"] = json!("canceled");
    let body = event("evt_payload_is_old", "customer.subscription.deleted", now(), lie);
    assert_eq!(w.deliver(&body, Some(&signature(secret, now(), &body))).await.0, 200);
    db.wait_until(
        "select applied_at is not null from entitlements.stripe_events where id = 'evt_payload_is_old'",
        "the event to be applied",
    )
    .await;
    assert_eq!(status_of(&db, &sub_id).await.as_deref(), Some("active"), "the fetched object, not the payload");

    // The real cancellation, delivered by localstripe.
    ls.delete(&format!("/v1/subscriptions/{sub_id}")).await;
    db.wait_until(
        &format!(
            "select status = 'canceled' from entitlements.subscriptions where stripe_subscription_id = '{sub_id}'"
        ),
        "localstripe's customer.subscription.deleted to be applied",
    )
    .await;
    assert!(!db.has_feature(owner, "advanced_agents").await);

    // Checkout (localstripe has no Checkout Sessions; the completed event is written here as
    // Stripe sends it): a Stripe customer nobody linked, linked by client_reference_id, and the
    // session's subscription fetched and applied with it.
    let buyer = uuid::Uuid::new_v4();
    let cus2 = ls.customer(None).await;
    let sub2 = ls.subscribe(&cus2, "price_pro_monthly").await;
    let sub2_id = sub2["id"].as_str().unwrap().to_owned();
    let checkout = event(
        "evt_checkout_1",
        "checkout.session.completed",
        now(),
        json!({"id": "cs_test_1", "object": "checkout.session", "mode": "subscription",
                                "status": "complete", "customer": cus2, "subscription": sub2_id,
                                "client_reference_id": buyer}),
    );
    assert_eq!(w.deliver(&checkout, Some(&signature(secret, now(), &checkout))).await.0, 200);
    db.wait_until(
        "select applied_at is not null from entitlements.stripe_events where id = 'evt_checkout_1'",
        "the checkout event to be applied",
    )
    .await;
    let outcome: String =
        sqlx::query_scalar("select outcome from entitlements.stripe_events where id = 'evt_checkout_1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(outcome.starts_with("linked"), "{outcome}");
    let (owner2, status2): (uuid::Uuid, String) =
        sqlx::query_as("select customer_id, status from entitlements.subscriptions where stripe_subscription_id = $1")
            .bind(&sub2_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((owner2, status2.as_str()), (buyer, "active"));
    assert!(db.has_feature(buyer, "advanced_agents").await);
    let log = w.stop().await;
    assert!(!log.contains(KEY) && !log.contains(secret), "secrets never logged");
}

#[tokio::test]
async fn reconcile_reads_the_current_api_shape_across_pages() {
    let db = TestDb::create("stripe_recorded").await;
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    for (owner, cus) in [(a, "cus_recA"), (b, "cus_recB")] {
        db.link_stripe_customer(owner, cus).await;
    }
    let t = now();
    // Recorded from the current API (2025-03-31.basil and later): periods on the items only.
    let page1 = json!({"object": "list", "url": "/v1/subscriptions", "has_more": true,
                       "data": [subscription("sub_rec_a", "cus_recA", "price_pro_yearly", "trialing", t - 60, t + 365 * 86400)]});
    let page2 = json!({"object": "list", "url": "/v1/subscriptions", "has_more": false,
                       "data": [subscription("sub_rec_b", "cus_recB", "price_business_monthly", "past_due", t - 60, t + 30 * 86400)]});
    // The first recording whose needle the request's target contains answers it; else 404.
    let pages = [
        ("starting_after=sub_rec_a", page2),
        ("/v1/subscriptions?expand[0]=data.customer&limit=100&status=all", page1),
    ];
    let api = FakeHttp::start(move |request: Request| {
        let page = pages.iter().find(|(needle, _)| request.target.contains(needle)).map(|(_, page)| page.clone());
        async move { page.map_or((404, json!({"error": {"message": "no recording"}})), |page| (200, page)) }
    })
    .await;
    let (ok, report, log) = reconcile(&db, &api.base).await;
    assert!(ok, "{log}");
    assert_eq!((report["seen"].as_i64(), report["created"].as_i64()), (Some(2), Some(2)), "{report}");
    assert_eq!(
        sub_row(&db, "sub_rec_a").await,
        ("pro".into(), "trialing".into(), t + 365 * 86400),
        "plan and period end read from the item"
    );
    assert_eq!(sub_row(&db, "sub_rec_b").await, ("business".into(), "past_due".into(), t + 30 * 86400));

    let seen = api.requests();
    assert_eq!(seen.len(), 2, "two pages: {seen:?}");
    let mut keys = Vec::new();
    for r in &seen {
        assert_eq!(r.header("authorization"), Some(format!("Bearer {KEY}").as_str()), "{}", r.target);
        keys.push(r.header("idempotency-key").unwrap_or_else(|| panic!("{} carries an Idempotency-Key", r.target)));
    }
    assert_ne!(keys[0], keys[1], "one key per call");
}
