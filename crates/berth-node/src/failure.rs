//! berth-core's one wording of the failures berth reports itself (crates/berth-core/src/failure.rs),
//! for the embedded runtime and the container loop (src/run/runtime.ts, src/run/container.ts),
//! so that a failure reads the same in both container modes. Called on failures only, never on
//! the hot path.
use std::time::Duration;

use berth_core::{failure, AbortReason, Outcome, Phase};
use napi::{Error, Result};
use napi_derive::napi;

use crate::codes::OutcomeCode;

/// An error as the caller receives it: the name of its class and its message.
#[napi(object)]
pub struct BindingFailure {
    pub name: String,
    pub message: String,
}

impl From<failure::Failure> for BindingFailure {
    fn from(f: failure::Failure) -> Self {
        Self { name: f.name.into(), message: f.message }
    }
}

fn ms(ms: f64) -> Duration {
    Duration::try_from_secs_f64(ms / 1000.0).unwrap_or_default()
}

fn unknown(what: &str, code: u32) -> Error {
    Error::from_reason(format!("berth: unknown {what} code {code}"))
}

/// What an input whose final outcome is `outcome` (an `OutcomeCode`) fails with, when it has no
/// result or error of its own: `label` names the function or `Class.method`, `attempt` is the
/// attempt that decided it, `aux` the number its `Done` event carried (`QueueFull`'s bound).
/// `Init` without the container's own error reads "failed to start".
#[napi]
pub fn describe_outcome(
    label: String,
    outcome: u32,
    attempt: u32,
    timeout_ms: f64,
    aux: Option<f64>,
) -> Result<BindingFailure> {
    let outcome = match outcome {
        c if c == OutcomeCode::Ok as u32 => Outcome::Ok,
        c if c == OutcomeCode::Failed as u32 => Outcome::Failed,
        c if c == OutcomeCode::Timeout as u32 => Outcome::Timeout,
        c if c == OutcomeCode::Cancelled as u32 => Outcome::Cancelled,
        c if c == OutcomeCode::Init as u32 => return Ok(failure::start_failed(&label).into()),
        c if c == OutcomeCode::Lost as u32 => Outcome::Lost,
        c if c == OutcomeCode::Rejected as u32 => Outcome::Rejected,
        c if c == OutcomeCode::QueueFull as u32 => Outcome::QueueFull(aux.unwrap_or(0.0) as u32),
        c => return Err(unknown("outcome", c)),
    };
    let f = failure::outcome(&label, outcome, attempt, ms(timeout_ms))
        .unwrap_or_else(|| failure::result_lost(&label, attempt));
    Ok(f.into())
}

/// The reason a running attempt's AbortSignal carries, by `AbortReasonCode`.
#[napi]
pub fn describe_abort(label: String, reason: u32, attempt: u32, timeout_ms: f64) -> Result<BindingFailure> {
    let reason =
        u8::try_from(reason).ok().and_then(AbortReason::from_u8).ok_or_else(|| unknown("abort reason", reason))?;
    Ok(failure::aborted(&label, reason, attempt, ms(timeout_ms)).into())
}

/// A container whose hooks of `phase` (a `PhaseCode`) ran past `bound_ms`: the log line (after
/// "berth: ") and, for a start, the error its waiting inputs get.
#[napi]
pub fn describe_abandoned(name: String, container: u32, phase: u32, bound_ms: f64) -> Result<BindingFailure> {
    let phase = u8::try_from(phase).ok().and_then(Phase::from_u8).ok_or_else(|| unknown("phase", phase))?;
    Ok(failure::hook_abandoned(&name, container, phase, ms(bound_ms)).into())
}

/// The log line when code ignored its AbortSignal and its container is replaced.
#[napi]
pub fn describe_replaced(name: String, container: u32, input: f64) -> String {
    failure::replaced(&name, container, input as u64)
}
