#![allow(clippy::unwrap_used)]
//! The data socket (src/datasock.rs) as a container process speaks it (src/data/socket.ts): a
//! fake container attaches over gRPC, then says hello on the socket the spawner was told of and
//! sends dict and queue requests in the socket's frames. Covers what the ava test of the same
//! socket (__test__/dict.test.ts) cannot see from the public API: a wrong hello, a malformed or
//! unknown request, a request over the cap skipped while the connection goes on, and a leasing
//! get's items given back when its connection closes unacked.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_core::{MethodSpec, PoolSpec};
use berth_proto::v1::{self as pb, functions_client::FunctionsClient};
use berth_server::{Arity, ControlPlane, ExitReporter, FunctionDef, Registry, ServeOptions, Spawner};
use ciborium::Value;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use common::{bounded, cbor};

/// Tells the test of its data socket and of each container it is asked to start.
struct Recorder {
    socket: Arc<Mutex<Option<String>>>,
    spawned: mpsc::UnboundedSender<(u32, String, String)>,
}

impl Spawner for Recorder {
    fn spawn(&self, _: &FunctionDef, _: &[u8], container: u32, token: &str, endpoint: &str, _: ExitReporter) {
        let _ = self.spawned.send((container, token.to_owned(), endpoint.to_owned()));
    }

    fn data_socket(&self, name: &str) {
        *self.socket.lock().unwrap() = Some(name.to_owned());
    }

    fn stop(&self, _: u32) {}
}

