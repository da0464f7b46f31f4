//! `berth serve`: the control plane in this process, containers as child Node processes started
//! and watched by `berth_server::supervisor`; this module converts the options and binds.
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use berth_server::supervisor::{self, warm_spare_from_env, Placements};
use berth_server::{
    Arity, ControlPlane, FunctionDef, Killer, ParamKind, ParamSpec, Registry, ServeOptions, Supervisor,
    SupervisorHandle, SupervisorOptions, WebSpec,
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
    /// `FunctionDef::generators`.
    pub generators: Option<Vec<bool>>,
    /// `FunctionDef::web`: its web endpoints.
    pub web: Option<Vec<BindingWeb>>,
    /// `FunctionDef::schedule`.
    pub schedule: Option<BindingSchedule>,
    /// Its app's tags (`new App(name, { tags })`).
    pub tags: Option<HashMap<String, String>>,
}

/// `berth_server::schedule::Schedule`, from src/define/schedule.ts: a period, or a cron
/// pattern and its time zone.
#[napi(object)]
pub struct BindingSchedule {
    pub period_ms: Option<f64>,
    pub cron: Option<String>,
    pub timezone: Option<String>,
}

fn schedule_of(s: &BindingSchedule) -> std::result::Result<berth_server::schedule::Schedule, String> {
    use berth_server::schedule::Schedule;
    match (&s.cron, s.period_ms) {
        (Some(pattern), _) => Schedule::cron(pattern, s.timezone.as_deref()),
        (None, Some(ms)) if ms.is_finite() && ms >= 1.0 => Schedule::period(Duration::from_secs_f64(ms / 1000.0)),
        (None, ms) => Err(format!("Period: {} ms is no period; give at least 1 ms", ms.unwrap_or(0.0))),
    }
}

/// Why a schedule is refused (a cron pattern or time zone that does not parse), or nothing:
/// src/define/schedule.ts checks one when it is made.
#[napi]
pub fn check_schedule(schedule: BindingSchedule) -> Option<String> {
    schedule_of(&schedule).err()
}

/// `berth_server::WebSpec`, from src/define/served.ts.
#[napi(object)]
pub struct BindingWeb {
    /// Which of `methods`.
    pub index: u32,
    pub method: String,
    pub label: Option<String>,
    pub requires_auth: bool,
    pub takes_request: bool,
    /// `WebSpec::app`: the decorator of a web app member.
    pub app: Option<String>,
}

#[napi(object)]
pub struct BindingMember {
    pub name: String,
    pub what: String,
}

#[napi(object)]
pub struct BindingParam {
    pub name: String,
    /// `ParamSpec.type` in src/define/decorators.ts: 'string', 'number' (an integer), 'boolean',
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
    /// `--broker nats://…`: a front whose calls go through NATS JetStream to `berth worker`s.
    pub broker: Option<String>,
    /// Where containers' output goes (`berth_server::supervisor::Output`): `text` (line-prefixed,
    /// `berth serve`'s default), `json` (`--log-format json`), or `inherit` (unset: `berth run`).
    pub log_format: Option<String>,
    /// Call scheduled functions at their ticks: `berth serve`, not `berth run`.
    pub schedules: Option<bool>,
}

/// Starts the first spare container process now, while this process is still loading the user's
/// module, so that the first container is ready about when the server is
/// (`berth_server::supervisor::prestart_container`).
/// `log_format` is the server's to come (`BindingServeOptions::log_format`).
#[napi]
pub fn prestart_container(command: Vec<String>, app_file: String, log_format: Option<String>) -> Result<()> {
    let output = crate::log::output(log_format.as_deref())?;
    if warm_spare_from_env() {
        supervisor::prestart_container(command, app_file, output);
    }
    Ok(())
}

/// Makes this process get SIGTERM when its parent goes away (`berth_server::supervisor::watch_parent`);
/// false where this is not available.
#[napi]
pub fn watch_parent(parent: u32) -> bool {
    supervisor::watch_parent(parent)
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
    supervisor: SupervisorHandle,
    /// How callers in this process reach the control plane, without gRPC.
    local: berth_server::Client,
    runtime: tokio::runtime::Handle,
    /// Deploys asked of the server and not yet answered (`watch_deploys`).
    deploys: std::sync::Arc<Mutex<DeployDesk>>,
}

