//! Named queues (proto/berth/v1/data.proto `Queues`, README "Queue"): FIFO per partition, held
//! by the server in memory for every container and caller it serves, as Modal's `Queue` is.
//! Items are CBOR, checked as arguments are. A blocked `get` waits here (a `Notify` per queue,
//! woken by each put) until an item comes or its timeout passes; a get whose caller goes away
//! while it waits takes nothing. A caller that dies after the take, before its answer reaches
//! it, loses nothing either: berth's client gets with a lease (`QueueRequest.lease`) and acks
//! once it has the items, and items not acked within [`LEASE`] go back to the front of their
//! partition (housekeeping, plane.rs). What a queue holds lives as long as the server. In
//! broker mode every queue is a JetStream stream instead ([`in_streams`], berth-nats queues.rs),
//! shared by every front and worker, whose messages stay unacknowledged until the taker acks.
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::v1::{self as pb, queues_server::Queues as QueuesRpc};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

use crate::plane::Shared;

/// Items a get takes at once at most.
const MAX_TAKE: u32 = 10_000;

/// Longest a blocked get waits (a day; the caller asks again after).
const MAX_WAIT: Duration = Duration::from_secs(86_400);

#[derive(Default)]
struct Queue {
    partitions: HashMap<String, VecDeque<Vec<u8>>>,
    /// Woken by every put.
    put: Arc<Notify>,
}

/// How long a leased get's items wait for their ack before they go back to their partition.
pub(crate) const LEASE: Duration = Duration::from_secs(10);

/// Items a leasing get took, until acked.
struct Lease {
    queue: String,
    partition: String,
    items: Vec<Vec<u8>>,
}

/// What is out on lease, by id (in the order lent), until acked or [`LEASE`] past its lending.
struct LeaseBook<T>(Mutex<(u64, HashMap<u64, Lent<T>>)>);

/// What is lent, and until when.
type Lent<T> = (T, Instant);

impl<T> Default for LeaseBook<T> {
    fn default() -> Self {
        Self(Mutex::new((0, HashMap::new())))
    }
}

impl<T> LeaseBook<T> {
    fn lend(&self, item: T) -> u64 {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        book.0 += 1;
        let id = book.0;
        book.1.insert(id, (item, Instant::now() + LEASE));
        id
    }

    /// The leases `ids` names, settled.
    fn settle(&self, ids: &[u64]) -> Vec<T> {
        if ids.is_empty() {
            return Vec::new();
        }
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        ids.iter().filter_map(|id| book.1.remove(id)).map(|(item, _)| item).collect()
    }

    /// The leases past their time by `now`, in the order they were lent, taken out.
    fn expired(&self, now: Instant) -> Vec<T> {
        let mut book = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut ids: Vec<u64> = book.1.iter().filter(|(_, (_, until))| *until <= now).map(|(&id, _)| id).collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| book.1.remove(&id)).map(|(item, _)| item).collect()
    }
}

/// The queues, by name, and the items out on lease.
#[derive(Default)]
pub(crate) struct Queues {
    all: Mutex<HashMap<String, Queue>>,
    leases: LeaseBook<Lease>,
    /// Broker mode: what leasing gets took from JetStream, unacknowledged until their takers ack.
    held: LeaseBook<berth_nats::Taken>,
}

impl Queues {
    /// Leases not acked by `now` give their items back, to the front of their partition in their
    /// order, waking the gets that wait (a queue deleted since keeps nothing). Broker mode's are
    /// dropped unacknowledged: JetStream gives them again after its ack wait.
    pub(crate) fn expire_leases(&self, now: Instant) {
        drop(self.held.expired(now));
        self.restore(self.leases.expired(now));
    }

    /// Leases `ids` end at once, unacked, as if past [`LEASE`]: their taker is gone (its data
    /// socket closed, datasock.rs).
    pub(crate) fn give_back(&self, ids: &[u64]) {
        drop(self.held.settle(ids));
        self.restore(self.leases.settle(ids));
    }

