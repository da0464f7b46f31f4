#![allow(clippy::unwrap_used)]
//! `ControlPlane::client`: a caller in the control plane's own process gets the same answers
//! as a gRPC caller (the same handlers run), Map's window holds its inputs back the same way,
//! and no request goes over the gRPC listener.
mod common;

use common::{bounded, cbor};

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_core::{MethodSpec, PoolSpec};
use berth_proto::trace::TraceContext;
use berth_proto::v1::{self as pb, result::Outcome};
use berth_server::{
    Arity, Client, ControlPlane, ExitReporter, FunctionDef, MapResults, Registry, ServeOptions, Spawner,
};
use ciborium::Value as C;
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(60);

fn err_name(r: &pb::Result) -> String {
    match &r.outcome {
        Some(Outcome::Error(e)) => e.name.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Containers that square their input after `delay`, counting what they execute.
#[derive(Default)]
struct Squares {
    delay: Duration,
    executed: Arc<AtomicUsize>,
    tasks: common::Tasks,
}

impl Spawner for Squares {
    fn spawn(&self, _: &FunctionDef, _: &[u8], container: u32, token: &str, endpoint: &str, _: ExitReporter) {
        let (delay, executed) = (self.delay, self.executed.clone());
        let serve = common::attach_and_serve(endpoint.to_string(), container, token.to_string(), move |e| {
            let executed = executed.clone();
            async move {
                tokio::time::sleep(delay).await;
                executed.fetch_add(e.inputs.len(), Ordering::Relaxed);
                common::squares(&e)
            }
        });
        self.tasks.start(container, serve);
    }

    fn stop(&self, container: u32) {
        self.tasks.stop(container);
    }
}

fn app() -> Registry {
    let mut spec = PoolSpec::new("square", vec![MethodSpec::default()]);
    spec.max_inputs = 4;
    spec.target_inputs = 4;
    spec.max_containers = 1;
    Registry { functions: vec![common::function("demo", "square", spec, vec![Arity { min: 1, max: Some(1) }])] }
}

fn opts() -> ServeOptions {
    ServeOptions { addr: "127.0.0.1:0".parse().unwrap(), max_message_bytes: 1024, ..ServeOptions::default() }
}

async fn start(spawner: Squares, opts: ServeOptions) -> ControlPlane {
    ControlPlane::start(app(), spawner, opts).await.unwrap()
}

fn square() -> pb::FunctionRef {
    pb::FunctionRef { app: "demo".into(), function: "square".into(), ..Default::default() }
}

fn grpc(plane: &ControlPlane) -> Client {
    Client::grpc(&format!("http://{}", plane.local_addr()), None).unwrap()
}

/// A Map call over `inputs`, its sender kept open until `close`.
async fn map(
    client: &Client,
    inputs: impl IntoIterator<Item = u64>,
) -> (MapResults, mpsc::UnboundedSender<Vec<pb::MapInput>>) {
    let (tx, rx) = mpsc::unbounded_channel();
    tx.send(inputs.into_iter().map(|i| pb::MapInput { index: i, args: common::args(i as i64) }).collect()).unwrap();
    (client.map(square(), rx, None).await.unwrap(), tx)
}

/// Reads a Map call to its end: each index's result (once), then how the call ended.
async fn drain(results: &mut MapResults, got: &mut HashMap<u64, pb::Result>) -> Result<(), tonic::Status> {
    while let Some(m) = results.message().await? {
        assert!(got.insert(m.index, m.result.unwrap()).is_none(), "index {} twice", m.index);
    }
    Ok(())
}

/// Every way a request can be refused, asked both ways: the same code and the same words.
#[tokio::test]
async fn refusals_read_the_same_as_over_grpc() {
    bounded(LIMIT, async {
        let plane = start(Squares::default(), opts()).await;
        let (local, remote) = (plane.client(), grpc(&plane));
        assert!(local.is_in_process() && !remote.is_in_process());
        let named = |app: &str, function: &str, method: &str| pb::FunctionRef {
            app: app.into(),
            function: function.into(),
            method: method.into(),
            ..Default::default()
        };
        let big = cbor(&C::Array(vec![C::Bytes(vec![7; 4096])]));
        let cases: Vec<(pb::FunctionRef, Vec<u8>)> = vec![
            (named("demo", "sqare", ""), common::args(1)),
            (named("nope", "square", ""), common::args(1)),
            (named("demo", "square", "m"), common::args(1)),
            (square(), vec![0xff, 0x00]),
            (square(), cbor(&C::Array(vec![]))),
            (square(), cbor(&C::Integer(3.into()))),
            (square(), big),
        ];
        for (function, a) in cases {
            let want = remote.invoke(function.clone(), a.clone(), None).await.unwrap_err();
            let got = local.invoke(function.clone(), a.clone(), None).await.unwrap_err();
            assert_eq!((got.code(), got.message()), (want.code(), want.message()), "invoke {function:?}");
            let want = remote.spawn(function.clone(), a.clone(), None).await.unwrap_err();
            let got = local.spawn(function.clone(), a, None).await.unwrap_err();
            assert_eq!((got.code(), got.message()), (want.code(), want.message()), "spawn {function:?}");
        }
        for id in ["fc-999", "nonsense", &"y".repeat(10_000)] {
            let want = remote.get_result(id.into(), 0.0).await.unwrap_err();
            let got = local.get_result(id.into(), 0.0).await.unwrap_err();
            assert_eq!((got.code(), got.message()), (want.code(), want.message()), "get_result {id}");
            let want = remote.cancel(id.into()).await.unwrap_err();
            let got = local.cancel(id.into()).await.unwrap_err();
            assert_eq!((got.code(), got.message()), (want.code(), want.message()), "cancel {id}");
        }
        // A Map input over the cap: the inputs before it are answered, then the same status.
        let oversized = pb::MapInput { index: 2, args: cbor(&C::Array(vec![C::Bytes(vec![7; 4096])])) };
        let mut ends = Vec::new();
        for client in [&remote, &local] {
            let (tx, rx) = mpsc::unbounded_channel();
            tx.send(vec![
                pb::MapInput { index: 0, args: common::args(0) },
                pb::MapInput { index: 1, args: common::args(1) },
            ])
            .unwrap();
            tx.send(vec![oversized.clone(), pb::MapInput { index: 3, args: common::args(3) }]).unwrap();
            let mut results = client.map(square(), rx, None).await.unwrap();
            let mut got = HashMap::new();
            let end = drain(&mut results, &mut got).await.unwrap_err();
            assert_eq!(got.keys().copied().collect::<std::collections::BTreeSet<_>>(), [0, 1].into());
            ends.push((end.code(), end.message().to_string()));
        }
        assert_eq!(ends[0], ends[1]);
        assert_eq!(ends[0].0, tonic::Code::ResourceExhausted);
        let calls = plane.counters().grpc_function_calls;
        assert_eq!(calls, 21, "each gRPC call is counted");
        local.invoke(square(), common::args(3), None).await.unwrap();
        assert_eq!(plane.counters().grpc_function_calls, calls, "in-process calls do not go over gRPC");
        plane.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn invoke_spawn_get_result_and_cancel() {
    bounded(LIMIT, async {
        let plane = start(Squares { delay: Duration::from_millis(300), ..Squares::default() }, opts()).await;
        let c = plane.client();
        let r = c.invoke(square(), common::args(7), None).await.unwrap();
        assert_eq!(common::int(r.result.as_ref().unwrap()), 49);
        assert!(r.function_call_id.starts_with("fc-"), "{}", r.function_call_id);

        let fc = c.spawn(square(), common::args(6), None).await.unwrap().function_call_id;
        let r = c.get_result(fc.clone(), 0.0).await.unwrap();
        assert!(!r.ready, "not finished yet");
        let r = c.get_result(fc.clone(), 10.0).await.unwrap();
        assert_eq!(common::int(r.result.as_ref().unwrap()), 36);
        let e = c.get_result(fc, 0.0).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "delivered once: {e:?}");

        // Four slots busy for 300 ms: the fifth input waits in the queue, where Cancel finds it.
        let busy: Vec<String> = spawn_n(&c, 4).await;
        let fc = c.spawn(square(), common::args(5), None).await.unwrap().function_call_id;
        c.cancel(fc.clone()).await.unwrap();
        let r = c.get_result(fc, 10.0).await.unwrap();
        assert_eq!(err_name(r.result.as_ref().unwrap()), "InputCancelledError");
        for fc in busy {
            assert!(c.get_result(fc, 10.0).await.unwrap().ready);
        }
        assert_eq!(plane.counters().grpc_function_calls, 0);
        plane.shutdown().await;
    })
    .await;
}

/// Spawns `n` calls, their ids.
async fn spawn_n(c: &Client, n: i64) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(c.spawn(square(), common::args(i), None).await.unwrap().function_call_id);
    }
    ids
}

#[tokio::test]
async fn a_map_that_reads_nothing_holds_its_inputs_back_then_gets_every_result() {
    bounded(LIMIT, async {
        const WINDOW: usize = 100;
        let squares = Squares::default();
        let executed = squares.executed.clone();
        let plane = start(squares, ServeOptions { map_window: WINDOW, ..opts() }).await;
        let c = plane.client();
        let n = 20 * WINDOW as u64;
        let (mut results, tx) = map(&c, 0..n).await;
        drop(tx);
        let mut last = usize::MAX;
        while executed.load(Ordering::Relaxed) != last {
            last = executed.load(Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        // No transport buffers results in process: the window is all that runs.
        assert!(last <= WINDOW, "{last} of {n} inputs ran for a caller that read none");
        assert!(last >= WINDOW / 2, "the window was used: {last}");
        let mut got = HashMap::new();
        drain(&mut results, &mut got).await.unwrap();
        assert_eq!(got.len(), n as usize);
        assert!((0..n).all(|i| common::int(&got[&i]) == (i * i) as i64));
        assert_eq!(plane.counters().grpc_function_calls, 0);
        plane.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cancelling_a_map_answers_each_unfinished_input_cancelled_and_dropping_it_cancels_too() {
    bounded(LIMIT, async {
        let squares = Squares { delay: Duration::from_millis(100), ..Squares::default() };
        let executed = squares.executed.clone();
        let plane = start(squares, opts()).await;
        let c = plane.client();
        let n = 40;
        let (mut results, tx) = map(&c, 0..n).await;
        let fc = results.function_call_id().unwrap().to_string();
        let first = results.message().await.unwrap().unwrap();
        c.cancel(fc.clone()).await.unwrap();
        let mut got = HashMap::from([(first.index, first.result.unwrap())]);
        drain(&mut results, &mut got).await.unwrap();
        assert_eq!(got.len(), n as usize, "every input answered");
        let cancelled = got.values().filter(|r| matches!(r.outcome, Some(Outcome::Error(_)))).count();
        assert!(cancelled >= n as usize - 8, "the unfinished inputs are cancelled: {cancelled} of {n}");
        assert!(got
            .values()
            .filter(|r| matches!(r.outcome, Some(Outcome::Error(_))))
            .all(|r| err_name(r) == "InputCancelledError"));
        // An ended Map has nothing left to cancel: not an error; an id never issued is.
        c.cancel(fc).await.expect("an ended Map: nothing to cancel");
        let e = c.cancel("fc-999999".into()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "an id never issued");
        drop(tx);

        // A caller that drops its results leaves nothing to run for nobody.
        let before = executed.load(Ordering::Relaxed);
        let (mut results, tx) = map(&c, 0..n).await;
        results.message().await.unwrap().unwrap();
        drop(results);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let ran = executed.load(Ordering::Relaxed) - before;
        assert!(ran < 12, "queued inputs were dropped, not run: {ran} of {n} ran");
        drop(tx);
        plane.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn calls_after_the_control_plane_stopped_are_unavailable() {
    bounded(LIMIT, async {
        let plane = start(Squares::default(), opts()).await;
        let c = plane.client();
        assert_eq!(common::int(c.invoke(square(), common::args(2), None).await.unwrap().result.as_ref().unwrap()), 4);
        plane.shutdown().await;
        let e = c.invoke(square(), common::args(2), None).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        let (_, rx) = mpsc::unbounded_channel();
        assert_eq!(c.map(square(), rx, None).await.err().unwrap().code(), tonic::Code::Unavailable);
    })
    .await;
}

/// Containers that answer each input with the trace it continues, as a traceparent whose span id
/// is the input id (a container makes the span ids), counting the inputs that carried a trace
/// (an input of the previous input's trace comes without it).
#[derive(Default)]
struct Traces {
    tasks: common::Tasks,
    carried: Arc<AtomicUsize>,
}

impl Spawner for Traces {
    fn spawn(&self, _: &FunctionDef, _: &[u8], container: u32, token: &str, endpoint: &str, _: ExitReporter) {
        let carried = self.carried.clone();
        let mut last = (0, 0, 0);
        let serve = common::attach_and_serve(endpoint.to_string(), container, token.to_string(), move |e| {
            let results: Vec<pb::Result> = e
                .inputs
                .iter()
                .map(|i| {
                    if i.trace_id_high != 0 || i.trace_id_low != 0 {
                        carried.fetch_add(1, Ordering::Relaxed);
                        last = (i.trace_id_high, i.trace_id_low, i.trace_flags);
                    }
                    let t = TraceContext::from_parts(last.0, last.1, i.input_id, last.2);
                    pb::Result { outcome: Some(Outcome::Value(cbor(&C::Text(t.to_string())))) }
                })
                .collect();
            async move { results }
        });
        self.tasks.start(container, serve);
    }

    fn stop(&self, container: u32) {
        self.tasks.stop(container);
    }
}

fn text(r: &pb::Result) -> String {
    match &r.outcome {
        Some(Outcome::Value(v)) => ciborium::from_reader::<C, _>(v.as_slice()).unwrap().into_text().unwrap(),
        other => panic!("expected a value, got {other:?}"),
    }
}

/// README "Tracing": an input continues its caller's trace (same trace-id and flags); without a
/// caller's, each call starts one, and a Map call's inputs share it, sent once.
#[tokio::test]
async fn inputs_continue_the_callers_trace_or_start_one_per_call() {
    bounded(LIMIT, async {
        let traces = Traces::default();
        let carried = traces.carried.clone();
        let plane = ControlPlane::start(app(), traces, opts()).await.unwrap();
        let caller = TraceContext::parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").unwrap();
        for c in [plane.client(), grpc(&plane)] {
            let got = text(c.invoke(square(), common::args(1), Some(caller)).await.unwrap().result.as_ref().unwrap());
            let got = TraceContext::parse(got.as_bytes()).expect("a valid traceparent");
            assert_eq!((got.trace_id, got.flags), (caller.trace_id, caller.flags), "the caller's trace, flags kept");

            let a = text(c.invoke(square(), common::args(1), None).await.unwrap().result.as_ref().unwrap());
            let b = text(c.invoke(square(), common::args(1), None).await.unwrap().result.as_ref().unwrap());
            let (a, b) = (TraceContext::parse(a.as_bytes()).unwrap(), TraceContext::parse(b.as_bytes()).unwrap());
            assert_ne!(a.trace_id, b.trace_id, "a trace per call");
            assert_eq!(a.flags, 1, "sampled");

            for trace in [None, Some(caller)] {
                let (tx, rx) = mpsc::unbounded_channel();
                tx.send((0..20).map(|i| pb::MapInput { index: i, args: common::args(1) }).collect()).unwrap();
                drop(tx);
                let before = carried.load(Ordering::Relaxed);
                let mut results = c.map(square(), rx, trace).await.unwrap();
                let mut got = HashMap::new();
                drain(&mut results, &mut got).await.unwrap();
                let traces: Vec<TraceContext> =
                    got.values().map(|r| TraceContext::parse(text(r).as_bytes()).unwrap()).collect();
                assert_eq!(traces.len(), 20);
                assert!(traces.iter().all(|t| t.trace_id == traces[0].trace_id), "one trace per Map call");
                assert_eq!(
                    carried.load(Ordering::Relaxed) - before,
                    1,
                    "the trace travels once for the inputs that share it"
                );
                if let Some(caller) = trace {
                    assert_eq!(traces[0].trace_id, caller.trace_id);
                } else {
                    assert_ne!(traces[0].trace_id, a.trace_id);
                }
            }
        }
        plane.shutdown().await;
    })
    .await;
}