/// A deploy asked of the server (`berth deploy app.ts`), for `berth serve`'s JavaScript to carry
/// out (src/cli/deploys.ts) and answer with [`BindingServer::answer_deploy`].
#[napi(object)]
pub struct BindingDeployAsk {
    pub id: u32,
    /// The app file, an absolute path on this machine.
    pub file: String,
    /// The directory its containers start in (the deploying command's), or empty.
    pub cwd: String,
}

/// Deploys come in, wait for the JavaScript to take them, and wait for its answer.
#[derive(Default)]
struct DeployDesk {
    next: u32,
    waiting: Vec<BindingDeployAsk>,
    answers: HashMap<u32, tokio::sync::oneshot::Sender<std::result::Result<String, String>>>,
}

#[napi]
impl BindingServer {
    /// Binds and starts serving; throws with a message naming the fix when it cannot.
    #[napi(factory)]
    pub fn start(functions: Vec<BindingFunctionDef>, opts: BindingServeOptions) -> Result<Self> {
        let output = crate::log::output(opts.log_format.as_deref())?;
        crate::log::install();
        let mut placements = Placements::default();
        let defs = function_defs(functions, &mut placements)?;
        let addr: SocketAddr = format!("{}:{}", opts.host, opts.grpc_port).parse().map_err(|e| {
            Error::from_reason(format!("--host {} --grpc-port {}: not an address ({e})", opts.host, opts.grpc_port))
        })?;
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let threads = berth_server::serve_threads(std::env::var("BERTH_SERVE_THREADS").ok().as_deref(), cores)
            .map_err(Error::from_reason)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .thread_name("berth-serve")
            .build()
            .map_err(|e| Error::from_reason(format!("berth: cannot start the server runtime: {e}")))?;
        let max_message_bytes =
            opts.max_message_bytes.map_or(ServeOptions::default().max_message_bytes, |m| m as usize);
        let spawner = Supervisor::start(SupervisorOptions {
            placements,
            // A front's calls run on workers: no spare container waits here for them.
            warm_spare: warm_spare_from_env() && opts.broker.is_none(),
            max_message_bytes,
            output,
            ..SupervisorOptions::new(opts.container_command, opts.app_file)
        });
        let supervisor = spawner.handle();
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
            broker: opts.broker,
            schedules: opts.schedules.unwrap_or(false),
            ..ServeOptions::default()
        };
        let plane = rt
            .block_on(ControlPlane::start(Registry { functions: defs }, spawner, serve))
            .map_err(|e| Error::from_reason(format!("berth serve: {e}")))?;
        let address = plane.local_addr().to_string();
        let http_address = plane.http_addr().map(|a| a.to_string());
        let killer = plane.killer();
        let (local, runtime) = (plane.client(), rt.handle().clone());
        Ok(Self {
            running: Mutex::new(Some((rt, plane))),
            killer,
            address,
            http_address,
            supervisor,
            local,
            runtime,
            deploys: std::sync::Arc::default(),
        })
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

