//! What the HTTP and transport tests' fake containers share: attaching, and the loop that
//! answers hooks and executions until the control plane says Stop; and a raw HTTP/1.1 exchange.
#![allow(clippy::unwrap_used, dead_code)]
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use berth_core::PoolSpec;
use berth_proto::v1::{self as pb, container_message, containers_client::ContainersClient, control_message};
use berth_server::{Arity, FunctionDef};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

/// Runs a test body within `limit`: a listener or stream that fails to end shows as a hang.
pub async fn bounded<F: Future>(limit: Duration, f: F) -> F::Output {
    tokio::time::timeout(limit, f).await.unwrap_or_else(|_| panic!("the test finished within {limit:?}"))
}

pub fn cbor(v: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

/// Attaches as `container` with `token`, grants 8 credits, answers every hook ok and every
/// execution with `answer`'s results, until Stop or the stream ends.
pub async fn attach_and_serve<F, Fut>(endpoint: String, container: u32, token: String, mut answer: F)
where
    F: FnMut(pb::Execute) -> Fut,
    Fut: Future<Output = Vec<pb::Result>>,
{
    attach_and_stream(endpoint, container, token, move |e, _| answer(e)).await
}

/// What a fake container sends on its Attach stream (a generator's Items, before its Output).
pub type Outbox = mpsc::UnboundedSender<pb::ContainerMessage>;

/// As `attach_and_serve`, with the stream's sender for `answer` to send Items on.
pub async fn attach_and_stream<F, Fut>(endpoint: String, container: u32, token: String, mut answer: F)
where
    F: FnMut(pb::Execute, Outbox) -> Fut,
    Fut: Future<Output = Vec<pb::Result>>,
{
    let mut client = ContainersClient::connect(endpoint).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let send = |m: container_message::Msg| {
        let _ = tx.send(pb::ContainerMessage { msg: Some(m) });
    };
    send(container_message::Msg::Hello(pb::Hello { container_id: container, token }));
    send(container_message::Msg::Credit(pb::Credit { slots: 8 }));
    let mut inbound = client.attach(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
    while let Some(Ok(msg)) = inbound.next().await {
        let executions = match msg.msg {
            Some(control_message::Msg::RunHook(h)) => {
                send(container_message::Msg::HookDone(pb::HookDone { phase: h.phase, ok: true, error: None }));
                continue;
            }
            Some(control_message::Msg::Execute(e)) => vec![e],
            Some(control_message::Msg::ExecuteBatch(b)) => b.executions,
            Some(control_message::Msg::Stop(_)) => return,
            _ => continue,
        };
        for e in executions {
            let exec_id = e.exec_id;
            let results = answer(e, tx.clone()).await;
            send(container_message::Msg::Output(pb::Output { exec_id, results, retryable_failure: false }));
        }
    }
}

/// Attaches as `container` with `token` and grants `slots` credits; the test drives the rest:
/// what the control plane sends comes on the returned stream, what the container says goes on
/// the outbox.
pub async fn attach(
    endpoint: String,
    container: u32,
    token: String,
    slots: u32,
) -> (Outbox, tonic::Streaming<pb::ControlMessage>) {
    let mut client = ContainersClient::connect(endpoint).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let send = |m: container_message::Msg| {
        let _ = tx.send(pb::ContainerMessage { msg: Some(m) });
    };
    send(container_message::Msg::Hello(pb::Hello { container_id: container, token }));
    send(container_message::Msg::Credit(pb::Credit { slots }));
    let inbound = client.attach(UnboundedReceiverStream::new(rx)).await.unwrap().into_inner();
    (tx, inbound)
}

/// The fake containers' tasks, by container id: a stop aborts the container's task.
#[derive(Default)]
pub struct Tasks(Mutex<HashMap<u32, tokio::task::JoinHandle<()>>>);

impl Tasks {
    pub fn start(&self, container: u32, f: impl Future<Output = ()> + Send + 'static) {
        self.0.lock().unwrap().insert(container, tokio::spawn(f));
    }

    pub fn stop(&self, container: u32) {
        if let Some(t) = self.0.lock().unwrap().remove(&container) {
            t.abort();
        }
    }
}

/// A function of app `app` as the tests declare them: one method, named as the function.
pub fn function(app: &str, name: &str, spec: PoolSpec, arity: Vec<Arity>) -> FunctionDef {
    FunctionDef { arity, ..FunctionDef::function(app, name, spec) }
}

/// The fake containers' work: each input's one integer argument, squared.
pub fn squares(e: &pb::Execute) -> Vec<pb::Result> {
    e.inputs
        .iter()
        .map(|i| {
            let v: ciborium::Value = ciborium::from_reader(i.args.as_slice()).unwrap();
            let x = i64::try_from(v.as_array().unwrap()[0].as_integer().unwrap()).unwrap();
            pb::Result { outcome: Some(pb::result::Outcome::Value(cbor(&ciborium::Value::Integer((x * x).into())))) }
        })
        .collect()
}

/// The CBOR arguments of a call with one integer.
pub fn args(x: i64) -> Vec<u8> {
    cbor(&ciborium::Value::Array(vec![ciborium::Value::Integer(x.into())]))
}

/// The integer a result holds.
pub fn int(r: &pb::Result) -> i64 {
    match &r.outcome {
        Some(pb::result::Outcome::Value(v)) => {
            let v: ciborium::Value = ciborium::from_reader(v.as_slice()).unwrap();
            i64::try_from(v.as_integer().unwrap()).unwrap()
        }
        other => panic!("expected a value, got {other:?}"),
    }
}

/// An HTTP answer as [`exchange`] read it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    /// Names in lower case.
    pub headers: HashMap<String, String>,
    /// As sent, cut at its `content-length` if it has one (a chunked body keeps its framing).
    pub body: Vec<u8>,
}

/// Writes `head` (request line and headers, without the blank line), a blank line and `body`
/// as is, then reads the answer to the end (each request closes its connection).
pub async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete head");
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .map(|l| l.split_once(':').unwrap())
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect::<HashMap<_, _>>();
    let mut body = raw[end + 4..].to_vec();
    if let Some(n) = headers.get("content-length") {
        body.truncate(n.parse().unwrap());
    }
    Reply { status, headers, body }
}
