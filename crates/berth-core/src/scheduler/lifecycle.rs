//! A container's life: start, startup phases and their hooks, serving, drain, exit hooks, stop;
//! and the ways it ends early (failed start, lost process, interruption, replacement, kill).

use std::cmp::Reverse;
use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::autoscale::moving_average;
use super::timers::{deadline_gone, Timer};
use super::types::{
    AbortReason, ContainerId, ExecId, InputId, Outcome, Phase, PoolId, MAX_RESTART_BACKOFF, OVERDUE_GRACE,
};
use super::{CState, Container, IState, Invoker, ResultSink, Scheduler};

/// The phases a container goes through before serving, in order.
const STARTUP: [Phase; 4] = [Phase::Spawn, Phase::Build, Phase::SnapEnter, Phase::Enter];
const FIRST_RESTART_BACKOFF: Duration = Duration::from_millis(250);

impl<I: Invoker, R: ResultSink> Scheduler<I, R> {
    pub(super) fn hook_done(&mut self, cid: ContainerId, phase: Phase, ok: bool) {
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

    pub(super) fn enter_failed(&mut self, cid: ContainerId) {
        let Some(c) = self.containers.get(&cid) else { return };
        let pool_id = c.pool;
        self.remove_container(cid);
        let Some(p) = self.pools.get_mut(&pool_id) else { return };
        p.counted.failed_to_start += 1;
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
            // Held inputs too: they would only reach the queue to fail there one start later.
            let mut failed: Vec<(InputId, u32)> =
                p.queues.iter_mut().flat_map(|q| q.drain(..)).map(|q| (q.input, q.attempt)).collect();
            failed.extend(p.held.drain(..).map(|(input, _)| (input, 1)));
            for (input, attempt) in failed {
                self.finish(input, attempt, Outcome::Init(cid));
            }
        }
        self.mark_dirty(pool_id);
    }

    pub(super) fn container_lost(&mut self, cid: ContainerId) {
        let Some(c) = self.containers.get(&cid) else { return };
        if matches!(c.state, CState::Starting(_)) {
            self.enter_failed(cid);
            return;
        }
        let pool = c.pool;
        if let Some(p) = self.pools.get_mut(&pool) {
            p.counted.lost += 1;
        }
        self.take_back(cid, None, true);
        // Executions past their timeout that it still held are gone with it.
        self.execs.retain(|_, e| e.container != cid);
        self.remove_container(cid);
        self.mark_dirty(pool);
    }

    /// The executions on container `cid` whose inputs are still undecided: their inputs run
    /// again elsewhere (`lost`: counted against [`MAX_RESCHEDULES`](super::MAX_RESCHEDULES)).
    /// With `abort`, the container lives on, so its code is told to stop (`Rescheduled`), and
    /// each execution keeps its slot until the code settles, as after a timeout; else they are
    /// forgotten.
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
    pub(super) fn leave(&mut self, cid: ContainerId, interrupt: bool) {
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
    pub(super) fn replace(&mut self, exec: ExecId) {
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

    pub(super) fn begin_exit(&mut self, cid: ContainerId) {
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

    pub(super) fn stop_container(&mut self, cid: ContainerId) {
        let pool = self.containers.get(&cid).map(|c| c.pool);
        self.remove_container(cid);
        if let Some(pool) = pool {
            self.mark_dirty(pool);
        }
    }

    pub(super) fn drain_container(&mut self, cid: ContainerId) {
        let Some(c) = self.containers.get_mut(&cid) else { return };
        c.state = CState::Draining;
        if c.in_flight == 0 {
            self.begin_exit(cid);
        }
    }

    pub(super) fn kill(&mut self) {
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
            p.held.clear();
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
    pub(super) fn start_container(&mut self, pool_id: PoolId) {
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
            p.counted.started += 1;
        }
        self.advance(cid, None);
    }
}
