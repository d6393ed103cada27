//! POST /webhooks/stripe on the real worker binary, over real HTTP, with deliveries signed
//! here: verified ones are stored once and applied in the background; refused ones store
//! nothing; any delivery order ends in the newest state; a restart resumes the queue.
use integration_tests::stripe::*;
use integration_tests::*;
use serde_json::json;

const OLD: &str = "whsec_test_old_secret";
const NEW: &str = "whsec_test_new_secret";

#[tokio::test]
async fn verified_deliveries_are_stored_once_and_applied() {
    let db = TestDb::create("stripe_store").await;
    let w = Worker::serve(&db.url, &[("STRIPE_WEBHOOK_SECRET", &format!("{OLD},{NEW}"))]).await;
    let customer = uuid::Uuid::new_v4();
    let t = now();
    let sub = subscription("sub_store1", "cus_store1", "price_pro_monthly", "active", t - 60, t + 30 * 86400);
    let mut sub_with_meta = sub.clone();
    sub_with_meta["metadata"] = json!({"entitlements_customer_id": customer});
    let body = event("evt_store1", "customer.subscription.created", t, sub_with_meta);

    // Signed with the new secret: stored, 2xx at once.
    let (status, reply) = w.deliver(&body, Some(&signature(NEW, now(), &body))).await;
    assert_eq!((status, reply["duplicate"].clone()), (200, json!(false)), "{reply}");
    // Stripe redelivers (signed with the old secret during a roll): acknowledged, not stored again.
    let (status, reply) = w.deliver(&body, Some(&signature(OLD, now(), &body))).await;
    assert_eq!((status, reply["duplicate"].clone()), (200, json!(true)), "{reply}");
    // A header carrying one signature per secret (Stripe during a roll), ours among them.
    let both = format!(
        "{},v1={}",
        signature("whsec_someone_else", now(), &body),
        signature(OLD, now(), &body).split("v1=").nth(1).unwrap()
    );
    let (status, _) = w.deliver(&body, Some(&both)).await;
    assert_eq!(status, 200);

    wait_applied(&db, "evt_store1").await;
    assert_eq!(events_stored(&db).await, 1);
    let (attempts, outcome): (i32, String) =
        sqlx::query_as("select attempts, outcome from entitlements.stripe_events where id = 'evt_store1'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((attempts, outcome.as_str()), (1, "created"), "applied once");
    let (owner, plan): (uuid::Uuid, String) = sqlx::query_as(
        "select customer_id, plan_key from entitlements.subscriptions where stripe_subscription_id = 'sub_store1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((owner, plan.as_str()), (customer, "pro"), "customer from metadata, plan from the price");
    assert!(db.has_feature(customer, "advanced_agents").await);

    // More duplicates after it was applied change nothing.
    for _ in 0..3 {
        assert_eq!(w.deliver(&body, Some(&signature(NEW, now(), &body))).await.0, 200);
    }
    let audit_rows: i64 = sqlx::query_scalar(
        "select count(*) from entitlements.audit_log where table_name = 'entitlements.subscriptions' and reason like '%evt_store1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(audit_rows, 1, "one audited change for the event, however often it came");

    // Unknown types are stored and acknowledged.
    let other = event("evt_store2", "charge.refunded", now(), json!({"id": "ch_1", "object": "charge"}));
    assert_eq!(w.deliver(&other, Some(&signature(NEW, now(), &other))).await.0, 200);
    db.wait_until(
        "select exists (select 1 from entitlements.stripe_events where id = 'evt_store2' and outcome = 'ignored')",
        "the unknown event to be acknowledged",
    )
    .await;

    let metrics = w.metrics().await;
    assert!(metrics.contains("entitlements_webhooks_received_total{duplicate=\"false\"} 2"), "{metrics}");
    assert!(metrics.contains("entitlements_webhooks_applied_total{outcome=\"created\"} 1"), "{metrics}");
    assert!(metrics.contains("entitlements_webhook_apply_lag_seconds_count 2"), "{metrics}");
    let logs = w.log();
    assert!(!logs.contains(NEW) && !logs.contains(OLD), "secrets never logged");
    w.stop().await;
}

#[tokio::test]
async fn refused_deliveries_store_nothing() {
    let db = TestDb::create("stripe_refused").await;
    let w = Worker::serve(&db.url, &[("STRIPE_WEBHOOK_SECRET", NEW)]).await;
    let t = now();
    let body = event(
        "evt_refused1",
        "customer.subscription.created",
        t,
        subscription("sub_r1", "cus_r1", "price_pro_monthly", "active", t, t + 86400),
    );

    let forged = signature("whsec_attacker", now(), &body);
    assert_eq!(w.deliver(&body, Some(&forged)).await.0, 400, "forged");
    let tampered_body = body.replace("price_pro_monthly", "price_business_monthly");
    assert_eq!(w.deliver(&tampered_body, Some(&signature(NEW, now(), &body))).await.0, 400, "tampered");
    assert_eq!(w.deliver(&body, Some(&signature(NEW, now() - 310, &body))).await.0, 400, "stale");
    assert_eq!(w.deliver(&body, Some(&signature(NEW, now() + 310, &body))).await.0, 400, "from the future");
    assert_eq!(w.deliver(&body, None).await.0, 400, "unsigned");
    assert_eq!(w.deliver(&body, Some("t=abc,v1=zz")).await.0, 400, "malformed header");
    assert_eq!(w.deliver(&body, Some(&format!("t={}", now()))).await.0, 400, "no v1");
    // Correctly signed, but not a Stripe event / not JSON.
    let not_event = r#"{"hello": "world"}"#;
    assert_eq!(w.deliver(not_event, Some(&signature(NEW, now(), not_event))).await.0, 400, "not an event");
    let bad_id = event("nope", "customer.subscription.created", t, json!({"id": "sub_x"}));
    assert_eq!(w.deliver(&bad_id, Some(&signature(NEW, now(), &bad_id))).await.0, 400, "bad event id");
    // Oversized, even when correctly signed.
    let big = event("evt_big", "customer.updated", t, json!({"id": "cus_big", "padding": "x".repeat(300 * 1024)}));
    assert_eq!(w.deliver(&big, Some(&signature(NEW, now(), &big))).await.0, 413, "oversized");
    let huge = event("evt_huge", "customer.updated", t, json!({"id": "cus_big", "padding": "x".repeat(3 << 20)}));
    assert_eq!(w.deliver(&huge, Some(&signature(NEW, now(), &huge))).await.0, 413, "far over the limit");

    assert_eq!(events_stored(&db).await, 0, "a refused delivery stores nothing");
    // Within the tolerance the same delivery is fine: the refusals above were for the reasons tested.
    assert_eq!(w.deliver(&body, Some(&signature(NEW, now() - 290, &body))).await.0, 200);
    assert_eq!(events_stored(&db).await, 1);

    let metrics = w.metrics().await;
    for (reason, n) in [
        ("bad_signature", 2),
        ("stale", 2),
        ("missing_signature", 1),
        ("malformed_signature", 2),
        ("malformed_event", 2),
        ("oversized", 2),
    ] {
        let line = format!("entitlements_webhooks_refused_total{{reason=\"{reason}\"}} {n}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
    w.stop().await;
}

/// A client still sending an oversized body reads the 413; it is not cut off mid-write by a
/// connection closed under it (regression: CI saw "Broken pipe" instead of 413).
#[tokio::test]
async fn a_slow_oversized_delivery_reads_its_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::create("stripe_slow_big").await;
    let w = Worker::serve(&db.url, &[("STRIPE_WEBHOOK_SECRET", NEW)]).await;
    let body =
        event("evt_slow_big", "customer.updated", now(), json!({"id": "cus_big", "padding": "x".repeat(600 * 1024)}));
    let mut conn = tokio::net::TcpStream::connect(&w.addr).await.unwrap();
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nStripe-Signature: {}\r\nContent-Length: {}\r\n\r\n",
        w.addr, signature(NEW, now(), &body), body.len());
    conn.write_all(head.as_bytes()).await.unwrap();
    // The server has the headers and knows the size before the body arrives; it must still wait.
    for chunk in body.as_bytes().chunks(32 * 1024) {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        conn.write_all(chunk).await.expect("the server reads the whole oversized body");
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&reply).contains("\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed without a reply");
        reply.extend_from_slice(&buf[..n]);
    }
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert_eq!(events_stored(&db).await, 0);
    w.stop().await;
}

#[tokio::test]
async fn without_a_secret_nothing_is_accepted() {
    let db = TestDb::create("stripe_unconfigured").await;
    let w = Worker::serve(&db.url, &[]).await;
    let body = event("evt_u1", "customer.updated", now(), json!({"id": "cus_u1"}));
    assert_eq!(w.deliver(&body, Some(&signature(NEW, now(), &body))).await.0, 503);
    assert_eq!(events_stored(&db).await, 0);
    w.stop().await;
}

#[tokio::test]
async fn any_delivery_order_ends_in_the_newest_state() {
    let db = TestDb::create("stripe_order").await;
    let w = Worker::serve(&db.url, &[("STRIPE_WEBHOOK_SECRET", NEW)]).await;
    let customer = uuid::Uuid::new_v4();
    db.link_stripe_customer(customer, "cus_order1").await;
    let t = now() - 100;
    let (p0, p1, p2) = (t - 86400, t + 29 * 86400, t + 59 * 86400);
    let sub = |status: &str, start: i64, end: i64| {
        subscription("sub_order1", "cus_order1", "price_pro_monthly", status, start, end)
    };

    // The life of one subscription, delivered newest first. Two pairs share a `created` second.
    let created = event("evt_o1", "customer.subscription.created", t, sub("active", p0, p1));
    let failed = event(
        "evt_o2",
        "invoice.payment_failed",
        t + 10,
        json!({"id": "in_o2", "object": "invoice", "customer": "cus_order1",
                              "parent": {"subscription_details": {"subscription": "sub_order1"}}}),
    );
    let past_due = event("evt_o3", "customer.subscription.updated", t + 10, sub("past_due", p0, p1));
    let renewed = event("evt_o4", "customer.subscription.updated", t + 20, sub("active", p1, p2));
    let canceled = event("evt_o5", "customer.subscription.deleted", t + 20, {
        let mut s = sub("canceled", p1, p2);
        s["ended_at"] = json!(t + 20);
        s
    });
    // Each is applied before the next arrives, so the applier really sees them newest first.
    for (id, body) in
        [("evt_o5", &canceled), ("evt_o4", &renewed), ("evt_o3", &past_due), ("evt_o2", &failed), ("evt_o1", &created)]
    {
        let (status, reply) = w.deliver(body, Some(&signature(NEW, now(), body))).await;
        assert_eq!(status, 200, "{reply}");
        wait_applied(&db, id).await;
    }
    let outcomes: Vec<String> = sqlx::query_scalar("select outcome from entitlements.stripe_events order by id desc")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        ["created", "stale", "stale", "unchanged", "stale"].map(String::from),
        "evt_o5 created it; the older ones were stale or changed nothing"
    );
    db.wait_until(
        "select count(*) = 5 from entitlements.stripe_events where applied_at is not null",
        "all five events to be applied",
    )
    .await;
    assert_eq!(status_of(&db, "sub_order1").await.as_deref(), Some("canceled"), "the newest state wins");
    assert!(!db.has_feature(customer, "advanced_agents").await);
    let one: i64 = sqlx::query_scalar(
        "select count(*) from entitlements.subscriptions where stripe_subscription_id = 'sub_order1'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(one, 1);

    // The same events oldest first, for a second subscription: the same end state.
    let customer2 = uuid::Uuid::new_v4();
    db.link_stripe_customer(customer2, "cus_order2").await;
    for body in [&created, &failed, &past_due, &renewed, &canceled] {
        let body =
            body.replace("sub_order1", "sub_order2").replace("cus_order1", "cus_order2").replace("evt_o", "evt_p");
        assert_eq!(w.deliver(&body, Some(&signature(NEW, now(), &body))).await.0, 200);
    }
    db.wait_until(
        "select count(*) = 10 from entitlements.stripe_events where applied_at is not null",
        "all ten events to be applied",
    )
    .await;
    assert_eq!(status_of(&db, "sub_order2").await.as_deref(), Some("canceled"));

    // A payment failure delivered before its subscription exists is retried until it applies.
    let customer3 = uuid::Uuid::new_v4();
    db.link_stripe_customer(customer3, "cus_order3").await;
    let early_fail = event(
        "evt_q2",
        "invoice.payment_failed",
        t + 10,
        json!({"id": "in_q2", "object": "invoice", "subscription": "sub_order3"}),
    );
    assert_eq!(w.deliver(&early_fail, Some(&signature(NEW, now(), &early_fail))).await.0, 200);
    db.wait_until(
        "select exists (select 1 from entitlements.stripe_events where id = 'evt_q2' and attempts > 0 \
                        and last_error like '%not known yet%')",
        "the early failure to fail once",
    )
    .await;
    let late_created =
        created.replace("sub_order1", "sub_order3").replace("cus_order1", "cus_order3").replace("evt_o1", "evt_q1");
    assert_eq!(w.deliver(&late_created, Some(&signature(NEW, now(), &late_created))).await.0, 200);
    wait_applied(&db, "evt_q2").await; // the retry applies the payment failure
    assert_eq!(status_of(&db, "sub_order3").await.as_deref(), Some("past_due"), "past_due, as Stripe has it");
    assert!(db.has_feature(customer3, "advanced_agents").await, "within the grace period");
    assert!(w.metrics().await.contains("entitlements_webhooks_failed_total"));
    w.stop().await;
}

#[tokio::test]
async fn a_restart_resumes_the_queue() {
    let db = TestDb::create("stripe_resume").await;
    let customer = uuid::Uuid::new_v4();
    db.link_stripe_customer(customer, "cus_resume1").await;
    let t = now();
    // Stored by a worker that stopped before applying them (or by an app through SQL).
    for (i, status) in ["active", "past_due"].iter().enumerate() {
        let body = event(
            &format!("evt_resume{i}"),
            "customer.subscription.updated",
            t + i as i64,
            subscription("sub_resume1", "cus_resume1", "price_pro_monthly", status, t - 60, t + 86400),
        );
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        let new: bool = sqlx::query_scalar("select entitlements.stripe_record_event($1)")
            .bind(body)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(new);
    }
    assert_eq!(status_of(&db, "sub_resume1").await, None);
    let w = Worker::serve(&db.url, &[("STRIPE_WEBHOOK_SECRET", NEW)]).await;
    db.wait_until(
        "select count(*) = 2 from entitlements.stripe_events where applied_at is not null",
        "the stored events to be applied after the start",
    )
    .await;
    assert_eq!(status_of(&db, "sub_resume1").await.as_deref(), Some("past_due"));
    w.stop().await;
}
