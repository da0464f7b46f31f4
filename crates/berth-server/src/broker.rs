//! Broker mode (ARCHITECTURE.md, "Adding things" → "A broker"): the control plane as a
//! front that puts inputs on NATS JetStream, or as a worker that takes them from it. The
//! JetStream layer itself (streams, envelope, leases, result dedupe) is crates/berth-nats.
//!
//! **Front** (`berth serve --broker URL`, [`Front`]): at start, every function's and class's
//! pool stream and durable consumer are made or verified (`Broker::ensure_pool`). A call whose
//! waiter takes one result (Invoke, HTTP RPC, each input of a Map, a Spawn) is not submitted
//! to the local scheduler: `FunctionsSvc::submit_many` hands it to [`divert`], which publishes
//! it on its pool's subject with the front's result inbox as the reply, and answers the
//! waiter from the [`ResultRouter`] (first result per input; JetStream delivers at least once).
//! At most [`FRONT_WINDOW`] inputs are in flight per front: results come back on core NATS,
//! at most once, into a bounded inbox buffer. Generators and web requests are not through the
//! broker yet: the front runs them in containers of its own, as without `--broker`.
//!
//! **Worker** (`berth worker --broker URL`, [`start_worker`]): the control plane's scheduler,
//! host and supervisor with no caller-facing listener beyond the loopback one its containers
//! attach to, plus one feeder per pool. A feeder pulls at most what the pool's containers have
//! room for ([`Window`]), submits each input as a local caller would, keeps its lease alive
//! with `progress` while it waits or runs, and settles it once the local scheduler decided
//! ([`settle`]): the result is sent to the caller's inbox, and the message acked once the front
//! confirmed it (`berth_nats::Broker::reply`: a result lost in a NATS restart is sent again); a
//! retryable failure is nak'ed with the function's Retries backoff (the retry may run on any
//! worker); an input the worker could not run (it is stopping) is nak'ed at once, for another.
//! Local pools run with no retries of their own: JetStream's redelivery is the retry.
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use std::{collections::HashSet, io};

use berth_core::broker::{names, BrokerNames};
use berth_core::{InputId, Outcome, PoolId, RetryPolicy};
use berth_nats::{Broker, BrokerError, BrokerInput, BrokerResult, Delivery, PoolSettings, ResultRouter};
use berth_proto::v1::{self as pb, result::Outcome as PbOutcome};
use tokio::sync::{mpsc, oneshot, watch, Notify, Semaphore};

use crate::functions::FunctionsSvc;
use crate::plane::{error, FunctionDef, Registry, Shared, State, Waiter};
use crate::server::{ControlPlane, ServeOptions};
use crate::Spawner;

/// Inputs a front has published and not yet had a result for, at most. Core NATS results
/// past the result inbox's buffer (`berth_nats::broker::SUBSCRIPTION_CAPACITY`) are lost, so
/// this stays well below it; it is the gRPC Map window, so one `.map()` is not slowed by it.
pub const FRONT_WINDOW: usize = 16 * 1024;

/// A pool's fingerprint in its stream's description: fronts and workers of the same app
/// definition agree on it, and a stream made by another version of the function is refused
/// (`Broker::ensure_pool`). FNV-1a over what the definition says of the pool.
pub fn fingerprint(def: &FunctionDef) -> String {
    let text = format!("{:?}|{:?}|{:?}|{:?}|{:?}", def.methods, def.spec, def.arity, def.params, def.generators);
    let hash =
        text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{hash:016x}")
}

fn broker_error(e: berth_nats::Error) -> io::Error {
    io::Error::other(e.message)
}

/// Connects and makes or verifies the JetStream pool of every definition in `defs`.
async fn connect_pools<'a>(url: &str, defs: impl Iterator<Item = &'a FunctionDef>) -> io::Result<Broker> {
    let broker = Broker::connect(url).await.map_err(broker_error)?;
    for def in defs {
        let settings = PoolSettings::from_spec(&def.spec, fingerprint(def));
        broker.ensure_pool(&def.app, &names(&def.app, &def.name), &settings).await.map_err(broker_error)?;
    }
    Ok(broker)
}

