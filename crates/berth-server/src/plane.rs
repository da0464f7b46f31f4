//! The control plane's state, shared by the gRPC handlers and the scheduler's host side.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use berth_core::{
    failure, AbortReason, Command, ContainerId, Exec, ExecId, IdMap, InputId, Invoker, Outcome, Phase, PoolId,
    PoolSpec, ResultSink,
};
use berth_proto::v1::{self as pb, control_message, result::Outcome as PbOutcome, ControlMessage};
use prost::Message;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::catalog::Catalog;

/// One callable the app serves: an `app.function`, or a class (whose methods share a pool
/// per parameter set).
#[derive(Debug, Clone)]
pub struct FunctionDef {
    pub app: String,
    pub name: String,
    /// Method names for a class, in the order the container's method table uses; for a
    /// function, its own name alone.
    pub methods: Vec<String>,
    pub is_class: bool,
    /// The pool settings; its `hooks.spawn` is forced on (containers are processes).
    pub spec: PoolSpec,
    /// How many arguments each method takes, in `methods` order; a call outside the range is
    /// refused before it reaches a container. A method without an entry takes any number.
    pub arity: Vec<Arity>,
    /// A class's `@parameter()` fields, in declaration order (none for a function). Callers'
    /// parameters are checked against them before any container starts, and each pool runs
    /// with every parameter set (defaults filled in, in this order): a call that passes the
    /// defaults shares the pool of one that passes none. A class whose parameters all have a
    /// default has its pool started with the server, so `minContainers` are warm before the
    /// first call, as in Modal.
    pub params: Vec<ParamSpec>,
    /// A class's members that callers cannot call (lifecycle hooks, parameters, undecorated
    /// methods), each with what it is, e.g. `("load", "an @enter() hook: ...")`.
    pub not_callable: Vec<(String, String)>,
    /// Which methods are generators (`async function*`, `async *`), in `methods` order: they
    /// are called with InvokeStream only. A method without an entry is none.
    pub generators: Vec<bool>,
    /// Its web endpoints (`@webEndpoint`, `app.function({ webEndpoint })`): which methods are
    /// served at a URL of their own, and how (crates/berth-server/src/web.rs).
    pub web: Vec<WebSpec>,
    /// A function's `schedule`: `berth serve` calls it at each tick (schedule.rs).
    pub schedule: Option<crate::schedule::Schedule>,
    /// Its app's tags (`new App(name, { tags })`), sorted by key: `berth app list` shows them.
    pub tags: Vec<(String, String)>,
}

/// A web endpoint: method `index` of a [`FunctionDef`], served at `/{app}/{label}` (the label
/// defaults to the function's name, or `Class/method`) for HTTP method `method`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebSpec {
    pub index: u32,
    /// Upper case: `GET`, `POST`, `PUT`, `PATCH`, `DELETE`.
    pub method: String,
    pub label: Option<String>,
    /// Demand the server's token (auth.rs's rule); an endpoint without it is public, even on a
    /// server started with a token.
    pub requires_auth: bool,
    /// The function declares a second parameter: it gets the request's head and body.
    pub takes_request: bool,
    /// A web app (`@fetchApp`, `@webServer`, `@nodeApp`: the decorator, for messages) rather
    /// than an endpoint: every request under its path, with any method, goes to it, and it
    /// answers as a stream, a head (status, headers) and then the body's chunks (web.rs).
    pub app: Option<String>,
}

impl FunctionDef {
    /// A plain function of app `app`: one method, named as the function; no arguments checked,
    /// no class parameters, no generator, no web member.
    pub fn function(app: &str, name: &str, spec: PoolSpec) -> Self {
        Self {
            app: app.into(),
            name: name.into(),
            methods: vec![name.into()],
            is_class: false,
            spec,
            arity: Vec::new(),
            params: Vec::new(),
            not_callable: Vec::new(),
            generators: Vec::new(),
            web: Vec::new(),
            schedule: None,
            tags: Vec::new(),
        }
    }

    /// How messages name method `method` of it: `name`, or `Class.method` for a class.
    pub(crate) fn label(&self, method: u32) -> String {
        match self.methods.get(method as usize) {
            Some(m) if self.is_class => format!("{}.{m}", self.name),
            _ => self.name.clone(),
        }
    }

    /// Whether method `method` is a generator.
    pub(crate) fn is_generator(&self, method: u32) -> bool {
        self.generators.get(method as usize).copied().unwrap_or(false)
    }

    /// The web path of `method`, `/{app}/{label}` (the label defaults to the function's name,
    /// or `Class/method`).
    pub(crate) fn web_path(&self, w: &WebSpec) -> Option<String> {
        let name = self.methods.get(w.index as usize)?;
        Some(match (&w.label, self.is_class) {
            (Some(label), _) => format!("/{}/{label}", self.app),
            (None, true) => format!("/{}/{}/{name}", self.app, self.name),
            (None, false) => format!("/{}/{}", self.app, self.name),
        })
    }

    /// For a web app member (`@fetchApp`, ...): its decorator and path.
    pub(crate) fn web_app(&self, method: u32) -> Option<(&str, String)> {
        let w = self.web.iter().find(|w| w.index == method)?;
        Some((w.app.as_deref()?, self.web_path(w)?))
    }

