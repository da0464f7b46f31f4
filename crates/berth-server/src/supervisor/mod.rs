//! Container processes on this machine: the [`Spawner`] that `berth run` and `berth serve` give
//! the control plane. Each container is a child process started with the container command; it
//! learns who it is from one line on its stdin, attaches back over gRPC, and is watched by one
//! supervisor thread until it ends.
//!
//! - `process`: how one process is started (its own process group, a death signal tied to its
//!   starter) and how its end is described;
//! - `spare`: the warm spare, a process started ahead of need;
//! - `placement`: what each function's containers get besides who they are (env, GPUs);
//! - `output`: where their stdout and stderr go (the server's own, or relayed line by line,
//!   named, and kept in a ring for `berth logs`), and the server's lines about each container.

pub mod output;
mod placement;
mod process;
mod spare;

use std::collections::HashMap;
use std::io::Write;
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub use output::{log_book, LogBook, LogLine, Output};
pub use placement::{detect_gpus, Placement, Placements};
pub use process::watch_parent;
pub use spare::{prestart_container, warm_spare_from_env};

use crate::gpu::GpuPool;
use crate::{ExitReporter, FunctionDef, ServeOptions, Spawner};
use process::{describe_exit, start_container_process};

/// How a [`Supervisor`] starts and stops container processes.
pub struct SupervisorOptions {
    /// The command that starts one container: `argv[0]` and its arguments
    /// (`node bin/berth.mjs __container`).
    pub command: Vec<String>,
    /// The user's module, which every container loads (`BERTH_APP_FILE` in its environment).
    pub app_file: String,
    /// Each function's env and GPU choices, and the machine's GPUs.
    pub placements: Placements,
    /// Keep a warm spare (`BERTH_WARM_SPARE=0` turns it off, for comparison).
    pub warm_spare: bool,
    /// How long a stopped container may take to exit by itself before it is killed.
    pub stop_grace: Duration,
    /// The server's message cap, which containers apply to their results.
    pub max_message_bytes: usize,
    /// Where containers' stdout and stderr go, and whether their starts and stops are logged.
    pub output: Output,
}

impl SupervisorOptions {
    pub fn new(command: Vec<String>, app_file: String) -> Self {
        Self {
            command,
            app_file,
            placements: Placements::default(),
            warm_spare: true,
            stop_grace: STOP_KILL_AFTER,
            max_message_bytes: ServeOptions::default().max_message_bytes,
            output: Output::Inherit,
        }
    }
}

/// How long a stopped container may take to exit by itself before it is killed, by default.
pub const STOP_KILL_AFTER: Duration = Duration::from_secs(10);
const SUPERVISE_EVERY: Duration = Duration::from_millis(20);

struct Proc {
    child: Child,
    exited: ExitReporter,
    /// Set once the container was asked to stop: when it must be gone.
    kill_at: Option<Instant>,
    /// Set when it was killed for being late after its stop.
    overdue: bool,
    /// Set when it was killed for not answering (the control plane logged why).
    hung: bool,
    gpus: Vec<usize>,
    /// `app/function`, for the log.
    label: String,
    app: String,
    function: String,
    started: Instant,
}

#[derive(Default)]
struct Procs {
    live: HashMap<u32, Proc>,
    /// Each function's env and GPU choices, by app and name.
    placement: HashMap<(String, String), Placement>,
    gpus: GpuPool,
    /// Set when the server is done with containers (stopped, or `kill()`ed): nothing more
    /// starts, and processes that end are no longer reported lost.
    closed: bool,
    /// A container process started ahead of need, with Node, tsx and berth loaded, waiting on
    /// stdin for its identity: a new container then costs loading the user's module and
    /// attaching, not a Node start.
    spare: Option<Child>,
}

fn lock(procs: &Mutex<Procs>) -> MutexGuard<'_, Procs> {
    procs.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts container processes with the command and passes who they are in the environment.
/// One supervisor thread watches them all: a process that ends without being stopped is
/// reported lost (at any stage, before it attached too), one that does not end after a stop
/// is killed, and its GPUs go back to the pool when it is gone.
pub struct Supervisor {
    command: Vec<String>,
    app_file: String,
    keep_spare: bool,
    max_message_bytes: usize,
    output: Output,
    handle: SupervisorHandle,
    /// The control plane's data socket, for its containers (`Spawner::data_socket`).
    data_socket: std::sync::OnceLock<String>,
}

/// What the server keeps of its [`Supervisor`] once the control plane owns it: the forced stop,
/// and waiting for the processes to be gone.
#[derive(Clone)]
pub struct SupervisorHandle {
    procs: Arc<Mutex<Procs>>,
    stop_grace: Duration,
    output: Output,
}

