//! `berth worker --broker URL`: a control plane with no callers of its own, whose pools take
//! their inputs from NATS JetStream (`berth_server::broker`), containers as child Node
//! processes as under `berth serve`.
use std::sync::Mutex;
use std::time::Duration;

use berth_server::supervisor::{warm_spare_from_env, Placements};
use berth_server::{
    broker, ControlPlane, Killer, Registry, ServeOptions, Supervisor, SupervisorHandle, SupervisorOptions,
};
use napi::bindgen_prelude::AsyncTask;
use napi::{Env, Error, Result, Task};
use napi_derive::napi;

use crate::serve::{function_defs, BindingFunctionDef, Shutdown};

#[napi(object)]
pub struct BindingWorkerOptions {
    /// `--broker`: the NATS server's URL, e.g. `nats://127.0.0.1:4222`.
    pub broker: String,
    /// `--function NAME …`: the functions and classes this worker runs; all when empty.
    pub functions: Vec<String>,
    /// The command that starts one container (`node bin/berth.mjs __container`).
    pub container_command: Vec<String>,
    /// The user's module, which every container loads.
    pub app_file: String,
    /// `--log-format`: `text` (the default) or `json` (`berth_server::supervisor::Output`).
    pub log_format: Option<String>,
}

/// How long a stopping worker waits for the inputs it pulled to finish before it stops
/// anyway: what is left goes to another worker after its ack deadline.
const DRAIN: Duration = Duration::from_secs(60);

type Running = (tokio::runtime::Runtime, ControlPlane, broker::Worker);

/// A running worker with its container processes.
#[napi]
pub struct BindingWorker {
    running: Mutex<Option<Running>>,
    killer: Killer,
    supervisor: SupervisorHandle,
    pools: Vec<String>,
}

#[napi]
impl BindingWorker {
    /// Connects, makes or verifies the pools' streams, starts pulling; throws with a message
    /// naming the fix when it cannot (an unreachable broker names its URL).
    #[napi(factory)]
    pub fn start(functions: Vec<BindingFunctionDef>, opts: BindingWorkerOptions) -> Result<Self> {
        let output = crate::log::output(opts.log_format.as_deref())?;
        crate::log::install();
        let mut placements = Placements::default();
        let defs = function_defs(functions, &mut placements)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("berth-worker")
            .build()
            .map_err(|e| Error::from_reason(format!("berth: cannot start the worker runtime: {e}")))?;
        let max_message_bytes = ServeOptions::default().max_message_bytes;
        let spawner = Supervisor::start(SupervisorOptions {
            placements,
            warm_spare: warm_spare_from_env(),
            max_message_bytes,
            output,
            ..SupervisorOptions::new(opts.container_command, opts.app_file)
        });
        let supervisor = spawner.handle();
        // Its containers attach here; nobody else calls it.
        let serve = ServeOptions { addr: ([127, 0, 0, 1], 0).into(), max_message_bytes, ..ServeOptions::default() };
        let started = rt.block_on(broker::start_worker(
            Registry { functions: defs },
            spawner,
            serve,
            &opts.broker,
            &opts.functions,
        ));
        let (plane, worker) = match started {
            Ok(s) => s,
            Err(e) => {
                supervisor.kill_all();
                supervisor.close();
                return Err(Error::from_reason(format!("berth worker: {e}")));
            }
        };
        let killer = plane.killer();
        let pools = worker.pools.clone();
        Ok(Self { running: Mutex::new(Some((rt, plane, worker))), killer, supervisor, pools })
    }

    /// The JetStream streams it pulls from.
    #[napi(getter)]
    pub fn pools(&self) -> Vec<String> {
        self.pools.clone()
    }

    /// The forced stop: kills every container now; inputs it held go to other workers after
    /// their ack deadline.
    #[napi]
    pub fn kill(&self) {
        self.killer.kill();
        self.supervisor.kill_all();
    }

    /// Stops pulling, lets the inputs it pulled finish and settles them, runs containers' exit
    /// hooks, stops.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn shutdown(&self) -> AsyncTask<Shutdown> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).take();
        let stop = running.map(|(rt, plane, mut worker)| {
            (rt, async move {
                worker.drain(DRAIN).await;
                plane.shutdown().await;
            })
        });
        AsyncTask::new(Shutdown::new(stop, self.supervisor.clone()))
    }
}

