//! Connecting, the pools' streams and consumers, publishing inputs, replying.
//!
//! Through a restart of the NATS server (README "More than one machine"): the client
//! reconnects on its own and subscribes again, but what was on its way is lost — a core
//! publish while disconnected waits in the client's buffer or dies with the old socket, and a
//! JetStream publish's ack never comes (the publish fails "timed out"). So nothing here is sent
//! once and hoped for: an input is published again, with the same `Nats-Msg-Id` (stored once),
//! until the stream acks it ([`PendingPublish::wait`]), and a result is sent again until the
//! front confirms it has it ([`Broker::reply`]), all within a [`Patience`].
use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
    context::{PublishAckFuture, PublishError, PublishErrorKind},
    message::PublishMessage,
    stream::{RetentionPolicy, StorageType},
};
use berth_core::{broker::BrokerNames, PoolSpec};
use bytes::Bytes;
use prost::Message as _;

use crate::{
    envelope::{encode_inputs, encode_results, BrokerInput, BrokerResult},
    error::{Error, ErrorKind},
};

/// How long `connect` waits for a server before it gives up (one attempt, no retry loop).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Messages a subscription (a front's result inbox) buffers before the client drops them as a
/// slow consumer. Core NATS delivers results at most once: a front keeps the inputs it has
/// in flight below this (as the gRPC `Map` bounds its window), so their results always fit.
pub const SUBSCRIPTION_CAPACITY: usize = 1 << 18;

/// Added to a pool's `timeout` for the consumer's `ack_wait`: a worker whose attempt timed out
/// has this long to nak it before JetStream redelivers it on its own.
pub const ACK_WAIT_MARGIN: Duration = Duration::from_secs(5);

/// Deliveries a pool's consumer allows beyond the first attempt and the retries: a worker that
/// dies or is cut off mid-run loses its lease without a word, and JetStream's redelivery is
/// what runs the input elsewhere; each counts as a delivery. As many as the scheduler's
/// reschedules of an input whose container died (`berth_core::MAX_RESCHEDULES`).
pub const LOST_DELIVERIES: i64 = berth_core::MAX_RESCHEDULES as i64;

/// How long publishing and replying keep trying through an unreachable or restarting server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Patience {
    /// A front publishes an input again (same message id) until the stream acks it or this
    /// has passed since the first try; then the caller gets the error.
    pub publish: Duration,
    /// A worker sends a result again until the front confirms it or this has passed.
    pub result: Duration,
    /// A worker gives a result up sooner when no front has been subscribed to its inbox this
    /// long (NATS answers "no responders" at once): that front is gone, and its callers with it.
    pub front_gone: Duration,
    /// Each send of a result waits this long for the front's confirmation before the next.
    pub confirm_wait: Duration,
}

impl Default for Patience {
    /// Two minutes for a server to come back (a restart takes seconds; a rescheduled pod
    /// longer); a front not subscribed for 30 s is gone: after a restart fronts resubscribe
    /// within the client's reconnect backoff (at most 4 s between attempts).
    fn default() -> Self {
        Self {
            publish: Duration::from_secs(120),
            result: Duration::from_secs(120),
            front_gone: Duration::from_secs(30),
            confirm_wait: Duration::from_secs(3),
        }
    }
}

/// The pause before the next try: 100 ms, doubling, at most 2 s.
fn backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(100), Duration::from_secs(2))
}

/// What came back for a result sent by [`Broker::reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Confirm {
    /// The front has it.
    Confirmed,
    /// Nothing is subscribed to the front's inbox (NATS's "no responders" status).
    NoFront,
}

