//! What both listeners do to the connections they accept: cap how many are open, bound how
//! long a caller may hold one without using it, and count what they drop.
//!
//! A caller that connects and then sends nothing, stops halfway through a request head, or
//! keeps an unused connection forever holds a file descriptor and a task each; a few thousand
//! of them exhaust the process. hyper and h2 have no deadline for the HTTP/2 preface and no
//! idle timeout, so the deadlines live in the connection's IO ([`Conn`]), which sees every
//! byte, and the count of open requests lives in [`ConnState`], which the request path
//! (a tower layer for gRPC, the handler for HTTP) keeps.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};

/// What the listeners dropped, since the control plane started.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    handshake_timeouts: AtomicU64,
    idle_closes: AtomicU64,
    refused_over_cap: AtomicU64,
    stalled_bodies: AtomicU64,
    grpc_function_calls: AtomicU64,
}

/// A snapshot of [`ControlPlane::counters`](crate::ControlPlane::counters), both listeners
/// together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnCounters {
    /// Connections closed because they sent no HTTP/2 preface, or no complete HTTP/1.1
    /// request head, within `handshake_timeout`.
    pub handshake_timeouts: u64,
    /// Connections closed after `idle_timeout` without an open request or any traffic.
    pub idle_closes: u64,
    /// Connections accepted and closed at once because `max_connections` were open.
    pub refused_over_cap: u64,
    /// HTTP requests answered 408 because their body made no progress within `body_timeout`.
    pub stalled_bodies: u64,
    /// `berth.v1.Functions` requests that came over gRPC (a caller using
    /// [`ControlPlane::client`](crate::ControlPlane::client) makes none).
    pub grpc_function_calls: u64,
}

impl Counters {
    pub fn snapshot(&self) -> ConnCounters {
        ConnCounters {
            handshake_timeouts: self.handshake_timeouts.load(Relaxed),
            idle_closes: self.idle_closes.load(Relaxed),
            refused_over_cap: self.refused_over_cap.load(Relaxed),
            stalled_bodies: self.stalled_bodies.load(Relaxed),
            grpc_function_calls: self.grpc_function_calls.load(Relaxed),
        }
    }

    pub fn stalled_body(&self) {
        self.stalled_bodies.fetch_add(1, Relaxed);
    }
}

/// The deadlines and the cap one listener enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// How a listener's connections start their requests, which decides what "handshake" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Handshake: the 24-byte client preface. After it, frames (PINGs, SETTINGS) may arrive
    /// at any time without starting a request, so only silence counts as idle.
    Http2,
    /// Handshake: every request head, from the first byte after the last request (or from
    /// the accept) until the request reaches the handler. This is the header-read timeout;
    /// hyper's own is off because it also runs while a keep-alive connection waits for its
    /// next request, which is `idle_timeout`'s business.
    Http1,
}

/// The HTTP/2 client preface, `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`.
const H2_PREFACE_LEN: u64 = 24;

/// One connection's open requests, shared by its IO and its requests (gRPC finds it in the
/// request extensions, where tonic puts a connection's `ConnectInfo`).
#[derive(Debug, Default)]
pub(crate) struct ConnState {
    open: AtomicUsize,
    started: AtomicU64,
    ended: AtomicU64,
}

impl ConnState {
    /// Counts a request as open until the guard goes: when its answer has been sent, or
    /// the request was dropped unanswered.
    pub fn request(self: &Arc<Self>) -> RequestGuard {
        self.open.fetch_add(1, Relaxed);
        self.started.fetch_add(1, Relaxed);
        RequestGuard(self.clone())
    }
}

pub(crate) struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Relaxed);
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// Accepts connections under the cap, forever; the listener closes when this is dropped.
pub(crate) struct Listener {
    listener: TcpListener,
    what: &'static str,
    framing: Framing,
    limits: Limits,
    counters: Arc<Counters>,
    live: Arc<AtomicUsize>,
    backoff: Option<Pin<Box<Sleep>>>,
    refusals: RateLimited,
    accept_errors: RateLimited,
}

