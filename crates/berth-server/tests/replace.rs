#![allow(clippy::unwrap_used)]
//! Replacing an app while serving (`ControlPlane::replace_apps`: `berth serve` reloading a
//! saved edit): new calls go to new pools with the new definitions, over gRPC, the HTTP RPC
//! route and web endpoints; the old pools finish what they accepted, run their exit hooks and
//! stop; other apps are untouched.
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::{HookSet, MethodSpec, PoolSpec};
use berth_proto::v1::functions_client::FunctionsClient;
use berth_proto::v1::{self as pb, container_message, control_message};
use berth_server::{
    Arity, ControlPlane, ExitReporter, FunctionDef, Registry, Replaced, ServeOptions, Spawner, WebSpec,
};
use tokio_stream::StreamExt;

use common::{args, bounded, cbor, exchange, int};

/// What the fake containers did: which version each container runs (from its pool's name,
/// `f@v2`), which ran their exit hook, which were stopped.
#[derive(Default)]
struct Seen {
    version: HashMap<u32, i64>,
    exits: Vec<u32>,
    stopped: Vec<u32>,
    started_slow: bool,
}

/// Containers answer `x + 100 * version`; x = 7 takes 800 ms.
#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Seen>>,
    tasks: Arc<common::Tasks>,
}

impl Spawner for Fake {
    fn spawn(&self, def: &FunctionDef, _: &[u8], container: u32, token: &str, endpoint: &str, _: ExitReporter) {
        let version: i64 = def.spec.name.rsplit_once("@v").map_or(1, |(_, v)| v.parse().unwrap());
        self.seen.lock().unwrap().version.insert(container, version);
        let (seen, token, endpoint) = (self.seen.clone(), token.to_string(), endpoint.to_string());
        self.tasks.start(container, async move {
            let (tx, mut inbound) = common::attach(endpoint, container, token, 8).await;
            let send = move |m: container_message::Msg| {
                let _ = tx.send(pb::ContainerMessage { msg: Some(m) });
            };
            while let Some(Ok(msg)) = inbound.next().await {
                let executions = match msg.msg {
                    Some(control_message::Msg::RunHook(h)) => {
                        if h.phase == pb::Phase::Exit as i32 {
                            seen.lock().unwrap().exits.push(container);
                        }
                        send(container_message::Msg::HookDone(pb::HookDone { phase: h.phase, ok: true, error: None }));
                        continue;
                    }
                    Some(control_message::Msg::Execute(e)) => vec![e],
                    Some(control_message::Msg::ExecuteBatch(b)) => b.executions,
                    Some(control_message::Msg::Stop(_)) => return,
                    _ => continue,
                };
                for e in executions {
                    let (send, seen) = (send.clone(), seen.clone());
                    tokio::spawn(async move {
                        let mut results = Vec::new();
                        for i in &e.inputs {
                            let v: ciborium::Value = ciborium::from_reader(i.args.as_slice()).unwrap();
                            let x = i64::try_from(v.as_array().unwrap()[0].as_integer().unwrap()).unwrap();
                            if x == 7 {
                                seen.lock().unwrap().started_slow = true;
                                tokio::time::sleep(Duration::from_millis(800)).await;
                            }
                            let value = cbor(&ciborium::Value::Integer((x + 100 * version).into()));
                            results.push(pb::Result { outcome: Some(pb::result::Outcome::Value(value)) });
                        }
                        send(container_message::Msg::Output(pb::Output {
                            exec_id: e.exec_id,
                            results,
                            retryable_failure: false,
                        }));
                    });
                }
            }
        });
    }

    fn stop(&self, container: u32) {
        self.seen.lock().unwrap().stopped.push(container);
        self.tasks.stop(container);
    }
}

/// Function `name` of app `app`, version `version`, with exit hooks, one warm container, and a
/// web endpoint at `/{app}/{label}`.
fn function(app: &str, name: &str, version: u32, label: &str) -> FunctionDef {
    let mut spec = PoolSpec::new(format!("{name}@v{version}"), vec![MethodSpec::default()]);
    spec.max_inputs = 4;
    spec.target_inputs = 4;
    spec.min_containers = 1;
    spec.max_containers = 1;
    spec.hooks = HookSet { exit: true, ..HookSet::default() };
    let mut def = common::function(app, name, spec, vec![Arity { min: 1, max: Some(1) }]);
    def.web = vec![WebSpec {
        index: 0,
        method: "POST".into(),
        label: Some(label.into()),
        requires_auth: false,
        takes_request: false,
        app: None,
    }];
    def
}

