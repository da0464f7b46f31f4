//! The front side of results: exactly one result delivered per input.
//!
//! A worker sends each attempt's result to the input's reply inbox (core NATS). JetStream
//! delivers at least once, so an input can produce more than one result: a worker that was
//! slow past `ack_wait` still finishes after the redelivery ran it again. The front keeps
//! only the first result per input id and drops the later ones ([`ResultTable`], a pure
//! structure tested apart from NATS; [`ResultRouter`] feeds it from the inbox).
//!
//! Core NATS delivers a result at most once: one published while the front or the worker is
//! disconnected (a NATS restart), or past the inbox's buffer
//! ([`crate::broker::SUBSCRIPTION_CAPACITY`], logged as a slow consumer), is lost. So each
//! result comes with a reply subject, and the router confirms it once the result is in its
//! table, duplicates and results of inputs it does not know included — one message per worker
//! connection for all the results it read in one go; the worker sends it again until confirmed
//! and acks the input only then ([`Broker::reply`]). A result the
//! front never confirmed therefore leaves its input in the stream, never acked and lost. A
//! front still bounds the inputs it has in flight (a `.map()` window, as the gRPC `Map` has)
//! below that buffer: a lost result costs a resend after the worker's `confirm_wait`.
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{FutureExt as _, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::{
    broker::Broker,
    envelope::{decode_chunk, decode_results, BrokerResult, StreamChunk},
    error::Error,
};

/// Stream inputs' items, by input id: where the router hands each [`StreamChunk`] it reads.
type Streams = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<StreamChunk>>>>;

/// What [`ResultTable::offer`] did with a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// The first result of a registered input: handed to its waiter.
    Delivered,
    /// The input already had its result: dropped.
    Duplicate,
    /// No such input is waiting (never registered, given up, or its record expired): dropped.
    Unknown,
}

enum Slot {
    Waiting(oneshot::Sender<BrokerResult>),
    Done,
}

/// Inputs waiting for their result, and those that have had it (kept `keep` long, and at most
/// [`DONE_KEPT`] of them, so late duplicates are recognised, then forgotten).
pub struct ResultTable {
    slots: HashMap<String, Slot>,
    done: VecDeque<(Instant, String)>,
    keep: Duration,
}

impl ResultTable {
    pub fn new(keep: Duration) -> Self {
        Self { slots: HashMap::new(), done: VecDeque::new(), keep }
    }

    /// Waits for `input_id`'s result. A second registration of the same id replaces the first
    /// (whose receiver then sees the sender dropped).
    pub fn register(&mut self, input_id: impl Into<String>) -> oneshot::Receiver<BrokerResult> {
        let (tx, rx) = oneshot::channel();
        self.slots.insert(input_id.into(), Slot::Waiting(tx));
        rx
    }

    /// Stops waiting for `input_id` (the caller gave up); a result arriving later is Unknown.
    pub fn forget(&mut self, input_id: &str) {
        if matches!(self.slots.get(input_id), Some(Slot::Waiting(_))) {
            self.slots.remove(input_id);
        }
    }

    /// Delivers `result` if it is its input's first, at time `now`.
    pub fn offer(&mut self, result: BrokerResult, now: Instant) -> Offered {
        self.prune(now);
        match self.slots.get_mut(&result.input_id) {
            None => Offered::Unknown,
            Some(Slot::Done) => Offered::Duplicate,
            Some(slot) => {
                let id = result.input_id.clone();
                if let Slot::Waiting(tx) = std::mem::replace(slot, Slot::Done) {
                    // A receiver dropped meanwhile does not make the result a second one.
                    let _ = tx.send(result);
                }
                self.done.push_back((now, id));
                Offered::Delivered
            }
        }
    }

    /// Inputs waiting for a result.
    pub fn waiting(&self) -> usize {
        self.slots.len() - self.done.len()
    }

    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.done.front() {
            if now.saturating_duration_since(*at) < self.keep && self.done.len() <= DONE_KEPT {
                break;
            }
            if let Some((_, id)) = self.done.pop_front() {
                if matches!(self.slots.get(&id), Some(Slot::Done)) {
                    self.slots.remove(&id);
                }
            }
        }
    }
}

/// How long a delivered input's id is remembered to drop late duplicates: longer than any
/// pool's `ack_wait` plus a retry delay is enough in practice; a duplicate later than this is
/// dropped anyway, as Unknown.
pub const DEFAULT_KEEP: Duration = Duration::from_secs(600);

