//! Waiting for a condition, with a bound; starting racers together.
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Barrier;

/// How long a test waits for something the system does in the background before it fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// Poll `check` every 50 ms until it returns Some; panic naming `what` after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Run `n` tasks at once; task `i` gets its index and a barrier that all `n` wait on, so the
/// part after `start.wait()` begins together. Returns their results in order.
pub async fn race<T, F, Fut>(n: usize, task: F) -> Vec<T>
where
    F: Fn(usize, Arc<Barrier>) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let start = Arc::new(Barrier::new(n));
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(task(i, start.clone()))).collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("a racing task panicked"));
    }
    out
}
