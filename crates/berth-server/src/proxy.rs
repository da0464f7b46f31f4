//! Web apps with a server of their own (`@webServer`, `@nodeApp`; README "API", web apps): the
//! control plane answers their requests by sending them to that server itself, over HTTP/1.1
//! to 127.0.0.1:`port` of the container the scheduler chose.
//!
//! A request is an input like any other (web.rs `to_server` submits it): the scheduler queues
//! it and assigns it a slot of a container (`@concurrent` caps, autoscaling, `maxPendingInputs`,
//! `timeout`, cancellation all as for any input). `Host::run` (plane.rs) then hands the
//! assignment ([`Assigned`]) to the request's HTTP handler instead of sending an `Execute`, and
//! the handler sends the request to the server the container reported on its Attach stream
//! (containers.rs, `AppServer`, sent before its `@enter` was done). The answer's body is relayed
//! as it comes ([`Relay`]: hyper polls it as the client's socket drains, so a slow client holds
//! the app back). The execution completes when that body ends or fails, when the scheduler
//! aborts the input (its timeout, a cancel: the answer ends short), or when the client goes away
//! (which cancels the input). A failure before the head is answered as an input's (web.rs
//! `answer_error`).
//!
//! Connections to a server are kept open between requests, per container ([`AppServer`]), and
//! go to the abstract Unix socket the container names beside the port when it names one
//! (src/run/web.ts `sideDoor`: a Node server of the container's own accepts them there too),
//! which costs the kernel less per request than TCP on loopback; they are driven by the
//! handler that uses one (the request and its answer's body are read and written
//! in the handler's own task, with no task of their own to wake).
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use berth_core::{Command, ContainerId, Exec, ExecId, ExecStatus, InputId};
use berth_proto::v1 as pb;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use crate::http::{BodyError, Limited};
use crate::plane::{error, Shared, State, Waiter};

/// Idle connections kept per server: enough for the concurrency a container usually runs.
const MAX_IDLE: usize = 256;

/// A connection idle longer than this is closed rather than used: Node closes one idle for 5 s
/// (`server.keepAliveTimeout`'s default), and a request sent as it does so would fail after
/// being sent, where one on a new connection does not.
const MAX_IDLE_TIME: std::time::Duration = std::time::Duration::from_secs(4);

/// The name of the failure a client gets as 502 (web.rs `answer_error`): the app's server
/// could not be reached, or broke off its answer.
pub(crate) const BAD_GATEWAY: &str = "WebServerError";

/// A web app member's server in one container: where it listens, and the connections to it
/// that are open and idle. Dropped with the container's link, which closes them.
pub(crate) struct AppServer {
    port: u16,
    /// The abstract Unix socket it also accepts connections on (without its leading NUL), if
    /// any: used instead of the port.
    socket: Option<String>,
    // Boxed: a connection moves in and out of the pool with each request (see `Conn`).
    #[allow(clippy::vec_box)]
    idle: Mutex<Vec<Box<Conn>>>,
}

/// One connection to a server: what sends on it, and what reads and writes its socket (polled
/// by whoever uses the connection: [`Conn::drive`]). Boxed where it is kept and passed: it is
/// large, and moves with each request.
struct Conn {
    send: SendRequest<Limited>,
    io: Connection<TokioIo<Stream>, Limited>,
    closed: bool,
    /// When it went back to the idle ones.
    idle_since: std::time::Instant,
}

impl Conn {
    /// Reads and writes what the connection can now; false once it is closed.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.closed && self.io.poll_without_shutdown(cx).is_ready() {
            self.closed = true;
        }
        !self.closed
    }

    /// Ready for a request now: a kept connection whose last exchange is over (its answer read
    /// to its end, and its request's body sent: an app may answer before it has read the body)
    /// and whose server has not closed it. One that is not is dropped, not waited for.
    fn ready_now(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        self.drive(&mut cx) && matches!(self.send.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Ready for a request: a new connection, once its handshake is done.
    async fn ready(&mut self) -> Result<(), String> {
        poll_fn(|cx| {
            let open = self.drive(cx);
            match self.send.poll_ready(cx) {
                Poll::Ready(Ok(())) if open => Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e.to_string())),
                _ if !open => Poll::Ready(Err("the connection closed".to_owned())),
                _ => Poll::Pending,
            }
        })
        .await
    }
}