async fn invoke(c: &mut FunctionsClient<tonic::transport::Channel>, app: &str, f: &str, x: i64) -> i64 {
    let function = Some(pb::FunctionRef { app: app.into(), function: f.into(), ..Default::default() });
    let r = c.invoke(pb::InvokeRequest { function, args: args(x) }).await.unwrap().into_inner();
    int(r.result.as_ref().unwrap())
}

/// POSTs `body` to `path`; the status and the body.
async fn post(addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    let head = format!("POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}", body.len());
    let r = exchange(addr, &head, body.as_bytes()).await;
    (r.status, String::from_utf8(r.body).unwrap())
}

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what} within 5 s");
}

/// A control plane serving app `a` (function `f`, version `v1`) and app `b` (`g`) on both
/// ports, its HTTP address, and a gRPC client.
async fn two_apps(fake: &Fake) -> (ControlPlane, std::net::SocketAddr, FunctionsClient<tonic::transport::Channel>) {
    let registry = Registry { functions: vec![function("a", "f", 1, "v1"), function("b", "g", 1, "g")] };
    let opts = ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeOptions::default()
    };
    let plane = ControlPlane::start(registry, fake.clone(), opts).await.unwrap();
    let http = plane.http_addr().unwrap();
    let c = FunctionsClient::connect(format!("http://{}", plane.local_addr())).await.unwrap();
    (plane, http, c)
}

#[tokio::test]
async fn a_replaced_app_serves_new_calls_with_the_new_code_and_drains_the_old() {
    bounded(Duration::from_secs(30), async {
        let fake = Fake::default();
        let (plane, http, mut c) = two_apps(&fake).await;
        assert_eq!(invoke(&mut c, "a", "f", 3).await, 103);
        assert_eq!(invoke(&mut c, "b", "g", 3).await, 103);
        assert_eq!(post(http, "/a/v1", "3").await, (200, "103".into()));

        // A slow call of the old version is running when the app is replaced.
        let mut slow_client = c.clone();
        let slow = tokio::spawn(async move { invoke(&mut slow_client, "a", "f", 7).await });
        until("the slow call started", || fake.seen.lock().unwrap().started_slow).await;
        let version_of = |seen: &Seen, v: i64| -> Vec<u32> {
            let mut ids: Vec<u32> = seen.version.iter().filter(|(_, &x)| x == v).map(|(&id, _)| id).collect();
            ids.sort_unstable();
            ids
        };
        let old = version_of(&fake.seen.lock().unwrap(), 1);
        assert_eq!(old.len(), 2, "one warm container of each app");

        let replaced = plane.replace_apps(&["a".into()], Registry { functions: vec![function("a", "f", 2, "v2")] });
        assert_eq!(replaced.unwrap(), Replaced { functions: 1, retired_pools: 1 });

        // Calls after the swap get the new code, over gRPC and HTTP; the web endpoint moved.
        assert_eq!(invoke(&mut c, "a", "f", 3).await, 203);
        assert_eq!(post(http, "/a/f", "[4]").await, (200, "204".into()));
        assert_eq!(post(http, "/a/v2", "5").await, (200, "205".into()));
        let (status, body) = post(http, "/a/v1", "5").await;
        assert_eq!(status, 404, "{body}");
        assert!(body.contains("POST /a/v2"), "the 404 names the endpoints there now: {body}");
        // The call in flight finishes on the old version.
        assert_eq!(slow.await.unwrap(), 107);
        // Then the old container runs its exit hook and stops; the other app's stays.
        let seen = fake.seen.clone();
        until("the old container ran its exit hook and stopped", || {
            let s = seen.lock().unwrap();
            s.exits.len() == 1 && s.stopped.len() == 1
        })
        .await;
        {
            let s = fake.seen.lock().unwrap();
            assert!(old.contains(&s.exits[0]), "the exit hook ran in an old container");
            assert_eq!(s.stopped, s.exits, "and that container was stopped");
            assert_eq!(version_of(&s, 2).len(), 1, "one container of the new version");
        }
        assert_eq!(invoke(&mut c, "b", "g", 3).await, 103, "app b is untouched");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(fake.seen.lock().unwrap().exits.len(), 1, "no other container drained");

        // A second replacement drains the second version the same way.
        let replaced = plane.replace_apps(&["a".into()], Registry { functions: vec![function("a", "f", 3, "v3")] });
        assert_eq!(replaced.unwrap().retired_pools, 1);
        assert_eq!(invoke(&mut c, "a", "f", 1).await, 301);
        until("the second version drained", || fake.seen.lock().unwrap().exits.len() == 2).await;

        bounded(Duration::from_secs(10), plane.shutdown()).await;
    })
    .await;
}

