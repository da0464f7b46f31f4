#![allow(clippy::unwrap_used)]
//! A generator call's stream in the control plane (`functions.rs`, `StreamItems`), against a
//! fake container the test drives message by message: the caller's stream gives the generator
//! credit every 8 items it takes (never per item, never for items not taken), dropping the
//! stream before its end cancels the call and after its end cancels nothing, and a call
//! refused past maxPendingInputs is a RESOURCE_EXHAUSTED status, as for Invoke.
mod common;

use common::bounded;

use std::time::Duration;

use berth_core::{MethodSpec, PoolSpec};
use berth_proto::v1::{self as pb, container_message, control_message, functions_client::FunctionsClient};
use berth_server::{ControlPlane, ExitReporter, FunctionDef, Registry, ServeOptions, Spawner};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

const LIMIT: Duration = Duration::from_secs(60);

/// A container the test drives: what the control plane sends, and the container's outbox.
struct Fake {
    inbound: tonic::Streaming<pb::ControlMessage>,
    out: common::Outbox,
}

impl Fake {
    /// The next message from the control plane (hooks answered ok on the way).
    async fn next(&mut self) -> control_message::Msg {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.inbound.next())
                .await
                .expect("a message within 10 s")
                .expect("the stream is open")
                .unwrap();
            match msg.msg.unwrap() {
                control_message::Msg::RunHook(h) => {
                    self.send(container_message::Msg::HookDone(pb::HookDone { phase: h.phase, ok: true, error: None }))
                }
                m => return m,
            }
        }
    }

    /// Nothing arrives within `wait`.
    async fn quiet(&mut self, wait: Duration) {
        if let Ok(m) = tokio::time::timeout(wait, self.inbound.next()).await {
            panic!("expected no message, got {m:?}");
        }
    }

    /// The next execution: (exec id, input id, attempt).
    async fn execution(&mut self) -> (u64, u64, u32) {
        let e = match self.next().await {
            control_message::Msg::Execute(e) => e,
            control_message::Msg::ExecuteBatch(mut b) => {
                assert_eq!(b.executions.len(), 1, "{b:?}");
                b.executions.pop().unwrap()
            }
            other => panic!("expected an execution, got {other:?}"),
        };
        let i = &e.inputs[0];
        (e.exec_id, i.input_id, i.attempt)
    }

    fn send(&self, m: container_message::Msg) {
        let _ = self.out.send(pb::ContainerMessage { msg: Some(m) });
    }

    /// Yields `values`, one Items message each.
    fn yields(&self, input: u64, attempt: u32, values: std::ops::Range<i64>) {
        for v in values {
            let value = common::cbor(&ciborium::Value::Integer(v.into()));
            self.send(container_message::Msg::Items(pb::Items { input_id: input, attempt, values: vec![value] }));
        }
    }

    /// The generator's end: its execution's one result.
    fn ends(&self, exec_id: u64, outcome: pb::result::Outcome) {
        let results = vec![pb::Result { outcome: Some(outcome) }];
        self.send(container_message::Msg::Output(pb::Output { exec_id, results, retryable_failure: false }));
    }

    fn returns(&self, exec_id: u64) {
        self.ends(exec_id, pb::result::Outcome::Value(common::cbor(&ciborium::Value::Null)));
    }
}

/// Hands each container it is asked for to the test, attached.
struct FakeSpawner(mpsc::UnboundedSender<Fake>);

impl Spawner for FakeSpawner {
    fn spawn(&self, _: &FunctionDef, _: &[u8], container: u32, token: &str, endpoint: &str, _: ExitReporter) {
        let (tx, endpoint, token) = (self.0.clone(), endpoint.to_string(), token.to_string());
        tokio::spawn(async move {
            let (out, inbound) = common::attach(endpoint, container, token, 8).await;
            let _ = tx.send(Fake { inbound, out });
        });
    }

    fn stop(&self, _: u32) {}
}

