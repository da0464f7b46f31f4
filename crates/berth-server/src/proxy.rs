//! Web apps with a server of their own (`@webServer`, `@nodeApp`; README "API", web apps): the
//! control plane answers their requests by sending them to that server itself, over HTTP/1.1
//! to 127.0.0.1:`port` of the container the scheduler chose.
//!
//! A request is an input like any other (web.rs `app_request` submits it): the scheduler queues
//! it, assigns it a slot of a container (`@concurrent` caps, autoscaling, `maxPendingInputs`,
//! `timeout`, cancellation all as for any input), and `Host::run` (plane.rs) then starts
//! [`Run::exchange`] here instead of sending an `Execute`. The container reported its server's
//! port on its Attach stream (containers.rs, `AppServer`) before its `@enter` was done. The
//! answer's head goes straight to the waiting HTTP handler, and its body is relayed as it comes
//! ([`Relay`]: hyper polls it as the client's socket drains, so a slow client holds the app
//! back); the input completes when that body ends, fails, or its client goes away (which
//! cancels the input). An input aborted by the scheduler (its timeout, a cancel) ends the
//! exchange; a failure before the head is answered as an input's (web.rs `answer_error`).
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use berth_core::{Command, ContainerId, Exec, ExecId, ExecStatus, InputId};
use berth_proto::v1 as pb;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{self, HeaderMap, HeaderName};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;

use crate::http::{BodyError, Limited};
use crate::plane::{error, Shared, State, Waiter};

/// Idle connections kept per server: enough for the concurrency a container usually runs.
const MAX_IDLE: usize = 256;

/// The name of the failure a client gets as 502 (web.rs `answer_error`): the app's server
/// could not be reached, or broke off its answer.
pub(crate) const BAD_GATEWAY: &str = "WebServerError";

/// A web app member's server in one container: where it listens, and the connections to it
/// that are open and idle. Dropped with the container's link, which closes them.
pub(crate) struct AppServer {
    port: u16,
    idle: Mutex<Vec<SendRequest<Limited>>>,
}

/// Why a request did not get its head.
enum SendError {
    /// Never sent (no connection could be made): the request is still whole.
    NotSent(Request<Limited>, String),
    /// Sent, wholly or in part, and the connection failed.
    Sent(hyper::Error),
}

impl AppServer {
    pub(crate) fn new(port: u16) -> Self {
        Self { port, idle: Mutex::new(Vec::new()) }
    }

    fn take_idle(&self) -> Option<SendRequest<Limited>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }

    /// A connection whose answer's body was read to its end goes back to the idle ones.
    fn put_back(&self, conn: SendRequest<Limited>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if !conn.is_closed() && idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> std::io::Result<SendRequest<Limited>> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let _ = tcp.set_nodelay(true);
        let (conn, driver) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            let _ = driver.await;
        });
        Ok(conn)
    }

    /// Sends `req` on an idle connection, or a new one. An idle connection the server closed
    /// meanwhile (Node closes idle ones after 5 s) gives the request back unsent: it goes on
    /// another.
    async fn send(&self, mut req: Request<Limited>) -> Result<(Response<Incoming>, SendRequest<Limited>), SendError> {
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(conn) => (conn, true),
                None => match self.connect().await {
                    Ok(conn) => (conn, false),
                    Err(e) => return Err(SendError::NotSent(req, format!("could not connect: {e}"))),
                },
            };
            if let Err(e) = conn.ready().await {
                if reused {
                    continue;
                }
                return Err(SendError::NotSent(req, e.to_string()));
            }
            match conn.try_send_request(req).await {
                Ok(res) => return Ok((res, conn)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    Some(unsent) => return Err(SendError::NotSent(unsent, e.into_error().to_string())),
                    None => return Err(SendError::Sent(e.into_error())),
                },
            }
        }
    }
}

/// One request on its way to a web app's server, shared by the HTTP handler that waits for
/// its answer and the input's waiter (plane.rs `Waiter::Proxy`).
pub(crate) struct Exchange {
    /// Taken by the attempt that sends it; put back by one that could not connect.
    request: Mutex<Option<Request<Limited>>>,
    head: Mutex<Option<oneshot::Sender<Response<Relay>>>>,
}