/// A connection to the abstract Unix socket `name`. Node (libuv) binds one by the whole of
/// `sun_path`, the name padded with NULs to its 107 bytes, unless it is built to bind the name
/// alone: the padded name is tried when the name alone is refused.
async fn connect_abstract(name: &str) -> Option<UnixStream> {
    if let Ok(s) = UnixStream::connect(format!("\0{name}")).await {
        return Some(s);
    }
    UnixStream::connect(padded_abstract(name)?).await.ok()
}

/// The path of abstract Unix socket `name` as Node binds and connects to one: a NUL, the name,
/// then NULs to the whole of `sun_path` (108 bytes). None for a name too long for it.
pub(crate) fn padded_abstract(name: &str) -> Option<String> {
    const SUN_PATH: usize = 108;
    let mut path = format!("\0{name}");
    if path.len() > SUN_PATH {
        return None;
    }
    path.extend(std::iter::repeat_n('\0', SUN_PATH - path.len()));
    Some(path)
}

/// A connection's socket: TCP to the server's port, or its abstract Unix socket.
enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Why a request did not get its head.
enum SendError {
    /// Never sent (no connection could be made): the request is still whole.
    NotSent(Box<Request<Limited>>, String),
    /// Sent, wholly or in part, and the connection failed.
    Sent(hyper::Error),
}

impl AppServer {
    pub(crate) fn new(port: u16, socket: String) -> Self {
        // Only Linux has abstract sockets; a name that could not be one is not used.
        let socket = (cfg!(target_os = "linux") && !socket.is_empty() && socket.len() < 100 && !socket.contains('\0'))
            .then_some(socket);
        Self { port, socket, idle: Mutex::new(Vec::new()) }
    }

    /// The connection idle the shortest time, unless even that one was idle too long (then
    /// every one is, and they all close).
    fn take_idle(&self) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let conn = idle.pop()?;
        if conn.idle_since.elapsed() < MAX_IDLE_TIME {
            return Some(conn);
        }
        let stale = std::mem::take(&mut *idle);
        drop(idle);
        drop((conn, stale));
        None
    }

    /// A connection whose answer was read to its end goes back to the idle ones.
    fn put_back(&self, mut conn: Box<Conn>) {
        conn.idle_since = std::time::Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if !conn.closed && idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> std::io::Result<Box<Conn>> {
        // The port when the socket is gone (closed by the app's code, say).
        let unix = match &self.socket {
            Some(name) => connect_abstract(name).await,
            None => None,
        };
        let stream = match unix {
            Some(unix) => Stream::Unix(unix),
            None => {
                let tcp = TcpStream::connect(("127.0.0.1", self.port)).await?;
                let _ = tcp.set_nodelay(true);
                Stream::Tcp(tcp)
            }
        };
        let (send, io) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(std::io::Error::other)?;
        Ok(Box::new(Conn { send, io, closed: false, idle_since: std::time::Instant::now() }))
    }

    /// Sends `req` on an idle connection, or a new one. An idle connection the server closed
    /// meanwhile gives the request back unsent: it goes on another.
    async fn send(&self, mut req: Request<Limited>) -> Result<(Response<Incoming>, Box<Conn>), SendError> {
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(mut conn) => {
                    if !conn.ready_now() {
                        continue;
                    }
                    (conn, true)
                }
                None => match self.connect().await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Err(SendError::NotSent(Box::new(req), format!("could not connect: {e}"))),
                },
            };
            if !reused {
                if let Err(e) = conn.ready().await {
                    return Err(SendError::NotSent(Box::new(req), e));
                }
            }
            let mut answer = std::pin::pin!(conn.send.try_send_request(req));
            let sent = poll_fn(|cx| {
                conn.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match sent {
                Ok(res) => return Ok((res, conn)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    Some(unsent) => return Err(SendError::NotSent(Box::new(unsent), e.into_error().to_string())),
                    None => return Err(SendError::Sent(e.into_error())),
                },
            }
        }
    }
}