    /// Unacked leases' items go back to the front of their partitions, in the order they were
    /// lent.
    fn restore(&self, leases: Vec<Lease>) {
        if leases.is_empty() {
            return;
        }
        let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
        // The latest lease first: each goes in front of those after it.
        for lease in leases.into_iter().rev() {
            let Some(q) = all.get_mut(&lease.queue) else { continue };
            let p = q.partitions.entry(lease.partition).or_default();
            for item in lease.items.into_iter().rev() {
                p.push_front(item);
            }
            q.put.notify_waiters();
        }
    }

    /// Applies `req`; a blocked get waits here.
    pub(crate) async fn answer(&self, req: pb::QueueRequest) -> Result<pb::QueueResponse, Status> {
        // Acked: the items are the caller's for good.
        self.leases.settle(&req.acks);
        let Some((op, wait)) = check(&req)? else { return Ok(pb::QueueResponse::default()) };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = {
                let mut all = self.all.lock().unwrap_or_else(|e| e.into_inner());
                if op == pb::QueueOp::Delete {
                    return Ok(pb::QueueResponse { found: all.remove(&req.name).is_some(), ..Default::default() });
                }
                if !all.contains_key(&req.name) {
                    if !req.create_if_missing {
                        return Err(crate::dicts::not_found("Queue", &req.name));
                    }
                    all.insert(req.name.clone(), Queue::default());
                }
                let Some(q) = all.get_mut(&req.name) else { return Err(crate::dicts::not_found("Queue", &req.name)) };
                let mut out = pb::QueueResponse::default();
                match op {
                    pb::QueueOp::Put => {
                        q.partitions.entry(req.partition.clone()).or_default().extend(req.values);
                        q.put.notify_waiters();
                        return Ok(out);
                    }
                    pb::QueueOp::Len | pb::QueueOp::Clear => {
                        if req.all_partitions {
                            if op == pb::QueueOp::Clear {
                                q.partitions.clear();
                            }
                            out.len = q.partitions.values().map(|p| p.len() as u64).sum();
                        } else {
                            if op == pb::QueueOp::Clear {
                                q.partitions.remove(&req.partition);
                            }
                            out.len = q.partitions.get(&req.partition).map_or(0, |p| p.len() as u64);
                        }
                        return Ok(out);
                    }
                    _ => {}
                }
                // A get: what is there now, or wait for a put.
                let take = req.max.clamp(1, MAX_TAKE) as usize;
                if let Some(p) = q.partitions.get_mut(&req.partition) {
                    let n = take.min(p.len());
                    out.values = p.drain(..n).collect();
                    out.len = p.len() as u64;
                }
                if !out.values.is_empty() && req.lease {
                    drop(all);
                    let lease =
                        Lease { queue: req.name.clone(), partition: req.partition.clone(), items: out.values.clone() };
                    out.lease = self.leases.lend(lease);
                    return Ok(out);
                }
                if !out.values.is_empty() || !req.block || tokio::time::Instant::now() >= deadline {
                    return Ok(out);
                }
                // Registered before the lock goes: a put from now on wakes it.
                let put = Arc::clone(&q.put);
                let notified = put.notified_owned();
                drop(all);
                notified
            };
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                // One more look, then empty: the timeout passed.
                continue;
            }
        }
    }
}

/// The operation of `req` and how long a blocking get of it waits; `None` for an ack alone.
fn check(req: &pb::QueueRequest) -> Result<Option<(pb::QueueOp, Duration)>, Status> {
    let op = pb::QueueOp::try_from(req.op).unwrap_or(pb::QueueOp::Unspecified);
    if op == pb::QueueOp::Ack {
        return Ok(None);
    }
    crate::dicts::check_name(&req.name)?;
    if op == pb::QueueOp::Unspecified {
        return Err(Status::invalid_argument("QueueRequest.op: say which operation"));
    }
    if req.partition.len() > 64 {
        return Err(Status::invalid_argument("a partition name is at most 64 bytes"));
    }
    for v in &req.values {
        berth_proto::values::check_value(v).map_err(|e| Status::invalid_argument(format!("an item: {e}")))?;
    }
    if !(req.timeout.is_finite() && req.timeout >= 0.0) {
        return Err(Status::invalid_argument("QueueRequest.timeout: seconds, from 0 up (0 with block: no limit)"));
    }
    let wait = if req.timeout == 0.0 { MAX_WAIT } else { Duration::from_secs_f64(req.timeout).min(MAX_WAIT) };
    Ok(Some((op, wait)))
}

