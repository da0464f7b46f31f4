//! What the scheduler counts as it decides (README "Metrics"): per method of a pool, inputs by
//! final outcome, retries, reschedules, how long inputs took from acceptance to their outcome
//! and waited in the queue before each attempt, and the size of every execution; per pool,
//! containers started, lost and failed to start. Histograms have fixed buckets allocated with
//! the pool, so counting is a few additions per input and allocates nothing. Read with
//! [`Scheduler::metrics`](super::Scheduler::metrics), which adds what holds right now (queued
//! and running inputs, containers by state).

use super::types::Outcome;

/// Upper bounds, in seconds, of the latency and queue-wait buckets (a `+Inf` one follows).
pub const SECONDS_BUCKETS: [f64; 17] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// Upper bounds of the batch-size buckets (a `+Inf` one follows).
pub const BATCH_BUCKETS: [f64; 12] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// Final outcomes as counted, in this order; [`OUTCOME_NAMES`] labels them.
pub const OUTCOMES: usize = 8;

/// The `outcome` label of each counted outcome (see [`outcome_index`]).
pub const OUTCOME_NAMES: [&str; OUTCOMES] =
    ["ok", "failed", "timeout", "cancelled", "init_failed", "lost", "rejected", "queue_full"];

/// Where `outcome` is counted in [`MethodMetrics::outcomes`].
pub fn outcome_index(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Ok => 0,
        Outcome::Failed => 1,
        Outcome::Timeout => 2,
        Outcome::Cancelled => 3,
        Outcome::Init(_) => 4,
        Outcome::Lost => 5,
        Outcome::Rejected => 6,
        Outcome::QueueFull(_) => 7,
    }
}

/// Observations in fixed buckets: `buckets[i]` counts those at most `bounds[i]` and above the
/// bound before it (not cumulative: the exposition adds them up), `overflow` those above all.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub buckets: Vec<u64>,
    pub overflow: u64,
    pub count: u64,
    pub sum: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self { bounds, buckets: vec![0; bounds.len()], overflow: 0, count: 0, sum: 0.0 }
    }

    pub fn observe(&mut self, v: f64) {
        self.count += 1;
        self.sum += v;
        match self.bounds.iter().position(|b| v <= *b) {
            Some(i) => self.buckets[i] += 1,
            None => self.overflow += 1,
        }
    }

    /// Adds `other`'s observations (same bounds) to these.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.overflow += other.overflow;
        self.count += other.count;
        self.sum += other.sum;
    }
}

/// What one method of a pool has counted since the pool was added.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodMetrics {
    /// Inputs by final outcome, indexed as [`OUTCOME_NAMES`]; `rejected` and `queue_full` were
    /// never accepted.
    pub outcomes: [u64; OUTCOMES],
    /// Failed attempts that were run again under the Retries policy.
    pub retries: u64,
    /// Attempts that stopped through no fault of their code (container lost, interrupted,
    /// replaced) and were queued again without spending a retry.
    pub rescheduled: u64,
    /// Seconds from an input's acceptance to its final outcome (accepted inputs only).
    pub latency: Histogram,
    /// Seconds each attempt waited in the queue before it was handed to a container.
    pub queue_wait: Histogram,
    /// Inputs per execution handed to a container: 1 for an unbatched method, the batch
    /// formed for a `@batched` one.
    pub batch_size: Histogram,
}

impl MethodMetrics {
    pub fn new() -> Self {
        Self {
            outcomes: [0; OUTCOMES],
            retries: 0,
            rescheduled: 0,
            latency: Histogram::new(&SECONDS_BUCKETS),
            queue_wait: Histogram::new(&SECONDS_BUCKETS),
            batch_size: Histogram::new(&BATCH_BUCKETS),
        }
    }

    /// Adds `other`'s counts to these (another pool of the same method: a class with other
    /// parameters, or the version a reload replaced).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.outcomes.iter_mut().zip(other.outcomes) {
            *a += b;
        }
        self.retries += other.retries;
        self.rescheduled += other.rescheduled;
        self.latency.merge(&other.latency);
        self.queue_wait.merge(&other.queue_wait);
        self.batch_size.merge(&other.batch_size);
    }
}

impl Default for MethodMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Containers of a pool as counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerCounts {
    /// Started since the pool was added.
    pub started: u64,
    /// Lost while starting or serving (the process died or stopped answering).
    pub lost: u64,
    /// Whose startup hooks failed or timed out.
    pub failed_to_start: u64,
}

/// Containers of a pool by state, right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContainerStates {
    pub starting: u32,
    pub serving: u32,
    pub draining: u32,
    pub exiting: u32,
}

/// One container as [`Scheduler::containers`](super::Scheduler::containers) sees it now
/// (`berth container list`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub container: u32,
    pub pool: u32,
    /// `starting`, `serving`, `draining` or `exiting` (the `berth_containers` gauge's states).
    pub state: &'static str,
    /// Inputs it is running.
    pub in_flight: u32,
}

/// A pool's metrics as [`Scheduler::metrics`](super::Scheduler::metrics) reads them.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolMetrics {
    pub pool: super::PoolId,
    /// Per method, in the pool's method order.
    pub methods: Vec<MethodMetrics>,
    /// Inputs waiting per method right now: in the queue, or accepted and held for room under
    /// `maxPendingInputs`.
    pub queued: Vec<u32>,
    /// Inputs running per method right now.
    pub running: Vec<u32>,
    pub containers: ContainerCounts,
    pub states: ContainerStates,
}