impl Listener {
    pub fn new(
        listener: TcpListener,
        what: &'static str,
        framing: Framing,
        limits: Limits,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            listener,
            what,
            framing,
            limits,
            counters,
            live: Arc::new(AtomicUsize::new(0)),
            backoff: None,
            refusals: RateLimited::default(),
            accept_errors: RateLimited::default(),
        }
    }

    pub async fn accept(&mut self) -> Conn {
        std::future::poll_fn(|cx| self.poll_accept(cx)).await
    }

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Conn> {
        loop {
            if let Some(backoff) = &mut self.backoff {
                ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, _)) => {
                    if self.live.load(Relaxed) >= self.limits.max_connections {
                        // Accepted and closed, rather than left in the backlog: the caller
                        // learns at once, and the backlog stays free for when a slot opens.
                        self.counters.refused_over_cap.fetch_add(1, Relaxed);
                        drop(stream);
                        if let Some(n) = self.refusals.note(Instant::now()) {
                            tracing::warn!(
                                "berth: refused {n} {} connection(s): {} are open, the cap; raise it with \
                                 --max-connections",
                                self.what,
                                self.limits.max_connections
                            );
                        }
                        continue;
                    }
                    // Small messages both ways (calls, executions, outputs): no Nagle delay.
                    let _ = stream.set_nodelay(true);
                    return Poll::Ready(Conn::new(stream, self));
                }
                Err(e) => {
                    // Out of file descriptors (EMFILE) and the like: the pending connection
                    // stays in the backlog, so accepting again at once would spin.
                    if let Some(n) = self.accept_errors.note(Instant::now()) {
                        tracing::error!(
                            "berth: {} listener: accept failed {n} time(s), last: {e}; if it says too many \
                             open files, raise the limit (ulimit -n) or lower --max-connections",
                            self.what
                        );
                    }
                    self.backoff = Some(Box::pin(tokio::time::sleep(Duration::from_millis(100))));
                }
            }
        }
    }
}

/// tonic serves what this yields; the error type is never produced.
impl tokio_stream::Stream for Listener {
    type Item = io::Result<Conn>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_accept(cx).map(|c| Some(Ok(c)))
    }
}

/// At most one log line per interval, saying how many events it stands for.
#[derive(Debug, Default)]
struct RateLimited {
    last: Option<Instant>,
    pending: u64,
}

const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl RateLimited {
    /// Notes one event; Some(events since the last line) when a line is due now.
    fn note(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        if self.last.is_some_and(|last| now.duration_since(last) < LOG_INTERVAL) {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// Why a connection's deadline is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Handshake,
    Idle,
    /// A request is open: no deadline; look again after `idle_timeout`.
    Busy,
}

/// An accepted connection: the socket, and the deadlines it must meet.
pub(crate) struct Conn {
    io: TcpStream,
    state: Arc<ConnState>,
    framing: Framing,
    limits: Limits,
    counters: Arc<Counters>,
    live: Arc<AtomicUsize>,
    timer: Pin<Box<Sleep>>,
    accepted: Instant,
    received: u64,
    last_activity: Instant,
    /// Requests seen ended: one that ends is activity too, as its answer may still sit in
    /// hyper's buffers, unwritten.
    ended: u64,
    /// HTTP/1.1: when the current request head began (the accept, or the first byte after
    /// a request), and how many requests had started then. None between requests.
    head: Option<(Instant, u64)>,
    closed: bool,
}

impl Conn {
    fn new(io: TcpStream, incoming: &Listener) -> Self {
        incoming.live.fetch_add(1, Relaxed);
        let now = Instant::now();
        Self {
            io,
            state: Arc::new(ConnState::default()),
            framing: incoming.framing,
            limits: incoming.limits,
            counters: incoming.counters.clone(),
            live: incoming.live.clone(),
            timer: Box::pin(tokio::time::sleep_until(now + incoming.limits.handshake_timeout)),
            accepted: now,
            received: 0,
            last_activity: now,
            ended: 0,
            head: Some((now, 0)),
            closed: false,
        }
    }

    pub fn state(&self) -> Arc<ConnState> {
        self.state.clone()
    }

    /// When this connection must next show progress, and why.
    fn deadline(&mut self, now: Instant) -> (Instant, Wait) {
        let started = self.state.started.load(Relaxed);
        let open = self.state.open.load(Relaxed);
        let ended = self.state.ended.load(Relaxed);
        if ended != self.ended {
            self.ended = ended;
            self.last_activity = now;
        }
        let l = &self.limits;
        match self.framing {
            Framing::Http2 => {
                if self.received < H2_PREFACE_LEN {
                    (self.accepted + l.handshake_timeout, Wait::Handshake)
                } else if open > 0 {
                    (now + l.idle_timeout, Wait::Busy)
                } else {
                    (self.last_activity + l.idle_timeout, Wait::Idle)
                }
            }
            Framing::Http1 => {
                if open > 0 {
                    self.head = None;
                    return (now + l.idle_timeout, Wait::Busy);
                }
                match self.head {
                    Some((at, n)) if n == started => (at + l.handshake_timeout, Wait::Handshake),
                    _ => {
                        // The head became a request: until more bytes come, this is idle.
                        self.head = None;
                        (self.last_activity + l.idle_timeout, Wait::Idle)
                    }
                }
            }
        }
    }

    /// Ready with the error that closes the connection once a deadline passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            let now = Instant::now();
            let (at, wait) = self.deadline(now);
            if wait != Wait::Busy && at <= now {
                self.closed = true;
                let (counter, message) = match wait {
                    Wait::Handshake => (&self.counters.handshake_timeouts, "no request within handshake_timeout"),
                    _ => (&self.counters.idle_closes, "idle for idle_timeout"),
                };
                counter.fetch_add(1, Relaxed);
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, message));
            }
            // Re-armed only when it must fire sooner or has fired: activity moves the
            // deadline later on every read, and a timer that fires early just looks again.
            if self.timer.is_elapsed() || self.timer.deadline() > at {
                self.timer.as_mut().reset(at);
            }
            ready!(self.timer.as_mut().poll(cx));
        }
    }

    fn moved(&mut self, read: usize) {
        let now = Instant::now();
        self.last_activity = now;
        if read > 0 {
            self.received = self.received.saturating_add(read as u64);
            if self.framing == Framing::Http1 && self.head.is_none() && self.state.open.load(Relaxed) == 0 {
                self.head = Some((now, self.state.started.load(Relaxed)));
            }
        }
    }

    fn closed_error() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "connection closed by a deadline")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Relaxed);
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(Err(Self::closed_error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    this.moved(n);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // Nothing to read: the only time a deadline can pass.
            Poll::Pending => this.poll_deadline(cx).map(Err),
        }
    }
}

