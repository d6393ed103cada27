//! Security monitoring across real sessions: refusals whose transactions roll back are still
//! counted, exactly, per customer and minute, by the flush workers (not a row per call); the
//! worker reports refused Stripe webhooks, and /metrics shows open alerts by severity.
use integration_tests::stripe::*;
use integration_tests::*;
use sqlx::Connection;
use std::time::Duration;
use uuid::Uuid;

async fn signals(db: &TestDb, kind: &str, subject: &str) -> i64 {
    sqlx::query_scalar(
        "select coalesce(sum(count), 0)::bigint from entitlements.security_signals where kind = $1 and subject = $2",
    )
    .bind(kind)
    .bind(subject)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Six sessions at once, each refused 25 times in 25 transactions of its own (PT429 rolls each
/// back), then gone: all 150 refusals are counted, in a handful of rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_in_rolled_back_transactions_are_counted_exactly() {
    let db = TestDb::create("signals_exact").await;
    let customer = Uuid::new_v4();
    sqlx::query("select entitlements.subscribe($1, 'free')").bind(customer).execute(&db.pool).await.unwrap();
    let outcomes = race(6, |_, start| {
        let url = db.url.clone();
        async move {
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            start.wait().await;
            let mut refused = 0;
            for _ in 0..25 {
                let e = sqlx::query("select entitlements.consume($1, 'audio_minutes', 1000)")
                    .bind(customer)
                    .execute(&mut conn)
                    .await
                    .expect_err("over the limit");
                refused += usize::from(sqlstate(&e).as_deref() == Some("PT429"));
            }
            // A try_consume refused inside a transaction that is then rolled back counts too.
            sqlx::query("begin").execute(&mut conn).await.unwrap();
            let allowed: bool =
                sqlx::query_scalar("select allowed from entitlements.try_consume($1, 'audio_minutes', 1000)")
                    .bind(customer)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            sqlx::query("rollback").execute(&mut conn).await.unwrap();
            conn.close().await.unwrap();
            (refused, allowed)
        }
    })
    .await;
    assert!(outcomes.iter().all(|o| *o == (25, false)), "every call refused: {outcomes:?}");
    let subject = customer.to_string();
    let counted = eventually(WAIT, "156 refusals counted", || async {
        let n = signals(&db, "quota_refused", &subject).await;
        (n >= 156).then_some(n)
    })
    .await;
    // Nothing more arrives late: every worker has written once, and only once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((counted, signals(&db, "quota_refused", &subject).await), (156, 156), "exactly the refusals made");
    let rows =
        db.count(&format!("select count(*) from entitlements.security_signals where subject = '{subject}'")).await;
    assert!(rows <= 3, "counted per minute, not per call: {rows} rows");
    assert_eq!(db.count("select count(*) from entitlements.usage_ledger").await, 0, "nothing was consumed");

    sqlx::query("select entitlements.configure_security_rule('quota_abuse', threshold => 150)")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("select entitlements.run_task('security_scan')").execute(&db.pool).await.unwrap();
    let (events, count): (i64, i32) = sqlx::query_as(
        "select events, count from entitlements.security_alerts where rule = 'quota_abuse' and customer_id = $1",
    )
    .bind(customer)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((events, count), (156, 1), "one quota_abuse alert with the evidence");
}

/// Refused webhook deliveries become signals; the scan's high alert shows on /metrics.
#[tokio::test]
async fn refused_webhooks_raise_an_alert_that_metrics_shows() {
    let db = TestDb::create("signals_webhooks").await;
    let w = Worker::serve(&db.url, &[("STRIPE_WEBHOOK_SECRET", "whsec_test_monitoring")]).await;
    let body = event("evt_forged", "customer.subscription.created", now(), serde_json::json!({"id": "sub_x"}));
    for _ in 0..5 {
        let (status, _) = w.deliver(&body, Some(&signature("whsec_attacker", now(), &body))).await;
        assert_eq!(status, 400, "a forged signature is refused");
    }
    assert_eq!(signals(&db, "webhook_refused", "stripe").await, 5, "each refusal counted as it is answered");
    assert_eq!(db.count("select count(*) from entitlements.stripe_events").await, 0, "nothing stored");

    sqlx::query("select entitlements.run_task('security_scan')").execute(&db.pool).await.unwrap();
    let severity: String =
        sqlx::query_scalar("select severity from entitlements.security_alerts where rule = 'webhook_signature'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(severity, "high");
    let metrics = w.metrics().await;
    assert_eq!(sample(&metrics, "entitlements_security_alerts_open", &[("severity", "high")]), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "entitlements_security_alerts_open", &[("severity", "critical")]), Some(0.0));
    assert_eq!(
        db.count("select count(*) from entitlements.outbox where kind = 'security.alert'").await,
        1,
        "the high alert goes out through the outbox"
    );
    w.stop().await;
}
