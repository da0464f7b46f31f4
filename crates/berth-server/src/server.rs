//! The control plane's start-up and shutdown: the options it listens with, the gRPC listener
//! with its services, the HTTP ingress beside it, and the forced stop.
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::Command;
use berth_proto::v1::{containers_server::ContainersServer, functions_server::FunctionsServer};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tonic::service::interceptor::InterceptedService;
use tonic::Request;

use crate::auth::check_token;
use crate::catalog::{Catalog, Replaced};
use crate::client::{Client, InProcess};
use crate::conn::{ConnCounters, CountRequestsLayer, Counters, Framing, Limits, Listener};
use crate::containers::ContainersSvc;
use crate::functions::FunctionsSvc;
use crate::plane::{Registry, Shared, Spawner, State};

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
    /// HTTP: past its first `body_timeout`, a request body must have come at this many bytes a
    /// second on average, or it is answered 408 and dropped: a slowloris client sending a byte
    /// just within each `body_timeout` would otherwise hold its connection for ever. 500, as
    /// Apache's mod_reqtimeout `MinRate`; any real client is far faster.
    pub min_body_rate: u32,
    /// How long the result of a spawned call is kept for `GetResult` after it finishes
    /// (`--result-ttl`). A delivered result is forgotten at once. Modal keeps results for days
    /// in its storage; a local server keeps them in memory, so an hour.
    pub result_ttl: Duration,
    /// A Map call takes no more inputs while this many of its results are not taken by its
    /// caller (backpressure: the server never holds every result of a caller that stops
    /// reading). Above the TypeScript client's 10,000 in flight, so a reading caller never
    /// waits on it.
    pub map_window: usize,
    /// Broker mode's front (`--broker nats://…`): calls go through the NATS JetStream server
    /// at this URL to `berth worker`s instead of to containers of this process (broker.rs).
    pub broker: Option<String>,
    /// Call scheduled functions at their ticks (schedule.rs): `berth serve` does, `berth run`
    /// and workers do not.
    pub schedules: bool,
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
            min_body_rate: 500,
            result_ttl: Duration::from_secs(3600),
            map_window: 16 * 1024,
            broker: None,
            schedules: false,
        }
    }
}

/// Room for the protobuf around a value of the cap's size (ids, error text, field tags).
pub const FRAMING_BYTES: usize = 64 << 10;

/// The forced stop of a control plane (see [`ControlPlane::killer`]).
#[derive(Clone)]
pub struct Killer(crate::driver::Commands);

impl Killer {
    /// Running inputs are aborted and every pending one is answered `InputCancelledError`, no
    /// more exit hooks run, every container is told to stop; a `shutdown` under way returns
    /// instead of waiting for inputs no container will run.
    pub fn kill(&self) {
        let _ = self.0.send(Command::Kill);
    }
}

/// How many threads the control plane's runtime gets: `BERTH_SERVE_THREADS` (`setting`) when
/// set, else one on a machine of two cores or fewer (`cores`) and two on a larger one. On two
/// cores the control plane shares them with its containers and the callers: a second thread of
/// its own only adds wake-ups between the two (README "Performance": HTTP routes 10-25% more
/// requests per second with one). Err names the fix for a setting that is not a count.
pub fn serve_threads(setting: Option<&str>, cores: usize) -> Result<usize, String> {
    match setting.map(str::trim) {
        None | Some("") => Ok(if cores <= 2 { 1 } else { 2 }),
        Some(v) => match v.parse::<usize>() {
            Ok(n @ 1..=64) => Ok(n),
            _ => Err(format!(
                "BERTH_SERVE_THREADS={v}: not a thread count; set it to 1 to 64 (the control plane's threads), or unset it"
            )),
        },
    }
}

/// A running control plane.
pub struct ControlPlane {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stop_server: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    http: Option<crate::http::Ingress>,
    counters: Arc<Counters>,
    /// What in-process clients watch: false once calls are no longer taken, closed when this
    /// control plane is dropped.
    serving: watch::Sender<bool>,
    runtime: tokio::runtime::Handle,
}

