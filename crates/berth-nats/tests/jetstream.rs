//! berth-nats against a real NATS server with JetStream at 127.0.0.1:4222. Each test skips,
//! saying why, when none is listening there (start one with `nats-server -js`). Each uses its
//! own app name (so its own stream and subject) and deletes its stream at the end, also when
//! it fails.
#![allow(clippy::unwrap_used)]

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use berth_core::broker::{names, BrokerNames};
use berth_nats::{Broker, BrokerInput, BrokerResult, ErrorKind, Fate, PoolSettings, Settled, SpawnResults, TickStart};

const URL: &str = "nats://127.0.0.1:4222";

fn nats_here() -> bool {
    let addr: SocketAddr = "127.0.0.1:4222".parse().unwrap();
    let up = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok();
    if !up {
        eprintln!("skipped: no NATS server at 127.0.0.1:4222 (start one with `nats-server -js`)");
    }
    up
}

/// A name no other test or run has: `prefix`, this process's id and the time in ns.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A pool of a fresh app on the local server; its stream is deleted when dropped.
struct Pool {
    broker: Broker,
    app: String,
    names: BrokerNames,
}

impl Pool {
    async fn new(tag: &str, settings: &PoolSettings) -> Option<Self> {
        if !nats_here() {
            return None;
        }
        let broker = Broker::connect(URL).await.unwrap();
        let app = unique("test");
        let names = names(&app, tag);
        broker.ensure_pool(&app, &names, settings).await.unwrap();
        Some(Self { broker, app, names })
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let names = self.names.clone();
        // Drop runs inside the test's runtime, which is blocked here and so cannot drive
        // `self.broker`'s connection: delete from a thread with its own runtime and connection.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async { Broker::connect(URL).await?.remove_pool(&names).await })
        })
        .join();
        if !matches!(done, Ok(Ok(true))) {
            eprintln!("could not delete test stream {}: {done:?}", self.names.stream);
        }
    }
}

fn settings(ack_wait_ms: u64, max_deliver: i64) -> PoolSettings {
    PoolSettings {
        ack_wait: Duration::from_millis(ack_wait_ms),
        max_deliver,
        max_ack_pending: 1000,
        fingerprint: "fp-1".into(),
    }
}

fn input(id: &str, reply: &str) -> BrokerInput {
    BrokerInput {
        input_id: id.into(),
        function_call_id: "fc-1".into(),
        attempt: 0,
        method: "run".into(),
        args: vec![0x81, 0x01], // CBOR [1]
        reply: reply.into(),
        deadline_unix_ms: 0,
        params: Vec::new(),
        keep_result: false,
        ..Default::default()
    }
}

const SHORT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn publish_pull_ack_reply_round_trip() {
    let Some(p) = Pool::new("roundtrip", &settings(30_000, 3)).await else { return };
    let router = berth_nats::ResultRouter::start(&p.broker).await.unwrap();
    let rx = router.register("in-1");
    let seq = p.broker.publish_input(&p.names, input("in-1", router.inbox())).await.unwrap();
    // The same input id again is a duplicate JetStream drops (Nats-Msg-Id).
    assert_eq!(p.broker.publish_input(&p.names, input("in-1", router.inbox())).await.unwrap(), seq);

    let mut w = p.broker.worker(&p.names).await.unwrap();
    let got = w.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.inputs.len(), 1);
    let i = &d.inputs[0];
    assert_eq!((i.input_id.as_str(), i.attempt, i.method.as_str()), ("in-1", 1, "run"));
    assert_eq!(i.args.as_ref(), &[0x81, 0x01]);
    assert!(!d.last_attempt);
    p.broker.reply(&i.reply, &BrokerResult::value(&i.input_id, i.attempt, vec![0x02]), None).await.unwrap();
    // A second result for the same input (as after a redelivery) is dropped by the router.
    p.broker.reply(&i.reply, &BrokerResult::value(&i.input_id, 2, vec![0x03]), None).await.unwrap();
    d.lease.ack().await.unwrap();
    p.broker.flush().await.unwrap();

    let r = tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap();
    assert_eq!((r.input_id.as_str(), r.attempt), ("in-1", 1));
    assert_eq!(r.outcome, Some(berth_nats::envelope::Outcome::Value(vec![0x02])));
    assert!(w.pull(10, SHORT).await.unwrap().is_empty(), "acked: gone from the work queue");
}

#[tokio::test]
async fn nak_with_delay_redelivers_after_the_delay_as_the_next_attempt() {
    let Some(p) = Pool::new("nak", &settings(30_000, 3)).await else { return };
    p.broker.publish_input(&p.names, input("n-1", "")).await.unwrap();
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let got = w.pull(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got[0].inputs[0].attempt, 1);
    let t = Instant::now();
    got[0].lease.nak_after(Duration::from_millis(1500)).await.unwrap();
    assert!(w.pull(1, SHORT).await.unwrap().is_empty(), "not before the delay");
    let again = w.pull(1, Duration::from_secs(5)).await.unwrap();
    let waited = t.elapsed();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].inputs[0].input_id.as_str(), again[0].inputs[0].attempt), ("n-1", 2));
    assert!(waited >= Duration::from_millis(1400), "redelivered after {waited:?}");
    again[0].lease.ack().await.unwrap();
}

#[tokio::test]
async fn a_message_not_acked_within_ack_wait_is_redelivered() {
    let Some(p) = Pool::new("ackwait", &settings(1000, 3)).await else { return };
    p.broker.publish_input(&p.names, input("a-1", "")).await.unwrap();
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let t = Instant::now();
    let first = w.pull(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.len(), 1);
    // The worker "dies": nothing settles the lease.
    let again = w.pull(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].inputs[0].attempt, 2);
    assert!(t.elapsed() >= Duration::from_millis(900), "after {:?}", t.elapsed());
    again[0].lease.ack().await.unwrap();
}

