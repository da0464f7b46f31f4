//! The gRPC services and the server around them.
use std::collections::hash_map::Entry;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::{Command, Phase, PoolId, Scheduler, Submission};
use berth_proto::v1::{
    self as pb, container_message,
    containers_server::{Containers, ContainersServer},
    functions_server::{Functions, FunctionsServer},
    map_request, ControlMessage,
};
use berth_proto::values;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::{Stream as _, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::conn::{ConnCounters, CountRequestsLayer, Counters, Framing, Limits, Listener};
use crate::plane::{
    cancel_map, cancelled, error, CallSlot, Host, Input, MapCall, Registry, Shared, Spawner, State, Waiter,
};

/// Where and how the control plane listens.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// 127.0.0.1 unless told otherwise; port 0 picks a free one.
    pub addr: SocketAddr,
    /// Required when `addr` is not loopback; callers send `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Larger requests fail with RESOURCE_EXHAUSTED (HTTP: 413).
    pub max_message_bytes: usize,
    /// Also serve the HTTP/1.1 JSON ingress here (`--http-port`); port 0 picks a free one.
    /// Same token rule as `addr`.
    pub http_addr: Option<SocketAddr>,
    /// A connection must send the HTTP/2 preface (gRPC), or each complete request head
    /// (HTTP), within this, or it is closed. Real clients send the preface with their first
    /// packet; 10 s leaves room for a slow network without letting silent sockets pile up.
    pub handshake_timeout: Duration,
    /// A connection with no open request and no traffic for this long is closed. A
    /// connection with an open request or stream (a Map call waiting on a slow input, a
    /// container's Attach stream) is never closed for idleness. 10 minutes: well past a
    /// client's pause between calls, so pooled channels are rarely torn down for nothing.
    pub idle_timeout: Duration,
    /// Each listener (gRPC, and HTTP on its own) holds at most this many connections;
    /// past it, a new connection is accepted and closed at once (`--max-connections`).
    pub max_connections: usize,
    /// HTTP: a request body that brings no bytes for this long (from the head, or from its
    /// last bytes) is answered 408 and dropped.
    pub body_timeout: Duration,
    /// How long the result of a spawned call is kept for `GetResult` after it finishes
    /// (`--result-ttl`). A delivered result is forgotten at once. Modal keeps results for days
    /// in its storage; a local server keeps them in memory, so an hour.
    pub result_ttl: Duration,
    /// A Map call takes no more inputs while this many of its results are not taken by its
    /// caller (backpressure: the server never holds every result of a caller that stops
    /// reading). Above the TypeScript client's 10,000 in flight, so a reading caller never
    /// waits on it.
    pub map_window: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 7450)),
            token: None,
            max_message_bytes: 16 << 20,
            http_addr: None,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            max_connections: 4096,
            body_timeout: Duration::from_secs(30),
            result_ttl: Duration::from_secs(3600),
            map_window: 16 * 1024,
        }
    }
}

/// Room for the protobuf around a value of the cap's size (ids, error text, field tags).
pub const FRAMING_BYTES: usize = 64 << 10;

/// A running control plane.
/// The forced stop of a control plane (see [`ControlPlane::killer`]).
#[derive(Clone)]
pub struct Killer(mpsc::UnboundedSender<Command>);

impl Killer {
    /// Running inputs are aborted and every pending one is answered `InputCancelledError`, no
    /// more exit hooks run, every container is told to stop; a `shutdown` under way returns
    /// instead of waiting for inputs no container will run.
    pub fn kill(&self) {
        let _ = self.0.send(Command::Kill);
    }
}

pub struct ControlPlane {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop_server: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    http: Option<crate::http::Ingress>,
    counters: Arc<Counters>,
}

