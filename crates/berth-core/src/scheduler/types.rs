//! What the scheduler exchanges with its host: ids, commands, outcomes, executions, the three
//! traits it talks through, and the limits a host can rely on.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};

use crate::spec::PoolSpec;

pub type PoolId = u32;
pub type ContainerId = u32;
pub type InputId = u64;
pub type ExecId = u64;

/// A lifecycle phase that runs user hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Phase {
    Build = 0,
    SnapEnter = 1,
    Enter = 2,
    Exit = 3,
    /// The container's process starts and attaches (process containers only); it comes first.
    Spawn = 4,
}
impl Phase {
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => Self::Build,
            1 => Self::SnapEnter,
            2 => Self::Enter,
            3 => Self::Exit,
            4 => Self::Spawn,
            _ => return None,
        })
    }
}

/// Why a running attempt should stop: the host fires the input's `AbortSignal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AbortReason {
    Timeout = 1,
    Cancelled = 2,
    /// The attempt stops and the input runs again on another container (its container was
    /// interrupted or is being replaced); not counted as a retry.
    Rescheduled = 3,
}

impl AbortReason {
    pub fn from_u8(v: u8) -> Option<Self> {
        [Self::Timeout, Self::Cancelled, Self::Rescheduled].into_iter().find(|r| *r as u8 == v)
    }
}

/// The final outcome of an input, delivered exactly once per input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The attempt succeeded; the host holds the value of that attempt.
    Ok,
    /// User code failed on that attempt and no retry is left; the host holds the error.
    Failed,
    /// The last attempt ran past the timeout.
    Timeout,
    /// Cancelled by the caller (or by a forced stop).
    Cancelled,
    /// No container could start: this container's enter hooks failed (or timed out).
    Init(ContainerId),
    /// The containers running it died [`MAX_RESCHEDULES`] + 1 times in a row (an input that
    /// crashes every container it touches).
    Lost,
    /// Refused: unknown pool or method, or the scheduler is stopping.
    Rejected,
    /// Refused at admission: the pool's queue already held its `max_pending` (the bound,
    /// carried for the message) waiting inputs. Never given to an input once accepted.
    QueueFull(u32),
}

/// How an execution ended, as the host reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExecStatus {
    Ok = 0,
    /// User code threw (or returned a wrong-length batch): retried within the policy.
    Failed = 1,
    /// A failure that retrying cannot fix.
    FailedFinal = 2,
    /// Succeeded, and the host has already given the caller the result (an in-process host
    /// does, to save a round trip): the input finishes without a `done` notification.
    Delivered = 3,
}

/// `(input, attempt)` pairs; a single input needs no allocation.
pub type ExecInputs = SmallVec<[(InputId, u32); 1]>;

/// One call of user code: a single input, or a batch of a `@batched` method.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    pub id: ExecId,
    pub pool: PoolId,
    pub container: ContainerId,
    pub method: u32,
    /// `(input, attempt)`, oldest first.
    pub inputs: ExecInputs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Submission {
    pub input: InputId,
    pub pool: PoolId,
    pub method: u32,
    /// Past the pool's `max_pending`, wait for room instead of being refused (a map's inputs:
    /// README "API", load shedding). At most a map window of them wait at once per map.
    pub waits: bool,
}

