//! Deadlines: execution timeouts (a sorted queue per pool) and the timer heap (retries, batch
//! waits, restart backoff, startup bounds, exit grace, overdue executions). A timer whose subject
//! has moved on is ignored when it fires.

use std::cmp::Reverse;

use tokio::time::Instant;

use super::types::{AbortReason, ContainerId, ExecId, IdMap, InputId, Outcome, Phase, PoolId, OVERDUE_GRACE};
use super::{CState, ExecState, IState, Invoker, Pool, Queued, ResultSink, Scheduler};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Timer {
    Retry(InputId, u32),
    PoolWake(PoolId),
    Startup(ContainerId, u32),
    ExitGrace(ContainerId),
    /// An aborted execution still holding its slot after the grace.
    Overdue(ExecId),
}
/// A live exec's deadline entry became dead (the exec completed or was lost): drop what has
/// surfaced at the front, and compact when dead entries outnumber live ones.
pub(super) fn deadline_gone(p: &mut Pool, gone: ExecId, execs: &IdMap<ExecId, ExecState>) {
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
impl<I: Invoker, R: ResultSink> Scheduler<I, R> {
    pub(super) fn fire_timers(&mut self) {
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
    pub(super) fn wake_pool_at(&mut self, pool_id: PoolId, at: Instant) {
        let Some(p) = self.pools.get_mut(&pool_id) else { return };
        if p.wake_at.is_none_or(|w| at < w || w <= self.now) {
            p.wake_at = Some(at);
            self.timers.push(Reverse((at, Timer::PoolWake(pool_id))));
        }
    }
}