/// Generator `gen` on one container, one input at a time; `max_pending` bounds its queue.
async fn start(max_pending: Option<u32>) -> (ControlPlane, mpsc::UnboundedReceiver<Fake>) {
    let mut spec = PoolSpec::new("gen", vec![MethodSpec::default()]);
    spec.max_pending = max_pending;
    let mut def = common::function("streams", "gen", spec, Vec::new());
    def.generators = vec![true];
    let (tx, rx) = mpsc::unbounded_channel();
    let opts = ServeOptions { addr: "127.0.0.1:0".parse().unwrap(), ..ServeOptions::default() };
    let plane = ControlPlane::start(Registry { functions: vec![def] }, FakeSpawner(tx), opts).await.unwrap();
    (plane, rx)
}

/// Shuts the control plane down; the fake container goes when told to stop.
async fn stop(plane: ControlPlane, mut k: Fake) {
    let stopping = tokio::spawn(plane.shutdown());
    loop {
        if let control_message::Msg::Stop(_) = k.next().await {
            break;
        }
    }
    drop(k);
    stopping.await.unwrap();
}

fn gen_ref() -> pb::FunctionRef {
    pb::FunctionRef { app: "streams".into(), function: "gen".into(), ..Default::default() }
}

fn call() -> pb::InvokeRequest {
    pb::InvokeRequest { function: Some(gen_ref()), args: common::cbor(&ciborium::Value::Array(Vec::new())) }
}

async fn client(plane: &ControlPlane) -> FunctionsClient<tonic::transport::Channel> {
    FunctionsClient::connect(format!("http://{}", plane.local_addr())).await.unwrap()
}

/// Reads `n` values from the caller's stream; returns them.
async fn read(stream: &mut tonic::Streaming<pb::StreamItem>, n: usize) -> Vec<i64> {
    let mut got = Vec::new();
    for _ in 0..n {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an item within 10 s")
            .unwrap()
            .expect("an item, not the end");
        let Some(pb::stream_item::Item::Value(v)) = item.item else { panic!("expected a value, got {item:?}") };
        got.push(common::int(&pb::Result { outcome: Some(pb::result::Outcome::Value(v)) }));
    }
    got
}

#[tokio::test]
async fn the_caller_gives_credit_every_8_items_it_takes_and_nothing_after_the_end() {
    bounded(LIMIT, async {
        let (plane, mut fakes) = start(None).await;
        let mut c = client(&plane).await;
        let opening = tokio::spawn(async move { c.invoke_stream(call()).await.map(tonic::Response::into_inner) });
        let mut k = fakes.recv().await.unwrap();
        let (exec, input, attempt) = k.execution().await;

        // Seven items taken: no credit yet (not one message per item).
        k.yields(input, attempt, 0..7);
        let mut stream = opening.await.unwrap().unwrap();
        assert_eq!(read(&mut stream, 7).await, (0..7).collect::<Vec<_>>());
        k.quiet(Duration::from_millis(300)).await;
        // The eighth: credit for 8, for this input.
        k.yields(input, attempt, 7..8);
        assert_eq!(read(&mut stream, 1).await, [7]);
        let control_message::Msg::StreamCredit(credit) = k.next().await else { panic!("expected credit") };
        assert_eq!((credit.input_id, credit.items), (input, 8));
        // Eight more: 8 more credit.
        k.yields(input, attempt, 8..16);
        assert_eq!(read(&mut stream, 8).await, (8..16).collect::<Vec<_>>());
        let control_message::Msg::StreamCredit(credit) = k.next().await else { panic!("expected credit") };
        assert_eq!((credit.input_id, credit.items), (input, 8));
        // Three, then the end: the stream ends OK after them.
        k.yields(input, attempt, 16..19);
        k.returns(exec);
        assert_eq!(read(&mut stream, 3).await, [16, 17, 18]);
        let end = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.unwrap();
        assert!(matches!(end, Ok(None)), "the stream ends OK: {end:?}");
        drop(stream);

        // Read to its end and dropped: no abort, and no credit for the 3 of an unfilled batch.
        // The next thing the container hears is the next call's execution.
        let mut c = client(&plane).await;
        let next = tokio::spawn(async move { c.invoke_stream(call()).await.map(tonic::Response::into_inner) });
        let (exec2, input2, attempt2) = k.execution().await;
        assert_ne!(input2, input);
        k.yields(input2, attempt2, 0..1);
        k.returns(exec2);
        let mut stream = next.await.unwrap().unwrap();
        assert_eq!(read(&mut stream, 1).await, [0]);
        assert!(matches!(stream.message().await, Ok(None)));
        stop(plane, k).await;
    })
    .await;
}

