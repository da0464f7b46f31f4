#![allow(clippy::unwrap_used)]
//! Web apps with a server of their own (`@webServer`, `@nodeApp`; src/proxy.rs) end to end
//! over loopback: fake containers that report their server's port on the Attach stream, the
//! server itself (hyper, in the test), and a hand-written HTTP client.
mod common;

use common::{bounded, exchange, Reply};

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_core::{MethodSpec, PoolSpec};
use berth_proto::v1::{self as pb, container_message, control_message};
use berth_server::{ControlPlane, ExitReporter, FunctionDef, Registry, ServeOptions, Spawner, WebSpec};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_stream::StreamExt;

const LIMIT: Duration = Duration::from_secs(30);

/// What the app's server and the test share.
#[derive(Default)]
struct AppSide {
    /// Ends the container the server runs in.
    die: Notify,
    /// Bytes of `/flood`'s answer the server has been asked for so far.
    flooded: AtomicUsize,
    /// Containers started.
    spawned: AtomicUsize,
}

/// `/flood`'s answer: 256 MiB in chunks of 64 KiB, each made only when the server asks for it.
const FLOOD: usize = 256 << 20;
const CHUNK: usize = 64 << 10;

/// The app's server: `/slow` answers after 5 s; `/die` ends the container it runs in and drops
/// the connection unanswered; `/flood` writes as fast as it is read; anything else is its
/// method, URL, prefix and body, with a header of its own. It listens on 127.0.0.1 (its port
/// returned) and on an abstract Unix socket (its name returned), bound as Node binds one: by the
/// whole of `sun_path`, the name padded with NULs (src/run/web.ts `sideDoor`).
async fn app_server(app: Arc<AppSide>) -> (u16, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let name = format!("berth-test-{}-{port}", std::process::id());
    let mut padded = format!("\0{name}");
    padded.extend(std::iter::repeat_n('\0', 108 - padded.len()));
    let unix = tokio::net::UnixListener::bind(padded).unwrap();
    let served = Arc::clone(&app);
    tokio::spawn(async move {
        loop {
            let (stream, _) = unix.accept().await.unwrap();
            serve(Arc::clone(&served), stream);
        }
    });
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            serve(Arc::clone(&app), tcp);
        }
    });
    (port, name)
}

/// Serves one connection of the app's server.
fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static>(app: Arc<AppSide>, io: S) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let app = Arc::clone(&app);
        async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            if req.uri().path() == "/die" {
                app.die.notify_waiters();
                return Err("the container died");
            }
            if req.uri().path() == "/flood" {
                let chunks = tokio_stream::iter(0..FLOOD / CHUNK).map(move |_| {
                    app.flooded.fetch_add(CHUNK, Ordering::SeqCst);
                    Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; CHUNK])))
                });
                return Ok(Response::new(StreamBody::new(chunks).boxed()));
            }
            let prefix = req.headers().get("x-forwarded-prefix").map(|v| v.to_str().unwrap().to_owned());
            let head = format!("{} {} prefix={} body=", req.method(), req.uri(), prefix.unwrap_or_default());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let mut res = Response::new(Full::new(Bytes::from([head.as_bytes(), &body].concat())).boxed());
            res.headers_mut().insert("x-app", "yes".parse().unwrap());
            Ok(res)
        }
    });
    tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(io), service));
}

/// Containers that report a server for their web app member (`site`: the app's server, for
/// every class but `Gone`; `gone`: a port nothing listens on; `Side`: the app's abstract socket
/// and `gone`; `SideGone`: a socket nothing listens on and `site`) and count the executions
/// they are sent.
struct Containers {
    tasks: common::Tasks,
    site: u16,
    socket: String,
    gone: u16,
    executions: Arc<AtomicUsize>,
    app: Arc<AppSide>,
}

