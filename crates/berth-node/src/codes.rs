//! The numbers this binding and the TypeScript layer agree on, defined once: the tags of the
//! packed event buffers and the codes inside them (outcomes, statuses, phases, abort reasons;
//! messages that quote the scheduler's limits are worded in crates/berth-core/src/failure.rs).
//! Each is exported to JavaScript (napi-rs makes a numeric `#[napi]` enum a plain object);
//! src/shared/codes.ts reads them once, and its users copy them into module constants, so the
//! hot path compares numbers without a property lookup.
//!
//! napi-rs takes only literal discriminants; where berth-core has the type, the `const` block at
//! the end fails the build if a value here drifts from it.
use napi_derive::napi;

/// Tags of `BindingRuntime`'s events; the numbers after each tag are listed in lib.rs.
#[napi]
pub enum RuntimeEvent {
    Run = 1,
    Hook = 2,
    Abort = 3,
    Abandoned = 4,
    Stopped = 5,
    Done = 6,
    Finished = 7,
    Replaced = 8,
}

/// How an execution ended, as JavaScript reports it to `BindingRuntime::complete`
/// (`berth_core::ExecStatus`).
#[napi]
pub enum ExecStatusCode {
    Ok = 0,
    /// Retried within the policy.
    Failed = 1,
    /// Retrying cannot fix it.
    FailedFinal = 2,
    /// Succeeded, and JavaScript already gave the caller the result.
    Delivered = 3,
}

/// An input's final outcome in a `Done` event (`berth_core::Outcome`; `Init` carries the
/// container whose start failed, `QueueFull` the bound, maxPendingInputs).
#[napi]
pub enum OutcomeCode {
    Ok = 0,
    Failed = 1,
    Timeout = 2,
    Cancelled = 3,
    Init = 4,
    Lost = 5,
    Rejected = 6,
    QueueFull = 7,
}

/// A container's lifecycle phase (`berth_core::Phase`).
#[napi]
pub enum PhaseCode {
    Build = 0,
    SnapEnter = 1,
    Enter = 2,
    Exit = 3,
    Spawn = 4,
}

/// Why a running attempt is told to stop (`berth_core::AbortReason`).
#[napi]
pub enum AbortReasonCode {
    Timeout = 1,
    Cancelled = 2,
    Rescheduled = 3,
}

/// Tags of `BindingContainer`'s events; the numbers after each tag are listed in container.rs.
#[napi]
pub enum ContainerEvent {
    Hook = 1,
    Execute = 2,
    Abort = 3,
    Stop = 4,
    /// The control plane went away.
    Closed = 5,
    /// The caller took items of a generator input: it may yield that many more.
    Credit = 6,
}

/// What one result of `BindingContainer::outputs` holds.
#[napi]
pub enum OutputKind {
    /// CBOR bytes.
    Value = 0,
    /// UTF-8 `name\0message\0stack`.
    Error = 1,
}

/// Kinds of `BindingClient`'s events (client.rs).
#[napi]
pub enum ClientEvent {
    /// CBOR bytes.
    Value = 0,
    /// UTF-8 `name\0message\0stack`.
    Error = 1,
    /// A gRPC status: `code\0message`.
    Status = 2,
    /// A function call id (Spawn).
    Text = 3,
    /// GetResult: not ready yet.
    Pending = 4,
    /// Cancel: done.
    None = 5,
    /// A Map stream delivered its last result.
    MapEnd = 6,
    /// A generator call yielded its last item.
    StreamEnd = 7,
}

const _: () = {
    use berth_core::{AbortReason, ExecStatus, Phase};
    assert!(PhaseCode::Build as u8 == Phase::Build as u8);
    assert!(PhaseCode::SnapEnter as u8 == Phase::SnapEnter as u8);
    assert!(PhaseCode::Enter as u8 == Phase::Enter as u8);
    assert!(PhaseCode::Exit as u8 == Phase::Exit as u8);
    assert!(PhaseCode::Spawn as u8 == Phase::Spawn as u8);
    assert!(AbortReasonCode::Timeout as u8 == AbortReason::Timeout as u8);
    assert!(AbortReasonCode::Cancelled as u8 == AbortReason::Cancelled as u8);
    assert!(AbortReasonCode::Rescheduled as u8 == AbortReason::Rescheduled as u8);
    assert!(ExecStatusCode::Ok as u8 == ExecStatus::Ok as u8);
    assert!(ExecStatusCode::Failed as u8 == ExecStatus::Failed as u8);
    assert!(ExecStatusCode::FailedFinal as u8 == ExecStatus::FailedFinal as u8);
    assert!(ExecStatusCode::Delivered as u8 == ExecStatus::Delivered as u8);
};
