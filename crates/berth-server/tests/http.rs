#![allow(clippy::unwrap_used)]
//! The HTTP/1.1 JSON ingress end to end over loopback: a hand-written HTTP client on one
//! side, fake containers speaking the Containers protocol on the other.
mod common;

use common::{bounded, cbor, exchange, Reply};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use berth_core::{MethodSpec, PoolSpec};
use berth_proto::v1 as pb;
use berth_server::{
    Arity, ControlPlane, ExitReporter, FunctionDef, ParamKind, ParamSpec, Registry, ServeOptions, Spawner,
};
use ciborium::Value as C;
use serde_json::{json, Value as Json};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Every test runs within this.
const LIMIT: Duration = Duration::from_secs(30);

fn ok(v: C) -> pb::Result {
    pb::Result { outcome: Some(pb::result::Outcome::Value(cbor(&v))) }
}

/// What cbor-x writes for `[new Map([[1, 'a']]), new Set(['x']), Uint8Array.of(104, 105),
/// Float32Array.of(0.5), new Date(1500), 2n ** 64n, undefined]`.
fn js_values() -> C {
    let tag = |t: u64, v: C| C::Tag(t, Box::new(v));
    C::Array(vec![
        tag(259, C::Map(vec![(C::Integer(1.into()), C::Text("a".into()))])),
        tag(258, C::Array(vec![C::Text("x".into())])),
        C::Bytes(b"hi".to_vec()),
        tag(85, C::Bytes(0.5f32.to_le_bytes().to_vec())),
        tag(1, C::Float(1.5)),
        tag(2, C::Bytes(vec![1, 0, 0, 0, 0, 0, 0, 0, 0])),
        C::Null,
    ])
}

/// The app's callables, as fake containers run them.
fn run(def: &str, method: u32, params: &HashMap<String, String>, args: &[u8]) -> pb::Result {
    let args: C = ciborium::from_reader(args).unwrap();
    let args = args.into_array().unwrap();
    match (def, method) {
        ("square", _) => {
            let x = i64::try_from(args[0].as_integer().unwrap()).unwrap();
            if x == 3 {
                return pb::Result {
                    outcome: Some(pb::result::Outcome::Error(pb::Error {
                        name: "TypeError".into(),
                        message: "bad 3".into(),
                        stack: "TypeError: bad 3\n    at square".into(),
                    })),
                };
            }
            ok(C::Integer((x * x).into()))
        }
        ("echo", _) => ok(C::Array(args)),
        ("js", _) => ok(js_values()),
        ("slow", _) => ok(C::Text("done".into())),
        ("Greeter", 0) => {
            let greeting = params.get("greeting").map_or("Hello", String::as_str);
            ok(C::Text(format!("{greeting}, {}!", args[0].as_text().unwrap())))
        }
        ("Greeter", _) => ok(C::Text(args[0].as_text().unwrap().to_uppercase())),
        _ => unreachable!(),
    }
}

#[derive(Default)]
struct FakeSpawner {
    tasks: common::Tasks,
    /// Told when a container starts running `slow`.
    slow_started: Arc<Notify>,
}

impl Spawner for FakeSpawner {
    fn spawn(&self, def: &FunctionDef, params: &[u8], container: u32, token: &str, endpoint: &str, _: ExitReporter) {
        let mut ps = HashMap::new();
        if !params.is_empty() {
            let v: C = ciborium::from_reader(params).unwrap();
            for (k, v) in v.into_map().unwrap() {
                ps.insert(k.into_text().unwrap(), v.into_text().unwrap());
            }
        }
        let name = def.name.clone();
        let slow_started = self.slow_started.clone();
        let serve = common::attach_and_serve(endpoint.to_string(), container, token.to_string(), move |e| {
            let results: Vec<pb::Result> = e.inputs.iter().map(|i| run(&name, e.method, &ps, &i.args)).collect();
            let slow = (name == "slow").then(|| slow_started.clone());
            async move {
                if let Some(started) = slow {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                results
            }
        });
        self.tasks.start(container, serve);
    }

    fn stop(&self, container: u32) {
        self.tasks.stop(container);
    }
}

fn app() -> Registry {
    let def = |name: &str, methods: &[&str], is_class: bool| FunctionDef {
        app: "demo".into(),
        name: name.into(),
        methods: methods.iter().map(|m| m.to_string()).collect(),
        is_class,
        spec: PoolSpec::new(name, vec![MethodSpec::default(); methods.len()]),
        // square(x) takes one argument; the others any number.
        arity: if name == "square" { vec![Arity { min: 1, max: Some(1) }] } else { Vec::new() },
        // Greeter { @parameter() greeting = 'Hello' }
        params: if is_class {
            vec![ParamSpec {
                name: "greeting".into(),
                kind: ParamKind::String,
                default: Some(cbor(&C::Text("Hello".into()))),
            }]
        } else {
            Vec::new()
        },
        not_callable: if is_class {
            vec![("load".into(), "an @enter() hook: each container runs it".into())]
        } else {
            Vec::new()
        },
        generators: Vec::new(),
        web: Vec::new(),
        schedule: None,
        tags: Vec::new(),
    };
    Registry {
        functions: vec![
            def("square", &["square"], false),
            def("echo", &["echo"], false),
            def("js", &["js"], false),
            def("slow", &["slow"], false),
            def("Greeter", &["greet", "shout"], true),
        ],
    }
}

fn opts() -> ServeOptions {
    ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeOptions::default()
    }
}