impl ControlPlane {
    /// Binds, starts the scheduler and serves until [`shutdown`](Self::shutdown).
    pub async fn start(registry: Registry, spawner: impl Spawner, opts: ServeOptions) -> io::Result<Self> {
        for addr in std::iter::once(opts.addr).chain(opts.http_addr) {
            if !addr.ip().is_loopback() && opts.token.as_deref().is_none_or(str::is_empty) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "binding {addr} exposes the app beyond this machine: pass a token (--token) that callers must send"
                    ),
                ));
            }
        }
        if opts.max_connections == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_connections is 0, which refuses every caller: pass --max-connections 1 or more",
            ));
        }
        for (name, d) in [
            ("handshake_timeout", opts.handshake_timeout),
            ("idle_timeout", opts.idle_timeout),
            ("body_timeout", opts.body_timeout),
        ] {
            if d.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name} is 0, which closes every connection at once: give it a duration"),
                ));
            }
        }
        for f in &registry.functions {
            f.spec.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        let listener = bind(opts.addr, "gRPC", "--grpc-port").await?;
        let local_addr = listener.local_addr()?;
        let http_listener = match opts.http_addr {
            Some(addr) => Some(bind(addr, "HTTP", "--http-port").await?),
            None => None,
        };
        let (commands, source) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            registry,
            state: Mutex::new(State { next_pool: 1, ..State::default() }),
            commands,
            spawner: Box::new(spawner),
            endpoint: Mutex::new(format!("http://{local_addr}")),
            max_message_bytes: opts.max_message_bytes,
            result_ttl: opts.result_ttl,
            map_window: opts.map_window,
        });
        tokio::spawn(Scheduler::new(Host(shared.clone()), Host(shared.clone())).run(source));
        // Pools that keep containers warm start now, not with their first call (as in Modal).
        for (index, def) in shared.registry.functions.iter().enumerate() {
            // (Those whose parameters all have a default: a call without any uses that pool.)
            if let (Ok(params), true) = (crate::params::canonical(def, &[]), def.spec.min_containers > 0) {
                shared.pool(index, &params);
            }
        }
        tokio::spawn(crate::plane::housekeeping(Arc::downgrade(&shared)));

        let token = opts.token.clone();
        let auth = move |req: Request<()>| check_token(token.as_deref(), &req).map(|()| req);
        let cap = opts.max_message_bytes;
        // One cap, every hop: a caller's request, each input's arguments, each result. Answers
        // carry a result of up to the cap plus framing; containers split their outputs at the
        // cap and refuse larger results themselves, but one execution's output is one message:
        // a @batched one carries up to maxBatchSize results of up to the cap each.
        let largest_batch = shared
            .registry
            .functions
            .iter()
            .flat_map(|f| &f.spec.methods)
            .filter_map(|m| m.batching.map(|b| b.max_batch_size as usize))
            .max()
            .unwrap_or(1);
        let functions = FunctionsServer::new(FunctionsSvc { shared: shared.clone() })
            .max_decoding_message_size(cap)
            .max_encoding_message_size(cap.saturating_add(FRAMING_BYTES));
        let containers = ContainersServer::new(ContainersSvc { shared: shared.clone() })
            .max_decoding_message_size(cap.saturating_mul(largest_batch).saturating_add(FRAMING_BYTES))
            .max_encoding_message_size(usize::MAX);
        let (health, health_svc) = tonic_health::server::health_reporter();
        health.set_serving::<FunctionsServer<FunctionsSvc>>().await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(berth_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // grpcurl before 1.8.8 and grpcio-reflection up to 1.85 ask v1alpha only; each
        // version lists the other too, so either kind of client sees every service.
        let reflection_v1alpha = reflection()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(io::Error::other)?;
        let reflection = reflection()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(io::Error::other)?;
        let (stop_server, stopped) = oneshot::channel::<()>();
        let router = tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(oversized_is_resource_exhausted::<tonic::body::Body>))
            .layer(CountRequestsLayer)
            .add_service(InterceptedService::new(functions, auth))
            .add_service(containers)
            .add_service(health_svc)
            .add_service(reflection)
            .add_service(reflection_v1alpha);
        let counters = Arc::new(Counters::default());
        let limits = Limits {
            handshake_timeout: opts.handshake_timeout,
            idle_timeout: opts.idle_timeout,
            max_connections: opts.max_connections,
        };
        let incoming = Listener::new(listener, "gRPC", Framing::Http2, limits, counters.clone());
        let server = tokio::spawn(async move {
            if let Err(e) = router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await
            {
                eprintln!("berth: control plane stopped: {e}");
            }
        });
        let http = match http_listener {
            Some(listener) => Some(crate::http::Ingress::start(
                listener.local_addr()?,
                FunctionsSvc { shared: shared.clone() },
                opts.token.clone(),
                opts.max_message_bytes,
                opts.body_timeout,
                // A cap of its own: a flood of HTTP callers must not lock containers out of
                // attaching over gRPC, nor the other way round.
                Listener::new(listener, "HTTP", Framing::Http1, limits, counters.clone()),
                counters.clone(),
            )),
            None => None,
        };
        Ok(Self { shared, local_addr, stop_server: Some(stop_server), server, http, counters })
    }

    /// What the listeners have dropped so far: connections that never handshook, sat
    /// idle, or came over the cap, and HTTP bodies that stalled.
    pub fn counters(&self) -> ConnCounters {
        self.counters.snapshot()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the HTTP ingress listens, if [`ServeOptions::http_addr`] asked for one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.local_addr)
    }

    /// Stops taking calls, lets accepted inputs finish, runs exit hooks, then stops serving.
    /// What stops this control plane at once, usable while [`shutdown`](Self::shutdown) runs.
    pub fn killer(&self) -> Killer {
        Killer(self.shared.commands.clone())
    }

    pub async fn shutdown(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.commands.send(Command::Shutdown(Some(tx))).is_ok() {
            let _ = rx.await;
        }
        if let Some(stop) = self.stop_server.take() {
            let _ = stop.send(());
        }
        let http = async {
            if let Some(http) = self.http.take() {
                http.shutdown().await;
            }
        };
        let _ = tokio::join!(&mut self.server, http);
    }
}

