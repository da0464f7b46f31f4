#![allow(clippy::unwrap_used)]
//! The control plane end to end over loopback: real gRPC callers, and fake containers that
//! speak the Containers protocol (attach, credits, hooks, executions, outputs).
mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::{HookSet, MethodSpec, PoolSpec, RetryPolicy};
use berth_proto::v1::{
    self as pb, container_message, containers_client::ContainersClient, control_message,
    functions_client::FunctionsClient, map_request, result::Outcome,
};
use berth_server::{Arity, ControlPlane, ExitReporter, FunctionDef, Registry, ServeOptions, Spawner};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;

use common::cbor;

fn args(xs: &[i64]) -> Vec<u8> {
    cbor(&ciborium::Value::Array(xs.iter().map(|x| ciborium::Value::Integer((*x).into())).collect()))
}

fn int(r: &pb::Result) -> i64 {
    match &r.outcome {
        Some(Outcome::Value(v)) => {
            let v: ciborium::Value = ciborium::from_reader(v.as_slice()).expect("decode");
            i64::try_from(v.as_integer().expect("an integer")).expect("fits")
        }
        other => panic!("expected a value, got {other:?}"),
    }
}

fn err_name(r: &pb::Result) -> String {
    match &r.outcome {
        Some(Outcome::Error(e)) => e.name.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// How fake containers behave.
#[derive(Default, Clone)]
struct Behaviour {
    /// Containers whose first execution kills them (the stream drops, as with SIGKILL).
    die_on_first_exec: HashSet<u32>,
    /// x == this throws a retryable error.
    throw_on: Option<i64>,
    enter_fails: bool,
    delay: Duration,
    /// Answer a byte string this long instead of the square.
    result_bytes: Option<usize>,
    /// Containers that get SIGINT at their first execution: they say so (Draining,
    /// interrupted), wait for its Abort, then answer it anyway (a late answer).
    interrupted_on_first_exec: HashSet<u32>,
}

#[derive(Default)]
struct Seen {
    hooks: Vec<(u32, i32)>,
    /// (container, input, reason) of each Abort.
    aborts: Vec<(u32, u64, String)>,
    executed: Vec<u64>,
    started: Vec<u32>,
}

/// Squares each input's first argument; `throw_on` fails with a retryable TypeError.
async fn run_exec(b: &Behaviour, seen: &Mutex<Seen>, e: pb::Execute) -> pb::Output {
    tokio::time::sleep(b.delay).await;
    let mut results = Vec::new();
    let mut retryable_failure = false;
    for i in &e.inputs {
        seen.lock().unwrap().executed.push(i.input_id);
        let v: ciborium::Value = ciborium::from_reader(i.args.as_slice()).expect("args");
        let x = i64::try_from(v.as_array().expect("array")[0].as_integer().expect("int")).expect("fits");
        if Some(x) == b.throw_on {
            retryable_failure = true;
            results.push(pb::Result {
                outcome: Some(Outcome::Error(pb::Error {
                    name: "TypeError".into(),
                    message: format!("bad {x}"),
                    stack: "at square".into(),
                })),
            });
        } else if let Some(n) = b.result_bytes {
            results.push(pb::Result { outcome: Some(Outcome::Value(cbor(&ciborium::Value::Bytes(vec![7; n])))) });
        } else {
            results.push(pb::Result { outcome: Some(Outcome::Value(cbor(&ciborium::Value::Integer((x * x).into())))) });
        }
    }
    pb::Output { exec_id: e.exec_id, results, retryable_failure }
}

struct FakeSpawner {
    behaviour: Behaviour,
    seen: Arc<Mutex<Seen>>,
    tasks: Mutex<HashMap<u32, tokio::task::JoinHandle<()>>>,
}

impl Spawner for FakeSpawner {
    fn spawn(
        &self,
        _def: &FunctionDef,
        _params: &[u8],
        container: u32,
        token: &str,
        endpoint: &str,
        _exited: ExitReporter,
    ) {
        self.seen.lock().unwrap().started.push(container);
        let (b, seen, token, endpoint) =
            (self.behaviour.clone(), self.seen.clone(), token.to_string(), endpoint.to_string());
        let task = tokio::spawn(async move {
            let mut client = ContainersClient::connect(endpoint).await.expect("connect");
            let (tx, rx) = mpsc::unbounded_channel();
            let send = |m: container_message::Msg| {
                let _ = tx.send(pb::ContainerMessage { msg: Some(m) });
            };
            send(container_message::Msg::Hello(pb::Hello { container_id: container, token }));
            send(container_message::Msg::Credit(pb::Credit { slots: 8 }));
            let mut inbound = client.attach(UnboundedReceiverStream::new(rx)).await.expect("attach").into_inner();
            let mut interrupted: Option<pb::Execute> = None;
            while let Some(Ok(msg)) = inbound.next().await {
                match msg.msg {
                    Some(control_message::Msg::RunHook(h)) => {
                        seen.lock().unwrap().hooks.push((container, h.phase));
                        let fail = b.enter_fails && h.phase == pb::Phase::Enter as i32;
                        let error = fail.then(|| pb::Error {
                            name: "ModelError".into(),
                            message: "weights missing".into(),
                            stack: "at load".into(),
                        });
                        send(container_message::Msg::HookDone(pb::HookDone { phase: h.phase, ok: !fail, error }));
                    }
                    Some(control_message::Msg::ExecuteBatch(batch))
                        if b.die_on_first_exec.contains(&container) && !batch.executions.is_empty() =>
                    {
                        return
                    }
                    Some(control_message::Msg::ExecuteBatch(batch)) => {
                        for e in batch.executions {
                            let out = run_exec(&b, &seen, e).await;
                            send(container_message::Msg::Output(out));
                        }
                    }
                    Some(control_message::Msg::Execute(e)) => {
                        if b.die_on_first_exec.contains(&container) {
                            return;
                        }
                        if b.interrupted_on_first_exec.contains(&container) && interrupted.is_none() {
                            send(container_message::Msg::Draining(pb::Draining { interrupted: true }));
                            interrupted = Some(e);
                            continue;
                        }
                        let out = run_exec(&b, &seen, e).await;
                        send(container_message::Msg::Output(out));
                    }
                    Some(control_message::Msg::Abort(a)) => {
                        seen.lock().unwrap().aborts.push((container, a.input_id, a.reason.clone()));
                        if let Some(e) =
                            interrupted.take().filter(|e| e.inputs.iter().any(|i| i.input_id == a.input_id))
                        {
                            let out = run_exec(&b, &seen, e).await;
                            send(container_message::Msg::Output(out));
                        }
                    }
                    Some(control_message::Msg::Stop(_)) => return,
                    _ => {}
                }
            }
        });
        self.tasks.lock().unwrap().insert(container, task);
    }

    fn stop(&self, container: u32) {
        if let Some(t) = self.tasks.lock().unwrap().remove(&container) {
            t.abort();
        }
    }
}

fn square_app(retries: u32, max_containers: u32) -> Registry {
    let mut spec = PoolSpec::new("square", vec![MethodSpec::default()]);
    spec.max_inputs = 4;
    spec.target_inputs = 4;
    spec.max_containers = max_containers;
    spec.retries = RetryPolicy::new(retries, 1.0, Duration::ZERO, Duration::from_secs(1)).unwrap();
    spec.hooks = HookSet { enter: true, exit: true, ..HookSet::default() };
    spec.startup_timeout = Duration::from_secs(10);
    Registry { functions: vec![common::function("embeddings", "square", spec, vec![Arity { min: 1, max: Some(1) }])] }
}

async fn start(registry: Registry, behaviour: Behaviour, opts: ServeOptions) -> (ControlPlane, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let spawner = FakeSpawner { behaviour, seen: seen.clone(), tasks: Mutex::new(HashMap::new()) };
    let plane = ControlPlane::start(registry, spawner, opts).await.expect("start");
    (plane, seen)
}

fn local() -> ServeOptions {
    ServeOptions { addr: "127.0.0.1:0".parse().unwrap(), ..ServeOptions::default() }
}

fn square_ref() -> Option<pb::FunctionRef> {
    Some(pb::FunctionRef { app: "embeddings".into(), function: "square".into(), ..Default::default() })
}

async fn client(plane: &ControlPlane) -> FunctionsClient<tonic::transport::Channel> {
    FunctionsClient::connect(format!("http://{}", plane.local_addr())).await.expect("connect")
}

#[tokio::test]
async fn invoke_runs_on_an_attached_container_and_shutdown_runs_exit_hooks() {
    let (plane, seen) = start(square_app(0, 1), Behaviour::default(), local()).await;
    let mut c = client(&plane).await;
    let r =
        c.invoke(pb::InvokeRequest { function: square_ref(), args: args(&[4]) }).await.expect("invoke").into_inner();
    assert_eq!(int(r.result.as_ref().unwrap()), 16);
    assert!(r.function_call_id.starts_with("fc-"));
    tokio::time::timeout(Duration::from_secs(10), plane.shutdown()).await.expect("shutdown in time");
    let hooks = seen.lock().unwrap().hooks.clone();
    assert_eq!(hooks, vec![(1, pb::Phase::Enter as i32), (1, pb::Phase::Exit as i32)]);
}

#[tokio::test]
async fn malformed_unknown_oversized_and_unauthenticated_requests_get_their_status() {
    let opts = ServeOptions { max_message_bytes: 1024, token: Some("s3cret".into()), ..local() };
    let (plane, _) = start(square_app(0, 1), Behaviour::default(), opts).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", plane.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let with = |token: &'static str| {
        move |mut req: tonic::Request<()>| {
            if !token.is_empty() {
                req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            Ok(req)
        }
    };
    let mut anon = FunctionsClient::with_interceptor(channel.clone(), with(""));
    let e = anon.invoke(pb::InvokeRequest { function: square_ref(), args: args(&[1]) }).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let mut wrong = FunctionsClient::with_interceptor(channel.clone(), with("nope"));
    assert_eq!(
        wrong.invoke(pb::InvokeRequest { function: square_ref(), args: args(&[1]) }).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let mut c = FunctionsClient::with_interceptor(channel, with("s3cret"));
    let unknown = pb::FunctionRef { app: "embeddings".into(), function: "cube".into(), ..Default::default() };
    let e = c.invoke(pb::InvokeRequest { function: Some(unknown), args: args(&[1]) }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("square"), "names what exists: {}", e.message());
    let e = c.invoke(pb::InvokeRequest { function: square_ref(), args: vec![0xff, 0x00] }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .invoke(pb::InvokeRequest { function: square_ref(), args: cbor(&ciborium::Value::Integer(3.into())) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("CBOR array"), "{}", e.message());
    let e = c.invoke(pb::InvokeRequest { function: None, args: args(&[1]) }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let big = cbor(&ciborium::Value::Array(vec![ciborium::Value::Bytes(vec![7; 4096])]));
    let e = c.invoke(pb::InvokeRequest { function: square_ref(), args: big }).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let r = c
        .invoke(pb::InvokeRequest { function: square_ref(), args: args(&[5]) })
        .await
        .expect("a good call still works");
    assert_eq!(int(r.into_inner().result.as_ref().unwrap()), 25);
}

#[tokio::test]
async fn binding_beyond_loopback_needs_a_token() {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let spawner = FakeSpawner { behaviour: Behaviour::default(), seen, tasks: Mutex::new(HashMap::new()) };
    let opts = ServeOptions { addr: "0.0.0.0:0".parse().unwrap(), ..ServeOptions::default() };
    let err = ControlPlane::start(square_app(0, 1), spawner, opts).await.err().expect("refused");
    assert!(err.to_string().contains("--token"), "{err}");
}

#[tokio::test]
async fn a_port_in_use_is_named_with_the_flag_that_picks_another() {
    let (plane, _) = start(square_app(0, 1), Behaviour::default(), local()).await;
    let taken = plane.local_addr();
    for (opts, flag) in [
        (ServeOptions { addr: taken, ..ServeOptions::default() }, "--grpc-port"),
        (ServeOptions { http_addr: Some(taken), ..local() }, "--http-port"),
    ] {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let spawner = FakeSpawner { behaviour: Behaviour::default(), seen, tasks: Mutex::new(HashMap::new()) };
        let err = ControlPlane::start(square_app(0, 1), spawner, opts).await.err().expect("refused");
        let msg = err.to_string();
        assert!(msg.contains(&format!("cannot listen on {taken}")) && msg.contains(flag), "{msg}");
    }
    plane.shutdown().await;
}

#[tokio::test]
async fn user_errors_come_back_as_data_and_are_retried_within_the_policy() {
    let b = Behaviour { throw_on: Some(3), ..Behaviour::default() };
    let (plane, seen) = start(square_app(2, 1), b, local()).await;
    let mut c = client(&plane).await;
    let r = c
        .invoke(pb::InvokeRequest { function: square_ref(), args: args(&[3]) })
        .await
        .expect("a status OK")
        .into_inner();
    let Some(Outcome::Error(e)) = r.result.and_then(|r| r.outcome) else { panic!("an error result") };
    assert_eq!((e.name.as_str(), e.message.as_str(), e.stack.as_str()), ("TypeError", "bad 3", "at square"));
    assert_eq!(seen.lock().unwrap().executed.len(), 3, "one attempt and two retries");
    plane.shutdown().await;
}

#[tokio::test]
async fn enter_failure_reaches_the_caller_as_init_error() {
    let b = Behaviour { enter_fails: true, ..Behaviour::default() };
    let (plane, seen) = start(square_app(0, 1), b, local()).await;
    let mut c = client(&plane).await;
    let r = c.invoke(pb::InvokeRequest { function: square_ref(), args: args(&[2]) }).await.unwrap().into_inner();
    let Some(Outcome::Error(e)) = r.result.and_then(|r| r.outcome) else { panic!("an error result") };
    assert_eq!(e.name, "InitError");
    assert!(e.message.contains("ModelError: weights missing"), "{}", e.message);
    assert_eq!(e.stack, "at load");
    assert!(!seen.lock().unwrap().hooks.iter().any(|h| h.1 == pb::Phase::Exit as i32), "no exit after a failed enter");
}

#[tokio::test]
async fn spawn_get_result_and_cancel() {
    let b = Behaviour { delay: Duration::from_millis(300), ..Behaviour::default() };
    let (plane, _) = start(square_app(0, 1), b, local()).await;
    let mut c = client(&plane).await;
    let fc = c
        .spawn(pb::InvokeRequest { function: square_ref(), args: args(&[6]) })
        .await
        .unwrap()
        .into_inner()
        .function_call_id;
    let now =
        c.get_result(pb::GetResultRequest { function_call_id: fc.clone(), timeout: 0.0 }).await.unwrap().into_inner();
    assert!(!now.ready && now.result.is_none());
    let later =
        c.get_result(pb::GetResultRequest { function_call_id: fc.clone(), timeout: 10.0 }).await.unwrap().into_inner();
    assert!(later.ready);
    assert_eq!(int(later.result.as_ref().unwrap()), 36);
    let again = c.get_result(pb::GetResultRequest { function_call_id: fc.clone(), timeout: 0.0 }).await.unwrap_err();
    assert_eq!(again.code(), Code::NotFound, "a delivered result is forgotten");

    let fc2 = c
        .spawn(pb::InvokeRequest { function: square_ref(), args: args(&[7]) })
        .await
        .unwrap()
        .into_inner()
        .function_call_id;
    c.cancel(pb::CancelRequest { function_call_id: fc2.clone() }).await.unwrap();
    let r = c.get_result(pb::GetResultRequest { function_call_id: fc2, timeout: 10.0 }).await.unwrap().into_inner();
    assert_eq!(err_name(r.result.as_ref().unwrap()), "InputCancelledError");
    let e = c.get_result(pb::GetResultRequest { function_call_id: "fc-nope".into(), timeout: 0.0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// 1000 inputs through Map while the first container dies at its first execution: every input
/// gets exactly one result, none lost, none twice.
#[tokio::test]
async fn map_survives_a_dying_container_with_exactly_one_result_per_input() {
    let b = Behaviour { die_on_first_exec: HashSet::from([1]), ..Behaviour::default() };
    let (plane, seen) = start(square_app(1, 3), b, local()).await;
    let mut c = client(&plane).await;
    let n = 1000u64;
    let first = pb::MapRequest { item: Some(map_request::Item::Function(square_ref().unwrap())) };
    let inputs = (0..n).map(|i| pb::MapRequest {
        item: Some(map_request::Item::Input(pb::MapInput { index: i, args: args(&[i as i64]) })),
    });
    let requests = tokio_stream::iter(std::iter::once(first).chain(inputs));
    let mut stream = c.map(requests).await.unwrap().into_inner();
    let mut got: HashMap<u64, i64> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < n as usize {
        let msg = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("all results within 60 s")
            .expect("stream open")
            .unwrap();
        assert!(got.insert(msg.index, int(msg.result.as_ref().unwrap())).is_none(), "index {} twice", msg.index);
    }
    assert!((0..n).all(|i| got[&i] == (i * i) as i64));
    assert!(stream.next().await.is_none(), "the stream ends after the last result");
    assert!(seen.lock().unwrap().started.len() >= 2, "a container replaced the dead one");
    plane.shutdown().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let (plane, _) = start(square_app(0, 1), Behaviour::default(), local()).await;
    let url = format!("http://{}", plane.local_addr());
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest { service: "berth.v1.Functions".into() })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };
    let mut refl = ServerReflectionClient::new(channel);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = refl.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.next().await.unwrap().unwrap().message_response else {
        panic!()
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["berth.v1.Functions", "berth.v1.Containers", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
}

/// Reflection serves the .proto files' comments (their source info), so a client that has only
/// the server learns, for one, the Map stream's first-message rule (README: "From any
/// language: the `.proto` files alone"). Both reflection versions, as grpcurl and
/// grpcio-reflection each ask one of them.
#[tokio::test]
async fn reflection_carries_the_proto_comments() {
    use prost::Message as _;
    let (plane, _) = start(square_app(0, 1), Behaviour::default(), local()).await;
    let url = format!("http://{}", plane.local_addr());
    let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();

    let v1 = {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("berth.v1.Functions".into())),
        };
        let mut client = ServerReflectionClient::new(channel.clone());
        let mut resp = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(MessageResponse::FileDescriptorResponse(files)) = resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("no file descriptor for berth.v1.Functions")
        };
        files.file_descriptor_proto
    };
    let v1alpha = {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol("berth.v1.Functions".into())),
        };
        let mut client = ServerReflectionClient::new(channel);
        let mut resp = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(MessageResponse::FileDescriptorResponse(files)) = resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("no file descriptor for berth.v1.Functions (v1alpha)")
        };
        files.file_descriptor_proto
    };

    for (version, files) in [("v1", v1), ("v1alpha", v1alpha)] {
        let file = files
            .iter()
            .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
            .find(|f| f.service.iter().any(|s| s.name() == "Functions"))
            .unwrap_or_else(|| panic!("{version}: no file declares Functions"));
        let service = file.service.iter().position(|s| s.name() == "Functions").unwrap();
        let method = file.service[service].method.iter().position(|m| m.name() == "Map").expect("a Map rpc");
        // descriptor.proto: FileDescriptorProto.service = 6, ServiceDescriptorProto.method = 2.
        let path = [6, service as i32, 2, method as i32];
        let info =
            file.source_code_info.as_ref().unwrap_or_else(|| panic!("{version}: the descriptor has no source info"));
        let comment = info
            .location
            .iter()
            .find(|l| l.path == path)
            .and_then(|l| l.leading_comments.clone())
            .unwrap_or_else(|| panic!("{version}: no comment on Functions.Map"));
        assert!(comment.contains("the first message names the function"), "{version}: Map's comment is {comment:?}");
    }
}

fn map_first() -> pb::MapRequest {
    pb::MapRequest { item: Some(map_request::Item::Function(square_ref().unwrap())) }
}

fn map_input(i: u64) -> pb::MapRequest {
    pb::MapRequest { item: Some(map_request::Item::Input(pb::MapInput { index: i, args: args(&[i as i64]) })) }
}

/// The function call id a Map call sends in its response headers.
fn map_call_id<T>(r: &tonic::Response<T>) -> String {
    r.metadata().get("berth-function-call-id").expect("the call id header").to_str().unwrap().to_string()
}

/// Reads a Map stream to its end: each index's result (once), then how the stream ended.
async fn drain_map(
    stream: &mut tonic::Streaming<pb::MapResponse>,
    got: &mut HashMap<u64, pb::Result>,
) -> Result<(), tonic::Status> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await.expect("the stream ends within 20 s")? {
            Some(m) => assert!(got.insert(m.index, m.result.unwrap()).is_none(), "index {} twice", m.index),
            None => return Ok(()),
        }
    }
}

/// Waits until the fake containers stop executing (what was aborted mid-run settles), and
/// says how many inputs they executed.
async fn executions_settle(seen: &Mutex<Seen>) -> usize {
    let mut last = usize::MAX;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = seen.lock().unwrap().executed.len();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the containers kept executing inputs ({last} so far)");
}

/// A Map message over the cap: the inputs before it still get their results, then the stream
/// ends with RESOURCE_EXHAUSTED naming the cap (tonic alone would say OUT_OF_RANGE at once).
#[tokio::test]
async fn an_oversized_map_message_is_resource_exhausted_after_the_accepted_results() {
    let b = Behaviour { delay: Duration::from_millis(100), ..Behaviour::default() };
    let (plane, _) = start(square_app(0, 1), b, ServeOptions { max_message_bytes: 1024, ..local() }).await;
    let mut c = client(&plane).await;
    let big = cbor(&ciborium::Value::Array(vec![ciborium::Value::Bytes(vec![7; 4096])]));
    let big = pb::MapRequest { item: Some(map_request::Item::Input(pb::MapInput { index: 2, args: big })) };
    let requests = tokio_stream::iter(vec![map_first(), map_input(0), map_input(1), big, map_input(3)]);
    let mut stream = c.map(requests).await.unwrap().into_inner();
    let mut got = HashMap::new();
    let e = tokio::time::timeout(Duration::from_secs(20), drain_map(&mut stream, &mut got))
        .await
        .expect("in time")
        .expect_err("the stream ends with a status");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("1024") && e.message().contains("smaller"),
        "names the cap and the fix: {}",
        e.message()
    );
    assert_eq!(got.len(), 2, "the inputs before the oversized one, and only them: {got:?}");
    assert_eq!((int(&got[&0]), int(&got[&1])), (0, 1));

    // Oversized in the very first message (the function): the same status.
    let huge = pb::FunctionRef { params: vec![0xa0; 4096], ..square_ref().unwrap() };
    let first = pb::MapRequest { item: Some(map_request::Item::Function(huge)) };
    let e = match c.map(tokio_stream::iter(vec![first])).await {
        Err(e) => e,
        Ok(r) => r.into_inner().message().await.expect_err("a status"),
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");

    let r = c.invoke(pb::InvokeRequest { function: square_ref(), args: args(&[5]) }).await.unwrap().into_inner();
    assert_eq!(int(r.result.as_ref().unwrap()), 25, "the server still serves");
    tokio::time::timeout(Duration::from_secs(20), plane.shutdown()).await.expect("shutdown in time");
}

/// Cancel with a Map's call id (from its response headers): every input gets exactly one
/// result, the unfinished ones InputCancelledError, queued ones never run, and the stream ends
/// although the caller has not closed its requests.
#[tokio::test]
async fn cancelling_a_map_answers_each_unfinished_input_once_as_cancelled() {
    let b = Behaviour { delay: Duration::from_millis(100), ..Behaviour::default() };
    let (plane, seen) = start(square_app(0, 1), b, local()).await;
    let mut c = client(&plane).await;
    let n = 40u64;
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(map_first()).unwrap();
    for i in 0..n {
        tx.send(map_input(i)).unwrap();
    }
    let response = c.map(UnboundedReceiverStream::new(rx)).await.unwrap();
    let fc = map_call_id(&response);
    assert!(fc.starts_with("fc-"), "{fc}");
    let mut stream = response.into_inner();
    let mut got = HashMap::new();
    while got.len() < 2 {
        let m =
            tokio::time::timeout(Duration::from_secs(20), stream.message()).await.expect("in time").unwrap().unwrap();
        assert!(got.insert(m.index, m.result.unwrap()).is_none());
    }
    c.cancel(pb::CancelRequest { function_call_id: fc.clone() }).await.expect("a Map's id cancels it");
    drain_map(&mut stream, &mut got).await.expect("the stream ends normally");
    assert_eq!(got.len(), n as usize, "every input answered");
    let mut cancelled = 0;
    for (i, r) in &got {
        match &r.outcome {
            Some(Outcome::Value(_)) => assert_eq!(int(r), (i * i) as i64),
            _ => {
                assert_eq!(err_name(r), "InputCancelledError");
                cancelled += 1;
            }
        }
    }
    assert!(cancelled >= n as usize - 8, "the unfinished inputs are cancelled: {cancelled} of {n}");
    let executed = executions_settle(&seen).await;
    assert!(executed < 12, "queued inputs were dropped, not run: {executed} of {n} ran");
    // An ended Map has nothing left to cancel: not an error (a call that just finished races
    // its caller's cancel); an id the server never issued is.
    c.cancel(pb::CancelRequest { function_call_id: fc }).await.expect("an ended Map: nothing to cancel");
    let e = c.cancel(pb::CancelRequest { function_call_id: "fc-999999".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "an id never issued");
    drop(tx);

    // Another Map on the same server is untouched, and completes.
    let requests = tokio_stream::iter(std::iter::once(map_first()).chain((0..5).map(map_input)));
    let mut stream = c.map(requests).await.unwrap().into_inner();
    let mut got = HashMap::new();
    drain_map(&mut stream, &mut got).await.unwrap();
    assert!((0..5u64).all(|i| int(&got[&i]) == (i * i) as i64));
    tokio::time::timeout(Duration::from_secs(20), plane.shutdown()).await.expect("shutdown in time");
}

/// A Map caller that goes away (drops its stream, or its process dies with the requests still
/// open) leaves no inputs to run for nobody: the queued ones are dropped, the running ones
/// aborted.
#[tokio::test]
async fn a_map_whose_caller_goes_away_is_cancelled() {
    for caller_process_dies in [false, true] {
        let b = Behaviour { delay: Duration::from_millis(100), ..Behaviour::default() };
        let (plane, seen) = start(square_app(0, 1), b, local()).await;
        let n = 40u64;
        let url = format!("http://{}", plane.local_addr());
        let caller = async move {
            let mut c = FunctionsClient::connect(url).await.expect("connect");
            let (tx, rx) = mpsc::unbounded_channel();
            tx.send(map_first()).unwrap();
            for i in 0..n {
                tx.send(map_input(i)).unwrap();
            }
            if !caller_process_dies {
                // Requests closed: dropping the response stream resets the call.
                drop(tx);
            } else {
                std::mem::forget(tx);
            }
            let mut stream = c.map(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
            let first = tokio::time::timeout(Duration::from_secs(20), stream.message()).await.expect("in time");
            assert!(first.unwrap().is_some());
        };
        if caller_process_dies {
            // A runtime of its own, dropped with the call open: its connection closes, as when
            // the caller's process ends.
            tokio::task::spawn_blocking(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(caller);
            })
            .await
            .unwrap();
        } else {
            caller.await;
        }
        let executed = executions_settle(&seen).await;
        assert!(executed < 12, "caller_process_dies={caller_process_dies}: {executed} of {n} inputs ran");
        let mut c = client(&plane).await;
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            c.invoke(pb::InvokeRequest { function: square_ref(), args: args(&[9]) }),
        )
        .await
        .expect("nothing queued ahead")
        .unwrap()
        .into_inner();
        assert_eq!(int(r.result.as_ref().unwrap()), 81);
        tokio::time::timeout(Duration::from_secs(20), plane.shutdown()).await.expect("shutdown in time");
    }
}

/// Sends a request body as raw bytes (no protobuf encoding), as a foreign client with a broken
/// encoder would.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct ResponseDecoder(tonic_prost::ProstDecoder<pb::InvokeResponse>);

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, buf: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        buf.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for ResponseDecoder {
    type Item = pb::InvokeResponse;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<pb::InvokeResponse>, tonic::Status> {
        self.0.decode(buf)
    }
}

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = pb::InvokeResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder(tonic_prost::ProstCodec::<pb::InvokeRequest, pb::InvokeResponse>::default().decoder())
    }
}

