#![allow(clippy::unwrap_used)]
//! The listeners against callers that hold resources: sockets that never handshake, idle
//! connections, floods over the connection cap, stalled HTTP bodies. Real sockets on
//! loopback, a few hundred at most, with deadlines of a second or two set through
//! ServeOptions; and the gRPC surface that must not leak (reflection v1alpha, Attach).
mod common;

use common::bounded;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_core::{MethodSpec, PoolSpec};
use berth_proto::v1::{
    self as pb, container_message, containers_client::ContainersClient, functions_client::FunctionsClient, map_request,
};
use berth_server::{ConnCounters, ControlPlane, ExitReporter, FunctionDef, Registry, ServeOptions, Spawner};
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

/// Every test runs within this.
const LIMIT: Duration = Duration::from_secs(60);

/// Containers that square their input; `slow` takes 2.5 s. With `attach` off they never
/// attach, and only say which id and token they were given.
#[derive(Default)]
struct FakeSpawner {
    no_attach: bool,
    given: Arc<Mutex<Vec<(u32, String)>>>,
    tasks: common::Tasks,
}

impl Spawner for FakeSpawner {
    fn spawn(&self, def: &FunctionDef, _: &[u8], container: u32, token: &str, endpoint: &str, _: ExitReporter) {
        self.given.lock().unwrap().push((container, token.to_string()));
        if self.no_attach {
            return;
        }
        let name = def.name.clone();
        let serve = common::attach_and_stream(endpoint.to_string(), container, token.to_string(), move |e, out| {
            let (slow, ticks) = (name == "slow", name == "ticks");
            async move {
                if slow {
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                }
                if ticks {
                    return tick(&e, &out).await;
                }
                common::squares(&e)
            }
        });
        self.tasks.start(container, serve);
    }

    fn stop(&self, container: u32) {
        self.tasks.stop(container);
    }
}

/// Generator `ticks`: yields 0, 1, 2, each after 1.5 s of silence, then ends.
async fn tick(e: &pb::Execute, out: &common::Outbox) -> Vec<pb::Result> {
    for input in &e.inputs {
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            let value = common::cbor(&ciborium::Value::Integer(i.into()));
            let items = pb::Items { input_id: input.input_id, attempt: input.attempt, values: vec![value] };
            let _ = out.send(pb::ContainerMessage { msg: Some(container_message::Msg::Items(items)) });
        }
    }
    let end = common::cbor(&ciborium::Value::Null);
    e.inputs.iter().map(|_| pb::Result { outcome: Some(pb::result::Outcome::Value(end.clone())) }).collect()
}

fn app() -> Registry {
    let def = |name: &str| common::function("demo", name, PoolSpec::new(name, vec![MethodSpec::default()]), Vec::new());
    let mut ticks = def("ticks");
    ticks.generators = vec![true];
    Registry { functions: vec![def("square"), def("slow"), ticks] }
}

fn opts() -> ServeOptions {
    ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeOptions::default()
    }
}

async fn start(opts: ServeOptions) -> ControlPlane {
    ControlPlane::start(app(), FakeSpawner::default(), opts).await.unwrap()
}