/// A frame as both sides write them: length (u32 LE), id (u32 LE), kind (u8), body.
fn frame(id: u32, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&id.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// The next answer: its id, kind (0 ok, 1 failed) and body; `None` at the end of the stream.
async fn answer(s: &mut UnixStream) -> Option<(u32, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.ok()?;
    let len = u32::from_le_bytes(head[..4].try_into().unwrap()) as usize;
    let mut body = vec![0; len];
    s.read_exact(&mut body).await.unwrap();
    Some((u32::from_le_bytes(head[4..8].try_into().unwrap()), head[8], body))
}

/// A failure's gRPC code and message.
fn failure(body: &[u8]) -> (tonic::Code, String) {
    (tonic::Code::from(i32::from(body[0])), String::from_utf8_lossy(&body[1..]).into_owned())
}

async fn connect(name: &str) -> UnixStream {
    // Bound by the whole of sun_path, as Node connects (datasock.rs `listen`).
    let mut path = format!("\0{name}");
    path.extend(std::iter::repeat_n('\0', 108 - path.len()));
    UnixStream::connect(path).await.unwrap()
}

fn hello(container: u32, token: &str) -> Vec<u8> {
    let mut body = container.to_le_bytes().to_vec();
    body.extend_from_slice(token.as_bytes());
    body
}

fn dict(op: pb::DictOp, key: &str, value: Option<&Value>) -> Vec<u8> {
    pb::DictRequest {
        name: "d".into(),
        create_if_missing: true,
        op: op as i32,
        key: cbor(&Value::Text(key.into())),
        value: value.map(cbor).unwrap_or_default(),
        ..Default::default()
    }
    .encode_to_vec()
}

fn queue(op: pb::QueueOp, values: &[i64], lease: bool) -> Vec<u8> {
    pb::QueueRequest {
        name: "q".into(),
        create_if_missing: true,
        op: op as i32,
        values: values.iter().map(|v| cbor(&Value::Integer((*v).into()))).collect(),
        max: 1,
        lease,
        ..Default::default()
    }
    .encode_to_vec()
}

fn decoded(body: &[u8]) -> Vec<Value> {
    let v: Value = ciborium::from_reader(body).unwrap();
    v.into_array().unwrap()
}

#[tokio::test]
async fn a_container_speaks_to_dicts_and_queues_over_its_data_socket() {
    bounded(Duration::from_secs(60), async {
        let socket = Arc::new(Mutex::new(None));
        let (spawned, mut started) = mpsc::unbounded_channel();
        let mut spec = PoolSpec::new("square", vec![MethodSpec::default()]);
        spec.max_containers = 1;
        let registry = Registry {
            functions: vec![common::function("data", "square", spec, vec![Arity { min: 1, max: Some(1) }])],
        };
        let opts =
            ServeOptions { addr: "127.0.0.1:0".parse().unwrap(), max_message_bytes: 1024, ..ServeOptions::default() };
        let plane = ControlPlane::start(registry, Recorder { socket: socket.clone(), spawned }, opts).await.unwrap();
        let name = socket.lock().unwrap().clone().expect("the spawner was told of the data socket");

        // A container: started for a call, attached with its credentials.
        let mut client = FunctionsClient::connect(format!("http://{}", plane.local_addr())).await.unwrap();
        let call = tokio::spawn(async move {
            let function =
                Some(pb::FunctionRef { app: "data".into(), function: "square".into(), ..Default::default() });
            client.invoke(pb::InvokeRequest { function, args: common::args(3) }).await.unwrap().into_inner()
        });
        let (cid, token, endpoint) = started.recv().await.unwrap();
        tokio::spawn(common::attach_and_serve(endpoint, cid, token.clone(), |e| async move { common::squares(&e) }));
        assert_eq!(common::int(call.await.unwrap().result.as_ref().unwrap()), 9);

        // A wrong token: refused, and the connection closes.
        let mut s = connect(&name).await;
        s.write_all(&frame(1, 0, &hello(cid, "not-the-token"))).await.unwrap();
        let (id, kind, body) = answer(&mut s).await.unwrap();
        assert_eq!((id, kind, failure(&body).0), (1, 1, tonic::Code::Unauthenticated));
        assert!(answer(&mut s).await.is_none(), "closed after a wrong hello");
        // A request before the hello: the same.
        let mut s = connect(&name).await;
        s.write_all(&frame(1, 1, &dict(pb::DictOp::Len, "k", None))).await.unwrap();
        assert_eq!(failure(&answer(&mut s).await.unwrap().2).0, tonic::Code::Unauthenticated);

        let mut s = connect(&name).await;
        s.write_all(&frame(1, 0, &hello(cid, &token))).await.unwrap();
        assert_eq!(answer(&mut s).await.unwrap(), (1, 0, Vec::new()), "hello answered with nothing");
        // Over the cap: refused naming it, its body skipped; the next requests, sent in the same
        // write, are read from where it ends.
        let big = dict(pb::DictOp::Put, "big", Some(&Value::Bytes(vec![7; 80 << 10])));
        let mut burst = frame(2, 1, &big);
        burst.extend(frame(3, 1, &dict(pb::DictOp::Put, "k", Some(&Value::Text("v".into())))));
        burst.extend(frame(4, 1, &dict(pb::DictOp::Get, "k", None)));
        burst.extend(frame(5, 1, b"\xff\xff not protobuf"));
        burst.extend(frame(6, 9, b""));
        s.write_all(&burst).await.unwrap();
        let (id, kind, body) = answer(&mut s).await.unwrap();
        let (code, message) = failure(&body);
        assert_eq!((id, kind, code), (2, 1, tonic::Code::ResourceExhausted), "{message}");
        assert!(message.contains("message cap of 1024") && message.contains("--max-message-bytes"), "{message}");
        assert_eq!(answer(&mut s).await.unwrap().0, 3, "the put after it");
        let (id, kind, body) = answer(&mut s).await.unwrap();
        assert_eq!((id, kind), (4, 0));
        assert_eq!(decoded(&body)[2], Value::Text("v".into()), "the value put: [found, len, value, entries]");
        let (id, _, body) = answer(&mut s).await.unwrap();
        assert_eq!(id, 5);
        assert!(failure(&body).1.contains("a malformed DictRequest"), "{:?}", failure(&body));
        let (id, _, body) = answer(&mut s).await.unwrap();
        assert_eq!((id, failure(&body).0), (6, tonic::Code::InvalidArgument));
        assert!(failure(&body).1.contains("unknown request kind 9"), "{:?}", failure(&body));

        // A blocked get does not hold up what comes after it on the connection.
        s.write_all(&frame(
            7,
            2,
            &pb::QueueRequest { block: true, timeout: 30.0, ..decode_queue(queue(pb::QueueOp::Get, &[], true)) }
                .encode_to_vec(),
        ))
        .await
        .unwrap();
        s.write_all(&frame(8, 2, &queue(pb::QueueOp::Put, &[1, 2, 3], false))).await.unwrap();
        let mut ids = [answer(&mut s).await.unwrap(), answer(&mut s).await.unwrap()];
        ids.sort_by_key(|a| a.0);
        assert_eq!(ids.iter().map(|a| (a.0, a.1)).collect::<Vec<_>>(), vec![(7, 0), (8, 0)]);
        let got = decoded(&ids[0].2);
        assert_eq!(
            got[0],
            Value::Array(vec![Value::Integer(1.into())]),
            "released by the put: [items, len, found, lease]"
        );
        assert_ne!(got[3], Value::Integer(0.into()), "taken on a lease");
        // Closed without acking it: the item is back at once, not when its lease (10 s) ends.
        drop(s);
        let mut s = connect(&name).await;
        s.write_all(&frame(1, 0, &hello(cid, &token))).await.unwrap();
        answer(&mut s).await.unwrap();
        let mut len = Value::Null;
        for n in 0..50 {
            s.write_all(&frame(10 + n, 2, &queue(pb::QueueOp::Len, &[], false))).await.unwrap();
            len = decoded(&answer(&mut s).await.unwrap().2)[1].clone();
            if len == Value::Integer(3.into()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(len, Value::Integer(3.into()), "the unacked item came back when its connection closed");
        s.write_all(&frame(99, 2, &queue(pb::QueueOp::Get, &[], false))).await.unwrap();
        let first = decoded(&answer(&mut s).await.unwrap().2);
        assert_eq!(first[0], Value::Array(vec![Value::Integer(1.into())]), "at the front");
        plane.shutdown().await;
    })
    .await;
}

fn decode_queue(body: Vec<u8>) -> pb::QueueRequest {
    pb::QueueRequest::decode(body.as_slice()).unwrap()
}
