//! What a caller reads when an input ends without its function's own result or error, and what
//! the log says when berth gives up on a container: worded here once, so that the same failure
//! reads the same whether the containers are embedded (the binding hands these to
//! src/run/runtime.ts) or processes behind the control plane (crates/berth-server).
//!
//! Things are named by name: `label` is the function's name, or `Class.method` for a method.

use std::time::Duration;

use crate::{AbortReason, ContainerId, InputId, Outcome, Phase, PoolSpec, MAX_RESCHEDULES, OVERDUE_GRACE};

/// An error as callers receive it: the name of its class (src/shared/errors.ts maps it back to
/// `FunctionTimeoutError`, `InputCancelledError`, …) and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub name: &'static str,
    pub message: String,
}

impl Failure {
    fn new(name: &'static str, message: String) -> Self {
        Self { name, message }
    }
}

/// The failure an input's final `outcome` stands for, or `None` where the input's own result
/// or error is what the caller gets (`Ok`, `Failed`) or the container's start error is
/// (`Init`: see [`start_failed`] when there is none). `attempt` is the attempt that ended it.
pub fn outcome(label: &str, outcome: Outcome, attempt: u32, timeout: Duration) -> Option<Failure> {
    Some(match outcome {
        Outcome::Ok | Outcome::Failed | Outcome::Init(_) => return None,
        Outcome::Timeout => Failure::new(
            "FunctionTimeoutError",
            format!(
                "{label} timed out after {}{}; raise `timeout` in its options if it needs longer",
                seconds(timeout),
                if attempt > 1 { format!(" on each of {attempt} attempts") } else { String::new() },
            ),
        ),
        Outcome::Cancelled => cancelled(label),
        Outcome::Lost => Failure::new(
            "ContainerLost",
            format!(
                "{label}: the container running it stopped unexpectedly, {} times in a row (each time it ran again \
                 on a new container, without spending retries): the input itself may be what ends them. The log \
                 says how each container stopped",
                MAX_RESCHEDULES + 1
            ),
        ),
        Outcome::Rejected => {
            Failure::new("InvalidError", format!("{label}: the app is stopping or stopped; the call was not accepted"))
        }
        Outcome::QueueFull(bound) => queue_full(label, bound),
    })
}

/// The name of [`queue_full`]'s failure: hosts answer it with their protocol's own status.
pub const QUEUE_FULL: &str = "QueueFullError";

/// A call refused at admission because `bound` (`maxPendingInputs`) inputs already wait in the
/// queue. gRPC callers get it as RESOURCE_EXHAUSTED, HTTP callers as 429 (crates/berth-server).
pub fn queue_full(label: &str, bound: u32) -> Failure {
    Failure::new(
        QUEUE_FULL,
        format!(
            "{label}: its queue is full ({bound} input{} already waiting, its maxPendingInputs); the call was not \
             accepted. Retry later, or raise maxPendingInputs or maxContainers in its options",
            if bound == 1 { "" } else { "s" }
        ),
    )
}

/// The reason a running attempt's AbortSignal carries (`signal.reason` in user code).
pub fn aborted(label: &str, reason: AbortReason, attempt: u32, timeout: Duration) -> Failure {
    match reason {
        AbortReason::Timeout => Failure::new(
            "FunctionTimeoutError",
            format!("{label} timed out after {} (attempt {attempt})", seconds(timeout)),
        ),
        AbortReason::Cancelled => cancelled(label),
        AbortReason::Rescheduled => Failure::new(
            "InputCancelledError",
            format!(
                "{label}: its container is stopping (interrupted, or replaced); the input runs again on another \
                 container"
            ),
        ),
    }
}

/// A cancelled input: by its caller, or by a forced stop.
pub fn cancelled(label: &str) -> Failure {
    Failure::new("InputCancelledError", format!("{label} was cancelled"))
}

/// The attempt that decided an input reported no result (a container that answered other
/// executions but not this one's).
pub fn result_lost(label: &str, attempt: u32) -> Failure {
    Failure::new("Error", format!("{label}: the result of attempt {attempt} was lost"))
}

/// `Outcome::Init` when the container left no error of its own (it was stopped while starting).
/// No `": "` in it: callers read an InitError's message up to the first one as the name of the
/// hook's error (src/shared/errors.ts, `errorFromData`).
pub fn start_failed(name: &str) -> Failure {
    Failure::new("InitError", format!("the container of {name} failed to start"))
}