#[tokio::test]
async fn dropping_the_stream_before_its_end_cancels_the_call_over_grpc_and_in_process() {
    bounded(LIMIT, async {
        let (plane, mut fakes) = start(None).await;
        // A gRPC caller that resets its stream after 3 items.
        let mut c = client(&plane).await;
        let opening = tokio::spawn(async move { c.invoke_stream(call()).await.map(tonic::Response::into_inner) });
        let mut k = fakes.recv().await.unwrap();
        let (exec, input, attempt) = k.execution().await;
        k.yields(input, attempt, 0..3);
        let mut stream = opening.await.unwrap().unwrap();
        assert_eq!(read(&mut stream, 3).await, [0, 1, 2]);
        drop(stream);
        let control_message::Msg::Abort(abort) = k.next().await else { panic!("expected the call cancelled") };
        assert_eq!((abort.input_id, abort.attempt, abort.reason.as_str()), (input, attempt, "cancelled"));
        k.ends(
            exec,
            pb::result::Outcome::Error(pb::Error {
                name: "InputCancelledError".into(),
                message: "cancelled".into(),
                stack: String::new(),
            }),
        );

        // An in-process caller (berth run's handles) that drops its items after one.
        let local = plane.client();
        let opening = tokio::spawn(async move { local.invoke_stream(gen_ref(), call().args, None).await });
        let (exec, input, attempt) = k.execution().await;
        k.yields(input, attempt, 0..1);
        let mut items = opening.await.unwrap().unwrap();
        let first = items.message().await.unwrap().unwrap();
        assert!(matches!(first.item, Some(pb::stream_item::Item::Value(_))));
        drop(items);
        let control_message::Msg::Abort(abort) = k.next().await else { panic!("expected the call cancelled") };
        assert_eq!((abort.input_id, abort.reason.as_str()), (input, "cancelled"));
        k.returns(exec);
        stop(plane, k).await;
    })
    .await;
}

#[tokio::test]
async fn a_generator_call_refused_past_max_pending_inputs_is_resource_exhausted() {
    bounded(LIMIT, async {
        let (plane, mut fakes) = start(Some(1)).await;
        // One runs (it holds the one slot), then of two more calls one waits and one is refused.
        let mut c = client(&plane).await;
        let running = tokio::spawn(async move { c.invoke_stream(call()).await.map(tonic::Response::into_inner) });
        let mut k = fakes.recv().await.unwrap();
        let (exec, input, attempt) = k.execution().await;
        k.yields(input, attempt, 0..1);
        let mut running = running.await.unwrap().unwrap();
        assert_eq!(read(&mut running, 1).await, [0]);

        let (mut b, mut c2) = (client(&plane).await, client(&plane).await);
        let mut second = tokio::spawn(async move { b.invoke_stream(call()).await.map(tonic::Response::into_inner) });
        let mut third = tokio::spawn(async move { c2.invoke_stream(call()).await.map(tonic::Response::into_inner) });
        // The refused one answers at once; the other waits for the slot.
        let (refused, waiting) = tokio::select! {
            r = &mut second => (r.unwrap(), third),
            r = &mut third => (r.unwrap(), second),
        };
        let status = refused.expect_err("a status, not a stream whose one item is the error");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("maxPendingInputs"), "{}", status.message());

        // The accepted ones all finish.
        k.returns(exec);
        assert!(matches!(running.message().await, Ok(None)));
        let (exec, input, attempt) = k.execution().await;
        k.yields(input, attempt, 5..6);
        k.returns(exec);
        let mut waited = waiting.await.unwrap().unwrap();
        assert_eq!(read(&mut waited, 1).await, [5]);
        assert!(matches!(waited.message().await, Ok(None)));
        stop(plane, k).await;
    })
    .await;
}