    /// What a caller naming `member` of this class is told when it is no method.
    pub(crate) fn not_a_method(&self, member: &str) -> Option<String> {
        let (name, what) = self.not_callable.iter().find(|(n, _)| n == member)?;
        Some(format!(
            "{class}.{name}: '{name}' is {what}; callers call methods only. Callable methods of {class}: {}.",
            self.methods.join(", "),
            class = self.name,
        ))
    }
}

/// A class parameter: an `@parameter()` field (src/define/decorators.ts `getParamSpecs`).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub kind: ParamKind,
    /// The CBOR of its default value; `None` for a required parameter.
    pub default: Option<Vec<u8>>,
}

/// The type of a parameter, from its default value (`Any` for a required one: any of the four).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamKind {
    String,
    Integer,
    Boolean,
    Bytes,
    Any,
}

/// The argument counts a method accepts: from its parameters without a default (`min`) to all
/// of them (`max`; `None` with a rest parameter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arity {
    pub min: u32,
    pub max: Option<u32>,
}

impl Arity {
    /// `None` when `n` arguments are fine, else what the method takes, e.g. "exactly 1 argument".
    pub fn refuses(&self, n: usize) -> Option<String> {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n >= self.min && self.max.is_none_or(|max| n <= max) {
            return None;
        }
        let s = |k: u32| if k == 1 { "" } else { "s" };
        Some(match self.max {
            Some(max) if max == self.min => format!("exactly {max} argument{}", s(max)),
            Some(max) if self.min == 0 => format!("at most {max} argument{}", s(max)),
            Some(max) => format!("{} to {max} arguments", self.min),
            None => format!("at least {} argument{}", self.min, s(self.min)),
        })
    }
}

/// What the app serves.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub functions: Vec<FunctionDef>,
}

/// Tells the control plane that a container's process ended without being stopped (it
/// crashed, or was killed, possibly before it ever attached). Call it at most once.
pub struct ExitReporter(Box<dyn Fn(String) + Send + Sync>);

impl ExitReporter {
    /// A reporter that calls `report`; for spawners driven without a control plane (tests).
    pub fn new(report: impl Fn(String) + Send + Sync + 'static) -> Self {
        Self(Box::new(report))
    }

    /// `why` says how the process ended, e.g. "exited with signal 9".
    pub fn exited(&self, why: String) {
        (self.0)(why)
    }
}

/// Starts and stops container processes. `spawn` returns at once; the process attaches
/// later with `Hello { container_id, token }` on `endpoint`; if it ends unasked, the spawner
/// says so through `exited`.
pub trait Spawner: Send + Sync + 'static {
    fn spawn(
        &self,
        def: &FunctionDef,
        params: &[u8],
        container: ContainerId,
        token: &str,
        endpoint: &str,
        exited: ExitReporter,
    );
    /// The control plane's data socket (datasock.rs), told before the first `spawn`: containers
    /// that can reach it (processes of this machine) get its name as `BERTH_DATA_SOCKET`.
    fn data_socket(&self, _name: &str) {}
    /// The container is done (stopped, failed, or abandoned): make sure its process ends.
    fn stop(&self, container: ContainerId);
    /// The container stopped answering: end its process now (it may be stopped or blocked, so
    /// it cannot be asked).
    fn kill(&self, container: ContainerId) {
        self.stop(container)
    }
    /// The process id of each live container, for `GET /metrics` (metrics.rs); none when its
    /// containers are not processes of this machine.
    fn processes(&self) -> Vec<(ContainerId, u32)> {
        Vec::new()
    }
    /// How long each live container process has run, for `berth container list` (admin.rs).
    fn uptimes(&self) -> Vec<(ContainerId, Duration)> {
        Vec::new()
    }
}

pub(crate) fn error(name: &str, message: impl Into<String>) -> pb::Result {
    pb::Result {
        outcome: Some(PbOutcome::Error(pb::Error { name: name.into(), message: message.into(), stack: String::new() })),
    }
}

/// A failure berth reports itself (crates/berth-core/src/failure.rs words them all).
pub(crate) fn failed(f: failure::Failure) -> pb::Result {
    error(f.name, f.message)
}

/// The message of a call refused because its function's queue was full (maxPendingInputs,
/// `failure::queue_full`): Invoke answers it as RESOURCE_EXHAUSTED, HTTP as 429.
pub(crate) fn queue_full(result: &pb::Result) -> Option<&str> {
    match &result.outcome {
        Some(PbOutcome::Error(e)) if e.name == failure::QUEUE_FULL => Some(&e.message),
        _ => None,
    }
}

pub(crate) struct PoolEntry {
    pub def: usize,
    pub params: Vec<u8>,
}

pub(crate) struct Link {
    /// The function it serves (an index into the registry).
    pub def: Option<usize>,
    pub token: String,
    /// Set once the container has attached.
    pub tx: Option<mpsc::UnboundedSender<Result<ControlMessage, tonic::Status>>>,
    /// Messages for a container that has not attached yet, or has no credit left.
    pub queued: Vec<ControlMessage>,
    pub credits: u32,
    /// Executions of this scheduler turn, sent as one batch when the turn ends.
    pub batch: Vec<pb::Execute>,
    /// The argument bytes in `batch`: a turn leaves in messages of at most the message cap.
    pub batch_bytes: usize,
    pub max_message_bytes: usize,
    /// When the container last sent anything (its event loop sends a heartbeat every second).
    pub last_heard: Instant,
    /// Inputs aborted for their timeout that it has not answered yet, and since when.
    pub overdue: Vec<InputId>,
    pub overdue_since: Option<Instant>,
    /// Its web apps' servers, by method (the `AppServer` messages it sent): their requests go
    /// there, not to it as executions (proxy.rs).
    pub servers: Vec<(u32, Arc<crate::proxy::AppServer>)>,
    /// The call of the last input sent (containers.proto `ExecInput`): the next input of the
    /// same call goes without its function call id, and of the same trace without its trace.
    pub last_call: Option<Arc<CallRef>>,
}

