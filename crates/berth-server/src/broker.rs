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
//! Inputs of the same pool that are ready at once share a message ([`publish`]).
//! A Spawn's input also asks the worker to store its result in the app's results bucket
//! (`keep_result`; berth-nats `SpawnResults`), keyed by the call id, which names the front
//! ([`Front::call_id`]): GetResult on another front reads it there ([`Front::stored_result`]).
//! At most [`FRONT_WINDOW`] inputs are in flight per front: results come back on core NATS,
//! at most once, into a bounded inbox buffer. A generator's call and a web endpoint's request
//! are stream inputs (`BrokerInput.stream`): the worker sends their items to the same inbox as
//! they come, each message confirmed before the next, as far as the front's caller has taken
//! them plus a window ([`forward`], [`STREAM_WINDOW`]; the front's credit, [`follow`]), then the
//! result with the count of items, so none goes missing unseen. A stream input's worker lost
//! before it sent an item is replaced by its redelivery, unseen; after, the caller gets the items
//! it had and then `InputLostError` (a generator does not run again once it has yielded). A
//! request for a web app with a server of its own (`@webServer`, `@nodeApp`) is proxied to it
//! over HTTP, which NATS does not carry: the front runs those in containers of its own.
//!
//! **Worker** (`berth worker --broker URL`, [`start_worker`]): the control plane's scheduler,
//! host and supervisor with no caller-facing listener beyond the loopback one its containers
//! attach to, plus one feeder per pool. A feeder pulls at most what the pool's containers have
//! room for and a read ahead ([`Window`]), submits each input as a local caller
//! would, keeps its lease alive with `progress` while it waits or runs, and settles each input
//! once the local scheduler decided ([`settle`], then berth-nats `Delivery::settle`): results are
//! sent to the callers' inboxes and the message acked once each front confirmed its results
//! (`berth_nats::Broker::reply_many`: a result lost in a NATS restart is sent again); a
//! retryable failure runs again after the function's Retries backoff, on any worker; an input
//! the worker could not run (it is stopping: what it read ahead is withdrawn from the local
//! queue) goes back at once, for another. A call fronts cancel ([`Front::cancel`]) is answered
//! `InputCancelledError` and acked: cancelled where it runs, not run when pulled later
//! ([`Cancels`]). With several inputs in a message, an input that runs
//! again is republished alone and the others are not run again. Local pools run with no retries
//! of their own: JetStream's redelivery, or the republish, is the retry.
//!
//! **Throughput** (issue 12): a front puts the inputs of one pool that are ready at once in one
//! message (up to `berth_nats::inputs_per_message`: what one worker runs at once, at most 64),
//! a worker replies the results of one message to one front in one NATS message, confirmed by
//! the front once, and acks once per message; nats-server's work per message, not per input,
//! is what bounds the rate.
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use std::{collections::HashSet, io};

use berth_core::broker::{names, BrokerNames};
use berth_core::{Command, InputId, Outcome, PoolId, RetryPolicy};
use berth_nats::{Broker, BrokerError, BrokerInput, BrokerResult, Delivery, Fate, PoolSettings, ResultRouter};
use berth_proto::trace::TraceContext;
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
    /// Tells input ids and call ids of this front from every other's (input ids are JetStream
    /// message ids; a spawned call's id is its key in the app's results bucket).
    prefix: String,
    ids: CallIds,
    outgoing: mpsc::UnboundedSender<Vec<Outgoing>>,
    /// Each app's bucket of spawned calls' results (berth-nats `SpawnResults`): workers store a
    /// spawned call's result there, and GetResult for another front's call reads it.
    results: Vec<berth_nats::SpawnResults>,
    /// The apps served, and the connection: cancels go to their workers ([`Front::cancel`]).
    apps: Vec<String>,
    broker: Broker,
    /// Stream inputs running on workers, by local input id: their callers' credit and
    /// cancels go to the worker ([`Front::credit`], [`Front::abandon`]).
    follows: Follows,
}

/// A front's stream inputs running on workers ([`follow`]), by local input id.
type Follows = Arc<Mutex<std::collections::HashMap<InputId, Arc<Following>>>>;

/// A stream input of this front (a generator's, a web request's) as its worker runs it.
pub(crate) struct Following {
    input_id: String,
    fc: String,
    app: Arc<str>,
    state: Mutex<FollowState>,
}

impl Following {
    /// The caller took `more` items: what its worker is to hear (where, the attempt, the
    /// running total taken), once that worker has said where it listens.
    fn credit(&self, more: u64) -> Option<(String, u32, u64)> {
        let mut st = lock(&self.state);
        st.taken += more;
        (!st.credit_to.is_empty()).then(|| (st.credit_to.clone(), st.attempt, st.taken))
    }
}

#[derive(Default)]
struct FollowState {
    /// The attempt whose items the caller gets (0: none yet).
    attempt: u32,
    /// Where that attempt's worker hears credit.
    credit_to: String,
    /// Items of that attempt the caller has taken.
    taken: u64,
}

struct Outgoing {
    names: Arc<BrokerNames>,
    /// The app the input's function is of (a stream input's cancel goes to its workers).
    app: Arc<str>,
    /// The pool's inputs per message at most (`berth_nats::inputs_per_message`).
    per_message: usize,
    input: BrokerInput,
    local: InputId,
    waiter: Waiter,
    /// A spawned call's control plane and call id: its result goes into the call's slot.
    spawned: Option<(Weak<Shared>, String)>,
}

impl Front {
    /// Connects to `url`, makes or verifies every pool's stream, starts the result inbox and
    /// the publisher. The registry's pools keep no containers warm here: workers run them.
    pub(crate) async fn start(url: &str, registry: &mut Registry, result_ttl: Duration) -> io::Result<Arc<Self>> {
        let broker = connect_pools(url, registry.functions.iter()).await?;
        let mut apps: Vec<&str> = registry.functions.iter().map(|d| d.app.as_str()).collect();
        apps.sort_unstable();
        apps.dedup();
        let mut results = Vec::with_capacity(apps.len());
        for app in &apps {
            results.push(broker.spawn_results(app, result_ttl).await.map_err(broker_error)?);
        }
        let apps: Vec<String> = apps.into_iter().map(str::to_owned).collect();
        for def in &mut registry.functions {
            def.spec.min_containers = 0;
            def.spec.buffer_containers = 0;
        }
        let router = Arc::new(ResultRouter::start(&broker).await.map_err(broker_error)?);
        let (outgoing, rx) = mpsc::unbounded_channel();
        let inbox = router.inbox().to_string();
        let follows = Follows::default();
        tokio::spawn(publish(broker.clone(), router, rx, follows.clone()));
        let prefix = format!("{:016x}", crate::plane::rand_token());
        tracing::info!(url = %url, "berth: front: inputs go through NATS JetStream");
        let ids = CallIds(prefix.clone());
        Ok(Arc::new(Self { inbox, prefix, ids, outgoing, results, apps, broker, follows }))
    }

