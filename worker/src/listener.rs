//! The HTTP listener with limits, so slow or many clients cannot tie the worker up: at most
//! `max_connections` are served at once (the rest wait in the kernel's accept queue), a
//! connection that sends nothing for `read_timeout` is closed (slow headers, a stalled
//! body, an idle keep-alive), and none lives longer than `MAX_LIFETIME` (a client that
//! trickles a byte now and then). While a request is being handled (`mark_busy`, a
//! middleware) the connection's silence is the handler's, and does not count.
use crate::config::HttpLimits;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// The longest any one connection is served.
pub const MAX_LIFETIME: Duration = Duration::from_secs(600);

/// Requests of one connection being handled now, shared by the connection and its requests,
/// and the address the connection came from.
#[derive(Clone, Default)]
pub struct InFlight(Arc<AtomicUsize>, Option<std::net::SocketAddr>);

/// The peer address of a request's connection (a request extension, set by `mark_busy`): the
/// console's sign-in limits and counts refusals by it.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub std::net::IpAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, LimitedListener>> for InFlight {
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        InFlight(stream.io().in_flight.0.clone(), Some(*stream.remote_addr()))
    }
}

struct Busy(InFlight);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware: the request's connection is busy until its handler has answered.
pub async fn mark_busy(
    axum::extract::ConnectInfo(in_flight): axum::extract::ConnectInfo<InFlight>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    in_flight.0.fetch_add(1, Ordering::Relaxed);
    let mut request = request;
    if let Some(peer) = in_flight.1 {
        request.extensions_mut().insert(ClientAddr(peer.ip()));
    }
    let _busy = Busy(in_flight);
    next.run(request).await
}

pub struct LimitedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    limits: HttpLimits,
}

impl LimitedListener {
    pub fn new(inner: TcpListener, limits: HttpLimits) -> Self {
        LimitedListener { inner, permits: Arc::new(Semaphore::new(limits.max_connections)), limits }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // Never closed, so acquiring only waits.
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let io = LimitedStream::new(stream, permit, self.limits.read_timeout);
                    return (io, addr);
                }
                // As axum's own listener does: a failed accept (too many open files, a reset
                // before accept) is logged and retried after a pause.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// A connection that holds its permit until dropped, and fails a read that waited
/// `read_timeout` since the connection last moved a byte either way (so a slow answer is
/// never cut off by its own request's silence), or came after the connection's lifetime.
pub struct LimitedStream {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    in_flight: InFlight,
    read_timeout: Duration,
    idle: Pin<Box<Sleep>>,
    end_of_life: Instant,
}

impl LimitedStream {
    fn active(&mut self) {
        let deadline = (Instant::now() + self.read_timeout).min(self.end_of_life);
        self.idle.as_mut().reset(deadline);
    }

    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, read_timeout: Duration) -> Self {
        LimitedStream {
            stream,
            _permit: permit,
            in_flight: InFlight::default(),
            read_timeout,
            idle: Box::pin(tokio::time::sleep(read_timeout)),
            end_of_life: Instant::now() + MAX_LIFETIME,
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.idle.as_mut().poll(cx) {
                // A handler at work: the client waits for it, not the other way round.
                Poll::Ready(())
                    if self.in_flight.0.load(Ordering::Relaxed) > 0 && Instant::now() < self.end_of_life =>
                {
                    self.active();
                    let _ = self.idle.as_mut().poll(cx);
                    Poll::Pending
                }
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "read timed out"))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