#[tokio::test]
async fn progress_keeps_the_lease() {
    let Some(p) = Pool::new("progress", &settings(1000, 5)).await else { return };
    p.broker.publish_input(&p.names, input("p-1", "")).await.unwrap();
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let mut other = p.broker.worker(&p.names).await.unwrap();
    let got = w.pull(1, Duration::from_secs(5)).await.unwrap();
    let t = Instant::now();
    // 3 s of work, three times ack_wait, with progress every 400 ms.
    while t.elapsed() < Duration::from_secs(3) {
        got[0].lease.progress().await.unwrap();
        assert!(other.pull(1, Duration::from_millis(400)).await.unwrap().is_empty(), "redelivered while in progress");
    }
    got[0].lease.ack().await.unwrap();
    p.broker.flush().await.unwrap();
    assert!(other.pull(1, Duration::from_millis(1500)).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_termed_message_is_not_redelivered() {
    let Some(p) = Pool::new("term", &settings(500, 5)).await else { return };
    p.broker.publish_input(&p.names, input("t-1", "")).await.unwrap();
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let got = w.pull(1, Duration::from_secs(5)).await.unwrap();
    got[0].lease.term().await.unwrap();
    assert!(w.pull(1, Duration::from_secs(2)).await.unwrap().is_empty(), "4 ack_waits later, still gone");
}

#[tokio::test]
async fn max_deliver_stops_redelivery() {
    let Some(p) = Pool::new("maxdeliver", &settings(500, 2)).await else { return };
    p.broker.publish_input(&p.names, input("m-1", "")).await.unwrap();
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let first = w.pull(1, Duration::from_secs(5)).await.unwrap();
    assert!(!first[0].last_attempt);
    let second = w.pull(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(second[0].inputs[0].attempt, 2);
    assert!(second[0].last_attempt, "max_deliver 2: the second delivery is the last");
    assert!(w.pull(1, Duration::from_secs(2)).await.unwrap().is_empty(), "no third delivery");
}

#[tokio::test]
async fn a_foreign_message_is_termed_and_the_next_berth_message_still_arrives() {
    let Some(p) = Pool::new("foreign", &settings(500, 5)).await else { return };
    let js = async_nats::jetstream::new(p.broker.client().clone());
    js.publish(p.names.subject.clone(), "hello, not berth".into()).await.unwrap().await.unwrap();
    p.broker.publish_input(&p.names, input("f-1", "")).await.unwrap();
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let mut got = w.pull(10, Duration::from_secs(5)).await.unwrap();
    if got.is_empty() {
        // The foreign one came alone in the first pull and was termed: pull again.
        got = w.pull(10, Duration::from_secs(5)).await.unwrap();
    }
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].inputs[0].input_id, "f-1");
    got[0].lease.ack().await.unwrap();
    // Four ack_waits later the foreign message has not come back.
    assert!(w.pull(10, Duration::from_secs(2)).await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_broker_fails_within_a_bound() {
    // A closed port, and an address nothing answers (no hang on either).
    for url in ["nats://127.0.0.1:1", "nats://10.255.255.1:4222"] {
        let t = Instant::now();
        let e = Broker::connect(url).await.err().expect("no server there");
        assert!(t.elapsed() < Duration::from_secs(6), "{url}: took {:?}", t.elapsed());
        assert_eq!(e.kind, ErrorKind::Unreachable, "{e}");
        assert!(e.message.contains(url) && e.message.contains("nats-server -js"), "{e}");
    }
}

#[tokio::test]
async fn a_stream_of_another_app_version_or_other_settings_is_refused() {
    let s1 = settings(30_000, 3);
    let Some(p) = Pool::new("versions", &s1).await else { return };
    // The same app again: verified, not changed.
    p.broker.ensure_pool(&p.app, &p.names, &s1).await.unwrap();

    let other_version = PoolSettings { fingerprint: "fp-2".into(), ..s1.clone() };
    let e = p.broker.ensure_pool(&p.app, &p.names, &other_version).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    assert!(e.message.contains(&p.names.stream), "{e}");
    assert!(e.message.contains(&format!("nats stream rm {}", p.names.stream)), "{e}");
    assert!(e.message.contains("fp-1") && e.message.contains("fp-2"), "{e}");

    let other_timeout = PoolSettings { ack_wait: Duration::from_secs(99), ..s1.clone() };
    let e = p.broker.ensure_pool(&p.app, &p.names, &other_timeout).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict, "{e}");
    assert!(e.message.contains("ack_wait") && e.message.contains("nats consumer rm"), "{e}");
}

/// A server without JetStream is refused, saying to start it with -js. Starts its own
/// nats-server (skips when the binary is not installed) on a free port.
#[tokio::test]
async fn a_server_without_jetstream_is_refused() {
    let Ok(port) = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()) else {
        return;
    };
    let child = std::process::Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("skipped: no nats-server binary in PATH (apt-get install nats-server)");
        return;
    };
    let url = format!("nats://127.0.0.1:{port}");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let t = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() && t.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = Broker::connect(&url).await;
    let _ = child.kill();
    let _ = child.wait();
    let e = r.err().expect("refused");
    assert_eq!(e.kind, ErrorKind::NoJetStream, "{e}");
    assert!(e.message.contains(&url) && e.message.contains("-js"), "{e}");
}

/// A new app's results bucket as two fronts see it, each on a connection of its own: the app's
/// name, the first front's broker, and each front's bucket.
async fn two_fronts() -> (String, Broker, SpawnResults, SpawnResults) {
    let app = unique("test");
    let (a, b) = (Broker::connect(URL).await.unwrap(), Broker::connect(URL).await.unwrap());
    let on_a = a.spawn_results(&app, Duration::from_secs(60)).await.unwrap();
    let on_b = b.spawn_results(&app, Duration::from_secs(60)).await.unwrap();
    (app, a, on_a, on_b)
}

/// Removes the bucket [`two_fronts`] made.
async fn drop_results(broker: &Broker, app: &str) {
    let js = async_nats::jetstream::new(broker.client().clone());
    js.delete_key_value(berth_core::broker::results_bucket(app)).await.unwrap();
}

