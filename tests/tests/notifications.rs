//! Notifications end to end (issue #11, first slice): events written by the change that
//! causes them, delivered by the real worker to a real webhook receiver (which verifies the
//! Standard Webhooks signature itself) and a real SMTP server (aiosmtpd).
use integration_tests::*;
use serde_json::Value;
use uuid::Uuid;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

async fn endpoint(db: &TestDb, receiver: &WebhookReceiver, kinds: &[&str]) {
    sqlx::query("select entitlements.add_webhook_endpoint($1, $2, $3)")
        .bind(&receiver.url)
        .bind(kinds.iter().map(|k| k.to_string()).collect::<Vec<_>>())
        .bind(SECRET)
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn deliverer(db: &TestDb, id: &str, extra: &[(&str, &str)]) -> Worker {
    let mut env = vec![("ENTITLEMENTS_WORKER_ID", id), ("ENTITLEMENTS_DELIVERY_LEASE", "10s")];
    env.extend_from_slice(extra);
    Worker::serve(&db.url, &env).await
}

fn ids_of(receiver: &WebhookReceiver, kind: &str) -> Vec<String> {
    receiver.received().into_iter().filter(|r| r.body["type"] == kind).filter_map(|r| r.id).collect()
}

#[tokio::test]
async fn a_subscription_is_told_to_the_app_and_the_customer() {
    let db = TestDb::create("notify_subscribe").await;
    let receiver = WebhookReceiver::start(SECRET).await;
    endpoint(&db, &receiver, &["subscription.created", "subscription.canceled"]).await;
    let smtp = SmtpServer::start().await;
    let customer = Uuid::new_v4();
    sqlx::query("insert into entitlements.customers (id, email, display_name) values ($1, 'ann@example.com', 'Ann')")
        .bind(customer)
        .execute(&db.pool)
        .await
        .unwrap();

    let smtp_url = smtp.url();
    let worker = deliverer(
        &db,
        "w-notify",
        &[("ENTITLEMENTS_SMTP_URL", &smtp_url), ("ENTITLEMENTS_EMAIL_FROM", "Billing <billing@example.com>")],
    )
    .await;
    // A change rolled back tells nobody anything (checked at the end: one of each arrives).
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query("select entitlements.subscribe($1, 'pro')").bind(customer).execute(&mut *tx).await.unwrap();
    tx.rollback().await.unwrap();
    let sub: Uuid = sqlx::query_scalar("select entitlements.subscribe($1, 'pro')")
        .bind(customer)
        .fetch_one(&db.pool)
        .await
        .unwrap();

    let r = &receiver;
    let created = eventually(WAIT, "subscription.created at the app", || async move {
        r.received().into_iter().find(|x| x.body["type"] == "subscription.created" && x.answered == Some(200))
    })
    .await;
    assert!(created.verified, "signed the Standard Webhooks way: {:?}\n{}", created.refusal, worker.log());
    assert_eq!(created.body["data"]["subscription_id"], Value::String(sub.to_string()));
    assert_eq!(created.body["data"]["customer_id"], Value::String(customer.to_string()));
    assert_eq!(created.body["data"]["plan"], "pro");

    let s = &smtp;
    let mail = eventually(WAIT, "the welcome email", || async move { s.messages().into_iter().next() }).await;
    assert_eq!(mail.rcpt_tos, ["ann@example.com"]);
    assert_eq!(mail.subject, "Welcome to pro");
    assert!(mail.text.as_deref().unwrap_or_default().contains("Hello Ann"), "{mail:?}");
    assert!(mail.html.is_some(), "text and HTML");

    // Recorded: each delivery once, with its attempt.
    db.wait_until(
        "select count(*) = 2 from entitlements.deliveries where status = 'delivered'",
        "both deliveries recorded as delivered",
    )
    .await;
    assert_eq!(db.count("select count(*) from entitlements.delivery_attempts where ok").await, 2);
    assert_eq!(ids_of(&receiver, "subscription.created").len(), 1, "the rolled-back subscription was never sent");
    assert_eq!(smtp.attempts().len(), 1, "nor mailed");

    // The customer reads its own events; the app's endpoint URL is not theirs to see.
    let mut me = db.session().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "set role authenticated; select set_config('request.jwt.claims', '{{\"sub\": \"{customer}\"}}', false)"
    )))
    .execute(&mut me)
    .await
    .unwrap();
    let mine: i64 = sqlx::query_scalar("select count(*) from entitlements.outbox").fetch_one(&mut me).await.unwrap();
    assert_eq!(mine, 1);
    let seen: Vec<String> =
        sqlx::query_scalar("select channel from entitlements.deliveries").fetch_all(&mut me).await.unwrap();
    assert_eq!(seen, ["email"]);
}

