//! Broker-mode throughput against a local NATS with JetStream (not a test: README
//! "Performance" keeps benchmarks out of tests).
//!
//! `cargo run --release -p berth-nats --example throughput -- [N] [INPUTS_PER_MESSAGE] [WORKERS]`
//!
//! A front publishes N no-op inputs (CBOR `[]`), INPUTS_PER_MESSAGE to a JetStream message
//! (default 1: one lease per input, the honest default; more: see crate::envelope for when
//! that is honest), keeping many publishes in flight; WORKERS tasks (default 2) on a second
//! connection pull up to 256 messages at a time, reply one result per input to the front's
//! inbox and ack each message. The front's ResultRouter waits for every input's result.
//! Prints inputs/s for publishing alone (stream acks received) and end to end (every result
//! delivered). Creates a stream `berth__bench-<pid>__noop` and deletes it at the end.
//!
//! Measured 2026-11-30 (nats-server 2.9.10, file storage, on the same machine: 2 cores
//! shared with another benchmark, so runs vary), end to end with the 16,384 window:
//! one input per message 52,000 to 64,000 inputs/s (1,000,000 inputs: 52,300), where
//! nats-server spends about 17 µs of CPU per message and is the bound; 8 per message 232,000;
//! 32 per message 224,000 to 344,000; 100 per message 329,000. Issue 12 asks 50,000/s for
//! `.map()`: one input per message (each its own lease) reaches it here, with little margin.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use berth_nats::{Broker, BrokerInput, BrokerResult, PoolSettings, ResultRouter};

const URL: &str = "nats://127.0.0.1:4222";
/// Publishes awaiting their stream ack at most.
const IN_FLIGHT: usize = 4096;
/// Inputs published and not yet answered at most, as a `.map()` window (the gRPC Map's is
/// 16,384): results then never pile up past the front's inbox buffer.
const WINDOW: usize = 16_384;
/// No result for this long ends the run, saying how many are missing.
const STALL: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let n = args.next().transpose()?.unwrap_or(100_000);
    let per_msg = args.next().transpose()?.unwrap_or(1).max(1);
    let workers = args.next().transpose()?.unwrap_or(2).max(1);

    let front = Broker::connect(URL).await?;
    let back = Broker::connect(URL).await?;
    let app = format!("bench-{}", std::process::id());
    let names = berth_core::broker::names(&app, "noop");
    let settings = PoolSettings {
        ack_wait: Duration::from_secs(60),
        max_deliver: 1,
        max_ack_pending: 1_000_000,
        fingerprint: "bench".into(),
    };
    front.ensure_pool(&app, &names, &settings).await?;
    let router = ResultRouter::start(&front).await?;
    let mut results = Vec::with_capacity(n);
    for i in 0..n {
        results.push(router.register(format!("i{i}")));
    }
    // Results are awaited in input order; each frees a place in the window.
    let window = Arc::new(tokio::sync::Semaphore::new(WINDOW));
    let answered = tokio::spawn({
        let window = window.clone();
        async move {
            for (i, r) in results.into_iter().enumerate() {
                match tokio::time::timeout(STALL, r).await {
                    Ok(Ok(_)) => window.add_permits(1),
                    _ => return Err(format!("no result for input {i} within {STALL:?}: {} of {n} missing", n - i)),
                }
            }
            Ok(())
        }
    });

    // Workers: pull, reply per input, ack per message.
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (back, names, done) = (back.clone(), names.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut w = back.worker(&names).await?;
            while done.load(Ordering::Relaxed) < n {
                let pulled = w.pull(256, Duration::from_millis(200)).await?;
                // Every result of the pull sent at once, each waiting for the front's
                // confirmation (`Broker::reply`), and the acks after them.
                let results: Vec<_> = pulled
                    .iter()
                    .flat_map(|d| {
                        d.inputs.iter().map(move |i| {
                            (i.reply.as_str(), BrokerResult::value(&i.input_id, i.attempt, vec![0xf6]), &d.lease)
                        })
                    })
                    .collect();
                let replies = results.iter().map(|(to, r, lease)| back.reply(to, r, Some(*lease)));
                for r in futures_util::future::join_all(replies).await {
                    r?;
                }
                for d in pulled {
                    d.lease.ack().await?;
                    done.fetch_add(d.inputs.len(), Ordering::Relaxed);
                }
            }
            back.flush().await?;
            Ok::<_, berth_nats::Error>(())
        }));
    }

    let t = Instant::now();
    let mut pending = VecDeque::with_capacity(IN_FLIGHT);
    let mut next = 0;
    while next < n {
        let k = per_msg.min(n - next);
        let inputs = (next..next + k)
            .map(|i| BrokerInput {
                input_id: format!("i{i}"),
                function_call_id: "fc".into(),
                attempt: 0,
                method: String::new(),
                args: vec![0x80],
                reply: router.inbox().to_string(),
                deadline_unix_ms: 0,
                params: Vec::new(),
                keep_result: false,
                ..Default::default()
            })
            .collect();
        next += k;
        window.acquire_many(u32::try_from(k)?).await?.forget();
        if pending.len() == IN_FLIGHT {
            if let Some(p) = pending.pop_front() {
                berth_nats::PendingPublish::wait(p).await?;
            }
        }
        pending.push_back(front.start_publish(&names, inputs).await?);
    }
    for p in pending {
        p.wait().await?;
    }
    let published = t.elapsed();
    answered.await??;
    let all = t.elapsed();
    for task in tasks {
        task.await??;
    }
    front.remove_pool(&names).await?;

    let rate = |d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "{n} inputs, {per_msg} per message, {workers} workers: published (stream acks) in {:.2}s = {:.0} inputs/s; all results delivered in {:.2}s = {:.0} inputs/s",
        published.as_secs_f64(),
        rate(published),
        all.as_secs_f64(),
        rate(all)
    );
    Ok(())
}