/// A worker's confirmations: each result is sent with the reply subject `<prefix>.<token>`,
/// and fronts answer on `<prefix>.c` with the tokens of many results at once (the
/// [`crate::ResultRouter`] gathers what it read in one go), or on `<prefix>.<token>` alone; NATS
/// answers there with "no responders" when no front listens. One subscription, `<prefix>.*`.
struct Confirms {
    prefix: String,
    next: AtomicU64,
    waiting: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Confirm>>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The subject suffix on which fronts confirm several results at once.
pub const CONFIRM_MANY: &str = "c";

impl Confirms {
    async fn start(client: &async_nats::Client) -> Result<Self, async_nats::SubscribeError> {
        use futures_util::StreamExt as _;
        let prefix = client.new_inbox();
        let mut sub = client.subscribe(format!("{prefix}.*")).await?;
        let waiting: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<Confirm>>>> = Arc::default();
        let w = waiting.clone();
        let many = format!("{prefix}.{CONFIRM_MANY}");
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let mut waiting = w.lock().unwrap_or_else(|e| e.into_inner());
                let mut answer = |token: u64, c: Confirm| {
                    if let Some(tx) = waiting.remove(&token) {
                        let _ = tx.send(c);
                    }
                };
                if msg.subject.as_str() == many {
                    for token in
                        msg.payload.split(|b| *b == b' ').filter_map(|t| std::str::from_utf8(t).ok()?.parse().ok())
                    {
                        answer(token, Confirm::Confirmed);
                    }
                } else if let Some(token) = msg.subject.rsplit('.').next().and_then(|t| t.parse().ok()) {
                    let no_front = msg.status == Some(async_nats::StatusCode::NO_RESPONDERS);
                    answer(token, if no_front { Confirm::NoFront } else { Confirm::Confirmed });
                }
            }
        });
        Ok(Self { prefix, next: AtomicU64::new(1), waiting, task })
    }

    /// A new token and what will come back for it.
    fn expect(&self) -> (u64, tokio::sync::oneshot::Receiver<Confirm>) {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        (token, self.again(token).0)
    }

    /// Waits for `token` again (after a "no responders").
    fn again(&self, token: u64) -> (tokio::sync::oneshot::Receiver<Confirm>, u64) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).insert(token, tx);
        (rx, token)
    }
}

impl Drop for Confirms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Stops waiting for a token when its reply ends, however it ends.
struct Forget<'a>(&'a Confirms, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.1);
    }
}

/// The JetStream settings of one pool, derived from its spec ([`PoolSettings::from_spec`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// How long a pulled message is leased to a worker before JetStream redelivers it
    /// (extended by each `progress`).
    pub ack_wait: Duration,
    /// Deliveries of one message at most: the first attempt, the retries, and
    /// [`LOST_DELIVERIES`] for workers lost mid-run.
    pub max_deliver: i64,
    /// Messages the pool's workers hold unacked at most, all workers together: a bound for the
    /// server's bookkeeping, not a scheduling rule (each worker bounds what it holds itself,
    /// berth-server's `Window`).
    pub max_ack_pending: i64,
    /// Identifies the app's code and config (the caller computes it, e.g. a hash of the
    /// bundle); written into the stream's description with berth's version. A stream whose
    /// description differs was made by another app version and is refused.
    pub fingerprint: String,
}

impl PoolSettings {
    /// `ack_wait` from the pool's `timeout` (plus [`ACK_WAIT_MARGIN`]), `max_deliver` from its
    /// retries (`max_retries + 1 + LOST_DELIVERIES`), `max_ack_pending` from what its workers
    /// hold: [`WORKERS_AT_FULL_WINDOW`] workers, each holding its containers' room
    /// ([`worker_room`]) and the most it reads ahead ([`max_read_ahead`]; one message holds at
    /// least one input).
    pub fn from_spec(spec: &PoolSpec, fingerprint: impl Into<String>) -> Self {
        let window = i64::try_from(worker_room(spec) + max_read_ahead(spec)).unwrap_or(i64::MAX);
        Self {
            ack_wait: spec.timeout.saturating_add(ACK_WAIT_MARGIN),
            max_deliver: i64::from(spec.retries.max_retries) + 1 + LOST_DELIVERIES,
            max_ack_pending: window.saturating_mul(WORKERS_AT_FULL_WINDOW),
            fingerprint: fingerprint.into(),
        }
    }
}

/// Workers of one pool that may each hold a full window (their containers' room and the read
/// ahead) before the consumer's `max_ack_pending` is reached. More workers still work: a pull
/// the server cannot fill at once stays open until others settle (`Worker::pull_each`).
pub const WORKERS_AT_FULL_WINDOW: i64 = 16;