/// Applies `req` where this control plane keeps its queues: here, or, in broker mode, on the
/// NATS server's streams, shared by every front and worker.
pub(crate) async fn answer(shared: &Shared, req: pb::QueueRequest) -> Result<pb::QueueResponse, Status> {
    match shared.dict_broker.get() {
        Some(broker) => in_streams(&shared.queues, broker, req).await,
        None => shared.queues.answer(req).await,
    }
}

/// `req` on JetStream streams (broker mode, berth-nats queues.rs). A leasing get's messages are
/// held here, unacknowledged, until its taker acks; dropped unacked past [`LEASE`], JetStream
/// gives them again.
async fn in_streams(
    queues: &Queues,
    broker: &berth_nats::Broker,
    req: pb::QueueRequest,
) -> Result<pb::QueueResponse, Status> {
    for taken in queues.held.settle(&req.acks) {
        taken.ack().await;
    }
    let Some((op, wait)) = check(&req)? else { return Ok(pb::QueueResponse::default()) };
    let failed = |e: berth_nats::Error| Status::unavailable(e.message);
    let mut out = pb::QueueResponse::default();
    if op == pb::QueueOp::Delete {
        out.found = broker.drop_queue(&req.name).await.map_err(failed)?;
        return Ok(out);
    }
    let Some(q) = broker.queue(&req.name, req.create_if_missing).await.map_err(failed)? else {
        return Err(crate::dicts::not_found("Queue", &req.name));
    };
    let partition = (!req.all_partitions).then_some(req.partition.as_str());
    match op {
        pb::QueueOp::Put => q.put(&req.partition, req.values).await.map_err(failed)?,
        pb::QueueOp::Clear => {
            q.clear(partition).await.map_err(failed)?;
            out.len = q.len(partition).await.map_err(failed)?;
        }
        pb::QueueOp::Len => out.len = q.len(partition).await.map_err(failed)?,
        pb::QueueOp::Get => {
            let take = req.max.clamp(1, MAX_TAKE) as usize;
            let mut taken = q.get(&req.partition, take, req.block.then_some(wait)).await.map_err(failed)?;
            out.values = std::mem::take(&mut taken.values);
            if !out.values.is_empty() {
                if req.lease {
                    out.lease = queues.held.lend(taken);
                } else {
                    taken.ack().await;
                }
            }
        }
        pb::QueueOp::Unspecified | pb::QueueOp::Delete | pb::QueueOp::Ack => {}
    }
    Ok(out)
}