impl Link {
    /// The server web app member `method` of this container listens on.
    pub fn server(&self, method: u32) -> Option<Arc<crate::proxy::AppServer>> {
        self.servers.iter().find(|(m, _)| *m == method).map(|(_, s)| Arc::clone(s))
    }

    fn send(&mut self, msg: ControlMessage) {
        if let Some(control_message::Msg::Execute(e)) = msg.msg {
            self.execute(e);
            return;
        }
        // Executions of this turn go first: the other messages may be about them.
        self.send_batch();
        match &self.tx {
            Some(tx) if self.queued.is_empty() => {
                let _ = tx.send(Ok(msg));
            }
            _ => self.queued.push(msg),
        }
    }

    /// An execution joins this turn's batch if a credit allows, else waits for one.
    fn execute(&mut self, e: pb::Execute) {
        if self.tx.is_some() && self.credits > 0 && self.queued.is_empty() {
            self.credits -= 1;
            self.push(e);
        } else {
            self.queued.push(ControlMessage { msg: Some(control_message::Msg::Execute(e)) });
        }
    }

    /// Adds an execution to this turn's message, sending the message first if the execution
    /// would take it over the cap (the container decodes what one execution needs, however
    /// large: a @batched one carries many inputs).
    fn push(&mut self, e: pb::Execute) {
        let size = e.encoded_len();
        if !self.batch.is_empty() && self.batch_bytes + size > self.max_message_bytes {
            self.send_batch();
        }
        self.batch_bytes += size;
        self.batch.push(e);
    }

    /// Ends the turn: this turn's executions leave as one message.
    pub fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        self.batch_bytes = 0;
        let executions = std::mem::take(&mut self.batch);
        if let Some(tx) = &self.tx {
            let msg = if executions.len() == 1 {
                control_message::Msg::Execute(executions.into_iter().next().unwrap_or_default())
            } else {
                control_message::Msg::ExecuteBatch(pb::ExecuteBatch { executions })
            };
            let _ = tx.send(Ok(ControlMessage { msg: Some(msg) }));
        }
    }

    /// Sends what waited for the attach or for credit, in order, as far as credit allows.
    pub fn flush(&mut self) {
        let queued = std::mem::take(&mut self.queued);
        let mut rest = Vec::new();
        for msg in queued {
            if !rest.is_empty() {
                rest.push(msg);
                continue;
            }
            match msg.msg {
                Some(control_message::Msg::Execute(e)) if self.tx.is_some() && self.credits > 0 => {
                    self.credits -= 1;
                    self.push(e);
                }
                Some(control_message::Msg::Execute(_)) => rest.push(msg),
                _ if self.tx.is_some() => {
                    self.send_batch();
                    if let Some(tx) = &self.tx {
                        let _ = tx.send(Ok(msg));
                    }
                }
                _ => rest.push(msg),
            }
        }
        self.queued = rest;
        self.send_batch();
    }
}

/// A spawned call's result, for GetResult.
pub(crate) struct CallSlot {
    pub input: InputId,
    pub result: Option<pb::Result>,
    pub ready: Arc<Notify>,
}

/// Where an input's result goes.
pub(crate) enum Waiter {
    /// Spawn: only the call slot.
    None,
    Call(oneshot::Sender<pb::Result>),
    /// One input of a Map stream; the stream ends when every input's sender is gone.
    Map(mpsc::UnboundedSender<Result<pb::MapResponse, tonic::Status>>, u64, Arc<MapCall>),
    /// A generator's InvokeStream: its items go here as they come (`containers.rs`), and its
    /// result ends the stream, with an error item if it failed.
    Stream(mpsc::UnboundedSender<Result<pb::StreamItem, tonic::Status>>),
    /// A web endpoint's request (web.rs): as a stream, whose items are a streamed Response's
    /// head and chunks, and whose result goes on it too, a value or an error.
    Web(mpsc::UnboundedSender<Result<pb::StreamItem, tonic::Status>>),
    /// A request for a web app with a server of its own (proxy.rs): the control plane sends it
    /// to that server when the input runs; its result reaches the handler only if the app's
    /// answer never began (a failure, the request refused).
    Proxy(Arc<crate::proxy::Exchange>),
    /// A broker worker's input (broker.rs): the result with the scheduler's outcome, which
    /// decides how its lease is settled; `None` when the input was answered otherwise.
    Settled(oneshot::Sender<(Option<Outcome>, pb::Result)>),
    /// A broker worker's stream input (a generator's, a web request's; broker.rs `forward`):
    /// its items go to the channel as they come, and its result as `Settled`'s does.
    Forward(
        mpsc::UnboundedSender<Result<pb::StreamItem, tonic::Status>>,
        oneshot::Sender<(Option<Outcome>, pb::Result)>,
    ),
}