/// A worker's containers' room at most, whatever `maxContainers × maxInputs` says.
pub const MAX_WORKER_ROOM: usize = 4096;

/// Inputs in one message at most ([`inputs_per_message`]). The berth-nats throughput example
/// (`examples/throughput.rs`) measured about 55,000 no-op inputs/s end to end with one input
/// per message, where nats-server's work per message is the bound, and 224,000-344,000 with
/// 32; more per message gains little and makes a redelivery after a lost worker larger.
pub const MAX_INPUTS_PER_MESSAGE: usize = 64;

/// Payload bytes of one message at most, the inputs' arguments included; an input larger
/// than this goes alone (up to the server's `max_payload`, 1 MiB by default).
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// What one worker's containers run at once: `maxContainers` containers of `maxInputs` inputs
/// each, or of a batch of a `@batched()` method's `maxBatchSize` when that is larger; at least
/// 1, at most [`MAX_WORKER_ROOM`]. `maxContainers` is per worker in broker mode: each worker
/// scales its own containers within it.
pub fn worker_room(spec: &PoolSpec) -> usize {
    let batch = spec.methods.iter().filter_map(|m| m.batching.map(|b| b.max_batch_size)).max().unwrap_or(1);
    let per_container = spec.max_inputs.max(batch).max(1) as usize;
    (spec.max_containers.max(1) as usize).saturating_mul(per_container).min(MAX_WORKER_ROOM)
}

/// Rounds of its containers' room a worker reads ahead at most, when its inputs are short.
pub const READ_AHEAD_ROUNDS: usize = 8;

/// Inputs a worker may hold beyond its containers' room at most: [`READ_AHEAD_ROUNDS`] times
/// [`worker_room`], at most [`MAX_WORKER_ROOM`] and the pool's `maxPendingInputs` (the local
/// queue would refuse more). How much of it a worker uses depends on how fast its inputs finish
/// (berth-server's `Window`).
pub fn max_read_ahead(spec: &PoolSpec) -> usize {
    let room = worker_room(spec);
    let pending = spec.max_pending.map_or(usize::MAX, |p| p as usize);
    room.saturating_mul(READ_AHEAD_ROUNDS).min(MAX_WORKER_ROOM).min(pending)
}

/// How many inputs of the pool a front puts in one message at most: what one worker runs at
/// once ([`worker_room`]), at most [`MAX_INPUTS_PER_MESSAGE`]. So a message's inputs start
/// together on the worker that pulled it, none waits there behind another of its message while
/// other workers are idle, and a lost worker's message redelivers at most one round of work.
pub fn inputs_per_message(spec: &PoolSpec) -> usize {
    worker_room(spec).min(MAX_INPUTS_PER_MESSAGE)
}

/// What `ensure_pool` writes into a stream's description, and expects to find there.
pub fn stream_description(app: &str, fingerprint: &str) -> String {
    format!("berth {} app={app} fingerprint={fingerprint}", env!("CARGO_PKG_VERSION"))
}

/// A connection to a NATS server with JetStream.
#[derive(Clone)]
pub struct Broker {
    url: String,
    client: async_nats::Client,
    js: jetstream::Context,
    patience: Patience,
    /// Where fronts confirm this connection's results; made on the first [`Broker::reply`].
    confirms: Arc<tokio::sync::OnceCell<Confirms>>,
}