fn func(name: &str) -> Option<pb::FunctionRef> {
    Some(pb::FunctionRef { app: "demo".into(), function: name.into(), ..Default::default() })
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: what a client sends right after the preface.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Reads (and discards) until the server closes the connection; how long that took.
/// Panics if it is still open after `within`.
async fn closed_by_server(mut s: TcpStream, within: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server closed the connection within {within:?}"));
    start.elapsed()
}

/// Waits until the counters satisfy `ok` (they are bumped just before the close a client
/// sees, so this is quick); panics with the last snapshot after 10 s.
async fn counters_reach(plane: &ControlPlane, ok: impl Fn(&ConnCounters) -> bool) -> ConnCounters {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = plane.counters();
        if ok(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "counters never got there: {c:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one HTTP/1.1 answer with a Content-Length body, leaving the connection open.
async fn read_reply(s: &mut TcpStream) -> Reply {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(raw[..end].to_vec()).unwrap();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let len: usize = head
                .split("\r\n")
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.trim().parse().unwrap())
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                return Reply { status, body: raw[end + 4..end + 4 + len].to_vec() };
            }
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed before a whole answer: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
}

async fn health(grpc: SocketAddr) -> Result<(), String> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    h.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Sockets that connect and never send the HTTP/2 preface, or start an HTTP head and never
/// finish it (even trickling a byte at a time), are closed at `handshake_timeout`; before,
/// h2 waited for the preface forever and hyper for the head 30 s.
#[tokio::test]
async fn connections_that_never_handshake_are_closed_after_handshake_timeout() {
    bounded(LIMIT, async {
        let opts = ServeOptions { handshake_timeout: Duration::from_secs(1), ..opts() };
        let plane = start(opts).await;
        let (grpc, http) = (plane.local_addr(), plane.http_addr().unwrap());
        let mut held = Vec::new();
        for i in 0..150 {
            let mut s = TcpStream::connect(grpc).await.unwrap();
            if i % 5 == 0 {
                s.write_all(&H2_PREFACE[..10]).await.unwrap();
            }
            held.push(s);
        }
        for i in 0..50 {
            let mut s = TcpStream::connect(http).await.unwrap();
            if i % 2 == 0 {
                s.write_all(b"POST /demo/square HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            }
            held.push(s);
        }
        let waits: Vec<_> =
            held.into_iter().map(|s| tokio::spawn(closed_by_server(s, Duration::from_secs(10)))).collect();
        // A head trickled a byte every 200 ms: each read is prompt, the head never ends.
        let trickles: Vec<_> = (0..5)
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(http).await.unwrap();
                    let start = Instant::now();
                    for b in b"POST /demo/square HTTP/1.1\r\nHost: x\r\nX-Slow: ".iter().cycle() {
                        if s.write_all(&[*b]).await.is_err() {
                            return start.elapsed();
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        assert!(start.elapsed() < Duration::from_secs(10), "a trickled head was closed in time");
                    }
                    unreachable!()
                })
            })
            .collect();
        for w in waits {
            let took = w.await.unwrap();
            assert!(took >= Duration::from_millis(800), "closed by the deadline, not at once: {took:?}");
        }
        for t in trickles {
            t.await.unwrap();
        }
        let c = counters_reach(&plane, |c| c.handshake_timeouts >= 205).await;
        assert_eq!((c.handshake_timeouts, c.idle_closes, c.refused_over_cap), (205, 0, 0), "{c:?}");

        // Callers that do talk are served as before.
        health(grpc).await.unwrap();
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_reply(&mut s).await.status, 200);
        plane.shutdown().await;
    })
    .await
}

