//! The scheduler actor: container lifecycle, per-method queues, concurrency slots, dynamic
//! batching, per-attempt timeouts, retries with backoff, cancellation, autoscaling and drain.
//!
//! All state lives on one task; commands arrive from an [`InputSource`], work leaves through an
//! [`Invoker`], and each input's single final outcome leaves through a [`ResultSink`]. Timers are
//! a heap of deadlines checked lazily: a timer whose subject has moved on is simply ignored.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use smallvec::SmallVec;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

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

/// The phases a container goes through before serving, in order.
const STARTUP: [Phase; 4] = [Phase::Spawn, Phase::Build, Phase::SnapEnter, Phase::Enter];

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
}

#[derive(Debug)]
pub enum Command {
    AddPool(PoolId, PoolSpec),
    Submit(Vec<Submission>),
    Cancel(Vec<InputId>),
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
    /// Stop taking inputs, finish every accepted one, run exit hooks, then answer.
    Shutdown(Option<oneshot::Sender<()>>),
    /// Stop now: running inputs are aborted and everything pending is cancelled.
    Kill,
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
const FIRST_RESTART_BACKOFF: Duration = Duration::from_millis(250);
/// Commands handled in one turn before timers get their look: keeps timeouts on time under load.
const MAX_COMMANDS_PER_TURN: usize = 4096;
/// How often one input runs again because the container running it died, before it fails with
/// [`Outcome::Lost`]: an input that crashes every container it touches must not loop forever.
pub const MAX_RESCHEDULES: u32 = 3;
/// How long code whose attempt was aborted (timed out, or interrupted) may keep its slot before
/// its container is replaced: code that ignores its `AbortSignal` must not hold a slot forever.
pub const OVERDUE_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CState {
    Starting(Phase),
    Serving,
    Draining,
    Exiting,
}

struct Container {
    pool: PoolId,
    state: CState,
    /// Which startup deadline is current (an older one firing is ignored).
    startup_gen: u32,
    in_flight: u32,
    idle_since: Instant,
    /// When it was created: its startup time is measured to Serving.
    created: Instant,
}

struct Queued {
    input: InputId,
    attempt: u32,
    at: Instant,
    /// Arrival order across methods (instants can tie).
    seq: u64,
}

struct Pool {
    spec: PoolSpec,
    queues: Vec<VecDeque<Queued>>,
    containers: Vec<ContainerId>,
    built: bool,
    failures: u32,
    restart_at: Option<Instant>,
    /// Inputs accepted and not yet finished (queued, running or waiting to retry).
    pending: u32,
    /// Earliest deadline already in the timer heap, so waits do not pile up timers.
    wake_at: Option<Instant>,
    /// Exec deadlines in start order. One timeout per pool and a monotonic clock keep them
    /// sorted, so this is a queue, not a tree. Entries of completed execs are dropped from the
    /// front as they surface, and the queue is compacted when they outnumber the live ones.
    deadlines: VecDeque<(Instant, ExecId)>,
    dead_deadlines: usize,
    dirty: bool,
    /// How long a container takes to start (to Serving), and an execution to complete: moving
    /// averages, unknown until measured. The autoscaler weighs them (see `absorbable`).
    startup_avg: Option<Duration>,
    exec_avg: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IState {
    Queued,
    Running(ExecId),
    Backoff,
}

struct InputState {
    pool: PoolId,
    method: u32,
    /// Every run of the input is a new attempt (so a late answer of an earlier one is told
    /// apart), whether it is a retry or a reschedule.
    attempt: u32,
    /// Attempts that failed and were retried: what `retries` bounds.
    retried: u32,
    /// Runs lost with their container: what [`MAX_RESCHEDULES`] bounds.
    lost: u32,
    state: IState,
}

struct ExecState {
    pool: PoolId,
    container: ContainerId,
    /// Inputs whose outcome this execution still decides (cancelled ones leave early).
    inputs: ExecInputs,
    /// Past its timeout, or interrupted: its inputs are decided (or run again elsewhere), but
    /// its slot is held until the code settles, so in-flight work never exceeds `maxInputs`;
    /// past [`OVERDUE_GRACE`] its container is replaced.
    timed_out: bool,
    /// Its first input, to name it when its container is replaced.
    first: InputId,
    started: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Retry(InputId, u32),
    PoolWake(PoolId),
    Startup(ContainerId, u32),
    ExitGrace(ContainerId),
    /// An aborted execution still holding its slot after the grace.
    Overdue(ExecId),
}

/// What [`Scheduler::absorbable`] estimated from: the start of the oldest execution running,
/// the execution time assumed, the startup time, and the serving slots.
#[derive(Clone, Copy)]
struct Estimate {
    oldest: Instant,
    exec: Duration,
    startup: Duration,
    slots: f64,
}

/// A moving average that weighs the newest sample by a quarter.
fn moving_average(avg: Option<Duration>, sample: Duration) -> Duration {
    match avg {
        None => sample,
        Some(a) => (a * 3 + sample) / 4,
    }
}

/// A live exec's deadline entry became dead (the exec completed or was lost): drop what has
/// surfaced at the front, and compact when dead entries outnumber live ones.
fn deadline_gone(p: &mut Pool, gone: ExecId, execs: &IdMap<ExecId, ExecState>) {
    // Executions mostly finish in start order: the usual case is the front entry, no lookup.
    if p.deadlines.front().is_some_and(|&(_, id)| id == gone) {
        p.deadlines.pop_front();
    } else {
        p.dead_deadlines += 1;
    }
    if p.dead_deadlines > 64 && p.dead_deadlines * 2 > p.deadlines.len() {
        p.deadlines.retain(|(_, id)| execs.contains_key(id));
        p.dead_deadlines = 0;
    }
}

/// The scheduler. Build one, add pools with [`Command::AddPool`], and `run` it on a task.
pub struct Scheduler<I: Invoker, R: ResultSink> {
    invoker: I,
    results: R,
    pools: IdMap<PoolId, Pool>,
    containers: IdMap<ContainerId, Container>,
    inputs: IdMap<InputId, InputState>,
    execs: IdMap<ExecId, ExecState>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    next_container: ContainerId,
    next_exec: ExecId,
    next_seq: u64,
    dirty: Vec<PoolId>,
    /// The clock, read once per command and per tick: everything one command causes happens at
    /// one instant (and a thousand inputs cost one clock read, not two thousand).
    now: Instant,
    stopping: bool,
    killed: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

impl<I: Invoker, R: ResultSink> Scheduler<I, R> {
    pub fn new(invoker: I, results: R) -> Self {
        Self {
            invoker,
            results,
            pools: IdMap::default(),
            containers: IdMap::default(),
            inputs: IdMap::default(),
            execs: IdMap::default(),
            timers: BinaryHeap::new(),
            next_container: 1,
            next_exec: 1,
            next_seq: 0,
            dirty: Vec::new(),
            now: Instant::now(),
            stopping: false,
            killed: false,
            waiters: Vec::new(),
        }
    }