/// The front's side of broker mode, held by the control plane's shared state.
pub(crate) struct Front {
    inbox: String,
    /// Tells input ids of this front from every other's (they are JetStream message ids).
    prefix: String,
    outgoing: mpsc::UnboundedSender<Outgoing>,
}

struct Outgoing {
    names: BrokerNames,
    input: BrokerInput,
    local: InputId,
    waiter: Waiter,
    /// A spawned call's control plane and call id: its result goes into the call's slot.
    spawned: Option<(Weak<Shared>, String)>,
}

impl Front {
    /// Connects to `url`, makes or verifies every pool's stream, starts the result inbox and
    /// the publisher. The registry's pools keep no containers warm here: workers run them.
    pub(crate) async fn start(url: &str, registry: &mut Registry) -> io::Result<Arc<Self>> {
        let broker = connect_pools(url, registry.functions.iter()).await?;
        for def in &mut registry.functions {
            def.spec.min_containers = 0;
            def.spec.buffer_containers = 0;
        }
        let router = Arc::new(ResultRouter::start(&broker).await.map_err(broker_error)?);
        let (outgoing, rx) = mpsc::unbounded_channel();
        let inbox = router.inbox().to_string();
        tokio::spawn(publish(broker, router, rx));
        let prefix = format!("{:016x}", crate::plane::rand_token());
        tracing::info!(url = %url, "berth: front: inputs go through NATS JetStream");
        Ok(Arc::new(Self { inbox, prefix, outgoing }))
    }
}

/// `FunctionsSvc::submit_many`'s broker hook, under the state lock: inputs whose waiter takes
/// one result are published (their local ids allotted here, so a Spawn's slot learns its
/// input as without a broker); `Ok` with the last input id then. Any other waiter (a
/// generator's items, a web request) stays local: `Err` gives the inputs back.
#[allow(clippy::type_complexity)]
pub(crate) fn divert(
    shared: &Arc<Shared>,
    front: &Front,
    st: &mut State,
    pool: PoolId,
    method: u32,
    fc: &str,
    inputs: Vec<(Vec<u8>, Waiter)>,
) -> Result<InputId, Vec<(Vec<u8>, Waiter)>> {
    if !inputs.iter().all(|(_, w)| matches!(w, Waiter::Call(_) | Waiter::Map(..) | Waiter::None)) {
        return Err(inputs);
    }
    let Some((def, params)) = st.pools.get(&pool).and_then(|p| Some((shared.def(p.def)?, p.params.clone()))) else {
        return Err(inputs);
    };
    let pool_names = names(&def.app, &def.name);
    let method_name =
        if def.is_class { def.methods.get(method as usize).cloned().unwrap_or_default() } else { String::new() };
    let mut last = 0;
    for (args, waiter) in inputs {
        st.next_input += 1;
        last = st.next_input;
        let spawned = matches!(waiter, Waiter::None).then(|| (Arc::downgrade(shared), fc.to_string()));
        let input = BrokerInput {
            input_id: format!("{}-{last}", front.prefix),
            function_call_id: fc.to_string(),
            attempt: 0,
            method: method_name.clone(),
            args,
            reply: front.inbox.clone(),
            deadline_unix_ms: 0,
            params: params.clone(),
        };
        let _ = front.outgoing.send(Outgoing { names: pool_names.clone(), input, local: last, waiter, spawned });
    }
    if let Some(slot) = st.calls.get_mut(fc) {
        slot.input = last;
    }
    Ok(last)
}

/// The front's publisher: each input registered with the router, published, its stream ack
/// and then its result awaited, at most [`FRONT_WINDOW`] at once.
async fn publish(broker: Broker, router: Arc<ResultRouter>, mut rx: mpsc::UnboundedReceiver<Outgoing>) {
    let window = Arc::new(Semaphore::new(FRONT_WINDOW));
    while let Some(out) = rx.recv().await {
        let Ok(permit) = window.clone().acquire_owned().await else { return };
        let id = out.input.input_id.clone();
        let result = router.register(id.clone());
        let names = out.names.clone();
        let Outgoing { input, local, waiter, spawned, .. } = out;
        let pending = broker.start_publish(&names, vec![input]).await;
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let answer = match pending {
                Err(e) => Err(e),
                Ok(p) => p.wait().await.map(|_| ()),
            };
            let result = match answer {
                Err(e) => {
                    router.forget(&id);
                    error("Error", e.message)
                }
                Ok(()) => match result.await {
                    Ok(r) => to_pb(r),
                    Err(_) => error("Error", "the front stopped before the input's result came"),
                },
            };
            answer_waiter(spawned, local, waiter, result);
        });
    }
}