impl Broker {
    /// Connects to `url` (e.g. `nats://127.0.0.1:4222`). Fails within [`CONNECT_TIMEOUT`] and a
    /// little when nothing answers (one attempt at start: no endless reconnect loop; once
    /// connected, the client reconnects on its own), and refuses a server without JetStream.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let unreachable = |why: String| {
            Error::new(
                ErrorKind::Unreachable,
                format!(
                    "NATS broker at {url} is unreachable ({why}); start one with `nats-server -js` or pass the right --broker URL"
                ),
            )
        };
        let logged_url = url.to_string();
        let options = async_nats::ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .name("berth")
            .event_callback(move |event| {
                let url = logged_url.clone();
                async move {
                    match event {
                        async_nats::Event::SlowConsumer(sid) => tracing::warn!(
                            %url, subscription = sid,
                            "NATS: messages dropped on a subscription that fell behind (results lost if it is a result inbox); keep fewer inputs in flight per front"
                        ),
                        async_nats::Event::Connected => tracing::info!(%url, "NATS: connected"),
                        // This process closed it (it is stopping): nothing to report.
                        async_nats::Event::Closed => tracing::debug!(%url, "NATS: closed"),
                        other => tracing::warn!(%url, event = %other, "NATS"),
                    }
                }
            });
        let client = match tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), options.connect(url)).await {
            Err(_) => return Err(unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs()))),
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Ok(Ok(c)) => c,
        };
        if !client.server_info().jetstream {
            return Err(Error::new(
                ErrorKind::NoJetStream,
                format!(
                    "NATS server at {url} (version {}) has no JetStream; berth's broker mode needs it: start nats-server with -js (e.g. `nats-server -js -sd /var/lib/nats`)",
                    client.server_info().version
                ),
            ));
        }
        let js = jetstream::new(client.clone());
        Ok(Self { url: url.to_string(), client, js, patience: Patience::default(), confirms: Arc::default() })
    }

    /// The same connection, keeping on for `patience` through an unreachable server.
    pub fn with_patience(mut self, patience: Patience) -> Self {
        self.patience = patience;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The core NATS client (replies, inboxes).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Creates the pool's work-queue stream and durable consumer, or verifies the ones there.
    /// One that exists with other settings, or that another app version made (its
    /// description differs), is refused with an error naming it and the fix: it is never
    /// reconfigured under workers that may be running.
    pub async fn ensure_pool(&self, app: &str, names: &BrokerNames, settings: &PoolSettings) -> Result<(), Error> {
        let description = stream_description(app, &settings.fingerprint);
        let wanted = jetstream::stream::Config {
            name: names.stream.clone(),
            subjects: vec![names.subject.clone()],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            description: Some(description.clone()),
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        let stream = match self.js.get_stream(&names.stream).await {
            Ok(mut s) => {
                let info = s.info().await.map_err(|e| Error::request(format!("reading stream {}", names.stream), e))?;
                let have = &info.config;
                let mut diffs = Vec::new();
                if have.description.as_deref() != Some(description.as_str()) {
                    diffs.push(format!(
                        "it was made by {:?}, this is {description:?}",
                        have.description.as_deref().unwrap_or("something other than berth")
                    ));
                }
                if have.subjects != wanted.subjects {
                    diffs.push(format!("its subjects are {:?}, not {:?}", have.subjects, wanted.subjects));
                }
                if have.retention != wanted.retention {
                    diffs.push(format!("its retention is {:?}, not WorkQueue", have.retention));
                }
                if have.storage != wanted.storage {
                    diffs.push(format!("its storage is {:?}, not File", have.storage));
                }
                if !diffs.is_empty() {
                    return Err(conflict_stream(&names.stream, &diffs));
                }
                s
            }
            Err(e) if is_not_found(&e) => self
                .js
                .create_stream(wanted)
                .await
                .map_err(|e| Error::request(format!("creating stream {}", names.stream), e))?,
            Err(e) => return Err(Error::request(format!("looking up stream {}", names.stream), e)),
        };
        let wanted = pull::Config {
            durable_name: Some(names.consumer.clone()),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: settings.ack_wait,
            max_deliver: settings.max_deliver,
            max_ack_pending: settings.max_ack_pending,
            ..Default::default()
        };
        match stream.consumer_info(&names.consumer).await {
            Ok(info) => {
                let have = &info.config;
                let mut diffs = Vec::new();
                if have.ack_policy != AckPolicy::Explicit {
                    diffs.push(format!("its ack policy is {:?}, not Explicit", have.ack_policy));
                }
                if have.ack_wait != wanted.ack_wait {
                    diffs.push(format!("its ack_wait is {:?}, the pool's is {:?}", have.ack_wait, wanted.ack_wait));
                }
                if have.max_deliver != wanted.max_deliver {
                    diffs
                        .push(format!("its max_deliver is {}, the pool's is {}", have.max_deliver, wanted.max_deliver));
                }
                if have.max_ack_pending != wanted.max_ack_pending {
                    diffs.push(format!(
                        "its max_ack_pending is {}, the pool's is {}",
                        have.max_ack_pending, wanted.max_ack_pending
                    ));
                }
                if !have.filter_subject.is_empty() && have.filter_subject != names.subject {
                    diffs.push(format!("it filters {:?}", have.filter_subject));
                }
                if !diffs.is_empty() {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        format!(
                            "consumer {} of stream {} exists with other settings ({}); berth does not reconfigure it under running workers: stop them and run `nats consumer rm {} {}`, then start again",
                            names.consumer,
                            names.stream,
                            diffs.join("; "),
                            names.stream,
                            names.consumer
                        ),
                    ));
                }
            }
            Err(e) if is_consumer_not_found(&e) => {
                stream.create_consumer(wanted).await.map_err(|e| {
                    Error::request(format!("creating consumer {} of {}", names.consumer, names.stream), e)
                })?;
            }
            Err(e) => {
                return Err(Error::request(format!("looking up consumer {} of {}", names.consumer, names.stream), e))
            }
        }
        Ok(())
    }

    /// Deletes the pool's stream (and so its consumer and pending inputs). `Ok(false)` when
    /// there was none. What `nats stream rm` does; for tests and a future replace flag.
    pub async fn remove_pool(&self, names: &BrokerNames) -> Result<bool, Error> {
        match self.js.delete_stream(&names.stream).await {
            Ok(s) => Ok(s.success),
            Err(e) if e.to_string().contains("stream not found") => Ok(false),
            Err(e) => Err(Error::request(format!("deleting stream {}", names.stream), e)),
        }
    }

    /// Publishes one input as a message of its own, `Nats-Msg-Id` = its input id (JetStream
    /// drops a republish of it within the stream's duplicate window), and waits for the
    /// stream's ack. Returns the stream sequence.
    pub async fn publish_input(&self, names: &BrokerNames, input: BrokerInput) -> Result<u64, Error> {
        self.start_publish(names, vec![input]).await?.wait().await
    }

    /// Publishes one message holding `inputs` (one, or several sharing one lease: see
    /// [`crate::envelope`]) without waiting for the stream's ack: await the returned
    /// [`PendingPublish`] for it (which publishes again until the stream has it). Many can be in
    /// flight at once, which is what makes a `.map()` fast. The `Nats-Msg-Id` is the input id
    /// for one input, and the first input's id and the count for several; for inputs
    /// republished with attempts spent ([`crate::Input::republished`]), the first one's spent
    /// attempts too, so that the stream's duplicate window does not take a retry for the
    /// original publish.
    pub async fn start_publish(&self, names: &BrokerNames, inputs: Vec<BrokerInput>) -> Result<PendingPublish, Error> {
        self.start_publish_on(&names.subject, inputs).await
    }

    /// [`Self::start_publish`] on a pool's `subject`.
    pub(crate) async fn start_publish_on(
        &self,
        subject: &str,
        inputs: Vec<BrokerInput>,
    ) -> Result<PendingPublish, Error> {
        let Some(first) = inputs.first() else {
            return Err(Error::new(ErrorKind::Request, "publish_input: no input to publish"));
        };
        let mut msg_id = first.input_id.clone();
        if inputs.len() > 1 {
            msg_id = format!("{msg_id}+{}", inputs.len());
        }
        if first.attempt > 0 {
            msg_id = format!("{msg_id}@{}", first.attempt);
        }
        let n = inputs.len();
        let mut pending = PendingPublish {
            js: self.js.clone(),
            subject: subject.to_string(),
            payload: encode_inputs(inputs),
            msg_id,
            n,
            since: Instant::now(),
            patience: self.patience.publish,
            sent: None,
        };
        pending.send().await?;
        Ok(pending)
    }

    /// Sends `result` to the caller's reply inbox and waits until the front confirms it has it
    /// (its [`crate::ResultRouter`] answers each result), sending it again while it does not:
    /// a core NATS message is delivered at most once, and one sent while the front or this
    /// worker is reconnecting, or that overflows the front's inbox, is lost. Ack the input only
    /// after this: an input acked whose result was lost would leave its caller waiting for ever.
    /// `lease`, the input's, is kept alive meanwhile. An error when the front did not confirm
    /// within the [`Patience`] (no front subscribed to the inbox for `front_gone`: it is gone).
    pub async fn reply(&self, reply: &str, result: &BrokerResult, lease: Option<&crate::Lease>) -> Result<(), Error> {
        let what = format!("input {}", result.input_id);
        self.send_confirmed(reply, Bytes::from(result.encode_to_vec()), &what, lease).await
    }

    /// Sends several results to one reply inbox in one message ([`crate::envelope::encode_results`]),
    /// as [`Self::reply`] sends one: what a worker does with the results of one delivery that go
    /// to the same front. The front confirms the message once, for all of them.
    pub async fn reply_many(
        &self,
        reply: &str,
        results: Vec<BrokerResult>,
        lease: Option<&crate::Lease>,
    ) -> Result<(), Error> {
        let what = match results.as_slice() {
            [one] => format!("input {}", one.input_id),
            [first, ..] => format!("{} inputs from {}", results.len(), first.input_id),
            [] => return Ok(()),
        };
        self.send_confirmed(reply, encode_results(results), &what, lease).await
    }

    /// Sends a stream input's items to its reply inbox as [`Self::reply`] sends a result: again
    /// until the front confirms it has them (the front drops what it has already, by position).
    /// Send the next ones, and the result, only after.
    pub async fn send_items(
        &self,
        reply: &str,
        chunk: crate::envelope::StreamChunk,
        lease: Option<&crate::Lease>,
    ) -> Result<(), Error> {
        let what = format!("{} items of input {}", chunk.values.len(), chunk.input_id);
        self.send_confirmed(reply, crate::envelope::encode_chunk(chunk), &what, lease).await
    }

    /// A subject of this connection's own for fronts' credit for its stream inputs, and the
    /// credits as they come (core NATS: one lost is made good by the next, a total).
    pub async fn credit_inbox(
        &self,
    ) -> Result<(String, impl futures_util::Stream<Item = crate::envelope::BrokerCredit> + Send + 'static), Error> {
        use futures_util::StreamExt as _;
        let inbox = self.client.new_inbox();
        let sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::request("subscribing to stream credit", e))?;
        Ok((inbox, sub.filter_map(|m| async move { crate::envelope::decode_credit(&m.payload).ok() })))
    }

    /// Tells the worker at `to` that the caller of stream input `input_id` has taken `taken`
    /// of attempt `attempt`'s items in all.
    pub async fn send_credit(&self, to: &str, input_id: &str, attempt: u32, taken: u64) -> Result<(), Error> {
        self.client
            .publish(to.to_owned(), crate::envelope::encode_credit(input_id, attempt, taken))
            .await
            .map_err(|e| Error::request("publishing stream credit", e))
    }

    /// `payload` (the result of `what`) to `reply`, sent again until the front confirms it.
    async fn send_confirmed(
        &self,
        reply: &str,
        payload: Bytes,
        what: &str,
        lease: Option<&crate::Lease>,
    ) -> Result<(), Error> {
        let p = self.patience;
        let confirms = self
            .confirms
            .get_or_try_init(|| Confirms::start(&self.client))
            .await
            .map_err(|e| Error::request("subscribing to result confirmations", e))?;
        let (token, mut confirmed) = confirms.expect();
        let _forget = Forget(confirms, token);
        let to = format!("{}.{token}", confirms.prefix);
        let since = Instant::now();
        let mut unheard: Option<Instant> = None;
        let mut pause = Duration::ZERO;
        loop {
            // The send waits while the client reconnects (its buffer full): bounded too. A
            // late confirmation of an earlier send counts (the same token).
            let sent = tokio::time::timeout(p.confirm_wait, async {
                self.client
                    .publish_with_reply(reply.to_string(), to.clone(), payload.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::time::timeout(p.confirm_wait, &mut confirmed)
                    .await
                    .map_err(|_| "no confirmation in time".to_string())
            })
            .await;
            let why = match sent {
                Ok(Ok(Ok(Confirm::Confirmed))) => return Ok(()),
                Ok(Ok(Ok(Confirm::NoFront))) => {
                    let first = *unheard.get_or_insert_with(Instant::now);
                    if first.elapsed() >= p.front_gone {
                        return Err(Error::new(
                            ErrorKind::Request,
                            format!(
                                "NATS: no front has listened on {reply} for {} s: the front that published {what} is gone, and the result with it",
                                p.front_gone.as_secs(),
                            ),
                        ));
                    }
                    (confirmed, _) = confirms.again(token);
                    "no responders".to_string()
                }
                Ok(Ok(Err(_))) => return Err(Error::new(ErrorKind::Request, "NATS: the connection closed")),
                Ok(Err(why)) => {
                    unheard = None;
                    why
                }
                Err(_) => {
                    unheard = None;
                    "no confirmation in time".to_string()
                }
            };
            if since.elapsed() >= p.result {
                return Err(Error::request(
                    format!(
                        "sending the result of {what} to {reply} (no confirmation within {} s)",
                        p.result.as_secs()
                    ),
                    why,
                ));
            }
            tracing::debug!(what, %reply, why, "result not confirmed; sending it again");
            if let Some(lease) = lease {
                // Errors here are the same unreachable server: the next send reports it.
                let _ = lease.progress().await;
            }
            pause = backoff(pause);
            tokio::time::sleep(pause).await;
        }
    }

    /// Tells `app`'s workers that calls `function_call_ids` were cancelled (core NATS, at most
    /// once: a worker reconnecting at that moment does not hear it, and runs those inputs).
    pub async fn cancel_calls(&self, app: &str, function_call_ids: &[String]) -> Result<(), Error> {
        let payload = Bytes::from(function_call_ids.join(" "));
        self.client
            .publish(berth_core::broker::cancel_subject(app), payload)
            .await
            .map_err(|e| Error::request("publishing a cancel", e))
    }

    /// The calls of `app` fronts cancel from now on ([`Self::cancel_calls`]), as they come.
    pub async fn cancelled_calls(
        &self,
        app: &str,
    ) -> Result<impl futures_util::Stream<Item = Vec<String>> + Send + 'static, Error> {
        use futures_util::StreamExt as _;
        let sub = self
            .client
            .subscribe(berth_core::broker::cancel_subject(app))
            .await
            .map_err(|e| Error::request("subscribing to cancels", e))?;
        Ok(sub.map(|m| {
            String::from_utf8_lossy(&m.payload).split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect()
        }))
    }

    /// Waits until the server has seen everything this connection sent (acks, replies).
    pub async fn flush(&self) -> Result<(), Error> {
        self.client.flush().await.map_err(|e| Error::request("flushing", e))
    }

    /// A worker of the pool: pulls from its durable consumer (made by [`Self::ensure_pool`]).
    pub async fn worker(&self, names: &BrokerNames) -> Result<crate::Worker, Error> {
        let stream = self
            .js
            .get_stream(&names.stream)
            .await
            .map_err(|e| Error::request(format!("opening stream {} (run ensure_pool first)", names.stream), e))?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(&names.consumer)
            .await
            .map_err(|e| Error::request(format!("opening consumer {} of {}", names.consumer, names.stream), e))?;
        Ok(crate::Worker::new(consumer, names.stream.clone(), names.subject.clone()))
    }
}