    /// Runs until a shutdown completes, a kill, or every sender of the source is gone.
    pub async fn run<S: InputSource>(mut self, mut source: S) {
        loop {
            let received = match self.next_deadline() {
                Some(at) => tokio::select! {
                    biased;
                    cmd = source.recv() => Some(cmd),
                    () = sleep_until(at) => None,
                },
                None => Some(source.recv().await),
            };
            match received {
                Some(None) => {
                    self.handle(Command::Kill);
                    break;
                }
                Some(Some(cmd)) => {
                    self.handle(cmd);
                    let mut n = 1;
                    while n < MAX_COMMANDS_PER_TURN {
                        let Some(cmd) = source.try_recv() else { break };
                        self.handle(cmd);
                        n += 1;
                    }
                }
                None => {}
            }
            if self.tick() {
                break;
            }
        }
    }

    /// The earliest timer, if any: call [`tick`](Self::tick) once it has passed.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((at, _))| *at);
        let exec = self.pools.values().filter_map(|p| p.deadlines.front().map(|(at, _)| *at)).min();
        match (timer, exec) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Ends a turn: fires due timers, hands ready work to free slots, scales, and flushes the
    /// invoker and the sink. Returns true once a shutdown or kill has completed.
    pub fn tick(&mut self) -> bool {
        if self.killed {
            return true;
        }
        self.now = Instant::now();
        self.fire_timers();
        self.dispatch_dirty();
        let finished = self.stopping && self.pools.values().all(|p| p.pending == 0) && self.containers.is_empty();
        self.invoker.flush();
        self.results.flush();
        if finished {
            for w in self.waiters.drain(..) {
                let _ = w.send(());
            }
        }
        finished
    }

    /// Applies one command; call [`tick`](Self::tick) after a batch of them.
    pub fn handle(&mut self, cmd: Command) {
        self.now = Instant::now();
        match cmd {
            Command::AddPool(id, spec) => self.add_pool(id, spec),
            Command::Submit(subs) => {
                for s in subs {
                    self.submit(s);
                }
            }
            Command::Cancel(ids) => {
                for id in ids {
                    self.cancel(id);
                }
            }
            Command::Complete(done) => {
                for (exec, status) in done {
                    self.complete(exec, status);
                }
            }
            Command::HookDone { container, phase, ok } => self.hook_done(container, phase, ok),
            Command::ContainerLost(cid) => self.container_lost(cid),
            Command::DrainContainer(cid) => self.leave(cid, false),
            Command::InterruptContainer(cid) => self.leave(cid, true),
            Command::Shutdown(waiter) => {
                self.stopping = true;
                self.waiters.extend(waiter);
                let ids: Vec<PoolId> = self.pools.keys().copied().collect();
                for id in ids {
                    self.mark_dirty(id);
                }
            }
            Command::Kill => self.kill(),
        }
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn add_pool(&mut self, id: PoolId, spec: PoolSpec) {
        let queues = spec.methods.iter().map(|_| VecDeque::new()).collect();
        let built = !spec.hooks.build;
        self.pools.insert(
            id,
            Pool {
                spec,
                queues,
                containers: Vec::new(),
                built,
                failures: 0,
                restart_at: None,
                pending: 0,
                wake_at: None,
                deadlines: VecDeque::new(),
                dead_deadlines: 0,
                dirty: false,
                startup_avg: None,
                exec_avg: None,
            },
        );
        // minContainers are started right away, as Modal keeps them warm.
        self.mark_dirty(id);
    }

    fn mark_dirty(&mut self, pool: PoolId) {
        if let Some(p) = self.pools.get_mut(&pool) {
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(pool);
            }
        }
    }