/// A result from a worker as the control plane's callers get it.
fn to_pb(r: BrokerResult) -> pb::Result {
    match r.outcome {
        Some(berth_nats::envelope::Outcome::Value(v)) => pb::Result { outcome: Some(PbOutcome::Value(v)) },
        Some(berth_nats::envelope::Outcome::Error(e)) => pb::Result {
            outcome: Some(PbOutcome::Error(pb::Error { name: e.name, message: e.message, stack: e.stack })),
        },
        None => error("Error", "a worker sent a result without an outcome"),
    }
}

/// What `Host::done` does with a local input's result: a spawned call's slot takes it.
fn answer_waiter(spawned: Option<(Weak<Shared>, String)>, input: InputId, waiter: Waiter, result: pb::Result) {
    if let Some((shared, fc)) = spawned.and_then(|(w, fc)| Some((w.upgrade()?, fc))) {
        let mut st = shared.lock();
        if let Some(slot) = st.calls.get_mut(&fc).filter(|s| s.input == input) {
            slot.result = Some(result.clone());
            slot.ready.notify_waiters();
            st.finished_calls.push_back((Instant::now(), fc));
        }
    }
    waiter.send(result);
}

/// What a worker does with a pulled input once its local scheduler decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Publish the result to the caller's inbox, then ack: the input is done.
    Reply,
    /// Nak with the Retries backoff: it runs again, on this worker or another.
    Retry,
    /// Nak at once without a result: this worker could not run it (it is stopping).
    Release,
}

/// How a worker settles an input whose local `outcome` came on its delivery `attempt`
/// (1-based: JetStream's delivery count plus attempts spent before it was published).
/// `None`: the local control plane went away without deciding. A failure is retried while
/// the function retries (`retries`, its `maxRetries`; none for a method that never retries)
/// and JetStream will deliver it again (`last_attempt` false). A redelivery after a worker
/// died counts as an attempt: the consumer's `max_deliver` leaves room for those
/// (`PoolSettings::from_spec`), so they do not take retries unless retries are spent too.
pub fn settle(outcome: Option<Outcome>, attempt: u32, retries: u32, last_attempt: bool) -> Settle {
    match outcome {
        Some(Outcome::Ok | Outcome::Lost | Outcome::Init(_)) => Settle::Reply,
        Some(Outcome::Failed | Outcome::Timeout) if attempt <= retries && !last_attempt => Settle::Retry,
        Some(Outcome::Failed | Outcome::Timeout) => Settle::Reply,
        Some(Outcome::Cancelled | Outcome::Rejected | Outcome::QueueFull(_)) | None => Settle::Release,
    }
}

/// A worker's pool holds at most this many inputs, however many containers it may start.
pub const MAX_WINDOW: usize = 4096;

/// How many inputs a worker's pool may hold at once (pulled, not yet settled): what its
/// containers have room for, so that what it pulls runs now and the rest stays in the
/// stream for other workers.
#[derive(Debug)]
pub struct Window {
    cap: usize,
    held: usize,
}

impl Window {
    /// Room for `max_containers` containers of `max_inputs` inputs each, or of a batch of up
    /// to `max_batch` for a `@batched()` method.
    pub fn new(max_containers: u32, max_inputs: u32, max_batch: u32) -> Self {
        let per_container = max_inputs.max(max_batch).max(1) as usize;
        Self { cap: (max_containers.max(1) as usize).saturating_mul(per_container).min(MAX_WINDOW), held: 0 }
    }

    /// How many more inputs to pull now.
    pub fn room(&self) -> usize {
        self.cap.saturating_sub(self.held)
    }

    pub fn take(&mut self, n: usize) {
        self.held += n;
    }

    /// `n` inputs were settled; true when this made room where there was none.
    pub fn release(&mut self, n: usize) -> bool {
        let was_full = self.room() == 0;
        self.held = self.held.saturating_sub(n);
        was_full && self.room() > 0
    }

