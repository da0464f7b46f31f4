//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`): the server's decoders
//! and its handling of container messages, without sockets. Not an API; nothing else enables
//! the feature.
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use berth_core::{Command, ContainerId, MethodSpec, PoolSpec, Scheduler};
use berth_proto::v1::{self as pb, functions_server::Functions, ControlMessage};
use tokio::sync::mpsc;

use crate::containers::{attach_link, detached, handle_container_message};
use crate::functions::FunctionsSvc;
use crate::plane::{Host, Shared, State};
use crate::{FunctionDef, Registry, Spawner};

/// What the HTTP ingress makes of a request body: the CBOR arguments and params, or the
/// message of its 400 answer.
pub fn parse_body(body: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    crate::http::json::parse_body(body)
}

/// What the HTTP ingress makes of a function's result: the JSON body of its 200 answer, or
/// None where it answers "the function's result is not valid CBOR".
pub fn result_json(cbor: &[u8]) -> Option<Vec<u8>> {
    let v = ciborium::from_reader::<ciborium::Value, _>(cbor).ok()?;
    Some(serde_json::to_vec(&crate::http::json::cbor_to_json(&v)).unwrap_or_default())
}

type Started = Arc<Mutex<Vec<(ContainerId, String)>>>;

/// Starts nothing; remembers the containers the scheduler asked for and their tokens.
struct NoProcesses(Started);

impl Spawner for NoProcesses {
    fn spawn(
        &self,
        _def: &FunctionDef,
        _params: &[u8],
        container: ContainerId,
        token: &str,
        _endpoint: &str,
        _exited: crate::ExitReporter,
    ) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push((container, token.to_string()));
    }
    fn stop(&self, _container: ContainerId) {}
}

/// A control plane serving one function (`app.f`, `max_inputs` slots per container, up to
/// two containers) whose scheduler runs a turn after each step, as its task would.
pub struct Plane {
    shared: Arc<Shared>,
    svc: FunctionsSvc,
    scheduler: Scheduler<Host, Host>,
    commands: mpsc::UnboundedReceiver<Command>,
    started: Started,
    /// What attached containers were sent.
    streams: Vec<mpsc::UnboundedReceiver<Result<ControlMessage, tonic::Status>>>,
}

impl Plane {
    pub fn new(max_inputs: u32) -> Self {
        Self::with_min_containers(max_inputs, 0)
    }

    /// A plane whose function keeps `min` containers (at most 2) once its pool exists.
    pub fn with_min_containers(max_inputs: u32, min: u32) -> Self {
        let mut spec = PoolSpec::new("f", vec![MethodSpec::default()]);
        spec.max_inputs = max_inputs.max(1);
        spec.target_inputs = spec.max_inputs;
        spec.max_containers = 2;
        spec.min_containers = min.min(2);
        let registry = Registry { functions: vec![FunctionDef::function("app", "f", spec)] };
        let started = Started::default();
        // Its turns are the harness's own (`turn`): no driver runs them.
        let (tx, commands) = crate::driver::Commands::new();
        let cap = 1 << 20;
        let shared = Arc::new(Shared {
            catalog: std::sync::RwLock::new(Arc::new(crate::catalog::Catalog::new(registry))),
            state: Mutex::new(State { next_pool: 1, ..State::default() }),
            commands: tx,
            driver: crate::driver::Driver::default(),
            spawner: Box::new(NoProcesses(started.clone())),
            endpoint: Mutex::new("http://127.0.0.1:1".into()),
            max_message_bytes: cap,
            result_ttl: std::time::Duration::from_secs(3600),
            map_window: 16 * 1024,
            front: None,
            closing: tokio::sync::watch::channel(false).0,
            dicts: Default::default(),
            queues: Default::default(),
            dict_broker: std::sync::OnceLock::new(),
            deploys: std::sync::OnceLock::new(),
        });
        let scheduler = Scheduler::new(Host(shared.clone()), Host(shared.clone()));
        let svc = FunctionsSvc::new(shared.clone());
        Self { shared, svc, scheduler, commands, started, streams: Vec::new() }
    }

    /// A scheduler turn: every command sent so far, then `tick`.
    fn turn(&mut self) {
        while let Ok(cmd) = self.commands.try_recv() {
            self.scheduler.handle(cmd);
        }
        self.scheduler.tick();
        for s in &mut self.streams {
            while s.try_recv().is_ok() {}
        }
    }

    /// Spawn (the gRPC method) of `app.f` with these arguments; false if it was refused.
    pub fn spawn(&mut self, args: Vec<u8>) -> bool {
        let req = pb::InvokeRequest {
            function: Some(pb::FunctionRef { app: "app".into(), function: "f".into(), ..Default::default() }),
            args,
        };
        let fut = self.svc.spawn(tonic::Request::new(req));
        // Spawn never waits: it resolves, submits and answers in its first poll.
        let ok = match std::pin::pin!(fut).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r.is_ok(),
            Poll::Pending => false,
        };
        self.turn();
        ok
    }

    /// Containers the scheduler started that have not attached yet, with their tokens.
    pub fn started(&self) -> Vec<(ContainerId, String)> {
        let links = &self.shared.lock().links;
        let started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        started.iter().filter(|(c, _)| links.get(c).is_some_and(|l| l.tx.is_none())).cloned().collect()
    }

    /// The Attach handler's hello; false if it refused it.
    pub fn hello(&mut self, cid: ContainerId, token: &str) -> bool {
        let (out, rx) = mpsc::unbounded_channel();
        let ok = attach_link(&self.shared, cid, token, out).is_ok();
        if ok {
            self.streams.push(rx);
        }
        self.turn();
        ok
    }

    /// One message on container `cid`'s Attach stream, as the handler takes it.
    pub fn message(&mut self, cid: ContainerId, msg: pb::ContainerMessage) {
        handle_container_message(&self.shared, cid, msg.msg);
        self.turn();
    }

    /// Container `cid`'s Attach stream ends (or brought a frame that does not decode).
    pub fn detach(&mut self, cid: ContainerId) {
        detached(&self.shared, cid);
        self.turn();
    }

    /// Executions in flight: (exec id, container, inputs).
    pub fn execs(&self) -> Vec<(u64, ContainerId, usize)> {
        let mut v: Vec<_> = self.shared.lock().execs.iter().map(|(&e, (c, i))| (e, *c, i.len())).collect();
        v.sort_unstable();
        v
    }

    /// Credits each attached container has left.
    pub fn credits(&self) -> Vec<(ContainerId, u32)> {
        let mut v: Vec<_> = self.shared.lock().links.iter().map(|(&c, l)| (c, l.credits)).collect();
        v.sort_unstable();
        v
    }
}