#[tokio::test]
async fn a_replacement_naming_another_app_or_an_invalid_spec_is_refused_and_changes_nothing() {
    bounded(Duration::from_secs(20), async {
        let fake = Fake::default();
        let registry = Registry { functions: vec![function("a", "f", 1, "v1")] };
        let opts = ServeOptions { addr: "127.0.0.1:0".parse().unwrap(), ..ServeOptions::default() };
        let plane = ControlPlane::start(registry, fake.clone(), opts).await.unwrap();
        let e = plane.replace_apps(&["a".into()], Registry { functions: vec![function("b", "g", 2, "g")] });
        let message = e.unwrap_err().to_string();
        assert!(message.contains("b/g: its app 'b' is not among the apps replaced (a)"), "{message}");
        let mut bad = function("a", "f", 2, "v2");
        bad.spec.max_inputs = 0;
        assert!(plane.replace_apps(&["a".into()], Registry { functions: vec![bad] }).is_err());
        let twice = Registry { functions: vec![function("a", "f", 2, "x"), function("a", "f", 2, "y")] };
        let message = plane.replace_apps(&["a".into()], twice).unwrap_err().to_string();
        assert!(message.contains("a/f is defined twice"), "{message}");
        let mut c = FunctionsClient::connect(format!("http://{}", plane.local_addr())).await.unwrap();
        assert_eq!(invoke(&mut c, "a", "f", 3).await, 103, "still the first version");
        assert!(fake.seen.lock().unwrap().exits.is_empty());
        bounded(Duration::from_secs(10), plane.shutdown()).await;
    })
    .await;
}

/// `berth app stop` (POST /_berth/apps/{app}/stop, http/admin.rs): the app takes no new call,
/// the call in flight finishes, its container runs its exit hook and stops, and only then does
/// the route answer; afterwards callers are told the app was stopped, and other apps serve on.
#[tokio::test]
async fn an_app_stopped_over_the_admin_route_drains_first_then_callers_are_told() {
    bounded(Duration::from_secs(30), async {
        let fake = Fake::default();
        let (plane, http, mut c) = two_apps(&fake).await;
        assert_eq!(invoke(&mut c, "a", "f", 3).await, 103);
        let listed = exchange(http, "GET /_berth/apps HTTP/1.1", b"").await;
        let apps: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
        assert_eq!(apps["apps"][0]["app"], "a");
        assert_eq!(apps["apps"][0]["state"], "serving");
        assert_eq!(apps["apps"][0]["functions"][0]["containers"], 1);

        let mut slow_client = c.clone();
        let slow = tokio::spawn(async move { invoke(&mut slow_client, "a", "f", 7).await });
        until("the slow call started", || fake.seen.lock().unwrap().started_slow).await;
        let stop = tokio::spawn(async move { post(http, "/_berth/apps/a/stop", "").await });
        let (status, body) = stop.await.unwrap();
        assert_eq!((status, body.as_str()), (200, r#"{"app":"a","stopped":true}"#));
        assert!(slow.is_finished(), "the call in flight finished before the stop answered");
        assert_eq!(slow.await.unwrap(), 107);
        {
            let seen = fake.seen.lock().unwrap();
            assert_eq!(seen.exits.len(), 1, "a's container ran its exit hook; b's did not");
            assert!(seen.stopped.contains(&seen.exits[0]), "and stopped");
        }

        let function = Some(pb::FunctionRef { app: "a".into(), function: "f".into(), ..Default::default() });
        let refused = c.invoke(pb::InvokeRequest { function, args: args(1) }).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::NotFound);
        assert!(refused.message().contains("app 'a' was stopped (berth app stop)"), "{}", refused.message());
        assert_eq!(invoke(&mut c, "b", "g", 3).await, 103, "the other app serves on");
        let listed = exchange(http, "GET /_berth/apps HTTP/1.1", b"").await;
        let apps: serde_json::Value = serde_json::from_slice(&listed.body).unwrap();
        assert_eq!(apps["apps"].as_array().unwrap().len(), 1);
        assert_eq!(apps["apps"][0]["app"], "b");
        let (status, body) = post(http, "/_berth/apps/nope/stop", "").await;
        assert_eq!(status, 404);
        assert!(body.contains("no app named 'nope' is served here"), "{body}");
        plane.shutdown().await;
    })
    .await;
}