/// tonic answers a request over the size cap with OUT_OF_RANGE; gRPC's convention (and
/// berth's contract) is RESOURCE_EXHAUSTED. Unary answers carry the status in their headers.
/// A stream message over the cap ends the stream with the status in its trailers, unmapped.
fn oversized_is_resource_exhausted<B>(mut res: http::Response<B>) -> http::Response<B> {
    let h = res.headers_mut();
    let out_of_range = h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11");
    let too_large = h
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .is_some_and(|m| m.contains("too%20large") || m.contains("too large"));
    if out_of_range && too_large {
        h.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    res
}

/// Binds, or says which address could not be had and how to pick another.
async fn bind(addr: SocketAddr, what: &str, flag: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::AddrInUse {
            format!(": is another `berth serve` running? Pick another port with {flag} (0 picks a free one)")
        } else {
            String::new()
        };
        io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}{hint}"))
    })
}

fn check_token(expected: Option<&str>, req: &Request<()>) -> Result<(), Status> {
    let sent = req.metadata().get("authorization").and_then(|v| v.to_str().ok());
    token_rule(expected, sent).map_err(Status::unauthenticated)
}

/// The rule both ingresses apply: with a token configured, callers send
/// `authorization: Bearer <token>`. The error is the message for the caller.
pub(crate) fn token_rule(expected: Option<&str>, authorization: Option<&str>) -> Result<(), &'static str> {
    let Some(expected) = expected.filter(|t| !t.is_empty()) else {
        return Ok(());
    };
    match authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        Some(t) if same_secret(t.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err("wrong token: send the token the server was started with"),
        None => Err("this server needs a token: send `authorization: Bearer <token>`"),
    }
}