/// A connection with nothing open and no traffic is closed at `idle_timeout` (gRPC after
/// its handshake, HTTP between keep-alive requests); one with a call open (a Map waiting
/// on its next input, a unary call on a slow function, an HTTP call) never is.
#[tokio::test]
async fn idle_connections_close_but_open_calls_never_do() {
    bounded(LIMIT, async {
        let opts =
            ServeOptions { idle_timeout: Duration::from_secs(1), handshake_timeout: Duration::from_secs(5), ..opts() };
        let plane = start(opts).await;
        let (grpc, http) = (plane.local_addr(), plane.http_addr().unwrap());

        let mut s = TcpStream::connect(grpc).await.unwrap();
        s.write_all(&[H2_PREFACE, H2_SETTINGS].concat()).await.unwrap();
        let grpc_idle = tokio::spawn(closed_by_server(s, Duration::from_secs(10)));
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert_eq!(read_reply(&mut s).await.status, 200);
        let http_idle = tokio::spawn(closed_by_server(s, Duration::from_secs(10)));

        // A Map whose next input comes after 3 idle timeouts of silence on its connection.
        let mut c = FunctionsClient::connect(format!("http://{grpc}")).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let first = pb::MapRequest { item: Some(map_request::Item::Function(func("square").unwrap())) };
        tx.send(first).unwrap();
        let mut results = c.map(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut other = c.clone();
        let slow = tokio::spawn(async move {
            other
                .invoke(pb::InvokeRequest { function: func("slow"), args: common::args(5) })
                .await
                .map(|r| r.into_inner())
        });
        let slow_http = tokio::spawn(async move {
            let mut s = TcpStream::connect(http).await.unwrap();
            s.write_all(b"POST /demo/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n[6]").await.unwrap();
            read_reply(&mut s).await
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
        let input = pb::MapInput { index: 0, args: common::args(7) };
        tx.send(pb::MapRequest { item: Some(map_request::Item::Input(input)) }).unwrap();
        let m = results.message().await.expect("the Map's connection is still open").unwrap();
        assert_eq!(common::int(m.result.as_ref().unwrap()), 49);
        drop(tx);
        assert!(results.message().await.unwrap().is_none());
        let r = slow
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("a 2.5 s call outlives a 1 s idle timeout: {e:?} {:?}", plane.counters()));
        assert_eq!(common::int(r.result.as_ref().unwrap()), 25);
        let r = slow_http.await.unwrap();
        assert_eq!((r.status, r.json()), (200, serde_json::json!(36)));

        for (what, idle) in [("gRPC", grpc_idle), ("HTTP keep-alive", http_idle)] {
            let took = idle.await.unwrap();
            assert!(took >= Duration::from_millis(800), "{what}: closed for idleness, not at once: {took:?}");
        }
        let c = counters_reach(&plane, |c| c.idle_closes >= 2).await;
        assert_eq!((c.handshake_timeouts, c.refused_over_cap), (0, 0), "{c:?}");
        plane.shutdown().await;
    })
    .await
}

/// A generator's HTTP answer is an open request until its last item: items further apart than
/// `idle_timeout` keep flowing on the same connection, which closes for idleness only after.
#[tokio::test]
async fn an_http_stream_with_items_further_apart_than_idle_timeout_is_not_cut() {
    bounded(LIMIT, async {
        let opts =
            ServeOptions { idle_timeout: Duration::from_secs(1), handshake_timeout: Duration::from_secs(5), ..opts() };
        let plane = start(opts).await;
        let mut s = TcpStream::connect(plane.http_addr().unwrap()).await.unwrap();
        s.write_all(b"POST /demo/ticks HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]").await.unwrap();
        // Chunked: the head, then each line in its own chunk, then the last chunk.
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while !raw.ends_with(b"0\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream was cut: {} {:?}", String::from_utf8_lossy(&raw), plane.counters());
            raw.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(raw).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("content-type: application/x-ndjson\r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
        let body = text.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(body, "2\r\n0\n\r\n2\r\n1\n\r\n2\r\n2\n\r\n0\r\n\r\n");
        assert_eq!(plane.counters().idle_closes, 0);
        // After its end the connection is idle like any other.
        closed_by_server(s, Duration::from_secs(10)).await;
        counters_reach(&plane, |c| c.idle_closes == 1).await;
        plane.shutdown().await;
    })
    .await
}

/// Past `max_connections`, a listener accepts and closes at once, counting each; the ones
/// it holds stay open, a slot frees when one closes, and each listener has its own cap.
#[tokio::test]
async fn connections_over_the_cap_are_refused_and_counted() {
    bounded(LIMIT, async {
        let cap = 8;
        let opts = ServeOptions { max_connections: cap, handshake_timeout: Duration::from_secs(30), ..opts() };
        let plane = start(opts).await;
        let (grpc, http) = (plane.local_addr(), plane.http_addr().unwrap());
        let mut held = Vec::new();
        for _ in 0..cap {
            held.push(TcpStream::connect(grpc).await.unwrap());
        }
        let mut over = Vec::new();
        for _ in 0..20 {
            over.push(tokio::spawn(closed_by_server(TcpStream::connect(grpc).await.unwrap(), Duration::from_secs(5))));
        }
        for o in over {
            o.await.unwrap();
        }
        let c = counters_reach(&plane, |c| c.refused_over_cap >= 20).await;
        assert_eq!((c.refused_over_cap, c.handshake_timeouts), (20, 0), "{c:?}");
        for s in &held {
            // The server's SETTINGS may be there to read; an end of stream may not.
            let mut buf = [0u8; 1024];
            loop {
                match s.try_read(&mut buf) {
                    Ok(0) => panic!("a held connection was closed"),
                    Ok(_) => {}
                    Err(e) => {
                        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
                        break;
                    }
                }
            }
        }

        // HTTP counts its own connections: it serves while gRPC is full, and has its cap.
        let mut held_http = Vec::new();
        for _ in 0..cap {
            let mut s = TcpStream::connect(http).await.unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
            assert_eq!(read_reply(&mut s).await.status, 200);
            held_http.push(s);
        }
        closed_by_server(TcpStream::connect(http).await.unwrap(), Duration::from_secs(5)).await;
        counters_reach(&plane, |c| c.refused_over_cap == 21).await;

        // A closed connection frees its slot.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(10);
        while let Err(e) = health(grpc).await {
            assert!(Instant::now() < deadline, "a slot freed within 10 s: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(held_http);
        drop(held);
        plane.shutdown().await;
    })
    .await
}

/// HTTP bodies that stop (chunked and silent, shorter than their Content-Length, or a
/// trickle whose next chunk is later than `body_timeout`) are answered 408 in the ingress's JSON
/// error shape, the connection closes, and each is counted. So is a slowloris trickle that keeps
/// within the timeout per chunk but comes slower than `min_body_rate` after it; a slow body
/// above that rate is served.
#[tokio::test]
async fn stalled_http_bodies_are_answered_408_and_dropped() {
    bounded(LIMIT, async {
        let opts = ServeOptions { body_timeout: Duration::from_secs(1), min_body_rate: 4, ..opts() };
        let plane = start(opts).await;
        let http = plane.http_addr().unwrap();
        let chunked = "POST /demo/square HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut calls = Vec::new();
        for i in 0..60 {
            calls.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(http).await.unwrap();
                match i % 3 {
                    0 => s.write_all(chunked.as_bytes()).await.unwrap(),
                    1 => {
                        let head = "POST /demo/square HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[4";
                        s.write_all(head.as_bytes()).await.unwrap();
                    }
                    _ => {
                        s.write_all(chunked.as_bytes()).await.unwrap();
                        s.write_all(b"1\r\n[\r\n").await.unwrap();
                    }
                }
                let reply = async {
                    let r = read_reply(&mut s).await;
                    closed_by_server(s, Duration::from_secs(5)).await;
                    r
                };
                tokio::time::timeout(Duration::from_secs(10), reply).await.expect("a 408 within 10 s")
            }));
        }
        for call in calls {
            let r = call.await.unwrap();
            assert_eq!(r.status, 408, "{r:?}");
            let j = r.json();
            assert_eq!(j["error"]["name"], "RequestTimeout", "{j}");
            assert!(j["error"]["message"].as_str().unwrap().contains("body_timeout"), "{j}");
        }
        let c = counters_reach(&plane, |c| c.stalled_bodies >= 60).await;
        assert_eq!(c.stalled_bodies, 60, "{c:?}");

        // Chunks every 200 ms: slow, but above 4 bytes a second and never a second without progress.
        let mut s = TcpStream::connect(http).await.unwrap();
        s.write_all(chunked.as_bytes()).await.unwrap();
        for part in ["[", "1", "2", "]", ""] {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let chunk = if part.is_empty() { "0\r\n\r\n".to_string() } else { format!("1\r\n{part}\r\n") };
            s.write_all(chunk.as_bytes()).await.unwrap();
        }
        let r = read_reply(&mut s).await;
        assert_eq!((r.status, r.json()), (200, serde_json::json!(144)), "{r:?}");
        assert_eq!(plane.counters().stalled_bodies, 60);

        // A byte every 800 ms: within body_timeout each time, but 1.25 bytes a second: once
        // the first second has passed, the rate's deadline for the bytes so far comes first.
        let s = TcpStream::connect(http).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        wr.write_all(chunked.as_bytes()).await.unwrap();
        let trickle = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(800)).await;
                if wr.write_all(b"1\r\n1\r\n").await.is_err() {
                    return;
                }
            }
        });
        let mut reply = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(6), rd.read_to_end(&mut reply)).await;
        assert!(read.is_ok(), "the slow body was dropped within 6 s");
        let text = String::from_utf8_lossy(&reply);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("slower than 4 bytes a second") && text.contains("min_body_rate"), "{text}");
        trickle.abort();
        assert_eq!(plane.counters().stalled_bodies, 61);
        plane.shutdown().await;
    })
    .await
}

