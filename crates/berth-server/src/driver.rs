//! Who runs the scheduler's turns (ARCHITECTURE.md, "The control plane"). The turn task runs
//! one when rung ([`Commands::send`]) and when the scheduler's next deadline passes (timeouts,
//! backoffs, scale-down): it takes every command waiting by then, from every caller and
//! container, so a turn's decisions leave in as few messages as they can. A request that waits
//! on its own turn and no other (a `@webServer`'s: proxy.rs) instead queues its command and
//! drives the scheduler on its own task ([`Shared::drive`]): the turn runs there at once, with no
//! task to wake for it and none to wake back for its assignment. When another task is running a
//! turn (the lock is taken), its command is left to the turn task, which it rings.
//!
//! A command queued under the state lock (an input's submission must come before anything can
//! cancel it) is driven after the lock is released: a turn takes that lock itself (`Host`).
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use tokio::time::Instant;

use berth_core::{Command, Scheduler};
use tokio::sync::{mpsc, Notify};
use tokio::time::sleep_until;

use crate::plane::{Host, Shared};

/// Commands one turn takes at most before it ticks: a flood of them still gets dispatched.
const MAX_COMMANDS_PER_TURN: usize = 4096;

type Sched = Scheduler<Host, Host>;

/// Where the scheduler's commands go: its queue, and the turn task's bell.
#[derive(Clone)]
pub(crate) struct Commands {
    tx: mpsc::UnboundedSender<Command>,
    bell: Arc<Notify>,
}

impl Commands {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<Command>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx, bell: Arc::new(Notify::new()) }, rx)
    }

    /// Queues `cmd` for the turn task, and wakes it. False once the scheduler is gone.
    pub fn send(&self, cmd: Command) -> bool {
        if self.tx.send(cmd).is_err() {
            return false;
        }
        self.bell.notify_one();
        true
    }

    /// Queues `cmd` without waking the turn task: the sender calls [`Shared::drive`] after it
    /// has let go of the state lock, or is the scheduler's host in a turn (which takes it before
    /// it ends).
    pub fn queue(&self, cmd: Command) {
        let _ = self.tx.send(cmd);
    }
}

/// The scheduler and its queue, taken by whoever runs a turn; `None` before the control plane
/// starts it and once it has finished.
#[derive(Default)]
pub(crate) struct Driver {
    core: Mutex<Option<(Sched, mpsc::UnboundedReceiver<Command>)>>,
    /// The deadline the turn task sleeps until; a turn that makes an earlier one wakes it.
    armed: Mutex<Option<Instant>>,
}

impl Driver {
    fn armed(&self) -> MutexGuard<'_, Option<Instant>> {
        self.armed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What one turn left: whether the scheduler finished, and its next deadline.
struct Turn {
    ran: bool,
    finished: bool,
    deadline: Option<Instant>,
}

/// One turn of `core`'s scheduler: the waiting commands, then a tick (also with no command
/// when `always`, for a deadline that passed); again while what the tick did queued more (the
/// host queues a command of its own, e.g. a proxied request whose client left as it was
/// assigned: proxy.rs).
fn turn(core: &mut (Sched, mpsc::UnboundedReceiver<Command>), always: bool) -> Turn {
    let (sched, rx) = core;
    let mut n = 0;
    let mut ticked = false;
    loop {
        let before = n;
        while n < MAX_COMMANDS_PER_TURN {
            match rx.try_recv() {
                Ok(cmd) => sched.handle(cmd),
                // Every sender gone: nothing can reach the scheduler any more.
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    sched.handle(Command::Kill);
                    n += 1;
                    break;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
            n += 1;
        }
        if n == before && (ticked || !always) {
            break;
        }
        ticked = true;
        if sched.tick() {
            return Turn { ran: true, finished: true, deadline: None };
        }
        if n >= MAX_COMMANDS_PER_TURN {
            break;
        }
    }
    Turn { ran: ticked, finished: false, deadline: sched.next_deadline() }
}

impl Shared {
    /// Runs the scheduler's turns on this task while commands wait and no other task runs one;
    /// when one does, leaves the waiting commands to the turn task. Never called with the state
    /// lock held (a turn takes it).
    pub fn drive(&self) {
        loop {
            let mut core = match self.driver.core.try_lock() {
                Ok(core) => core,
                Err(TryLockError::Poisoned(e)) => e.into_inner(),
                Err(TryLockError::WouldBlock) => {
                    self.commands.bell.notify_one();
                    return;
                }
            };
            let Some(c) = core.as_mut() else { return };
            let t = turn(c, false);
            if !t.ran {
                return;
            }
            if t.finished {
                let done = core.take();
                drop(core);
                drop(done);
                self.commands.bell.notify_one();
                return;
            }
            drop(core);
            if let Some(at) = t.deadline {
                if self.driver.armed().is_none_or(|a| at < a) {
                    self.commands.bell.notify_one();
                }
            }
        }
    }
}

/// Starts `shared`'s scheduler: its turns run where commands are sent ([`Shared::drive`]), and
/// on a task of the current runtime for what is left there and for its deadlines.
pub(crate) fn start(shared: &Arc<Shared>, rx: mpsc::UnboundedReceiver<Command>) {
    let sched = Scheduler::new(Host(shared.clone()), Host(shared.clone()));
    *shared.driver.core.lock().unwrap_or_else(|e| e.into_inner()) = Some((sched, rx));
    tokio::spawn(turns(Arc::downgrade(shared), shared.commands.bell.clone()));
}

/// The turn task: runs a turn when rung or when the scheduler's next deadline passes, until the
/// scheduler finishes. It holds the control plane weakly: its scheduler holds it strongly, and
/// lets go when it finishes.
async fn turns(shared: Weak<Shared>, bell: Arc<Notify>) {
    let mut deadline: Option<Instant> = None;
    loop {
        match deadline {
            Some(at) => tokio::select! {
                biased;
                () = bell.notified() => {}
                () = sleep_until(at) => {}
            },
            None => bell.notified().await,
        }
        let Some(shared) = shared.upgrade() else { return };
        let mut core = shared.driver.core.lock().unwrap_or_else(|e| e.into_inner());
        let Some(c) = core.as_mut() else { return };
        let t = turn(c, true);
        if t.finished {
            let done = core.take();
            drop(core);
            drop(done);
            return;
        }
        deadline = t.deadline;
        *shared.driver.armed() = deadline;
        drop(core);
    }
}
