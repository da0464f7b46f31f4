//! The one N-API binding of berth: a scheduler per `BindingRuntime`.
//!
//! Nothing crosses N-API once per input. JavaScript sends submissions and completions packed in
//! a `Float64Array`, in synchronous calls that drive the scheduler on the JavaScript thread and
//! return the resulting events (executions to run, results to deliver) packed the same way:
//! a thousand inputs cost one crossing each way and no thread hop. Deadlines (timeouts, batch
//! waits, retries) fire on a timer thread, which rings a weak threadsafe "doorbell" once when
//! its events go from none to some; JavaScript then pulls them with one `drain()`.
//! Argument and result values never enter Rust in the embedded runtime: they stay in the
//! JavaScript heap, keyed by input id; the core only moves ids.
#![deny(clippy::all)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use berth_core::{
    AbortReason, Batching, Command, ContainerId, Exec, ExecId, ExecStatus, HookSet, InputId, Invoker, MethodSpec,
    Outcome, Phase, PoolId, PoolSpec, ResultSink, RetryPolicy, Scheduler, Submission,
};
use napi::bindgen_prelude::{Float64Array, Float64ArraySlice, Unknown};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Error, Result, Status};
use napi_derive::napi;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use crate::codes::{ExecStatusCode, OutcomeCode, RuntimeEvent};
use crate::mailbox::Mailbox;

// Event tags of the packed buffer (crates/berth-node/src/codes.rs, read by src/shared/codes.ts).
/// execId, poolId, containerId, method, n, (inputId, attempt) * n
const EV_RUN: f64 = RuntimeEvent::Run as i32 as f64;
/// poolId, containerId, phase
const EV_HOOK: f64 = RuntimeEvent::Hook as i32 as f64;
/// inputId, attempt, reason
const EV_ABORT: f64 = RuntimeEvent::Abort as i32 as f64;
/// poolId, containerId, phase
const EV_ABANDONED: f64 = RuntimeEvent::Abandoned as i32 as f64;
/// poolId, containerId
const EV_STOPPED: f64 = RuntimeEvent::Stopped as i32 as f64;
/// inputId, attempt, outcome, aux
const EV_DONE: f64 = RuntimeEvent::Done as i32 as f64;
/// The scheduler has stopped.
const EV_FINISHED: f64 = RuntimeEvent::Finished as i32 as f64;
/// poolId, containerId, inputId: its container is replaced (see `Invoker::replaced`)
const EV_REPLACED: f64 = RuntimeEvent::Replaced as i32 as f64;

pub(crate) type Doorbell = ThreadsafeFunction<(), Unknown<'static>, (), Status, false, true>;

// The control plane and the client allocate a few small buffers per input on their own threads;
// with mimalloc's thread-local heaps (as oxc and rolldown use) the control plane's CPU per Map
// input went from 2.2 to 1.85 µs (bench/serve.ts), malloc and free having been a quarter of it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;
mod codes;
mod container;
mod deploy;
mod failure;
mod log;
mod mailbox;
mod serve;
mod worker;

/// Moves a turn's staged events into the mailbox (one doorbell ring at most).
fn publish(mailbox: &Mailbox, staged: &mut Vec<f64>) {
    if !staged.is_empty() {
        mailbox.push(|inbox| inbox.events.append(staged));
    }
}

/// The scheduler's side: stages events during a turn and publishes them at `flush`.
struct Host {
    shared: Arc<Mailbox>,
    staged: Vec<f64>,
}

