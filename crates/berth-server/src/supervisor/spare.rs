//! The warm spare: a container process started ahead of need, with Node, tsx and berth loaded,
//! waiting on stdin for its identity. A new container then costs loading the user's module and
//! attaching, not a Node start.
use std::process::Child;
use std::sync::Mutex;

use super::output::Output;
use super::process::start_container_process;
use super::{Procs, Supervisor};

/// Whether to keep a warm spare: `BERTH_WARM_SPARE=0` turns it off, for comparison.
pub fn warm_spare_from_env() -> bool {
    std::env::var("BERTH_WARM_SPARE").map_or(true, |v| v != "0")
}

/// A container process started before the server exists (`prestart_container`), and what for.
type EarlySpare = (Vec<String>, String, Output, Child);
static EARLY_SPARE: Mutex<Option<EarlySpare>> = Mutex::new(None);

/// Starts the first spare container process now, while this process is still loading the user's
/// module, so that the first container is ready about when the server is. The [`Supervisor`]
/// started next with the same command and file adopts it; if none is (the module failed to
/// load), it exits when this process does (its stdin closes).
/// `output` is the server's (a spare relayed one way is no use to a server wanting another).
pub fn prestart_container(command: Vec<String>, app_file: String, output: Output) {
    if let Ok(child) = start_container_process(&command, &app_file, output) {
        let old = EARLY_SPARE.lock().unwrap_or_else(|e| e.into_inner()).replace((command, app_file, output, child));
        if let Some((_, _, _, mut old)) = old {
            let _ = old.kill();
            let _ = old.wait();
        }
    }
}

pub(super) fn take_early_spare(command: &[String], app_file: &str, output: Output) -> Option<Child> {
    let mut early = EARLY_SPARE.lock().unwrap_or_else(|e| e.into_inner());
    match early.take() {
        Some((c, f, o, child)) if c == command && f == app_file && o == output => Some(child),
        other => {
            *early = other;
            None
        }
    }
}

impl Supervisor {
    pub(super) fn refill_spare(&self, g: &mut Procs) {
        if self.keep_spare && !g.closed && g.spare.is_none() {
            g.spare = self.start_process().ok();
        }
    }
}