    /// Tells the workers that call `fc` (this front's or another's) is cancelled: its inputs
    /// not run yet are answered `InputCancelledError` without running, those running are
    /// cancelled, and none is run again (`Cancels`). Its callers get that answer as a result.
    pub(crate) fn cancel(&self, fc: &str) {
        let (broker, apps, fc) = (self.broker.clone(), self.apps.clone(), vec![fc.to_owned()]);
        tokio::spawn(async move {
            for app in apps {
                if let Err(e) = broker.cancel_calls(&app, &fc).await {
                    tracing::warn!("berth: {e}");
                }
            }
        });
    }

    /// The caller of stream input `input` took `n` more items: the worker running it may send
    /// as many more (`BrokerCredit`, a running total).
    pub(crate) fn credit(&self, input: InputId, n: u32) {
        let Some(f) = lock(&self.follows).get(&input).cloned() else { return };
        if let Some((to, attempt, taken)) = f.credit(u64::from(n)) {
            let broker = self.broker.clone();
            tokio::spawn(async move {
                let _ = broker.send_credit(&to, &f.input_id, attempt, taken).await;
            });
        }
    }

    /// The caller of stream input `input` went away before its end: its call is cancelled on
    /// the worker (which ends the generator, aborting its signal).
    pub(crate) fn abandon(&self, input: InputId) {
        let fc = lock(&self.follows).get(&input).map(|f| f.fc.clone());
        if let Some(fc) = fc {
            self.cancel(&fc);
        }
    }

    /// The bucket where the fronts of `app` record its schedules' ticks, so that one of them
    /// fires each tick and none while the last tick's run runs (schedule.rs).
    pub(crate) fn ticks(&self, app: &str) -> Option<&berth_nats::SpawnResults> {
        self.results.get(self.apps.iter().position(|a| a == app)?)
    }

    /// Its connection to the NATS server.
    pub(crate) fn broker(&self) -> &Broker {
        &self.broker
    }

    /// A call id of this front: `fc-<prefix>-<n>`, unique across fronts.
    pub(crate) fn call_id(&self, n: u64) -> String {
        self.ids.call_id(n)
    }

    pub(crate) fn own_call(&self, fc: &str) -> Option<u64> {
        self.ids.own_call(fc)
    }

    pub(crate) fn foreign_call(&self, fc: &str) -> bool {
        self.ids.foreign_call(fc)
    }

    /// The result of another front's spawned call, from the results bucket: what is there now,
    /// or what comes within `timeout`; `None` if nothing did. A result stays there for the
    /// `--result-ttl` of the front that made the bucket, and may be read more than once.
    pub(crate) async fn stored_result(&self, fc: &str, timeout: Duration) -> Result<Option<pb::Result>, String> {
        if timeout.is_zero() {
            for bucket in &self.results {
                if let Some(r) = bucket.get(fc).await.map_err(|e| e.message)? {
                    return Ok(Some(to_pb(r)));
                }
            }
            return Ok(None);
        }
        // Each wait reads what is there first (berth-nats `SpawnResults::wait`).
        let waits = self.results.iter().map(|b| Box::pin(b.wait(fc, timeout)));
        let mut waits: futures_util::stream::FuturesUnordered<_> = waits.collect();
        while let Some(r) = futures_util::StreamExt::next(&mut waits).await {
            if let Some(r) = r.map_err(|e| e.message)? {
                return Ok(Some(to_pb(r)));
            }
        }
        Ok(None)
    }
}

/// A front's call ids: `fc-<prefix>-<n>`, the prefix (16 hex digits) telling one front's from
/// another's.
pub(crate) struct CallIds(String);

impl CallIds {
    /// A call id of this front: `fc-<prefix>-<n>`, unique across fronts.
    pub(crate) fn call_id(&self, n: u64) -> String {
        format!("fc-{}-{n}", self.0)
    }

    /// The number of a call id this front issued (`call_id`), if it is one.
    pub(crate) fn own_call(&self, fc: &str) -> Option<u64> {
        fc.strip_prefix("fc-")?.strip_prefix(self.0.as_str())?.strip_prefix('-')?.parse().ok()
    }

    /// Whether `fc` has the shape of another front's call id.
    pub(crate) fn foreign_call(&self, fc: &str) -> bool {
        let Some((prefix, n)) = fc.strip_prefix("fc-").and_then(|r| r.split_once('-')) else { return false };
        prefix != self.0
            && prefix.len() == 16
            && prefix.bytes().all(|b| b.is_ascii_hexdigit())
            && n.parse::<u64>().is_ok()
    }
}

/// `FunctionsSvc::submit_many`'s broker hook, under the state lock: inputs are published
/// (their local ids allotted here, so a Spawn's slot learns its input as without a broker);
/// `Ok` with the last input id then. A generator's input or a web endpoint's request is a
/// stream input: its items come back as the worker sends them ([`follow`]). A request for a
/// web app with a server of its own stays local: `Err` gives the inputs back. The caller's
/// trace context travels in each input's envelope; the worker's input continues it.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn divert(
    shared: &Arc<Shared>,
    front: &Front,
    st: &mut State,
    pool: PoolId,
    method: u32,
    fc: &str,
    inputs: Vec<(Vec<u8>, Waiter)>,
    trace: Option<TraceContext>,
) -> Result<InputId, Vec<(Vec<u8>, Waiter)>> {
    if !inputs.iter().all(|(_, w)| {
        matches!(w, Waiter::Call(_) | Waiter::Map(..) | Waiter::None | Waiter::Stream(_) | Waiter::Web(_))
    }) {
        return Err(inputs);
    }
    let Some((def, params)) = st.pools.get(&pool).and_then(|p| Some((shared.def(p.def)?, p.params.clone()))) else {
        return Err(inputs);
    };
    let pool_names = Arc::new(names(&def.app, &def.name));
    let app: Arc<str> = Arc::from(def.app.as_str());
    let per_message = berth_nats::inputs_per_message(&def.spec);
    let method_name =
        if def.is_class { def.methods.get(method as usize).cloned().unwrap_or_default() } else { String::new() };
    let mut last = 0;
    let mut out = Vec::with_capacity(inputs.len());
    // One trace per call, the caller's or a new one, as without a broker (functions.rs).
    let trace = berth_proto::trace::continued(trace);
    let (trace_id_high, trace_id_low) = trace.trace_id_halves();
    for (args, waiter) in inputs {
        st.next_input += 1;
        last = st.next_input;
        let spawned = matches!(waiter, Waiter::None).then(|| (Arc::downgrade(shared), fc.to_string()));
        let stream = matches!(waiter, Waiter::Stream(_) | Waiter::Web(_));
        let input = BrokerInput {
            input_id: format!("{}-{last}", front.prefix),
            function_call_id: fc.to_string(),
            attempt: 0,
            method: method_name.clone(),
            args,
            reply: front.inbox.clone(),
            deadline_unix_ms: 0,
            params: params.clone(),
            keep_result: spawned.is_some(),
            trace_id_high,
            trace_id_low,
            span_id: trace.span(),
            trace_flags: u32::from(trace.flags),
            stream,
        };
        out.push(Outgoing {
            names: pool_names.clone(),
            app: app.clone(),
            per_message,
            input,
            local: last,
            waiter,
            spawned,
        });
    }
    let _ = front.outgoing.send(out);
    if let Some(slot) = st.calls.get_mut(fc) {
        slot.input = last;
    }
    Ok(last)
}

/// Inputs the publisher takes from its queue at once at most before it publishes them.
const READY_AT_ONCE: usize = 4096;

