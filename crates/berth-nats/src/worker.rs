//! The worker side: pulling inputs from a pool's durable consumer and settling their leases.
//!
//! A worker pulls at most as many messages as it asks for ([`Worker::pull`]; berth-server's
//! feeder asks for what its containers have room for and a read ahead), so what it holds
//! is bounded by its own capacity, and the consumer's `max_ack_pending` bounds what all the
//! pool's workers hold together. Each message is a lease ([`Lease`]): `ack` on
//! success, `nak_after` with the pool's Retries backoff for a retry, `progress` while a long
//! input runs (each resets the consumer's `ack_wait`, which comes from the pool's `timeout`),
//! `term` for a cancelled input and for a message that is not berth's. A message nobody
//! settles within `ack_wait` is redelivered, up to the consumer's `max_deliver` deliveries;
//! [`Delivery::last_attempt`] tells the worker that a failure now is final (it replies with
//! the failure and `term`s, so the message does not stay in the stream).
//!
//! A message may hold several inputs (crate::envelope). [`Delivery::settle`] settles them one
//! by one ([`Fate`]): results go out first, an input that must run again is republished alone
//! with its spent attempts (its retry delay waited out here, under the message's lease, since
//! a nak delays a whole message), and the message is acked last. Attempts count per input:
//! an input's attempt is its spent attempts plus the delivery count of the message holding it,
//! and [`Delivery::last_attempt_of`] applies `max_deliver` to that, so republishing never
//! gives an input more attempts than one message would have had.
use std::time::{Duration, Instant};

use async_nats::jetstream::{consumer::PullConsumer, message::Acker, AckKind};
use futures_util::StreamExt;

use crate::{
    broker::Broker,
    envelope::{decode_inputs, BrokerResult, Input},
    error::Error,
};

/// How long past its `expires` a pull request may go unanswered before the worker gives it up
/// and pulls again ([`Worker::pull`]).
pub const PULL_ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// A worker's handle on a pool's durable consumer.
pub struct Worker {
    consumer: PullConsumer,
    stream: String,
    subject: String,
    max_deliver: i64,
    ack_wait: Duration,
}

/// One pulled message: its inputs and its lease.
pub struct Delivery {
    /// One input, or several sharing the lease (crate::envelope says when).
    pub inputs: Vec<Input>,
    /// JetStream's delivery count of the message (1 on the first delivery).
    pub delivered: u32,
    /// This delivery is the consumer's last (`max_deliver`): JetStream will not redeliver it.
    pub last_attempt: bool,
    pub lease: Lease,
    /// Where an input that must run again is republished (the pool's subject).
    subject: String,
    max_deliver: i64,
    ack_wait: Duration,
}

/// What becomes of one input of a [`Delivery`] ([`Delivery::settle`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Fate {
    /// Its result, sent to its reply inbox before the message is acked (none for an empty
    /// reply subject).
    Reply(BrokerResult),
    /// It runs again, on any worker, after this delay (the pool's Retries backoff).
    Retry(Duration),
    /// It did not run here (the worker is stopping): another worker takes it at once.
    Release,
}

/// How [`Delivery::settle`] settled a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settled {
    /// Every input had its result: acked.
    Acked,
    /// No input had a result: the whole message nak'ed (after the retry delay, or at once when
    /// every input was released), so it is delivered again as the next attempt of each.
    Naked,
    /// Some inputs had their results, this many were republished, then the message was acked.
    Republished(usize),
}

/// Settles one message with JetStream. Each call sends one small message to the server; use
/// [`crate::Broker::flush`] to wait until it has been sent.
pub struct Lease {
    acker: Acker,
}

impl Lease {
    /// Done: JetStream removes the message from the work queue.
    pub async fn ack(&self) -> Result<(), Error> {
        self.send(AckKind::Ack, "ack").await
    }

    /// Run it again after `delay` (the Retries backoff); the next delivery counts as an attempt.
    pub async fn nak_after(&self, delay: Duration) -> Result<(), Error> {
        self.send(AckKind::Nak(Some(delay)), "nak").await
    }

    /// Retry with the pool's Retries backoff: a nak delayed by the delay before retry
    /// `attempt` (1 for the first retry, i.e. after attempt 1 failed). The caller checks that
    /// retries remain (`!Delivery::last_attempt`); on the last attempt it replies the failure
    /// and `term`s instead.
    pub async fn retry(&self, policy: &berth_core::RetryPolicy, attempt: u32) -> Result<(), Error> {
        self.nak_after(policy.delay_for(attempt)).await
    }

    /// Still working: the lease lasts another `ack_wait` from now.
    pub async fn progress(&self) -> Result<(), Error> {
        self.send(AckKind::Progress, "progress").await
    }