async fn invoke_raw(plane: &ControlPlane, body: Vec<u8>) -> tonic::Status {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", plane.local_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/berth.v1.Functions/Invoke");
    grpc.unary(tonic::Request::new(body), path, RawCodec).await.expect_err("refused")
}

#[tokio::test]
async fn poison_arguments_are_refused_before_any_container_sees_them() {
    let (plane, seen) = start(square_app(2, 1), Behaviour::default(), local()).await;
    let mut c = client(&plane).await;
    // Each of these killed container processes: cbor-x throws on them (or on what they decode to).
    for (cbor, says) in [
        (vec![0x81, 0x03, 0xff, 0xff], "2 byte(s) follow the end of the value"),
        (vec![0x81, 0xd8, 0x1d, 0x00], "CBOR tag 29 is not one berth decodes"),
        (vec![0x81, 0xd9, 0x01, 0x02, 0x01], "tag 258 (Set) must wrap an array"),
        (vec![0x81, 0xd8, 0x1b, 0x82, 0x00, 0x00], "CBOR tag 27"),
        (vec![0x81, 0xd8, 0xe1, 0x00], "CBOR tag 225"),
        (vec![0x81, 0x5f, 0x41, 0x01, 0xff], "indefinite-length string"),
        (vec![0x81, 0x82, 0x01], "ends in the middle of a value"),
    ] {
        let e = c.invoke(pb::InvokeRequest { function: square_ref(), args: cbor.clone() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{cbor:x?}: {e:?}");
        assert!(e.message().contains(says), "{cbor:x?}: {}", e.message());
        assert!(e.message().starts_with("args are not a value berth can pass to square"), "{}", e.message());
        assert!(!e.message().contains("Semantic") && !e.message().contains("Io("), "no debug text: {}", e.message());
        // Spawn and Map check the same way.
        let e = c.spawn(pb::InvokeRequest { function: square_ref(), args: cbor.clone() }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "spawn {cbor:x?}");
    }
    let inputs = vec![
        pb::MapRequest { item: Some(map_request::Item::Function(square_ref().unwrap())) },
        pb::MapRequest { item: Some(map_request::Item::Input(pb::MapInput { index: 0, args: args(&[3]) })) },
        pb::MapRequest {
            item: Some(map_request::Item::Input(pb::MapInput { index: 1, args: vec![0x81, 0xd8, 0x1d, 0] })),
        },
    ];
    let mut out = c.map(tokio_stream::iter(inputs)).await.expect("map").into_inner();
    let first = out.next().await.expect("a result").expect("ok");
    assert_eq!((first.index, int(first.result.as_ref().unwrap())), (0, 9));
    let end = out.next().await.expect("the status").unwrap_err();
    assert_eq!(end.code(), Code::InvalidArgument);
    assert!(end.message().contains("args of input 1") && end.message().contains("tag 29"), "{}", end.message());
    // Only the one good input ever reached a container.
    assert_eq!(seen.lock().unwrap().executed.len(), 1);
    plane.shutdown().await;
}

#[tokio::test]
async fn wrong_arity_is_refused_naming_what_the_function_takes() {
    let (plane, seen) = start(square_app(0, 1), Behaviour::default(), local()).await;
    let mut c = client(&plane).await;
    for (xs, holds) in [(&[][..], 0), (&[1, 2, 3][..], 3)] {
        let e = c.invoke(pb::InvokeRequest { function: square_ref(), args: args(xs) }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert_eq!(e.message(), format!("square takes exactly 1 argument; args hold {holds}"));
    }
    assert!(seen.lock().unwrap().executed.is_empty());
    plane.shutdown().await;
}

#[tokio::test]
async fn garbage_and_huge_names_are_invalid_argument_with_a_short_message() {
    let (plane, _) = start(square_app(0, 1), Behaviour::default(), local()).await;
    // Not protobuf at all, and a string field (app, field 1 of FunctionRef) that is not UTF-8.
    let e = invoke_raw(&plane, vec![0xff, 0xff, 0xff, 0x07]).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("not a valid berth.v1.InvokeRequest"), "{}", e.message());
    let e = invoke_raw(&plane, vec![0x0a, 0x04, 0x0a, 0x02, 0xc3, 0x28]).await;
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("UTF-8"), "{}", e.message());

    let mut c = client(&plane).await;
    let long = "x".repeat(10_000);
    let f = pb::FunctionRef { app: long.clone(), function: long.clone(), method: long, ..Default::default() };
    let e = c.invoke(pb::InvokeRequest { function: Some(f), args: args(&[1]) }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains("(10000 bytes)") && e.message().len() < 200, "{}", e.message());
    let e =
        c.get_result(pb::GetResultRequest { function_call_id: "y".repeat(10_000), timeout: 0.0 }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().len() < 400, "{}", e.message());
    plane.shutdown().await;
}

#[tokio::test]
async fn a_map_caller_that_reads_nothing_stops_being_read_and_then_gets_every_result() {
    const MAP_WINDOW: usize = 100;
    // 16 KiB results: the caller's HTTP/2 receive window (2 MiB) holds about 128 of them.
    let behaviour = Behaviour { result_bytes: Some(16 << 10), ..Behaviour::default() };
    let (plane, seen) = start(square_app(0, 1), behaviour, ServeOptions { map_window: MAP_WINDOW, ..local() }).await;
    let mut c = client(&plane).await;
    let n = 20 * MAP_WINDOW as u64;
    let requests = std::iter::once(map_first()).chain((0..n).map(map_input));
    let mut stream = c.map(tokio_stream::iter(requests)).await.expect("map").into_inner();
    let ran = executions_settle(&seen).await;
    // The window, plus what the caller's own transport takes in before it stops (its HTTP/2
    // window), plus what is on its way.
    assert!(
        ran <= 4 * MAP_WINDOW,
        "{ran} of {n} inputs ran for a caller that read none: results must hold its inputs back"
    );
    assert!(ran >= MAP_WINDOW / 2, "the window was used: {ran}");
    // Reading lets the rest in; every input gets its one result.
    let mut got = HashMap::new();
    drain_map(&mut stream, &mut got).await.expect("the stream ends OK");
    assert_eq!(got.len(), n as usize);
    plane.shutdown().await;
}

#[tokio::test]
async fn a_spawned_calls_result_expires_after_the_ttl_and_get_result_says_so() {
    let opts = ServeOptions { result_ttl: Duration::from_millis(300), ..local() };
    let (plane, _) = start(square_app(0, 1), Behaviour::default(), opts).await;
    let mut c = client(&plane).await;
    let kept = c.spawn(pb::InvokeRequest { function: square_ref(), args: args(&[3]) }).await.unwrap().into_inner();
    let r = c
        .get_result(pb::GetResultRequest { function_call_id: kept.function_call_id.clone(), timeout: 10.0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(int(r.result.as_ref().expect("collected within the TTL")), 9);

    let left = c.spawn(pb::InvokeRequest { function: square_ref(), args: args(&[4]) }).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let e = c
        .get_result(pb::GetResultRequest { function_call_id: left.function_call_id.clone(), timeout: 0.0 })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("is no longer kept") && e.message().contains("--result-ttl"), "{}", e.message());
    let e =
        c.get_result(pb::GetResultRequest { function_call_id: "fc-999999".into(), timeout: 0.0 }).await.unwrap_err();
    assert!(e.message().contains("no spawned call"), "an id never issued reads differently: {}", e.message());
    plane.shutdown().await;
}

/// Modal keeps `minContainers` warm even before the first call: the pool starts with the server.
#[tokio::test]
async fn min_containers_are_warm_before_the_first_call() {
    let mut registry = square_app(0, 2);
    registry.functions[0].spec.min_containers = 1;
    let (plane, seen) = start(registry, Behaviour::default(), local()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.lock().unwrap().hooks.contains(&(1, pb::Phase::Enter as i32)) {
        assert!(tokio::time::Instant::now() < deadline, "no container entered without a call");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The first call (no parameters: the defaults) uses that pool, not a new one.
    let mut c = client(&plane).await;
    let r = c.invoke(pb::InvokeRequest { function: square_ref(), args: args(&[3]) }).await.expect("invoke");
    assert_eq!(int(r.into_inner().result.as_ref().unwrap()), 9);
    assert_eq!(seen.lock().unwrap().started, vec![1], "one container, started with the server");
    plane.shutdown().await;
}

/// SIGINT to a container (it says Draining, interrupted): its running input is aborted as
/// "rescheduled" and runs again on another container without spending a retry (retries: 0);
/// the interrupted container's late answer is not the result.
#[tokio::test]
async fn an_interrupted_containers_input_runs_again_elsewhere_without_a_retry() {
    let b = Behaviour { interrupted_on_first_exec: HashSet::from([1]), ..Behaviour::default() };
    let (plane, seen) = start(square_app(0, 2), b, local()).await;
    let mut c = client(&plane).await;
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        c.invoke(pb::InvokeRequest { function: square_ref(), args: args(&[5]) }),
    )
    .await
    .expect("answered in time")
    .expect("invoke");
    assert_eq!(int(r.into_inner().result.as_ref().unwrap()), 25);
    {
        let seen = seen.lock().unwrap();
        let aborts: Vec<_> = seen.aborts.iter().map(|(c, _, r)| (*c, r.as_str())).collect();
        assert_eq!(aborts, vec![(1, "rescheduled")]);
        assert_eq!(seen.started, vec![1, 2]);
    }
    plane.shutdown().await;
}

/// The forced stop (a second Ctrl-C) during a shutdown that waits for queued inputs: the
/// shutdown returns, and every caller is answered cancelled (it used to wait forever for inputs
/// no container would run).
#[tokio::test]
async fn a_kill_ends_a_shutdown_that_waits_for_queued_inputs() {
    let b = Behaviour { delay: Duration::from_secs(3600), ..Behaviour::default() };
    let (plane, seen) = start(square_app(0, 1), b, local()).await;
    let c = client(&plane).await;
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move { c.invoke(pb::InvokeRequest { function: square_ref(), args: args(&[i]) }).await })
        })
        .collect();
    // Four go to the container (its slots), six wait in the queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.lock().unwrap().hooks.contains(&(1, pb::Phase::Enter as i32)) {
        assert!(tokio::time::Instant::now() < deadline, "the container entered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let killer = plane.killer();
    let shutdown = tokio::spawn(plane.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!shutdown.is_finished(), "a shutdown waits for accepted inputs");
    killer.kill();
    tokio::time::timeout(Duration::from_secs(10), shutdown).await.expect("the shutdown ends after a kill").unwrap();
    for call in calls {
        let r = call.await.unwrap().expect("answered").into_inner();
        assert_eq!(err_name(r.result.as_ref().unwrap()), "InputCancelledError");
    }
}

/// One execution of a @batched method answers its whole batch in one message: eight results of
/// 600 KiB under a 1 MiB cap (each within it, the message far over it) reach their callers. The
/// container's stream used to end on that message, as if the container had died.
#[tokio::test]
async fn a_batch_of_large_results_fits_through_however_the_cap_compares_to_their_sum() {
    let mut registry = square_app(0, 1);
    registry.functions[0].spec.methods = vec![MethodSpec {
        batching: Some(berth_core::Batching::new(8, Duration::from_millis(200)).unwrap()),
        ..MethodSpec::default()
    }];
    let b = Behaviour { result_bytes: Some(600 << 10), ..Behaviour::default() };
    let (plane, seen) = start(registry, b, ServeOptions { max_message_bytes: 1 << 20, ..local() }).await;
    let mut c = client(&plane).await;
    let requests = std::iter::once(map_first()).chain((0..8).map(map_input));
    let mut stream = c.map(tokio_stream::iter(requests)).await.expect("map").into_inner();
    let mut got = HashMap::new();
    tokio::time::timeout(Duration::from_secs(20), drain_map(&mut stream, &mut got))
        .await
        .expect("answered in time")
        .expect("the stream ends OK");
    assert_eq!(got.len(), 8);
    for r in got.values() {
        assert!(
            matches!(&r.outcome, Some(Outcome::Value(v)) if v.len() > 600 << 10),
            "{:?}",
            r.outcome.as_ref().map(|_| ())
        );
    }
    assert_eq!(seen.lock().unwrap().started, vec![1], "the container was not lost");
    plane.shutdown().await;
}