/// The front's publisher. It takes every input that is ready (never waiting for more, so a lone
/// `.remote()` goes at once), puts those of the same pool together in messages of at most the
/// pool's `inputs_per_message` and [`berth_nats::broker::MAX_MESSAGE_BYTES`], registers each
/// input with the router, publishes, and answers each input's waiter when its result comes.
/// At most [`FRONT_WINDOW`] inputs are in flight.
async fn publish(
    broker: Broker,
    router: Arc<ResultRouter>,
    mut rx: mpsc::UnboundedReceiver<Vec<Outgoing>>,
    follows: Follows,
) {
    let window = Arc::new(Semaphore::new(FRONT_WINDOW));
    let mut ready: Vec<Outgoing> = Vec::new();
    // Messages being filled, one per pool (by subject); few pools are ready at once.
    let mut open: Vec<(Vec<Outgoing>, usize)> = Vec::new();
    while let Some(first) = rx.recv().await {
        ready.extend(first);
        while ready.len() < READY_AT_ONCE {
            match rx.try_recv() {
                Ok(more) => ready.extend(more),
                Err(_) => break,
            }
        }
        for out in ready.drain(..) {
            let bytes = out.input.args.len() + out.input.params.len() + out.input.input_id.len() + 64;
            let at = match open.iter().position(|(m, _)| m[0].names.subject == out.names.subject) {
                Some(at) => at,
                None => {
                    open.push((Vec::with_capacity(out.per_message), 0));
                    open.len() - 1
                }
            };
            let (message, size) = &mut open[at];
            if !message.is_empty()
                && (message.len() >= out.per_message || *size + bytes > berth_nats::broker::MAX_MESSAGE_BYTES)
            {
                let full = std::mem::take(message);
                *size = 0;
                send_message(&broker, &router, &window, &follows, full).await;
            }
            let (message, size) = &mut open[at];
            message.push(out);
            *size += bytes;
        }
        for (message, _) in open.drain(..) {
            if !message.is_empty() {
                send_message(&broker, &router, &window, &follows, message).await;
            }
        }
    }
}

/// Publishes one message of a pool's inputs and answers each waiter as its result comes.
async fn send_message(
    broker: &Broker,
    router: &Arc<ResultRouter>,
    window: &Arc<Semaphore>,
    follows: &Follows,
    message: Vec<Outgoing>,
) {
    let n = message.len();
    let Ok(permits) = window.clone().acquire_many_owned(n as u32).await else { return };
    // Given back one by one as results come (add_permits), not all at the message's end.
    permits.forget();
    let names = message[0].names.clone();
    let mut inputs = Vec::with_capacity(n);
    let mut waiting = Vec::with_capacity(n);
    let mut streams = Vec::new();
    for out in message {
        let Outgoing { input, local, waiter, spawned, app, .. } = out;
        let result = router.register(input.input_id.clone());
        if input.stream {
            let chunks = router.register_stream(input.input_id.clone());
            let f = Arc::new(Following {
                input_id: input.input_id.clone(),
                fc: input.function_call_id.clone(),
                app,
                state: Mutex::default(),
            });
            lock(follows).insert(local, f.clone());
            streams.push((f, chunks, result, local, waiter));
        } else {
            waiting.push((input.input_id.clone(), result, local, waiter, spawned));
        }
        inputs.push(input);
    }
    let pending = broker.start_publish(&names, inputs).await;
    let (router, window, follows, broker) = (router.clone(), window.clone(), follows.clone(), broker.clone());
    tokio::spawn(async move {
        let published = match pending {
            Err(e) => Err(e),
            Ok(p) => p.wait().await.map(|_| ()),
        };
        if let Err(e) = published {
            for (id, _, local, waiter, spawned) in waiting {
                router.forget(&id);
                answer_waiter(spawned, local, waiter, error("Error", e.message.clone()));
            }
            for (f, _, _, local, waiter) in streams {
                router.forget(&f.input_id);
                router.forget_stream(&f.input_id);
                lock(&follows).remove(&local);
                waiter.send(error("Error", e.message.clone()));
            }
            window.add_permits(n);
            return;
        }
        for (f, chunks, result, local, waiter) in streams {
            let (router, window, follows, broker) = (router.clone(), window.clone(), follows.clone(), broker.clone());
            tokio::spawn(async move {
                let result = follow(&broker, &f, chunks, result, waiter).await;
                router.forget_stream(&f.input_id);
                lock(&follows).remove(&local);
                if result.is_err() {
                    router.forget(&f.input_id);
                }
                window.add_permits(1);
            });
        }
        let mut results: futures_util::stream::FuturesUnordered<_> = waiting
            .into_iter()
            .map(|(_, result, local, waiter, spawned)| async move { (result.await, local, waiter, spawned) })
            .collect();
        while let Some((result, local, waiter, spawned)) = futures_util::StreamExt::next(&mut results).await {
            let result = match result {
                Ok(r) => to_pb(r),
                Err(_) => error("Error", "the front stopped before the input's result came"),
            };
            answer_waiter(spawned, local, waiter, result);
            window.add_permits(1);
        }
    });
}

/// How often a front says its caller's credit again while a stream input's worker sends
/// nothing (a credit lost on the way would stall it: each says the running total), which also
/// tells the worker the front is there ([`FRONT_SILENT`]).
const CREDIT_AGAIN: Duration = Duration::from_secs(1);