impl Waiter {
    /// Hands the input's one result to whoever waits for it.
    pub fn send(self, result: pb::Result) {
        match self {
            Waiter::None => {}
            Waiter::Call(w) => {
                let _ = w.send(result);
            }
            Waiter::Map(out, index, call) => {
                call.finished(&result);
                let _ = out.send(Ok(pb::MapResponse { index, result: Some(result) }));
            }
            Waiter::Stream(out) => {
                if let Some(PbOutcome::Error(e)) = result.outcome {
                    let _ = out.send(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Error(e)) }));
                }
            }
            Waiter::Proxy(exchange) => exchange.settle(result),
            Waiter::Settled(out) | Waiter::Forward(_, out) => {
                let _ = out.send((None, result));
            }
            Waiter::Web(out) => {
                let item = match result.outcome {
                    Some(PbOutcome::Error(e)) => pb::stream_item::Item::Error(e),
                    Some(PbOutcome::Value(v)) => pb::stream_item::Item::Value(v),
                    None => return,
                };
                let _ = out.send(Ok(pb::StreamItem { item: Some(item) }));
            }
        }
    }
}

/// A Map call whose stream is open, for `Cancel` (by its function call id) and for the end of
/// its stream.
#[derive(Default)]
pub(crate) struct MapCall {
    /// Set, under the state lock, once the call is cancelled (by `Cancel`, or because its
    /// caller went away): inputs that arrive later are answered `InputCancelledError` at once.
    cancelled: AtomicBool,
    /// Tells the task reading the Map's requests to stop.
    pub stop: Notify,
    /// How the stream ends once every accepted input is answered: OK, or this status (a
    /// request message the stream could not take).
    pub end: Mutex<Option<tonic::Status>>,
    /// Inputs accepted whose result the caller's stream has not taken yet (queued, running,
    /// or finished and waiting to be sent), and the bytes of the finished ones.
    unanswered: AtomicUsize,
    held_bytes: AtomicUsize,
    /// Rung when the window has room again.
    pub room: Notify,
    /// `ServeOptions::map_window`.
    pub window: usize,
}

/// A Map call also takes no more inputs while its finished, untaken results hold this many bytes.
pub(crate) const MAP_HELD_BYTES: usize = 64 << 20;

impl MapCall {
    pub fn new(window: usize) -> Self {
        Self { window: window.max(1), ..Self::default() }
    }

    pub fn has_room(&self) -> bool {
        self.unanswered.load(Ordering::Acquire) < self.window
            && self.held_bytes.load(Ordering::Acquire) < MAP_HELD_BYTES
    }

    /// How many more inputs the window takes now.
    pub fn room_left(&self) -> usize {
        self.window.saturating_sub(self.unanswered.load(Ordering::Acquire))
    }

    pub fn accepted(&self, n: usize) {
        self.unanswered.fetch_add(n, Ordering::AcqRel);
    }

    /// A result is ready to send: its bytes count until the caller takes it.
    pub fn finished(&self, r: &pb::Result) {
        self.held_bytes.fetch_add(r.encoded_len(), Ordering::AcqRel);
    }

    /// The caller's stream took a result.
    pub fn taken(&self, r: &pb::MapResponse) {
        let bytes = r.result.as_ref().map_or(0, Message::encoded_len);
        let was = self.unanswered.fetch_sub(1, Ordering::AcqRel);
        let held = self.held_bytes.fetch_sub(bytes, Ordering::AcqRel);
        if was == self.window || (held >= MAP_HELD_BYTES && held - bytes < MAP_HELD_BYTES) {
            self.room.notify_one();
        }
    }

    /// Only meaningful under the state lock, which orders it against submissions.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }
}

/// Cancels a Map call: its queued inputs are dropped, its running ones aborted, each
/// answered `InputCancelledError` once (by the scheduler, through [`ResultSink::done`]); inputs
/// that arrive later are answered so at once, and its request reader stops.
pub(crate) fn cancel_map(shared: &Shared, fc: &str, map: &MapCall) {
    let st = shared.lock();
    if map.cancelled.swap(true, Ordering::Relaxed) {
        return;
    }
    // Every input of the call not yet answered is still here (`done` removes it).
    let mut ids: Vec<InputId> = st.inputs.iter().filter(|(_, i)| i.call.fc == fc).map(|(&id, _)| id).collect();
    ids.sort_unstable();
    if !ids.is_empty() {
        // Sent under the lock: after the submissions of these inputs, before any later one.
        let _ = shared.commands.send(Command::Cancel(ids));
    }
    drop(st);
    if let Some(front) = &shared.front {
        // Broker mode: its inputs are the workers' (broker.rs `Front::cancel`).
        front.cancel(fc);
    }
    map.stop.notify_one();
}

pub(crate) struct Input {
    pub args: Vec<u8>,
    /// Its call, shared by the call's inputs (a `.map()` has many).
    pub call: Arc<CallRef>,
    pub waiter: Waiter,
    /// What it calls: failures berth reports name the function or method.
    pub pool: PoolId,
    pub method: u32,
}

/// What the inputs of one call share, kept once per call rather than in each input's record:
/// a pending input costs what its own fields cost and one pointer (README "Tracing").
pub(crate) struct CallRef {
    /// The function call id.
    pub fc: String,
    /// The W3C trace context the call continues (the caller's, or one the call started); its
    /// trace-id and flags go with the inputs' executions.
    pub trace: berth_proto::trace::TraceContext,
}

