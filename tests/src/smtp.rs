//! A real SMTP server per test: PyPI aiosmtpd (installed by scripts/setup.sh) on a free port,
//! run by a small Python script that appends every message it is given, parsed with Python's
//! `email` package, as a JSON line to a file this fixture reads. Killed when dropped.
use crate::http::free_port;
use crate::wait::WAIT;
use crate::worker::collect;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// argv: port, output file, how many messages to refuse before accepting, the refusal.
const SERVER: &str = r#"
import email, email.policy, json, sys, threading
from aiosmtpd.controller import Controller

port, out, refuse, refusal = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
seen = [0]

def text_of(msg, subtype):
    part = msg.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return None
    return part.get_content()

class Handler:
    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        seen[0] += 1
        accepted = seen[0] > refuse
        record = {
            "accepted": accepted,
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "from": str(msg.get("From", "")),
            "to": str(msg.get("To", "")),
            "subject": str(msg.get("Subject", "")),
            "message_id": str(msg.get("Message-ID", "")),
            "content_type": msg.get_content_type(),
            "text": text_of(msg, "plain"),
            "html": text_of(msg, "html"),
            "raw": raw.decode("utf-8", "replace"),
        }
        with open(out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return "250 2.0.0 Message accepted" if accepted else refusal

controller = Controller(Handler(), hostname="127.0.0.1", port=port)
controller.start()
print("listening", flush=True)
threading.Event().wait()
"#;

/// One message the server was given.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// Whether it was accepted (250) or refused (451, see [`SmtpServer::start_refusing`]).
    pub accepted: bool,
    /// The envelope: MAIL FROM and RCPT TO.
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// The headers, decoded.
    pub from: String,
    pub to: String,
    pub subject: String,
    /// With its angle brackets, as sent: `<id@domain>`.
    pub message_id: String,
    /// The top-level content type (`multipart/alternative`, `text/plain`).
    pub content_type: String,
    /// The text/plain and text/html parts, decoded.
    pub text: Option<String>,
    pub html: Option<String>,
    /// The message as received.
    pub raw: String,
}

impl Message {
    fn from_json(v: &Value) -> Message {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        Message {
            accepted: v["accepted"].as_bool().unwrap_or(false),
            mail_from: s("mail_from"),
            rcpt_tos: v["rcpt_tos"]
                .as_array()
                .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_owned)).collect())
                .unwrap_or_default(),
            from: s("from"),
            to: s("to"),
            subject: s("subject"),
            message_id: s("message_id"),
            content_type: s("content_type"),
            text: v["text"].as_str().map(str::to_owned),
            html: v["html"].as_str().map(str::to_owned),
            raw: s("raw"),
        }
    }
}

/// aiosmtpd on a free port of 127.0.0.1, without TLS or authentication (the worker's
/// `ENTITLEMENTS_SMTP_URL=smtp://127.0.0.1:PORT`).
pub struct SmtpServer {
    pub port: u16,
    _child: Child,
    file: PathBuf,
    log: Arc<Mutex<String>>,
}

impl SmtpServer {
    /// Start one that accepts every message.
    pub async fn start() -> SmtpServer {
        SmtpServer::start_refusing(0).await
    }

    /// Start one that answers the first `n` messages `451 4.3.0 Try again later` (recorded,
    /// with `accepted: false`), then accepts.
    pub async fn start_refusing(n: usize) -> SmtpServer {
        SmtpServer::start_refusing_with(n, "451 4.3.0 Try again later").await
    }

    /// Start one that answers the first `n` messages with `refusal` (an SMTP reply line).
    pub async fn start_refusing_with(n: usize, refusal: &str) -> SmtpServer {
        let port = free_port();
        let file = std::env::temp_dir().join(format!("pe-smtp-{}-{port}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&file);
        let python = std::env::var("ENTITLEMENTS_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let mut child = Command::new(python)
            .arg("-c")
            .arg(SERVER)
            .arg(port.to_string())
            .arg(&file)
            .arg(n.to_string())
            .arg(refusal)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs");
        let log = collect(child.stderr.take().unwrap());
        // Ready once the port accepts a connection; a server that exited says why.
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await; // let the log drain
                panic!(
                    "the SMTP server exited ({status}); is aiosmtpd installed (scripts/setup.sh)?\n{}",
                    log.lock().unwrap()
                );
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "the SMTP server did not listen on {port}:\n{}", log.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        SmtpServer { port, _child: child, file, log }
    }

    /// `smtp://127.0.0.1:PORT`, for ENTITLEMENTS_SMTP_URL.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message given so far, accepted or refused, in arrival order.
    pub fn attempts(&self) -> Vec<Message> {
        let text = std::fs::read_to_string(&self.file).unwrap_or_default();
        // Only whole lines: the server may be writing the next one.
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| Message::from_json(&serde_json::from_str(l).expect("the SMTP server writes JSON lines")))
            .collect()
    }

    /// The messages accepted so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.attempts().into_iter().filter(|m| m.accepted).collect()
    }

    /// What the server logged so far (aiosmtpd and Python errors).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}
