//! What a pool is configured with, validated once at definition time.
use std::fmt;
use std::time::Duration;

/// A definition error; the message names the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for SpecError {}

fn err<T>(msg: String) -> Result<T, SpecError> {
    Err(SpecError(msg))
}

/// The shortest wait between two attempts of an input, whatever the policy says (Modal's).
pub const MIN_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Modal's retry policy: the delay before retry k (k ≥ 1) is
/// `initial_delay · backoff_coefficient^(k-1)`, capped at `max_delay`.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_retries: u32,
    pub backoff_coefficient: f64,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Checks Modal's bounds: `0 ≤ max_retries ≤ 10`, `1 ≤ coefficient ≤ 10`,
    /// `0 ≤ initial_delay ≤ 60 s`, `1 s ≤ max_delay ≤ 60 s`.
    pub fn new(
        max_retries: u32,
        backoff_coefficient: f64,
        initial_delay: Duration,
        max_delay: Duration,
    ) -> Result<Self, SpecError> {
        if max_retries > 10 {
            return err(format!("retries: maxRetries is {max_retries}; it must be between 0 and 10"));
        }
        if !(1.0..=10.0).contains(&backoff_coefficient) {
            return err(format!("retries: backoffCoefficient is {backoff_coefficient}; it must be between 1 and 10"));
        }
        if initial_delay > Duration::from_secs(60) {
            return err(format!(
                "retries: initialDelay is {}s; it must be between 0 and 60 seconds",
                initial_delay.as_secs_f64()
            ));
        }
        if max_delay < Duration::from_secs(1) || max_delay > Duration::from_secs(60) {
            return err(format!(
                "retries: maxDelay is {}s; it must be between 1 and 60 seconds",
                max_delay.as_secs_f64()
            ));
        }
        Ok(Self { max_retries, backoff_coefficient, initial_delay, max_delay })
    }

    /// `n` retries one second apart (what a bare number means in Modal).
    pub fn fixed(max_retries: u32) -> Result<Self, SpecError> {
        Self::new(max_retries, 1.0, Duration::from_secs(1), Duration::from_secs(60))
    }

    pub fn none() -> Self {
        Self {
            max_retries: 0,
            backoff_coefficient: 1.0,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }

    /// Delay before retry `k` (1-based); never under [`MIN_RETRY_DELAY`], as in Modal (an
    /// `initial_delay` of 0 is accepted and means the floor).
    pub fn delay_for(&self, k: u32) -> Duration {
        let exp = self.backoff_coefficient.powi(k.saturating_sub(1).min(64) as i32);
        let secs = self.initial_delay.as_secs_f64() * exp;
        let max = self.max_delay.as_secs_f64();
        let delay = if !secs.is_finite() || secs >= max { self.max_delay } else { Duration::from_secs_f64(secs) };
        delay.max(MIN_RETRY_DELAY)
    }
}

/// Dynamic batching of one method: a batch goes out when it holds `max_batch_size` inputs, or
/// when `wait` has passed since its oldest input arrived, whichever is first, and only when a
/// concurrency slot is free (so the batch keeps growing while the container is busy).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_batch_size: u32,
    pub wait: Duration,
}

impl Batching {
    pub fn new(max_batch_size: u32, wait: Duration) -> Result<Self, SpecError> {
        if !(1..=1000).contains(&max_batch_size) {
            return err(format!("@batched: maxBatchSize is {max_batch_size}; it must be between 1 and 1000"));
        }
        if wait > Duration::from_millis(600_000) {
            return err(format!("@batched: waitMs is {}; it must be between 0 and 600000", wait.as_millis()));
        }
        Ok(Self { max_batch_size, wait })
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodSpec {
    pub batching: Option<Batching>,
    /// A failed attempt is final, whatever the pool's retries say: a web endpoint's (a
    /// request's client waits for its answer; README "API", web endpoints).
    pub no_retries: bool,
}

/// Which lifecycle phases have hooks; phases without hooks are skipped without a round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HookSet {
    /// The host starts a process for each container and reports when it has attached.
    pub spawn: bool,
    pub build: bool,
    pub snap_enter: bool,
    pub enter: bool,
    pub exit: bool,
}

/// A pool: one function, or one class with one set of parameters. Its containers share the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSpec {
    pub name: String,
    pub methods: Vec<MethodSpec>,
    pub hooks: HookSet,
    /// In-flight executions per container never exceed this (a batch is one execution).
    pub max_inputs: u32,
    /// What the autoscaler aims at per container.
    pub target_inputs: u32,
    /// Bounds each attempt.
    pub timeout: Duration,
    /// Bounds the enter phases of a container.
    pub startup_timeout: Duration,
    pub retries: RetryPolicy,
    pub min_containers: u32,
    pub max_containers: u32,
    pub buffer_containers: u32,
    pub scaledown_window: Duration,
    pub exit_grace: Duration,
    pub single_use: bool,
    /// `maxPendingInputs`: at most this many inputs wait in the queue (accepted, not yet
    /// running); past it a new call is refused with [`Outcome::QueueFull`](crate::Outcome).
    /// `None`: unbounded.
    pub max_pending: Option<u32>,
}