#[derive(Default)]
pub(crate) struct State {
    pub pools: HashMap<PoolId, PoolEntry>,
    /// By definition, then canonical parameters (looked up without copying them).
    pub pools_by_key: HashMap<usize, HashMap<Vec<u8>, PoolId>>,
    pub next_pool: PoolId,
    pub next_input: InputId,
    pub next_call: u64,
    pub inputs: IdMap<InputId, Input>,
    /// The latest attempt's result a container reported for an input, until the scheduler
    /// decides (one entry per input: the final decision removes it in O(1)).
    pub outputs: IdMap<InputId, (u32, pb::Result)>,
    pub execs: IdMap<ExecId, (ContainerId, Vec<(InputId, u32)>)>,
    pub running: IdMap<InputId, ContainerId>,
    /// Proxied requests running (proxy.rs), by input: what the scheduler's abort ends.
    pub proxied: IdMap<InputId, crate::proxy::Running>,
    pub links: IdMap<ContainerId, Link>,
    pub init_errors: HashMap<ContainerId, pb::Error>,
    /// Start failures already in the server's log, by function, error name and message.
    pub logged_failures: HashSet<(usize, String, String)>,
    pub calls: HashMap<String, CallSlot>,
    /// Map calls with an open stream, by function call id.
    pub maps: HashMap<String, Arc<MapCall>>,
    /// Spawned calls whose result is in, oldest first: what `expire_results` drops.
    pub finished_calls: std::collections::VecDeque<(Instant, String)>,
    /// The last inputs that failed, newest last, at most [`RECENT_ERRORS`] (the dashboard's).
    pub recent_errors: std::collections::VecDeque<RecentError>,
}

impl State {
    /// Container `cid`'s link, if `token` is the one it was started with: how a container
    /// proves who it is, on its Attach stream (containers.rs) and its data socket (datasock.rs).
    pub fn link_of(&mut self, cid: ContainerId, token: &[u8]) -> Option<&mut Link> {
        self.links.get_mut(&cid).filter(|link| crate::auth::same_secret(token, link.token.as_bytes()))
    }

    /// Container `cid`'s output for execution `exec`: its inputs' results wait for the
    /// scheduler's decision. `None` when the execution is not that container's (another
    /// container's, or forgotten when its container was lost); else its inputs.
    pub fn record(&mut self, cid: ContainerId, exec: ExecId, results: Vec<pb::Result>) -> Option<Vec<(InputId, u32)>> {
        // Only the container running an execution answers it: another's output for it (a
        // bug in that container) would take its result and its slot's credit.
        let std::collections::hash_map::Entry::Occupied(e) = self.execs.entry(exec) else {
            return None;
        };
        if e.get().0 != cid {
            return None;
        }
        let (_, inputs) = e.remove();
        let mut results = results.into_iter();
        for &(input, attempt) in &inputs {
            let r =
                results.next().unwrap_or_else(|| error("InvalidError", "the container sent fewer results than inputs"));
            // An input answered already (cancelled while it ran) needs its result no more.
            // A late result of an earlier attempt never replaces a later one's.
            if self.inputs.contains_key(&input) && self.outputs.get(&input).is_none_or(|(a, _)| *a <= attempt) {
                self.outputs.insert(input, (attempt, r));
            }
        }
        Some(inputs)
    }
}