#[tokio::test]
async fn spawn_results_keep_the_first_and_are_found_by_any_front() {
    if !nats_here() {
        return;
    }
    let (app, a, on_a, on_b) = two_fronts().await;
    assert_eq!(on_b.get("fc-1").await.unwrap(), None);
    let waiting = tokio::spawn({
        let on_b = on_b.clone();
        async move { on_b.wait("fc-1", Duration::from_secs(5)).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(on_a.put("fc-1", &BrokerResult::value("in-1", 1, vec![1])).await.unwrap());
    assert!(!on_a.put("fc-1", &BrokerResult::value("in-1", 2, vec![2])).await.unwrap(), "a late duplicate");
    let got = waiting.await.unwrap().unwrap().expect("the result");
    assert_eq!(got.attempt, 1);
    assert_eq!(on_b.get("fc-1").await.unwrap().map(|r| r.attempt), Some(1));
    assert_eq!(on_b.wait("fc-none", Duration::from_millis(300)).await.unwrap(), None);
    drop_results(&a, &app).await;
}

#[tokio::test]
async fn schedule_ticks_are_started_once_and_not_while_the_last_run_runs() {
    if !nats_here() {
        return;
    }
    let (app, a, on_a, on_b) = two_fronts().await;
    let long = Duration::from_secs(60);
    // Two fronts at tick 1000: one fires it.
    let TickStart::Fire(rev) = on_a.start_tick("f", 1000, long).await.unwrap() else { panic!("the first front fires") };
    assert_eq!(on_b.start_tick("f", 1000, long).await.unwrap(), TickStart::Taken);
    // Its run still runs at tick 2000, marked: neither front starts it.
    let rev = on_a.mark_tick("f", 1000, true, rev).await.unwrap().expect("still ours");
    assert_eq!(on_b.start_tick("f", 2000, long).await.unwrap(), TickStart::Running(1000));
    assert_eq!(on_a.start_tick("f", 2000, long).await.unwrap(), TickStart::Running(1000));
    // Ended: the next tick is fired, by one front; an older tick no more.
    assert_eq!(on_a.mark_tick("f", 1000, false, rev).await.unwrap().map(|_| ()), Some(()));
    let TickStart::Fire(rev3) = on_b.start_tick("f", 3000, long).await.unwrap() else { panic!("tick 3000 is fired") };
    assert_eq!(on_a.start_tick("f", 3000, long).await.unwrap(), TickStart::Taken);
    assert_eq!(on_a.start_tick("f", 2000, long).await.unwrap(), TickStart::Taken);
    // Another function's ticks are apart.
    assert!(matches!(on_a.start_tick("g", 3000, long).await.unwrap(), TickStart::Fire(_)));
    // A run left unmarked longer than the other front waits is taken as ended (its front is
    // gone): the next tick is fired, and the old front's marks no longer change the record.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let short = Duration::from_millis(20);
    assert!(matches!(on_a.start_tick("f", 4000, short).await.unwrap(), TickStart::Fire(_)));
    assert_eq!(on_b.mark_tick("f", 3000, false, rev3).await.unwrap(), None, "no longer B's run");
    assert_eq!(on_b.start_tick("f", 5000, long).await.unwrap(), TickStart::Running(4000));
    drop_results(&a, &app).await;
}

/// A nats-server of the test's own (JetStream, a store under a temp dir, a free port),
/// killed when dropped.
struct OwnServer {
    child: std::process::Child,
    port: u16,
}

impl OwnServer {
    fn start(port: u16, store: &std::path::Path) -> Option<Self> {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let t = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "nats-server did not listen on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self { child, port })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Inputs published before the server is killed (SIGKILL) are still there after it restarts on
/// the same store (file storage), the pool's stream and consumer verify unchanged, and a
/// connection made before the restart reconnects and pulls them.
#[tokio::test]
async fn inputs_survive_a_server_restart() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let store = std::env::temp_dir().join(unique("berth-nats-restart"));
    let Some(server) = OwnServer::start(port, &store) else {
        eprintln!("skipped: no nats-server binary in PATH (apt-get install nats-server)");
        return;
    };
    let broker = Broker::connect(&server.url()).await.unwrap();
    let names = names("restart-app", "f");
    let s = settings(30_000, 3);
    broker.ensure_pool("restart-app", &names, &s).await.unwrap();
    for i in 0..3 {
        broker.publish_input(&names, input(&format!("r-{i}"), "")).await.unwrap();
    }
    drop(server);
    let server = OwnServer::start(port, &store).unwrap();

    // The old connection reconnects on its own.
    let t = Instant::now();
    let mut w = loop {
        match broker.worker(&names).await {
            Ok(w) => break w,
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(15), "no reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    broker.ensure_pool("restart-app", &names, &s).await.unwrap();
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let got = w.pull(10, Duration::from_secs(5)).await.unwrap();
        assert!(!got.is_empty(), "only {ids:?} after the restart");
        for d in got {
            ids.extend(d.inputs.iter().map(|i| i.input_id.clone()));
            d.lease.ack().await.unwrap();
        }
    }
    ids.sort();
    assert_eq!(ids, ["r-0", "r-1", "r-2"]);
    drop(server);
    let _ = std::fs::remove_dir_all(&store);
}

#[tokio::test]
async fn retry_naks_with_the_pools_backoff() {
    let Some(p) = Pool::new("retry", &settings(30_000, 3)).await else { return };
    p.broker.publish_input(&p.names, input("b-1", "")).await.unwrap();
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let got = w.pull(1, Duration::from_secs(5)).await.unwrap();
    let policy = berth_core::RetryPolicy::new(2, 2.0, Duration::from_millis(1000), Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    got[0].lease.retry(&policy, got[0].inputs[0].attempt).await.unwrap();
    let again = w.pull(1, Duration::from_secs(5)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(900), "after {:?}", t.elapsed());
    assert_eq!(again[0].inputs[0].attempt, 2);
    let t = Instant::now();
    again[0].lease.retry(&policy, again[0].inputs[0].attempt).await.unwrap();
    assert!(w.pull(1, Duration::from_millis(1500)).await.unwrap().is_empty(), "the second retry waits 2 s");
    let third = w.pull(1, Duration::from_secs(5)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(1900), "after {:?}", t.elapsed());
    assert!(third[0].last_attempt);
    third[0].lease.term().await.unwrap();
}

#[tokio::test]
async fn several_inputs_in_one_message_share_one_lease() {
    let Some(p) = Pool::new("batch", &settings(30_000, 3)).await else { return };
    let router = berth_nats::ResultRouter::start(&p.broker).await.unwrap();
    let rxs: Vec<_> = (0..3).map(|i| router.register(format!("b-{i}"))).collect();
    let batch = || (0..3).map(|i| input(&format!("b-{i}"), router.inbox())).collect::<Vec<_>>();
    let seq = p.broker.start_publish(&p.names, batch()).await.unwrap().wait().await.unwrap();
    // Published again (a front retrying its publish): the same Nats-Msg-Id, dropped.
    assert_eq!(p.broker.start_publish(&p.names, batch()).await.unwrap().wait().await.unwrap(), seq);
    // Something else on the inbox is dropped, and the router keeps going.
    p.broker.client().publish(router.inbox().to_string(), "junk".into()).await.unwrap();

    let mut w = p.broker.worker(&p.names).await.unwrap();
    let got = w.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1, "one message");
    let ids: Vec<_> = got[0].inputs.iter().map(|i| (i.input_id.as_str(), i.attempt)).collect();
    assert_eq!(ids, [("b-0", 1), ("b-1", 1), ("b-2", 1)]);
    for i in &got[0].inputs {
        p.broker.reply(&i.reply, &BrokerResult::value(&i.input_id, i.attempt, vec![0xf6]), None).await.unwrap();
    }
    got[0].lease.ack().await.unwrap();
    for rx in rxs {
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx).await.unwrap().unwrap().attempt, 1);
    }
    assert!(w.pull(10, SHORT).await.unwrap().is_empty());
}

/// Two workers share a consumer whose `max_ack_pending` one worker's pull would fill alone:
/// each pull is filled only in part and stays open, so what it delivered must run (here: be
/// acked) before the pull ends, or neither worker settles anything (`Worker::pull_each`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_whose_pulls_the_server_cannot_fill_still_settle_every_input() {
    let mut s = settings(30_000, 3);
    s.max_ack_pending = 4;
    let Some(p) = Pool::new("twoworkers", &s).await else { return };
    let total = 24;
    for i in 0..total {
        p.broker.publish_input(&p.names, input(&format!("tw-{i}"), "")).await.unwrap();
    }
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let mut w = p.broker.worker(&p.names).await.unwrap();
        let acked = acked.clone();
        workers.push(tokio::spawn(async move {
            while acked.load(std::sync::atomic::Ordering::SeqCst) < total {
                let acked = acked.clone();
                // Each delivery settles on a task of its own, as a worker's inputs run.
                w.pull_each(4, Duration::from_millis(200), move |d| {
                    let acked = acked.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        d.lease.ack().await.unwrap();
                        acked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    });
                })
                .await
                .unwrap();
            }
        }));
    }
    let all = futures_util::future::join_all(workers);
    tokio::time::timeout(Duration::from_secs(30), all).await.expect("every input settled (no stall)");
    assert_eq!(acked.load(std::sync::atomic::Ordering::SeqCst), total);
}