impl Invoker for Host {
    fn run_hook(&mut self, pool: PoolId, container: ContainerId, phase: Phase) {
        self.staged.extend_from_slice(&[EV_HOOK, f64::from(pool), f64::from(container), f64::from(phase as u8)]);
    }
    fn run(&mut self, exec: &Exec) {
        self.staged.extend_from_slice(&[
            EV_RUN,
            exec.id as f64,
            f64::from(exec.pool),
            f64::from(exec.container),
            f64::from(exec.method),
            exec.inputs.len() as f64,
        ]);
        for &(input, attempt) in &exec.inputs {
            self.staged.push(input as f64);
            self.staged.push(f64::from(attempt));
        }
    }
    fn abort(&mut self, input: InputId, attempt: u32, reason: AbortReason) {
        self.staged.extend_from_slice(&[EV_ABORT, input as f64, f64::from(attempt), f64::from(reason as u8)]);
    }
    fn hook_abandoned(&mut self, pool: PoolId, container: ContainerId, phase: Phase) {
        self.staged.extend_from_slice(&[EV_ABANDONED, f64::from(pool), f64::from(container), f64::from(phase as u8)]);
    }
    fn container_stopped(&mut self, pool: PoolId, container: ContainerId) {
        self.staged.extend_from_slice(&[EV_STOPPED, f64::from(pool), f64::from(container)]);
    }
    fn replaced(&mut self, pool: PoolId, container: ContainerId, input: InputId) {
        self.staged.extend_from_slice(&[EV_REPLACED, f64::from(pool), f64::from(container), input as f64]);
    }
    fn flush(&mut self) {
        publish(&self.shared, &mut self.staged);
    }
}

impl ResultSink for Host {
    fn done(&mut self, input: InputId, attempt: u32, outcome: Outcome) {
        let (code, aux) = match outcome {
            Outcome::Ok => (OutcomeCode::Ok, 0.0),
            Outcome::Failed => (OutcomeCode::Failed, 0.0),
            Outcome::Timeout => (OutcomeCode::Timeout, 0.0),
            Outcome::Cancelled => (OutcomeCode::Cancelled, 0.0),
            Outcome::Init(c) => (OutcomeCode::Init, f64::from(c)),
            Outcome::Lost => (OutcomeCode::Lost, 0.0),
            Outcome::Rejected => (OutcomeCode::Rejected, 0.0),
            Outcome::QueueFull(bound) => (OutcomeCode::QueueFull, f64::from(bound)),
        };
        self.staged.extend_from_slice(&[EV_DONE, input as f64, f64::from(attempt), f64::from(code as i32), aux]);
    }
    fn flush(&mut self) {
        publish(&self.shared, &mut self.staged);
    }
}

#[napi(object)]
pub struct BindingRetries {
    pub max_retries: u32,
    pub backoff_coefficient: f64,
    pub initial_delay_ms: f64,
    pub max_delay_ms: f64,
}

#[napi(object)]
pub struct BindingMethod {
    /// Present for a `@batched` method.
    pub max_batch_size: Option<u32>,
    pub wait_ms: Option<f64>,
    /// A web endpoint: no retries (`MethodSpec::no_retries`).
    pub no_retries: Option<bool>,
}

#[napi(object)]
pub struct BindingPoolSpec {
    pub name: String,
    pub methods: Vec<BindingMethod>,
    pub has_build: bool,
    pub has_snap_enter: bool,
    pub has_enter: bool,
    pub has_exit: bool,
    pub max_inputs: u32,
    pub target_inputs: u32,
    pub timeout_ms: f64,
    pub startup_timeout_ms: f64,
    pub retries: BindingRetries,
    pub min_containers: u32,
    pub max_containers: u32,
    pub buffer_containers: u32,
    pub scaledown_window_ms: f64,
    pub exit_grace_ms: f64,
    pub single_use: bool,
    /// `maxPendingInputs`; absent: unbounded.
    pub max_pending: Option<u32>,
}

fn millis(ms: f64, what: &str) -> Result<Duration> {
    if !ms.is_finite() || ms < 0.0 {
        return Err(Error::new(
            Status::InvalidArg,
            format!("{what} must be a finite number of seconds ≥ 0, got {}", ms / 1000.0),
        ));
    }
    Ok(Duration::from_secs_f64(ms / 1000.0))
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::new(Status::InvalidArg, e.to_string())
}

