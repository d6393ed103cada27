//! The delivery fixtures themselves, without a database or a worker: the SMTP server records
//! what Python's smtplib sends it (and refuses when told to); the webhook receiver verifies a
//! request signed here, refuses a tampered or stale one, and answers as scripted.
use integration_tests::webhooks::{sign, verify};
use integration_tests::{eventually, Answer, SmtpServer, WebhookReceiver, WAIT};
use serde_json::json;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Send one multipart/alternative message with Python's smtplib; the exit status and stderr.
async fn send_with_smtplib(port: u16, message_id: &str) -> (bool, String) {
    let script = r#"
import smtplib, sys
from email.message import EmailMessage
m = EmailMessage()
m["From"] = "Billing <billing@example.org>"
m["To"] = "Ada Lovelace <ada@example.org>"
m["Subject"] = "Welcome to Pro"
m["Message-ID"] = sys.argv[2]
m.set_content("Hello Ada, welcome.")
m.add_alternative("<p>Hello Ada, <b>welcome</b>.</p>", subtype="html")
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10) as s:
    s.send_message(m)
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &port.to_string(), message_id])
        .output()
        .await
        .expect("python3 runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn the_smtp_server_records_each_message_parsed() {
    let smtp = SmtpServer::start().await;
    assert_eq!(smtp.url(), format!("smtp://127.0.0.1:{}", smtp.port));
    assert!(smtp.messages().is_empty());
    let (ok, stderr) = send_with_smtplib(smtp.port, "<evt-1-email-1@entitlements>").await;
    assert!(ok, "smtplib: {stderr}\n{}", smtp.log());
    let messages = eventually(WAIT, "the message to be recorded", || async {
        let m = smtp.messages();
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert!(m.accepted);
    assert_eq!(m.mail_from, "billing@example.org");
    assert_eq!(m.rcpt_tos, ["ada@example.org"]);
    assert_eq!(m.from, "Billing <billing@example.org>");
    assert_eq!(m.to, "Ada Lovelace <ada@example.org>");
    assert_eq!(m.subject, "Welcome to Pro");
    assert_eq!(m.message_id, "<evt-1-email-1@entitlements>");
    assert_eq!(m.content_type, "multipart/alternative");
    assert_eq!(m.text.as_deref().map(str::trim), Some("Hello Ada, welcome."));
    assert_eq!(m.html.as_deref().map(str::trim), Some("<p>Hello Ada, <b>welcome</b>.</p>"));
    assert!(m.raw.contains("Subject: Welcome to Pro"), "{}", m.raw);
}

#[tokio::test]
async fn the_smtp_server_refuses_the_first_messages_when_told() {
    let smtp = SmtpServer::start_refusing(1).await;
    let (ok, stderr) = send_with_smtplib(smtp.port, "<a@entitlements>").await;
    assert!(!ok && stderr.contains("451"), "the first is refused: {stderr}");
    let (ok, stderr) = send_with_smtplib(smtp.port, "<a@entitlements>").await;
    assert!(ok, "the second is accepted: {stderr}");
    let attempts = smtp.attempts();
    assert_eq!(attempts.iter().map(|m| m.accepted).collect::<Vec<_>>(), [false, true]);
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(smtp.messages()[0].message_id, "<a@entitlements>");
}

#[test]
fn the_receivers_signer_agrees_with_the_standard_webhooks_test_vector() {
    let (secret, id, ts, body) = (
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
        br#"{"test": 2432232314}"#,
    );
    let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(sign(secret, id, ts, body), signature);
    assert_eq!(verify(secret, id, "1614265330", signature, body, ts), Ok(()));
    // Several signatures (a rotated secret) and one matches.
    assert_eq!(verify(secret, id, "1614265330", &format!("v1,bm9wZQ== {signature}"), body, ts), Ok(()));
    assert!(verify(secret, id, "1614265330", signature, br#"{"test": 2432232315}"#, ts).is_err(), "tampered body");
    assert!(verify(secret, "msg_other", "1614265330", signature, body, ts).is_err(), "another id");
    assert!(verify(secret, id, "1614265330", signature, body, ts + 301).is_err(), "too old");
    assert!(verify(secret, id, "1614265330", signature, body, ts - 301).is_err(), "too far ahead");
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// POST `body` with Standard Webhooks headers (signed with `secret`, or with `signature` as
/// given); the status.
async fn post(url: &str, id: &str, ts: i64, body: &[u8], signature: &str) -> reqwest::Result<u16> {
    let r = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .body(body.to_vec())
        .timeout(Duration::from_secs(2))
        .send()
        .await?;
    Ok(r.status().as_u16())
}

#[tokio::test]
async fn the_webhook_receiver_verifies_records_and_answers_as_scripted() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let hooks = WebhookReceiver::start(secret).await;
    let body = serde_json::to_vec(&json!({"type": "subscription.created", "data": {"plan": "pro"}})).unwrap();
    let ts = now();

    assert_eq!(post(&hooks.url, "msg_1", ts, &body, &sign(secret, "msg_1", ts, &body)).await.unwrap(), 200);
    let mut tampered = body.clone();
    tampered[10] ^= 1;
    assert_eq!(post(&hooks.url, "msg_2", ts, &tampered, &sign(secret, "msg_2", ts, &body)).await.unwrap(), 401);
    let old = ts - 3600;
    assert_eq!(post(&hooks.url, "msg_3", old, &body, &sign(secret, "msg_3", old, &body)).await.unwrap(), 401);
    let other = "whsec_c2VjcmV0LW9mLWFub3RoZXItYXBw";
    assert_eq!(post(&hooks.url, "msg_4", ts, &body, &sign(other, "msg_4", ts, &body)).await.unwrap(), 401);

    let got = hooks.received();
    assert_eq!(got.len(), 4);
    assert!(got[0].verified && got[0].refusal.is_none());
    assert_eq!(got[0].body["data"]["plan"], "pro");
    assert_eq!(got[0].timestamp, Some(ts));
    assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(got[0].target, "/webhooks");
    assert!(got[1..].iter().all(|r| !r.verified && r.answered == Some(401)), "{got:#?}");
    assert!(got[2].refusal.as_deref().unwrap().contains("from now"), "{:?}", got[2].refusal);
    assert_eq!(hooks.verified_ids(), ["msg_1"]);
    assert_eq!(hooks.accepted_ids(), ["msg_1"]);

    // 500 the first time (counting from the start: requests 0..5), then 200.
    hooks.fail_first(5, 500);
    let signed = |id: &str| sign(secret, id, ts, &body);
    assert_eq!(post(&hooks.url, "msg_5", ts, &body, &signed("msg_5")).await.unwrap(), 500);
    assert_eq!(post(&hooks.url, "msg_5", ts, &body, &signed("msg_5")).await.unwrap(), 200);
    assert_eq!(hooks.verified_ids(), ["msg_1", "msg_5", "msg_5"]);
    assert_eq!(hooks.accepted_ids(), ["msg_1", "msg_5"]);

    // Hanging: the sender times out, the request is recorded unanswered.
    hooks.respond(Answer::Hang);
    let hung = post(&hooks.url, "msg_6", ts, &body, &signed("msg_6")).await;
    assert!(hung.is_err_and(|e| e.is_timeout()));
    let last = hooks.received().pop().unwrap();
    assert!(last.verified && last.answered.is_none(), "{last:?}");

    hooks.respond(Answer::Delayed(Duration::from_millis(100), 204));
    assert_eq!(post(&hooks.url, "msg_7", ts, &body, &signed("msg_7")).await.unwrap(), 204);
    assert_eq!(hooks.accepted_ids(), ["msg_1", "msg_5", "msg_7"]);
}