impl Spawner for Containers {
    fn spawn(&self, def: &FunctionDef, _: &[u8], container: u32, token: &str, endpoint: &str, _: ExitReporter) {
        let (port, socket) = match def.name.as_str() {
            "Gone" => (self.gone, String::new()),
            "Side" => (self.gone, self.socket.clone()),
            "SideGone" => (self.site, format!("{}-not-there", self.socket)),
            _ => (self.site, String::new()),
        };
        let executions = Arc::clone(&self.executions);
        let app = Arc::clone(&self.app);
        app.spawned.fetch_add(1, Ordering::SeqCst);
        let token = token.to_owned();
        let endpoint = endpoint.to_owned();
        self.tasks.start(container, async move {
            let (out, mut inbound) = common::attach(endpoint, container, token, 8).await;
            let send = |m| {
                let _ = out.send(pb::ContainerMessage { msg: Some(m) });
            };
            loop {
                let msg = tokio::select! {
                    msg = inbound.next() => msg,
                    // Its process ended: the Attach stream ends with it.
                    _ = app.die.notified() => return,
                };
                let Some(Ok(msg)) = msg else { return };
                match msg.msg {
                    Some(control_message::Msg::RunHook(h)) => {
                        // As src/run/container.ts does: the server, started by @enter, before
                        // the hook's HookDone.
                        if h.phase == pb::Phase::Enter as i32 {
                            let server = pb::AppServer { method: 0, port: u32::from(port), socket: socket.clone() };
                            send(container_message::Msg::AppServer(server));
                        }
                        send(container_message::Msg::HookDone(pb::HookDone { phase: h.phase, ok: true, error: None }));
                    }
                    Some(control_message::Msg::Execute(_) | control_message::Msg::ExecuteBatch(_)) => {
                        executions.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(control_message::Msg::Stop(_)) => return,
                    _ => {}
                }
            }
        });
    }

    fn stop(&self, container: u32) {
        self.tasks.stop(container);
    }
}

fn web_server(name: &str, label: &str, timeout: Duration) -> FunctionDef {
    let mut spec = PoolSpec::new(name, vec![MethodSpec::default()]);
    spec.timeout = timeout;
    // One container of one slot: a request that is answered had the slot to itself.
    spec.max_containers = 1;
    spec.max_inputs = 1;
    spec.target_inputs = 1;
    // One request waits; a third is refused (maxPendingInputs).
    spec.max_pending = Some(1);
    // A web app's server starts after @enter (src/run/pool.ts: hasEnter).
    spec.hooks.enter = true;
    FunctionDef {
        app: "demo".into(),
        name: name.into(),
        methods: vec!["start".into()],
        is_class: true,
        spec,
        arity: Vec::new(),
        params: Vec::new(),
        not_callable: Vec::new(),
        generators: vec![true],
        web: vec![WebSpec {
            index: 0,
            method: "*".into(),
            label: Some(label.into()),
            requires_auth: false,
            takes_request: true,
            app: Some("webServer".into()),
        }],
        schedule: None,
        tags: Vec::new(),
    }
}

async fn start() -> (ControlPlane, SocketAddr, Arc<AtomicUsize>, Arc<AppSide>) {
    let gone = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let executions = Arc::new(AtomicUsize::new(0));
    let app = Arc::new(AppSide::default());
    let (site, socket) = app_server(Arc::clone(&app)).await;
    let containers = Containers {
        tasks: common::Tasks::default(),
        site,
        socket,
        gone,
        executions: executions.clone(),
        app: app.clone(),
    };
    let second = Duration::from_secs(1);
    let registry = Registry {
        functions: vec![
            web_server("Site", "site", second),
            web_server("Gone", "gone", second),
            // The same server, for answers longer than a second.
            web_server("Long", "long", 30 * second),
            web_server("Side", "side", second),
            web_server("SideGone", "side-gone", second),
        ],
    };
    let opts = ServeOptions {
        addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeOptions::default()
    };
    let plane = ControlPlane::start(registry, containers, opts).await.unwrap();
    let addr = plane.http_addr().unwrap();
    (plane, addr, executions, app)
}

#[tokio::test]
async fn requests_go_to_the_server_the_container_reported_not_to_the_container() {
    bounded(LIMIT, async {
        let (plane, addr, executions, _) = start().await;
        let Reply { status, headers, body } = exchange(addr, "GET /demo/site/a/b?q=1 HTTP/1.1", b"").await;
        assert_eq!(status, 200);
        assert_eq!(String::from_utf8(body).unwrap(), "GET /a/b?q=1 prefix=/demo/site body=");
        assert_eq!(headers["x-app"], "yes");
        assert!(headers["x-berth-function-call-id"].starts_with("fc-"));
        let Reply { status, body, .. } =
            exchange(addr, "POST /demo/site/items HTTP/1.1\r\nContent-Length: 5", b"hello").await;
        assert_eq!(
            (status, String::from_utf8(body).unwrap().as_str()),
            (200, "POST /items prefix=/demo/site body=hello")
        );
        let Reply { status, body, .. } =
            exchange(addr, "PUT /demo/site HTTP/1.1\r\nTransfer-Encoding: chunked", b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")
                .await;
        assert_eq!((status, String::from_utf8(body).unwrap().as_str()), (200, "PUT / prefix=/demo/site body=abc"));
        assert_eq!(executions.load(Ordering::SeqCst), 0, "no request reached the container as an execution");
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn requests_go_to_the_abstract_socket_a_container_names_and_to_the_port_when_it_is_gone() {
    bounded(LIMIT, async {
        let (plane, addr, _, _) = start().await;
        // Nothing listens on Side's port: its answer came through its socket.
        let Reply { status, body, .. } = exchange(addr, "GET /demo/side/x HTTP/1.1", b"").await;
        assert_eq!((status, String::from_utf8(body).unwrap().as_str()), (200, "GET /x prefix=/demo/side body="));
        let Reply { status, body, .. } = exchange(addr, "GET /demo/side-gone/y HTTP/1.1", b"").await;
        assert_eq!((status, String::from_utf8(body).unwrap().as_str()), (200, "GET /y prefix=/demo/side-gone body="));
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_server_that_is_not_there_is_502_and_one_past_the_timeout_504() {
    bounded(LIMIT, async {
        let (plane, addr, _, _) = start().await;
        let Reply { status, body, .. } = exchange(addr, "GET /demo/gone/x HTTP/1.1", b"").await;
        assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
        let error: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["name"], "WebServerError");
        assert!(error["error"]["message"].as_str().unwrap().contains("could not connect"), "{error}");
        let Reply { status, .. } = exchange(addr, "GET /demo/site/slow HTTP/1.1", b"").await;
        assert_eq!(status, 504);
        // The slot the timed-out request held is free again: the next request is answered.
        let Reply { status, .. } = exchange(addr, "GET /demo/site/x HTTP/1.1", b"").await;
        assert_eq!(status, 200);
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_container_that_dies_mid_request_is_502_and_the_next_request_is_served() {
    bounded(LIMIT, async {
        let (plane, addr, _, _) = start().await;
        let Reply { status, body, .. } =
            exchange(addr, "POST /demo/site/die HTTP/1.1\r\nContent-Length: 2", b"{}").await;
        assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
        let error: Json = serde_json::from_slice(&body).unwrap();
        assert_eq!(error["error"]["name"], "WebServerError", "{error}");
        // Another container takes its place.
        let Reply { status, body, .. } = exchange(addr, "GET /demo/site/x HTTP/1.1", b"").await;
        assert_eq!((status, String::from_utf8(body).unwrap().as_str()), (200, "GET /x prefix=/demo/site body="));
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn requests_wait_for_the_slot_and_past_max_pending_inputs_are_429() {
    bounded(LIMIT, async {
        let (plane, addr, _, _) = start().await;
        // The one slot, held by an answer its client does not read.
        let mut holder = TcpStream::connect(addr).await.unwrap();
        holder.write_all(format!("GET /demo/long/flood HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        holder.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        // The next waits in the queue; the one after is refused.
        let waiting = tokio::spawn(exchange(addr, "GET /demo/long/second HTTP/1.1", b""));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the second request waits for the slot");
        let Reply { status, headers, body } = exchange(addr, "GET /demo/long/third HTTP/1.1", b"").await;
        assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
        assert_eq!(headers["retry-after"], "1");
        // The holder leaves: its input is cancelled, and the waiting request gets the slot.
        drop(holder);
        let Reply { status, body, .. } = waiting.await.unwrap();
        assert_eq!((status, String::from_utf8(body).unwrap().as_str()), (200, "GET /second prefix=/demo/long body="));
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn past_its_timeout_a_request_whose_client_does_not_read_frees_its_slot_at_once() {
    bounded(LIMIT, async {
        let (plane, addr, _, app) = start().await;
        // `site` times out after 1 s; its client reads the head and nothing more.
        let mut stalled = TcpStream::connect(addr).await.unwrap();
        stalled.write_all(format!("GET /demo/site/flood HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        stalled.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        // The one slot is free once the timeout has passed, on the same container: not after
        // the grace the scheduler gives a container to answer an abort before replacing it.
        let started = tokio::time::Instant::now();
        let Reply { status, .. } = exchange(addr, "GET /demo/site/x HTTP/1.1", b"").await;
        assert_eq!(status, 200);
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert_eq!(app.spawned.load(Ordering::SeqCst), 1, "the container was not replaced");
        drop(stalled);
        plane.shutdown().await;
    })
    .await
}

#[tokio::test]
async fn a_client_that_does_not_read_holds_the_app_back_and_one_that_leaves_frees_the_slot() {
    bounded(LIMIT, async {
        let (plane, addr, _, app) = start().await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET /demo/long/flood HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
        let mut head = [0u8; 16];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head[..12], b"HTTP/1.1 200");
        // The client reads no further: the app is asked for no more than the sockets and
        // buffers between them hold, a few MiB of its 256.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let asked = app.flooded.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let later = app.flooded.load(Ordering::SeqCst);
        assert_eq!(asked, later, "the app waits while the client does not read");
        assert!(asked < 64 << 20, "{asked} bytes asked of the app");
        // Reading on, the client gets more.
        let mut buf = vec![0u8; 8 << 20];
        let mut read = 0;
        while read < buf.len() {
            let n = s.read(&mut buf[read..]).await.unwrap();
            assert!(n > 0, "the answer ended after {read} bytes");
            read += n;
        }
        assert!(app.flooded.load(Ordering::SeqCst) > asked);
        // The client leaves: the input is cancelled, the app's connection closes, and the slot
        // serves the next request.
        drop(s);
        let Reply { status, .. } = exchange(addr, "GET /demo/long/x HTTP/1.1", b"").await;
        assert_eq!(status, 200);
        plane.shutdown().await;
    })
    .await
}