/// A pull request the server never answers (here: the server stopped with SIGSTOP, as a server
/// killed or cut off mid-request leaves it) ends after `PULL_ANSWER_MARGIN`, and the worker
/// pulls again once the server answers: its feeder does not wait for ever (a worker stalled so
/// after a NATS restart, its pool's inputs waiting in the stream).
#[tokio::test]
async fn a_pull_the_server_never_answers_ends_and_the_next_pull_gets_the_inputs() {
    let (port, store) = own_store("stopped");
    let Some(server) = OwnServer::start(port, &store) else {
        eprintln!("skipped: no nats-server binary in PATH (apt-get install nats-server)");
        return;
    };
    let broker = Broker::connect(&server.url()).await.unwrap();
    let names = names("stopped-app", "f");
    broker.ensure_pool("stopped-app", &names, &settings(30_000, 3)).await.unwrap();
    let mut w = broker.worker(&names).await.unwrap();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill").args([sig, &server.child.id().to_string()]).status().unwrap();
        assert!(ok.success(), "kill {sig}");
    };
    signal("-STOP");
    let t = Instant::now();
    let mut got = 0;
    let pulled = tokio::time::timeout(Duration::from_secs(60), w.pull_each(10, SHORT, |_| got += 1)).await;
    signal("-CONT");
    let pulled = pulled.expect("the pull ended (it waited for an answer that never came)");
    assert_eq!(pulled.unwrap(), 0);
    assert!(t.elapsed() >= berth_nats::worker::PULL_ANSWER_MARGIN, "it waited for the answer first");
    broker.publish_input(&names, input("s-1", "")).await.unwrap();
    let got = w.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.inputs[0].input_id.as_str()).collect::<Vec<_>>(), ["s-1"]);
    got[0].lease.ack().await.unwrap();
    drop(server);
    let _ = std::fs::remove_dir_all(&store);
}