    /// Never deliver it again (a cancelled input, a message that is not berth's).
    pub async fn term(&self) -> Result<(), Error> {
        self.send(AckKind::Term, "term").await
    }

    async fn send(&self, kind: AckKind, what: &str) -> Result<(), Error> {
        self.acker.ack_with(kind).await.map_err(|e| Error::request(format!("sending {what}"), e))
    }
}

impl Delivery {
    /// Whether a failure of `input` now is final: JetStream will not deliver this message again,
    /// or the input has had `max_deliver` attempts over every message that held it.
    pub fn last_attempt_of(&self, input: &Input) -> bool {
        self.last_attempt || (self.max_deliver > 0 && i64::from(input.attempt) >= self.max_deliver)
    }

    /// Settles the message given each input's fate (`fates[i]` is `inputs[i]`'s):
    /// - every one replied: the results go out (one message per reply inbox, each confirmed by
    ///   its front), then the ack;
    /// - none replied: the whole message is nak'ed, after the longest retry delay (at once when
    ///   every input was released), and each input's next delivery is its next attempt — unless
    ///   this is the message's last delivery, when it is republished as below;
    /// - some replied: their results go out; the released inputs are republished at once and
    ///   the retried ones once their delay has passed (the lease is kept alive with `progress`
    ///   meanwhile), each as a new message carrying its spent attempts; then the message is
    ///   acked, so the inputs that finished do not run again. If a republish fails, the whole
    ///   message is nak'ed instead (every input runs again; the front keeps the first results).
    ///
    /// A worker that dies before this ends leaves the message unsettled: it is delivered again,
    /// whole, after `ack_wait`.
    pub async fn settle(self, broker: &Broker, fates: Vec<Fate>) -> Result<Settled, Error> {
        debug_assert_eq!(fates.len(), self.inputs.len());
        let mut replies: Vec<(String, Vec<BrokerResult>)> = Vec::new();
        let mut again: Vec<(Duration, &Input)> = Vec::new();
        let mut released = 0;
        for (input, fate) in self.inputs.iter().zip(fates) {
            match fate {
                Fate::Reply(_) if input.reply.is_empty() => {}
                Fate::Reply(r) => match replies.iter_mut().find(|(to, _)| *to == input.reply) {
                    Some((_, rs)) => rs.push(r),
                    None => replies.push((input.reply.clone(), vec![r])),
                },
                Fate::Retry(delay) => again.push((delay, input)),
                Fate::Release => {
                    released += 1;
                    again.push((Duration::ZERO, input));
                }
            }
        }
        let answered = self.inputs.len() - again.len();
        // Each front confirms its results (sent again until it does: `Broker::reply_many`), all
        // fronts at once; only then may the inputs leave the stream.
        let lease = &self.lease;
        let sent =
            replies.into_iter().map(|(to, results)| async move { broker.reply_many(&to, results, Some(lease)).await });
        // A result its front never confirmed within the patience (the front is gone, or NATS
        // stayed unreachable) is given up: running the input again would not reach it either.
        for e in futures_util::future::join_all(sent).await.into_iter().filter_map(Result::err) {
            tracing::warn!("berth worker: {e}");
        }
        if again.is_empty() {
            self.lease.ack().await?;
            return Ok(Settled::Acked);
        }
        // A nak on the message's last delivery would leave it in the stream for good: what is
        // released then is republished instead (a retry never comes on a last attempt).
        if answered == 0 && !self.last_attempt {
            let delay = if released == again.len() {
                Duration::ZERO
            } else {
                again.iter().map(|(d, _)| *d).max().unwrap_or_default()
            };
            self.lease.nak_after(delay).await?;
            return Ok(Settled::Naked);
        }
        // Republished in the order of their delays, each group once its delay has passed.
        again.sort_by_key(|(d, _)| *d);
        let start = Instant::now();
        let every = (self.ack_wait / 3).max(Duration::from_millis(100));
        let mut i = 0;
        while i < again.len() {
            let delay = again[i].0;
            let group: Vec<_> =
                again[i..].iter().take_while(|(d, _)| *d == delay).map(|(_, input)| input.republished()).collect();
            i += group.len();
            while start.elapsed() < delay {
                tokio::time::sleep((delay - start.elapsed()).min(every)).await;
                self.lease.progress().await?;
            }
            let published = match broker.start_publish_on(&self.subject, group).await {
                Ok(p) => p.wait().await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = published {
                self.lease.nak_after(Duration::ZERO).await?;
                return Err(e);
            }
        }
        self.lease.ack().await?;
        Ok(Settled::Republished(again.len()))
    }
}

impl Worker {
    pub(crate) fn new(consumer: PullConsumer, stream: String, subject: String) -> Self {
        let config = &consumer.cached_info().config;
        let (max_deliver, ack_wait) = (config.max_deliver, config.ack_wait);
        Self { consumer, stream, subject, max_deliver, ack_wait }
    }