impl BindingPoolSpec {
    pub(crate) fn into_spec(self) -> Result<PoolSpec> {
        let methods = self
            .methods
            .iter()
            .map(|m| {
                let batching = match m.max_batch_size {
                    Some(size) => {
                        Some(Batching::new(size, millis(m.wait_ms.unwrap_or(0.0), "waitMs")?).map_err(invalid)?)
                    }
                    None => None,
                };
                Ok(MethodSpec { batching, no_retries: m.no_retries.unwrap_or(false) })
            })
            .collect::<Result<Vec<_>>>()?;
        let r = &self.retries;
        let retries = RetryPolicy::new(
            r.max_retries,
            r.backoff_coefficient,
            millis(r.initial_delay_ms, "retries.initialDelay")?,
            millis(r.max_delay_ms, "retries.maxDelay")?,
        )
        .map_err(invalid)?;
        let spec = PoolSpec {
            methods,
            hooks: HookSet {
                spawn: false,
                build: self.has_build,
                snap_enter: self.has_snap_enter,
                enter: self.has_enter,
                exit: self.has_exit,
            },
            max_inputs: self.max_inputs,
            target_inputs: self.target_inputs,
            timeout: millis(self.timeout_ms, "timeout")?,
            startup_timeout: millis(self.startup_timeout_ms, "startupTimeout")?,
            retries,
            min_containers: self.min_containers,
            max_containers: self.max_containers,
            buffer_containers: self.buffer_containers,
            scaledown_window: millis(self.scaledown_window_ms, "scaledownWindow")?,
            exit_grace: millis(self.exit_grace_ms, "exitGracePeriod")?,
            single_use: self.single_use,
            max_pending: self.max_pending,
            name: self.name,
        };
        spec.validate().map_err(invalid)?;
        Ok(spec)
    }
}

type Sched = Scheduler<Host, Host>;

/// The scheduler, driven from two places: synchronously by JavaScript calls (the hot path:
/// a call's resulting events come back in its return value, no thread hop), and by a timer
/// thread for deadlines (timeouts, batch waits, retries), which rings the doorbell.
struct Driver {
    sched: Mutex<Sched>,
    shared: Arc<Mailbox>,
    /// The deadline the timer thread sleeps until; a call that makes an earlier one wakes it.
    armed: Mutex<Option<Instant>>,
    wake: Notify,
    closed: AtomicBool,
}

impl Driver {
    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies commands and returns every event that is waiting, this turn's included.
    fn drive(&self, cmds: impl IntoIterator<Item = Command>) -> Option<Float64Array> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        let mut sched = self.lock();
        // The caller takes the events itself: no doorbell for this turn.
        self.shared.hold();
        for cmd in cmds {
            sched.handle(cmd);
        }
        let finished = sched.tick();
        let deadline = sched.next_deadline();
        drop(sched);
        let mut events = self.shared.drain().map(|(events, _)| events).unwrap_or_default();
        if finished {
            self.close();
            events.push(EV_FINISHED);
        } else if let Some(at) = deadline {
            let armed = *self.armed.lock().unwrap_or_else(|e| e.into_inner());
            if armed.is_none_or(|a| at < a) {
                self.wake.notify_one();
            }
        }
        (!events.is_empty()).then(|| Float64Array::new(events))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The timer thread: sleeps until the earliest deadline (or a wake-up) and ticks.
    async fn timers(self: Arc<Self>) {
        loop {
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let deadline = self.lock().next_deadline();
            *self.armed.lock().unwrap_or_else(|e| e.into_inner()) = deadline;
            match deadline {
                Some(at) => {
                    tokio::select! {
                        () = sleep_until(at) => {}
                        () = self.wake.notified() => continue,
                    }
                }
                None => {
                    self.wake.notified().await;
                    continue;
                }
            }
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            let finished = self.lock().tick();
            if finished {
                self.close();
                publish(&self.shared, &mut vec![EV_FINISHED]);
                return;
            }
        }
    }
}

/// One embedded runtime: a scheduler driven from JavaScript, and its timer thread.
#[napi]
pub struct BindingRuntime {
    driver: Arc<Driver>,
    next_pool: PoolId,
}