/// Follows a stream input running on a worker: its items to the caller's stream as they come,
/// in order, each once (a worker sends a message of them again until confirmed; what the
/// caller has already is dropped by position), then its result. A redelivered input (its
/// worker lost) starts its items again: taken up only if the caller has had none; else the
/// stream ends with an error, and the call is cancelled: a generator does not run again once
/// it has yielded. `Err` when it ended so.
async fn follow(
    broker: &Broker,
    f: &Following,
    mut chunks: mpsc::UnboundedReceiver<berth_nats::envelope::StreamChunk>,
    mut result: oneshot::Receiver<BrokerResult>,
    waiter: Waiter,
) -> Result<(), ()> {
    let (Waiter::Stream(out) | Waiter::Web(out)) = &waiter else {
        waiter.send(error("Error", "a stream input without a stream"));
        return Err(());
    };
    let out = out.clone();
    // Items of the followed attempt the caller has.
    let mut next: u64 = 0;
    let lost = |next: u64| {
        error(
            "InputLostError",
            format!(
                "the worker running call {} was lost after it had sent {next} items; a generator does not run again once it has yielded",
                f.fc
            ),
        )
    };
    // One chunk: its new items to the caller (what it has already dropped); Err when the
    // stream cannot go on.
    let take = |c: berth_nats::envelope::StreamChunk, next: &mut u64| -> Result<(), pb::Result> {
        let mut st = lock(&f.state);
        if c.attempt != st.attempt {
            if c.attempt < st.attempt {
                return Ok(()); // a late message of an earlier attempt
            }
            if *next > 0 {
                return Err(lost(*next));
            }
            (st.attempt, st.taken) = (c.attempt, 0);
        }
        st.credit_to = c.credit_to;
        drop(st);
        if c.first > *next {
            return Err(error(
                "InputLostError",
                format!("items {}..{} of call {} never came (NATS lost them)", *next, c.first, f.fc),
            ));
        }
        let skip = (*next - c.first) as usize;
        for v in c.values.into_iter().skip(skip) {
            let _ = out.send(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Value(v)) }));
            *next += 1;
        }
        Ok(())
    };
    let mut again = tokio::time::interval(CREDIT_AGAIN);
    again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            biased;
            Some(c) = chunks.recv() => {
                if let Err(e) = take(c, &mut next) {
                    break Err(e);
                }
                again.reset();
            }
            r = &mut result => {
                // Its items came before it (one subject, one sender): the last may wait here.
                let mut failed = None;
                while let Ok(c) = chunks.try_recv() {
                    if let Err(e) = take(c, &mut next) {
                        failed = Some(e);
                        break;
                    }
                }
                if let Some(e) = failed {
                    break Err(e);
                }
                let attempt = lock(&f.state).attempt;
                break match r {
                    Err(_) => Ok(error("Error", "the front stopped before the input's result came")),
                    Ok(r) if attempt != 0 && r.attempt != attempt && next > 0 => Err(lost(next)),
                    Ok(r) if (attempt == 0 || r.attempt == attempt) && r.items != next => Err(error(
                        "InputLostError",
                        format!("call {} sent {} items and {next} came (NATS lost the rest)", f.fc, r.items),
                    )),
                    Ok(r) => Ok(to_pb(r)),
                };
            }
            _ = again.tick() => {
                // Also unchanged: the worker waiting for credit hears the caller is still there.
                if let Some((to, attempt, taken)) = f.credit(0) {
                    let _ = broker.send_credit(&to, &f.input_id, attempt, taken).await;
                }
            }
        }
    };
    drop(out);
    match end {
        Ok(r) => {
            waiter.send(r);
            Ok(())
        }
        Err(e) => {
            // The attempt running now, if any, has no one to send to.
            let fc = f.fc.clone();
            let broker = broker.clone();
            let app = f.app.clone();
            tokio::spawn(async move {
                let _ = broker.cancel_calls(&app, &[fc]).await;
            });
            waiter.send(e);
            Err(())
        }
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

/// How many inputs a worker's pool may hold at once (pulled, not yet settled): what its
/// containers have room for (`berth_nats::worker_room`) and some read ahead, so that a
/// container that finishes an input finds the next one waiting in the local queue instead of
/// idling for a pull round trip — or for the worker's own turn on a core its containers keep
/// busy (two workers of a CPU-bound pool scale so) — while the rest stays in the stream for
/// other workers. The read ahead is one round of the containers' room while inputs are slow,
/// and grows to what the pool finishes in [`READ_AHEAD_FOR`] while they are fast (up to
/// `berth_nats::max_read_ahead`: 8 rounds, within `maxPendingInputs`): a long input never
/// waits here behind many others while another worker idles.
#[derive(Debug)]
pub struct Window {
    run: usize,
    ahead: usize,
    ahead_min: usize,
    ahead_max: usize,
    held: usize,
    /// Deliveries whose inputs all have their fate but whose message is still being settled
    /// (results sent, republished inputs waiting out a retry delay).
    settling: usize,
    /// Inputs finished since `since`: the rate the read ahead follows.
    finished: usize,
    since: std::time::Instant,
}

/// The work a worker keeps queued ahead of its containers, in time at its recent rate.
pub const READ_AHEAD_FOR: Duration = Duration::from_millis(25);

/// How often the read ahead follows the rate.
const RATE_EVERY: Duration = Duration::from_millis(100);

impl Window {
    pub fn for_pool(spec: &berth_core::PoolSpec, now: Instant) -> Self {
        let run = berth_nats::worker_room(spec);
        let ahead_max = berth_nats::max_read_ahead(spec);
        let ahead_min = run.min(ahead_max);
        Self { run, ahead: ahead_min, ahead_min, ahead_max, held: 0, settling: 0, finished: 0, since: now }
    }

    /// How many more inputs to pull now.
    pub fn room(&self) -> usize {
        (self.run + self.ahead).saturating_sub(self.held)
    }

    /// How many messages to ask for now, when a message holds up to `per_message` inputs: no
    /// more than fill the room if every one is full (at least one while there is room).
    pub fn messages(&self, per_message: usize) -> usize {
        match self.room() {
            0 => 0,
            room => (room / per_message.max(1)).max(1),
        }
    }

    pub fn take(&mut self, n: usize) {
        self.held += n;
    }

    /// `n` inputs have their fate at `now`; true when this made room where there was none.
    pub fn release(&mut self, n: usize, now: Instant) -> bool {
        let was_full = self.room() == 0;
        self.held = self.held.saturating_sub(n);
        self.finished += n;
        let elapsed = now.saturating_duration_since(self.since);
        if elapsed >= RATE_EVERY {
            let rate = self.finished as f64 / elapsed.as_secs_f64();
            let want = (rate * READ_AHEAD_FOR.as_secs_f64()).ceil() as usize;
            self.ahead = want.clamp(self.ahead_min, self.ahead_max);
            (self.finished, self.since) = (0, now);
        }
        was_full && self.room() > 0
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Inputs held or messages being settled: a stopping worker waits for both.
    pub fn busy(&self) -> bool {
        self.held > 0 || self.settling > 0
    }
}

/// What `berth worker` runs besides its control plane: one feeder per pool.
pub struct Worker {
    broker: Broker,
    stop: watch::Sender<bool>,
    feeders: Vec<tokio::task::JoinHandle<()>>,
    held: Vec<Arc<(Mutex<Window>, Notify)>>,
    pub pools: Vec<String>,
}

impl Worker {
    /// Stops pulling and gives back what it pulled but did not start (the local scheduler
    /// withdraws those inputs, and each is released at once for another worker), then waits
    /// until every input it pulled is settled (or `within` passed: what is left is redelivered
    /// to another worker after its ack deadline).
    pub async fn drain(&mut self, within: Duration) {
        let _ = self.stop.send(true);
        for f in self.feeders.drain(..) {
            let _ = f.await;
        }
        let until = tokio::time::Instant::now() + within;
        while self.held.iter().any(|w| lock(&w.0).held > 0) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // What is left is sending results and acks, which takes milliseconds while NATS answers.
        // Cut off from it (its host off the network), a worker would wait out each result's
        // patience for nothing: those inputs run elsewhere after their ack deadline anyway.
        let until = (tokio::time::Instant::now() + SETTLE_AT_STOP).min(until.max(tokio::time::Instant::now()));
        while self.held.iter().any(|w| lock(&w.0).busy()) {
            if tokio::time::Instant::now() >= until {
                tracing::warn!(
                    "berth worker: results not confirmed within {} s of stopping (NATS unreachable?): those inputs run again elsewhere after their ack deadline",
                    SETTLE_AT_STOP.as_secs()
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The last results, acks and naks are on their way to the server: a process that exits
        // before its NATS connection wrote them would leave those inputs to run again.
        if tokio::time::timeout(Duration::from_secs(5), self.broker.flush()).await.is_err() {
            tracing::warn!(
                "berth worker: NATS did not take the last acks within 5 s; those inputs run again elsewhere"
            );
        }
    }
}

/// Tries to store a spawned call's result beyond the first (about 30 s in all).
const KEEP_TRIES: u32 = 18;

/// How long a stopping worker whose inputs are done waits for their results to be confirmed
/// and their messages acked.
const SETTLE_AT_STOP: Duration = Duration::from_secs(10);

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
    // Every pool named, web endpoints and generators included (their items come back through
    // NATS: `forward`); a web app with a server of its own is proxied by the front, on its own
    // containers, and never reaches a worker.
    let served: Vec<FunctionDef> =
        registry.functions.into_iter().filter(|d| wanted.is_empty() || wanted.contains(d.name.as_str())).collect();
    let broker = connect_pools(url, served.iter()).await?;
    // The retries are JetStream's (settle): a local retry would run again without a lease.
    let policies: Vec<RetryPolicy> = served.iter().map(|d| d.spec.retries.clone()).collect();
    let mut local = served.clone();
    for d in &mut local {
        d.spec.retries.max_retries = 0;
    }
    let result_ttl = serve.result_ttl;
    let plane = ControlPlane::start(Registry { functions: local }, spawner, serve).await?;
    let shared = plane.shared().clone();
    // Its containers' dicts are the NATS server's, as the fronts' are (dicts.rs).
    let _ = shared.dict_broker.set(broker.clone());
    let (stop, stopped) = watch::channel(false);
    let mut worker = Worker { broker: broker.clone(), stop, feeders: Vec::new(), held: Vec::new(), pools: Vec::new() };
    // One subject for fronts' credit to every stream input running here.
    let credits = StreamCredits::start(&broker, stopped.clone()).await?;
    // One listener per app for the calls fronts cancel (`Cancels`).
    let mut cancels: Vec<(String, Arc<Cancels>)> = Vec::new();
    for def in &served {
        if cancels.iter().all(|(app, _)| *app != def.app) {
            let c = Arc::new(Cancels::default());
            let heard = broker.cancelled_calls(&def.app).await.map_err(broker_error)?;
            worker.feeders.push(tokio::spawn(c.clone().listen(heard, shared.clone(), stopped.clone())));
            cancels.push((def.app.clone(), c));
        }
    }
    for (index, (def, policy)) in served.into_iter().zip(policies).enumerate() {
        let cancels = cancels.iter().find(|(app, _)| *app == def.app).map(|(_, c)| c.clone()).unwrap_or_default();
        let pool_names = names(&def.app, &def.name);
        let consumer = broker.worker(&pool_names).await.map_err(broker_error)?;
        let window = Arc::new((Mutex::new(Window::for_pool(&def.spec, Instant::now())), Notify::new()));
        worker.held.push(window.clone());
        worker.pools.push(pool_names.stream.clone());
        let ack_wait = PoolSettings::from_spec(&def.spec, "").ack_wait;
        let feeder = Feeder {
            shared: shared.clone(),
            broker: broker.clone(),
            index,
            per_message: berth_nats::inputs_per_message(&def.spec),
            def: Arc::new(def),
            policy,
            window,
            ack_wait,
            stop: stopped.clone(),
            results: tokio::sync::OnceCell::new(),
            result_ttl,
            cancels,
            credits: credits.clone(),
        };
        worker.feeders.push(tokio::spawn(feeder.run(consumer)));
    }
    Ok((plane, worker))
}

struct Feeder {
    shared: Arc<Shared>,
    broker: Broker,
    /// The definition's index in the local control plane's catalog.
    index: usize,
    /// The pool's inputs per message at most, as fronts publish them.
    per_message: usize,
    def: Arc<FunctionDef>,
    policy: RetryPolicy,
    window: Arc<(Mutex<Window>, Notify)>,
    ack_wait: Duration,
    /// True once the worker stops: no more pulls, and what was pulled but not started is given back.
    stop: watch::Receiver<bool>,
    /// The app's bucket of spawned calls' results, opened (or made, entries living
    /// `result_ttl`) with the first spawned input.
    results: tokio::sync::OnceCell<berth_nats::SpawnResults>,
    result_ttl: Duration,
    /// The app's cancelled calls, and its inputs running here by call.
    cancels: Arc<Cancels>,
    /// Fronts' credit for the stream inputs running here ([`forward`]).
    credits: Arc<StreamCredits>,
}

/// Items a worker sends a front beyond what the front's caller has taken, at most (its
/// container's generator runs at most `GEN_WINDOW`, src/run/pool.ts, ahead of what the worker
/// sent): a slow caller holds the generator back across machines as it does on one.
const STREAM_WINDOW: u64 = 16;

/// Items a worker sends in one message at most.
const CHUNK_ITEMS: usize = 64;

/// A worker waiting for a front's credit that has heard nothing from it this long takes it for
/// gone (it says its credit every [`CREDIT_AGAIN`]) and ends the stream input.
const FRONT_SILENT: Duration = Duration::from_secs(30);

/// How often a worker waiting for credit looks whether the call was cancelled.
const CANCEL_CHECK: Duration = Duration::from_millis(250);

/// A worker's one subject for fronts' credit (berth-nats `Broker::credit_inbox`), and the
/// stream inputs running here that wait on it, by input id.
pub(crate) struct StreamCredits {
    inbox: String,
    waiting: Mutex<std::collections::HashMap<String, (u32, watch::Sender<u64>)>>,
}

impl StreamCredits {
    async fn start(broker: &Broker, mut stop: watch::Receiver<bool>) -> io::Result<Arc<Self>> {
        let (inbox, heard) = broker.credit_inbox().await.map_err(broker_error)?;
        let this = Arc::new(Self { inbox, waiting: Mutex::default() });
        let me = this.clone();
        tokio::spawn(async move {
            tokio::pin!(heard);
            loop {
                tokio::select! {
                    c = futures_util::StreamExt::next(&mut heard) => match c {
                        Some(c) => {
                            if let Some((attempt, taken)) = lock(&me.waiting).get(&c.input_id) {
                                if *attempt == c.attempt {
                                    // Heard even when unchanged: the front is there.
                                    taken.send_modify(|t| *t = (*t).max(c.taken));
                                }
                            }
                        }
                        None => return,
                    },
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
        });
        Ok(this)
    }

    /// What the front's caller of `input_id`'s attempt `attempt` has taken, as it changes.
    fn watch(&self, input_id: &str, attempt: u32) -> watch::Receiver<u64> {
        let (tx, rx) = watch::channel(0);
        lock(&self.waiting).insert(input_id.to_owned(), (attempt, tx));
        rx
    }

    fn forget(&self, input_id: &str) {
        lock(&self.waiting).remove(input_id);
    }
}

/// Sends a stream input's items to its front as they come and as the front's credit allows,
/// each message confirmed before the next (berth-nats `Broker::send_items`), giving the local
/// generator credit for what left; then hands on its outcome (`done`) with the count of items
/// sent, which its result carries. A front that stops confirming (gone) cancels the input.
#[allow(clippy::too_many_arguments)]
async fn forward(
    broker: Broker,
    shared: Arc<Shared>,
    credits: Arc<StreamCredits>,
    cancels: Arc<Cancels>,
    input: berth_nats::Input,
    local: InputId,
    mut items: mpsc::UnboundedReceiver<Result<pb::StreamItem, tonic::Status>>,
    settled: oneshot::Receiver<(Option<Outcome>, pb::Result)>,
    done: oneshot::Sender<((Option<Outcome>, pb::Result), u64)>,
) {
    let mut taken = credits.watch(&input.input_id, input.attempt);
    // When the front last said its caller's credit.
    let mut heard = Instant::now();
    let mut sent: u64 = 0;
    let mut pending: Vec<Vec<u8>> = Vec::new();
    let mut closed = false;
    let mut failed = false;
    loop {
        if !closed && pending.is_empty() {
            tokio::select! {
                item = items.recv() => match item {
                    Some(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Value(v)) })) => pending.push(v),
                    Some(_) => {}
                    None => closed = true,
                },
                // Nothing to send: credit only matters with items.
                _ = taken.changed() => {}
            }
        }
        while !closed && pending.len() < CHUNK_ITEMS {
            match items.try_recv() {
                Ok(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Value(v)) })) => pending.push(v),
                Ok(_) => {}
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => closed = true,
            }
        }
        if pending.is_empty() {
            if closed {
                break;
            }
            continue;
        }
        let room = (*taken.borrow() + STREAM_WINDOW).saturating_sub(sent) as usize;
        if room == 0 {
            // The caller reads slowly: wait for its credit (the lease is kept by run_delivery),
            // unless the call was cancelled (its caller went away, or the front gave up on it:
            // then no credit comes at all) or the front is gone.
            match tokio::time::timeout(CANCEL_CHECK, taken.changed()).await {
                Ok(Ok(())) => heard = Instant::now(),
                Ok(Err(_)) => {
                    failed = true;
                    break;
                }
                Err(_) => {}
            }
            if cancels.cancelled(&input.function_call_id) {
                failed = true;
                break;
            }
            if heard.elapsed() >= FRONT_SILENT {
                tracing::warn!(
                    "berth worker: no word from the front of input {} for {} s: its stream ends",
                    input.input_id,
                    FRONT_SILENT.as_secs()
                );
                failed = true;
                break;
            }
            continue;
        }
        let n = room.min(pending.len()).min(CHUNK_ITEMS);
        let values: Vec<Vec<u8>> = pending.drain(..n).collect();
        let chunk = berth_nats::envelope::StreamChunk {
            input_id: input.input_id.clone(),
            attempt: input.attempt,
            first: sent,
            values,
            credit_to: credits.inbox.clone(),
        };
        if let Err(e) = broker.send_items(&input.reply, chunk, None).await {
            tracing::warn!("berth worker: {e}");
            failed = true;
            break;
        }
        sent += n as u64;
        crate::functions::grant(&shared, local, n as u32);
    }
    credits.forget(&input.input_id);
    if failed {
        // Nobody takes its items: the generator ends (its signal aborted).
        let _ = shared.commands.send(Command::Cancel(vec![local]));
    }
    let outcome = settled.await.unwrap_or((None, error("Error", "the worker's control plane stopped")));
    let _ = done.send((outcome, sent));
}

