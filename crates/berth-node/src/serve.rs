//! `berth serve`: the control plane in this process, containers as child Node processes.
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_server::gpu::{parse_nvidia_smi_list, parse_request, Choice, Device, GpuPool};
use berth_server::{
    Arity, ControlPlane, ExitReporter, FunctionDef, Killer, ParamKind, ParamSpec, Registry, ServeOptions, Spawner,
};
use napi::bindgen_prelude::{AsyncTask, Buffer};
use napi::{Env, Error, Result, Task};
use napi_derive::napi;

use crate::client::BindingClient;
use crate::BindingPoolSpec;

#[napi(object)]
pub struct BindingFunctionDef {
    pub app: String,
    pub name: String,
    pub methods: Vec<String>,
    pub is_class: bool,
    pub spec: BindingPoolSpec,
    /// Set in each container's environment (the function's `env` over its `secrets`).
    pub env: Option<HashMap<String, String>>,
    /// The `gpu` option: choices in order of preference, e.g. `["A100:2", "any:4"]`.
    pub gpu: Option<Vec<String>>,
    /// How many arguments each method takes, in `methods` order.
    pub arity: Option<Vec<BindingArity>>,
    /// A class's `@parameter()` fields, in declaration order (`FunctionDef::params`).
    pub params: Option<Vec<BindingParam>>,
    /// `FunctionDef::not_callable`.
    pub not_callable: Option<Vec<BindingMember>>,
}

#[napi(object)]
pub struct BindingMember {
    pub name: String,
    pub what: String,
}

#[napi(object)]
pub struct BindingParam {
    pub name: String,
    /// `ParamSpec.type` in src/decorators.ts: 'string', 'number' (an integer), 'boolean',
    /// 'bytes', or 'any' (a required parameter).
    pub kind: String,
    /// CBOR of the default value; unset for a required parameter.
    pub default: Option<Buffer>,
}

#[napi(object)]
pub struct BindingArity {
    pub min: u32,
    /// Unset with a rest parameter.
    pub max: Option<u32>,
}

#[napi(object)]
pub struct BindingServeOptions {
    pub host: String,
    pub grpc_port: u32,
    pub token: Option<String>,
    pub max_message_bytes: Option<u32>,
    /// Per listener (gRPC, HTTP); past it a new connection is closed at once (`--max-connections`).
    pub max_connections: Option<u32>,
    /// How long a spawned call's result is kept after it finishes (`--result-ttl`).
    pub result_ttl_seconds: Option<f64>,
    /// Also serve the HTTP JSON ingress on `host:http_port` (0 picks a free port).
    pub http_port: Option<u32>,
    /// The command that starts one container: argv[0] and its arguments (`node bin/berth.mjs __container`).
    pub container_command: Vec<String>,
    /// The user's module, which every container loads.
    pub app_file: String,
}

/// What a function's containers get besides who they are.
#[derive(Default)]
struct Placement {
    env: HashMap<String, String>,
    gpu: Vec<Choice>,
}

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
}

#[derive(Default)]
struct Procs {
    live: HashMap<u32, Proc>,
    gpus: GpuPool,
    /// Set when the server is done with containers (stopped, or `kill()`ed): nothing more
    /// starts, and processes that end are no longer reported lost.
    closed: bool,
    /// A container process started ahead of need, with Node, tsx and berth loaded, waiting on
    /// stdin for its identity: a new container then costs loading the user's module and
    /// attaching, not a Node start.
    spare: Option<Child>,
}

/// Starts container processes with the command and passes who they are in the environment.
/// One supervisor thread watches them all: a process that ends without being stopped is
/// reported lost (at any stage, before it attached too), one that does not end after a stop
/// is killed, and its GPUs go back to the pool when it is gone.
struct ProcessSpawner {
    command: Vec<String>,
    app_file: String,
    placement: HashMap<(String, String), Placement>,
    procs: Arc<Mutex<Procs>>,
    /// Keep a warm spare (BERTH_WARM_SPARE=0 turns it off, for comparison).
    keep_spare: bool,
    /// The server's message cap, which containers apply to their results.
    max_message_bytes: usize,
}