pub(crate) struct Shared {
    /// What is served, swapped whole when an app is replaced (catalog.rs). Taken after the
    /// state lock when both are held.
    pub catalog: RwLock<Arc<Catalog>>,
    pub state: Mutex<State>,
    pub commands: crate::driver::Commands,
    /// Who runs the scheduler's turns (driver.rs).
    pub driver: crate::driver::Driver,
    pub spawner: Box<dyn Spawner>,
    pub endpoint: Mutex<String>,
    /// The one message cap (`ServeOptions::max_message_bytes`): requests, executions, results.
    pub max_message_bytes: usize,
    pub result_ttl: Duration,
    pub map_window: usize,
    /// Broker mode's front (`ServeOptions::broker`): calls go through NATS JetStream (broker.rs).
    pub front: Option<Arc<crate::broker::Front>>,
    /// Set once a graceful stop has run every exit hook: what never ends by itself (a
    /// `berth logs -f` feed, http/admin.rs) ends then, so that the listeners can stop.
    pub closing: tokio::sync::watch::Sender<bool>,
    /// The named dicts the server holds (dicts.rs).
    pub dicts: crate::dicts::Dicts,
    /// The named queues the server holds (queues.rs).
    pub queues: crate::queues::Queues,
    /// Broker mode (a front, a worker): dicts are the NATS server's key-value buckets instead.
    pub dict_broker: std::sync::OnceLock<berth_nats::Broker>,
    /// Where `POST /_berth/deploy` sends its asks (http/admin.rs), once the process serving the
    /// server takes them (`ControlPlane::deploys`); unset, the server takes no deploys.
    pub deploys: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<crate::catalog::DeployAsk>>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What is served now.
    pub fn catalog(&self) -> Arc<Catalog> {
        Arc::clone(&self.catalog.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Definition `def` (an index into the catalog's `defs`), current or replaced.
    pub fn def(&self, def: usize) -> Option<Arc<FunctionDef>> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner()).defs.get(def).cloned()
    }

    /// The pool serving function `def` (an index into the catalog's `defs`) with these
    /// parameters, created on first use; `None` when `def` was replaced since the caller read
    /// the catalog (it reads it again).
    pub fn pool(&self, def: usize, params: &[u8]) -> Option<PoolId> {
        let mut st = self.lock();
        if let Some(&pool) = st.pools_by_key.get(&def).and_then(|by_params| by_params.get(params)) {
            return Some(pool);
        }
        let catalog = self.catalog();
        if !catalog.is_current(def) {
            return None;
        }
        let id = st.next_pool;
        st.next_pool += 1;
        st.pools_by_key.entry(def).or_default().insert(params.to_vec(), id);
        st.pools.insert(id, PoolEntry { def, params: params.to_vec() });
        // Sent under the lock: a replacement retiring this pool comes after it.
        let mut spec = catalog.defs[def].spec.clone();
        spec.hooks.spawn = true;
        let _ = self.commands.send(Command::AddPool(id, spec));
        Some(id)
    }
}

/// At most this many distinct start failures are remembered as logged; past it, each is logged.
const MAX_LOGGED_FAILURES: usize = 1024;

/// A container's start hook (`@build`, `@enter`) threw: callers get it as `InitError` (kept
/// here until the scheduler fails the waiting inputs), and the server's log shows it with its
/// stack, once per distinct failure of a function: a pool restarts failing containers (with
/// backoff) for as long as calls come, and each would say the same.
pub(crate) fn start_failed(shared: &Shared, cid: ContainerId, phase: Phase, error: pb::Error) {
    let mut st = shared.lock();
    let def = st.links.get(&cid).and_then(|l| l.def);
    let function = def.and_then(|d| shared.def(d));
    let key = (def.unwrap_or(usize::MAX), error.name.clone(), error.message.clone());
    let first = !st.logged_failures.contains(&key);
    if first && st.logged_failures.len() < MAX_LOGGED_FAILURES {
        st.logged_failures.insert(key);
    }
    if first {
        let what = function.map_or_else(String::new, |f| format!("{}/{}: ", f.app, f.name));
        let hook = match phase {
            Phase::Build => "a @build() hook",
            Phase::SnapEnter => "an @enter({ snap: true }) hook",
            _ => "an @enter() hook",
        };
        let stack =
            if error.stack.is_empty() { format!("{}: {}", error.name, error.message) } else { error.stack.clone() };
        tracing::error!(
            "berth: {what}{hook} threw in container {cid}; callers get InitError, and containers restart with backoff \
             (up to {} s apart) while calls come. Logged once:\n{stack}",
            berth_core::MAX_RESTART_BACKOFF.as_secs()
        );
    }
    st.init_errors.insert(cid, error);
}

/// The scheduler's host side: turns its decisions into container messages and results.
pub(crate) struct Host(pub Arc<Shared>);

fn phase_to_pb(phase: Phase) -> pb::Phase {
    match phase {
        Phase::Build => pb::Phase::Build,
        Phase::SnapEnter => pb::Phase::SnapEnter,
        Phase::Enter | Phase::Spawn => pb::Phase::Enter,
        Phase::Exit => pb::Phase::Exit,
    }
}

impl Invoker for Host {
    fn run_hook(&mut self, pool: PoolId, container: ContainerId, phase: Phase) {
        let shared = &self.0;
        let mut st = shared.lock();
        if phase == Phase::Spawn {
            let token = format!("{:016x}{:08x}", rand_token(), container);
            let def = st.pools.get(&pool).map(|e| e.def);
            st.links.insert(
                container,
                Link {
                    def,
                    token: token.clone(),
                    tx: None,
                    queued: Vec::new(),
                    credits: 0,
                    batch: Vec::new(),
                    batch_bytes: 0,
                    max_message_bytes: shared.max_message_bytes,
                    last_heard: Instant::now(),
                    overdue: Vec::new(),
                    overdue_since: None,
                    servers: Vec::new(),
                    last_call: None,
                },
            );
            let Some(entry) = st.pools.get(&pool) else {
                return;
            };
            let (def, params) = (entry.def, entry.params.clone());
            drop(st);
            let endpoint = shared.endpoint.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let plane = Arc::downgrade(shared);
            let exited = ExitReporter(Box::new(move |why: String| {
                let Some(shared) = plane.upgrade() else {
                    return;
                };
                let mut st = shared.lock();
                if st.links.remove(&container).is_none() {
                    return;
                }
                st.init_errors.entry(container).or_insert_with(|| pb::Error {
                    name: "ContainerExited".into(),
                    message: format!("the container process {why}"),
                    stack: String::new(),
                });
                drop(st);
                let _ = shared.commands.send(Command::ContainerLost(container));
            }));
            if let Some(def) = shared.def(def) {
                shared.spawner.spawn(&def, &params, container, &token, &endpoint, exited);
            }
            return;
        }
        let msg = ControlMessage {
            msg: Some(control_message::Msg::RunHook(pb::RunHook { phase: phase_to_pb(phase) as i32 })),
        };
        if let Some(link) = st.links.get_mut(&container) {
            link.send(msg);
        }
    }