impl Drop for BindingWorker {
    fn drop(&mut self) {
        if let Some((rt, plane, worker)) = self.running.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            drop(worker);
            drop(plane);
            rt.shutdown_background();
        }
    }
}

/// What a volume sync did (`berth_nats::volumes::SyncReport`).
#[napi(object)]
pub struct BindingSyncReport {
    /// Files sent (commit) or fetched (reload).
    pub copied: u32,
    /// Objects (commit) or files (reload) removed.
    pub removed: u32,
}

/// Syncs volume `name`'s directory on this machine with its object store on the NATS server at
/// `url` (crates/berth-nats/src/volumes.rs): `commit` sends what changed here since the last
/// sync (recorded in `manifest`), else fetches what changed there. Off Node's thread.
#[napi(ts_return_type = "Promise<BindingSyncReport>")]
pub fn volume_sync(
    url: String,
    name: String,
    dir: String,
    manifest: String,
    commit: bool,
) -> AsyncTask<OnBroker<BindingSyncReport>> {
    OnBroker::task(url, format!("volume '{name}'"), move |broker| {
        Box::pin(async move {
            let (dir, manifest) = (std::path::Path::new(&dir), std::path::Path::new(&manifest));
            let report = if commit {
                broker.commit_volume(&name, dir, manifest).await?
            } else {
                broker.reload_volume(&name, dir, manifest).await?
            };
            Ok(BindingSyncReport { copied: report.copied, removed: report.removed })
        })
    })
}

/// The volumes with an object store on the NATS server at `url`, sorted (`berth volume list
/// --broker`).
#[napi(ts_return_type = "Promise<string[]>")]
pub fn volume_names(url: String) -> AsyncTask<OnBroker<Vec<String>>> {
    OnBroker::task(url, "volumes".to_owned(), |broker| Box::pin(async move { broker.volume_names().await }))
}

/// Removes volume `name`'s object store on the NATS server at `url`; false when there was none
/// (`Volume.delete` in broker mode).
#[napi(ts_return_type = "Promise<boolean>")]
pub fn volume_drop(url: String, name: String) -> AsyncTask<OnBroker<bool>> {
    OnBroker::task(url, format!("volume '{name}'"), move |broker| {
        Box::pin(async move { broker.drop_volume(&name).await })
    })
}

type BrokerWork<T> = Box<
    dyn FnOnce(
            berth_nats::Broker,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = std::result::Result<T, berth_nats::Error>> + Send>>
        + Send,
>;

/// Work with a NATS server off Node's thread: connects, does it on a runtime of its own, and
/// gives its answer (an error names `what`).
pub struct OnBroker<T> {
    url: String,
    what: String,
    work: Option<BrokerWork<T>>,
}

impl<T: napi::bindgen_prelude::ToNapiValue + napi::bindgen_prelude::TypeName + Send + 'static> OnBroker<T> {
    fn task(
        url: String,
        what: String,
        work: impl FnOnce(
                berth_nats::Broker,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = std::result::Result<T, berth_nats::Error>> + Send>,
            > + Send
            + 'static,
    ) -> AsyncTask<Self> {
        AsyncTask::new(Self { url, what, work: Some(Box::new(work)) })
    }
}

impl<T: napi::bindgen_prelude::ToNapiValue + napi::bindgen_prelude::TypeName + Send + 'static> Task for OnBroker<T> {
    type Output = T;
    type JsValue = T;

    fn compute(&mut self) -> Result<T> {
        let work = self.work.take().ok_or_else(|| Error::from_reason("berth: broker work asked twice"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::from_reason(format!("berth: cannot start a runtime for the {}: {e}", self.what)))?;
        rt.block_on(async { work(berth_nats::Broker::connect(&self.url).await?).await })
            .map_err(|e| Error::from_reason(format!("berth: {}: {}", self.what, e.message)))
    }

    fn resolve(&mut self, _env: Env, out: T) -> Result<T> {
        Ok(out)
    }
}
