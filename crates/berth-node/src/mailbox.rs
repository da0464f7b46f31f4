//! Events for JavaScript from another thread: numbers and the bytes they point into, kept
//! until JavaScript drains them; a weak doorbell rings once when the mailbox goes from empty
//! to not, so many events cost one wake-up.
use std::sync::Mutex;

use napi::threadsafe_function::ThreadsafeFunctionCallMode;

use crate::Doorbell;

#[derive(Default)]
pub(crate) struct Inbox {
    pub events: Vec<f64>,
    pub bytes: Vec<u8>,
    rung: bool,
}

pub(crate) struct Mailbox {
    inbox: Mutex<Inbox>,
    doorbell: Doorbell,
}

impl Mailbox {
    pub fn new(doorbell: Doorbell) -> Self {
        Self { inbox: Mutex::new(Inbox::default()), doorbell }
    }

    /// Adds events and rings the doorbell if they are the first since the last drain.
    pub fn push(&self, f: impl FnOnce(&mut Inbox)) {
        let ring = {
            let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut inbox);
            !std::mem::replace(&mut inbox.rung, true)
        };
        if ring {
            // Non-blocking: a closing env answers with an error, which means nobody listens.
            let _ = self.doorbell.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }

    /// The caller is about to take what comes next itself (a synchronous call returns its
    /// events): no doorbell until the next drain.
    pub fn hold(&self) {
        self.inbox.lock().unwrap_or_else(|e| e.into_inner()).rung = true;
    }

    /// Everything since the last drain; `None` when nothing came.
    pub fn drain(&self) -> Option<(Vec<f64>, Vec<u8>)> {
        let mut inbox = self.inbox.lock().unwrap_or_else(|e| e.into_inner());
        inbox.rung = false;
        let events = std::mem::take(&mut inbox.events);
        let bytes = std::mem::take(&mut inbox.bytes);
        (!events.is_empty()).then_some((events, bytes))
    }
}