/// A container whose start (or exit) hooks ran past their bound: the log line, and for a start
/// the error its waiting inputs get.
pub fn hook_abandoned(name: &str, container: ContainerId, phase: Phase, bound: Duration) -> Failure {
    let bound = seconds(bound);
    let what = match phase {
        Phase::Spawn => format!("it did not attach within startupTimeout ({bound}) and was abandoned"),
        Phase::Exit => format!("its exit hooks ran past exitGracePeriod ({bound}) and were abandoned"),
        Phase::Build => format!("its build hooks ran past startupTimeout ({bound}) and were abandoned"),
        Phase::SnapEnter | Phase::Enter => {
            format!("its enter hooks ran past startupTimeout ({bound}) and were abandoned")
        }
    };
    Failure::new("FunctionTimeoutError", format!("{name} (container {container}): {what}"))
}

/// The bound a phase's hooks ran past when they are abandoned: `exit_grace` for exit hooks,
/// `startup_timeout` for the rest.
pub fn hook_bound(spec: &PoolSpec, phase: Phase) -> Duration {
    if phase == Phase::Exit {
        spec.exit_grace
    } else {
        spec.startup_timeout
    }
}

/// The log line when code ignored its AbortSignal past [`OVERDUE_GRACE`] and its container is
/// replaced.
pub fn replaced(name: &str, container: ContainerId, input: InputId) -> String {
    format!(
        "berth: {name} (input in-{input}) kept running {}s after it was aborted (timed out or interrupted) and \
         ignores its AbortSignal: container {container} is replaced by a new one (no @exit for it); its other inputs \
         run again on another. Check signal.aborted (or pass the signal on) in long-running code.",
        OVERDUE_GRACE.as_secs()
    )
}

/// `300s`, `0.5s`: how options are written in messages.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_name_the_function_the_bound_and_the_attempts() {
        let one = outcome("embed", Outcome::Timeout, 1, Duration::from_millis(1500)).unwrap();
        assert_eq!(one.name, "FunctionTimeoutError");
        assert_eq!(one.message, "embed timed out after 1.5s; raise `timeout` in its options if it needs longer");
        let three = outcome("Model.embed", Outcome::Timeout, 3, Duration::from_secs(300)).unwrap();
        assert_eq!(
            three.message,
            "Model.embed timed out after 300s on each of 3 attempts; raise `timeout` in its options if it needs longer"
        );
    }

    #[test]
    fn results_of_their_own_are_not_described() {
        for o in [Outcome::Ok, Outcome::Failed, Outcome::Init(4)] {
            assert_eq!(outcome("f", o, 1, Duration::from_secs(1)), None);
        }
        assert_eq!(outcome("f", Outcome::Cancelled, 1, Duration::from_secs(1)), Some(cancelled("f")));
        let lost = outcome("f", Outcome::Lost, 1, Duration::from_secs(1)).unwrap();
        assert!(lost.message.contains(&format!("{} times in a row", MAX_RESCHEDULES + 1)), "{}", lost.message);
    }

    #[test]
    fn abort_reasons_name_the_function_and_the_attempt() {
        let t = aborted("Model.embed", AbortReason::Timeout, 2, Duration::from_secs(60));
        assert_eq!(
            (t.name, t.message.as_str()),
            ("FunctionTimeoutError", "Model.embed timed out after 60s (attempt 2)")
        );
        assert_eq!(aborted("f", AbortReason::Cancelled, 1, Duration::ZERO), cancelled("f"));
        assert!(aborted("f", AbortReason::Rescheduled, 1, Duration::ZERO)
            .message
            .starts_with("f: its container is stopping"));
    }

    #[test]
    fn a_full_queue_names_the_function_the_bound_and_the_fixes() {
        let f = outcome("Model.embed", Outcome::QueueFull(8), 1, Duration::ZERO).unwrap();
        assert_eq!(f.name, "QueueFullError");
        assert_eq!(
            f.message,
            "Model.embed: its queue is full (8 inputs already waiting, its maxPendingInputs); the call was not \
             accepted. Retry later, or raise maxPendingInputs or maxContainers in its options"
        );
        assert!(!f.message.contains('?'), "sent in grpc-message");
    }

    #[test]
    fn abandoned_hooks_say_which_bound() {
        let f = hook_abandoned("Model", 3, Phase::Enter, Duration::from_secs(2));
        assert_eq!(f.message, "Model (container 3): its enter hooks ran past startupTimeout (2s) and were abandoned");
    }
}