/// A failing endpoint is retried with backoff, each attempt recorded; a worker killed in the
/// middle of a delivery loses its lease and another sends it again with the same id, so the
/// receiver accepts it once.
#[tokio::test]
async fn retried_and_resent_after_a_crash_with_the_same_id() {
    let db = TestDb::create("notify_retry").await;
    let receiver = WebhookReceiver::start(SECRET).await;
    endpoint(&db, &receiver, &["*"]).await;
    receiver.fail_first(2, 500);
    let worker = deliverer(&db, "w-retry", &[]).await;
    let first = Uuid::new_v4();
    sqlx::query("select entitlements.subscribe($1, 'pro')").bind(first).execute(&db.pool).await.unwrap();
    db.wait_until(
        "select count(*) = 1 from entitlements.deliveries where status = 'delivered'",
        "delivered on the third try",
    )
    .await;
    let codes: Vec<Option<i32>> =
        sqlx::query_scalar("select status_code from entitlements.delivery_attempts order by id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(codes, [Some(500), Some(500), Some(200)], "{}", worker.log());
    let ids = ids_of(&receiver, "subscription.created");
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|i| *i == ids[0]), "every attempt carries the same webhook-id: {ids:?}");
    drop(worker);

    // The next delivery hangs at the receiver; its sender is killed mid-request.
    // (Requests are counted from the receiver's start: the three above were 0 to 2.)
    receiver.script(|r| if r.index == 3 { Answer::Hang } else { Answer::Status(200) });
    let mut doomed = deliverer(&db, "w-doomed", &[("ENTITLEMENTS_WEBHOOK_TIMEOUT", "5m")]).await;
    let second = Uuid::new_v4();
    sqlx::query("select entitlements.subscribe($1, 'pro')").bind(second).execute(&db.pool).await.unwrap();
    let r = &receiver;
    eventually(WAIT, "the doomed worker is mid-delivery", || async move {
        (ids_of(r, "subscription.created").len() == 4).then_some(())
    })
    .await;
    doomed.child.kill().await.unwrap();
    let survivor = deliverer(&db, "w-survivor", &[]).await;
    db.wait_until(
        "select count(*) = 2 from entitlements.deliveries where status = 'delivered'",
        "resent by the survivor",
    )
    .await;
    let second_ids: Vec<String> = receiver
        .received()
        .into_iter()
        .filter(|x| x.body["data"]["customer_id"] == Value::String(second.to_string()))
        .filter_map(|x| x.id)
        .collect();
    assert_eq!(second_ids.len(), 2, "sent twice (the first never answered): {}", survivor.log());
    assert_eq!(second_ids[0], second_ids[1], "with the same webhook-id, so the receiver can deduplicate");
    let accepted = receiver.accepted_ids().into_iter().filter(|i| *i == second_ids[0]).count();
    assert_eq!(accepted, 1, "accepted once");
}

#[tokio::test]
async fn an_smtp_refusal_is_final_and_its_text_stays_out_of_the_log() {
    let db = TestDb::create("notify_smtp_5xx").await;
    let smtp = SmtpServer::start_refusing_with(1, "550 5.1.1 <ann@example.com>: Recipient address rejected").await;
    let customer = Uuid::new_v4();
    sqlx::query("insert into entitlements.customers (id, email) values ($1, 'ann@example.com')")
        .bind(customer)
        .execute(&db.pool)
        .await
        .unwrap();
    let smtp_url = smtp.url();
    let worker = deliverer(
        &db,
        "w-smtp-5xx",
        &[("ENTITLEMENTS_SMTP_URL", &smtp_url), ("ENTITLEMENTS_EMAIL_FROM", "billing@example.com")],
    )
    .await;
    sqlx::query("select entitlements.subscribe($1, 'pro')").bind(customer).execute(&db.pool).await.unwrap();
    let (attempts, error): (i32, String) = eventually(WAIT, "the email delivery ends dead", || async {
        sqlx::query_as::<_, (i32, String)>(
            "select d.attempts, d.last_error from entitlements.deliveries d
              where d.channel = 'email' and d.status = 'dead'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap()
    })
    .await;
    assert_eq!(attempts, 1, "a 5xx is not retried");
    assert!(error.contains("Recipient address rejected"), "the reply is kept for admins: {error}");
    let status: Option<i32> =
        sqlx::query_scalar("select status_code from entitlements.delivery_attempts order by id desc limit 1")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, Some(550));
    let metrics = worker.metrics().await;
    assert_eq!(sample(&metrics, "entitlements_deliveries_dead", &[("channel", "email")]), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "entitlements_deliveries_pending", &[("channel", "email")]), Some(0.0), "{metrics}");
    let log = worker.stop().await;
    assert!(log.contains("SMTP reply 550"), "the log names the code:\n{log}");
    assert!(
        !log.contains("ann@example.com") && !log.contains("Recipient address rejected"),
        "but not the reply:\n{log}"
    );
    assert_eq!(smtp.attempts().len(), 1, "the server was asked once");
}