    fn submit(&mut self, s: Submission) {
        let pool = if self.stopping { None } else { self.pools.get_mut(&s.pool) };
        let Some(p) = pool.filter(|p| (s.method as usize) < p.queues.len()) else {
            // A duplicate of a pending input is not refused: the first delivery stands.
            if !self.inputs.contains_key(&s.input) {
                self.results.done(s.input, 1, Outcome::Rejected);
            }
            return;
        };
        match self.inputs.entry(s.input) {
            // The same input id twice is a duplicate delivery: the first one stands.
            Entry::Occupied(_) => return,
            Entry::Vacant(v) => {
                v.insert(InputState {
                    pool: s.pool,
                    method: s.method,
                    attempt: 1,
                    retried: 0,
                    lost: 0,
                    state: IState::Queued,
                });
            }
        }
        self.next_seq += 1;
        p.pending += 1;
        p.queues[s.method as usize].push_back(Queued { input: s.input, attempt: 1, at: self.now, seq: self.next_seq });
        if !p.dirty {
            p.dirty = true;
            self.dirty.push(s.pool);
        }
    }

    fn cancel(&mut self, input: InputId) {
        let Some(st) = self.inputs.get(&input) else { return };
        let (pool, method, attempt, state) = (st.pool, st.method, st.attempt, st.state);
        match state {
            IState::Queued => {
                if let Some(p) = self.pools.get_mut(&pool) {
                    p.queues[method as usize].retain(|q| q.input != input);
                }
            }
            IState::Running(exec) => {
                // The code keeps its slot until it settles; its signal tells it to stop.
                self.invoker.abort(input, attempt, AbortReason::Cancelled);
                if let Some(e) = self.execs.get_mut(&exec) {
                    e.inputs.retain(|(i, _)| *i != input);
                }
            }
            IState::Backoff => {}
        }
        self.finish(input, attempt, Outcome::Cancelled);
    }

    fn complete(&mut self, exec: ExecId, status: ExecStatus) {
        let Some(e) = self.execs.remove(&exec) else { return };
        let mut exit_now = false;
        if let Some(c) = self.containers.get_mut(&e.container) {
            c.in_flight = c.in_flight.saturating_sub(1);
            if c.in_flight == 0 {
                c.idle_since = self.now;
                exit_now = c.state == CState::Draining;
            }
        }
        let quiet = !e.timed_out && status == ExecStatus::Delivered;
        if let Some(p) = self.pools.get_mut(&e.pool) {
            if !e.timed_out {
                deadline_gone(p, exec, &self.execs);
                p.exec_avg = Some(moving_average(p.exec_avg, self.now.saturating_duration_since(e.started)));
            }
            if quiet {
                for (input, _) in &e.inputs {
                    if self.inputs.remove(input).is_some() {
                        p.pending -= 1;
                    }
                }
            }
            if !p.dirty {
                p.dirty = true;
                self.dirty.push(e.pool);
            }
        }
        if exit_now {
            self.begin_exit(e.container);
        }
        if e.timed_out || quiet {
            return;
        }
        for (input, attempt) in e.inputs {
            match status {
                ExecStatus::Ok => self.finish(input, attempt, Outcome::Ok),
                ExecStatus::Failed => self.fail_attempt(input, attempt, Outcome::Failed),
                ExecStatus::FailedFinal => self.finish(input, attempt, Outcome::Failed),
                ExecStatus::Delivered => {}
            }
        }
    }

    /// An attempt failed: retry it after the policy's delay, or give the caller the outcome.
    fn fail_attempt(&mut self, input: InputId, attempt: u32, outcome: Outcome) {
        let Some(st) = self.inputs.get_mut(&input) else { return };
        if st.attempt != attempt {
            return;
        }
        let Some(pool) = self.pools.get(&st.pool) else { return };
        if st.retried < pool.spec.retries.max_retries {
            st.retried += 1;
            let delay = pool.spec.retries.delay_for(st.retried);
            st.state = IState::Backoff;
            self.timers.push(Reverse((self.now + delay, Timer::Retry(input, attempt + 1))));
        } else {
            self.finish(input, attempt, outcome);
        }
    }