    /// Replaces apps `apps` with `functions` while serving (`berth serve` reloading a saved
    /// edit): new calls go to new containers running the new definitions, and the old ones
    /// finish what they accepted, run their exit hooks and stop (`ControlPlane::replace_apps`).
    /// Returns how many pools of the previous version drain. Throws, changing nothing, when the
    /// definitions are refused, or once the server is stopping.
    #[napi]
    pub fn replace_apps(&self, apps: Vec<String>, functions: Vec<BindingFunctionDef>) -> Result<u32> {
        let mut placements = Placements::default();
        let defs = function_defs(functions, &mut placements)?;
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, plane)) = running.as_ref() else {
            return Err(Error::from_reason("berth: the server is stopping; nothing was replaced"));
        };
        self.supervisor.add_placements(placements);
        let replaced = plane
            .replace_apps(&apps, Registry { functions: defs })
            .map_err(|e| Error::from_reason(format!("berth: {e}")))?;
        Ok(u32::try_from(replaced.retired_pools).unwrap_or(u32::MAX))
    }

    /// Takes the deploys asked of this server (`POST /_berth/deploy`): each rings `doorbell`,
    /// and waits in [`take_deploys`](Self::take_deploys) for an answer
    /// ([`answer_deploy`](Self::answer_deploy)). Without this the server takes no deploys.
    #[napi]
    pub fn watch_deploys(&self, doorbell: crate::Doorbell) -> Result<()> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mut asks) = running.as_ref().and_then(|(_, plane)| plane.deploys()) else {
            return Err(Error::from_reason("berth: deploys are watched already, or the server is stopping"));
        };
        let desk = std::sync::Arc::clone(&self.deploys);
        self.runtime.spawn(async move {
            while let Some(ask) = asks.recv().await {
                {
                    let mut d = desk.lock().unwrap_or_else(|e| e.into_inner());
                    d.next = d.next.wrapping_add(1);
                    let id = d.next;
                    d.waiting.push(BindingDeployAsk { id, file: ask.file, cwd: ask.cwd });
                    d.answers.insert(id, ask.answer);
                }
                let _ = doorbell.call((), napi::threadsafe_function::ThreadsafeFunctionCallMode::NonBlocking);
            }
        });
        Ok(())
    }

    /// The deploys asked since the last call (see [`watch_deploys`](Self::watch_deploys)).
    #[napi]
    pub fn take_deploys(&self) -> Vec<BindingDeployAsk> {
        std::mem::take(&mut self.deploys.lock().unwrap_or_else(|e| e.into_inner()).waiting)
    }

    /// Answers deploy `id`: what the server serves now (JSON), or why the file was not deployed.
    #[napi]
    pub fn answer_deploy(&self, id: u32, served: Option<String>, error: Option<String>) {
        let answer = self.deploys.lock().unwrap_or_else(|e| e.into_inner()).answers.remove(&id);
        if let Some(answer) = answer {
            let _ = answer.send(match (served, error) {
                (_, Some(why)) => Err(why),
                (Some(served), None) => Ok(served),
                (None, None) => Err("the server gave no answer".to_owned()),
            });
        }
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
        self.supervisor.kill_all();
    }

    /// Stops taking calls, lets accepted inputs finish, runs containers' exit hooks, stops.
    /// Runs on the libuv threadpool; the promise keeps Node alive until it is done.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn shutdown(&self) -> AsyncTask<Shutdown> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        AsyncTask::new(Shutdown::new(running.map(|(rt, plane)| (rt, plane.shutdown())), self.supervisor.clone()))
    }
}

/// The control plane's definitions of `functions`, each placed (env, GPUs) in `placements`.
pub(crate) fn function_defs(
    functions: Vec<BindingFunctionDef>,
    placements: &mut Placements,
) -> Result<Vec<FunctionDef>> {
    let mut defs = Vec::with_capacity(functions.len());
    for f in functions {
        let mut spec = f.spec.into_spec()?;
        placements
            .add(&f.app, &f.name, f.env.unwrap_or_default(), &f.gpu.unwrap_or_default(), &mut spec)
            .map_err(Error::from_reason)?;
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
        let schedule = match &f.schedule {
            Some(s) => Some(schedule_of(s).map_err(|e| Error::from_reason(format!("berth: {}: {e}", f.name)))?),
            None => None,
        };
        defs.push(FunctionDef {
            app: f.app,
            name: f.name,
            methods: f.methods,
            is_class: f.is_class,
            spec,
            arity,
            params,
            not_callable: f.not_callable.unwrap_or_default().into_iter().map(|m| (m.name, m.what)).collect(),
            generators: f.generators.unwrap_or_default(),
            web: f
                .web
                .unwrap_or_default()
                .into_iter()
                .map(|w| WebSpec {
                    index: w.index,
                    method: w.method,
                    label: w.label,
                    requires_auth: w.requires_auth,
                    takes_request: w.takes_request,
                    app: w.app,
                })
                .collect(),
            schedule,
            tags: {
                let mut tags: Vec<(String, String)> = f.tags.unwrap_or_default().into_iter().collect();
                tags.sort();
                tags
            },
        });
    }
    Ok(defs)
}

/// What stops a control plane, run on its runtime.
type Stop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Stopping a control plane (`berth serve`'s, a worker's) off Node's thread: `stop` on its
/// runtime, then the wait for its container processes to be gone.
pub struct Shutdown {
    running: Option<(tokio::runtime::Runtime, Stop)>,
    supervisor: SupervisorHandle,
}

impl Shutdown {
    pub(crate) fn new(
        running: Option<(tokio::runtime::Runtime, impl std::future::Future<Output = ()> + Send + 'static)>,
        supervisor: SupervisorHandle,
    ) -> Self {
        Self { running: running.map(|(rt, stop)| (rt, Box::pin(stop) as Stop)), supervisor }
    }
}

impl Task for Shutdown {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        if let Some((rt, stop)) = self.running.take() {
            rt.block_on(stop);
            // The server exits last: its containers have run their exit hooks and been told to
            // stop; wait until their processes are gone.
            self.supervisor.wait_stopped();
            rt.shutdown_timeout(Duration::from_secs(2));
        }
        self.supervisor.close();
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