    /// Up to `max` (the worker's free slots) deliveries: those already waiting, or else the
    /// first to arrive within `wait` and any others waiting then. Empty after `wait` with
    /// nothing to do. Messages that are not berth's are logged and `term`ed, never returned.
    pub async fn pull(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, Error> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let mut push = |d| out.push(d);
        if self.fetch(max, None, &mut push).await? == 0 {
            // Block until one arrives (a batch of 1 waits for it; one of `max` would wait for
            // all of them), then take whatever else is waiting.
            if self.fetch(1, Some(wait), &mut push).await? > 0 && max > 1 {
                self.fetch(max - 1, None, &mut push).await?;
            }
        }
        Ok(out)
    }

    /// As [`pull`](Self::pull), each delivery handed to `each` as it arrives; returns how many.
    /// With nothing waiting, one pull request for up to `max` stays open for `wait` and hands
    /// each message over as it comes: a worker whose inputs arrive one by one (calls made one
    /// after another) gets each without a pull request of its own. A pull request the server
    /// cannot fill at once (the consumer's `max_ack_pending` reached by this worker and others
    /// together) stays open until deliveries are settled: what it delivered must run meanwhile,
    /// or no worker settles anything (two workers of a pool of many concurrent inputs stalled
    /// so).
    pub async fn pull_each(
        &mut self,
        max: usize,
        wait: Duration,
        mut each: impl FnMut(Delivery),
    ) -> Result<usize, Error> {
        if max == 0 {
            return Ok(0);
        }
        let n = self.fetch(max, None, &mut each).await?;
        if n > 0 {
            return Ok(n);
        }
        self.fetch(max, Some(wait), &mut each).await
    }

    /// One pull request: no waiting when `expires` is `None`. Returns how many deliveries it
    /// handed to `each`.
    async fn fetch(
        &mut self,
        max: usize,
        expires: Option<Duration>,
        each: &mut impl FnMut(Delivery),
    ) -> Result<usize, Error> {
        let mut n = 0;
        let pulled = match expires {
            None => self.consumer.fetch().max_messages(max).messages().await,
            Some(wait) => self.consumer.batch().max_messages(max).expires(wait).messages().await,
        };
        let mut batch = pulled.map_err(|e| Error::request(format!("pulling from {}", self.stream), e))?;
        // A pull request is answered by the server: its messages, then a status that ends it.
        // A request or answer lost with a server that stopped (killed, restarting, cut off)
        // would leave this waiting for ever, and the worker pulling nothing — async-nats puts
        // no deadline on a pull without `expires`. Bounded: then pull again.
        let deadline = tokio::time::Instant::now() + expires.unwrap_or_default() + PULL_ANSWER_MARGIN;
        loop {
            let m = match tokio::time::timeout_at(deadline, batch.next()).await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(stream = %self.stream, pulled = n, "NATS: a pull request got no answer in time (the server restarting or unreachable?); pulling again");
                    break;
                }
            };
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    // A status ending the pull early (409: max_ack_pending reached, consumer
                    // changed, …): keep what was pulled, whose leases are live, and pull again
                    // later. An unreachable server fails the next pull request itself.
                    tracing::debug!(stream = %self.stream, error = %e, "pull ended early");
                    break;
                }
            };
            let delivered = match m.info() {
                Ok(i) => u32::try_from(i.delivered).unwrap_or(u32::MAX),
                Err(e) => {
                    tracing::warn!(stream = %self.stream, error = %e, "message without JetStream delivery info; skipped");
                    continue;
                }
            };
            let (msg, acker) = m.split();
            let lease = Lease { acker };
            match decode_inputs(&msg.payload, delivered) {
                Ok(inputs) => {
                    n += 1;
                    each(Delivery {
                        inputs,
                        delivered,
                        last_attempt: self.max_deliver > 0 && i64::from(delivered) >= self.max_deliver,
                        lease,
                        subject: self.subject.clone(),
                        max_deliver: self.max_deliver,
                        ack_wait: self.ack_wait,
                    });
                }
                Err(e) => {
                    tracing::warn!(
                        stream = %self.stream, subject = %msg.subject, bytes = msg.payload.len(), error = %e,
                        "a message on berth's subject is not a berth input; terminated (it is not redelivered)"
                    );
                    if let Err(e) = lease.term().await {
                        tracing::warn!(stream = %self.stream, error = %e, "could not terminate a foreign message");
                    }
                }
            }
        }
        Ok(n)
    }
}
