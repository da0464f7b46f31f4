//! What `berth app list|stop`, `berth container list` and `berth logs` ask a running server
//! (README "CLI"): JSON routes under `/_berth/`, behind the server's token as every call is.
//! They answer on both ports: over HTTP/2 on the gRPC port, where `BERTH_SERVER` (or
//! `--server`) points callers already, so the CLI reaches them with the address and token
//! callers use (through tonic's router, as a service named `_berth`: [`AdminService`]); and
//! over HTTP/1.1 on the HTTP port, for curl.
//!
//! | request                               | answer                                                     |
//! |---------------------------------------|------------------------------------------------------------|
//! | `GET /_berth/apps`                    | `{"apps": [{app, state, tags, functions: [{function, methods, containers}]}]}` |
//! | `POST /_berth/apps/{app}/stop`        | once drained: `{"app", "stopped": true}`; 404 naming the apps |
//! | `GET /_berth/containers`              | `{"containers": [{container, pid, app, function, state, inFlight, uptimeSeconds}]}` |
//! | `GET /_berth/logs?app=A&lines=N&follow=1` | NDJSON: the app's last N lines (100), then, with `follow`, each new one |
//! | `POST /_berth/deploy?file=F&cwd=D`    | once F's apps are served: `{"apps": [{app, functions, replaced}]}`; 400 with why not |
use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use berth_core::metrics::ContainerInfo;
use berth_core::Command;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Method, StatusCode, Uri};
use serde_json::{json, Value as Json};
use tokio_stream::StreamExt;

use super::{fail, json_answer, not_allowed, percent_decode, streaming, Answer};
use crate::auth::token_rule;
use crate::plane::Shared;
use crate::supervisor::log_book;

pub(crate) const PREFIX: &str = "/_berth/";

/// How many recent lines `berth logs` prints unless told (`lines=`).
const DEFAULT_LINES: usize = 100;

/// Every container the scheduler has, with the app and function it serves and whether that
/// definition is still served (not stopped or replaced).
async fn containers(shared: &Shared) -> Result<Vec<(ContainerInfo, String, String, bool)>, Answer> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let stopped = || fail(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "the server is stopping");
    if !shared.commands.send(Command::Containers(tx)) {
        return Err(stopped());
    }
    let list = rx.await.map_err(|_| stopped())?;
    let catalog = shared.catalog();
    let st = shared.lock();
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let def = st.pools.get(&c.pool)?.def;
            let d = catalog.defs.get(def)?;
            let (app, function) = (d.app.clone(), d.name.clone());
            Some((c, app, function, catalog.is_current(def)))
        })
        .collect())
}

/// Answers a request under [`PREFIX`] (the caller checked the token).
pub(crate) async fn serve(shared: &Shared, method: &Method, uri: &Uri) -> Answer {
    let path = uri.path().strip_prefix(PREFIX).unwrap_or("");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["apps"] if *method == Method::GET => apps(shared).await,
        ["apps", app, "stop"] if *method == Method::POST => match percent_decode(app) {
            Some(app) => stop(shared, &app).await,
            None => fail(StatusCode::BAD_REQUEST, "InvalidArgument", "the app name is not valid percent-encoding"),
        },
        ["containers"] if *method == Method::GET => container_list(shared).await,
        ["logs"] if *method == Method::GET => logs(shared, uri.query().unwrap_or("")),
        ["deploy"] if *method == Method::POST => deploy(shared, uri.query().unwrap_or("")).await,
        ["apps"] | ["containers"] | ["logs"] => not_allowed("GET"),
        ["apps", _, "stop"] | ["deploy"] => not_allowed("POST"),
        _ => fail(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "no route {}: the admin routes are GET {PREFIX}apps, POST {PREFIX}apps/<app>/stop, GET {PREFIX}containers, \
                 GET {PREFIX}logs?app=<app>[&lines=N][&follow=1], POST {PREFIX}deploy?file=<path>&cwd=<dir>",
                crate::functions::shown(uri.path())
            ),
        ),
    }
}

