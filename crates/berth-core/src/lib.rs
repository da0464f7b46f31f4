//! berth-core: the container runtime's logic, with no knowledge of N-API, gRPC or NATS.
//!
//! One actor ([`Scheduler`]) owns every pool (a function, or a class with one parameter set),
//! its containers' lifecycle and its inputs. It talks to the world through three traits:
//! - [`InputSource`]: where commands (inputs, cancellations, completions) come from;
//! - [`Invoker`]: how user code is called (hooks, executions, aborts);
//! - [`ResultSink`]: where each input's one final outcome goes.
//!
//! Everything is decided on one task, so the rules (concurrency slots, batch formation, timeouts,
//! retries, drain) are deterministic and tested on tokio's paused clock.

pub mod broker;
pub mod failure;
mod scheduler;
mod spec;

pub use scheduler::metrics;
pub use scheduler::{
    AbortReason, Command, ContainerId, Exec, ExecId, ExecInputs, ExecStatus, IdHasher, IdMap, InputId, InputSource,
    Invoker, Outcome, Phase, PoolId, ResultSink, Scheduler, Submission, MAX_RESCHEDULES, MAX_RESTART_BACKOFF,
    OVERDUE_GRACE,
};
pub use spec::{Batching, HookSet, MethodSpec, PoolSpec, RetryPolicy, SpecError, MIN_RETRY_DELAY};