    /// The attempt stopped through no fault of its code (its container died, was interrupted or
    /// is being replaced): the input goes back to the front of its queue as a new attempt,
    /// without spending a retry. `lost` counts it against [`MAX_RESCHEDULES`].
    fn reschedule(&mut self, input: InputId, attempt: u32, lost: bool) {
        let Some(st) = self.inputs.get_mut(&input) else { return };
        if st.attempt != attempt {
            return;
        }
        if lost {
            if st.lost >= MAX_RESCHEDULES {
                self.finish(input, attempt, Outcome::Lost);
                return;
            }
            st.lost += 1;
        }
        st.attempt = attempt + 1;
        st.state = IState::Queued;
        let (pool, method, attempt) = (st.pool, st.method, st.attempt);
        let seq = self.seq();
        if let Some(p) = self.pools.get_mut(&pool) {
            // It was dispatched before everything still queued: it stays ahead of it.
            p.queues[method as usize].push_front(Queued { input, attempt, at: self.now, seq });
        }
        self.mark_dirty(pool);
    }

    fn finish(&mut self, input: InputId, attempt: u32, outcome: Outcome) {
        if self.finish_quietly(input) {
            self.results.done(input, attempt, outcome);
        }
    }

    /// Forgets a finished input; false if it was not pending.
    fn finish_quietly(&mut self, input: InputId) -> bool {
        let Some(st) = self.inputs.remove(&input) else { return false };
        let pool = st.pool;
        if let Some(p) = self.pools.get_mut(&pool) {
            p.pending -= 1;
        }
        if self.stopping {
            self.mark_dirty(pool);
        }
        true
    }

    fn hook_done(&mut self, cid: ContainerId, phase: Phase, ok: bool) {
        let Some(c) = self.containers.get(&cid) else { return };
        let (pool, state) = (c.pool, c.state);
        match state {
            CState::Starting(p) if p == phase => {
                if !ok {
                    self.enter_failed(cid);
                    return;
                }
                if phase == Phase::Build {
                    if let Some(p) = self.pools.get_mut(&pool) {
                        p.built = true;
                    }
                }
                self.advance(cid, Some(phase));
            }
            CState::Exiting if phase == Phase::Exit => self.stop_container(cid),
            _ => {}
        }
    }

    /// Moves a starting container to its next phase that has hooks, or to serving.
    fn advance(&mut self, cid: ContainerId, after: Option<Phase>) {
        let Some(c) = self.containers.get(&cid) else { return };
        let pool_id = c.pool;
        let Some(pool) = self.pools.get(&pool_id) else { return };
        let hooks = pool.spec.hooks;
        let wanted = |ph: Phase| match ph {
            Phase::Spawn => hooks.spawn,
            Phase::Build => hooks.build && !pool.built,
            Phase::SnapEnter => hooks.snap_enter,
            Phase::Enter => hooks.enter,
            Phase::Exit => false,
        };
        let from = after.and_then(|a| STARTUP.iter().position(|p| *p == a)).map_or(0, |i| i + 1);
        let next = STARTUP[from..].iter().copied().find(|ph| wanted(*ph));
        let startup_timeout = pool.spec.startup_timeout;
        let Some(c) = self.containers.get_mut(&cid) else { return };
        match next {
            Some(phase) => {
                c.state = CState::Starting(phase);
                // The startup bound covers starting the process and the enter phases, not the
                // (cached) build: each stretch gets its own deadline, told apart by generation.
                let bounded = phase != Phase::Build;
                let fresh = after.is_none_or(|a| a == Phase::Build || a == Phase::Spawn);
                if bounded && fresh {
                    c.startup_gen += 1;
                    let gen = c.startup_gen;
                    self.timers.push(Reverse((self.now + startup_timeout, Timer::Startup(cid, gen))));
                }
                self.invoker.run_hook(pool_id, cid, phase);
            }
            None => {
                c.state = CState::Serving;
                c.idle_since = self.now;
                let took = self.now.saturating_duration_since(c.created);
                if let Some(p) = self.pools.get_mut(&pool_id) {
                    p.failures = 0;
                    p.startup_avg = Some(moving_average(p.startup_avg, took));
                }
                self.mark_dirty(pool_id);
            }
        }
    }

    fn enter_failed(&mut self, cid: ContainerId) {
        let Some(c) = self.containers.get(&cid) else { return };
        let pool_id = c.pool;
        self.remove_container(cid);
        let Some(p) = self.pools.get_mut(&pool_id) else { return };
        p.failures += 1;
        let backoff = FIRST_RESTART_BACKOFF.saturating_mul(1u32 << (p.failures - 1).min(16)).min(MAX_RESTART_BACKOFF);
        let at = self.now + backoff;
        p.restart_at = Some(at);
        self.timers.push(Reverse((at, Timer::PoolWake(pool_id))));
        // With no container able to serve, the waiting inputs would wait for nothing.
        let any_serving = p
            .containers
            .iter()
            .any(|id| self.containers.get(id).is_some_and(|c| matches!(c.state, CState::Serving | CState::Draining)));
        if !any_serving {
            let failed: Vec<(InputId, u32)> =
                p.queues.iter_mut().flat_map(|q| q.drain(..)).map(|q| (q.input, q.attempt)).collect();
            for (input, attempt) in failed {
                self.finish(input, attempt, Outcome::Init(cid));
            }
        }
        self.mark_dirty(pool_id);
    }

