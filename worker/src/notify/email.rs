//! Email over SMTP (lettre, on tokio, TLS by rustls): the extension renders subject, text and
//! HTML; this sends them as multipart/alternative from `ENTITLEMENTS_EMAIL_FROM` to the
//! customer, with `Message-ID: <message_id@entitlements>` so a resend after a crash carries
//! the same id (a receiver or a relay can drop the duplicate).
use super::store::Delivery;
use super::Attempt;
use crate::config::Secret;
use crate::{Error, Result};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// One SMTP dialogue, connect to QUIT, ends after this long (the delivery's lease is the
/// outer bound).
const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The domain part of every Message-ID.
pub const MESSAGE_ID_DOMAIN: &str = "entitlements";

/// The SMTP transport and the sender. No connection is opened until a message is sent (one
/// connection per message).
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // lettre's own Debug would show the credentials.
        f.debug_struct("Mailer").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

impl Mailer {
    /// From `ENTITLEMENTS_SMTP_URL` and `ENTITLEMENTS_EMAIL_FROM`; a configuration error
    /// (never quoting the URL, which may hold a password) when either is not usable.
    pub fn new(url: &Secret, from: &str) -> Result<Mailer> {
        let builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose()).map_err(|e| {
            Error::Config(format!(
                "ENTITLEMENTS_SMTP_URL is not a usable SMTP URL ({e}); expected smtp://host:port, \
                 smtp://host:587?tls=required or smtps://user:password@host:465"
            ))
        })?;
        let from: Mailbox = from.parse().map_err(|e| {
            Error::Config(format!("ENTITLEMENTS_EMAIL_FROM {from:?} is not `Name <address>` or `address`: {e}"))
        })?;
        Ok(Mailer { transport: builder.timeout(Some(SMTP_TIMEOUT)).build(), from })
    }

    /// The message of a delivery: text and HTML as multipart/alternative (or the one given).
    pub fn message(&self, delivery: &Delivery) -> std::result::Result<Message, String> {
        let address =
            delivery.target.parse().map_err(|e| format!("the customer's email address is not an address: {e}"))?;
        let to = Mailbox::new(delivery.email_to_name.clone().filter(|n| !n.trim().is_empty()), address);
        let builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(delivery.subject.clone().unwrap_or_default())
            .message_id(Some(format!("<{}@{MESSAGE_ID_DOMAIN}>", delivery.message_id)));
        let text = delivery.body_text.clone().filter(|t| !t.is_empty());
        let html = delivery.body_html.clone().filter(|h| !h.is_empty());
        let built = match (text, html) {
            (Some(text), Some(html)) => builder.multipart(MultiPart::alternative_plain_html(text, html)),
            (None, Some(html)) => builder.singlepart(SinglePart::html(html)),
            (text, None) => builder.singlepart(SinglePart::plain(text.unwrap_or_default())),
        };
        built.map_err(|e| format!("the message cannot be built: {e}"))
    }

    /// Send one delivery: accepted by the SMTP server is done; a refusal (with its SMTP
    /// code; final when 5xx), a transport error or a bad address is a failed attempt.
    pub async fn send(&self, delivery: &Delivery) -> Attempt {
        let message = match self.message(delivery) {
            Ok(m) => m,
            Err(e) => return Attempt::failed(None, e),
        };
        match self.transport.send(message).await {
            Ok(answer) => Attempt::done(Some(i32::from(u16::from(answer.code())))),
            Err(e) => {
                let code = e.status().map(|c| i32::from(u16::from(c)));
                let error = if e.is_timeout() { format!("SMTP: timed out: {e}") } else { format!("SMTP: {e}") };
                // 5xx: the server refuses for good (no such mailbox, rejected as spam); 4xx and
                // no answer are worth another try.
                if e.is_permanent() {
                    Attempt::refused(code, error)
                } else {
                    Attempt::failed(code, error)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::store::tests::email;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    fn mailer(url: &str) -> Mailer {
        Mailer::new(&Secret::new(url), "Billing <billing@example.org>").unwrap()
    }

    #[test]
    fn the_message_is_alternative_text_and_html_with_the_stable_id() {
        let m = mailer("smtp://127.0.0.1:2525");
        let raw = String::from_utf8(m.message(&email()).unwrap().formatted()).unwrap();
        assert!(raw.contains("Message-ID: <evt-10-email-2@entitlements>\r\n"), "{raw}");
        assert!(raw.contains("From: Billing <billing@example.org>\r\n"), "{raw}");
        assert!(raw.contains("To: \"Ada Lovelace\" <ada@example.org>\r\n"), "{raw}");
        assert!(raw.contains("Subject: Welcome to Pro\r\n"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("Hello Ada, welcome.") && raw.contains("<b>welcome</b>"), "{raw}");

        let mut text_only = email();
        text_only.body_html = None;
        text_only.email_to_name = None;
        let raw = String::from_utf8(m.message(&text_only).unwrap().formatted()).unwrap();
        assert!(
            !raw.contains("multipart") && raw.contains("text/plain") && raw.contains("To: ada@example.org"),
            "{raw}"
        );

        let mut bad = email();
        bad.target = "not an address".into();
        assert!(m.message(&bad).unwrap_err().contains("not an address"));
    }

    #[test]
    fn bad_settings_are_configuration_errors_without_the_password() {
        let err = Mailer::new(&Secret::new("ftp://u:hunter2@host"), "a@example.org").unwrap_err();
        assert!(err.is_configuration() && !err.to_string().contains("hunter2"), "{err}");
        let err = Mailer::new(&Secret::new("smtp://127.0.0.1:25"), "Billing").unwrap_err();
        assert!(err.to_string().contains("ENTITLEMENTS_EMAIL_FROM"), "{err}");
        for url in
            ["smtp://127.0.0.1:2525", "smtp://mail.example.org:587?tls=required", "smtps://u:p%40ss@mail.example.org"]
        {
            let m = mailer(url);
            assert!(!format!("{m:?}").contains("p%40ss"));
        }
    }

    /// A one-connection SMTP server that accepts everything but recipients at `refused.org`,
    /// and records each message's DATA.
    async fn smtp_server() -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let (read, mut write) = socket.into_split();
                    let mut lines = BufReader::new(read).lines();
                    write.write_all(b"220 test ESMTP\r\n").await.unwrap();
                    let mut data: Option<String> = None;
                    while let Ok(Some(line)) = lines.next_line().await {
                        if let Some(d) = data.as_mut() {
                            if line == "." {
                                seen.lock().unwrap().push(std::mem::take(d));
                                data = None;
                                write.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                            } else {
                                d.push_str(&line);
                                d.push('\n');
                            }
                            continue;
                        }
                        let verb = line.split([' ', ':']).next().unwrap_or("").to_ascii_uppercase();
                        let answer: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250 test\r\n",
                            "RCPT" if line.contains("refused.org") => b"550 5.1.1 no such user\r\n",
                            "RCPT" if line.contains("busy.org") => b"451 4.3.0 try again later\r\n",
                            "DATA" => {
                                data = Some(String::new());
                                b"354 go ahead\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 OK\r\n",
                        };
                        write.write_all(answer).await.unwrap();
                    }
                });
            }
        });
        (port, received)
    }

    #[tokio::test]
    async fn sends_over_plain_smtp_and_a_refusal_keeps_its_code_and_5xx_is_final() {
        let (port, received) = smtp_server().await;
        let m = mailer(&format!("smtp://127.0.0.1:{port}"));
        assert_eq!(m.send(&email()).await, Attempt::done(Some(250)));
        let data = received.lock().unwrap().pop().unwrap();
        assert!(data.contains("Message-ID: <evt-10-email-2@entitlements>"), "{data}");

        let mut refused = email();
        refused.target = "nobody@refused.org".into();
        let attempt = m.send(&refused).await;
        assert_eq!(attempt.status, Some(550));
        assert!(attempt.error.as_deref().unwrap_or("").contains("no such user"), "{attempt:?}");
        assert!(attempt.permanent, "a 5xx refusal is final: {attempt:?}");

        let mut busy = email();
        busy.target = "someone@busy.org".into();
        let attempt = m.send(&busy).await;
        assert_eq!((attempt.status, attempt.permanent), (Some(451), false), "a 4xx is worth another try: {attempt:?}");

        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
        let attempt = mailer(&format!("smtp://127.0.0.1:{closed}")).send(&email()).await;
        assert_eq!(attempt.status, None);
        assert!(attempt.error.is_some());
    }
}