/// The `Queues` gRPC service.
pub(crate) struct QueuesSvc {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl QueuesRpc for QueuesSvc {
    async fn queue(&self, req: Request<pb::QueueRequest>) -> Result<Response<pb::QueueResponse>, Status> {
        answer(&self.shared, req.into_inner()).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(op: pb::QueueOp) -> pb::QueueRequest {
        pb::QueueRequest { name: "q".into(), op: op as i32, create_if_missing: true, ..Default::default() }
    }

    #[tokio::test]
    async fn fifo_per_partition_and_a_blocked_get_is_released_by_a_put() {
        let q = Arc::new(Queues::default());
        q.answer(pb::QueueRequest { values: vec![vec![1], vec![2], vec![3]], ..req(pb::QueueOp::Put) }).await.unwrap();
        q.answer(pb::QueueRequest { values: vec![vec![9]], partition: "p".into(), ..req(pb::QueueOp::Put) })
            .await
            .unwrap();
        let got = q.answer(pb::QueueRequest { max: 2, ..req(pb::QueueOp::Get) }).await.unwrap();
        assert_eq!((got.values, got.len), (vec![vec![1], vec![2]], 1));
        let all = q.answer(pb::QueueRequest { all_partitions: true, ..req(pb::QueueOp::Len) }).await.unwrap();
        assert_eq!(all.len, 2);
        q.answer(req(pb::QueueOp::Get)).await.unwrap();
        // Empty: a non-blocking get takes nothing; a blocking one waits for the put below.
        assert!(q.answer(req(pb::QueueOp::Get)).await.unwrap().values.is_empty());
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.answer(pb::QueueRequest { block: true, ..req(pb::QueueOp::Get) }).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.answer(pb::QueueRequest { values: vec![vec![7]], ..req(pb::QueueOp::Put) }).await.unwrap();
        assert_eq!(waiting.await.unwrap().unwrap().values, vec![vec![7]]);
        // A timeout passes with nothing.
        let t = tokio::time::Instant::now();
        let none = q.answer(pb::QueueRequest { block: true, timeout: 0.1, ..req(pb::QueueOp::Get) }).await.unwrap();
        assert!(none.values.is_empty() && t.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn leased_items_come_back_unless_acked_in_time_to_the_front_in_order() {
        let q = Queues::default();
        q.answer(pb::QueueRequest { values: (1..=5).map(|i| vec![i]).collect(), ..req(pb::QueueOp::Put) })
            .await
            .unwrap();
        let a = q.answer(pb::QueueRequest { max: 2, lease: true, ..req(pb::QueueOp::Get) }).await.unwrap();
        let b = q.answer(pb::QueueRequest { max: 1, lease: true, ..req(pb::QueueOp::Get) }).await.unwrap();
        let c = q.answer(pb::QueueRequest { max: 1, lease: true, ..req(pb::QueueOp::Get) }).await.unwrap();
        assert_eq!(
            (a.values.clone(), b.values.clone(), c.values.clone()),
            (vec![vec![1], vec![2]], vec![vec![3]], vec![vec![4]])
        );
        assert!(a.lease != 0 && b.lease != 0 && a.lease != b.lease);
        // b is acked (by its own op, and c's by riding on another request); a is not, and expires.
        q.answer(pb::QueueRequest { acks: vec![b.lease], ..req(pb::QueueOp::Ack) }).await.unwrap();
        q.answer(pb::QueueRequest { acks: vec![c.lease], ..req(pb::QueueOp::Len) }).await.unwrap();
        q.expire_leases(Instant::now());
        assert_eq!(q.answer(req(pb::QueueOp::Len)).await.unwrap().len, 1, "nothing expires before its time");
        q.expire_leases(Instant::now() + LEASE);
        let back = q.answer(pb::QueueRequest { max: 10, ..req(pb::QueueOp::Get) }).await.unwrap();
        assert_eq!(back.values, vec![vec![1], vec![2], vec![5]], "the unacked items are back in front, in order");
        // A get without a lease is the caller's at once; an empty leasing get leases nothing.
        assert_eq!(q.answer(pb::QueueRequest { lease: true, ..req(pb::QueueOp::Get) }).await.unwrap().lease, 0);
    }

    #[tokio::test]
    async fn an_expired_lease_wakes_a_blocked_get() {
        let q = Arc::new(Queues::default());
        q.answer(pb::QueueRequest { values: vec![vec![7]], ..req(pb::QueueOp::Put) }).await.unwrap();
        let lost = q.answer(pb::QueueRequest { lease: true, ..req(pb::QueueOp::Get) }).await.unwrap();
        assert_eq!(lost.values, vec![vec![7]]);
        let waiting = {
            let q = q.clone();
            tokio::spawn(async move { q.answer(pb::QueueRequest { block: true, ..req(pb::QueueOp::Get) }).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        q.expire_leases(Instant::now() + LEASE);
        assert_eq!(waiting.await.unwrap().unwrap().values, vec![vec![7]]);
    }

    #[tokio::test]
    async fn bad_requests_are_refused() {
        let q = Queues::default();
        let e = q.answer(pb::QueueRequest { create_if_missing: false, ..req(pb::QueueOp::Len) }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = q.answer(pb::QueueRequest { timeout: -1.0, ..req(pb::QueueOp::Get) }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        let e = q.answer(pb::QueueRequest { values: vec![vec![0xff]], ..req(pb::QueueOp::Put) }).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
}