/// Delivered inputs remembered at most, the oldest forgotten first: a front answering 80,000
/// inputs a second would otherwise hold 48 million ids for [`DEFAULT_KEEP`]. Remembering only
/// tells a late duplicate from an unknown result; both are dropped (and confirmed) alike.
pub const DONE_KEPT: usize = 65_536;

/// Results read at most before their confirmations go out.
const CONFIRM_BATCH: usize = 4096;

/// A front's inbox: one core NATS subscription receiving the results of all its inputs.
pub struct ResultRouter {
    inbox: String,
    table: Arc<Mutex<ResultTable>>,
    streams: Streams,
    task: tokio::task::JoinHandle<()>,
}

impl ResultRouter {
    /// Subscribes to a fresh inbox of `broker`'s connection.
    pub async fn start(broker: &Broker) -> Result<Self, Error> {
        let inbox = broker.client().new_inbox();
        let mut sub = broker
            .client()
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::request(format!("subscribing to the result inbox {inbox}"), e))?;
        let table = Arc::new(Mutex::new(ResultTable::new(DEFAULT_KEEP)));
        let t = table.clone();
        let streams: Streams = Arc::default();
        let s = streams.clone();
        let client = broker.client().clone();
        let task = tokio::spawn(async move {
            // Confirmations gathered over what the inbox holds at once: one message per
            // worker connection rather than one per result (`Broker::reply`).
            let mut confirms: HashMap<String, Vec<u8>> = HashMap::new();
            while let Some(msg) = sub.next().await {
                let (mut next, mut read) = (Some(msg), 0);
                while let Some(msg) = next.take() {
                    Self::take(&t, &s, msg, &mut confirms);
                    read += 1;
                    if read < CONFIRM_BATCH {
                        next = sub.next().now_or_never().flatten();
                    }
                }
                for (prefix, tokens) in confirms.drain() {
                    let to = format!("{prefix}.{}", crate::broker::CONFIRM_MANY);
                    if let Err(e) = client.publish(to, tokens.into()).await {
                        tracing::debug!(error = %e, "result confirmations not sent");
                    }
                }
            }
        });
        Ok(Self { inbox, table, streams, task })
    }

    /// Offers one message of the inbox to the table, and notes its confirmation: every result
    /// read is confirmed, whatever the table did with it, so that the worker may ack the input.
    /// A confirmation lost (a reconnect) makes the worker send the result again, confirmed as
    /// a duplicate then.
    fn take(
        table: &Mutex<ResultTable>,
        streams: &Mutex<HashMap<String, mpsc::UnboundedSender<StreamChunk>>>,
        msg: async_nats::Message,
        confirms: &mut HashMap<String, Vec<u8>>,
    ) {
        // A stream input's items (confirmed as results are: the worker sends its next ones, or
        // its result, only after), or one result, or several of one worker's delivery
        // (crate::envelope): confirmed together.
        match decode_chunk(&msg.payload) {
            Ok(Some(chunk)) => {
                let streams = streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                // None waiting (given up, or the items of an attempt after the end): dropped.
                if let Some(to) = streams.get(&chunk.input_id) {
                    let _ = to.send(chunk);
                }
                drop(streams);
                Self::confirm(&msg, confirms);
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "dropped a message on the result inbox");
                return;
            }
        }
        let results = match decode_results(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(subject = %msg.subject, error = %e, "dropped a message on the result inbox");
                return;
            }
        };
        {
            let mut table = table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            for result in results {
                let dropped =
                    tracing::enabled!(tracing::Level::DEBUG).then(|| (result.input_id.clone(), result.attempt));
                let offered = table.offer(result, now);
                if let Some((id, attempt)) = dropped.filter(|_| offered != Offered::Delivered) {
                    tracing::debug!(input = %id, attempt, ?offered, "result dropped");
                }
            }
        }
        Self::confirm(&msg, confirms);
    }

    /// Notes `msg`'s confirmation, sent with the others read at once.
    fn confirm(msg: &async_nats::Message, confirms: &mut HashMap<String, Vec<u8>>) {
        // `<prefix>.<token>`: the token joins the prefix's list.
        if let Some((prefix, token)) = msg.reply.as_deref().and_then(|r| r.rsplit_once('.')) {
            let tokens = confirms.entry(prefix.to_string()).or_default();
            if !tokens.is_empty() {
                tokens.push(b' ');
            }
            tokens.extend_from_slice(token.as_bytes());
        }
    }

    /// The subject to put in inputs' `reply`.
    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    /// Waits for `input_id`'s first result. Register before publishing the input.
    pub fn register(&self, input_id: impl Into<String>) -> oneshot::Receiver<BrokerResult> {
        self.with_table(|t| t.register(input_id))
    }

    /// Stops waiting for `input_id`.
    pub fn forget(&self, input_id: &str) {
        self.with_table(|t| t.forget(input_id));
    }

    /// The items of stream input `input_id`, as they come, in the order its worker sent them
    /// (each message confirmed once read, as results are). Register before publishing the
    /// input, with [`Self::register`] for its result, which comes after its items.
    pub fn register_stream(&self, input_id: impl Into<String>) -> mpsc::UnboundedReceiver<StreamChunk> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(input_id.into(), tx);
        rx
    }

    /// Stops taking `input_id`'s items (its stream ended).
    pub fn forget_stream(&self, input_id: &str) {
        self.streams.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(input_id);
    }

    fn with_table<T>(&self, f: impl FnOnce(&mut ResultTable) -> T) -> T {
        match self.table.lock() {
            Ok(mut t) => f(&mut t),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
}

impl Drop for ResultRouter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(id: &str, attempt: u32) -> BrokerResult {
        BrokerResult::value(id, attempt, vec![attempt as u8])
    }

    #[test]
    fn first_result_per_input_is_delivered_and_later_ones_dropped() {
        let now = Instant::now();
        let mut t = ResultTable::new(Duration::from_secs(60));
        let mut a = t.register("a");
        let mut b = t.register("b");
        assert_eq!(t.waiting(), 2);
        // Attempt 2 (after a redelivery) finishes first: it is the one delivered.
        assert_eq!(t.offer(r("a", 2), now), Offered::Delivered);
        assert_eq!(t.offer(r("a", 1), now), Offered::Duplicate);
        assert_eq!(t.offer(r("a", 2), now), Offered::Duplicate);
        assert_eq!(a.try_recv().expect("a's result").attempt, 2);
        assert!(b.try_recv().is_err());
        assert_eq!(t.offer(r("b", 1), now), Offered::Delivered);
        assert_eq!(b.try_recv().expect("b's result").attempt, 1);
        assert_eq!(t.offer(r("zzz", 1), now), Offered::Unknown);
        assert_eq!(t.waiting(), 0);
    }

    #[test]
    fn delivered_ids_are_forgotten_after_keep() {
        let now = Instant::now();
        let mut t = ResultTable::new(Duration::from_secs(10));
        let _a = t.register("a");
        assert_eq!(t.offer(r("a", 1), now), Offered::Delivered);
        assert_eq!(t.offer(r("a", 2), now + Duration::from_secs(9)), Offered::Duplicate);
        assert_eq!(t.offer(r("a", 3), now + Duration::from_secs(11)), Offered::Unknown);
        assert!(t.slots.is_empty() && t.done.is_empty());
    }

    #[test]
    fn delivered_ids_are_bounded_in_number_too() {
        let now = Instant::now();
        let mut t = ResultTable::new(DEFAULT_KEEP);
        for i in 0..DONE_KEPT + 1000 {
            let id = format!("i{i}");
            let _rx = t.register(id.clone());
            assert_eq!(t.offer(r(&id, 1), now), Offered::Delivered);
        }
        // One more offer prunes to the bound, the oldest first.
        assert_eq!(t.offer(r("i0", 2), now), Offered::Unknown, "the oldest is forgotten");
        assert_eq!(t.done.len(), DONE_KEPT);
        assert_eq!(t.slots.len(), DONE_KEPT);
        assert_eq!(t.offer(r(&format!("i{}", DONE_KEPT + 999), 2), now), Offered::Duplicate, "the newest is not");
        let _w = t.register("waiting");
        assert_eq!(t.waiting(), 1);
    }

    #[test]
    fn a_forgotten_input_drops_its_result_and_a_dropped_receiver_still_counts() {
        let now = Instant::now();
        let mut t = ResultTable::new(Duration::from_secs(10));
        let _a = t.register("a");
        t.forget("a");
        assert_eq!(t.offer(r("a", 1), now), Offered::Unknown);
        drop(t.register("b"));
        assert_eq!(t.offer(r("b", 1), now), Offered::Delivered);
        assert_eq!(t.offer(r("b", 2), now), Offered::Duplicate);
    }
}