    fn container_lost(&mut self, cid: ContainerId) {
        let Some(c) = self.containers.get(&cid) else { return };
        if matches!(c.state, CState::Starting(_)) {
            self.enter_failed(cid);
            return;
        }
        let pool = c.pool;
        self.take_back(cid, None, true);
        // Executions past their timeout that it still held are gone with it.
        self.execs.retain(|_, e| e.container != cid);
        self.remove_container(cid);
        self.mark_dirty(pool);
    }

    /// The executions on container `cid` whose inputs are still undecided: their inputs run
    /// again elsewhere (`lost`: counted against [`MAX_RESCHEDULES`]). With `abort`, the
    /// container lives on, so its code is told to stop (`Rescheduled`), and each execution keeps
    /// its slot until the code settles, as after a timeout; else they are forgotten.
    fn take_back(&mut self, cid: ContainerId, abort: Option<Instant>, lost: bool) {
        let ids: Vec<ExecId> =
            self.execs.iter().filter(|(_, e)| e.container == cid && !e.timed_out).map(|(id, _)| *id).collect();
        for id in ids {
            let (pool, inputs) = if abort.is_some() {
                let Some(e) = self.execs.get_mut(&id) else { continue };
                e.timed_out = true;
                (e.pool, std::mem::take(&mut e.inputs))
            } else {
                let Some(e) = self.execs.remove(&id) else { continue };
                (e.pool, e.inputs)
            };
            if let Some(p) = self.pools.get_mut(&pool) {
                deadline_gone(p, id, &self.execs);
            }
            if let Some(at) = abort {
                self.timers.push(Reverse((at, Timer::Overdue(id))));
            }
            for (input, attempt) in inputs {
                if abort.is_some() {
                    self.invoker.abort(input, attempt, AbortReason::Rescheduled);
                }
                self.reschedule(input, attempt, lost);
            }
        }
    }

    /// The container's process asked to stop: SIGTERM drains it; SIGINT (`interrupt`) first
    /// sends its running inputs elsewhere. One still starting stops now, with no exit hooks and
    /// no failure counted (the inputs waiting for it go to the next container).
    fn leave(&mut self, cid: ContainerId, interrupt: bool) {
        let Some(c) = self.containers.get(&cid) else { return };
        let (pool, state) = (c.pool, c.state);
        match state {
            CState::Starting(_) => self.stop_container(cid),
            CState::Serving | CState::Draining => {
                if interrupt {
                    let at = self.now + OVERDUE_GRACE;
                    self.take_back(cid, Some(at), false);
                }
                if state == CState::Serving {
                    self.drain_container(cid);
                }
                self.mark_dirty(pool);
            }
            CState::Exiting => {}
        }
    }

    /// `input`'s code ignored its abort past the grace: the container is stopped without exit
    /// hooks (its process is ended; an embedded instance is dropped) and its other inputs run
    /// again elsewhere.
    fn replace(&mut self, exec: ExecId) {
        let Some(e) = self.execs.get(&exec) else { return };
        let Some(c) = self.containers.get(&e.container) else { return };
        let (cid, pool) = (e.container, c.pool);
        self.invoker.replaced(pool, cid, e.first);
        let at = self.now;
        self.take_back(cid, Some(at), false);
        // Executions still holding slots there are forgotten with the container.
        self.execs.retain(|_, e| e.container != cid);
        self.remove_container(cid);
        self.mark_dirty(pool);
    }

    fn remove_container(&mut self, cid: ContainerId) {
        let Some(c) = self.containers.remove(&cid) else { return };
        if let Some(p) = self.pools.get_mut(&c.pool) {
            p.containers.retain(|id| *id != cid);
        }
        self.invoker.container_stopped(c.pool, cid);
    }

    fn begin_exit(&mut self, cid: ContainerId) {
        let Some(c) = self.containers.get_mut(&cid) else { return };
        let Some(pool) = self.pools.get(&c.pool) else { return };
        if pool.spec.hooks.exit {
            c.state = CState::Exiting;
            let grace = pool.spec.exit_grace;
            let pool_id = c.pool;
            self.timers.push(Reverse((self.now + grace, Timer::ExitGrace(cid))));
            self.invoker.run_hook(pool_id, cid, Phase::Exit);
        } else {
            self.stop_container(cid);
        }
    }

    fn stop_container(&mut self, cid: ContainerId) {
        let pool = self.containers.get(&cid).map(|c| c.pool);
        self.remove_container(cid);
        if let Some(pool) = pool {
            self.mark_dirty(pool);
        }
    }

    fn drain_container(&mut self, cid: ContainerId) {
        let Some(c) = self.containers.get_mut(&cid) else { return };
        c.state = CState::Draining;
        if c.in_flight == 0 {
            self.begin_exit(cid);
        }
    }