#[napi]
impl BindingRuntime {
    /// `doorbell` is called (with no arguments) when a timer produced events to `drain()`. It is
    /// weak: it never keeps Node alive by itself.
    #[napi(constructor)]
    pub fn new(doorbell: Doorbell) -> Result<Self> {
        let shared = Arc::new(Mailbox::new(doorbell));
        let host = Host { shared: shared.clone(), staged: Vec::new() };
        let results = Host { shared: shared.clone(), staged: Vec::new() };
        let driver = Arc::new(Driver {
            sched: Mutex::new(Scheduler::new(host, results)),
            shared,
            armed: Mutex::new(None),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| Error::from_reason(format!("berth: cannot start the timer runtime: {e}")))?;
        let timers = driver.clone();
        std::thread::Builder::new()
            .name("berth-timers".into())
            .spawn(move || rt.block_on(timers.timers()))
            .map_err(|e| Error::from_reason(format!("berth: cannot start the timer thread: {e}")))?;
        Ok(Self { driver, next_pool: 1 })
    }

    fn check_open(&self) -> Result<()> {
        if self.driver.closed.load(Ordering::Acquire) {
            return Err(Error::from_reason("berth: this runtime has stopped; start the app again with app.run()"));
        }
        Ok(())
    }

    /// Registers a pool (a function, or a class with one parameter set); returns its id. Its
    /// events (warm containers) come with the next call or the doorbell.
    #[napi]
    pub fn add_pool(&mut self, spec: BindingPoolSpec) -> Result<u32> {
        self.check_open()?;
        let spec = spec.into_spec()?;
        let id = self.next_pool;
        self.next_pool += 1;
        let mut sched = self.driver.lock();
        sched.handle(Command::AddPool(id, spec));
        sched.tick();
        drop(sched);
        self.driver.wake.notify_one();
        Ok(id)
    }

    /// `[poolId, method, inputId] * n`; returns the events that follow. A map's input, which
    /// waits for room under maxPendingInputs instead of being refused, is sent as method
    /// `-1 - method` (src/run/runtime.ts).
    #[napi]
    pub fn submit(&self, batch: Float64ArraySlice) -> Option<Float64Array> {
        let subs = batch
            .chunks_exact(3)
            .map(|c| {
                let waits = c[1] < 0.0;
                let method = if waits { (-1.0 - c[1]) as u32 } else { c[1] as u32 };
                Submission { pool: c[0] as PoolId, method, input: c[2] as InputId, waits }
            })
            .collect();
        self.driver.drive([Command::Submit(subs)])
    }

    /// `[inputId] * n`
    #[napi]
    pub fn cancel(&self, inputs: Float64ArraySlice) -> Option<Float64Array> {
        self.driver.drive([Command::Cancel(inputs.iter().map(|i| *i as InputId).collect())])
    }

    /// `[execId, status] * n`, status an `ExecStatusCode`: ok, failed (retryable), failed
    /// (final), or ok and already delivered to the caller.
    #[napi]
    pub fn complete(&self, batch: Float64ArraySlice) -> Option<Float64Array> {
        const OK: i32 = ExecStatusCode::Ok as i32;
        const FAILED: i32 = ExecStatusCode::Failed as i32;
        const DELIVERED: i32 = ExecStatusCode::Delivered as i32;
        let done = batch
            .chunks_exact(2)
            .map(|c| {
                let status = match c[1] as i32 {
                    OK => ExecStatus::Ok,
                    FAILED => ExecStatus::Failed,
                    DELIVERED => ExecStatus::Delivered,
                    _ => ExecStatus::FailedFinal,
                };
                (c[0] as ExecId, status)
            })
            .collect();
        self.driver.drive([Command::Complete(done)])
    }

    #[napi]
    pub fn hook_done(&self, container: u32, phase: u32, ok: bool) -> Result<Option<Float64Array>> {
        let phase = Phase::from_u8(phase as u8).ok_or_else(|| invalid(format!("unknown phase {phase}")))?;
        Ok(self.driver.drive([Command::HookDone { container, phase, ok }]))
    }

    /// Graceful stop: finish accepted inputs, run exit hooks; `EV_FINISHED` ends the events.
    #[napi]
    pub fn shutdown(&self) -> Option<Float64Array> {
        self.driver.drive([Command::Shutdown(None)])
    }

    /// Forced stop: everything pending is cancelled now.
    #[napi]
    pub fn kill(&self) -> Option<Float64Array> {
        self.driver.drive([Command::Kill])
    }

    /// Events a timer produced since the last call; `null` when there are none.
    #[napi]
    pub fn drain(&self) -> Option<Float64Array> {
        self.driver.shared.drain().map(|(events, _)| Float64Array::new(events))
    }
}

impl Drop for BindingRuntime {
    fn drop(&mut self) {
        // Collected without a stop: end the timer thread; nothing can observe the inputs any more.
        self.driver.close();
    }
}