/// One request on its way to a web app's server, in its input's waiter (plane.rs
/// `Waiter::Proxy`): the request, and where the scheduler's assignments of it and the input's
/// result go for its handler ([`Proxied`]) to take. One allocation per request, where channels
/// would take several.
pub(crate) struct Exchange {
    /// Taken by the attempt that sends it; put back by one that could not connect.
    request: Mutex<Option<Request<Limited>>>,
    /// Taken after the state lock when both are held (`assign` runs in the scheduler's turn).
    slot: Mutex<Slot>,
}

/// What waits for a proxied request's handler.
#[derive(Default)]
struct Slot {
    /// The next assignment; `later`, those made before it was taken (its attempt was aborted
    /// and the input assigned again before the handler ran).
    assigned: Option<Assigned>,
    later: VecDeque<Assigned>,
    /// The input's result (plane.rs `Waiter::send`): read when no answer came.
    result: Option<pb::Result>,
    /// The handler's, while it waits.
    waker: Option<Waker>,
    /// The handler is gone: an assignment is completed at once (see [`assign`]).
    gone: bool,
}

/// What the handler takes next: an assignment before the result it may have led to.
enum Next {
    Assigned(Assigned),
    Result(pb::Result),
}

impl Exchange {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The input's result (plane.rs `Waiter::send`).
    pub(crate) fn settle(&self, result: pb::Result) {
        let mut slot = self.slot();
        slot.result = Some(result);
        if let Some(w) = slot.waker.take() {
            w.wake();
        }
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Next> {
        let mut slot = self.slot();
        if let Some(a) = slot.assigned.take().or_else(|| slot.later.pop_front()) {
            return Poll::Ready(Next::Assigned(a));
        }
        if let Some(r) = slot.result.take() {
            return Poll::Ready(Next::Result(r));
        }
        if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            slot.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// An attempt of a proxied request, assigned to a container by the scheduler: the server to
/// send it to, what ends it when the scheduler aborts it, and its execution to complete.
pub(crate) struct Assigned {
    server: Option<Arc<AppServer>>,
    stopped: oneshot::Receiver<()>,
    run: Run,
}

/// What an HTTP handler waits on (functions.rs `open_proxied`): the assignments of its input,
/// each of which it carries out, and the input's result when it ends without an answer.
/// Dropped before the answer (its client went away), it cancels the input.
pub(crate) struct Proxied {
    exchange: Arc<Exchange>,
    fault: Arc<Mutex<Option<BodyError>>>,
    shared: Arc<Shared>,
    input: InputId,
    settled: bool,
}

/// How a proxied request ended without a head of the app's.
pub(crate) enum Unanswered {
    /// Its body broke the server's rules (http/mod.rs `body_refused`).
    Body(BodyError),
    /// The input's failure (queue full, timeout, the container failed to start, the server
    /// could not be reached, ...).
    Failed(pb::Error),
}

/// The waiter of a proxied request's input, and, given the input's id once it is submitted,
/// what its HTTP handler waits on.
pub(crate) fn waiter(request: Request<Limited>) -> (Waiter, impl FnOnce(Arc<Shared>, InputId) -> Proxied) {
    let fault = request.body().fault();
    let exchange = Arc::new(Exchange { request: Mutex::new(Some(request)), slot: Mutex::default() });
    let waiter = Waiter::Proxy(Arc::clone(&exchange));
    (waiter, move |shared, input| Proxied { exchange, fault, shared, input, settled: false })
}

impl Proxied {
    /// The app's answer (its head, the body to relay), or why there is none.
    pub(crate) async fn answer(mut self) -> Result<Response<Relay>, Unanswered> {
        let result = loop {
            // An assignment first: its failure's result follows it.
            match poll_fn(|cx| self.exchange.poll_next(cx)).await {
                Next::Assigned(assigned) => {
                    if let Some(res) = assigned.exchange(&self.exchange).await {
                        self.settled = true;
                        return Ok(res);
                    }
                }
                Next::Result(result) => break result,
            }
        };
        self.settled = true;
        if let Some(fault) = self.fault.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(Unanswered::Body(fault));
        }
        Err(Unanswered::Failed(match result {
            pb::Result { outcome: Some(pb::result::Outcome::Error(e)) } => e,
            _ => pb::Error {
                name: "Error".into(),
                message: "the request ended without an answer".into(),
                stack: String::new(),
            },
        }))
    }
}

impl Drop for Proxied {
    fn drop(&mut self) {
        // Assignments not taken are dropped, which completes them (`Run`'s drop), and later
        // ones are completed as they are made; outside the slot's lock, as `Run` takes the
        // state lock.
        let untaken = {
            let mut slot = self.exchange.slot();
            slot.gone = true;
            slot.waker = None;
            (slot.assigned.take(), std::mem::take(&mut slot.later))
        };
        drop(untaken);
        if self.settled {
            return;
        }
        let st = self.shared.lock();
        if st.inputs.contains_key(&self.input) {
            // Under the lock: after the input's submission.
            let _ = self.shared.commands.send(Command::Cancel(vec![self.input]));
        }
    }
}

/// Builds what goes to the app's server: the path under the app's own (`path`, with its query)
/// and the caller's headers but those of its connection (as src/run/web.ts passed them on
/// before). The framing is the caller's `Content-Length`, which the ingress read the body by,
/// or else hyper's from the body (chunked): a body that came chunked goes on chunked, its
/// `Content-Length`, if the caller sent one too, dropped. `Expect: 100-continue` was the
/// ingress's to answer (hyper does when the body is first read); the app gets the body
/// without it.
pub(crate) fn request(
    method: hyper::Method,
    path: String,
    mut headers: HeaderMap,
    body: Limited,
) -> Result<Request<Limited>, String> {
    passed_on(&mut headers);
    // The path's own bytes become the URI's.
    let uri = hyper::Uri::try_from(path).map_err(|e| format!("the path under the app's is no URI path: {e}"))?;
    let mut req = Request::builder().method(method).uri(uri).body(body).map_err(|e| e.to_string())?;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The caller's headers as the app gets them (see [`request`]).
fn passed_on(headers: &mut HeaderMap) {
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
}

/// The headers that describe one connection, not the message (RFC 9110 7.6.1, and the
/// `Keep-Alive` and `Proxy-Connection` of older peers).
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
];

/// Drops the headers that describe one connection, not the message (those `Connection` names
/// too): they are not passed on, either way. Most requests have none: one look at each name
/// tells, and nothing else is done for them.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // What `Connection` names besides those removed below anyway (`keep-alive`, mostly).
    let mut named: Vec<HeaderName> = Vec::new();
    for value in &headers.get_all(header::CONNECTION) {
        for name in value.to_str().unwrap_or("").split(',').map(str::trim) {
            if HOP_BY_HOP.iter().any(|h| h.as_str().eq_ignore_ascii_case(name)) {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The exchange of the execution `exec` when it is a proxied request (one input, a
/// `Waiter::Proxy`), for `Host::run` to hand to its handler instead of sending an `Execute`.
pub(crate) fn exchange_of(st: &State, exec: &Exec) -> Option<Arc<Exchange>> {
    let [(input, _)] = exec.inputs[..] else { return None };
    match &st.inputs.get(&input)?.waiter {
        Waiter::Proxy(exchange) => Some(Arc::clone(exchange)),
        _ => None,
    }
}

/// Hands a proxied execution (see [`exchange_of`]) to its handler, with the server its
/// container reported for the method; the scheduler's abort of the input ends it
/// (`State::proxied`, plane.rs `Host::abort`). A handler gone already completes it here.
pub(crate) fn assign(shared: &Arc<Shared>, st: &mut State, exec: &Exec, exchange: &Exchange) {
    let (input, attempt) = exec.inputs[0];
    let server = st.links.get(&exec.container).and_then(|l| l.server(exec.method));
    let (stop, stopped) = oneshot::channel();
    st.proxied.insert(input, Running { attempt, container: exec.container, exec: exec.id, stop });
    let mut run =
        Run { shared: Arc::clone(shared), container: exec.container, exec: exec.id, input, attempt, done: false };
    let mut slot = exchange.slot();
    if slot.gone {
        drop(slot);
        run.finish_locked(st, error("InputCancelledError", "the client went away"), ExecStatus::FailedFinal);
        return;
    }
    let assigned = Assigned { server, stopped, run };
    if slot.assigned.is_none() && slot.later.is_empty() {
        slot.assigned = Some(assigned);
    } else {
        slot.later.push_back(assigned);
    }
    if let Some(w) = slot.waker.take() {
        w.wake();
    }
}

/// A proxied attempt running, as the scheduler's abort finds it (`State::proxied`).
pub(crate) struct Running {
    attempt: u32,
    container: ContainerId,
    exec: ExecId,
    /// Ends the exchange: at once before the answer's head, at the body's next poll after it.
    stop: oneshot::Sender<()>,
}

/// The scheduler aborts attempt `attempt` of input `input` (its timeout, a cancel, its
/// container stopping): if it is a proxied request's, its exchange is told to stop and its
/// execution completes now, freeing the slot, rather than when the exchange next runs. A client
/// that does not read leaves its answer's body unpolled, and an execution that outlives its
/// timeout by `OVERDUE_GRACE` has its container replaced. False for any other input.
pub(crate) fn abort(shared: &Shared, st: &mut State, input: InputId, attempt: u32) -> bool {
    if st.proxied.get(&input).is_none_or(|r| r.attempt != attempt) {
        return false;
    }
    let Some(running) = st.proxied.remove(&input) else { return false };
    let _ = running.stop.send(());
    if st.record(running.container, running.exec, vec![error("InputCancelledError", "aborted")]).is_some() {
        shared.commands.queue(Command::Complete(vec![(running.exec, ExecStatus::FailedFinal)]));
    }
    true
}

/// One attempt of a proxied input in a container: what completes its execution, once. Dropped
/// before that, its client went away: the input is cancelled and the execution completes.
pub(crate) struct Run {
    shared: Arc<Shared>,
    container: ContainerId,
    exec: ExecId,
    input: InputId,
    attempt: u32,
    done: bool,
}

impl Assigned {
    /// Sends the request to the server; the answer, or none when the attempt failed (its
    /// execution is completed with the failure, and the input's result follows).
    async fn exchange(mut self, exchange: &Exchange) -> Option<Response<Relay>> {
        let Some(server) = self.server.take() else {
            let message = format!(
                "container {} reported no server for this web app: its berth is not the control plane's; \
                 run both from the same install",
                self.run.container
            );
            self.run.finish(error(BAD_GATEWAY, message), ExecStatus::FailedFinal);
            return None;
        };
        let taken = exchange.request.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(req) = taken else {
            let message = "the container answering this request stopped after its body was sent to the app: the \
                           request was not sent again";
            self.run.finish(error(BAD_GATEWAY, message), ExecStatus::FailedFinal);
            return None;
        };
        let sent = tokio::select! {
            sent = server.send(req) => sent,
            _ = &mut self.stopped => {
                self.run.finish(error("InputCancelledError", "aborted"), ExecStatus::FailedFinal);
                return None;
            }
        };
        let port = server.port;
        match sent {
            Ok((res, conn)) => {
                let Self { stopped, run, .. } = self;
                Some(res.map(|body| Relay { body, conn: Some(conn), stopped, server, run }))
            }
            Err(SendError::NotSent(req, why)) => {
                *exchange.request.lock().unwrap_or_else(|e| e.into_inner()) = Some(*req);
                let message = format!("the web app's server on 127.0.0.1:{port} {why}");
                self.run.finish(error(BAD_GATEWAY, message), ExecStatus::Failed);
                None
            }
            Err(SendError::Sent(e)) => {
                let message = format!("the web app's server on 127.0.0.1:{port} did not answer: {e}");
                self.run.finish(error(BAD_GATEWAY, message), ExecStatus::FailedFinal);
                None
            }
        }
    }
}

impl Run {
    /// The execution's one output, as a container's would be recorded (containers.rs), and its
    /// completion for the scheduler; nothing if the execution is no longer this attempt's (its
    /// container was lost, and the input runs again elsewhere).
    fn finish(&mut self, result: pb::Result, status: ExecStatus) {
        if self.done {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        self.finish_locked(&mut st, result, status);
        drop(st);
        shared.drive();
    }

    /// Under the state lock: its caller drives the scheduler once it lets go (or is in a turn).
    fn finish_locked(&mut self, st: &mut State, result: pb::Result, status: ExecStatus) {
        self.done = true;
        if st.proxied.get(&self.input).is_some_and(|r| r.attempt == self.attempt) {
            st.proxied.remove(&self.input);
        }
        if st.record(self.container, self.exec, vec![result]).is_some() {
            self.shared.commands.queue(Command::Complete(vec![(self.exec, status)]));
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let shared = Arc::clone(&self.shared);
        let mut st = shared.lock();
        if st.inputs.contains_key(&self.input) {
            // Under the lock: after the input's submission.
            self.shared.commands.queue(Command::Cancel(vec![self.input]));
        }
        self.finish_locked(&mut st, error("InputCancelledError", "the client went away"), ExecStatus::FailedFinal);
        drop(st);
        shared.drive();
    }
}

/// The body of the app's answer, relayed to the client as it comes; its end completes the
/// execution (and its connection goes back to the idle ones), as does an abort of the input
/// (the answer ends short) or its drop before the end (the client went away: the input is
/// cancelled, and the app's connection closes, which ends its response).
pub(crate) struct Relay {
    body: Incoming,
    conn: Option<Box<Conn>>,
    stopped: oneshot::Receiver<()>,
    server: Arc<AppServer>,
    run: Run,
}

impl Relay {
    fn ended(&mut self) {
        if let Some(conn) = self.conn.take() {
            self.server.put_back(conn);
        }
        // A web app's result: null, as a streamed Response's end is (web.rs).
        self.run.finish(pb::Result { outcome: Some(pb::result::Outcome::Value(vec![0xf6])) }, ExecStatus::Ok);
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.run.done {
            return Poll::Ready(None);
        }
        // Aborted by the scheduler (its timeout, a cancel, its container stopping).
        if Pin::new(&mut this.stopped).poll(cx).is_ready() {
            this.conn = None;
            this.run.finish(error("InputCancelledError", "aborted"), ExecStatus::FailedFinal);
            return Poll::Ready(Some(Err(std::io::Error::other("the request was aborted"))));
        }
        if let Some(conn) = &mut this.conn {
            conn.drive(cx);
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.conn = None;
                let message =
                    format!("the web app's server on 127.0.0.1:{} broke off its answer: {e}", this.server.port);
                this.run.finish(error(BAD_GATEWAY, message.clone()), ExecStatus::FailedFinal);
                Poll::Ready(Some(Err(std::io::Error::other(message))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.run.done
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // An answer with nothing left to read (a HEAD's, a 204) is done; any other is cut
        // short, and its run's drop cancels the input.
        if !self.run.done && self.body.is_end_stream() {
            self.ended();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn connection_headers_stay_behind_and_the_rest_pass_on() {
        let mut headers = HeaderMap::new();
        for (k, v) in [
            ("host", "example.com"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("x-kept", "a"),
            ("x-kept", "b"),
            ("set-cookie", "s=1"),
        ] {
            headers.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        strip_hop_by_hop(&mut headers);
        // Distinct names may change places; one name's values keep their order.
        let mut left: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        left.sort_by_key(|(k, _)| *k);
        assert_eq!(left, [("host", "example.com"), ("set-cookie", "s=1"), ("x-kept", "a"), ("x-kept", "b")]);
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn a_body_goes_on_framed_as_it_came() {
        // By its length: the app gets the caller's Content-Length, not one made again.
        let mut sized = HeaderMap::new();
        sized.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        sized.insert(header::EXPECT, "100-continue".parse().unwrap());
        passed_on(&mut sized);
        assert_eq!(names(&sized), ["content-length"]);
        assert_eq!(sized[header::CONTENT_LENGTH], "3");
        // Chunked: it goes on chunked (hyper's framing); a length sent beside it is dropped, as
        // the ingress read the body by its chunks.
        let mut chunked = HeaderMap::new();
        chunked.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        chunked.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        chunked.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        passed_on(&mut chunked);
        assert_eq!(names(&chunked), ["content-type"]);
    }
}