async fn apps(shared: &Shared) -> Answer {
    let list = match containers(shared).await {
        Ok(l) => l,
        Err(res) => return res,
    };
    let catalog = shared.catalog();
    let mut count: HashMap<(&str, &str), usize> = HashMap::new();
    let mut stopping: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (_, app, function, current) in &list {
        *count.entry((app, function)).or_default() += 1;
        if !*current && catalog.stopped.iter().any(|a| a == app) && !catalog.functions.iter().any(|f| &f.app == app) {
            let fs = stopping.entry(app).or_default();
            if !fs.contains(&function.as_str()) {
                fs.push(function);
            }
        }
    }
    let mut apps: Vec<(String, Vec<Json>)> = Vec::new();
    let mut tags: HashMap<&str, &[(String, String)]> = HashMap::new();
    for f in &catalog.functions {
        tags.entry(&f.app).or_insert(&f.tags);
        let entry = json!({
            "function": f.name,
            "methods": if f.is_class { json!(f.methods) } else { json!([]) },
            "containers": count.get(&(f.app.as_str(), f.name.as_str())).copied().unwrap_or(0),
        });
        match apps.iter_mut().find(|(a, _)| *a == f.app) {
            Some((_, fs)) => fs.push(entry),
            None => apps.push((f.app.clone(), vec![entry])),
        }
    }
    let mut out: Vec<Json> = apps
        .into_iter()
        .map(|(app, functions)| {
            let tags: serde_json::Map<String, Json> = tags
                .get(app.as_str())
                .into_iter()
                .flat_map(|t| t.iter())
                .map(|(k, v)| (k.clone(), Json::String(v.clone())))
                .collect();
            json!({ "app": app, "state": "serving", "tags": tags, "functions": functions })
        })
        .collect();
    for (app, functions) in stopping {
        let functions: Vec<Json> = functions
            .into_iter()
            .map(|f| json!({ "function": f, "methods": [], "containers": count.get(&(app, f)).copied().unwrap_or(0) }))
            .collect();
        out.push(json!({ "app": app, "state": "stopping", "functions": functions }));
    }
    json_answer(StatusCode::OK, &json!({ "apps": out }))
}

async fn stop(shared: &Shared, app: &str) -> Answer {
    if let Err(e) = shared.stop_app(app) {
        return fail(StatusCode::NOT_FOUND, "NotFound", e.to_string());
    }
    tracing::info!("berth: stopping app '{app}' (berth app stop): its accepted inputs finish, then its containers run their exit hooks");
    // Gone once no container of it is left (each runs its exit hooks within its exitGracePeriod)
    // and their processes have exited.
    let mut ids = HashSet::new();
    loop {
        let list = match containers(shared).await {
            Ok(list) => list,
            Err(res) => return res,
        };
        let before = ids.len();
        ids.extend(list.iter().filter(|(_, a, _, _)| a == app).map(|(c, ..)| c.container));
        let live = list.iter().any(|(_, a, _, _)| a == app)
            || shared.spawner.processes().iter().any(|(c, _)| ids.contains(c))
            || ids.len() > before;
        if !live {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tracing::info!("berth: app '{app}' stopped");
    json_answer(StatusCode::OK, &json!({ "app": app, "stopped": true }))
}

/// A query's `key=value` pairs, each value decoded (`+` a space; `None` when its percent-encoding
/// is not valid).
fn query_pairs(query: &str) -> impl Iterator<Item = (&str, Option<String>)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k, percent_decode(&v.replace('+', " ")))
    })
}

/// How long a deploy may take to load its file and start serving it before the caller is
/// answered that it did not (the load goes on; a later `berth app list` shows whether it landed).
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(120);

/// `berth deploy app.ts` to this server: the process serving it loads `file` (a path on this
/// machine) and serves its apps, adding them or replacing those of the same names (whose
/// containers drain); answered once it has, or with why not.
async fn deploy(shared: &Shared, query: &str) -> Answer {
    let (mut file, mut cwd) = (None, None);
    for (k, v) in query_pairs(query) {
        match k {
            "file" => file = v,
            "cwd" => cwd = v,
            _ => {}
        }
    }
    let Some(file) = file.filter(|f| f.starts_with('/')) else {
        return fail(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            "name the app file by its absolute path: deploy?file=/path/app.ts",
        );
    };
    let cwd = cwd.filter(|d| d.starts_with('/')).unwrap_or_default();
    let Some(asks) = shared.deploys.get() else {
        return fail(
            StatusCode::NOT_IMPLEMENTED,
            "Unimplemented",
            "this server takes no deploys: `berth serve` does (not `berth run`, nor a `--broker` front, whose apps are its workers')",
        );
    };
    // Whether each app deployed replaces one: what was served before the file loaded.
    let before: HashSet<String> = shared.catalog().functions.iter().map(|f| f.app.clone()).collect();
    let (answer, answered) = tokio::sync::oneshot::channel();
    let unavailable =
        || fail(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "the server is stopping; nothing was deployed");
    if asks.send(crate::DeployAsk { file, cwd, answer }).is_err() {
        return unavailable();
    }
    match tokio::time::timeout(DEPLOY_TIMEOUT, answered).await {
        Ok(Ok(Ok(served))) => match serde_json::from_str::<Json>(&served) {
            Ok(mut served) => {
                for app in served.get_mut("apps").and_then(Json::as_array_mut).into_iter().flatten() {
                    let replaced = app.get("app").and_then(Json::as_str).is_some_and(|a| before.contains(a));
                    if let Some(app) = app.as_object_mut() {
                        app.insert("replaced".into(), Json::Bool(replaced));
                    }
                }
                json_answer(StatusCode::OK, &served)
            }
            Err(e) => fail(StatusCode::INTERNAL_SERVER_ERROR, "Error", format!("the deploy's answer is not JSON: {e}")),
        },
        Ok(Ok(Err(why))) => fail(StatusCode::BAD_REQUEST, "DeployError", why),
        Ok(Err(_)) => unavailable(),
        Err(_) => fail(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            format!(
                "the app file did not load within {} s; `berth app list` shows whether it was deployed since",
                DEPLOY_TIMEOUT.as_secs()
            ),
        ),
    }
}