impl ControlPlane {
    /// Binds, starts the scheduler and serves until [`shutdown`](Self::shutdown).
    pub async fn start(mut registry: Registry, spawner: impl Spawner, opts: ServeOptions) -> io::Result<Self> {
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
        if opts.min_body_rate == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "min_body_rate is 0, which lets a body come as slowly as it likes: give it bytes a second, e.g. 500",
            ));
        }
        for f in &registry.functions {
            f.spec.validate().map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        }
        let front = match &opts.broker {
            Some(url) => Some(crate::broker::Front::start(url, &mut registry, opts.result_ttl).await?),
            None => None,
        };
        let listener = bind(opts.addr, "gRPC", "--grpc-port").await?;
        let local_addr = listener.local_addr()?;
        let http_listener = match opts.http_addr {
            Some(addr) => Some(bind(addr, "HTTP", "--http-port").await?),
            None => None,
        };
        // Containers reach dicts and queues here in one hop from their event loop (datasock.rs).
        let data_socket = crate::datasock::listen(local_addr.port());
        if let Some((name, _)) = &data_socket {
            spawner.data_socket(name);
        }
        let (commands, source) = crate::driver::Commands::new();
        let count = registry.functions.len();
        let largest_batch = registry
            .functions
            .iter()
            .flat_map(|f| &f.spec.methods)
            .filter_map(|m| m.batching.map(|b| b.max_batch_size as usize))
            .max()
            .unwrap_or(1);
        let shared = Arc::new(Shared {
            catalog: std::sync::RwLock::new(Arc::new(Catalog::new(registry))),
            state: Mutex::new(State { next_pool: 1, ..State::default() }),
            commands,
            driver: crate::driver::Driver::default(),
            spawner: Box::new(spawner),
            endpoint: Mutex::new(format!("http://{local_addr}")),
            max_message_bytes: opts.max_message_bytes,
            result_ttl: opts.result_ttl,
            map_window: opts.map_window,
            front,
            closing: watch::channel(false).0,
            dicts: Default::default(),
            queues: Default::default(),
            dict_broker: std::sync::OnceLock::new(),
            deploys: std::sync::OnceLock::new(),
        });
        if let Some(front) = &shared.front {
            // Its dicts are the NATS server's, shared with the workers (dicts.rs).
            let _ = shared.dict_broker.set(front.broker().clone());
        }
        crate::driver::start(&shared, source);
        // Pools that keep containers warm start now, not with their first call (as in Modal).
        shared.warm(&(0..count).collect::<Vec<_>>());
        tokio::spawn(crate::plane::housekeeping(Arc::downgrade(&shared)));
        if let Some((_, listener)) = data_socket {
            tokio::spawn(crate::datasock::serve(listener, Arc::downgrade(&shared)));
        }
        if opts.schedules {
            tokio::spawn(crate::schedule::run(Arc::downgrade(&shared), shared.closing.subscribe()));
        }

        let token = opts.token.clone();
        let auth = move |req: Request<()>| check_token(token.as_deref(), &req).map(|()| req);
        let cap = opts.max_message_bytes;
        // One cap, every hop: a caller's request, each input's arguments, each result. Answers
        // carry a result of up to the cap plus framing; containers split their outputs at the
        // cap and refuse larger results themselves, but one execution's output is one message:
        // a @batched one carries up to maxBatchSize results of up to the cap each (of the
        // definitions served at the start: see `replace_apps`).
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
        let counters = Arc::new(Counters::default());
        let router = tonic::transport::Server::builder()
            .layer(tower::util::MapResponseLayer::new(oversized_is_resource_exhausted::<tonic::body::Body>))
            .layer(CountRequestsLayer(counters.clone()))
            .add_service(InterceptedService::new(functions, auth.clone()))
            .add_service(InterceptedService::new(
                berth_proto::v1::dicts_server::DictsServer::new(crate::dicts::DictsSvc { shared: shared.clone() })
                    .max_decoding_message_size(cap + FRAMING_BYTES)
                    .max_encoding_message_size(usize::MAX),
                auth.clone(),
            ))
            .add_service(InterceptedService::new(
                berth_proto::v1::queues_server::QueuesServer::new(crate::queues::QueuesSvc { shared: shared.clone() })
                    .max_decoding_message_size(cap + FRAMING_BYTES)
                    .max_encoding_message_size(usize::MAX),
                auth,
            ))
            .add_service(containers)
            .add_service(health_svc)
            .add_service(crate::http::admin::AdminService { shared: shared.clone(), token: opts.token.clone() })
            .add_service(reflection)
            .add_service(reflection_v1alpha);
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
                tracing::error!("berth: control plane stopped: {e}");
            }
        });
        let http = match http_listener {
            Some(listener) => Some(crate::http::Ingress::start(
                listener.local_addr()?,
                FunctionsSvc { shared: shared.clone() },
                opts.token.clone(),
                crate::http::BodyLimits {
                    max: opts.max_message_bytes,
                    timeout: opts.body_timeout,
                    min_rate: opts.min_body_rate,
                },
                // A cap of its own: a flood of HTTP callers must not lock containers out of
                // attaching over gRPC, nor the other way round.
                Listener::new(listener, "HTTP", Framing::Http1, limits, counters.clone()),
                counters.clone(),
            )),
            None => None,
        };
        let (serving, _) = watch::channel(true);
        let runtime = tokio::runtime::Handle::current();
        Ok(Self { shared, local_addr, stop_server: Some(stop_server), server, http, counters, serving, runtime })
    }

    /// What the listeners have dropped so far: connections that never handshook, sat
    /// idle, or came over the cap, and HTTP bodies that stalled.
    pub fn counters(&self) -> ConnCounters {
        self.counters.snapshot()
    }

    /// A client that calls this control plane directly, without gRPC: for callers in the
    /// process that runs it. Requests get the same checks and answers as over gRPC (but no
    /// token is asked); once the control plane has stopped, calls fail UNAVAILABLE.
    pub fn client(&self) -> Client {
        Client::in_process(InProcess {
            shared: Arc::downgrade(&self.shared),
            serving: self.serving.subscribe(),
            max_message_bytes: self.shared.max_message_bytes,
            runtime: self.runtime.clone(),
        })
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where the HTTP ingress listens, if [`ServeOptions::http_addr`] asked for one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.local_addr)
    }

    /// Replaces apps `apps` with `registry`'s functions while serving (`berth serve` reloading
    /// a saved edit; a redeploy): calls from now on go to new pools with the new definitions
    /// (and web endpoints follow the new routes); the pools of the replaced definitions finish
    /// the inputs they accepted, then drain (exit hooks run) and stop. Other apps are untouched.
    /// A @batched method's results are still read under the message cap of the largest batch
    /// served at the start.
    pub fn replace_apps(&self, apps: &[String], registry: Registry) -> io::Result<Replaced> {
        self.shared.replace_apps(apps, registry)
    }

    /// The deploys asked of this server (`berth deploy app.ts`, http/admin.rs), for the process
    /// that serves it to carry out (load the file, [`replace_apps`](Self::replace_apps)) and
    /// answer. Only the first call gets them; until then, and without it, the server answers a
    /// deploy that it takes none.
    pub fn deploys(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<crate::DeployAsk>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        self.shared.deploys.set(tx).ok().map(|()| rx)
    }

    /// What stops this control plane at once, usable while [`shutdown`](Self::shutdown) runs.
    pub fn killer(&self) -> Killer {
        Killer(self.shared.commands.clone())
    }

    /// Stops taking calls, lets accepted inputs finish, runs exit hooks, then stops serving.
    pub async fn shutdown(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.commands.send(Command::Shutdown(Some(tx))) {
            let _ = rx.await;
        }
        // In-process callers are refused from here on, as gRPC callers are once the listener
        // stops.
        self.serving.send_replace(false);
        self.shared.closing.send_replace(true);
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

#[cfg(test)]
mod tests {
    use super::serve_threads;

    #[test]
    fn one_thread_on_two_cores_two_on_more_and_the_setting_wins() {
        assert_eq!(serve_threads(None, 1), Ok(1));
        assert_eq!(serve_threads(None, 2), Ok(1));
        assert_eq!(serve_threads(None, 16), Ok(2));
        assert_eq!(serve_threads(Some(""), 16), Ok(2));
        assert_eq!(serve_threads(Some(" 4 "), 2), Ok(4));
        for bad in ["0", "-1", "two", "65", "1.5"] {
            let e = serve_threads(Some(bad), 2).unwrap_err();
            assert!(e.contains(&format!("BERTH_SERVE_THREADS={bad}")) && e.contains("1 to 64"), "{e}");
        }
    }
}