impl Supervisor {
    /// Starts the supervisor thread and the warm spare (adopting the one
    /// [`prestart_container`] started for the same command and file, if any).
    pub fn start(opts: SupervisorOptions) -> Self {
        let (placement, gpus) = opts.placements.into_parts();
        let procs = Arc::new(Mutex::new(Procs { placement, gpus, ..Procs::default() }));
        let handle = SupervisorHandle { procs, stop_grace: opts.stop_grace, output: opts.output };
        handle.start_thread();
        let supervisor = Self {
            command: opts.command,
            app_file: opts.app_file,
            keep_spare: opts.warm_spare,
            max_message_bytes: opts.max_message_bytes,
            output: opts.output,
            handle,
            data_socket: std::sync::OnceLock::new(),
        };
        {
            let mut g = lock(&supervisor.handle.procs);
            g.spare = spare::take_early_spare(&supervisor.command, &supervisor.app_file, supervisor.output);
            supervisor.refill_spare(&mut g);
        }
        supervisor
    }

    pub fn handle(&self) -> SupervisorHandle {
        self.handle.clone()
    }

    fn start_process(&self) -> std::io::Result<Child> {
        start_container_process(&self.command, &self.app_file, self.output)
    }
}

impl SupervisorHandle {
    fn start_thread(&self) {
        let weak = Arc::downgrade(&self.procs);
        let stop_grace = self.stop_grace;
        let output = self.output;
        std::thread::Builder::new()
            .name("berth-supervisor".into())
            .spawn(move || loop {
                std::thread::sleep(SUPERVISE_EVERY);
                let Some(procs) = weak.upgrade() else { return };
                let mut g = lock(&procs);
                let now = Instant::now();
                let mut ended = Vec::new();
                for (&id, p) in &mut g.live {
                    match p.child.try_wait() {
                        Ok(Some(status)) => ended.push((id, status)),
                        Ok(None) if !p.overdue && p.kill_at.is_some_and(|at| now > at) => {
                            p.overdue = true;
                            let _ = p.child.kill();
                        }
                        _ => {}
                    }
                }
                let mut lost = Vec::new();
                for (id, status) in ended {
                    let Some(p) = g.live.remove(&id) else { continue };
                    g.gpus.give_back(&p.gpus);
                    // A crash (or a kill after a stop it ignored) is worth a line in the server's
                    // log: callers only learn that their container went away.
                    let pid = p.child.id();
                    if !g.closed && !p.hung && (p.overdue || !status.success()) {
                        let how = if p.overdue {
                            format!("did not exit within {}s of its stop and was killed", stop_grace.as_secs())
                        } else {
                            describe_exit(status)
                        };
                        let message = format!("berth: container {id} of {} (pid {pid}) {how}", p.label);
                        output::lifecycle(output, &p.app, &p.function, id, "warn", message);
                    } else if p.kill_at.is_some() || g.closed {
                        // Asked to stop (it ran its exit hooks first), or the server stopped.
                        let up = p.started.elapsed().as_secs_f64();
                        let message =
                            format!("berth: container {id} of {} (pid {pid}) stopped after {up:.1}s", p.label);
                        output::lifecycle(output, &p.app, &p.function, id, "info", message);
                    }
                    if p.kill_at.is_none() && !g.closed {
                        lost.push((p.exited, status));
                    }
                }
                // Reported without the lock: the report takes the control plane's.
                drop(g);
                for (exited, status) in lost {
                    exited.exited(describe_exit(status));
                }
            })
            .expect("berth: cannot start the container supervisor thread");
    }

    /// Places functions served from now on (an app replaced while serving: `ControlPlane::
    /// replace_apps`): containers started from here on get their env and GPU choices. The GPUs
    /// in use stay accounted; a machine whose GPUs were not looked for at the start takes the
    /// ones `placements` found.
    pub fn add_placements(&self, placements: Placements) {
        let (by_function, gpus) = placements.into_parts();
        let mut g = lock(&self.procs);
        g.placement.extend(by_function);
        if g.gpus.devices().is_empty() {
            g.gpus = gpus;
        }
    }

    /// The forced stop: kills every container process and the spare now, and starts no more.
    pub fn kill_all(&self) {
        let mut g = lock(&self.procs);
        g.closed = true;
        for p in g.live.values_mut() {
            let _ = p.child.kill();
        }
        if let Some(mut spare) = g.spare.take() {
            let _ = spare.kill();
        }
    }

    /// After the control plane's shutdown: every container was told to stop; any left (one
    /// still starting) gets the same bounded wait before it is killed. Returns once their
    /// processes are gone (the supervisor kills one that is late), or a little after the grace.
    pub fn wait_stopped(&self) {
        for p in lock(&self.procs).live.values_mut() {
            p.kill_at.get_or_insert(Instant::now() + self.stop_grace);
        }
        let deadline = Instant::now() + self.stop_grace + Duration::from_secs(2);
        while !lock(&self.procs).live.is_empty() && Instant::now() < deadline {
            std::thread::sleep(SUPERVISE_EVERY);
        }
    }

    /// No more containers will start: the spare exits by itself when its stdin closes; reap it
    /// so it is no zombie, and start no other.
    pub fn close(&self) {
        let spare = {
            let mut g = lock(&self.procs);
            g.closed = true;
            g.spare.take()
        };
        if let Some(mut spare) = spare {
            drop(spare.stdin.take());
            let _ = spare.wait();
        }
    }

