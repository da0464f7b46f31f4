//! Named queues in broker mode (README "Queue"): each queue is a JetStream work-queue stream
//! (`berth_queue__<name>`) with a subject per partition (`berth_queue.<name>.p<partition>`,
//! both escaped as stream names are), read through a durable pull consumer per partition that
//! every front and worker shares: every container and caller of the app sees one queue, FIFO per
//! partition. What a get takes stays unacknowledged until its taker acks it ([`Taken::ack`]);
//! JetStream gives it again after the consumer's ack wait ([`LEASE`]) otherwise, so a taker that
//! died on the way loses nothing, as the local server's leases (crates/berth-server/src/queues.rs).
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, message::Acker, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;

use crate::{broker::Broker, error::Error};

/// How long a get's messages wait for their ack before JetStream gives them to another get.
pub const LEASE: Duration = Duration::from_secs(10);

/// The longest pull request: a longer wait is several.
const MAX_PULL: Duration = Duration::from_secs(30);

/// How long past its `expires` a pull may go unanswered (a server restarting) before it is given up.
const PULL_MARGIN: Duration = Duration::from_secs(5);

/// A queue's stream: `berth_queue__` and its name, escaped.
pub fn queue_stream(name: &str) -> String {
    format!("berth_queue__{}", berth_core::broker::escape(name))
}

fn subject(name: &str, partition: &str) -> String {
    format!("berth_queue.{}.p{}", berth_core::broker::escape(name), berth_core::broker::escape(partition))
}

fn consumer_name(partition: &str) -> String {
    format!("p{}", berth_core::broker::escape(partition))
}

/// One queue, opened.
pub struct JsQueue {
    js: jetstream::Context,
    stream: stream::Stream,
    name: String,
}

/// What a get took: the items, and what acknowledges them.
pub struct Taken {
    pub values: Vec<Vec<u8>>,
    ackers: Vec<Acker>,
}

impl Taken {
    /// The items are the taker's: gone from the queue for good.
    pub async fn ack(self) {
        for a in self.ackers {
            let _ = a.ack().await;
        }
    }
}

impl Broker {
    /// Queue `name`'s stream; made when absent if `create`, else `Ok(None)`.
    pub async fn queue(&self, name: &str, create: bool) -> Result<Option<JsQueue>, Error> {
        let js = jetstream::new(self.client().clone());
        let stream_name = queue_stream(name);
        if let Ok(stream) = js.get_stream(&stream_name).await {
            return Ok(Some(JsQueue { js, stream, name: name.to_owned() }));
        }
        if !create {
            return Ok(None);
        }
        let config = stream::Config {
            name: stream_name.clone(),
            description: Some(format!("berth queue {name}")),
            subjects: vec![format!("berth_queue.{}.*", berth_core::broker::escape(name))],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        let stream = js
            .get_or_create_stream(config)
            .await
            .map_err(|e| Error::request(format!("creating queue stream {stream_name}"), e))?;
        Ok(Some(JsQueue { js, stream, name: name.to_owned() }))
    }

    /// Removes queue `name`; false when there was none.
    pub async fn drop_queue(&self, name: &str) -> Result<bool, Error> {
        let js = jetstream::new(self.client().clone());
        match js.delete_stream(queue_stream(name)).await {
            Ok(_) => Ok(true),
            Err(e) if e.to_string().contains("not found") => Ok(false),
            Err(e) => Err(Error::request(format!("removing queue {name}"), e)),
        }
    }
}

impl JsQueue {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::request(format!("{what} in queue stream {}", queue_stream(&self.name)), e)
    }

    /// Appends `values` to `partition`, in order, once JetStream has stored each.
    pub async fn put(&self, partition: &str, values: Vec<Vec<u8>>) -> Result<(), Error> {
        let subject = subject(&self.name, partition);
        let mut acks = Vec::with_capacity(values.len());
        for v in values {
            acks.push(
                self.js.publish(subject.clone(), Bytes::from(v)).await.map_err(|e| self.err("putting an item", e))?,
            );
        }
        for ack in acks {
            ack.await.map_err(|e| self.err("putting an item", e))?;
        }
        Ok(())
    }

    async fn consumer(&self, partition: &str) -> Result<jetstream::consumer::PullConsumer, Error> {
        let name = consumer_name(partition);
        let config = pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subject(&self.name, partition),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: LEASE,
            max_ack_pending: 100_000,
            ..Default::default()
        };
        self.stream.get_or_create_consumer(&name, config).await.map_err(|e| self.err("opening a partition", e))
    }

    /// Takes up to `max` items from the front of `partition`: what is there now, else, with
    /// `wait`, the first to come within it and what is there with it. Unacknowledged until
    /// [`Taken::ack`].
    pub async fn get(&self, partition: &str, max: usize, wait: Option<Duration>) -> Result<Taken, Error> {
        let consumer = self.consumer(partition).await?;
        let mut taken = Taken { values: Vec::new(), ackers: Vec::new() };
        self.pull(&consumer, max, None, &mut taken).await?;
        if let (true, Some(wait)) = (taken.values.is_empty(), wait) {
            let deadline = tokio::time::Instant::now() + wait;
            while taken.values.is_empty() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left < Duration::from_millis(10) {
                    break;
                }
                self.pull(&consumer, 1, Some(left.min(MAX_PULL)), &mut taken).await?;
            }
            if !taken.values.is_empty() && max > 1 {
                self.pull(&consumer, max - 1, None, &mut taken).await?;
            }
        }
        Ok(taken)
    }

    /// One pull request: no waiting when `expires` is `None`.
    async fn pull(
        &self,
        consumer: &jetstream::consumer::PullConsumer,
        max: usize,
        expires: Option<Duration>,
        taken: &mut Taken,
    ) -> Result<(), Error> {
        let pulled = match expires {
            None => consumer.fetch().max_messages(max).messages().await,
            Some(wait) => consumer.batch().max_messages(max).expires(wait).messages().await,
        };
        let mut batch = pulled.map_err(|e| self.err("taking items", e))?;
        let deadline = tokio::time::Instant::now() + expires.unwrap_or_default() + PULL_MARGIN;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, batch.next()).await {
            // A status that ends the pull early: keep what came.
            let Ok(m) = m else { break };
            let (msg, acker) = m.split();
            taken.values.push(msg.payload.to_vec());
            taken.ackers.push(acker);
        }
        Ok(())
    }

    /// How many items `partition` holds (`None`: every partition), not counting those taken and
    /// not yet acknowledged.
    pub async fn len(&self, partition: Option<&str>) -> Result<u64, Error> {
        if let Some(p) = partition {
            let mut consumer = self.consumer(p).await?;
            return Ok(consumer.info().await.map_err(|e| self.err("counting items", e))?.num_pending);
        }
        let mut stream = self.stream.clone();
        let stored = stream.info().await.map_err(|e| self.err("counting items", e))?.state.messages;
        let mut out = 0u64;
        let mut consumers = self.stream.consumers();
        while let Some(c) = consumers.next().await {
            out += c.map_err(|e| self.err("counting items", e))?.num_ack_pending as u64;
        }
        Ok(stored.saturating_sub(out))
    }

    /// Removes the items of `partition` (`None`: of every partition).
    pub async fn clear(&self, partition: Option<&str>) -> Result<(), Error> {
        let purge = match partition {
            Some(p) => self.stream.purge().filter(subject(&self.name, p)).await,
            None => self.stream.purge().await,
        };
        purge.map_err(|e| self.err("clearing", e))?;
        Ok(())
    }
}