/// How long a stopped container may take to exit by itself before it is killed.
const STOP_KILL_AFTER: Duration = Duration::from_secs(10);
const SUPERVISE_EVERY: Duration = Duration::from_millis(20);

fn lock(procs: &Mutex<Procs>) -> std::sync::MutexGuard<'_, Procs> {
    procs.lock().unwrap_or_else(|e| e.into_inner())
}

/// A container process started before the server exists (`prestartContainer`), and what for.
type EarlySpare = (Vec<String>, String, Child);
static EARLY_SPARE: Mutex<Option<EarlySpare>> = Mutex::new(None);

/// Starts the first spare container process now, while this process is still loading the user's
/// module, so that the first container is ready about when the server is. The server started
/// next with the same command and file adopts it; if none is (the module failed to load), it
/// exits when this process does (its stdin closes).
#[napi]
pub fn prestart_container(command: Vec<String>, app_file: String) {
    if std::env::var("BERTH_WARM_SPARE").is_ok_and(|v| v == "0") {
        return;
    }
    if let Ok(child) = start_container_process(&command, &app_file) {
        let old = EARLY_SPARE.lock().unwrap_or_else(|e| e.into_inner()).replace((command, app_file, child));
        if let Some((_, _, mut old)) = old {
            let _ = old.kill();
            let _ = old.wait();
        }
    }
}

fn take_early_spare(command: &[String], app_file: &str) -> Option<Child> {
    let mut early = EARLY_SPARE.lock().unwrap_or_else(|e| e.into_inner());
    match early.take() {
        Some((c, f, child)) if c == command && f == app_file => Some(child),
        other => {
            *early = other;
            None
        }
    }
}

/// Makes this process get SIGTERM when its parent goes away (Linux): `npx berth serve` under a
/// process manager gets SIGTERM in npm, whose `sh -c` child dies without passing it on, which
/// would leave `berth serve` and its containers running with nobody to stop them. The SIGTERM
/// handler then drains as for any SIGTERM. Returns false where this is not available (the
/// caller watches `process.ppid` instead).
/// `parent` is the parent's pid as this process saw it at its start.
#[napi]
pub fn watch_parent(parent: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on this process.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return false;
            }
            // The parent may have gone before the call: then nobody would signal us. (Not a
            // test for pid 1: under systemd, or an init in a container, that is the parent.)
            if libc::getppid() as u32 != parent {
                libc::kill(libc::getpid(), libc::SIGTERM);
            }
        }
        true
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = parent;
        false
    }
}

/// A container process that waits for its identity on stdin.
fn start_container_process(command: &[String], app_file: &str) -> std::io::Result<Child> {
    let Some((program, args)) = command.split_first() else {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "no container command"));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("BERTH_APP_FILE", app_file)
        // A group of its own: the terminal's Ctrl-C goes to the serving process alone, which
        // stops containers in order instead of every process draining at once.
        .process_group(0);
    // A container ends with its server, however the server ends (SIGKILL included): the
    // kernel kills it when the thread that started it goes, and those threads (the JS thread,
    // the server runtime's workers) live until the server process ends. A server stopping in
    // order has stopped its containers before then.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.stdin(Stdio::piped())
        .stdout(inherited(std::io::stdout().as_fd()))
        .stderr(inherited(std::io::stderr().as_fd()))
        .spawn()
}

impl ProcessSpawner {
    fn start_process(&self) -> std::io::Result<Child> {
        start_container_process(&self.command, &self.app_file)
    }

    fn refill_spare(&self, g: &mut Procs) {
        if self.keep_spare && !g.closed && g.spare.is_none() {
            g.spare = self.start_process().ok();
        }
    }