/// A cancel published by one connection reaches every subscriber of the app (each worker),
/// and not another app's.
#[tokio::test]
async fn cancels_reach_every_worker_of_the_app() {
    if !nats_here() {
        return;
    }
    use futures_util::StreamExt as _;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let (app, other) = (format!("cancel-{nanos}"), format!("cancel-other-{nanos}"));
    let front = Broker::connect(URL).await.unwrap();
    let (w1, w2) = (Broker::connect(URL).await.unwrap(), Broker::connect(URL).await.unwrap());
    let mut a = w1.cancelled_calls(&app).await.unwrap();
    let mut b = w2.cancelled_calls(&app).await.unwrap();
    let mut elsewhere = w2.cancelled_calls(&other).await.unwrap();
    w1.flush().await.unwrap();
    w2.flush().await.unwrap();
    // A flush sends the subscriptions but does not wait for the server to have them, and the
    // front is another connection: the cancel is published again until both have heard it (a
    // cancel is core NATS, at most once, to whoever is subscribed then).
    let again = {
        let front = front.clone();
        let app = app.clone();
        tokio::spawn(async move {
            loop {
                front.cancel_calls(&app, &["fc-1".into(), "fc-x-2".into()]).await.unwrap();
                front.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let within = |s| tokio::time::timeout(Duration::from_secs(30), s);
    assert_eq!(within(a.next()).await.unwrap().unwrap(), ["fc-1", "fc-x-2"]);
    assert_eq!(within(b.next()).await.unwrap().unwrap(), ["fc-1", "fc-x-2"]);
    again.abort();
    assert!(tokio::time::timeout(SHORT, elsewhere.next()).await.is_err(), "another app's workers hear nothing");
}

/// A store directory and a free port for an [`OwnServer`].
fn own_store(tag: &str) -> (u16, std::path::PathBuf) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    (port, std::env::temp_dir().join(unique(&format!("berth-nats-{tag}"))))
}

/// A publish made while the server is down does not fail: async-nats keeps it in its buffer
/// (the first send does not error), its ack never comes, and `PendingPublish::wait` sends it
/// again with the same message id until the restarted server stores it, once.
#[tokio::test]
async fn a_publish_while_the_server_is_down_is_sent_again_until_stored_once() {
    let (port, store) = own_store("down");
    let Some(server) = OwnServer::start(port, &store) else {
        eprintln!("skipped: no nats-server binary in PATH (apt-get install nats-server)");
        return;
    };
    let broker = Broker::connect(&server.url()).await.unwrap();
    let names = names("down-app", "f");
    broker.ensure_pool("down-app", &names, &settings(30_000, 3)).await.unwrap();
    drop(server);
    let publishing = tokio::spawn({
        let (broker, names) = (broker.clone(), names.clone());
        async move { broker.publish_input(&names, input("d-1", "")).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!publishing.is_finished(), "no error while the server is down: it keeps trying");
    let server = OwnServer::start(port, &store).unwrap();
    let seq = tokio::time::timeout(Duration::from_secs(30), publishing).await.unwrap().unwrap().unwrap();
    // Published again by a front that did not hear the ack: the stream keeps one.
    assert_eq!(broker.publish_input(&names, input("d-1", "")).await.unwrap(), seq);
    let mut w = broker.worker(&names).await.unwrap();
    let got = w.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.iter().map(|d| d.inputs[0].input_id.as_str()).collect::<Vec<_>>(), ["d-1"]);
    got[0].lease.ack().await.unwrap();
    broker.flush().await.unwrap();
    assert!(w.pull(10, SHORT).await.unwrap().is_empty(), "stored once");
    drop(server);
    let _ = std::fs::remove_dir_all(&store);
}

/// A server that does not come back: the publish fails once its patience has passed, naming
/// the subject, rather than waiting for ever.
#[tokio::test]
async fn a_publish_gives_up_after_its_patience() {
    let (port, store) = own_store("gone");
    let Some(server) = OwnServer::start(port, &store) else {
        eprintln!("skipped: no nats-server binary in PATH (apt-get install nats-server)");
        return;
    };
    let patience = berth_nats::Patience { publish: Duration::from_secs(2), ..Default::default() };
    let broker = Broker::connect(&server.url()).await.unwrap().with_patience(patience);
    let names = names("gone-app", "f");
    broker.ensure_pool("gone-app", &names, &settings(30_000, 3)).await.unwrap();
    drop(server);
    let t = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(30), broker.publish_input(&names, input("g-1", "")))
        .await
        .expect("gives up")
        .expect_err("no server");
    assert!(t.elapsed() >= Duration::from_secs(2), "kept trying for its patience: {:?}", t.elapsed());
    assert_eq!(e.kind, ErrorKind::Request, "{e}");
    assert!(e.message.contains(&names.subject), "{e}");
    let _ = std::fs::remove_dir_all(&store);
}

/// `Broker::reply` waits for the front's confirmation: a result nobody answers (lost on its
/// way, or the front slow) is sent again after `confirm_wait`, and one sent before the front's
/// inbox is subscribed (no responders: a front not yet resubscribed after a reconnect) again
/// after a pause; it returns once answered.
#[tokio::test]
async fn a_result_is_sent_again_until_the_front_confirms_it() {
    if !nats_here() {
        return;
    }
    let patience = berth_nats::Patience { confirm_wait: Duration::from_millis(500), ..Default::default() };
    let worker = Broker::connect(URL).await.unwrap().with_patience(patience);
    let front = async_nats::connect(URL).await.unwrap();
    let inbox = front.new_inbox();
    let sending = tokio::spawn({
        let (worker, inbox) = (worker.clone(), inbox.clone());
        async move { worker.reply(&inbox, &BrokerResult::value("c-1", 1, vec![1]), None).await }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!sending.is_finished(), "no front yet: still trying");
    let mut sub = front.subscribe(inbox).await.unwrap();
    use futures_util::StreamExt as _;
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
    assert!(first.reply.is_some(), "a result is a request");
    // Not answered: as if the confirmation were lost.
    let second = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
    assert_eq!(second.payload, first.payload, "the same result again");
    front.publish(second.reply.unwrap(), bytes::Bytes::new()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), sending).await.unwrap().unwrap().unwrap();
}

/// A front that is gone (nothing subscribed to its inbox for `front_gone`): the worker gives
/// the result up with an error saying so, and can ack the input.
#[tokio::test]
async fn a_result_for_a_front_that_is_gone_is_given_up() {
    if !nats_here() {
        return;
    }
    let patience = berth_nats::Patience { front_gone: Duration::from_secs(1), ..Default::default() };
    let worker = Broker::connect(URL).await.unwrap().with_patience(patience);
    let t = Instant::now();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        worker.reply("_INBOX.nobody-here", &BrokerResult::value("x-1", 1, vec![1]), None),
    )
    .await
    .unwrap()
    .expect_err("nobody confirms");
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(e.message.contains("x-1") && e.message.contains("is gone"), "{e}");
}

/// The front's router confirms every result it reads — the first, a duplicate, one of an
/// input it does not wait for — so that no worker keeps sending one.
#[tokio::test]
async fn the_router_confirms_every_result() {
    if !nats_here() {
        return;
    }
    let patience = berth_nats::Patience {
        result: Duration::from_secs(3),
        front_gone: Duration::from_secs(3),
        confirm_wait: Duration::from_secs(1),
        ..Default::default()
    };
    let front = Broker::connect(URL).await.unwrap();
    let router = berth_nats::ResultRouter::start(&front).await.unwrap();
    let rx = router.register("k-1");
    let worker = Broker::connect(URL).await.unwrap().with_patience(patience);
    for r in [
        BrokerResult::value("k-1", 1, vec![1]),
        BrokerResult::value("k-1", 2, vec![2]),
        BrokerResult::value("k-9", 1, vec![9]),
    ] {
        worker.reply(router.inbox(), &r, None).await.unwrap();
    }
    assert_eq!(rx.await.unwrap().attempt, 1);
}

/// The NATS server SIGKILLed between a worker running an input and settling it, and restarted
/// on its store: the worker's result, sent while the server is down, reaches the front's
/// router once both have reconnected (the router's subscription is made again by the client),
/// and the worker acks only then; the input is gone from the stream.
#[tokio::test]
async fn a_result_sent_while_the_server_restarts_reaches_the_front() {
    let (port, store) = own_store("result");
    let Some(server) = OwnServer::start(port, &store) else {
        eprintln!("skipped: no nats-server binary in PATH (apt-get install nats-server)");
        return;
    };
    let front = Broker::connect(&server.url()).await.unwrap();
    let worker = Broker::connect(&server.url()).await.unwrap();
    let names = names("result-app", "f");
    front.ensure_pool("result-app", &names, &settings(30_000, 3)).await.unwrap();
    let router = berth_nats::ResultRouter::start(&front).await.unwrap();
    let rx = router.register("s-1");
    front.publish_input(&names, input("s-1", router.inbox())).await.unwrap();
    let mut w = worker.worker(&names).await.unwrap();
    let got = w.pull(1, Duration::from_secs(5)).await.unwrap();
    let i = got[0].inputs[0].clone();
    drop(server);
    let settling = tokio::spawn({
        let worker = worker.clone();
        async move {
            let d = &got[0];
            worker.reply(&i.reply, &BrokerResult::value(&i.input_id, i.attempt, vec![7]), Some(&d.lease)).await?;
            d.lease.ack().await?;
            worker.flush().await
        }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!settling.is_finished(), "not settled while the server is down");
    let server = OwnServer::start(port, &store).unwrap();
    let r = tokio::time::timeout(Duration::from_secs(30), rx).await.expect("the result came").unwrap();
    assert_eq!(r.outcome, Some(berth_nats::envelope::Outcome::Value(vec![7])));
    tokio::time::timeout(Duration::from_secs(30), settling).await.unwrap().unwrap().unwrap();
    // Acked after the result was confirmed: the consumer holds nothing, pending or unacked.
    // Asked of the consumer rather than by pulling again: the restarted server may mark the
    // message for redelivery before it has processed the ack (acks are processed apart from the
    // connection's order), and a pull in that moment gets it again.
    let js = async_nats::jetstream::new(worker.client().clone());
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        js.get_stream(&names.stream).await.unwrap().get_consumer(&names.consumer).await.unwrap();
    let t = Instant::now();
    loop {
        let info = consumer.info().await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "acked after the result was confirmed: {info:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(w);
    drop(server);
    let _ = std::fs::remove_dir_all(&store);
}

/// Three inputs in one message, published as a front does, pulled by one worker.
async fn three_in_one(p: &Pool, router: &berth_nats::ResultRouter, tag: &str) -> berth_nats::Delivery {
    let batch = (0..3).map(|i| input(&format!("{tag}-{i}"), router.inbox())).collect::<Vec<_>>();
    p.broker.start_publish(&p.names, batch).await.unwrap().wait().await.unwrap();
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let mut got = w.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.len(), 1, "one message");
    let d = got.pop().unwrap();
    assert_eq!(d.inputs.iter().map(|i| i.attempt).collect::<Vec<_>>(), [1, 1, 1]);
    d
}

fn ok(i: &berth_nats::Input) -> Fate {
    Fate::Reply(BrokerResult::value(&i.input_id, i.attempt, vec![i.attempt as u8]))
}

async fn result_of(rx: tokio::sync::oneshot::Receiver<BrokerResult>) -> BrokerResult {
    tokio::time::timeout(Duration::from_secs(10), rx).await.expect("a result within 10 s").expect("router alive")
}

/// One input of three fails with a retry left: it alone runs again, as its next attempt, after
/// the Retries delay; the two that finished are not delivered again, and each input has one
/// result at the caller.
#[tokio::test]
async fn one_retried_input_of_several_runs_again_alone_after_its_delay() {
    let Some(p) = Pool::new("retryone", &settings(30_000, 3)).await else { return };
    let router = berth_nats::ResultRouter::start(&p.broker).await.unwrap();
    let rxs: Vec<_> = (0..3).map(|i| router.register(format!("r1-{i}"))).collect();
    let d = three_in_one(&p, &router, "r1").await;
    let fates = vec![ok(&d.inputs[0]), Fate::Retry(Duration::from_millis(1000)), ok(&d.inputs[2])];
    let t = Instant::now();
    assert_eq!(d.settle(&p.broker, fates).await.unwrap(), Settled::Republished(1));
    assert!(t.elapsed() >= Duration::from_millis(900), "republished after the delay, not {:?}", t.elapsed());

    let mut w = p.broker.worker(&p.names).await.unwrap();
    let again = w.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.len(), 1);
    let ids: Vec<_> = again[0].inputs.iter().map(|i| (i.input_id.as_str(), i.attempt)).collect();
    assert_eq!(ids, [("r1-1", 2)], "only the failed input, as attempt 2");
    assert!(!again[0].last_attempt_of(&again[0].inputs[0]));
    let d2 = again.into_iter().next().unwrap();
    let fates = vec![ok(&d2.inputs[0])];
    assert_eq!(d2.settle(&p.broker, fates).await.unwrap(), Settled::Acked);
    let attempts: Vec<u32> =
        futures_util::future::join_all(rxs.into_iter().map(result_of)).await.iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, [1, 2, 1]);
    assert!(w.pull(10, Duration::from_secs(2)).await.unwrap().is_empty(), "the original message was acked");
}

/// A stopping worker releases the inputs of a message it did not start: they are back in the
/// stream at once (no ack deadline to wait), the one it finished is not; when it started none,
/// the whole message goes back at once.
#[tokio::test]
async fn released_inputs_come_back_at_once_and_finished_ones_do_not() {
    let Some(p) = Pool::new("release", &settings(30_000, 5)).await else { return };
    let router = berth_nats::ResultRouter::start(&p.broker).await.unwrap();
    let first = router.register("rl-0");
    let d = three_in_one(&p, &router, "rl").await;
    let fates = vec![ok(&d.inputs[0]), Fate::Release, Fate::Release];
    assert_eq!(d.settle(&p.broker, fates).await.unwrap(), Settled::Republished(2));
    assert_eq!(result_of(first).await.attempt, 1);

    let mut w = p.broker.worker(&p.names).await.unwrap();
    let again = w.pull(10, SHORT * 10).await.unwrap();
    assert_eq!(again.len(), 1);
    let ids: Vec<_> = again[0].inputs.iter().map(|i| (i.input_id.as_str(), i.attempt)).collect();
    assert_eq!(ids, [("rl-1", 2), ("rl-2", 2)]);
    // Released again, all of them: the message is nak'ed whole, back at once.
    let d2 = again.into_iter().next().unwrap();
    assert_eq!(d2.settle(&p.broker, vec![Fate::Release, Fate::Release]).await.unwrap(), Settled::Naked);
    let third = w.pull(10, SHORT * 10).await.unwrap();
    let ids: Vec<_> = third[0].inputs.iter().map(|i| (i.input_id.as_str(), i.attempt)).collect();
    assert_eq!(ids, [("rl-1", 3), ("rl-2", 3)]);
    third[0].lease.ack().await.unwrap();
}

/// A worker that dies mid-message (it sent one input's result, settled nothing) loses the whole
/// lease: after `ack_wait` the whole message comes back, each input as its next attempt, and
/// the caller still has one result per input (the finished input's second result is dropped).
#[tokio::test]
async fn a_message_whose_worker_died_comes_back_whole_and_results_stay_one_per_input() {
    let Some(p) = Pool::new("killed", &settings(1000, 5)).await else { return };
    let router = berth_nats::ResultRouter::start(&p.broker).await.unwrap();
    let rxs: Vec<_> = (0..3).map(|i| router.register(format!("k-{i}"))).collect();
    let d = three_in_one(&p, &router, "k").await;
    let i0 = &d.inputs[0];
    p.broker.reply(&i0.reply, &BrokerResult::value(&i0.input_id, i0.attempt, vec![1]), None).await.unwrap();
    drop(d); // the worker dies: no ack, no nak

    let mut w = p.broker.worker(&p.names).await.unwrap();
    let again = w.pull(10, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.len(), 1, "redelivered after ack_wait");
    assert_eq!(again[0].inputs.iter().map(|i| i.attempt).collect::<Vec<_>>(), [2, 2, 2], "whole, each as attempt 2");
    let d2 = again.into_iter().next().unwrap();
    let fates = d2.inputs.iter().map(ok).collect();
    assert_eq!(d2.settle(&p.broker, fates).await.unwrap(), Settled::Acked);
    let attempts: Vec<u32> =
        futures_util::future::join_all(rxs.into_iter().map(result_of)).await.iter().map(|r| r.attempt).collect();
    assert_eq!(attempts, [1, 2, 2], "k-0 keeps its first result");
}

/// `max_deliver` counts an input's attempts over every message that held it: an input
/// republished after its first attempt is on its last attempt in its new message's first
/// delivery when `max_deliver` is 2.
#[tokio::test]
async fn max_deliver_counts_an_inputs_attempts_across_messages() {
    let Some(p) = Pool::new("attempts", &settings(30_000, 2)).await else { return };
    let router = berth_nats::ResultRouter::start(&p.broker).await.unwrap();
    let d = three_in_one(&p, &router, "md").await;
    assert!(!d.last_attempt_of(&d.inputs[0]));
    let fates = vec![ok(&d.inputs[0]), Fate::Retry(Duration::ZERO), ok(&d.inputs[2])];
    assert_eq!(d.settle(&p.broker, fates).await.unwrap(), Settled::Republished(1));
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let again = w.pull(10, Duration::from_secs(5)).await.unwrap();
    let d2 = &again[0];
    assert_eq!((d2.delivered, d2.last_attempt, d2.inputs[0].attempt), (1, false, 2));
    assert!(d2.last_attempt_of(&d2.inputs[0]), "attempt 2 of max_deliver 2: a failure now is final");
    d2.lease.ack().await.unwrap();
}

/// With nothing waiting, one `pull_each` keeps its pull request open and hands over each message
/// as it comes, up to its `max`: inputs published one after another reach the worker without a
/// pull request each (the old pull ended after the first).
#[tokio::test]
async fn one_pull_each_hands_over_messages_as_they_come_up_to_its_max() {
    let Some(p) = Pool::new("stream", &settings(30_000, 3)).await else { return };
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let publisher = {
        let (broker, names) = (p.broker.clone(), p.names.clone());
        tokio::spawn(async move {
            for i in 0..3 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                broker.publish_input(&names, input(&format!("s-{i}"), "")).await.unwrap();
            }
        })
    };
    let mut got = Vec::new();
    let n = w.pull_each(3, Duration::from_secs(20), |d| got.push(d)).await.unwrap();
    assert_eq!(n, 3, "three messages in one pull");
    assert_eq!(got.iter().map(|d| d.inputs[0].input_id.as_str()).collect::<Vec<_>>(), ["s-0", "s-1", "s-2"]);
    publisher.await.unwrap();
    for d in got {
        d.lease.ack().await.unwrap();
    }
}