    fn run(&mut self, exec: &Exec) {
        let mut st = self.0.lock();
        // A request for a web app with a server of its own: its handler sends it there (proxy.rs).
        if let Some(exchange) = crate::proxy::exchange_of(&st, exec) {
            for &(input, _) in &exec.inputs {
                st.running.insert(input, exec.container);
            }
            st.execs.insert(exec.id, (exec.container, exec.inputs.to_vec()));
            crate::proxy::assign(&self.0, &mut st, exec, &exchange);
            return;
        }
        let st = &mut *st;
        let Some(link) = st.links.get_mut(&exec.container) else {
            // Lost meanwhile: the scheduler hears of it (ContainerLost) and runs these again.
            for &(input, _) in &exec.inputs {
                st.running.insert(input, exec.container);
            }
            st.execs.insert(exec.id, (exec.container, exec.inputs.to_vec()));
            return;
        };
        // A link's executions reach its container in the order they are made here (queued
        // ones too): an input of the previous input's call goes without its function call id,
        // and of its trace without the trace (containers.proto `ExecInput`).
        let mut inputs = Vec::with_capacity(exec.inputs.len());
        for &(input, attempt) in &exec.inputs {
            let mut e = pb::ExecInput { input_id: input, attempt, ..Default::default() };
            if let Some(i) = st.inputs.get(&input) {
                e.args = i.args.clone();
                match &link.last_call {
                    Some(last) if Arc::ptr_eq(last, &i.call) => {}
                    last => {
                        let call = &i.call;
                        if last.as_ref().is_none_or(|l| l.fc != call.fc) {
                            e.function_call_id = call.fc.clone();
                        }
                        if last.as_ref().is_none_or(|l| {
                            l.trace.trace_id != call.trace.trace_id || l.trace.flags != call.trace.flags
                        }) {
                            (e.trace_id_high, e.trace_id_low) = call.trace.trace_id_halves();
                            e.trace_flags = u32::from(call.trace.flags);
                        }
                        link.last_call = Some(Arc::clone(call));
                    }
                }
            }
            inputs.push(e);
        }
        link.execute(pb::Execute { exec_id: exec.id, method: exec.method, inputs });
        for &(input, _) in &exec.inputs {
            st.running.insert(input, exec.container);
        }
        st.execs.insert(exec.id, (exec.container, exec.inputs.to_vec()));
    }

    fn flush(&mut self) {
        let mut st = self.0.lock();
        for link in st.links.values_mut() {
            link.send_batch();
        }
    }

    fn abort(&mut self, input: InputId, attempt: u32, reason: AbortReason) {
        let mut st = self.0.lock();
        // A proxied request's exchange is the plane's own to end (proxy.rs).
        if crate::proxy::abort(&self.0, &mut st, input, attempt) {
            return;
        }
        let Some(&cid) = st.running.get(&input) else {
            return;
        };
        let timeout = reason == AbortReason::Timeout;
        let reason = match reason {
            AbortReason::Timeout => "timeout",
            AbortReason::Cancelled => "cancelled",
            AbortReason::Rescheduled => "rescheduled",
        };
        let msg = ControlMessage {
            msg: Some(control_message::Msg::Abort(pb::Abort { input_id: input, attempt, reason: reason.into() })),
        };
        if let Some(link) = st.links.get_mut(&cid) {
            link.send(msg);
            if timeout {
                link.overdue.push(input);
                link.overdue_since.get_or_insert_with(Instant::now);
            }
        }
    }

    fn hook_abandoned(&mut self, pool: PoolId, container: ContainerId, phase: Phase) {
        let mut st = self.0.lock();
        let def = st.pools.get(&pool).and_then(|p| self.0.def(p.def));
        let f = match def {
            Some(d) => failure::hook_abandoned(&d.name, container, phase, failure::hook_bound(&d.spec, phase)),
            None => failure::hook_abandoned("a function", container, phase, Duration::ZERO),
        };
        tracing::warn!("berth: {}", f.message);
        if phase != Phase::Exit {
            st.init_errors.entry(container).or_insert_with(|| pb::Error {
                name: f.name.into(),
                message: f.message,
                stack: String::new(),
            });
        }
    }

    fn replaced(&mut self, pool: PoolId, container: ContainerId, input: InputId) {
        let st = self.0.lock();
        let name = st.pools.get(&pool).and_then(|p| self.0.def(p.def)).map(|d| d.name.clone());
        drop(st);
        tracing::warn!("{}", failure::replaced(name.as_deref().unwrap_or("a function"), container, input));
    }