impl Conn {
    /// A write through to the socket that counts as activity; pending, it is when a deadline
    /// can pass (a caller that does not read what it is sent holds the connection too).
    fn write_with(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(&mut TcpStream, &mut Context<'_>) -> Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(Self::closed_error()));
        }
        match write(&mut self.io, cx) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.moved(0);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.poll_deadline(cx).map(Err),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(cx, |io, cx| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().write_with(cx, |io, cx| Pin::new(io).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// tonic puts this in every request's extensions, where [`CountRequestsLayer`] finds it.
impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = Arc<ConnState>;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.state.clone()
    }
}

/// Keeps each gRPC request's connection busy from its arrival until its response body ends
/// or is dropped: a Map stream waiting minutes for a slow input is never idle.
/// It also counts the requests to `berth.v1.Functions`.
#[derive(Debug, Clone, Default)]
pub(crate) struct CountRequestsLayer(pub Arc<Counters>);

impl<S> tower::Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests(inner, self.0.clone())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct CountRequests<S>(S, Arc<Counters>);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for CountRequests<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req.extensions().get::<Arc<ConnState>>().map(ConnState::request);
        if req.uri().path().starts_with("/berth.v1.Functions/") {
            self.1.grpc_function_calls.fetch_add(1, Relaxed);
        }
        let response = self.0.call(req);
        Box::pin(async move {
            let res = response.await?;
            Ok(res.map(|body| tonic::body::Body::new(Guarded { body, guard })))
        })
    }
}

/// A response body that keeps its request open until it ends.
struct Guarded {
    body: tonic::body::Body,
    guard: Option<RequestGuard>,
}

impl Body for Guarded {
    type Data = hyper::body::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        if frame.is_none() {
            self.guard = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_once_per_interval_with_their_count() {
        let t0 = Instant::now();
        let mut log = RateLimited::default();
        assert_eq!(log.note(t0), Some(1), "the first refusal is logged at once");
        for i in 1..=5 {
            assert_eq!(log.note(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(log.note(t0 + Duration::from_secs(10)), Some(6), "the next line counts all since the last");
        assert_eq!(log.note(t0 + Duration::from_secs(19)), None);
        assert_eq!(log.note(t0 + Duration::from_secs(21)), Some(2));
    }
}