/// A publish whose stream ack has not been awaited yet. It keeps the message to publish it
/// again (same `Nats-Msg-Id`: the stream stores it once) when the ack does not come.
pub struct PendingPublish {
    js: jetstream::Context,
    subject: String,
    payload: Bytes,
    msg_id: String,
    n: usize,
    since: Instant,
    patience: Duration,
    /// The last send's ack to come, or why the send failed.
    sent: Option<Result<PublishAckFuture, PublishError>>,
}

/// A publish error that a later try may not have: the server unreachable or restarting (no
/// ack in time, no responders while JetStream recovers its streams, a connection gone).
fn worth_retrying(kind: PublishErrorKind) -> bool {
    !matches!(
        kind,
        PublishErrorKind::MaxPayloadExceeded
            | PublishErrorKind::WrongLastMessageId
            | PublishErrorKind::WrongLastSequence
    )
}

impl PendingPublish {
    /// Sends the message; an error only when trying again cannot help.
    async fn send(&mut self) -> Result<(), Error> {
        let message = PublishMessage::build().payload(self.payload.clone()).message_id(&self.msg_id);
        match self.js.send_publish(self.subject.clone(), message).await {
            Err(e) if !worth_retrying(e.kind()) => Err(self.failed(e)),
            sent => {
                self.sent = Some(sent);
                Ok(())
            }
        }
    }