async fn start(opts: ServeOptions) -> (ControlPlane, SocketAddr) {
    let plane = ControlPlane::start(app(), FakeSpawner::default(), opts).await.unwrap();
    let addr = plane.http_addr().expect("the HTTP ingress is on");
    (plane, addr)
}

impl Reply {
    fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    fn message(&self) -> String {
        self.json()["error"]["message"].as_str().unwrap_or_default().to_string()
    }
}

async fn post(addr: SocketAddr, path: &str, body: &str) -> Reply {
    exchange(addr, &format!("POST {path} HTTP/1.1\r\nContent-Length: {}", body.len()), body.as_bytes()).await
}

#[tokio::test]
async fn post_calls_a_function_and_answers_its_value_as_json() {
    bounded(LIMIT, async {
        let (plane, addr) = start(opts()).await;
        let r = post(addr, "/demo/square", "[4]").await;
        assert_eq!((r.status, r.json()), (200, json!(16)), "{r:?}");
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.headers["x-berth-function-call-id"].starts_with("fc-"));

        // JSON in, CBOR to the container and back, JSON out.
        let value = json!({"a": [1, -2, 2.5, "x", null, true, {}], "big": 18446744073709551615u64});
        let r = post(addr, "/demo/echo", &json!({"args": [value, "second"]}).to_string()).await;
        assert_eq!((r.status, r.json()), (200, json!([value, "second"])), "{r:?}");
        // No body: no arguments.
        let r = post(addr, "/demo/echo", "").await;
        assert_eq!((r.status, r.json()), (200, json!([])));

        // JavaScript values as cbor-x writes them.
        let r = post(addr, "/demo/js", "[]").await;
        assert_eq!(
            (r.status, r.json()),
            (200, json!([{"1": "a"}, ["x"], "aGk=", [0.5], 1.5, "18446744073709551616", null]))
        );
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn class_methods_get_their_parameters() {
    bounded(LIMIT, async {
        let (plane, addr) = start(opts()).await;
        let r = post(addr, "/demo/Greeter/greet", r#"{"args": ["Ada"], "params": {"greeting": "Hi"}}"#).await;
        assert_eq!((r.status, r.json()), (200, json!("Hi, Ada!")), "{r:?}");
        let r = post(addr, "/demo/Greeter/greet", r#"{"args": ["Ada"], "params": {"greeting": "Yo"}}"#).await;
        assert_eq!((r.status, r.json()), (200, json!("Yo, Ada!")), "other params, another pool");
        let r = post(addr, "/demo/Greeter/greet", r#"["Ada"]"#).await;
        assert_eq!((r.status, r.json()), (200, json!("Hello, Ada!")), "no params");
        let r = post(addr, "/demo/Greeter/shout", r#"{"args": ["ada"], "params": {"greeting": "Hi"}}"#).await;
        assert_eq!((r.status, r.json()), (200, json!("ADA")));
        // Parameters are checked before any container starts, in the words of the embedded check.
        let r = post(addr, "/demo/Greeter/greet", r#"{"args": ["Ada"], "params": {"greting": "Hi"}}"#).await;
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(r.json()["error"]["name"], "InvalidArgument");
        assert_eq!(
            r.message(),
            "Greeter: unknown parameter 'greting'. Did you mean 'greeting'? Known parameters: greeting."
        );
        let r = post(addr, "/demo/Greeter/greet", r#"{"args": ["Ada"], "params": {"greeting": 7}}"#).await;
        assert_eq!(
            (r.status, r.message().as_str()),
            (400, "Greeter: parameter 'greeting' must be a string, got the number 7.")
        );
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_user_error_is_500_with_name_message_and_stack() {
    bounded(LIMIT, async {
        let (plane, addr) = start(opts()).await;
        let r = post(addr, "/demo/square", "[3]").await;
        assert_eq!(r.status, 500);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(
            r.json(),
            json!({"error": {"name": "TypeError", "message": "bad 3", "stack": "TypeError: bad 3\n    at square"}})
        );
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn unknown_names_are_404_naming_what_exists() {
    bounded(LIMIT, async {
        let (plane, addr) = start(opts()).await;
        let r = post(addr, "/demo/cube", "[1]").await;
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["error"]["name"], "NotFound");
        assert!(r.message().contains("'cube'") && r.message().contains("square, echo, js, slow, Greeter"), "{r:?}");
        let r = post(addr, "/nope/square", "[1]").await;
        assert_eq!(r.status, 404);
        assert!(r.message().contains("no app named 'nope'"), "{r:?}");
        let r = post(addr, "/demo/Greeter/wave", r#"["Ada"]"#).await;
        assert_eq!(r.status, 404);
        assert!(r.message().contains("its methods: greet, shout"), "{r:?}");
        let r = post(addr, "/demo/Greeter/load", r#"["Ada"]"#).await;
        assert_eq!(r.status, 404);
        assert_eq!(
            r.message(),
            "Greeter.load: 'load' is an @enter() hook: each container runs it; callers call methods only. Callable \
             methods of Greeter: greet, shout."
        );
        let r = post(addr, "/demo/Greeter", r#"["Ada"]"#).await;
        assert_eq!(r.status, 404);
        assert!(r.message().contains("POST /demo/Greeter/{method}"), "{r:?}");
        let r = post(addr, "/demo/square/square", "[1]").await;
        assert_eq!(r.status, 404);
        assert!(r.message().contains("POST /demo/square"), "{r:?}");

        // Other paths and methods.
        for path in ["/", "/demo", "/a/b/c/d", "/demo//square", "/demo/%zz"] {
            let r = post(addr, path, "[1]").await;
            assert_eq!(r.status, 404, "{path}: {r:?}");
            assert!(r.message().contains("POST /{app}/{function}"), "{r:?}");
        }
        let r = exchange(addr, "GET /demo/square HTTP/1.1", b"").await;
        assert_eq!((r.status, r.headers["allow"].as_str()), (405, "POST"));
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn malformed_bodies_are_400_saying_what_to_send() {
    bounded(LIMIT, async {
        let (plane, addr) = start(opts()).await;
        for (body, says) in [
            ("[1,", "not valid JSON"),
            ("4", "a JSON array of positional arguments"),
            (r#"{"args": 4}"#, "`args` must be an array"),
            (r#"{"arguments": [4]}"#, "unknown key 'arguments'"),
            (r#"{"args": [4], "params": {"k": "v"}}"#, "takes no class parameters"),
            (r#"{"args": ["Ada"], "params": 1}"#, "`params` must be an object"),
        ] {
            let r = post(addr, "/demo/square", body).await;
            assert_eq!(r.status, 400, "{body}: {r:?}");
            assert_eq!(r.json()["error"]["name"], "InvalidArgument");
            assert!(r.message().contains(says), "{body}: {}", r.message());
        }
        let r = post(addr, "/demo/square", "[5]").await;
        assert_eq!((r.status, r.json()), (200, json!(25)), "a good call still works");
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn oversized_bodies_are_413() {
    bounded(LIMIT, async {
        let (plane, addr) = start(ServeOptions { max_message_bytes: 1024, ..opts() }).await;
        // Declared too large: refused before the body is read.
        let r = exchange(addr, "POST /demo/echo HTTP/1.1\r\nContent-Length: 4096", b"").await;
        assert_eq!(r.status, 413, "{r:?}");
        assert!(r.message().contains("1024 bytes"), "{r:?}");
        // Chunked, found too large while reading.
        let chunk = format!("[\"{}\"]", "x".repeat(2000));
        let body = format!("{:x}\r\n{chunk}\r\n", chunk.len());
        let r = exchange(addr, "POST /demo/echo HTTP/1.1\r\nTransfer-Encoding: chunked", body.as_bytes()).await;
        assert_eq!(r.status, 413, "{r:?}");
        let small = format!("[\"{}\"]", "x".repeat(900));
        let r = post(addr, "/demo/echo", &small).await;
        assert_eq!(r.status, 200, "under the limit");
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_configured_token_is_required_except_for_healthz() {
    bounded(LIMIT, async {
        let (plane, addr) = start(ServeOptions { token: Some("s3cret".into()), ..opts() }).await;
        let call = |auth: &'static str| {
            let head = format!("POST /demo/square HTTP/1.1\r\nContent-Length: 3{auth}");
            async move { exchange(addr, &head, b"[6]").await }
        };
        let r = call("").await;
        assert_eq!(r.status, 401, "{r:?}");
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        assert!(r.message().contains("Bearer <token>"), "{r:?}");
        let r = call("\r\nAuthorization: Bearer nope").await;
        assert_eq!(r.status, 401);
        assert!(r.message().contains("wrong token"), "{r:?}");
        let r = call("\r\nAuthorization: Bearer s3cret").await;
        assert_eq!((r.status, r.json()), (200, json!(36)));
        let r = exchange(addr, "GET /healthz HTTP/1.1", b"").await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]));
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn healthz_answers_ok() {
    bounded(LIMIT, async {
        let (plane, addr) = start(opts()).await;
        let r = exchange(addr, "GET /healthz HTTP/1.1", b"").await;
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok"[..]), "{r:?}");
        let r = post(addr, "/healthz", "").await;
        assert_eq!((r.status, r.headers["allow"].as_str()), (405, "GET"));
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_then_stops_listening() {
    bounded(LIMIT, async {
        let spawner = FakeSpawner::default();
        let slow_started = spawner.slow_started.clone();
        let plane = ControlPlane::start(app(), spawner, opts()).await.unwrap();
        let addr = plane.http_addr().unwrap();
        let call = tokio::spawn(async move { post(addr, "/demo/slow", "[]").await });
        slow_started.notified().await;
        plane.shutdown().await;
        let r = call.await.unwrap();
        assert_eq!((r.status, r.json()), (200, json!("done")), "{r:?}");
        assert!(TcpStream::connect(addr).await.is_err(), "no longer listening");
    })
    .await
}

#[tokio::test]
async fn the_ingress_is_off_unless_asked_for() {
    bounded(LIMIT, async {
        let opts = ServeOptions { addr: "127.0.0.1:0".parse().unwrap(), ..ServeOptions::default() };
        let plane = ControlPlane::start(app(), FakeSpawner::default(), opts).await.unwrap();
        assert_eq!(plane.http_addr(), None);
        plane.shutdown().await;
        // A public HTTP address needs a token too.
        let opts = ServeOptions { http_addr: Some("0.0.0.0:0".parse().unwrap()), ..opts_loopback() };
        let err = ControlPlane::start(app(), FakeSpawner::default(), opts).await.err().expect("refused");
        assert!(err.to_string().contains("--token"), "{err}");
    })
    .await
}

fn opts_loopback() -> ServeOptions {
    ServeOptions { addr: "127.0.0.1:0".parse().unwrap(), ..ServeOptions::default() }
}

#[tokio::test]
async fn a_call_with_the_wrong_number_of_arguments_is_400_naming_what_it_takes() {
    bounded(LIMIT, async {
        let (plane, addr) = start(opts()).await;
        let r = post(addr, "/demo/square", "[]").await;
        assert_eq!(r.status, 400, "{r:?}");
        assert_eq!(
            r.json(),
            json!({"error": {"name": "InvalidArgument", "message": "square takes exactly 1 argument; the arguments hold 0"}})
        );
        let r = post(addr, "/demo/square", "[1, 2]").await;
        assert_eq!(r.status, 400, "{r:?}");
        // A long path is not echoed whole.
        let r = post(addr, &format!("/{}", "p/".repeat(3000)), "[]").await;
        assert_eq!(r.status, 404);
        assert!(r.body.len() < 400, "{}", String::from_utf8_lossy(&r.body));
        plane.shutdown().await;
    })
    .await;
}