#[derive(Debug)]
pub enum Command {
    AddPool(PoolId, PoolSpec),
    Submit(Vec<Submission>),
    Cancel(Vec<InputId>),
    /// Cancels those of these inputs that have not started (queued, held back, or waiting out
    /// a retry backoff); the running ones go on. A stopping broker worker gives back, so, what
    /// it pulled ahead of its containers (berth-server's `broker.rs`).
    Withdraw(Vec<InputId>),
    Complete(Vec<(ExecId, ExecStatus)>),
    HookDone {
        container: ContainerId,
        phase: Phase,
        ok: bool,
    },
    /// The container's process died: its running inputs run again on another container, without
    /// spending retries, up to [`MAX_RESCHEDULES`] times each.
    ContainerLost(ContainerId),
    /// The container asks to stop (its process got SIGTERM): no new inputs, in-flight ones
    /// finish, exit hooks run; its pool starts another if the load asks for one. A container
    /// still starting stops at once (no exit hooks), and is not counted as a failed start.
    DrainContainer(ContainerId),
    /// The container was interrupted (its process got SIGINT): its running inputs are aborted
    /// and run again elsewhere without spending retries, then it drains as for
    /// [`DrainContainer`](Self::DrainContainer).
    InterruptContainer(ContainerId),
    /// The pool's code was replaced (a reload, a redeploy): its accepted inputs still run
    /// there, then its containers drain as on shutdown (in-flight inputs finish, exit hooks
    /// run) and it keeps none warm. Callers' new inputs go to the pool that replaced it.
    RetirePool(PoolId),
    /// Stop taking inputs, finish every accepted one, run exit hooks, then answer.
    Shutdown(Option<oneshot::Sender<()>>),
    /// Stop now: running inputs are aborted and everything pending is cancelled.
    Kill,
    /// Answers what every pool has counted ([`Scheduler::metrics`](super::Scheduler::metrics)),
    /// for a host whose scheduler runs on a task of its own.
    Metrics(oneshot::Sender<Vec<super::metrics::PoolMetrics>>),
    /// Answers every container's state and running inputs
    /// ([`Scheduler::containers`](super::Scheduler::containers)).
    Containers(oneshot::Sender<Vec<super::metrics::ContainerInfo>>),
}

/// How user code is called. Calls are cheap notifications: the host queues them and does the
/// work on its own thread, then reports back with [`Command`]s. `flush` ends each scheduler turn,
/// so a host can deliver everything from one turn at once.
pub trait Invoker: Send + 'static {
    fn run_hook(&mut self, pool: PoolId, container: ContainerId, phase: Phase);
    fn run(&mut self, exec: &Exec);
    fn abort(&mut self, input: InputId, attempt: u32, reason: AbortReason);
    /// A hook ran past its bound (startup timeout or exit grace) and was given up on.
    fn hook_abandoned(&mut self, pool: PoolId, container: ContainerId, phase: Phase);
    /// The container takes no more work; the host may drop its instance.
    fn container_stopped(&mut self, pool: PoolId, container: ContainerId);
    /// `input` ignored its abort for [`OVERDUE_GRACE`] past its timeout (or its interruption):
    /// its container is stopped without exit hooks (`container_stopped` follows) and replaced.
    fn replaced(&mut self, _pool: PoolId, _container: ContainerId, _input: InputId) {}
    fn flush(&mut self) {}
}

/// Where each input's one final outcome goes.
pub trait ResultSink: Send + 'static {
    fn done(&mut self, input: InputId, attempt: u32, outcome: Outcome);
    fn flush(&mut self) {}
}

/// Where commands come from: a channel in-process, a gRPC stream, a NATS consumer.
pub trait InputSource: Send + 'static {
    /// The next command; `None` when every sender is gone.
    fn recv(&mut self) -> impl Future<Output = Option<Command>> + Send;
    /// A command that is already waiting, without blocking.
    fn try_recv(&mut self) -> Option<Command>;
}

impl InputSource for mpsc::UnboundedReceiver<Command> {
    fn recv(&mut self) -> impl Future<Output = Option<Command>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<Command> {
        mpsc::UnboundedReceiver::try_recv(self).ok()
    }
}

/// Ids are dense counters: a multiplicative mix is enough, and much cheaper than SipHash.
/// For one integer key only (a second `write_u64` replaces the first).
#[derive(Default)]
pub struct IdHasher(u64);
impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}
/// A map keyed by one integer id (input, execution, container, pool).
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// The longest a failing container waits before it is started again.
pub const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// How often one input runs again because the container running it died, before it fails with
/// [`Outcome::Lost`]: an input that crashes every container it touches must not loop forever.
pub const MAX_RESCHEDULES: u32 = 3;
/// How long code whose attempt was aborted (timed out, or interrupted) may keep its slot before
/// its container is replaced: code that ignores its `AbortSignal` must not hold a slot forever.
pub const OVERDUE_GRACE: Duration = Duration::from_secs(5);