    fn container_stopped(&mut self, _pool: PoolId, container: ContainerId) {
        let mut st = self.0.lock();
        // Executions it never answered (it died, or hung) will not be answered now.
        st.execs.retain(|_, (c, _)| *c != container);
        let link = st.links.remove(&container);
        drop(st);
        if let Some(Link { tx: Some(tx), .. }) = link {
            let _ = tx.send(Ok(ControlMessage { msg: Some(control_message::Msg::Stop(pb::Stop {})) }));
        }
        self.0.spawner.stop(container);
    }
}

impl ResultSink for Host {
    fn done(&mut self, input: InputId, attempt: u32, outcome: Outcome) {
        let mut st = self.0.lock();
        st.running.remove(&input);
        // Whatever attempt reported last goes; only this attempt's result counts.
        let output = st.outputs.remove(&input).filter(|(a, _)| *a == attempt).map(|(_, r)| r);
        let Some(rec) = st.inputs.remove(&input) else {
            return;
        };
        // Only a failure berth words itself needs the definition.
        let def = || st.pools.get(&rec.pool).and_then(|p| self.0.def(p.def));
        let result = match (outcome, output) {
            (Outcome::Ok | Outcome::Failed, Some(output)) => output,
            (Outcome::Init(cid), _) => match st.init_errors.get(&cid).cloned() {
                Some(cause) => pb::Result {
                    outcome: Some(PbOutcome::Error(pb::Error {
                        name: "InitError".into(),
                        message: format!("{}: {}", cause.name, cause.message),
                        stack: cause.stack,
                    })),
                },
                None => failed(failure::start_failed(def().as_ref().map_or("a function", |d| d.name.as_str()))),
            },
            (outcome, _) => {
                let def = def();
                let label = def.as_ref().map_or_else(|| "a function".to_owned(), |d| d.label(rec.method));
                let timeout = def.as_ref().map_or(Duration::ZERO, |d| d.spec.timeout);
                failed(
                    failure::outcome(&label, outcome, attempt, timeout)
                        .unwrap_or_else(|| failure::result_lost(&label, attempt)),
                )
            }
        };
        if let (Some(PbOutcome::Error(e)), false) = (&result.outcome, matches!(outcome, Outcome::Cancelled)) {
            let (app, function) = def().map_or_else(Default::default, |d| (d.app.clone(), d.label(rec.method)));
            let recent = RecentError::new(app, function, e);
            if st.recent_errors.len() >= RECENT_ERRORS {
                st.recent_errors.pop_front();
            }
            st.recent_errors.push_back(recent);
        }
        let spawned = match st.calls.get_mut(&rec.call.fc) {
            Some(slot) if slot.input == input => {
                slot.result = Some(result.clone());
                slot.ready.notify_waiters();
                true
            }
            _ => false,
        };
        if spawned {
            st.finished_calls.push_back((Instant::now(), rec.call.fc.clone()));
        }
        match rec.waiter {
            Waiter::Settled(out) | Waiter::Forward(_, out) => {
                let _ = out.send((Some(outcome), result));
            }
            waiter => waiter.send(result),
        }
    }
}

/// Failed inputs the control plane keeps for the dashboard (dashboard.rs), the oldest dropped.
pub(crate) const RECENT_ERRORS: usize = 50;

/// A stack longer than this is cut in a [`RecentError`].
const RECENT_STACK_BYTES: usize = 4096;

/// An input that failed: when, what, and its error.
#[derive(Clone, Debug)]
pub(crate) struct RecentError {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub app: String,
    pub function: String,
    pub name: String,
    pub message: String,
    pub stack: String,
}

impl RecentError {
    fn new(app: String, function: String, e: &pb::Error) -> Self {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let cut = |s: &str, n: usize| {
            let mut end = s.len().min(n);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_owned()
        };
        Self {
            at_ms,
            app,
            function,
            name: cut(&e.name, 256),
            message: cut(&e.message, RECENT_STACK_BYTES),
            stack: cut(&e.stack, RECENT_STACK_BYTES),
        }
    }
}

/// A container that has not been heard from for this long while an input it holds is past
/// its timeout is taken for hung (blocked event loop, stopped process) and replaced. Containers
/// send a heartbeat every second (src/run/container.ts, HEARTBEAT_MS).
pub(crate) const HUNG_AFTER: Duration = Duration::from_secs(4);

/// What the control plane checks on a clock, every 250 ms until it is gone: results of spawned
/// calls nobody collected within the TTL are dropped, and hung containers replaced.
pub(crate) async fn housekeeping(plane: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = plane.upgrade() else { return };
        let now = Instant::now();
        expire_results(&shared, now);
        replace_hung_containers(&shared, now);
        shared.queues.expire_leases(std::time::Instant::now());
    }
}

/// Spawned calls' results past the TTL go, in finishing order (which is expiry order).
fn expire_results(shared: &Shared, now: Instant) {
    let mut st = shared.lock();
    while st.finished_calls.front().is_some_and(|(at, _)| now.duration_since(*at) >= shared.result_ttl) {
        if let Some((_, fc)) = st.finished_calls.pop_front() {
            st.calls.remove(&fc);
        }
    }
}

/// Hung containers are killed and reported lost (their inputs are retried within `retries`,
/// the pool starts another).
fn replace_hung_containers(shared: &Shared, now: Instant) {
    let mut hung = Vec::new();
    {
        let mut st = shared.lock();
        let ids: Vec<ContainerId> = st
            .links
            .iter()
            .filter(|(_, l)| {
                l.tx.is_some()
                    && l.overdue_since.is_some_and(|t| now.duration_since(t) > HUNG_AFTER)
                    && now.duration_since(l.last_heard) > HUNG_AFTER
            })
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            if let Some(link) = st.links.remove(&id) {
                hung.push((id, link.overdue.first().copied().unwrap_or(0), now.duration_since(link.last_heard)));
            }
        }
    }
    for (id, input, quiet) in hung {
        tracing::warn!(
            "berth: container {id} stopped answering (nothing for {:.1} s, its event loop is blocked or the process \
                 is stopped) while input in-{input} ran past its timeout: replacing it",
            quiet.as_secs_f64()
        );
        shared.spawner.kill(id);
        let _ = shared.commands.send(Command::ContainerLost(id));
    }
}

/// Enough to tell containers apart; not a secret from the local user (the token is passed
/// in the child's environment), only from other local processes guessing ids.
pub(crate) fn rand_token() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}