    fn failed(&self, e: impl std::fmt::Display) -> Error {
        Error::request(format!("publishing {} input(s) to {}", self.n, self.subject), e)
    }

    /// The stream's ack: the message's sequence (the original's for a dropped duplicate). A
    /// send that failed, or whose ack did not come, is sent again, with a pause growing to 2 s,
    /// until the stream acks it or the publish [`Patience`] since the first send has passed.
    pub async fn wait(mut self) -> Result<u64, Error> {
        let mut pause = Duration::ZERO;
        loop {
            let e = match self.sent.take() {
                Some(Ok(ack)) => match ack.await {
                    Ok(ack) => return Ok(ack.sequence),
                    Err(e) => e,
                },
                Some(Err(e)) => e,
                None => return Err(self.failed("nothing was sent")),
            };
            if !worth_retrying(e.kind()) || self.since.elapsed() >= self.patience {
                return Err(self.failed(e));
            }
            if pause.is_zero() {
                tracing::warn!(subject = %self.subject, msg_id = %self.msg_id, error = %e, "NATS: publish not acknowledged; sending it again (the same message id is stored once)");
            }
            pause = backoff(pause);
            tokio::time::sleep(pause).await;
            self.send().await?;
        }
    }
}

fn conflict_stream(stream: &str, diffs: &[String]) -> Error {
    Error::new(
        ErrorKind::Conflict,
        format!(
            "stream {stream} exists but does not match this app ({}); berth does not reconfigure it under running workers: once its inputs are drained, remove it with `nats stream rm {stream}` (its pending inputs are lost), then start again",
            diffs.join("; ")
        ),
    )
}

