//! Plain HTTP/1.1 for the tests: a GET that shows the raw head, free ports, and a scripted
//! server standing in for an API (the Stripe API in shapes localstripe does not speak, or one
//! that answers only when told to).
use serde_json::Value;
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A free local address (bound, then released for the server about to start).
pub fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET path` over a new connection: (status code, head, body). An error when nothing listens.
pub async fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, head.to_owned(), body.to_owned()))
}

/// `GET path`, whose body must be JSON.
pub async fn get_json(addr: &str, path: &str) -> (u16, Value) {
    let (status, _, body) = http_get(addr, path).await.unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is JSON ({e}): {body}")))
}

/// One request a [`FakeHttp`] received: its target (path and query) and headers (names in
/// lower case).
#[derive(Clone, Debug)]
pub struct Request {
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A scripted HTTP/1.1 server on a free port: every request is recorded, then answered with
/// the (status, JSON body) that `answer` gives for it (each connection in a task of its own,
/// so an answer may wait).
pub struct FakeHttp {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl FakeHttp {
    pub async fn start<F, Fut>(answer: F) -> FakeHttp
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = (u16, Value)> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Request>>> = Arc::default();
        let (log, answer) = (seen.clone(), Arc::new(answer));
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let Some(request) = read_head(&mut s).await else { return };
                    log.lock().unwrap().push(request.clone());
                    let (status, body) = answer(request).await;
                    let body = body.to_string();
                    let reason = match status {
                        200 => "OK",
                        404 => "Not Found",
                        _ => "Status",
                    };
                    let reply = format!(
                        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                         connection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        FakeHttp { base, seen }
    }

    /// Every request so far, in the order they came.
    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

/// Read up to the end of the head (the tests' fakes answer GETs; a body is not read).
async fn read_head(s: &mut tokio::net::TcpStream) -> Option<Request> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = text.lines();
    let target = lines.next()?.split(' ').nth(1)?.to_owned();
    let headers = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Some(Request { target, headers })
}