/// What an HTTP handler waits on (functions.rs `open_proxied`): the answer's head, or the
/// input's result when it ends without one. Dropped before either (its client went away), it
/// cancels the input.
pub(crate) struct Proxied {
    head: oneshot::Receiver<Response<Relay>>,
    result: oneshot::Receiver<pb::Result>,
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
    let (head_tx, head) = oneshot::channel();
    let (result_tx, result) = oneshot::channel();
    let exchange = Exchange { request: Mutex::new(Some(request)), head: Mutex::new(Some(head_tx)) };
    let waiter = Waiter::Proxy(Arc::new(exchange), result_tx);
    (waiter, move |shared, input| Proxied { head, result, fault, shared, input, settled: false })
}

impl Proxied {
    /// The app's answer (its head, the body to relay), or why there is none.
    pub(crate) async fn answer(mut self) -> Result<Response<Relay>, Unanswered> {
        // The head first: an input that ends (say, past its timeout) as its head comes still
        // answers with the head.
        let outcome = tokio::select! {
            biased;
            Ok(res) = &mut self.head => Ok(res),
            result = &mut self.result => Err(result),
        };
        self.settled = true;
        let result = match outcome {
            Ok(res) => return Ok(res),
            Err(result) => result,
        };
        if let Some(fault) = self.fault.lock().unwrap_or_else(|e| e.into_inner()).take() {
            return Err(Unanswered::Body(fault));
        }
        Err(Unanswered::Failed(match result {
            Ok(pb::Result { outcome: Some(pb::result::Outcome::Error(e)) }) => e,
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
/// before: the framing is hyper's, from the body).
pub(crate) fn request(
    method: hyper::Method,
    path: &str,
    headers: &HeaderMap,
    body: Limited,
) -> Result<Request<Limited>, String> {
    let mut req = Request::builder().method(method).uri(path).body(body).map_err(|e| format!("{path}: {e}"))?;
    for (name, value) in headers {
        if !hop_by_hop(name) && name != header::CONTENT_LENGTH {
            req.headers_mut().append(name, value.clone());
        }
    }
    Ok(req)
}

/// Headers that describe one connection, not the message: not passed on either way.
fn hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "transfer-encoding" | "upgrade" | "proxy-connection" | "te" | "trailer"
    )
}

/// The app's answer as the client gets it: its status and headers (but those of its
/// connection), its body relayed.
pub(crate) fn response_headers(headers: &mut HeaderMap) {
    let hop: Vec<HeaderName> = headers.keys().filter(|n| hop_by_hop(n)).cloned().collect();
    for name in hop {
        headers.remove(name);
    }
}

/// One attempt of a proxied input in a container: what completes it.
pub(crate) struct Run {
    shared: Arc<Shared>,
    container: ContainerId,
    exec: ExecId,
    input: InputId,
    attempt: u32,
}

/// The exchange of the execution `exec` when it is a proxied request (one input, a
/// `Waiter::Proxy`), for `Host::run` to start instead of sending an `Execute`.
pub(crate) fn exchange_of(st: &State, exec: &Exec) -> Option<Arc<Exchange>> {
    let [(input, _)] = exec.inputs[..] else { return None };
    match &st.inputs.get(&input)?.waiter {
        Waiter::Proxy(exchange, _) => Some(Arc::clone(exchange)),
        _ => None,
    }
}

/// Starts the exchange of a proxied execution (see [`exchange_of`]) on the server its
/// container reported for the method; the scheduler's abort of the input ends it
/// (`State::proxied`, plane.rs `Host::abort`).
pub(crate) fn start(shared: &Arc<Shared>, st: &mut State, exec: &Exec, exchange: Arc<Exchange>) {
    let (input, attempt) = exec.inputs[0];
    let server = st.links.get(&exec.container).and_then(|l| l.server(exec.method));
    let (stop, stopped) = oneshot::channel();
    st.proxied.insert(input, (attempt, stop));
    let run = Run { shared: Arc::clone(shared), container: exec.container, exec: exec.id, input, attempt };
    tokio::spawn(run.exchange(server, exchange, stopped));
}

impl Run {
    async fn exchange(self, server: Option<Arc<AppServer>>, exchange: Arc<Exchange>, mut stopped: oneshot::Receiver<()>) {
        let Some(server) = server else {
            let message = format!(
                "container {} reported no server for this web app: its berth is not the control plane's; \
                 run both from the same install",
                self.container
            );
            return self.finish(error(BAD_GATEWAY, message), ExecStatus::FailedFinal);
        };
        let taken = exchange.request.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(req) = taken else {
            let message = "the container answering this request stopped after its body was sent to the app: the \
                           request was not sent again";
            return self.finish(error(BAD_GATEWAY, message), ExecStatus::FailedFinal);
        };
        let sent = tokio::select! {
            sent = server.send(req) => sent,
            _ = &mut stopped => return self.finish(error("InputCancelledError", "aborted"), ExecStatus::FailedFinal),
        };
        let port = server.port;
        match sent {
            Ok((res, conn)) => {
                let (parts, body) = res.into_parts();
                let relay = Relay { body, stopped, conn: Some(conn), server, run: Some(self) };
                let head = exchange.head.lock().unwrap_or_else(|e| e.into_inner()).take();
                // A handler gone meanwhile: the relay, dropped unread, cancels the input.
                if let Some(head) = head {
                    let _ = head.send(Response::from_parts(parts, relay));
                }
            }
            Err(SendError::NotSent(req, why)) => {
                *exchange.request.lock().unwrap_or_else(|e| e.into_inner()) = Some(req);
                let message = format!("the web app's server on 127.0.0.1:{port} {why}");
                self.finish(error(BAD_GATEWAY, message), ExecStatus::Failed);
            }
            Err(SendError::Sent(e)) => {
                let message = format!("the web app's server on 127.0.0.1:{port} did not answer: {e}");
                self.finish(error(BAD_GATEWAY, message), ExecStatus::FailedFinal);
            }
        }
    }

    /// The execution's one output, as a container's would be recorded (containers.rs), and its
    /// completion for the scheduler; nothing if the execution is no longer this attempt's (its
    /// container was lost, and the input runs again elsewhere).
    fn finish(self, result: pb::Result, status: ExecStatus) {
        let mut st = self.shared.lock();
        if st.proxied.get(&self.input).is_some_and(|(attempt, _)| *attempt == self.attempt) {
            st.proxied.remove(&self.input);
        }
        if st.record(self.container, self.exec, vec![result]).is_none() {
            return;
        }
        drop(st);
        let _ = self.shared.commands.send(Command::Complete(vec![(self.exec, status)]));
    }

    /// The client went away before the answer's end: the input is cancelled (its caller is
    /// gone), and its execution completes.
    fn cancel(self) {
        {
            let st = self.shared.lock();
            if st.inputs.contains_key(&self.input) {
                // Under the lock: after the input's submission.
                let _ = self.shared.commands.send(Command::Cancel(vec![self.input]));
            }
        }
        self.finish(error("InputCancelledError", "the client went away"), ExecStatus::FailedFinal);
    }
}

/// The body of the app's answer, relayed to the client as it comes; its end completes the
/// input (and its connection goes back to the idle ones), as does an abort of the input (the
/// answer ends short) or its drop before the end (the client went away: the input is cancelled,
/// and the app's connection closes, which ends its response).
pub(crate) struct Relay {
    body: Incoming,
    stopped: oneshot::Receiver<()>,
    conn: Option<SendRequest<Limited>>,
    server: Arc<AppServer>,
    run: Option<Run>,
}

impl Relay {
    fn ended(&mut self) {
        if let Some(run) = self.run.take() {
            if let Some(conn) = self.conn.take() {
                self.server.put_back(conn);
            }
            // A web app's result: null, as a streamed Response's end is (web.rs).
            run.finish(pb::Result { outcome: Some(pb::result::Outcome::Value(vec![0xf6])) }, ExecStatus::Ok);
        }
    }
}

impl Body for Relay {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(run) = this.run.take() else { return Poll::Ready(None) };
        // Aborted by the scheduler (its timeout, a cancel, its container stopping).
        if Pin::new(&mut this.stopped).poll(cx).is_ready() {
            run.finish(error("InputCancelledError", "aborted"), ExecStatus::FailedFinal);
            return Poll::Ready(Some(Err(std::io::Error::other("the request was aborted"))));
        }
        this.run = Some(run);
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(None) => {
                this.ended();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let message = format!("the web app's server on 127.0.0.1:{} broke off its answer: {e}", this.server.port);
                if let Some(run) = this.run.take() {
                    run.finish(error(BAD_GATEWAY, message.clone()), ExecStatus::FailedFinal);
                }
                Poll::Ready(Some(Err(std::io::Error::other(message))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.run.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // An answer with nothing left to read (a HEAD's, a 204) is done; any other is cut short.
        if self.body.is_end_stream() {
            self.ended();
        } else if let Some(run) = self.run.take() {
            run.cancel();
        }
    }
}
