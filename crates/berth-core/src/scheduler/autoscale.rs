//! How many containers a pool should have, from its queue, what runs, and the measured startup
//! and execution times.

use std::time::Duration;

use tokio::time::Instant;

use super::types::{ContainerId, PoolId};
use super::{CState, Invoker, Pool, ResultSink, Scheduler};

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
pub(super) fn moving_average(avg: Option<Duration>, sample: Duration) -> Duration {
    match avg {
        None => sample,
        Some(a) => (a * 3 + sample) / 4,
    }
}
impl<I: Invoker, R: ResultSink> Scheduler<I, R> {
    /// Starts or drains containers so that the pool has what its load asks for, within
    /// `minContainers..=maxContainers` (plus `bufferContainers` while busy). Queued work asks for
    /// a new container only if the containers there cannot do it before a new one would be
    /// ready (see [`Self::absorbable`]): a burst of quick batches does not start containers that
    /// would load a model to find the queue empty.
    pub(super) fn autoscale(&mut self, pool_id: PoolId) {
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
        // Stopping, or replaced: nothing kept warm, idle containers drain at once.
        let stopping = self.stopping || pool.retiring;
        let floor = if stopping { 0 } else { spec.min_containers };
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
            let window = if stopping { Duration::ZERO } else { spec.scaledown_window };
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
}