    pub fn held(&self) -> usize {
        self.held
    }
}

/// What `berth worker` runs besides its control plane: one feeder per pool.
pub struct Worker {
    stop: watch::Sender<bool>,
    feeders: Vec<tokio::task::JoinHandle<()>>,
    held: Vec<Arc<(Mutex<Window>, Notify)>>,
    pub pools: Vec<String>,
}

impl Worker {
    /// Stops pulling, then waits until every input pulled is settled (or `within` passed:
    /// what is left is redelivered to another worker after its ack deadline).
    pub async fn drain(&mut self, within: Duration) {
        let _ = self.stop.send(true);
        for f in self.feeders.drain(..) {
            let _ = f.await;
        }
        let until = tokio::time::Instant::now() + within;
        while self.held.iter().any(|w| lock(&w.0).held() > 0) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a worker: connects to `url` (failing at once, naming it, when nothing answers),
/// makes or verifies the pools of `only` (every function and class of `registry` when
/// empty), starts a control plane for them on `serve.addr` (the loopback listener its
/// containers attach to) and a feeder per pool.
pub async fn start_worker(
    registry: Registry,
    spawner: impl Spawner,
    serve: ServeOptions,
    url: &str,
    only: &[String],
) -> io::Result<(ControlPlane, Worker)> {
    let known: Vec<&str> = registry.functions.iter().map(|d| d.name.as_str()).collect();
    let mut wanted: HashSet<&str> = HashSet::new();
    for name in only {
        if !known.contains(&name.as_str()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("--function {name}: the app has no function or class '{name}'; it has: {}", known.join(", ")),
            ));
        }
        wanted.insert(name);
    }
    // Every pool named, web endpoints and generators included: their other calls (a class's
    // plain methods, `.remote()` of an endpoint) come through the broker; their streamed ones
    // stay on the front and never reach a worker.
    let served: Vec<FunctionDef> =
        registry.functions.into_iter().filter(|d| wanted.is_empty() || wanted.contains(d.name.as_str())).collect();
    let broker = connect_pools(url, served.iter()).await?;
    // The retries are JetStream's (settle): a local retry would run again without a lease.
    let policies: Vec<RetryPolicy> = served.iter().map(|d| d.spec.retries.clone()).collect();
    let mut local = served.clone();
    for d in &mut local {
        d.spec.retries.max_retries = 0;
    }
    let plane = ControlPlane::start(Registry { functions: local }, spawner, serve).await?;
    let shared = plane.shared().clone();
    let (stop, stopped) = watch::channel(false);
    let mut worker = Worker { stop, feeders: Vec::new(), held: Vec::new(), pools: Vec::new() };
    for (index, (def, policy)) in served.into_iter().zip(policies).enumerate() {
        let pool_names = names(&def.app, &def.name);
        let consumer = broker.worker(&pool_names).await.map_err(broker_error)?;
        let max_batch = def.spec.methods.iter().filter_map(|m| m.batching.map(|b| b.max_batch_size)).max().unwrap_or(1);
        let window =
            Arc::new((Mutex::new(Window::new(def.spec.max_containers, def.spec.max_inputs, max_batch)), Notify::new()));
        worker.held.push(window.clone());
        worker.pools.push(pool_names.stream.clone());
        let ack_wait = PoolSettings::from_spec(&def.spec, "").ack_wait;
        let feeder = Feeder {
            shared: shared.clone(),
            broker: broker.clone(),
            index,
            def: Arc::new(def),
            policy,
            window,
            ack_wait,
        };
        worker.feeders.push(tokio::spawn(feeder.run(consumer, stopped.clone())));
    }
    Ok((plane, worker))
}

struct Feeder {
    shared: Arc<Shared>,
    broker: Broker,
    /// The definition's index in the local control plane's catalog.
    index: usize,
    def: Arc<FunctionDef>,
    policy: RetryPolicy,
    window: Arc<(Mutex<Window>, Notify)>,
    ack_wait: Duration,
}