async fn container_list(shared: &Shared) -> Answer {
    let list = match containers(shared).await {
        Ok(l) => l,
        Err(res) => return res,
    };
    let pids: HashMap<u32, u32> = shared.spawner.processes().into_iter().collect();
    let uptimes: HashMap<u32, Duration> = shared.spawner.uptimes().into_iter().collect();
    let out: Vec<Json> = list
        .into_iter()
        .map(|(c, app, function, _)| {
            json!({
                "container": c.container,
                "pid": pids.get(&c.container),
                "app": app,
                "function": function,
                "state": c.state,
                "inFlight": c.in_flight,
                "uptimeSeconds": uptimes.get(&c.container).map(Duration::as_secs_f64),
            })
        })
        .collect();
    json_answer(StatusCode::OK, &json!({ "containers": out }))
}

fn logs(shared: &Shared, query: &str) -> Answer {
    let mut app = None;
    let mut lines = DEFAULT_LINES;
    let mut follow = false;
    for (k, v) in query_pairs(query) {
        let v = v.unwrap_or_default();
        match k {
            "app" => app = Some(v),
            "lines" => match v.parse() {
                Ok(n) => lines = n,
                Err(_) => {
                    return fail(
                        StatusCode::BAD_REQUEST,
                        "InvalidArgument",
                        format!("lines={v}: a whole number of lines, e.g. lines=200"),
                    )
                }
            },
            "follow" => follow = !matches!(v.as_str(), "0" | "false"),
            _ => {}
        }
    }
    let Some(app) = app else {
        return fail(StatusCode::BAD_REQUEST, "InvalidArgument", "name the app: logs?app=<app>");
    };
    let book = log_book();
    // Subscribed before the recent lines are read: a line printed in between is in both, and
    // skipped the second time.
    let feed = follow.then(|| book.follow());
    let recent = book.recent(Some(&app), lines);
    let catalog = shared.catalog();
    let known = catalog.functions.iter().any(|f| f.app == app) || catalog.stopped.contains(&app);
    if recent.is_empty() && !known {
        return fail(StatusCode::NOT_FOUND, "NotFound", crate::functions::unknown_app(&catalog, &app));
    }
    let seen: HashSet<usize> = recent.iter().map(|l| Arc::as_ptr(l) as usize).collect();
    let first = tokio_stream::iter(recent.into_iter().map(|l| Ok(Bytes::from(format!("{}\n", l.json())))));
    let mut res = match feed {
        None => streaming(StatusCode::OK, "application/x-ndjson", Box::pin(first)),
        Some(feed) => {
            let closing = shared.closing.subscribe();
            let rest = futures_util::stream::unfold(
                (feed, app, seen, closing),
                |(mut feed, app, seen, mut closing)| async move {
                    use tokio::sync::broadcast::error::RecvError;
                    loop {
                        let next = tokio::select! {
                            next = feed.recv() => next,
                            // The server stops: the feed ends, and so does the answer.
                            _ = closing.wait_for(|c| *c) => return None,
                        };
                        match next {
                            Ok(l) if *l.label.app == *app && !seen.contains(&(Arc::as_ptr(&l) as usize)) => {
                                return Some((Ok(Bytes::from(format!("{}\n", l.json()))), (feed, app, seen, closing)));
                            }
                            // A follower that fell more than the feed holds behind misses lines.
                            Ok(_) | Err(RecvError::Lagged(_)) => {}
                            Err(RecvError::Closed) => return None,
                        }
                    }
                },
            );
            streaming(StatusCode::OK, "application/x-ndjson", Box::pin(first.chain(rest)))
        }
    };
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// The admin routes as a service of the gRPC port's router (tonic routes `/_berth/*` to it).
#[derive(Clone)]
pub(crate) struct AdminService {
    pub shared: Arc<Shared>,
    pub token: Option<String>,
}

impl tonic::server::NamedService for AdminService {
    const NAME: &'static str = "_berth";
}

impl tower::Service<http::Request<tonic::body::Body>> for AdminService {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            let res = match token_rule(this.token.as_deref(), authorization) {
                Err(message) => fail(StatusCode::UNAUTHORIZED, "Unauthenticated", message),
                Ok(()) => serve(&this.shared, req.method(), req.uri()).await,
            };
            Ok(res.map(tonic::body::Body::new))
        })
    }
}