/// How long a worker remembers a cancelled call: its inputs still in the stream are answered
/// cancelled when pulled within it.
const CANCEL_MEMORY: Duration = Duration::from_secs(600);

/// Cancelled calls a worker remembers at most (the oldest forgotten first).
const CANCELS_KEPT: usize = 100_000;

/// A worker's view of one app's cancels (fronts publish them: berth-nats `Broker::cancel_calls`):
/// the calls cancelled lately, and which local inputs of each call run here now. An input of a
/// cancelled call is not run (or is cancelled where it runs) and is answered
/// `InputCancelledError` and acked: it is not run again elsewhere.
#[derive(Default)]
pub(crate) struct Cancels {
    calls: Mutex<CancelledCalls>,
    /// By call, the local inputs of each submission running here: consecutive ids, `first..=last`
    /// (a `.map()`'s deliveries each add one range and take it back when settled).
    running: Mutex<std::collections::HashMap<String, Vec<(InputId, InputId)>>>,
}

#[derive(Default)]
struct CancelledCalls {
    ids: HashSet<String>,
    order: std::collections::VecDeque<(Instant, String)>,
}

impl CancelledCalls {
    fn insert(&mut self, fc: String, now: Instant) {
        while self.order.front().is_some_and(|(at, _)| now.duration_since(*at) >= CANCEL_MEMORY)
            || self.order.len() >= CANCELS_KEPT
        {
            if let Some((_, old)) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        if self.ids.insert(fc.clone()) {
            self.order.push_back((now, fc));
        }
    }
}

impl Cancels {
    pub(crate) fn cancelled(&self, fc: &str) -> bool {
        lock(&self.calls).ids.contains(fc)
    }