    fn start_supervisor(procs: &Arc<Mutex<Procs>>) {
        let weak = Arc::downgrade(procs);
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
                    if !g.closed && !p.hung && (p.overdue || !status.success()) {
                        let how = if p.overdue {
                            format!("did not exit within {}s of its stop and was killed", STOP_KILL_AFTER.as_secs())
                        } else {
                            describe_exit(status)
                        };
                        eprintln!("berth: container {id} of {} (pid {}) {how}", p.label, p.child.id());
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
}

impl Spawner for ProcessSpawner {
    fn spawn(
        &self,
        def: &FunctionDef,
        params: &[u8],
        container: u32,
        token: &str,
        endpoint: &str,
        exited: ExitReporter,
    ) {
        let placement = self.placement.get(&(def.app.clone(), def.name.clone()));
        let mut g = lock(&self.procs);
        if g.closed {
            return;
        }
        // The function's env first, so that who the container is (and its GPUs) always wins.
        let mut identity: Vec<(&str, String)> =
            placement.map(|p| p.env.iter().map(|(k, v)| (k.as_str(), v.clone())).collect()).unwrap_or_default();
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
        let mut gpus = Vec::new();
        if let Some(p) = placement {
            if !p.gpu.is_empty() {
                let Some((visible, slots)) = g.gpus.take(&p.gpu) else {
                    drop(g);
                    exited.exited("could not start: every matching GPU is held by another container".into());
                    return;
                };
                identity.push(("CUDA_VISIBLE_DEVICES", visible));
                gpus = slots;
            }
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
                g.live
                    .insert(container, Proc { child, exited, kill_at: None, overdue: false, hung: false, gpus, label });
                self.refill_spare(&mut g);
            }
            Err(e) => {
                g.gpus.give_back(&gpus);
                drop(g);
                exited.exited(format!("could not start ({}: {e})", self.command.join(" ")));
            }
        }
    }

    fn stop(&self, container: u32) {
        if let Some(p) = lock(&self.procs).live.get_mut(&container) {
            p.kill_at.get_or_insert(Instant::now() + STOP_KILL_AFTER);
        }
    }

    fn kill(&self, container: u32) {
        if let Some(p) = lock(&self.procs).live.get_mut(&container) {
            // Reported already (hung, and logged so): its end is no crash to report again.
            p.kill_at.get_or_insert(Instant::now() + STOP_KILL_AFTER);
            p.hung = true;
            let _ = p.child.kill();
        }
    }
}

impl Drop for ProcessSpawner {
    fn drop(&mut self) {
        release_spare(&self.procs);
    }
}

/// No more containers will start: the spare exits by itself when its stdin closes; reap it so
/// it is no zombie, and start no other.
fn release_spare(procs: &Mutex<Procs>) {
    let spare = {
        let mut g = lock(procs);
        g.closed = true;
        g.spare.take()
    };
    if let Some(mut spare) = spare {
        drop(spare.stdin.take());
        let _ = spare.wait();
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

/// The GPUs on this machine, from `nvidia-smi -L` (`BERTH_NVIDIA_SMI` names another command,
/// which tests use); none when the command is missing or fails.
fn detect_gpus() -> Vec<Device> {
    let program = std::env::var("BERTH_NVIDIA_SMI").unwrap_or_else(|_| "nvidia-smi".into());
    match Command::new(program).arg("-L").stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => parse_nvidia_smi_list(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    }
}

/// Node marks fds 0-2 close-on-exec at startup (uv_disable_stdio_inheritance), so a plain
/// "inherit" would start containers with no stdout: pass duplicates, which the child gets
/// as its own fds 1 and 2.
fn inherited(fd: std::os::fd::BorrowedFd<'_>) -> Stdio {
    fd.try_clone_to_owned().map_or_else(|_| Stdio::inherit(), Stdio::from)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => "ended".to_string(),
    }
}

/// A running control plane with its container processes.
#[napi]
pub struct BindingServer {
    /// Taken by `shutdown()`. Behind a lock because `shutdown` and `kill` take `&self`: a
    /// `&mut self` method would leave the object borrowed while its promise is pending, and
    /// the forced stop (`kill`) comes exactly then.
    running: Mutex<Option<(tokio::runtime::Runtime, ControlPlane)>>,
    killer: Killer,
    address: String,
    http_address: Option<String>,
    procs: Arc<Mutex<Procs>>,
    /// How callers in this process reach the control plane, without gRPC.
    local: berth_server::Client,
    runtime: tokio::runtime::Handle,
}

#[napi]
impl BindingServer {
    /// Binds and starts serving; throws with a message naming the fix when it cannot.
    #[napi(factory)]
    pub fn start(functions: Vec<BindingFunctionDef>, opts: BindingServeOptions) -> Result<Self> {
        crate::log::install();
        let mut defs = Vec::with_capacity(functions.len());
        let mut placement = HashMap::new();
        let mut gpus: Option<GpuPool> = None;
        for f in functions {
            let mut spec = f.spec.into_spec()?;
            let gpu = f.gpu.unwrap_or_default();
            let choices = parse_request(&gpu).map_err(|e| Error::from_reason(format!("berth: {}: {e}", f.name)))?;
            if !choices.is_empty() {
                // A container holds its GPUs whole: no more containers than the machine can hold.
                let pool = gpus.get_or_insert_with(|| GpuPool::new(detect_gpus()));
                let fit =
                    pool.capacity(&f.name, &gpu, &choices).map_err(|e| Error::from_reason(format!("berth: {e}")))?;
                if spec.min_containers > fit {
                    return Err(Error::from_reason(format!(
                        "berth: {} keeps minContainers {} warm, but the machine's GPUs fit {fit} such container(s) at once; lower minContainers",
                        f.name, spec.min_containers
                    )));
                }
                spec.max_containers = spec.max_containers.min(fit);
            }
            placement
                .insert((f.app.clone(), f.name.clone()), Placement { env: f.env.unwrap_or_default(), gpu: choices });
            let arity = f.arity.unwrap_or_default().into_iter().map(|a| Arity { min: a.min, max: a.max }).collect();
            let mut params = Vec::new();
            for p in f.params.unwrap_or_default() {
                let kind = match p.kind.as_str() {
                    "string" => ParamKind::String,
                    "number" => ParamKind::Integer,
                    "boolean" => ParamKind::Boolean,
                    "bytes" => ParamKind::Bytes,
                    "any" => ParamKind::Any,
                    other => {
                        return Err(Error::from_reason(format!(
                            "berth: {}.{}: unknown parameter type '{other}'",
                            f.name, p.name
                        )))
                    }
                };
                params.push(ParamSpec { name: p.name, kind, default: p.default.map(|b| b.to_vec()) });
            }
            defs.push(FunctionDef {
                app: f.app,
                name: f.name,
                methods: f.methods,
                is_class: f.is_class,
                spec,
                arity,
                params,
                not_callable: f.not_callable.unwrap_or_default().into_iter().map(|m| (m.name, m.what)).collect(),
            });
        }
        let addr: SocketAddr = format!("{}:{}", opts.host, opts.grpc_port).parse().map_err(|e| {
            Error::from_reason(format!("--host {} --grpc-port {}: not an address ({e})", opts.host, opts.grpc_port))
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("berth-serve")
            .build()
            .map_err(|e| Error::from_reason(format!("berth: cannot start the server runtime: {e}")))?;
        let procs = Arc::new(Mutex::new(Procs::default()));
        ProcessSpawner::start_supervisor(&procs);
        let max_message_bytes =
            opts.max_message_bytes.map_or(ServeOptions::default().max_message_bytes, |m| m as usize);
        let spawner = ProcessSpawner {
            command: opts.container_command,
            app_file: opts.app_file,
            placement,
            procs: procs.clone(),
            keep_spare: std::env::var("BERTH_WARM_SPARE").map_or(true, |v| v != "0"),
            max_message_bytes,
        };
        {
            let mut g = lock(&procs);
            g.spare = take_early_spare(&spawner.command, &spawner.app_file);
            spawner.refill_spare(&mut g);
        }
        let serve = ServeOptions {
            addr,
            token: opts.token,
            max_message_bytes,
            max_connections: opts.max_connections.map_or(ServeOptions::default().max_connections, |m| m as usize),
            result_ttl: opts
                .result_ttl_seconds
                .map_or(ServeOptions::default().result_ttl, |s| Duration::from_secs_f64(s.clamp(0.001, 7.0 * 86400.0))),
            http_addr: match opts.http_port {
                Some(port) => Some(format!("{}:{port}", opts.host).parse().map_err(|e| {
                    Error::from_reason(format!("--host {} --http-port {port}: not an address ({e})", opts.host))
                })?),
                None => None,
            },
            ..ServeOptions::default()
        };
        let plane = rt
            .block_on(ControlPlane::start(Registry { functions: defs }, spawner, serve))
            .map_err(|e| Error::from_reason(format!("berth serve: {e}")))?;
        if let Some(pool) = gpus {
            lock(&procs).gpus = pool;
        }
        let address = plane.local_addr().to_string();
        let http_address = plane.http_addr().map(|a| a.to_string());
        let killer = plane.killer();
        let (local, runtime) = (plane.client(), rt.handle().clone());
        Ok(Self { running: Mutex::new(Some((rt, plane))), killer, address, http_address, procs, local, runtime })
    }

    #[napi(getter)]
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// Where the HTTP ingress listens, when one was asked for.
    #[napi(getter)]
    pub fn http_address(&self) -> Option<String> {
        self.http_address.clone()
    }

    /// A client of this control plane for callers in this process: the same calls as a
    /// `BindingClient` of `address`, made directly instead of over a loopback connection.
    /// Null once `shutdown()` has begun: new callers then go over gRPC, as to any server.
    #[napi]
    pub fn client(&self, doorbell: crate::Doorbell) -> Result<Option<BindingClient>> {
        if self.running.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return Ok(None);
        }
        Ok(Some(BindingClient::in_process(self.local.clone(), self.runtime.clone(), doorbell)))
    }

    /// How many `berth.v1.Functions` requests came over gRPC (none come from [`client`](Self::client)).
    #[napi(getter)]
    pub fn grpc_function_calls(&self) -> f64 {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.as_ref().map_or(0.0, |(_, plane)| plane.counters().grpc_function_calls as f64)
    }

    /// The forced stop (a second Ctrl-C): kills every container process now, without exit
    /// hooks, and starts no more; pending inputs are answered cancelled, so that a `shutdown()`
    /// under way ends instead of waiting for inputs no container will run. Synchronous, so that
    /// `process.exit()` may follow at once.
    #[napi]
    pub fn kill(&self) {
        self.killer.kill();
        let mut g = lock(&self.procs);
        g.closed = true;
        for p in g.live.values_mut() {
            let _ = p.child.kill();
        }
        if let Some(mut spare) = g.spare.take() {
            let _ = spare.kill();
        }
    }

    /// Stops taking calls, lets accepted inputs finish, runs containers' exit hooks, stops.
    /// Runs on the libuv threadpool; the promise keeps Node alive until it is done.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn shutdown(&self) -> AsyncTask<Shutdown> {
        AsyncTask::new(Shutdown {
            running: self.running.lock().unwrap_or_else(|e| e.into_inner()).take(),
            procs: self.procs.clone(),
        })
    }
}

pub struct Shutdown {
    running: Option<(tokio::runtime::Runtime, ControlPlane)>,
    procs: Arc<Mutex<Procs>>,
}

impl Task for Shutdown {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        if let Some((rt, plane)) = self.running.take() {
            rt.block_on(plane.shutdown());
            // Every container was told to stop; any left (one still starting) gets the same
            // bounded wait before it is killed.
            for p in lock(&self.procs).live.values_mut() {
                p.kill_at.get_or_insert(Instant::now() + STOP_KILL_AFTER);
            }
            // The server exits last: its containers have run their exit hooks and been told to
            // stop; wait until their processes are gone (the supervisor kills one that is late).
            let deadline = Instant::now() + STOP_KILL_AFTER + Duration::from_secs(2);
            while !lock(&self.procs).live.is_empty() && Instant::now() < deadline {
                std::thread::sleep(SUPERVISE_EVERY);
            }
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        release_spare(&self.procs);
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> Result<()> {
        Ok(())
    }
}

impl Drop for BindingServer {
    fn drop(&mut self) {
        // Dropped without shutdown: containers see their stream close and exit by themselves.
        if let Some((rt, plane)) = self.running.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            drop(plane);
            rt.shutdown_background();
        }
    }
}