/// grpcurl before 1.8.8 and grpcio-reflection 1.85 speak only v1alpha reflection.
#[tokio::test]
async fn reflection_v1alpha_lists_the_services() {
    bounded(LIMIT, async {
        use tonic_reflection::pb::v1alpha::{
            server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
            server_reflection_response::MessageResponse, ServerReflectionRequest,
        };
        let plane = start(opts()).await;
        let url = format!("http://{}", plane.local_addr());
        let channel = tonic::transport::Channel::from_shared(url).unwrap().connect().await.unwrap();
        let mut refl = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = refl.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let Some(MessageResponse::ListServicesResponse(list)) = resp.next().await.unwrap().unwrap().message_response
        else {
            panic!("a list of services")
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        for want in ["berth.v1.Functions", "berth.v1.Containers", "grpc.reflection.v1.ServerReflection"] {
            assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
        }
        plane.shutdown().await;
    })
    .await
}

/// Attach with an id the server expects but the wrong token, and with an id it does not
/// know: the same status and message, so a caller without a token learns nothing about
/// which containers exist.
#[tokio::test]
async fn attach_does_not_reveal_which_container_ids_exist() {
    bounded(LIMIT, async {
        let spawner = FakeSpawner { no_attach: true, ..FakeSpawner::default() };
        let given = spawner.given.clone();
        let plane = ControlPlane::start(app(), spawner, opts()).await.unwrap();
        let url = format!("http://{}", plane.local_addr());
        let mut f = FunctionsClient::connect(url.clone()).await.unwrap();
        f.spawn(pb::InvokeRequest { function: func("square"), args: common::args(2) }).await.unwrap();
        let (id, token) = loop {
            if let Some(g) = given.lock().unwrap().first().cloned() {
                break g;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut c = ContainersClient::connect(url).await.unwrap();
        let wrong_token = refused_attach(&mut c, id, format!("{token}x")).await;
        let unknown_id = refused_attach(&mut c, id + 1000, token.clone()).await;
        assert_eq!(wrong_token.code(), tonic::Code::Unauthenticated, "{wrong_token:?}");
        assert_eq!(
            (wrong_token.code(), wrong_token.message()),
            (unknown_id.code(), unknown_id.message()),
            "an unknown id and a wrong token look the same"
        );
        assert!(!wrong_token.message().contains(&id.to_string()), "{wrong_token:?}");
        // No shutdown: it would wait for the container that never attaches.
        drop(plane);
    })
    .await
}

async fn refused_attach(
    c: &mut ContainersClient<tonic::transport::Channel>,
    container_id: u32,
    token: String,
) -> tonic::Status {
    let hello = pb::ContainerMessage { msg: Some(container_message::Msg::Hello(pb::Hello { container_id, token })) };
    match c.attach(tokio_stream::iter([hello])).await {
        Ok(_) => panic!("container {container_id} attached"),
        Err(status) => status,
    }
}