    /// How many container processes are running (the spare not counted).
    pub fn live(&self) -> usize {
        lock(&self.procs).live.len()
    }
}

impl Spawner for Supervisor {
    fn spawn(
        &self,
        def: &FunctionDef,
        params: &[u8],
        container: u32,
        token: &str,
        endpoint: &str,
        exited: ExitReporter,
    ) {
        let mut g = lock(&self.handle.procs);
        if g.closed {
            return;
        }
        let (env, choices) = g
            .placement
            .get(&(def.app.clone(), def.name.clone()))
            .map(|p| (p.env.clone(), p.gpu.clone()))
            .unwrap_or_default();
        // The function's env first, so that who the container is (and its GPUs) always wins.
        let mut identity: Vec<(&str, String)> = env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        identity.extend([
            ("BERTH_ENDPOINT", endpoint.to_string()),
            ("BERTH_CONTAINER_ID", container.to_string()),
            ("BERTH_CONTAINER_TOKEN", token.to_string()),
            ("BERTH_APP", def.app.clone()),
            ("BERTH_FUNCTION", def.name.clone()),
            ("BERTH_PARAMS", hex(params)),
            ("BERTH_MAX_INPUTS", def.spec.max_inputs.to_string()),
            ("BERTH_MAX_MESSAGE_BYTES", self.max_message_bytes.to_string()),
        ]);
        if let Some(name) = self.data_socket.get() {
            identity.push(("BERTH_DATA_SOCKET", name.clone()));
        }
        // Its output is relayed: it tags each line with its level and input (output.rs).
        if self.output != Output::Inherit {
            identity.push(("BERTH_LOG_TAGS", "1".to_string()));
        }
        let mut gpus = Vec::new();
        if !choices.is_empty() {
            let Some((visible, slots)) = g.gpus.take(&choices) else {
                drop(g);
                exited.exited("could not start: every matching GPU is held by another container".into());
                return;
            };
            identity.push(("CUDA_VISIBLE_DEVICES", visible));
            gpus = slots;
        }
        // The warm spare if it is still alive, else a new process; either way it learns who it
        // is from one line on stdin and sets it in its environment before loading the module.
        let child = match g.spare.take() {
            Some(mut c) => match c.try_wait() {
                Ok(None) => Ok(c),
                _ => self.start_process(),
            },
            None => self.start_process(),
        };
        let child = child.and_then(|mut c| {
            let mut line = json_object(&identity);
            line.push('\n');
            let sent = c.stdin.take().map_or(Ok(()), |mut stdin| stdin.write_all(line.as_bytes()));
            match sent {
                Ok(()) => Ok(c),
                Err(e) => {
                    let _ = c.kill();
                    Err(e)
                }
            }
        });
        match child {
            Ok(child) => {
                let label = format!("{}/{}", def.app, def.name);
                let pid = child.id();
                if self.output != Output::Inherit {
                    output::name_output(
                        pid,
                        output::Label {
                            app: def.app.as_str().into(),
                            function: def.name.as_str().into(),
                            container: Some(container),
                        },
                    );
                }
                let message = format!("berth: container {container} of {label} (pid {pid}) started");
                output::lifecycle(self.output, &def.app, &def.name, container, "info", message);
                let proc = Proc {
                    child,
                    exited,
                    kill_at: None,
                    overdue: false,
                    hung: false,
                    gpus,
                    label,
                    app: def.app.clone(),
                    function: def.name.clone(),
                    started: Instant::now(),
                };
                g.live.insert(container, proc);
                self.refill_spare(&mut g);
            }
            Err(e) => {
                g.gpus.give_back(&gpus);
                drop(g);
                exited.exited(format!("could not start ({}: {e})", self.command.join(" ")));
            }
        }
    }

    fn processes(&self) -> Vec<(u32, u32)> {
        lock(&self.handle.procs).live.iter().map(|(id, p)| (*id, p.child.id())).collect()
    }

    fn uptimes(&self) -> Vec<(u32, Duration)> {
        lock(&self.handle.procs).live.iter().map(|(id, p)| (*id, p.started.elapsed())).collect()
    }

    fn data_socket(&self, name: &str) {
        let _ = self.data_socket.set(name.to_string());
    }

    fn stop(&self, container: u32) {
        if let Some(p) = lock(&self.handle.procs).live.get_mut(&container) {
            p.kill_at.get_or_insert(Instant::now() + self.handle.stop_grace);
        }
    }

    fn kill(&self, container: u32) {
        if let Some(p) = lock(&self.handle.procs).live.get_mut(&container) {
            // Reported already (hung, and logged so): its end is no crash to report again.
            p.kill_at.get_or_insert(Instant::now() + self.handle.stop_grace);
            p.hung = true;
            let _ = p.child.kill();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// `{"K":"V",...}` with JSON string escapes.
fn json_object(pairs: &[(&str, String)]) -> String {
    fn string(out: &mut String, s: &str) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    let mut out = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        string(&mut out, k);
        out.push(':');
        string(&mut out, v);
    }
    out.push('}');
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
