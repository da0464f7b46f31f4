//! `berth serve`: the control plane in this process, containers as child Node processes.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_server::{ControlPlane, ExitReporter, FunctionDef, Registry, ServeOptions, Spawner};
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Error, Result, Task};
use napi_derive::napi;

use crate::BindingPoolSpec;

#[napi(object)]
pub struct BindingFunctionDef {
    pub app: String,
    pub name: String,
    pub methods: Vec<String>,
    pub is_class: bool,
    pub spec: BindingPoolSpec,
}

#[napi(object)]
pub struct BindingServeOptions {
    pub host: String,
    pub grpc_port: u32,
    pub token: Option<String>,
    pub max_message_bytes: Option<u32>,
    /// The command that starts one container: argv[0] and its arguments (`node bin/berth.mjs __container`).
    pub container_command: Vec<String>,
    /// The user's module, which every container loads.
    pub app_file: String,
}

/// Starts container processes with the command and passes who they are in the environment,
/// and watches each one: a process that ends without being stopped is reported lost (at any
/// stage, before it attached too), and one that does not end after a stop is killed.
struct ProcessSpawner {
    command: Vec<String>,
    app_file: String,
    /// Containers asked to stop, with when they must be gone.
    stopping: Arc<Mutex<HashMap<u32, Instant>>>,
}

/// How long a stopped container may take to exit by itself before it is killed.
const STOP_KILL_AFTER: Duration = Duration::from_secs(10);

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
        let Some((program, args)) = self.command.split_first() else { return };
        let child = Command::new(program)
            .args(args)
            .env("BERTH_ENDPOINT", endpoint)
            .env("BERTH_CONTAINER_ID", container.to_string())
            .env("BERTH_CONTAINER_TOKEN", token)
            .env("BERTH_APP_FILE", &self.app_file)
            .env("BERTH_APP", &def.app)
            .env("BERTH_FUNCTION", &def.name)
            .env("BERTH_PARAMS", hex(params))
            .env("BERTH_MAX_INPUTS", def.spec.max_inputs.to_string())
            .stdin(Stdio::null())
            .stdout(inherited(std::io::stdout().as_fd()))
            .stderr(inherited(std::io::stderr().as_fd()))
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                exited.exited(format!("could not start ({program}: {e})"));
                return;
            }
        };
        let stopping = self.stopping.clone();
        std::thread::spawn(move || loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    if stopping.lock().unwrap_or_else(|e| e.into_inner()).remove(&container).is_none() {
                        exited.exited(describe_exit(status));
                    }
                    return;
                }
                Ok(None) => {}
                Err(_) => return,
            }
            let overdue = stopping
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&container)
                .is_some_and(|at| Instant::now() > *at);
            if overdue {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        });
    }

    fn stop(&self, container: u32) {
        self.stopping.lock().unwrap_or_else(|e| e.into_inner()).insert(container, Instant::now() + STOP_KILL_AFTER);
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
    rt: Option<tokio::runtime::Runtime>,
    plane: Option<ControlPlane>,
    address: String,
}

#[napi]
impl BindingServer {
    /// Binds and starts serving; throws with a message naming the fix when it cannot.
    #[napi(factory)]
    pub fn start(functions: Vec<BindingFunctionDef>, opts: BindingServeOptions) -> Result<Self> {
        let mut defs = Vec::with_capacity(functions.len());
        for f in functions {
            defs.push(FunctionDef {
                app: f.app,
                name: f.name,
                methods: f.methods,
                is_class: f.is_class,
                spec: f.spec.into_spec()?,
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
        let spawner = ProcessSpawner {
            command: opts.container_command,
            app_file: opts.app_file,
            stopping: Arc::new(Mutex::new(HashMap::new())),
        };
        let serve = ServeOptions {
            addr,
            token: opts.token,
            max_message_bytes: opts.max_message_bytes.map_or(ServeOptions::default().max_message_bytes, |m| m as usize),
        };
        let plane = rt
            .block_on(ControlPlane::start(Registry { functions: defs }, spawner, serve))
            .map_err(|e| Error::from_reason(format!("berth serve: {e}")))?;
        let address = plane.local_addr().to_string();
        Ok(Self { rt: Some(rt), plane: Some(plane), address })
    }

    #[napi(getter)]
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// Stops taking calls, lets accepted inputs finish, runs containers' exit hooks, stops.
    /// Runs on the libuv threadpool; the promise keeps Node alive until it is done.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn shutdown(&mut self) -> AsyncTask<Shutdown> {
        AsyncTask::new(Shutdown { rt: self.rt.take(), plane: self.plane.take() })
    }
}

pub struct Shutdown {
    rt: Option<tokio::runtime::Runtime>,
    plane: Option<ControlPlane>,
}

impl Task for Shutdown {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        if let (Some(rt), Some(plane)) = (self.rt.take(), self.plane.take()) {
            rt.block_on(plane.shutdown());
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        Ok(())
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> Result<()> {
        Ok(())
    }
}

impl Drop for BindingServer {
    fn drop(&mut self) {
        // Dropped without shutdown: containers see their stream close and exit by themselves.
        if let Some(rt) = self.rt.take() {
            drop(self.plane.take());
            rt.shutdown_background();
        }
    }
}