    fn kill(&mut self) {
        self.stopping = true;
        self.killed = true;
        let running: Vec<(InputId, u32, IState)> =
            self.inputs.iter().map(|(id, st)| (*id, st.attempt, st.state)).collect();
        for (input, attempt, state) in running {
            if matches!(state, IState::Running(_)) {
                self.invoker.abort(input, attempt, AbortReason::Cancelled);
            }
            self.finish(input, attempt, Outcome::Cancelled);
        }
        for p in self.pools.values_mut() {
            p.queues.iter_mut().for_each(VecDeque::clear);
        }
        self.execs.clear();
        for p in self.pools.values_mut() {
            p.deadlines.clear();
            p.dead_deadlines = 0;
        }
        let ids: Vec<ContainerId> = self.containers.keys().copied().collect();
        for cid in ids {
            self.remove_container(cid);
        }
        self.invoker.flush();
        self.results.flush();
        for w in self.waiters.drain(..) {
            let _ = w.send(());
        }
    }

    fn fire_timers(&mut self) {
        let now = self.now;
        let mut expired = Vec::new();
        for p in self.pools.values_mut() {
            while let Some(&(at, id)) = p.deadlines.front() {
                if !self.execs.contains_key(&id) {
                    p.deadlines.pop_front();
                    p.dead_deadlines = p.dead_deadlines.saturating_sub(1);
                } else if at <= now {
                    p.deadlines.pop_front();
                    expired.push(id);
                } else {
                    break;
                }
            }
        }
        for id in expired {
            self.exec_timeout(id);
        }
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Retry(input, attempt) => self.retry_ready(input, attempt),
                Timer::PoolWake(pool) => {
                    if let Some(p) = self.pools.get_mut(&pool) {
                        if p.wake_at.is_some_and(|w| w <= now) {
                            p.wake_at = None;
                        }
                    }
                    self.mark_dirty(pool);
                }
                Timer::Startup(cid, gen) => {
                    let state = self.containers.get(&cid).filter(|c| c.startup_gen == gen).map(|c| (c.pool, c.state));
                    if let Some((pool, CState::Starting(phase @ (Phase::Spawn | Phase::SnapEnter | Phase::Enter)))) =
                        state
                    {
                        self.invoker.hook_abandoned(pool, cid, phase);
                        self.enter_failed(cid);
                    }
                }
                Timer::Overdue(exec) => {
                    if self.execs.get(&exec).is_some_and(|e| e.timed_out) {
                        self.replace(exec);
                    }
                }
                Timer::ExitGrace(cid) => {
                    let state = self.containers.get(&cid).map(|c| (c.pool, c.state));
                    if let Some((pool, CState::Exiting)) = state {
                        self.invoker.hook_abandoned(pool, cid, Phase::Exit);
                        self.stop_container(cid);
                    }
                }
            }
        }
    }

    fn exec_timeout(&mut self, id: ExecId) {
        let Some(e) = self.execs.get_mut(&id) else { return };
        if e.timed_out {
            return;
        }
        e.timed_out = true;
        let inputs = std::mem::take(&mut e.inputs);
        self.timers.push(Reverse((self.now + OVERDUE_GRACE, Timer::Overdue(id))));
        for (input, attempt) in inputs {
            self.invoker.abort(input, attempt, AbortReason::Timeout);
            self.fail_attempt(input, attempt, Outcome::Timeout);
        }
    }

    fn retry_ready(&mut self, input: InputId, attempt: u32) {
        let Some(st) = self.inputs.get_mut(&input) else { return };
        if st.state != IState::Backoff || st.attempt + 1 != attempt {
            return;
        }
        st.attempt = attempt;
        st.state = IState::Queued;
        let (pool, method) = (st.pool, st.method);
        let seq = self.seq();
        if let Some(p) = self.pools.get_mut(&pool) {
            p.queues[method as usize].push_back(Queued { input, attempt, at: self.now, seq });
        }
        self.mark_dirty(pool);
    }

    fn dispatch_dirty(&mut self) {
        while let Some(pool) = self.dirty.pop() {
            if let Some(p) = self.pools.get_mut(&pool) {
                p.dirty = false;
            }
            self.dispatch(pool);
            self.autoscale(pool);
        }
    }

