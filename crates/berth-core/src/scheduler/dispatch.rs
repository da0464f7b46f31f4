//! Inputs on their way through a pool: submit, queue, hand to a free slot (alone or batched),
//! complete, retry or reschedule, and finish with one outcome.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;

use tokio::time::Instant;

use super::autoscale::moving_average;
use super::metrics::outcome_index;
use super::timers::{deadline_gone, Timer};
use super::types::{
    AbortReason, ContainerId, Exec, ExecId, ExecInputs, ExecStatus, InputId, Outcome, PoolId, Submission,
    MAX_RESCHEDULES,
};
use super::{seconds_between, CState, ExecState, IState, InputState, Invoker, Queued, ResultSink, Scheduler};

impl<I: Invoker, R: ResultSink> Scheduler<I, R> {
    pub(super) fn submit(&mut self, s: Submission) {
        let accepted = self.ticks();
        let pool = if self.stopping { None } else { self.pools.get_mut(&s.pool) };
        let Some(p) = pool.filter(|p| (s.method as usize) < p.queues.len()) else {
            // A duplicate of a pending input is not refused: the first delivery stands.
            if !self.inputs.contains_key(&s.input) {
                if let Some(m) = self.pools.get_mut(&s.pool).and_then(|p| p.metrics.get_mut(s.method as usize)) {
                    m.outcomes[outcome_index(Outcome::Rejected)] += 1;
                }
                self.results.done(s.input, 1, Outcome::Rejected);
            }
            return;
        };
        let Entry::Vacant(v) = self.inputs.entry(s.input) else {
            // The same input id twice is a duplicate delivery: the first one stands.
            return;
        };
        let mut held = false;
        if let Some(max) = p.spec.max_pending {
            // One compare per input: the room is counted once per turn (see `room`).
            if p.admit_gen != self.gen {
                p.admit = room(p, &self.containers, max);
                p.admit_gen = self.gen;
            }
            if s.waits && !p.held.is_empty() {
                held = true;
            } else if p.admit == 0 {
                if !s.waits {
                    p.metrics[s.method as usize].outcomes[outcome_index(Outcome::QueueFull(max))] += 1;
                    self.results.done(s.input, 1, Outcome::QueueFull(max));
                    return;
                }
                held = true;
            } else {
                p.admit -= 1;
            }
        }
        v.insert(InputState {
            pool: s.pool,
            method: s.method,
            attempt: 1,
            retried: 0,
            lost: 0,
            state: if held { IState::Held } else { IState::Queued },
            accepted,
        });
        p.pending += 1;
        if held {
            p.held.push_back((s.input, s.method));
            return;
        }
        self.next_seq += 1;
        p.queues[s.method as usize].push_back(Queued { input: s.input, attempt: 1, at: self.now, seq: self.next_seq });
        if !p.dirty {
            p.dirty = true;
            self.dirty.push(s.pool);
        }
    }

    /// Moves held inputs into the queue while it has room; true if any moved.
    fn admit_held(&mut self, pool_id: PoolId) -> bool {
        let Some(p) = self.pools.get_mut(&pool_id) else { return false };
        let Some(max) = p.spec.max_pending else { return false };
        if p.held.is_empty() {
            return false;
        }
        let n = (room(p, &self.containers, max) as usize).min(p.held.len());
        for (input, method) in p.held.drain(..n) {
            self.next_seq += 1;
            p.queues[method as usize].push_back(Queued { input, attempt: 1, at: self.now, seq: self.next_seq });
            if let Some(st) = self.inputs.get_mut(&input) {
                st.state = IState::Queued;
            }
        }
        // The count taken for this turn's submissions is stale now.
        p.admit_gen = 0;
        n > 0
    }