/// Equal, in a time that does not depend on where the first difference is (only on the length
/// of what was sent): a caller cannot find the token a byte at a time by timing answers.
fn same_secret(sent: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(sent.len() != expected.len());
    for (i, b) in sent.iter().enumerate() {
        diff |= b ^ expected.get(i % expected.len().max(1)).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

fn bad(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// A name or id a caller sent, as echoed in an error: long ones are cut, so that an answer
/// (and its `grpc-message` header) stays small whatever the caller sent.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = 48;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// What a request named, resolved: the pool and method to submit to, and what its arguments
/// must look like.
pub(crate) struct Target {
    pub pool: PoolId,
    pub method: u32,
    arity: Option<crate::plane::Arity>,
    /// `square`, `Embedder.embed`: for messages.
    label: String,
}

impl Target {
    /// Arguments must be what a container decodes (berth_proto::values) and as many as the
    /// method takes. `what` names them in the message, e.g. "args of input 3".
    pub fn check_args(&self, args: &[u8], what: &str) -> Result<(), Status> {
        let n = values::check_args(args)
            .map_err(|e| bad(format!("{what} are not a value berth can pass to {}: {e}", self.label)))?;
        match self.arity.and_then(|a| a.refuses(n)) {
            Some(takes) => Err(bad(format!("{} takes {takes}; {what} hold {n}", self.label))),
            None => Ok(()),
        }
    }
}

pub(crate) struct FunctionsSvc {
    shared: Arc<Shared>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl FunctionsSvc {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// The response header that carries a Map call's function call id (what `Cancel` takes).
pub(crate) const MAP_CALL_ID_HEADER: &str = "berth-function-call-id";

impl FunctionsSvc {
    /// The pool and method index a request names, creating the pool for new parameters.
    /// NOT_FOUND names what exists; INVALID_ARGUMENT says what to fix.
    pub(crate) fn resolve(&self, f: Option<&pb::FunctionRef>) -> Result<Target, Status> {
        let f = f.ok_or_else(|| bad("missing `function`: name the app and function to call"))?;
        let reg = &self.shared.registry;
        let (index, def) = reg
            .functions
            .iter()
            .enumerate()
            .find(|(_, d)| d.app == f.app && d.name == f.function)
            .ok_or_else(|| unknown_function(reg, &f.app, &f.function))?;
        if let Some(what) = def.not_a_method(&f.method) {
            return Err(Status::not_found(what));
        }
        let method = if def.is_class {
            def.methods.iter().position(|m| *m == f.method).ok_or_else(|| {
                Status::not_found(format!(
                    "class '{}' has no method '{}'{}; its methods: {}",
                    def.name,
                    shown(&f.method),
                    did_you_mean(&f.method, &def.methods),
                    def.methods.join(", ")
                ))
            })? as u32
        } else {
            if !(f.method.is_empty() || f.method == def.name) {
                return Err(bad(format!("'{}' is a function, not a class: leave `method` empty", def.name)));
            }
            if !f.params.is_empty() {
                return Err(bad(format!("'{}' is a function: it takes no class parameters", def.name)));
            }
            0
        };
        // Checked here, before any container starts; the pool is keyed by the full set.
        let params = crate::params::canonical(def, &f.params).map_err(bad)?;
        let label = if def.is_class { format!("{}.{}", def.name, f.method) } else { def.name.clone() };
        let arity = def.arity.get(method as usize).copied();
        let pool = self.shared.pool(index, &params);
        Ok(Target { pool, method, arity, label })
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// One call, as Invoke makes it: submitted with its own function call id, awaited.
    pub(crate) async fn call(&self, pool: PoolId, method: u32, args: Vec<u8>) -> (pb::Result, String) {
        let fc = self.new_call_id();
        let (tx, rx) = oneshot::channel();
        self.submit(pool, method, args, fc.clone(), Waiter::Call(tx));
        let result = rx.await.unwrap_or_else(|_| error("Error", "the control plane stopped before the result"));
        (result, fc)
    }

    fn submit(&self, pool: PoolId, method: u32, args: Vec<u8>, fc: String, waiter: Waiter) {
        self.submit_many(pool, method, fc, vec![(args, waiter)])
    }

    /// Many inputs, one lock and one command. The inputs of a cancelled Map call are answered
    /// `InputCancelledError` instead.
    fn submit_many(&self, pool: PoolId, method: u32, fc: String, inputs: Vec<(Vec<u8>, Waiter)>) {
        let mut subs = Vec::with_capacity(inputs.len());
        let mut st = self.shared.lock();
        if st.maps.get(&fc).is_some_and(|m| m.is_cancelled()) {
            drop(st);
            for (_, waiter) in inputs {
                waiter.send(cancelled());
            }
            return;
        }
        for (args, waiter) in inputs {
            st.next_input += 1;
            let input = st.next_input;
            st.inputs.insert(input, Input { args, fc: fc.clone(), waiter });
            subs.push(Submission { input, pool, method });
        }
        let last = subs.last().map_or(0, |s| s.input);
        // A spawned call's slot learns its input before anything can cancel or answer it.
        if let Some(slot) = st.calls.get_mut(&fc) {
            slot.input = last;
        }
        // Sent under the lock, so a Cancel of these inputs always follows their submission.
        let _ = self.shared.commands.send(Command::Submit(subs));
    }

    /// The status a caller gets for a request message the server could not read: tonic's
    /// OUT_OF_RANGE for a message over the cap becomes RESOURCE_EXHAUSTED, naming the cap.
    fn inbound_status(&self, status: Status) -> Status {
        if status.code() != tonic::Code::OutOfRange {
            return status;
        }
        Status::resource_exhausted(format!(
            "a Map message is over this server's message size cap of {} bytes ({}): send smaller inputs, \
             or start the server with a larger max_message_bytes",
            self.shared.max_message_bytes,
            status.message()
        ))
    }

    fn new_call_id(&self) -> String {
        let mut st = self.shared.lock();
        st.next_call += 1;
        format!("fc-{}", st.next_call)
    }
}

type Stream<T> = UnboundedReceiverStream<Result<T, Status>>;

#[tonic::async_trait]
impl Functions for FunctionsSvc {
    async fn invoke(&self, req: Request<pb::InvokeRequest>) -> Result<Response<pb::InvokeResponse>, Status> {
        let req = req.into_inner();
        let target = self.resolve(req.function.as_ref())?;
        target.check_args(&req.args, "args")?;
        let (result, fc) = self.call(target.pool, target.method, req.args).await;
        Ok(Response::new(pb::InvokeResponse { result: Some(result), function_call_id: fc }))
    }

    type MapStream = MapResponses;

    async fn map(&self, req: Request<Streaming<pb::MapRequest>>) -> Result<Response<Self::MapStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound
            .next()
            .await
            .ok_or_else(|| bad("empty Map stream: send the function first"))?
            .map_err(|s| self.inbound_status(s))?;
        let Some(map_request::Item::Function(f)) = first.item else {
            return Err(bad("the first Map message must name the function (`function`), then inputs follow"));
        };
        let target = self.resolve(Some(&f))?;
        let (pool, method) = (target.pool, target.method);
        let fc = self.new_call_id();
        let call = Arc::new(MapCall::new(self.shared.map_window));
        self.shared.lock().maps.insert(fc.clone(), call.clone());
        let (out, rx) = mpsc::unbounded_channel();
        let responses =
            MapResponses { rx, shared: self.shared.clone(), fc: fc.clone(), call: call.clone(), ended: false };
        let svc = FunctionsSvc { shared: self.shared.clone() };
        let header = fc.parse();
        tokio::spawn(async move {
            // Each input holds a sender, and so does this task while it reads: once it stops
            // and every input is answered, the last sender goes and the response stream ends.
            let mut stopping = false;
            loop {
                // Backpressure: a caller that does not read its results stops being read
                // (HTTP/2 flow control then stops its sender) instead of the server holding
                // every result it has not taken.
                if !stopping && !call.has_room() {
                    let room = call.room.notified();
                    tokio::pin!(room);
                    room.as_mut().enable();
                    if !call.has_room() {
                        tokio::select! {
                            biased;
                            () = call.stop.notified() => stopping = true,
                            () = room => {}
                        }
                        continue;
                    }
                }
                let next = if stopping {
                    // Cancelled: what has already arrived is answered too, without waiting.
                    match ready(&mut inbound) {
                        std::task::Poll::Ready(m) => m,
                        std::task::Poll::Pending => None,
                    }
                } else {
                    tokio::select! {
                        biased;
                        () = call.stop.notified() => {
                            stopping = true;
                            continue;
                        }
                        m = inbound.next() => m,
                    }
                };
                let Some(first) = next else { break };
                // Everything that has already arrived goes to the scheduler as one submission,
                // as far as the window allows.
                let room = if stopping { 4096 } else { call.room_left().clamp(1, 4096) };
                let mut msgs = vec![first];
                while msgs.len() < room {
                    match ready(&mut inbound) {
                        std::task::Poll::Ready(Some(m)) => msgs.push(m),
                        _ => break,
                    }
                }
                let mut batch = Vec::with_capacity(msgs.len());
                let mut end = None;
                for msg in msgs {
                    let input = match msg.map(|m| m.item) {
                        Ok(Some(map_request::Item::Input(i))) => i,
                        Ok(_) => {
                            end = Some(bad("after the first message, Map messages carry inputs only"));
                            break;
                        }
                        Err(status) => {
                            end = Some(svc.inbound_status(status));
                            break;
                        }
                    };
                    if let Err(status) = target.check_args(&input.args, &format!("args of input {}", input.index)) {
                        end = Some(status);
                        break;
                    }
                    batch.push((input.args, Waiter::Map(out.clone(), input.index, call.clone())));
                }
                // The inputs before a bad message still run and get their results; the
                // stream ends with the status after them.
                if !batch.is_empty() {
                    call.accepted(batch.len());
                    svc.submit_many(pool, method, fc.clone(), batch);
                }
                if let Some(status) = end {
                    *call.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                    break;
                }
            }
        });
        let mut response = Response::new(responses);
        if let Ok(v) = header {
            response.metadata_mut().insert(MAP_CALL_ID_HEADER, v);
        }
        Ok(response)
    }

    async fn spawn(&self, req: Request<pb::InvokeRequest>) -> Result<Response<pb::SpawnResponse>, Status> {
        let req = req.into_inner();
        let target = self.resolve(req.function.as_ref())?;
        target.check_args(&req.args, "args")?;
        let (pool, method) = (target.pool, target.method);
        let fc = self.new_call_id();
        // The slot exists before the input, so a fast result always finds it.
        let ready = Arc::new(Notify::new());
        self.shared.lock().calls.insert(fc.clone(), CallSlot { input: 0, result: None, ready });
        // The slot learns its input in `submit`, under the same lock.
        self.submit(pool, method, req.args, fc.clone(), Waiter::None);
        Ok(Response::new(pb::SpawnResponse { function_call_id: fc }))
    }

    async fn get_result(&self, req: Request<pb::GetResultRequest>) -> Result<Response<pb::GetResultResponse>, Status> {
        let req = req.into_inner();
        let ready = {
            let st = self.shared.lock();
            let Some(slot) = st.calls.get(&req.function_call_id) else {
                return Err(gone_or_unknown(&st, &req.function_call_id, self.shared.result_ttl));
            };
            slot.ready.clone()
        };
        let notified = ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // A delivered result is forgotten: slots must not pile up on a long-running server.
        let take = |shared: &Shared| {
            let mut st = shared.lock();
            let ready = st.calls.get(&req.function_call_id).is_some_and(|s| s.result.is_some());
            if ready {
                st.calls.remove(&req.function_call_id).and_then(|s| s.result)
            } else {
                None
            }
        };
        let mut result = take(&self.shared);
        if result.is_none() && req.timeout > 0.0 {
            let wait = Duration::from_secs_f64(req.timeout.min(86_400.0));
            let _ = tokio::time::timeout(wait, notified).await;
            result = take(&self.shared);
        }
        Ok(Response::new(pb::GetResultResponse { ready: result.is_some(), result }))
    }

    /// A spawned call's input, or every input of a Map call not answered yet.
    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let fc = req.into_inner().function_call_id;
        let st = self.shared.lock();
        if let Some(call) = st.maps.get(&fc).cloned() {
            drop(st);
            cancel_map(&self.shared, &fc, &call);
            return Ok(Response::new(pb::CancelResponse {}));
        }
        let input = st.calls.get(&fc).map(|s| s.input).ok_or_else(|| not_a_call(&fc))?;
        // Under the lock: after the input's submission.
        let _ = self.shared.commands.send(Command::Cancel(vec![input]));
        Ok(Response::new(pb::CancelResponse {}))
    }
}

/// A call id GetResult does not find: one this server issued (its result was delivered, or
/// expired), or none it knows.
fn gone_or_unknown(st: &State, fc: &str, ttl: Duration) -> Status {
    let issued =
        fc.strip_prefix("fc-").and_then(|n| n.parse::<u64>().ok()).is_some_and(|n| n >= 1 && n <= st.next_call);
    if !issued {
        return not_a_call(fc);
    }
    Status::not_found(format!(
        "the result of {fc} is no longer kept: a spawned call's result is delivered once, and kept for {} s after it \
         finishes (berth serve --result-ttl); collect it sooner",
        ttl.as_secs()
    ))
}

fn not_a_call(fc: &str) -> Status {
    let fc = shown(fc);
    Status::not_found(format!(
        "no spawned call or open Map call '{fc}' on this server (Spawn returns the ids GetResult and Cancel \
         take; Map sends its id in the `{MAP_CALL_ID_HEADER}` response header)"
    ))
}

/// NOT_FOUND for a function or class the registry does not have: what the app has, or, for
/// an app not served here, the apps that are (README "CLI": an unknown name is answered naming
/// what exists).
fn unknown_function(reg: &Registry, app: &str, function: &str) -> Status {
    let known: Vec<String> = reg.functions.iter().filter(|d| d.app == app).map(|d| d.name.clone()).collect();
    if known.is_empty() {
        return Status::not_found(unknown_app(reg, app));
    }
    Status::not_found(format!(
        "app '{}' has no function or class '{}'{}; it has: {}",
        shown(app),
        shown(function),
        did_you_mean(function, &known),
        known.join(", ")
    ))
}

/// `no app named 'x' is served here`, with the apps that are (and the one meant, if close).
pub(crate) fn unknown_app(reg: &Registry, app: &str) -> String {
    let mut apps: Vec<String> = Vec::new();
    for d in &reg.functions {
        if !apps.contains(&d.app) {
            apps.push(d.app.clone());
        }
    }
    if apps.is_empty() {
        return format!("no app named '{}' is served here: this server serves no app", shown(app));
    }
    format!("no app named '{}' is served here{}; served: {}", shown(app), did_you_mean(app, &apps), apps.join(", "))
}

/// ` (perhaps you mean 'square')` when one candidate is plausibly what `name` meant
/// (`params::closest`), else empty. No `?`: tonic sends it in `grpc-message` as `%3F`, which
/// @grpc/grpc-js (decodeURI) leaves as is.
fn did_you_mean(name: &str, candidates: &[String]) -> String {
    crate::params::closest(name, candidates).map_or_else(String::new, |c| format!(" (perhaps you mean '{c}')"))
}

/// Polls the request stream once: a message that has already arrived, or Pending.
fn ready(inbound: &mut Streaming<pb::MapRequest>) -> std::task::Poll<Option<Result<pb::MapRequest, Status>>> {
    let waker = std::task::Waker::noop();
    std::pin::Pin::new(inbound).poll_next(&mut std::task::Context::from_waker(waker))
}

/// A Map call's results, as they finish. It ends once the requests have ended (or the call was
/// cancelled) and every accepted input is answered: OK, or with the status of a request
/// message the server could not take. Dropped before that (the caller went away), it cancels
/// the call's inputs that are still queued or running.
pub struct MapResponses {
    rx: mpsc::UnboundedReceiver<Result<pb::MapResponse, Status>>,
    shared: Arc<Shared>,
    fc: String,
    call: Arc<MapCall>,
    ended: bool,
}

impl MapResponses {
    fn forget(&self) {
        let mut st = self.shared.lock();
        if st.maps.get(&self.fc).is_some_and(|c| Arc::ptr_eq(c, &self.call)) {
            st.maps.remove(&self.fc);
        }
    }
}

impl tokio_stream::Stream for MapResponses {
    type Item = Result<pb::MapResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(None) => {
                self.ended = true;
                self.forget();
                let end = self.call.end.lock().unwrap_or_else(|e| e.into_inner()).take();
                std::task::Poll::Ready(end.map(Err))
            }
            std::task::Poll::Ready(Some(Ok(r))) => {
                // Taken by the transport (which pulls only as the caller's window allows).
                self.call.taken(&r);
                std::task::Poll::Ready(Some(Ok(r)))
            }
            other => other,
        }
    }
}

impl Drop for MapResponses {
    fn drop(&mut self) {
        if !self.ended {
            // Nobody reads the results any more: the inputs are not run for nobody.
            cancel_map(&self.shared, &self.fc, &self.call);
        }
        self.forget();
    }
}

pub(crate) struct ContainersSvc {
    shared: Arc<Shared>,
}

fn phase_from_pb(p: i32) -> Phase {
    match pb::Phase::try_from(p) {
        Ok(pb::Phase::Build) => Phase::Build,
        Ok(pb::Phase::SnapEnter) => Phase::SnapEnter,
        Ok(pb::Phase::Exit) => Phase::Exit,
        _ => Phase::Enter,
    }
}

#[tonic::async_trait]
impl Containers for ContainersSvc {
    type AttachStream = Stream<ControlMessage>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::ContainerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound.next().await.ok_or_else(|| bad("empty Attach stream: say hello first"))??;
        let Some(container_message::Msg::Hello(hello)) = first.msg else {
            return Err(bad("the first Attach message must be hello { container_id, token }"));
        };
        let cid = hello.container_id;
        let (out, rx) = mpsc::unbounded_channel();
        attach_link(&self.shared, cid, &hello.token, out)?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                handle_container_message(&shared, cid, msg.msg);
            }
            detached(&shared, cid);
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// A container's hello: its link (found by id and token) gets the stream's sender and sends
/// what waited for the attach; the scheduler learns that the spawn is done.
pub(crate) fn attach_link(
    shared: &Shared,
    cid: u32,
    token: &str,
    out: mpsc::UnboundedSender<Result<ControlMessage, Status>>,
) -> Result<(), Status> {
    {
        let mut st = shared.lock();
        // One answer for an unknown id and a wrong token: telling them apart would show
        // an unauthenticated caller which container ids exist.
        let link = st.links.get_mut(&cid).filter(|link| link.token == token).ok_or_else(|| {
            Status::unauthenticated(
                "unknown container or wrong token: attach with the container id and token the server \
                 gave this container when it started it",
            )
        })?;
        if link.tx.is_some() {
            return Err(Status::already_exists(format!("container {cid} is already attached")));
        }
        link.tx = Some(out);
        link.flush();
    }
    let _ = shared.commands.send(Command::HookDone { container: cid, phase: Phase::Spawn, ok: true });
    Ok(())
}

/// A container's Attach stream ended: a container that was stopped is gone already; any other
/// died.
pub(crate) fn detached(shared: &Shared, cid: u32) {
    let known = shared.lock().links.remove(&cid).is_some();
    if known {
        let _ = shared.commands.send(Command::ContainerLost(cid));
        shared.spawner.stop(cid);
    }
}

/// Finished executions: their results wait for the scheduler's decision, their credits return.
fn outputs(shared: &Shared, cid: u32, outputs: Vec<pb::Output>) {
    let mut done = Vec::with_capacity(outputs.len());
    let mut answered = Vec::new();
    let mut st = shared.lock();
    let overdue = st.links.get(&cid).is_some_and(|l| !l.overdue.is_empty());
    for o in outputs {
        // Only the container running an execution answers it: another's output for it (a
        // bug in that container) would take its result and its slot's credit.
        let Entry::Occupied(exec) = st.execs.entry(o.exec_id) else {
            continue;
        };
        if exec.get().0 != cid {
            continue;
        }
        let (_, inputs) = exec.remove();
        if overdue {
            answered.extend(inputs.iter().map(|(i, _)| *i));
        }
        let mut results = o.results.into_iter();
        for (input, attempt) in inputs {
            let r =
                results.next().unwrap_or_else(|| error("InvalidError", "the container sent fewer results than inputs"));
            // An input answered already (cancelled while it ran) needs its result no more.
            // A late result of an earlier attempt never replaces a later one's.
            if st.inputs.contains_key(&input) && st.outputs.get(&input).is_none_or(|(a, _)| *a <= attempt) {
                st.outputs.insert(input, (attempt, r));
            }
        }
        let status = if o.retryable_failure { berth_core::ExecStatus::Failed } else { berth_core::ExecStatus::Ok };
        done.push((o.exec_id, status));
    }
    // Each output acknowledges its execution: the slot's credit comes back.
    if let Some(link) = st.links.get_mut(&cid) {
        link.last_heard = std::time::Instant::now();
        if !link.overdue.is_empty() {
            link.overdue.retain(|i| !answered.contains(i));
            if link.overdue.is_empty() {
                link.overdue_since = None;
            }
        }
        link.credits = link.credits.saturating_add(u32::try_from(done.len()).unwrap_or(u32::MAX));
        link.flush();
    }
    drop(st);
    if !done.is_empty() {
        let _ = shared.commands.send(Command::Complete(done));
    }
}

/// Any message from a container is a sign of life (outputs note it under their own lock).
fn heard(shared: &Shared, cid: u32) {
    if let Some(link) = shared.lock().links.get_mut(&cid) {
        link.last_heard = std::time::Instant::now();
    }
}

pub(crate) fn handle_container_message(shared: &Shared, cid: u32, msg: Option<container_message::Msg>) {
    match msg {
        Some(container_message::Msg::Credit(c)) => {
            let mut st = shared.lock();
            if let Some(link) = st.links.get_mut(&cid) {
                link.last_heard = std::time::Instant::now();
                // A container states its own slots; any number it sends must not overflow.
                link.credits = link.credits.saturating_add(c.slots);
                link.flush();
            }
        }
        Some(container_message::Msg::HookDone(h)) => {
            heard(shared, cid);
            let phase = phase_from_pb(h.phase);
            if !h.ok && phase != Phase::Exit {
                if let Some(e) = h.error {
                    crate::plane::start_failed(shared, cid, phase, e);
                }
            }
            let _ = shared.commands.send(Command::HookDone { container: cid, phase, ok: h.ok });
        }
        Some(container_message::Msg::Output(o)) => outputs(shared, cid, vec![o]),
        Some(container_message::Msg::OutputBatch(b)) => outputs(shared, cid, b.outputs),
        Some(container_message::Msg::Draining(d)) => {
            heard(shared, cid);
            let cmd = if d.interrupted { Command::InterruptContainer(cid) } else { Command::DrainContainer(cid) };
            let _ = shared.commands.send(cmd);
        }
        Some(container_message::Msg::Heartbeat(_)) => heard(shared, cid),
        Some(container_message::Msg::Hello(_)) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{self as pb, container_message::Msg};

    #[test]
    fn tokens_compare_whole() {
        use super::{same_secret, token_rule};
        assert!(same_secret(b"s3cret", b"s3cret"));
        for wrong in [&b"s3creT"[..], b"s3cre", b"s3cret!", b"", b"S3cret"] {
            assert!(!same_secret(wrong, b"s3cret"), "{wrong:?}");
        }
        assert!(token_rule(Some("t"), Some("Bearer t")).is_ok());
        assert!(token_rule(Some("t"), Some("Bearer u")).is_err());
        assert!(token_rule(Some("t"), None).is_err());
        assert!(token_rule(None, None).is_ok());
    }

    use crate::fuzzing::Plane;

    fn output(exec_id: u64) -> pb::ContainerMessage {
        let result = pb::Result { outcome: Some(pb::result::Outcome::Value(vec![0x01])) };
        pb::ContainerMessage {
            msg: Some(Msg::Output(pb::Output { exec_id, results: vec![result], ..Default::default() })),
        }
    }

    #[test]
    fn not_found_suggests_what_was_meant() {
        let names = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let apps = names(&["tinyml", "embeddings"]);
        assert_eq!(crate::params::closest("tinyml2", &apps), Some("tinyml"), "a prefix");
        assert_eq!(crate::params::closest("embedings", &apps), Some("embeddings"), "a typo");
        assert_eq!(crate::params::closest("Embeddings", &apps), Some("embeddings"), "case");
        assert_eq!(crate::params::closest("billing", &apps), None, "nothing close");
        assert_eq!(crate::params::closest(&"x".repeat(10_000), &apps), None);
        assert_eq!(super::did_you_mean("sqare", &names(&["square", "cube"])), " (perhaps you mean 'square')");
        assert_eq!(super::did_you_mean("zzz", &names(&["square"])), "");
    }

    #[test]
    fn credits_saturate() {
        // Found by fuzz/ (attach_frames): credits are the container's to state, and two
        // credits of u32::MAX overflowed the count (a panic in debug builds, which ended the
        // task reading the container's stream; a wrapped, near-zero count in release).
        let mut plane = Plane::new(1);
        plane.spawn(vec![0x80]);
        let (cid, token) = plane.started()[0].clone();
        assert!(plane.hello(cid, &token));
        let credit = || pb::ContainerMessage { msg: Some(Msg::Credit(pb::Credit { slots: u32::MAX })) };
        plane.message(cid, credit());
        // One went to the waiting input.
        assert_eq!(plane.credits(), vec![(cid, u32::MAX - 1)]);
        plane.message(cid, credit());
        assert_eq!(plane.credits(), vec![(cid, u32::MAX)]);
        let exec = plane.execs()[0].0;
        plane.message(cid, output(exec));
        assert_eq!(plane.credits(), vec![(cid, u32::MAX)]);
    }

    #[test]
    fn a_container_answers_its_own_executions_only() {
        // Found by fuzz/ (attach_frames): an output from container 1 for an execution running
        // in container 2 completed it, and gave container 1 the credit.
        // Two containers kept: a cold pool starts one for its queue until it has measured.
        let mut plane = Plane::with_min_containers(1, 2);
        plane.spawn(vec![0x81, 0x01]);
        plane.spawn(vec![0x81, 0x02]);
        let started = plane.started();
        assert_eq!(started.len(), 2, "two containers for two inputs");
        for (cid, token) in &started {
            assert!(plane.hello(*cid, token));
            plane.message(*cid, pb::ContainerMessage { msg: Some(Msg::Credit(pb::Credit { slots: 1 })) });
        }
        let execs = plane.execs();
        assert_eq!(execs.iter().map(|e| e.1).collect::<Vec<_>>(), vec![started[0].0, started[1].0]);
        let (mine, theirs) = (execs[0].0, execs[1].0);
        let credits = plane.credits();
        plane.message(started[0].0, output(theirs));
        assert_eq!(plane.execs(), execs, "another container's output is ignored");
        assert_eq!(plane.credits(), credits, "and brings no credit");
        plane.message(started[0].0, output(mine));
        assert_eq!(plane.execs(), vec![execs[1]]);
    }

    #[test]
    fn a_lost_containers_unanswered_executions_are_forgotten() {
        // They used to stay in the execution table for the server's lifetime.
        let mut plane = Plane::new(1);
        plane.spawn(vec![0x81, 0x01]);
        let (cid, token) = plane.started()[0].clone();
        assert!(plane.hello(cid, &token));
        plane.message(cid, pb::ContainerMessage { msg: Some(Msg::Credit(pb::Credit { slots: 1 })) });
        assert_eq!(plane.execs().len(), 1);
        plane.detach(cid);
        assert!(plane.execs().iter().all(|e| e.1 != cid), "{:?}", plane.execs());
    }
}