impl Feeder {
    async fn run(self, mut consumer: berth_nats::Worker, mut stop: watch::Receiver<bool>) {
        let this = Arc::new(self);
        loop {
            if *stop.borrow() {
                return;
            }
            let room = lock(&this.window.0).room();
            if room == 0 {
                tokio::select! {
                    () = this.window.1.notified() => {}
                    _ = stop.changed() => return,
                }
                continue;
            }
            // Each delivery runs as it arrives: a pull the server cannot fill at once stays open
            // until deliveries are settled (berth-nats `Worker::pull_each`).
            let run = |d: Delivery| {
                lock(&this.window.0).take(d.inputs.len());
                tokio::spawn(this.clone().run_delivery(d));
            };
            let pulled = tokio::select! {
                r = consumer.pull_each(room, Duration::from_secs(1), run) => r,
                _ = stop.changed() => return,
            };
            if let Err(e) = pulled {
                tracing::warn!("berth worker: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Runs a delivery's inputs in the local control plane and settles its lease.
    async fn run_delivery(self: Arc<Self>, d: Delivery) {
        let n = d.inputs.len();
        let mut waits = Vec::with_capacity(n);
        for input in &d.inputs {
            waits.push(self.submit(input));
        }
        // The lease lasts `ack_wait` from the last word: say so while the inputs wait or run.
        let mut tick = tokio::time::interval((self.ack_wait / 3).max(Duration::from_millis(500)));
        tick.tick().await;
        let all = futures_util::future::join_all(waits);
        tokio::pin!(all);
        let outcomes = loop {
            tokio::select! {
                r = &mut all => break r,
                _ = tick.tick() => {
                    if let Err(e) = d.lease.progress().await {
                        tracing::warn!("berth worker: {e}");
                    }
                }
            }
        };
        let mut again: Option<Settle> = None;
        let mut replies = Vec::new();
        for (input, result) in d.inputs.iter().zip(outcomes) {
            let outcome = result.as_ref().ok().and_then(|(o, _)| *o);
            let method = self.method_of(input).unwrap_or(0);
            let retries = if self.def.spec.methods.get(method as usize).is_some_and(|m| m.no_retries) {
                0
            } else {
                self.policy.max_retries
            };
            match settle(outcome, input.attempt, retries, d.last_attempt) {
                Settle::Reply => {
                    if !input.reply.is_empty() {
                        replies.push((input.reply.as_str(), to_broker(&input.input_id, input.attempt, result)));
                    }
                }
                s => again = Some(if again == Some(Settle::Retry) { Settle::Retry } else { s }),
            }
        }
        // The ack waits until the front confirmed each result (`Broker::reply` sends it again
        // until then, through a NATS restart): acked with its result lost, an input would
        // leave its caller waiting for ever; not acked, it runs again and the front drops the
        // second result. With several inputs in one message (not what fronts publish), one that
        // must run again takes the whole message back; the front drops the finished inputs'
        // second results.
        let sent = replies.iter().map(|(to, r)| self.broker.reply(to, r, Some(&d.lease)));
        for e in futures_util::future::join_all(sent).await.into_iter().filter_map(Result::err) {
            tracing::warn!("berth worker: {e}");
        }
        let settled = match again {
            None => d.lease.ack().await,
            Some(Settle::Retry) => d.lease.retry(&self.policy, d.inputs.first().map_or(1, |i| i.attempt)).await,
            Some(_) => d.lease.nak_after(Duration::ZERO).await,
        };
        if let Err(e) = settled {
            tracing::warn!("berth worker: {e}");
        }
        // notify_one keeps the wake for a feeder that is not waiting yet (it is pulling).
        if lock(&self.window.0).release(n) {
            self.window.1.notify_one();
        }
    }

    fn method_of(&self, input: &berth_nats::Input) -> Option<u32> {
        if !self.def.is_class {
            return Some(0);
        }
        self.def.methods.iter().position(|m| *m == input.method).map(|i| i as u32)
    }

    /// Submits one input as a local caller would; what the scheduler decided comes back.
    fn submit(&self, input: &berth_nats::Input) -> oneshot::Receiver<(Option<Outcome>, pb::Result)> {
        let (tx, rx) = oneshot::channel();
        let Some(method) = self.method_of(input) else {
            // Final (Lost settles as a reply): no worker of this app version has the method.
            let _ = tx.send((
                Some(Outcome::Lost),
                error("InvalidError", format!("class '{}' has no method '{}'", self.def.name, input.method)),
            ));
            return rx;
        };
        let params = if input.params.is_empty() {
            crate::params::canonical(&self.def, &[]).unwrap_or_default()
        } else {
            input.params.to_vec()
        };
        let Some(pool) = self.shared.pool(self.index, &params) else {
            let _ = tx.send((None, error("Error", "the worker's app was replaced")));
            return rx;
        };
        let svc = FunctionsSvc { shared: self.shared.clone() };
        svc.submit_many(
            pool,
            method,
            input.function_call_id.clone(),
            vec![(input.args.to_vec(), Waiter::Settled(tx))],
            true,
        );
        rx
    }
}

/// One attempt's result as it goes back to the front.
fn to_broker(
    input_id: &str,
    attempt: u32,
    result: Result<(Option<Outcome>, pb::Result), oneshot::error::RecvError>,
) -> BrokerResult {
    match result.map(|(_, r)| r.outcome) {
        Ok(Some(PbOutcome::Value(v))) => BrokerResult::value(input_id, attempt, v),
        Ok(Some(PbOutcome::Error(e))) => {
            BrokerResult::error(input_id, attempt, BrokerError { name: e.name, message: e.message, stack: e.stack })
        }
        _ => BrokerResult::error(
            input_id,
            attempt,
            BrokerError {
                name: "Error".into(),
                message: "the worker lost the input's result".into(),
                stack: String::new(),
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_what_the_containers_have_room_for() {
        let mut w = Window::new(2, 4, 1);
        assert_eq!(w.room(), 8);
        w.take(5);
        assert_eq!(w.room(), 3);
        w.take(3);
        assert_eq!(w.room(), 0);
        assert!(w.release(1), "room again after being full");
        assert!(!w.release(1), "there was room already");
        assert_eq!((w.held(), w.room()), (6, 2));
        // A @batched method's containers take a batch each.
        assert_eq!(Window::new(3, 1, 16).room(), 48);
        assert_eq!(Window::new(0, 0, 0).room(), 1, "never zero: a pool always pulls something");
        assert_eq!(Window::new(u32::MAX, u32::MAX, 1).room(), MAX_WINDOW);
    }

    #[test]
    fn settling_replies_retries_or_releases() {
        // Success, and failures once retries are spent or JetStream will not deliver again.
        assert_eq!(settle(Some(Outcome::Ok), 1, 3, false), Settle::Reply);
        assert_eq!(settle(Some(Outcome::Failed), 1, 0, false), Settle::Reply);
        assert_eq!(settle(Some(Outcome::Failed), 4, 3, false), Settle::Reply);
        assert_eq!(settle(Some(Outcome::Failed), 2, 3, true), Settle::Reply);
        // A failure or a timeout with retries left runs again, on any worker.
        assert_eq!(settle(Some(Outcome::Failed), 1, 3, false), Settle::Retry);
        assert_eq!(settle(Some(Outcome::Timeout), 3, 3, false), Settle::Retry);
        // Final outcomes of the container, not of the input's attempt.
        assert_eq!(settle(Some(Outcome::Init(7)), 1, 3, false), Settle::Reply);
        assert_eq!(settle(Some(Outcome::Lost), 1, 3, false), Settle::Reply);
        // This worker could not run it (stopping, killed): another worker does, no result now.
        assert_eq!(settle(Some(Outcome::Cancelled), 1, 0, false), Settle::Release);
        assert_eq!(settle(Some(Outcome::Rejected), 1, 0, false), Settle::Release);
        assert_eq!(settle(None, 1, 0, false), Settle::Release);
    }

    #[test]
    fn fingerprints_follow_the_definition() {
        let def = |timeout| {
            let mut spec = berth_core::PoolSpec::new("f", vec![berth_core::MethodSpec::default()]);
            spec.timeout = Duration::from_secs(timeout);
            FunctionDef::function("a", "f", spec)
        };
        assert_eq!(fingerprint(&def(5)), fingerprint(&def(5)));
        assert_ne!(fingerprint(&def(5)), fingerprint(&def(6)));
    }
}