pub(crate) fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
        if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
}

fn is_consumer_not_found(e: &jetstream::context::ConsumerInfoError) -> bool {
    use jetstream::context::ConsumerInfoErrorKind as K;
    match e.kind() {
        K::NotFound => true,
        K::JetStream(j) => j.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use berth_core::{MethodSpec, RetryPolicy};

    use super::*;

    #[test]
    fn settings_follow_the_pool() {
        let mut spec = PoolSpec::new("Embedder", vec![MethodSpec { batching: None, no_retries: false }]);
        spec.timeout = Duration::from_secs(60);
        spec.retries = RetryPolicy::fixed(3).expect("valid");
        spec.max_containers = 4;
        spec.max_inputs = 8;
        let s = PoolSettings::from_spec(&spec, "fp");
        assert_eq!(s.ack_wait, Duration::from_secs(65));
        assert_eq!(s.max_deliver, 4 + LOST_DELIVERIES);
        // 16 workers, each with its 4 × 8 running and up to 8 times as many read ahead.
        assert_eq!(s.max_ack_pending, 16 * 9 * 32);
        assert_eq!((worker_room(&spec), inputs_per_message(&spec)), (32, 32));
        spec.max_inputs = 1000;
        assert_eq!((worker_room(&spec), inputs_per_message(&spec)), (4000, MAX_INPUTS_PER_MESSAGE));
        spec.max_inputs = 5000;
        assert_eq!(worker_room(&spec), MAX_WORKER_ROOM);
        // A @batched() method's containers take a batch each.
        spec.max_inputs = 1;
        spec.max_containers = 3;
        spec.methods.push(MethodSpec {
            batching: Some(berth_core::Batching::new(16, Duration::ZERO).expect("valid")),
            no_retries: false,
        });
        assert_eq!((worker_room(&spec), inputs_per_message(&spec)), (48, 48));
        // Default spec: one container of one input: one input per message.
        assert_eq!(inputs_per_message(&PoolSpec::new("f", vec![MethodSpec::default()])), 1);
        assert_eq!(s.fingerprint, "fp");
        let d = stream_description("my-app", "fp");
        assert!(d.starts_with("berth ") && d.ends_with(" app=my-app fingerprint=fp"), "{d}");
    }
}