impl PoolSpec {
    /// A spec with berth's defaults: one input at a time, one container, 300 s timeout.
    pub fn new(name: impl Into<String>, methods: Vec<MethodSpec>) -> Self {
        Self {
            name: name.into(),
            methods,
            hooks: HookSet::default(),
            max_inputs: 1,
            target_inputs: 1,
            timeout: Duration::from_secs(300),
            startup_timeout: Duration::from_secs(300),
            retries: RetryPolicy::none(),
            min_containers: 0,
            max_containers: 1,
            buffer_containers: 0,
            scaledown_window: Duration::from_secs(60),
            exit_grace: Duration::from_secs(30),
            single_use: false,
            max_pending: None,
        }
    }

    /// Checks the settings against each other, so that none silently caps another.
    pub fn validate(&self) -> Result<(), SpecError> {
        let n = &self.name;
        if self.methods.is_empty() {
            return err(format!("{n}: has no @method() or @batched() member; add one to call it"));
        }
        if self.max_inputs == 0 {
            return err(format!("{n}: maxInputs must be at least 1"));
        }
        if self.target_inputs == 0 || self.target_inputs > self.max_inputs {
            return err(format!(
                "{n}: targetInputs ({}) must be between 1 and maxInputs ({}); raise maxInputs or lower targetInputs",
                self.target_inputs, self.max_inputs
            ));
        }
        if self.max_containers == 0 {
            return err(format!("{n}: maxContainers must be at least 1"));
        }
        if self.min_containers > self.max_containers {
            return err(format!(
                "{n}: minContainers ({}) is above maxContainers ({}); lower minContainers or raise maxContainers",
                self.min_containers, self.max_containers
            ));
        }
        if self.max_pending == Some(0) {
            return err(format!("{n}: maxPendingInputs must be at least 1 (leave it out for no bound)"));
        }
        if self.timeout.is_zero() {
            return err(format!("{n}: timeout must be above 0 seconds"));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_modal() {
        let r = RetryPolicy::new(5, 2.0, Duration::from_secs(1), Duration::from_secs(10)).unwrap();
        let d: Vec<u64> = (1..=5).map(|k| r.delay_for(k).as_secs()).collect();
        assert_eq!(d, vec![1, 2, 4, 8, 10]);
        let f = RetryPolicy::fixed(3).unwrap();
        assert_eq!(f.delay_for(3), Duration::from_secs(1));
        // Modal keeps at least a second between attempts, whatever the policy.
        let zero = RetryPolicy::new(2, 3.0, Duration::ZERO, Duration::from_secs(5)).unwrap();
        assert_eq!(zero.delay_for(1), MIN_RETRY_DELAY);
        assert_eq!(zero.delay_for(2), MIN_RETRY_DELAY);
        let short = RetryPolicy::new(3, 2.0, Duration::from_millis(300), Duration::from_secs(5)).unwrap();
        let d: Vec<u128> = (1..=4).map(|k| short.delay_for(k).as_millis()).collect();
        assert_eq!(d, vec![1000, 1000, 1200, 2400]);
    }

    #[test]
    fn retry_bounds_are_checked() {
        let s = Duration::from_secs(1);
        assert!(RetryPolicy::new(11, 2.0, s, s).unwrap_err().0.contains("between 0 and 10"));
        assert!(RetryPolicy::new(1, 0.5, s, s).unwrap_err().0.contains("backoffCoefficient"));
        assert!(RetryPolicy::new(1, 11.0, s, s).is_err());
        assert!(RetryPolicy::new(1, 2.0, Duration::from_secs(61), s).is_err());
        assert!(RetryPolicy::new(1, 2.0, s, Duration::from_millis(500)).unwrap_err().0.contains("maxDelay"));
        assert!(RetryPolicy::new(1, 2.0, s, Duration::from_secs(61)).is_err());
    }

    #[test]
    fn batching_bounds_are_checked() {
        assert!(Batching::new(0, Duration::ZERO).unwrap_err().0.contains("between 1 and 1000"));
        assert!(Batching::new(1001, Duration::ZERO).is_err());
        assert!(Batching::new(1000, Duration::from_millis(600_000)).is_ok());
        assert!(Batching::new(1, Duration::from_millis(600_001)).unwrap_err().0.contains("waitMs"));
    }

    #[test]
    fn spec_cross_checks() {
        let mut s = PoolSpec::new("f", vec![MethodSpec::default()]);
        assert!(s.validate().is_ok());
        s.max_inputs = 4;
        s.target_inputs = 5;
        assert!(s.validate().unwrap_err().0.contains("targetInputs (5)"));
        s.target_inputs = 4;
        s.min_containers = 2;
        assert!(s.validate().unwrap_err().0.contains("minContainers"));
        let empty = PoolSpec::new("g", vec![]);
        assert!(empty.validate().is_err());
    }
}