    pub(super) fn cancel(&mut self, input: InputId) {
        let Some(st) = self.inputs.get(&input) else { return };
        let (pool, method, attempt, state) = (st.pool, st.method, st.attempt, st.state);
        match state {
            IState::Queued => {
                let mut held = false;
                if let Some(p) = self.pools.get_mut(&pool) {
                    p.queues[method as usize].retain(|q| q.input != input);
                    held = !p.held.is_empty();
                }
                // Its place in the queue is room for a held input.
                if held {
                    self.mark_dirty(pool);
                }
            }
            IState::Held => {
                if let Some(p) = self.pools.get_mut(&pool) {
                    p.held.retain(|(i, _)| *i != input);
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

    pub(super) fn complete(&mut self, exec: ExecId, status: ExecStatus) {
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
        let now = self.ticks();
        if let Some(p) = self.pools.get_mut(&e.pool) {
            if !e.timed_out {
                deadline_gone(p, exec, &self.execs);
                p.exec_avg = Some(moving_average(p.exec_avg, self.now.saturating_duration_since(e.started)));
            }
            if quiet {
                for (input, _) in &e.inputs {
                    if let Some(st) = self.inputs.remove(input) {
                        p.pending -= 1;
                        if let Some(m) = p.metrics.get_mut(st.method as usize) {
                            m.outcomes[outcome_index(Outcome::Ok)] += 1;
                            m.latency.observe(seconds_between(st.accepted, now));
                        }
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
    pub(super) fn fail_attempt(&mut self, input: InputId, attempt: u32, outcome: Outcome) {
        let Some(st) = self.inputs.get_mut(&input) else { return };
        if st.attempt != attempt {
            return;
        }
        let Some(pool) = self.pools.get_mut(&st.pool) else { return };
        let retries = pool.spec.methods.get(st.method as usize).is_none_or(|m| !m.no_retries);
        if retries && st.retried < pool.spec.retries.max_retries {
            st.retried += 1;
            let delay = pool.spec.retries.delay_for(st.retried);
            if let Some(m) = pool.metrics.get_mut(st.method as usize) {
                m.retries += 1;
            }
            st.state = IState::Backoff;
            self.timers.push(Reverse((self.now + delay, Timer::Retry(input, attempt + 1))));
        } else {
            self.finish(input, attempt, outcome);
        }
    }

    /// The attempt stopped through no fault of its code (its container died, was interrupted or
    /// is being replaced): the input goes back to the front of its queue as a new attempt,
    /// without spending a retry. `lost` counts it against [`MAX_RESCHEDULES`].
    pub(super) fn reschedule(&mut self, input: InputId, attempt: u32, lost: bool) {
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
            if let Some(m) = p.metrics.get_mut(method as usize) {
                m.rescheduled += 1;
            }
            // It was dispatched before everything still queued: it stays ahead of it.
            p.queues[method as usize].push_front(Queued { input, attempt, at: self.now, seq });
        }
        self.mark_dirty(pool);
    }

    /// Forgets a finished input, counts its outcome and tells the sink; nothing if it was not
    /// pending.
    pub(super) fn finish(&mut self, input: InputId, attempt: u32, outcome: Outcome) {
        let Some(st) = self.inputs.remove(&input) else { return };
        let pool = st.pool;
        let now = self.ticks();
        if let Some(p) = self.pools.get_mut(&pool) {
            p.pending -= 1;
            if let Some(m) = p.metrics.get_mut(st.method as usize) {
                m.outcomes[outcome_index(outcome)] += 1;
                m.latency.observe(seconds_between(st.accepted, now));
            }
        }
        if self.stopping {
            self.mark_dirty(pool);
        }
        self.results.done(input, attempt, outcome);
    }
    pub(super) fn dispatch_dirty(&mut self) {
        while let Some(pool) = self.dirty.pop() {
            if let Some(p) = self.pools.get_mut(&pool) {
                p.dirty = false;
            }
            self.dispatch(pool);
            if self.admit_held(pool) {
                self.dispatch(pool);
            }
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
        let now = self.now;
        let m = &mut pool.metrics[method];
        m.batch_size.observe(n as f64);
        let inputs: ExecInputs = q
            .drain(..n)
            .map(|q| {
                m.queue_wait.observe(now.saturating_duration_since(q.at).as_secs_f64());
                (q.input, q.attempt)
            })
            .collect();
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
}

/// How many more inputs `p` may accept under `max`: the free slots of its serving containers
/// (an input there starts this turn, so it never waits) plus `max`, less what already waits in
/// its queues. A batched method's free slot is counted as room for one input, so its inputs
/// waiting to fill a batch count as waiting. Retries and reschedules re-enter the queue without
/// this check: an accepted input is never refused.
fn room(p: &super::Pool, containers: &super::IdMap<ContainerId, super::Container>, max: u32) -> u32 {
    let mut free = 0u32;
    for c in p.containers.iter().filter_map(|id| containers.get(id)) {
        if c.state == CState::Serving {
            free += p.spec.max_inputs.saturating_sub(c.in_flight);
        }
    }
    let queued: usize = p.queues.iter().map(std::collections::VecDeque::len).sum();
    (u64::from(max) + u64::from(free)).saturating_sub(queued as u64).min(u64::from(u32::MAX)) as u32
}
