//! The scheduler actor: container lifecycle, per-method queues, concurrency slots, dynamic
//! batching, per-attempt timeouts, retries with backoff, cancellation, autoscaling and drain.
//!
//! All state lives on one task; commands arrive from an [`InputSource`], work leaves through an
//! [`Invoker`], and each input's single final outcome leaves through a [`ResultSink`]. Timers are
//! a heap of deadlines checked lazily: a timer whose subject has moved on is simply ignored.
//!
//! This file holds the state and the turn (`handle` a command, `tick`); the rules live beside it:
//! `types` what a host sees, `lifecycle` a container's life, `dispatch` an input's way through
//! queues and slots, `autoscale` how many containers, `timers` every deadline.

mod autoscale;
mod dispatch;
mod lifecycle;
pub mod metrics;
mod timers;
mod types;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{sleep_until, Instant};

use crate::spec::PoolSpec;
use metrics::{ContainerCounts, ContainerStates, MethodMetrics, PoolMetrics};
use timers::Timer;
pub use types::{
    AbortReason, Command, ContainerId, Exec, ExecId, ExecInputs, ExecStatus, IdHasher, IdMap, InputId, InputSource,
    Invoker, Outcome, Phase, PoolId, ResultSink, Submission, MAX_RESCHEDULES, MAX_RESTART_BACKOFF, OVERDUE_GRACE,
};

/// The unit of an input's acceptance time ([`Scheduler::ticks`]): below the smallest latency
/// bucket (metrics.rs).
const TICK: Duration = Duration::from_micros(TICK_MICROS as u64);
const TICK_MICROS: u32 = 100;
const TICKS_PER_SECOND: u64 = 1_000_000 / TICK_MICROS as u64;

/// Commands handled in one turn before timers get their look: keeps timeouts on time under load.
const MAX_COMMANDS_PER_TURN: usize = 4096;

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
    /// Admission under `max_pending` (see dispatch.rs, `admit`): how many more inputs may be
    /// accepted, valid while `admit_gen` is the scheduler's `gen`.
    admit: u32,
    admit_gen: u64,
    /// Accepted inputs that wait for room in the queue (`Submission::waits`), oldest first.
    held: VecDeque<(InputId, u32)>,
    /// Replaced ([`Command::RetirePool`]): it scales as on shutdown, to nothing once idle.
    retiring: bool,
    /// What it counted, per method (metrics.rs).
    metrics: Vec<MethodMetrics>,
    counted: ContainerCounts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IState {
    Queued,
    Running(ExecId),
    Backoff,
    /// Accepted, waiting for room under `max_pending` (not yet in the queue).
    Held,
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
    /// When it was accepted, in [`Scheduler::ticks`]: its latency runs from here to its
    /// outcome. Four bytes that fit in the padding of the fields above, where an `Instant`
    /// made every pending input 8 bytes larger (a `.map()` of 100,000 inputs holds them all).
    accepted: u32,
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
    /// Bumped by everything that can change a pool's room under `max_pending` (every command
    /// but a submission, and each tick), so consecutive submissions share one count.
    gen: u64,
    /// The origin of [`Scheduler::ticks`].
    epoch: Instant,
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
            gen: 1,
            epoch: Instant::now(),
        }
    }

    /// The clock in units of [`TICK`] since the scheduler was made, wrapping: the span between
    /// two readings is right up to 2^32 ticks (about 5 days) apart.
    fn ticks(&self) -> u32 {
        let d = self.now.saturating_duration_since(self.epoch);
        // u64 arithmetic by constants (as_micros is a u128, and dividing one is a call).
        (d.as_secs().wrapping_mul(TICKS_PER_SECOND) + u64::from(d.subsec_micros() / TICK_MICROS)) as u32
    }
}

/// Seconds from one reading of [`Scheduler::ticks`] to a later one.
fn seconds_between(from: u32, to: u32) -> f64 {
    f64::from(to.wrapping_sub(from)) * TICK.as_secs_f64()
}