    /// Hands ready work to free slots: the method whose oldest input is oldest goes first; a
    /// batched method is ready when full or when its oldest input has waited `wait`.
    fn dispatch(&mut self, pool_id: PoolId) {
        let now = self.now;
        let mut wake: Option<Instant> = None;
        let mut last: Option<ContainerId> = None;
        loop {
            let Some(pool) = self.pools.get(&pool_id) else { return };
            let mut best: Option<(usize, u64)> = None;
            for (m, q) in pool.queues.iter().enumerate() {
                let Some(head) = q.front() else { continue };
                let ready = match pool.spec.methods[m].batching {
                    None => true,
                    Some(b) => {
                        let due = head.at + b.wait;
                        let ready = q.len() >= b.max_batch_size as usize || due <= now;
                        if !ready {
                            wake = Some(wake.map_or(due, |w| w.min(due)));
                        }
                        ready
                    }
                };
                if ready && best.is_none_or(|(_, seq)| head.seq < seq) {
                    best = Some((m, head.seq));
                }
            }
            let Some((method, _)) = best else { break };
            // The container just used is what a fresh pick returns while it is below
            // targetInputs (the most loaded one below target): skip the scan.
            let target = pool.spec.target_inputs;
            let cached = last.filter(|id| {
                self.containers.get(id).is_some_and(|c| c.state == CState::Serving && c.in_flight < target)
            });
            let Some(cid) = cached.or_else(|| self.pick_container(pool_id)) else { break };
            last = Some(cid);
            self.start_exec(pool_id, cid, method);
        }
        if let Some(at) = wake {
            self.wake_pool_at(pool_id, at);
        }
    }

    fn wake_pool_at(&mut self, pool_id: PoolId, at: Instant) {
        let Some(p) = self.pools.get_mut(&pool_id) else { return };
        if p.wake_at.is_none_or(|w| at < w || w <= self.now) {
            p.wake_at = Some(at);
            self.timers.push(Reverse((at, Timer::PoolWake(pool_id))));
        }
    }

    /// Packs work onto containers up to `targetInputs` (most loaded first, as Modal does),
    /// then spreads what is left up to `maxInputs` (least loaded first).
    fn pick_container(&self, pool_id: PoolId) -> Option<ContainerId> {
        let pool = self.pools.get(&pool_id)?;
        let (max, target) = (pool.spec.max_inputs, pool.spec.target_inputs);
        let serving = pool
            .containers
            .iter()
            .filter_map(|id| self.containers.get(id).map(|c| (*id, c)))
            .filter(|(_, c)| c.state == CState::Serving && c.in_flight < max);
        let mut packed: Option<(ContainerId, u32)> = None;
        let mut spread: Option<(ContainerId, u32)> = None;
        for (id, c) in serving {
            if c.in_flight < target {
                if packed.is_none_or(|(_, n)| c.in_flight > n) {
                    packed = Some((id, c.in_flight));
                }
            } else if spread.is_none_or(|(_, n)| c.in_flight < n) {
                spread = Some((id, c.in_flight));
            }
        }
        packed.or(spread).map(|(id, _)| id)
    }

    fn start_exec(&mut self, pool_id: PoolId, cid: ContainerId, method: usize) {
        let Some(pool) = self.pools.get_mut(&pool_id) else { return };
        let take = pool.spec.methods[method].batching.map_or(1, |b| b.max_batch_size as usize);
        let q = &mut pool.queues[method];
        let n = take.min(q.len());
        let inputs: ExecInputs = q.drain(..n).map(|q| (q.input, q.attempt)).collect();
        let id = self.next_exec;
        self.next_exec += 1;
        pool.deadlines.push_back((self.now + pool.spec.timeout, id));
        let single_use = pool.spec.single_use;
        for (input, _) in &inputs {
            if let Some(st) = self.inputs.get_mut(input) {
                st.state = IState::Running(id);
            }
        }
        if let Some(c) = self.containers.get_mut(&cid) {
            c.in_flight += 1;
            if single_use {
                c.state = CState::Draining;
            }
        }
        let exec = Exec { id, pool: pool_id, container: cid, method: method as u32, inputs };
        self.invoker.run(&exec);
        let first = exec.inputs.first().map_or(0, |(input, _)| *input);
        let started = self.now;
        let state = ExecState { pool: pool_id, container: cid, inputs: exec.inputs, timed_out: false, first, started };
        self.execs.insert(id, state);
    }