    /// Notes calls as cancelled and cancels their inputs running here.
    pub(crate) fn cancel(&self, fcs: Vec<String>, shared: &Shared) {
        let now = Instant::now();
        // Noted first, then looked up among the running: an input submitted meanwhile is
        // either seen running here or sees the call cancelled itself (`Feeder::submit`).
        {
            let mut calls = lock(&self.calls);
            for fc in &fcs {
                calls.insert(fc.clone(), now);
            }
        }
        let mut ids = Vec::new();
        {
            let running = lock(&self.running);
            for fc in &fcs {
                ids.extend(running.get(fc).into_iter().flatten().flat_map(|&(first, last)| first..=last));
            }
        }
        if !ids.is_empty() {
            let _ = shared.commands.send(Command::Cancel(ids));
        }
    }

    async fn listen(
        self: Arc<Self>,
        heard: impl futures_util::Stream<Item = Vec<String>>,
        shared: Arc<Shared>,
        mut stop: watch::Receiver<bool>,
    ) {
        tokio::pin!(heard);
        loop {
            tokio::select! {
                fcs = futures_util::StreamExt::next(&mut heard) => match fcs {
                    Some(fcs) => self.cancel(fcs, &shared),
                    None => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    fn started(&self, fc: &str, ids: (InputId, InputId)) {
        let mut running = lock(&self.running);
        match running.get_mut(fc) {
            Some(now) => now.push(ids),
            None => {
                running.insert(fc.to_owned(), vec![ids]);
            }
        }
    }

    fn finished(&self, fc: &str, ids: (InputId, InputId)) {
        let mut running = lock(&self.running);
        if let Some(now) = running.get_mut(fc) {
            if let Some(at) = now.iter().position(|r| *r == ids) {
                now.swap_remove(at);
            }
            if now.is_empty() {
                running.remove(fc);
            }
        }
    }
}

impl Feeder {
    async fn run(self, mut consumer: berth_nats::Worker) {
        let mut stop = self.stop.clone();
        let this = Arc::new(self);
        loop {
            if *stop.borrow() {
                return;
            }
            let messages = lock(&this.window.0).messages(this.per_message);
            if messages == 0 {
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
                r = consumer.pull_each(messages, Duration::from_secs(1), run) => r,
                _ = stop.changed() => return,
            };
            if let Err(e) = pulled {
                tracing::warn!("berth worker: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// Runs a delivery's inputs in the local control plane, then settles each input
    /// (berth-nats `Delivery::settle`).
    async fn run_delivery(self: Arc<Self>, d: Delivery) {
        let n = d.inputs.len();
        let (waits, local_by_call) = self.submit(&d.inputs);
        let local: Vec<InputId> = local_by_call.iter().flat_map(|&(_, (first, last))| first..=last).collect();
        // The lease lasts `ack_wait` from the last word: say so while the inputs wait or run.
        let mut tick = tokio::time::interval((self.ack_wait / 3).max(Duration::from_millis(500)));
        tick.tick().await;
        let mut stop = self.stop.clone();
        let stopping = async move {
            let _ = stop.wait_for(|s| *s).await.map(|_| ());
        };
        tokio::pin!(stopping);
        let mut withdrawn = false;
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
                // The worker stops: what has not started goes back (Cancelled, so Release).
                () = &mut stopping, if !withdrawn => {
                    withdrawn = true;
                    if !local.is_empty() {
                        let _ = self.shared.commands.send(Command::Withdraw(local.clone()));
                    }
                }
            }
        };
        for (fc, ids) in local_by_call {
            self.cancels.finished(&fc, ids);
        }
        let mut fates = Vec::with_capacity(n);
        for (input, waited) in d.inputs.iter().zip(outcomes) {
            // A stream input's result says how many items it sent before it (berth-nats).
            let (result, items) = match waited {
                Ok((r, items)) => (Ok(r), items),
                Err(e) => (Err(e), 0),
            };
            if self.cancels.cancelled(&input.function_call_id) {
                // Cancelled by its caller (before it came here, or while it ran): answered so,
                // and acked, never run again.
                fates.push(Fate::Reply(BrokerResult::error(
                    &input.input_id,
                    input.attempt,
                    BrokerError {
                        name: "InputCancelledError".into(),
                        message: format!("call {} was cancelled", input.function_call_id),
                        stack: String::new(),
                    },
                )));
                continue;
            }
            let outcome = result.as_ref().ok().and_then(|(o, _)| *o);
            let method = self.method_of(input).unwrap_or(0);
            let retries = if self.def.spec.methods.get(method as usize).is_some_and(|m| m.no_retries) {
                0
            } else {
                self.policy.max_retries
            };
            let fate = match settle(outcome, input.attempt, retries, d.last_attempt_of(input)) {
                // A stream input is not run again once it has begun: its caller has its items.
                Settle::Retry | Settle::Release
                    if input.stream && (items > 0 || outcome != Some(Outcome::Cancelled)) =>
                {
                    Settle::Reply
                }
                fate => fate,
            };
            fates.push(match fate {
                Settle::Reply => {
                    Fate::Reply(BrokerResult { items, ..to_broker(&input.input_id, input.attempt, result) })
                }
                Settle::Retry => Fate::Retry(self.policy.delay_for(input.attempt)),
                Settle::Release => Fate::Release,
            });
        }
        // The inputs are done here: room for more while the message settles (a retry's delay).
        {
            let mut w = lock(&self.window.0);
            w.settling += 1;
            // notify_one keeps the wake for a feeder that is not waiting yet (it is pulling).
            if w.release(n, Instant::now()) {
                self.window.1.notify_one();
            }
        }
        for (input, fate) in d.inputs.iter().zip(&fates) {
            if let (true, Fate::Reply(result)) = (input.keep_result, fate) {
                self.keep(input, result, &d.lease).await;
            }
        }
        if let Err(e) = d.settle(&self.broker, fates).await {
            tracing::warn!("berth worker: {e}");
        }
        lock(&self.window.0).settling -= 1;
    }

    /// Stores a spawned call's result in the app's results bucket, before it is replied and
    /// acked: so `FunctionCall.fromId` finds it on any front, also when the front that spawned
    /// it is gone. Tried again for a while (the lease kept alive) while NATS does not take it;
    /// then only the front that spawned it gets it, as its reply.
    async fn keep(&self, input: &berth_nats::Input, result: &BrokerResult, lease: &berth_nats::Lease) {
        let fc = &input.function_call_id;
        let mut pause = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            let stored = match self
                .results
                .get_or_try_init(|| self.broker.spawn_results(&self.def.app, self.result_ttl))
                .await
            {
                Ok(bucket) => bucket.put(fc, result).await.map(|_| ()),
                Err(e) => Err(e),
            };
            match stored {
                Ok(()) => return,
                Err(e) if tries >= KEEP_TRIES => {
                    tracing::warn!(
                        "berth worker: the result of spawned call {fc} is not stored for other fronts ({e}); the front that spawned it still gets it"
                    );
                    return;
                }
                Err(_) => {
                    tries += 1;
                    let _ = lease.progress().await;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn method_of(&self, input: &berth_nats::Input) -> Option<u32> {
        if !self.def.is_class {
            return Some(0);
        }
        self.def.methods.iter().position(|m| *m == input.method).map(|i| i as u32)
    }

    /// Submits a delivery's inputs as a local caller would, those of the same call, method and
    /// parameters together (one `.map()`'s inputs in one message: one submission). Returns
    /// where each input's outcome comes, and the local input ids (to withdraw them).
    #[allow(clippy::type_complexity)]
    fn submit(&self, inputs: &[berth_nats::Input]) -> (Vec<Outcomes>, Vec<(String, (InputId, InputId))>) {
        let mut waits: Vec<Outcomes> = Vec::with_capacity(inputs.len());
        let mut local = Vec::new();
        let svc = FunctionsSvc { shared: self.shared.clone() };
        let mut i = 0;
        while i < inputs.len() {
            let first = &inputs[i];
            let same = inputs[i..]
                .iter()
                .take_while(|x| {
                    x.method == first.method
                        && x.params == first.params
                        && x.function_call_id == first.function_call_id
                        && x.trace == first.trace
                })
                .count();
            let group = &inputs[i..i + same];
            i += same;
            if self.cancels.cancelled(&first.function_call_id) {
                // Not run: answered cancelled (run_delivery).
                for _ in group {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send((Some(Outcome::Cancelled), error("InputCancelledError", "cancelled")));
                    waits.push(counted(rx));
                }
                continue;
            }
            let Some(method) = self.method_of(first) else {
                // Final (Lost settles as a reply): no worker of this app version has the method.
                for _ in group {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send((
                        Some(Outcome::Lost),
                        error("InvalidError", format!("class '{}' has no method '{}'", self.def.name, first.method)),
                    ));
                    waits.push(counted(rx));
                }
                continue;
            };
            let params = if first.params.is_empty() {
                crate::params::canonical(&self.def, &[]).unwrap_or_default()
            } else {
                first.params.to_vec()
            };
            let Some(pool) = self.shared.pool(self.index, &params) else {
                for _ in group {
                    let (tx, rx) = oneshot::channel();
                    let _ = tx.send((None, error("Error", "the worker's app was replaced")));
                    waits.push(counted(rx));
                }
                continue;
            };
            let t = first.trace;
            let trace = TraceContext::from_parts(t.trace_id_high, t.trace_id_low, t.span_id, t.flags);
            if first.stream {
                // A generator's input, a web request: each alone, its items sent on as they come.
                for input in group {
                    let (items_tx, items) = mpsc::unbounded_channel();
                    let (settled_tx, settled) = oneshot::channel();
                    let (done, wait) = oneshot::channel();
                    waits.push(Box::pin(wait));
                    let fc = &input.function_call_id;
                    let batch = vec![(input.args.to_vec(), Waiter::Forward(items_tx, settled_tx))];
                    let local_id = svc.submit_many(pool, method, fc.clone(), batch, true, Some(trace));
                    if local_id != 0 {
                        self.running_here(fc, (local_id, local_id), &mut local);
                    }
                    tokio::spawn(forward(
                        self.broker.clone(),
                        self.shared.clone(),
                        self.credits.clone(),
                        self.cancels.clone(),
                        input.clone(),
                        local_id,
                        items,
                        settled,
                        done,
                    ));
                }
                continue;
            }
            let mut batch = Vec::with_capacity(group.len());
            for input in group {
                let (tx, rx) = oneshot::channel();
                waits.push(counted(rx));
                batch.push((input.args.to_vec(), Waiter::Settled(tx)));
            }
            let last = svc.submit_many(pool, method, first.function_call_id.clone(), batch, true, Some(trace));
            // One submission's inputs take consecutive ids, the last returned (0: none taken).
            if last != 0 {
                self.running_here(&first.function_call_id, (last + 1 - group.len() as InputId, last), &mut local);
            }
        }
        (waits, local)
    }

    /// Local inputs `ids` (consecutive) of call `fc` were submitted: noted among `local`, and
    /// where a cancel of the call finds them.
    fn running_here(&self, fc: &str, ids: (InputId, InputId), local: &mut Vec<(String, (InputId, InputId))>) {
        // A cancel heard from now on cancels them where they run.
        self.cancels.started(fc, ids);
        // One heard just before: cancel them now (the other order runs them).
        if self.cancels.cancelled(fc) {
            let _ = self.shared.commands.send(Command::Cancel((ids.0..=ids.1).collect()));
        }
        local.push((fc.to_owned(), ids));
    }
}

/// Where a pulled input's outcome comes, with the count of items it sent (a stream input's;
/// 0 for any other).
type Outcomes = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<((Option<Outcome>, pb::Result), u64), oneshot::error::RecvError>>
            + Send,
    >,
>;

/// An input's outcome, with no items.
fn counted(rx: oneshot::Receiver<(Option<Outcome>, pb::Result)>) -> Outcomes {
    Box::pin(async move { rx.await.map(|r| (r, 0)) })
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

    fn spec(max_containers: u32, max_inputs: u32) -> berth_core::PoolSpec {
        let mut spec = berth_core::PoolSpec::new("f", vec![berth_core::MethodSpec::default()]);
        spec.max_containers = max_containers;
        spec.max_inputs = max_inputs;
        spec
    }

    #[test]
    fn the_window_is_the_containers_room_and_a_round_read_ahead_at_first() {
        let t = Instant::now();
        let mut w = Window::for_pool(&spec(2, 4), t);
        assert_eq!(w.room(), 16, "8 running, 8 read ahead");
        w.take(13);
        assert_eq!(w.room(), 3);
        w.take(3);
        assert_eq!(w.room(), 0);
        assert!(w.release(1, t), "room again after being full");
        assert!(!w.release(1, t), "there was room already");
        assert_eq!((w.held(), w.room()), (14, 2));
        assert_eq!(Window::for_pool(&spec(0, 0), t).room(), 2, "never zero: one running, one ahead");
        assert_eq!(Window::for_pool(&spec(u32::MAX, u32::MAX), t).room(), 2 * berth_nats::broker::MAX_WORKER_ROOM);
        // No more read ahead than the local queue takes (maxPendingInputs).
        let mut small_queue = spec(4, 1);
        small_queue.max_pending = Some(1);
        assert_eq!(Window::for_pool(&small_queue, t).room(), 5);
    }

    #[test]
    fn the_read_ahead_follows_how_fast_inputs_finish() {
        let t = Instant::now();
        let ms = Duration::from_millis;
        let mut w = Window::for_pool(&spec(2, 1), t);
        assert_eq!(w.room(), 4);
        // 2 inputs a millisecond: 25 ms of them is 50, at most 8 rounds of 2 ahead.
        w.take(4);
        for i in 1..=100 {
            w.take(2);
            w.release(2, t + ms(i));
        }
        assert_eq!((w.held(), w.room()), (4, 2 + 16 - 4));
        // 2 inputs a second: one round ahead again.
        w.release(2, t + ms(100) + Duration::from_secs(1));
        assert_eq!((w.held(), w.room()), (2, 2));
        // A pool of long inputs (a second each, 8 at once) keeps one round ahead.
        let mut slow = Window::for_pool(&spec(8, 1), t);
        slow.take(16);
        slow.release(8, t + Duration::from_secs(1));
        assert_eq!(slow.room(), 8);
    }

    #[test]
    fn a_pull_asks_for_no_more_full_messages_than_fit() {
        let t = Instant::now();
        let mut w = Window::for_pool(&spec(1, 1000), t);
        assert_eq!(w.messages(64), 31, "2000 inputs of room: 31 full messages");
        assert_eq!(w.messages(1), 2000);
        w.take(1990);
        assert_eq!(w.messages(64), 1, "some room: one message, however full");
        w.take(10);
        assert_eq!(w.messages(64), 0);
        let mut busy = Window::for_pool(&spec(1, 1), t);
        assert!(!busy.busy());
        busy.take(1);
        busy.settling += 1;
        busy.release(1, t);
        assert!(busy.busy(), "a message still settling");
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
    fn call_ids_name_their_front() {
        let (a, b) = (CallIds("00000000000000aa".into()), CallIds("00000000000000bb".into()));
        let id = a.call_id(7);
        assert_eq!(id, "fc-00000000000000aa-7");
        assert_eq!(a.own_call(&id), Some(7));
        assert!(!a.foreign_call(&id), "its own");
        assert_eq!(b.own_call(&id), None);
        assert!(b.foreign_call(&id), "another front's: B reads its result from the bucket");
        // Not a front's call id at all: neither (GetResult answers NOT_FOUND as before).
        for other in ["fc-7", "fc-nope", "fc-00000000000000aa-x", "fc-0000000000000zzz-1", "fc--1", "x"] {
            assert!(!b.foreign_call(other) && b.own_call(other).is_none(), "{other}");
        }
    }

    #[test]
    fn cancelled_calls_are_remembered_for_a_while_and_up_to_a_bound() {
        let t = Instant::now();
        let mut c = CancelledCalls::default();
        c.insert("fc-1".into(), t);
        c.insert("fc-1".into(), t);
        assert_eq!(c.order.len(), 1, "once");
        c.insert("fc-2".into(), t + CANCEL_MEMORY / 2);
        assert!(c.ids.contains("fc-1") && c.ids.contains("fc-2"));
        // A later cancel forgets those older than CANCEL_MEMORY.
        c.insert("fc-3".into(), t + CANCEL_MEMORY);
        assert!(!c.ids.contains("fc-1") && c.ids.contains("fc-2") && c.ids.contains("fc-3"));
        // Never more than CANCELS_KEPT: the oldest go first.
        let now = t + CANCEL_MEMORY;
        for i in 0..CANCELS_KEPT + 10 {
            c.insert(format!("many-{i}"), now);
        }
        assert_eq!((c.ids.len(), c.order.len()), (CANCELS_KEPT, CANCELS_KEPT));
        assert!(!c.ids.contains("fc-3") && c.ids.contains(&format!("many-{}", CANCELS_KEPT + 9)));
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
