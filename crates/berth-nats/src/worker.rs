//! The worker side: pulling inputs from a pool's durable consumer and settling their leases.
//!
//! A worker pulls at most as many messages as it has free slots ([`Worker::pull`]), so what
//! it holds is bounded by its own capacity, and the consumer's `max_ack_pending` bounds what
//! all the pool's workers hold together. Each message is a lease ([`Lease`]): `ack` on
//! success, `nak_after` with the pool's Retries backoff for a retry, `progress` while a long
//! input runs (each resets the consumer's `ack_wait`, which comes from the pool's `timeout`),
//! `term` for a cancelled input and for a message that is not berth's. A message nobody
//! settles within `ack_wait` is redelivered, up to the consumer's `max_deliver` deliveries;
//! [`Delivery::last_attempt`] tells the worker that a failure now is final (it replies with
//! the failure and `term`s, so the message does not stay in the stream).
use std::time::Duration;

use async_nats::jetstream::{consumer::PullConsumer, message::Acker, AckKind};
use futures_util::StreamExt;

use crate::{
    envelope::{decode_inputs, Input},
    error::Error,
};

/// A worker's handle on a pool's durable consumer.
pub struct Worker {
    consumer: PullConsumer,
    stream: String,
    max_deliver: i64,
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

impl Worker {
    pub(crate) fn new(consumer: PullConsumer, stream: String) -> Self {
        let max_deliver = consumer.cached_info().config.max_deliver;
        Self { consumer, stream, max_deliver }
    }

    /// Up to `max` (the worker's free slots) deliveries: those already waiting, or else the
    /// first to arrive within `wait` and any others waiting then. Empty after `wait` with
    /// nothing to do. Messages that are not berth's are logged and `term`ed, never returned.
    pub async fn pull(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery>, Error> {
        let mut out = Vec::new();
        self.pull_each(max, wait, |d| out.push(d)).await?;
        Ok(out)
    }

    /// As [`pull`](Self::pull), each delivery handed to `each` as it arrives instead of when the
    /// pull ends; returns how many. A pull request the server cannot fill at once (the
    /// consumer's `max_ack_pending` reached by this worker and others together) stays open
    /// until deliveries are settled: what it delivered must run meanwhile, or no worker settles
    /// anything (two workers of a pool of many concurrent inputs stalled so).
    pub async fn pull_each(
        &mut self,
        max: usize,
        wait: Duration,
        mut each: impl FnMut(Delivery),
    ) -> Result<usize, Error> {
        if max == 0 {
            return Ok(0);
        }
        let mut n = self.fetch(max, None, &mut each).await?;
        if n == 0 {
            // Block until one arrives (a batch of 1 waits for it; one of `max` would wait for
            // all of them), then take whatever else is waiting.
            n = self.fetch(1, Some(wait), &mut each).await?;
            if n > 0 && max > 1 {
                n += self.fetch(max - 1, None, &mut each).await?;
            }
        }
        Ok(n)
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
        while let Some(m) = batch.next().await {
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