impl<I: Invoker, R: ResultSink> Scheduler<I, R> {
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
        self.gen += 1;
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
        if !matches!(cmd, Command::Submit(_) | Command::Metrics(_) | Command::Containers(_)) {
            self.gen += 1;
        }
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
            Command::Withdraw(ids) => {
                for id in ids {
                    if self.inputs.get(&id).is_some_and(|s| !matches!(s.state, IState::Running(_))) {
                        self.cancel(id);
                    }
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
            Command::RetirePool(id) => {
                if let Some(p) = self.pools.get_mut(&id) {
                    p.retiring = true;
                }
                self.mark_dirty(id);
            }
            Command::Shutdown(waiter) => {
                self.stopping = true;
                self.waiters.extend(waiter);
                let ids: Vec<PoolId> = self.pools.keys().copied().collect();
                for id in ids {
                    self.mark_dirty(id);
                }
            }
            Command::Kill => self.kill(),
            Command::Metrics(answer) => {
                let _ = answer.send(self.metrics());
            }
            Command::Containers(answer) => {
                let _ = answer.send(self.containers());
            }
        }
    }

    /// What every pool has counted, with its queued and running inputs and its containers by
    /// state as they are now (metrics.rs). Costs a pass over the running executions and the
    /// containers; nothing is counted here.
    pub fn metrics(&self) -> Vec<PoolMetrics> {
        let mut out: Vec<PoolMetrics> = Vec::with_capacity(self.pools.len());
        for (&id, p) in &self.pools {
            let mut queued: Vec<u32> = p.queues.iter().map(|q| q.len() as u32).collect();
            for (_, method) in &p.held {
                if let Some(n) = queued.get_mut(*method as usize) {
                    *n += 1;
                }
            }
            let mut states = ContainerStates::default();
            for c in p.containers.iter().filter_map(|c| self.containers.get(c)) {
                match c.state {
                    CState::Starting(_) => states.starting += 1,
                    CState::Serving => states.serving += 1,
                    CState::Draining => states.draining += 1,
                    CState::Exiting => states.exiting += 1,
                }
            }
            out.push(PoolMetrics {
                pool: id,
                methods: p.metrics.clone(),
                queued,
                running: vec![0; p.queues.len()],
                containers: p.counted,
                states,
            });
        }
        out.sort_unstable_by_key(|m| m.pool);
        for e in self.execs.values() {
            let Ok(at) = out.binary_search_by_key(&e.pool, |m| m.pool) else { continue };
            for (input, _) in &e.inputs {
                let method = self.inputs.get(input).map_or(0, |s| s.method as usize);
                if let Some(n) = out[at].running.get_mut(method) {
                    *n += 1;
                }
            }
        }
        out
    }

    /// Every container with its state and the inputs it runs, by id. A pass over the
    /// containers; asked for by `berth container list`, never on an input's path.
    pub fn containers(&self) -> Vec<metrics::ContainerInfo> {
        let mut out: Vec<metrics::ContainerInfo> = self
            .containers
            .iter()
            .map(|(&id, c)| metrics::ContainerInfo {
                container: id,
                pool: c.pool,
                state: match c.state {
                    CState::Starting(_) => "starting",
                    CState::Serving => "serving",
                    CState::Draining => "draining",
                    CState::Exiting => "exiting",
                },
                in_flight: c.in_flight,
            })
            .collect();
        out.sort_unstable_by_key(|c| c.container);
        out
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn add_pool(&mut self, id: PoolId, spec: PoolSpec) {
        let queues = spec.methods.iter().map(|_| VecDeque::new()).collect();
        let metrics = spec.methods.iter().map(|_| MethodMetrics::new()).collect();
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
                admit: 0,
                admit_gen: 0,
                held: VecDeque::new(),
                retiring: false,
                metrics,
                counted: ContainerCounts::default(),
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
}

#[cfg(test)]
mod tests;