/// An input released on its message's last delivery (`max_deliver` 1 here) is republished, not
/// nak'ed: a nak then would leave it in the stream, never delivered again and never answered.
#[tokio::test]
async fn an_input_released_on_the_last_delivery_is_not_lost() {
    let Some(p) = Pool::new("lastrelease", &settings(30_000, 1)).await else { return };
    p.broker.publish_input(&p.names, input("lr-1", "")).await.unwrap();
    let mut w = p.broker.worker(&p.names).await.unwrap();
    let got = w.pull(1, Duration::from_secs(5)).await.unwrap().pop().unwrap();
    assert!(got.last_attempt);
    assert_eq!(got.settle(&p.broker, vec![Fate::Release]).await.unwrap(), Settled::Republished(1));
    let again = w.pull(1, Duration::from_secs(5)).await.unwrap();
    assert_eq!(again.len(), 1, "delivered again");
    assert_eq!(again[0].inputs[0].attempt, 2);
    again[0].lease.ack().await.unwrap();
}

#[tokio::test]
async fn a_stream_inputs_items_reach_the_front_in_order_once_then_its_result_and_credit_reaches_the_worker() {
    if !nats_here() {
        return;
    }
    use berth_nats::envelope::StreamChunk;
    use futures_util::StreamExt as _;
    let front = Broker::connect(URL).await.unwrap();
    let worker = Broker::connect(URL).await.unwrap();
    let router = berth_nats::ResultRouter::start(&front).await.unwrap();
    let mut items = router.register_stream("s-1");
    let result = router.register("s-1");
    let (credit_to, credits) = worker.credit_inbox().await.unwrap();
    let mut credits = Box::pin(credits);
    let chunk = |first: u64, values: &[u8]| StreamChunk {
        input_id: "s-1".into(),
        attempt: 1,
        first,
        values: values.iter().map(|v| vec![*v]).collect(),
        credit_to: credit_to.clone(),
    };
    // Each send returns once the front confirmed it: the next goes after, and the result last.
    worker.send_items(router.inbox(), chunk(0, &[0, 1]), None).await.unwrap();
    worker.send_items(router.inbox(), chunk(2, &[2]), None).await.unwrap();
    // Items of an input nobody follows are confirmed and dropped (the worker does not wait).
    let stray = StreamChunk { input_id: "nobody".into(), ..chunk(0, &[9]) };
    tokio::time::timeout(Duration::from_secs(5), worker.send_items(router.inbox(), stray, None))
        .await
        .expect("confirmed")
        .unwrap();
    let done = BrokerResult { items: 3, ..BrokerResult::value("s-1", 1, vec![0xf6]) };
    worker.reply(router.inbox(), &done, None).await.unwrap();
    const WAIT: Duration = Duration::from_secs(5);
    let a = tokio::time::timeout(WAIT, items.recv()).await.unwrap().unwrap();
    let b = tokio::time::timeout(WAIT, items.recv()).await.unwrap().unwrap();
    assert_eq!((a.first, a.values.len(), b.first, b.values.len()), (0, 2, 2, 1), "in order, each once");
    assert_eq!(a.credit_to, credit_to, "the front learns where to send credit");
    let r = tokio::time::timeout(WAIT, result).await.unwrap().unwrap();
    assert_eq!(r.items, 3, "the result says how many items came before it");
    assert!(items.try_recv().is_err(), "nothing more");
    // The front's credit, a running total, reaches the worker's subject.
    front.send_credit(&credit_to, "s-1", 1, 8).await.unwrap();
    front.send_credit(&credit_to, "s-1", 1, 16).await.unwrap();
    let c1 = tokio::time::timeout(WAIT, credits.next()).await.unwrap().unwrap();
    let c2 = tokio::time::timeout(WAIT, credits.next()).await.unwrap().unwrap();
    assert_eq!((c1.input_id.as_str(), c1.attempt, c1.taken, c2.taken), ("s-1", 1, 8, 16));
    router.forget_stream("s-1");
}