    /// Starts or drains containers so that the pool has what its load asks for, within
    /// `minContainers..=maxContainers` (plus `bufferContainers` while busy). Queued work asks for
    /// a new container only if the containers there cannot do it before a new one would be
    /// ready (see [`Self::absorbable`]): a burst of quick batches does not start containers that
    /// would load a model to find the queue empty.
    fn autoscale(&mut self, pool_id: PoolId) {
        let now = self.now;
        let Some(pool) = self.pools.get(&pool_id) else { return };
        let spec = &pool.spec;
        let mut live = 0u32;
        let mut serving = 0u32;
        let mut starting = 0u32;
        let mut in_flight = 0u32;
        for c in pool.containers.iter().filter_map(|id| self.containers.get(id)) {
            if matches!(c.state, CState::Starting(_) | CState::Serving) {
                live += 1;
                serving += u32::from(c.state == CState::Serving);
                in_flight += c.in_flight;
            }
            if matches!(c.state, CState::Starting(_)) {
                starting += 1;
            }
        }
        let queued: u32 = pool
            .queues
            .iter()
            .zip(&spec.methods)
            .map(|(q, m)| {
                let n = q.len() as u32;
                m.batching.map_or(n, |b| n.div_ceil(b.max_batch_size))
            })
            .sum();
        let (absorbed, estimate) = self.absorbable(pool, live, serving, queued);
        let load = queued - absorbed.min(queued) + in_flight;
        let mut desired = load.div_ceil(spec.target_inputs);
        if queued + in_flight > 0 {
            desired += spec.buffer_containers;
        }
        let floor = if self.stopping { 0 } else { spec.min_containers };
        desired = desired.clamp(floor, spec.max_containers);
        if !pool.built {
            // One container builds; the others start once the build is cached.
            desired = desired.min(1);
        }
        let restart_wait = pool.restart_at.filter(|at| *at > now);
        // While running code takes longer, fewer queued executions are absorbed: look again when
        // the estimate falls below what the containers there (after this decision) leave queued.
        let covered = (live.max(desired) * spec.target_inputs).saturating_sub(in_flight);
        let uncovered = queued.saturating_sub(covered);
        if let (Some(e), true) = (estimate, uncovered > 0 && desired < spec.max_containers) {
            let threshold = e.startup.mul_f64(e.slots / f64::from(uncovered));
            if e.exec < threshold {
                self.wake_pool_at(pool_id, e.oldest + threshold);
            }
        }
        let Some(pool) = self.pools.get(&pool_id) else { return };
        let spec = &pool.spec;

        if live < desired {
            if let Some(at) = restart_wait {
                self.wake_pool_at(pool_id, at);
            } else {
                // After a failed start, and until a container starts, one tries at a time: the
                // others would fail alike (each waiting caller would otherwise bring one).
                let room = if pool.failures > 0 { 1u32.saturating_sub(starting) } else { desired - live };
                for _ in 0..room.min(desired - live) {
                    self.start_container(pool_id);
                }
            }
        } else if live > desired {
            let window = if self.stopping { Duration::ZERO } else { spec.scaledown_window };
            let mut idle: Vec<(Instant, ContainerId)> = pool
                .containers
                .iter()
                .filter_map(|id| self.containers.get(id).map(|c| (*id, c)))
                .filter(|(_, c)| c.state == CState::Serving && c.in_flight == 0)
                .map(|(id, c)| (c.idle_since, id))
                .collect();
            idle.sort();
            let mut excess = live - desired;
            let mut next_check: Option<Instant> = None;
            for (since, id) in idle {
                if excess == 0 {
                    break;
                }
                if since + window <= now {
                    self.drain_container(id);
                    excess -= 1;
                } else {
                    next_check = Some(next_check.map_or(since + window, |t: Instant| t.min(since + window)));
                }
            }
            if let Some(at) = next_check {
                self.wake_pool_at(pool_id, at);
            }
        }
    }

    /// How many queued executions the serving containers will have done before a container
    /// started now could serve. A serving container does `targetInputs` executions at a time,
    /// each taking the measured average (or, when longer, as long as the oldest one running has
    /// run so far); a new container takes the measured startup time. Before any container has
    /// become ready nothing is known: one container starts for a queue, the others wait for its
    /// measurements. A pool whose containers start at once (no hooks) absorbs nothing and
    /// scales on its queue. The estimate, when it rests on code still running, comes along.
    fn absorbable(&self, pool: &Pool, live: u32, serving: u32, queued: u32) -> (u32, Option<Estimate>) {
        if queued == 0 {
            return (0, None);
        }
        let Some(startup) = pool.startup_avg else {
            return (if live == 0 { queued - 1 } else { u32::MAX }, None);
        };
        if serving == 0 || startup.is_zero() {
            return (0, None);
        }
        let oldest = pool
            .deadlines
            .iter()
            .take(8)
            .find(|(_, id)| self.execs.get(id).is_some_and(|e| !e.timed_out))
            .and_then(|(at, _)| at.checked_sub(pool.spec.timeout));
        let running_for = oldest.map(|t| self.now.saturating_duration_since(t));
        let exec = match (pool.exec_avg, running_for) {
            (Some(a), Some(r)) => a.max(r),
            (a, r) => a.or(r).unwrap_or_default(),
        };
        let slots = f64::from(serving) * f64::from(pool.spec.target_inputs);
        let estimate = oldest.map(|oldest| Estimate { oldest, exec, startup, slots });
        if exec.is_zero() {
            return (u32::MAX, estimate);
        }
        let n = slots * startup.as_secs_f64() / exec.as_secs_f64();
        (if n >= f64::from(u32::MAX) { u32::MAX } else { n as u32 }, estimate)
    }

    fn start_container(&mut self, pool_id: PoolId) {
        let cid = self.next_container;
        self.next_container += 1;
        let now = self.now;
        self.containers.insert(
            cid,
            Container {
                pool: pool_id,
                state: CState::Starting(Phase::Build),
                startup_gen: 0,
                in_flight: 0,
                idle_since: now,
                created: now,
            },
        );
        if let Some(p) = self.pools.get_mut(&pool_id) {
            p.containers.push(cid);
        }
        self.advance(cid, None);
    }
}

#[cfg(test)]
mod tests;