/// What a test made on the server, deleted when dropped, also when the test fails: a queue's
/// stream, or a volume's store (and the test's folder of machines' copies).
enum Made {
    Queue(String),
    Volume(String, std::path::PathBuf),
}

impl Drop for Made {
    fn drop(&mut self) {
        if let Self::Volume(_, root) = self {
            let _ = std::fs::remove_dir_all(root);
        }
        let (queue, name) = match self {
            Self::Queue(name) => (true, name.clone()),
            Self::Volume(name, _) => (false, name.clone()),
        };
        // As Pool's drop: a thread with a runtime and a connection of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let broker = Broker::connect(URL).await?;
                if queue {
                    broker.drop_queue(&name).await
                } else {
                    broker.drop_volume(&name).await
                }
            })
        })
        .join();
    }
}

#[tokio::test]
async fn a_queue_is_a_stream_fifo_per_partition_whose_unacked_gets_come_back() {
    if !nats_here() {
        return;
    }
    let broker = Broker::connect(URL).await.unwrap();
    let name = unique("q");
    let _gone = Made::Queue(name.clone());
    assert!(broker.queue(&name, false).await.unwrap().is_none(), "absent until created");
    let q = broker.queue(&name, true).await.unwrap().unwrap();
    q.put("", vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]).await.unwrap();
    q.put("other part", vec![b"x".to_vec()]).await.unwrap();
    assert_eq!((q.len(Some("")).await.unwrap(), q.len(None).await.unwrap()), (3, 4));

    // Two taken and acked: gone; one taken and not acked: out, then back after the lease.
    let two = q.get("", 2, None).await.unwrap();
    assert_eq!(two.values, vec![b"a".to_vec(), b"b".to_vec()]);
    two.ack().await;
    let one = q.get("", 1, None).await.unwrap();
    assert_eq!(one.values, vec![b"c".to_vec()]);
    assert_eq!((q.len(Some("")).await.unwrap(), q.len(None).await.unwrap()), (0, 1), "out on lease");
    drop(one);
    let back = q.get("", 5, Some(berth_nats::queues::LEASE + Duration::from_secs(5))).await.unwrap();
    assert_eq!(back.values, vec![b"c".to_vec()], "given again once the lease passed");
    back.ack().await;

    // A blocked get is answered by a put from elsewhere (another connection), with what came with it.
    let waiting = {
        let name = name.clone();
        tokio::spawn(async move {
            let b = Broker::connect(URL).await.unwrap();
            let q = b.queue(&name, false).await.unwrap().unwrap();
            let t = q.get("other part", 10, Some(Duration::from_secs(20))).await.unwrap();
            let values = t.values.clone();
            t.ack().await;
            values
        })
    };
    let got = tokio::time::timeout(Duration::from_secs(20), waiting).await.unwrap().unwrap();
    assert_eq!(got, vec![b"x".to_vec()], "what was there already");
    let waiting = {
        let name = name.clone();
        tokio::spawn(async move {
            let b = Broker::connect(URL).await.unwrap();
            let q = b.queue(&name, false).await.unwrap().unwrap();
            let started = Instant::now();
            let t = q.get("other part", 10, Some(Duration::from_secs(20))).await.unwrap();
            let values = t.values.clone();
            t.ack().await;
            (values, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    q.put("other part", vec![b"y".to_vec(), b"z".to_vec()]).await.unwrap();
    let (got, after) = tokio::time::timeout(Duration::from_secs(20), waiting).await.unwrap().unwrap();
    assert_eq!(got.first(), Some(&b"y".to_vec()));
    assert!(after < Duration::from_secs(15), "released by the put, not the timeout: {after:?}");
    // Cleared and deleted.
    q.put("", vec![b"d".to_vec()]).await.unwrap();
    q.clear(None).await.unwrap();
    assert_eq!(q.len(None).await.unwrap(), 0);
    let empty = q.get("", 1, Some(Duration::from_millis(200))).await.unwrap();
    assert!(empty.values.is_empty());
    assert!(broker.drop_queue(&name).await.unwrap());
    assert!(!broker.drop_queue(&name).await.unwrap());
}

/// Two machines' copies of volume `name` (a directory and a manifest each) under `root`.
fn machines(root: &std::path::Path, name: &str) -> [(std::path::PathBuf, std::path::PathBuf); 2] {
    ["a", "b"].map(|m| {
        let dir = root.join(m).join(name);
        std::fs::create_dir_all(&dir).unwrap();
        (dir, root.join(m).join(".sync").join(name))
    })
}

#[tokio::test]
async fn a_volume_deleted_elsewhere_is_not_made_again_by_a_copy_that_syncs_later() {
    if !nats_here() {
        return;
    }
    let broker = Broker::connect(URL).await.unwrap();
    let name = unique("test-vol");
    let root = std::env::temp_dir().join(format!("berth-{name}"));
    let _gone = Made::Volume(name.clone(), root.clone());
    let [(a, a_sync), (b, b_sync)] = machines(&root, &name);
    std::fs::write(a.join("weights.bin"), b"v1").unwrap();
    broker.commit_volume(&name, &a, &a_sync).await.unwrap();
    assert_eq!(broker.reload_volume(&name, &b, &b_sync).await.unwrap().copied, 1);
    assert_eq!(std::fs::read(b.join("weights.bin")).unwrap(), b"v1");

    // Deleted from machine A (Volume.delete: the store, A's copy and A's manifest).
    assert!(broker.drop_volume(&name).await.unwrap());
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::remove_file(&a_sync).unwrap();
    // B still has its copy: neither a commit nor a reload makes the store again.
    std::fs::write(b.join("new.txt"), b"written after").unwrap();
    for commit in [true, false] {
        let e = if commit {
            broker.commit_volume(&name, &b, &b_sync).await.unwrap_err()
        } else {
            broker.reload_volume(&name, &b, &b_sync).await.unwrap_err()
        };
        assert_eq!(e.kind, ErrorKind::NotFound, "{e}");
        assert!(e.message.contains("was deleted") && e.message.contains(&format!("Volume.delete('{name}')")), "{e}");
    }
    assert!(!broker.volume_names().await.unwrap().contains(&name), "the store stays deleted");
    assert_eq!(std::fs::read(b.join("weights.bin")).unwrap(), b"v1", "B's copy is kept as it was");

    // Made again from A (a new volume): B's files synced with the old one are not its files;
    // what B wrote since stays, as anything added on one machine and not committed does.
    std::fs::create_dir_all(&a).unwrap();
    std::fs::write(a.join("fresh.txt"), b"v2").unwrap();
    broker.commit_volume(&name, &a, &a_sync).await.unwrap();
    broker.reload_volume(&name, &b, &b_sync).await.unwrap();
    assert!(!b.join("weights.bin").exists(), "the deleted volume's file is gone from B");
    assert_eq!(std::fs::read(b.join("fresh.txt")).unwrap(), b"v2");
    assert_eq!(std::fs::read(b.join("new.txt")).unwrap(), b"written after");
    broker.commit_volume(&name, &b, &b_sync).await.unwrap();
    broker.reload_volume(&name, &a, &a_sync).await.unwrap();
    assert!(!a.join("weights.bin").exists(), "B's commit does not bring the deleted file back");
    assert_eq!(std::fs::read(a.join("new.txt")).unwrap(), b"written after");

    // A machine that never synced makes a missing store, as before.
    assert!(broker.drop_volume(&name).await.unwrap());
    let c = root.join("c").join(&name);
    std::fs::create_dir_all(&c).unwrap();
    broker.reload_volume(&name, &c, &root.join("c").join(".sync").join(&name)).await.unwrap();
    assert!(broker.volume_names().await.unwrap().contains(&name));
    assert!(broker.drop_volume(&name).await.unwrap());
}
