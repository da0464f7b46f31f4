//! Scheduler rules on tokio's paused clock: every time below is exact.
use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use super::*;
use crate::spec::{Batching, HookSet, MethodSpec, PoolSpec, RetryPolicy};

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    Hook(ContainerId, Phase),
    Run(Exec),
    Abort(InputId, u32, AbortReason),
    Abandoned(ContainerId, Phase),
    Stopped(ContainerId),
    Replaced(ContainerId, InputId),
    Done(InputId, u32, Outcome),
}

struct Host(UnboundedSender<Ev>);
impl Invoker for Host {
    fn run_hook(&mut self, _: PoolId, c: ContainerId, p: Phase) {
        let _ = self.0.send(Ev::Hook(c, p));
    }
    fn run(&mut self, e: &Exec) {
        let _ = self.0.send(Ev::Run(e.clone()));
    }
    fn abort(&mut self, i: InputId, a: u32, r: AbortReason) {
        let _ = self.0.send(Ev::Abort(i, a, r));
    }
    fn hook_abandoned(&mut self, _: PoolId, c: ContainerId, p: Phase) {
        let _ = self.0.send(Ev::Abandoned(c, p));
    }
    fn container_stopped(&mut self, _: PoolId, c: ContainerId) {
        let _ = self.0.send(Ev::Stopped(c));
    }
    fn replaced(&mut self, _: PoolId, c: ContainerId, i: InputId) {
        let _ = self.0.send(Ev::Replaced(c, i));
    }
}
impl ResultSink for Host {
    fn done(&mut self, i: InputId, a: u32, o: Outcome) {
        let _ = self.0.send(Ev::Done(i, a, o));
    }
}

const POOL: PoolId = 7;
const MS: Duration = Duration::from_millis(1);

struct World {
    cmd: UnboundedSender<Command>,
    ev: UnboundedReceiver<Ev>,
    t0: Instant,
}

impl World {
    fn new(spec: PoolSpec) -> Self {
        spec.validate().expect("valid spec");
        let (cmd, rx) = unbounded_channel();
        let (etx, ev) = unbounded_channel();
        let h = Host(etx);
        tokio::spawn(Scheduler::new(Host(h.0.clone()), h).run(rx));
        cmd.send(Command::AddPool(POOL, spec)).expect("send");
        Self { cmd, ev, t0: Instant::now() }
    }
    fn ms(&self) -> u128 {
        self.t0.elapsed().as_millis()
    }
    fn send(&self, c: Command) {
        self.cmd.send(c).expect("scheduler alive");
    }
    fn submit(&self, ids: impl IntoIterator<Item = u64>, method: u32) {
        self.send(Command::Submit(
            ids.into_iter().map(|input| Submission { input, pool: POOL, method, waits: false }).collect(),
        ));
    }
    async fn next(&mut self) -> Ev {
        tokio::time::timeout(Duration::from_secs(3600), self.ev.recv())
            .await
            .expect("no event for an hour")
            .expect("open")
    }
    /// Waits for the next event, answering enter/exit hooks with success on the way.
    async fn next_work(&mut self) -> Ev {
        loop {
            match self.next().await {
                Ev::Hook(c, p) => self.send(Command::HookDone { container: c, phase: p, ok: true }),
                Ev::Stopped(_) => {}
                e => return e,
            }
        }
    }
    async fn run_ev(&mut self) -> Exec {
        match self.next_work().await {
            Ev::Run(e) => e,
            other => panic!("expected a run, got {other:?}"),
        }
    }
    fn complete(&self, e: &Exec, s: ExecStatus) {
        self.send(Command::Complete(vec![(e.id, s)]));
    }
    /// Runs everything with `f` deciding (duration, status), until `n` inputs are done.
    async fn serve(&mut self, n: usize, f: impl Fn(&Exec) -> (Duration, ExecStatus)) -> Vec<(u128, Ev)> {
        let mut log = Vec::new();
        let mut done = 0;
        while done < n {
            let ev = self.next().await;
            log.push((self.ms(), ev.clone()));
            match ev {
                Ev::Hook(c, p) => self.send(Command::HookDone { container: c, phase: p, ok: true }),
                Ev::Run(e) => {
                    let (d, s) = f(&e);
                    let tx = self.cmd.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        let _ = tx.send(Command::Complete(vec![(e.id, s)]));
                    });
                }
                Ev::Done(..) => done += 1,
                _ => {}
            }
        }
        log
    }
    async fn shutdown(&mut self) -> Vec<Ev> {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        self.send(Command::Shutdown(Some(tx)));
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                _ = &mut rx => break,
                ev = self.ev.recv() => {
                    let Some(ev) = ev else { break };
                    if let Ev::Hook(c, p) = ev { self.send(Command::HookDone { container: c, phase: p, ok: true }) }
                    seen.push(ev);
                }
            }
        }
        while let Ok(ev) = self.ev.try_recv() {
            seen.push(ev);
        }
        seen
    }
}

fn spec() -> PoolSpec {
    PoolSpec::new("f", vec![MethodSpec::default()])
}

fn batched(max: u32, wait_ms: u64) -> PoolSpec {
    PoolSpec::new(
        "b",
        vec![MethodSpec {
            batching: Some(Batching::new(max, Duration::from_millis(wait_ms)).expect("ok")),
            ..MethodSpec::default()
        }],
    )
}

fn all_hooks() -> HookSet {
    HookSet { spawn: false, build: true, snap_enter: true, enter: true, exit: true }
}

#[tokio::test(start_paused = true)]
async fn lifecycle_runs_phases_in_order_and_exit_on_shutdown() {
    let mut s = spec();
    s.hooks = all_hooks();
    let mut w = World::new(s);
    w.submit([1], 0);
    let mut phases = Vec::new();
    let exec = loop {
        match w.next().await {
            Ev::Hook(c, p) => {
                phases.push(p);
                w.send(Command::HookDone { container: c, phase: p, ok: true });
            }
            Ev::Run(e) => break e,
            e => panic!("{e:?}"),
        }
    };
    assert_eq!(phases, vec![Phase::Build, Phase::SnapEnter, Phase::Enter]);
    w.complete(&exec, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Ok));
    let rest = w.shutdown().await;
    assert_eq!(rest, vec![Ev::Hook(exec.container, Phase::Exit), Ev::Stopped(exec.container)]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_queued_and_running_inputs_before_exit() {
    let mut s = spec();
    s.hooks.exit = true;
    let mut w = World::new(s);
    w.submit([1, 2, 3], 0);
    let e1 = w.run_ev().await;
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    w.send(Command::Shutdown(Some(tx)));
    // New work is refused while stopping; accepted work is not lost.
    w.submit([4], 0);
    assert_eq!(w.next().await, Ev::Done(4, 1, Outcome::Rejected));
    w.complete(&e1, ExecStatus::Ok);
    let mut order = vec![];
    loop {
        match w.next().await {
            Ev::Run(e) => w.complete(&e, ExecStatus::Ok),
            Ev::Done(i, _, o) => order.push((i, o)),
            Ev::Hook(c, Phase::Exit) => {
                assert_eq!(order.len(), 3, "exit hooks run after every accepted input is done");
                w.send(Command::HookDone { container: c, phase: Phase::Exit, ok: true });
            }
            Ev::Stopped(_) => break,
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(order, vec![(1, Outcome::Ok), (2, Outcome::Ok), (3, Outcome::Ok)]);
    (&mut rx).await.expect("shutdown answered");
}

#[tokio::test(start_paused = true)]
async fn enter_failure_fails_waiting_inputs_skips_exit_and_restarts_with_backoff() {
    let mut s = spec();
    s.hooks = HookSet { enter: true, exit: true, ..HookSet::default() };
    let mut w = World::new(s);
    w.submit([1, 2], 0);
    let mut starts = Vec::new();
    let mut results = Vec::new();
    let mut next_id = 3;
    while starts.len() < 4 {
        match w.next().await {
            Ev::Hook(c, Phase::Enter) => {
                starts.push(w.ms());
                w.send(Command::HookDone { container: c, phase: Phase::Enter, ok: false });
            }
            Ev::Hook(_, p) => panic!("no {p:?} hook may run after a failed enter"),
            Ev::Done(i, _, o) => {
                results.push((i, o));
                // A caller keeps calling; each call waits for the next restart.
                w.submit([next_id], 0);
                next_id += 1;
            }
            Ev::Stopped(_) => {}
            e => panic!("{e:?}"),
        }
    }
    assert!(matches!(results[0], (1, Outcome::Init(_))));
    assert!(matches!(results[1], (2, Outcome::Init(_))));
    // Restarts back off: 250 ms, 500 ms, 1 s between attempts.
    let gaps: Vec<u128> = starts.windows(2).map(|p| p[1] - p[0]).collect();
    assert_eq!(gaps, vec![250, 500, 1000]);
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_start_one_container_tries_at_a_time() {
    // Under `berth serve`, four callers that call again as soon as their call fails keep four
    // inputs waiting: each restart started one container per waiting input, all failing alike,
    // and the failures of one round stacked up. README ("Errors"): one container at a time,
    // with backoff.
    let mut s = spec();
    s.hooks = HookSet { enter: true, ..HookSet::default() };
    s.max_containers = 8;
    let mut w = World::new(s);
    w.submit([1], 0);
    let mut starts = Vec::new();
    let mut next_id = 2;
    while starts.len() < 5 {
        match w.next().await {
            Ev::Hook(c, Phase::Enter) => {
                starts.push(w.ms());
                // Each start takes 100 ms to fail.
                let tx = w.cmd.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(100 * MS).await;
                    let _ = tx.send(Command::HookDone { container: c, phase: Phase::Enter, ok: false });
                });
            }
            Ev::Done(_, _, Outcome::Init(_)) => {
                // The first failure brings the other three callers.
                let callers = if next_id == 2 { 4 } else { 1 };
                w.submit(next_id..next_id + callers, 0);
                next_id += callers;
            }
            Ev::Stopped(_) => {}
            e => panic!("{e:?}"),
        }
    }
    // One container at a time, each after the previous one failed and its backoff passed.
    assert_eq!(starts, vec![0, 350, 950, 2050, 4150]);
}

#[tokio::test(start_paused = true)]
async fn concurrency_never_exceeds_max_inputs() {
    let mut s = spec();
    s.max_inputs = 3;
    s.target_inputs = 3;
    let mut w = World::new(s);
    w.submit(1..=10, 0);
    let log = w.serve(10, |_| (10 * MS, ExecStatus::Ok)).await;
    let mut running = 0i32;
    let mut peak = 0;
    let mut runs = 0;
    for (_, ev) in &log {
        match ev {
            Ev::Run(_) => {
                running += 1;
                runs += 1;
                peak = peak.max(running);
            }
            Ev::Done(..) => running -= 1,
            _ => {}
        }
    }
    assert_eq!(peak, 3);
    assert_eq!(runs, 10);
    // 10 inputs of 10 ms, 3 at a time: 4 rounds.
    assert_eq!(log.last().map(|(t, _)| *t), Some(40));
}

#[tokio::test(start_paused = true)]
async fn batch_dispatches_when_full_without_waiting() {
    let mut w = World::new(batched(4, 1000));
    w.submit(1..=6, 0);
    let e = w.run_ev().await;
    assert_eq!(w.ms(), 0);
    assert_eq!(e.inputs.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    // The rest waits for its deadline, counted from its oldest input.
    w.complete(&e, ExecStatus::Ok);
    let mut rest = None;
    while rest.is_none() {
        if let Ev::Run(e) = w.next_work().await {
            rest = Some(e);
        }
    }
    assert_eq!(w.ms(), 1000);
    assert_eq!(rest.map(|e| e.inputs.len()), Some(2));
}

#[tokio::test(start_paused = true)]
async fn batch_deadline_counts_from_oldest_input() {
    let mut w = World::new(batched(8, 50));
    w.submit([1], 0);
    tokio::time::sleep(30 * MS).await;
    w.submit([2], 0);
    let e = w.run_ev().await;
    assert_eq!(w.ms(), 50, "deadline is 50 ms after input 1, not after input 2");
    assert_eq!(e.inputs.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn batch_keeps_growing_while_the_container_is_busy() {
    let mut w = World::new(batched(100, 5));
    w.submit([1], 0);
    let first = w.run_ev().await;
    assert_eq!(w.ms(), 5);
    // While the one slot is busy, inputs arrive over 200 ms: no batch may leave.
    for i in 2..=21 {
        tokio::time::sleep(10 * MS).await;
        w.submit([i], 0);
    }
    w.complete(&first, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Ok));
    let second = w.run_ev().await;
    assert_eq!(second.inputs.len(), 20, "work-conserving: one batch of everything that waited");
}

#[tokio::test(start_paused = true)]
async fn withdraw_cancels_what_has_not_started_and_leaves_the_running_input() {
    let mut w = World::new(spec());
    w.submit([1, 2, 3], 0);
    let e1 = w.run_ev().await;
    assert_eq!(e1.inputs.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1]);
    // 1 runs (one container of one input); 2 and 3 wait in the queue.
    w.send(Command::Withdraw(vec![1, 2, 3]));
    assert_eq!(w.next().await, Ev::Done(2, 1, Outcome::Cancelled));
    assert_eq!(w.next().await, Ev::Done(3, 1, Outcome::Cancelled));
    w.complete(&e1, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Ok), "the running input finished, not aborted");
    // An input that is done already, or unknown, is left alone.
    w.send(Command::Withdraw(vec![1, 99]));
    w.submit([4], 0);
    let e4 = w.run_ev().await;
    assert_eq!(e4.inputs.iter().map(|x| x.0).collect::<Vec<_>>(), vec![4]);
}

#[tokio::test(start_paused = true)]
async fn cancelled_inputs_leave_a_forming_batch() {
    let mut w = World::new(batched(3, 100));
    w.submit([1, 2], 0);
    w.send(Command::Cancel(vec![1]));
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Cancelled));
    w.submit([3, 4], 0);
    let e = w.run_ev().await;
    assert_eq!(e.inputs.iter().map(|x| x.0).collect::<Vec<_>>(), vec![2, 3, 4]);
    assert_eq!(w.ms(), 0);
}

#[tokio::test(start_paused = true)]
async fn several_methods_share_slots_oldest_first() {
    let mut s = PoolSpec::new(
        "c",
        vec![
            MethodSpec::default(),
            MethodSpec { batching: Some(Batching::new(2, Duration::ZERO).expect("ok")), ..MethodSpec::default() },
        ],
    );
    s.max_inputs = 1;
    s.target_inputs = 1;
    let mut w = World::new(s);
    w.submit([1], 1);
    w.submit([2], 0);
    w.submit([3], 1);
    let log = w.serve(3, |_| (MS, ExecStatus::Ok)).await;
    let runs: Vec<(u32, Vec<u64>)> = log
        .iter()
        .filter_map(|(_, e)| match e {
            Ev::Run(x) => Some((x.method, x.inputs.iter().map(|i| i.0).collect())),
            _ => None,
        })
        .collect();
    assert_eq!(runs, vec![(1, vec![1, 3]), (0, vec![2])]);
}

#[tokio::test(start_paused = true)]
async fn timeout_aborts_and_fails_but_holds_the_slot_until_the_code_settles() {
    let mut s = spec();
    s.timeout = 100 * MS;
    let mut w = World::new(s);
    w.submit([1, 2], 0);
    let e1 = w.run_ev().await;
    assert_eq!(w.next().await, Ev::Abort(1, 1, AbortReason::Timeout));
    assert_eq!(w.ms(), 100);
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Timeout));
    tokio::time::sleep(50 * MS).await;
    // A late result of the timed-out attempt is not delivered; it only frees the slot.
    w.complete(&e1, ExecStatus::Ok);
    let e2 = w.run_ev().await;
    assert_eq!(w.ms(), 150, "input 2 waited for the slot");
    assert_eq!(e2.inputs.to_vec(), vec![(2, 1)]);
}

#[tokio::test(start_paused = true)]
async fn retries_follow_the_backoff_and_count_attempts() {
    let mut s = spec();
    s.retries = RetryPolicy::new(3, 2.0, Duration::from_secs(1), Duration::from_secs(60)).expect("ok");
    let mut w = World::new(s);
    w.submit([1], 0);
    let mut starts = Vec::new();
    let ev = loop {
        let e = w.run_ev().await;
        starts.push((w.ms(), e.inputs[0].1));
        if starts.len() < 3 {
            w.complete(&e, ExecStatus::Failed);
        } else {
            w.complete(&e, ExecStatus::Ok);
            break w.next().await;
        }
    };
    assert_eq!(starts, vec![(0, 1), (1000, 2), (3000, 3)]);
    assert_eq!(ev, Ev::Done(1, 3, Outcome::Ok));
}

#[tokio::test(start_paused = true)]
async fn a_method_without_retries_fails_at_once_while_its_pool_retries_others() {
    let mut s =
        PoolSpec::new("c", vec![MethodSpec::default(), MethodSpec { no_retries: true, ..MethodSpec::default() }]);
    s.retries = RetryPolicy::fixed(2).expect("ok");
    let mut w = World::new(s);
    w.submit([1], 1);
    let e = w.run_ev().await;
    w.complete(&e, ExecStatus::Failed);
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Failed));
    w.submit([2], 0);
    let e = w.run_ev().await;
    w.complete(&e, ExecStatus::Failed);
    let e = w.run_ev().await;
    assert_eq!(e.inputs.to_vec(), vec![(2, 2)], "method 0 is retried");
}

#[tokio::test(start_paused = true)]
async fn retries_exhausted_give_the_last_failure() {
    let mut s = spec();
    s.retries = RetryPolicy::fixed(2).expect("ok");
    s.timeout = 10 * MS;
    let mut w = World::new(s);
    w.submit([1], 0);
    let log =
        w.serve(1, |e| if e.inputs[0].1 < 3 { (MS, ExecStatus::Failed) } else { (20 * MS, ExecStatus::Ok) }).await;
    let runs = log.iter().filter(|(_, e)| matches!(e, Ev::Run(_))).count();
    assert_eq!(runs, 3, "one attempt plus two retries");
    assert_eq!(log.last().map(|x| x.1.clone()), Some(Ev::Done(1, 3, Outcome::Timeout)));
    // Final-failure status is not retried.
    let mut s = spec();
    s.retries = RetryPolicy::fixed(5).expect("ok");
    let mut w = World::new(s);
    w.submit([9], 0);
    let log = w.serve(1, |_| (MS, ExecStatus::FailedFinal)).await;
    assert_eq!(log.last().map(|x| x.1.clone()), Some(Ev::Done(9, 1, Outcome::Failed)));
}

#[tokio::test(start_paused = true)]
async fn cancel_drops_queued_and_aborts_running_inputs() {
    let mut s = spec();
    s.retries = RetryPolicy::fixed(3).expect("ok");
    let mut w = World::new(s);
    w.submit([1, 2], 0);
    let e1 = w.run_ev().await;
    w.send(Command::Cancel(vec![2, 1]));
    assert_eq!(w.next().await, Ev::Done(2, 1, Outcome::Cancelled));
    assert_eq!(w.next().await, Ev::Abort(1, 1, AbortReason::Cancelled));
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Cancelled));
    // The cancelled attempt settles with a failure: no retry, no second result.
    w.complete(&e1, ExecStatus::Failed);
    w.submit([3], 0);
    let e3 = w.run_ev().await;
    assert_eq!(e3.inputs.to_vec(), vec![(3, 1)]);
}

#[tokio::test(start_paused = true)]
async fn duplicates_and_stale_completions_are_ignored() {
    let mut w = World::new(spec());
    w.submit([1], 0);
    w.submit([1], 0);
    let e = w.run_ev().await;
    w.complete(&e, ExecStatus::Ok);
    w.complete(&e, ExecStatus::Failed);
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Ok));
    w.submit([2], 0);
    let e2 = w.run_ev().await;
    assert_eq!(e2.inputs.to_vec(), vec![(2, 1)], "input 1 ran once and finished once");
}

#[tokio::test(start_paused = true)]
async fn unknown_pool_or_method_is_rejected() {
    let mut w = World::new(spec());
    w.send(Command::Submit(vec![Submission { input: 1, pool: 99, method: 0, waits: false }]));
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Rejected));
    w.submit([2], 5);
    assert_eq!(w.next().await, Ev::Done(2, 1, Outcome::Rejected));
}

#[tokio::test(start_paused = true)]
async fn autoscaler_scales_up_to_max_and_down_after_the_window_with_exit() {
    let mut s = spec();
    s.hooks.exit = true;
    s.max_containers = 3;
    s.scaledown_window = Duration::from_secs(2);
    let mut w = World::new(s);
    w.submit(1..=6, 0);
    let log = w.serve(6, |_| (100 * MS, ExecStatus::Ok)).await;
    let mut containers: Vec<ContainerId> =
        log.iter().filter_map(|(_, e)| if let Ev::Run(x) = e { Some(x.container) } else { None }).collect();
    containers.sort_unstable();
    containers.dedup();
    assert_eq!(containers.len(), 3);
    assert_eq!(log.last().map(|x| x.0), Some(200));
    // Idle for the window: each container drains and runs its exit hook.
    let mut exits = Vec::new();
    while exits.len() < 3 {
        match w.next().await {
            Ev::Hook(c, Phase::Exit) => {
                exits.push(w.ms());
                w.send(Command::HookDone { container: c, phase: Phase::Exit, ok: true });
            }
            Ev::Stopped(_) => {}
            e => panic!("{e:?}"),
        }
    }
    assert_eq!(exits, vec![2200, 2200, 2200]);
}

#[tokio::test(start_paused = true)]
async fn min_containers_start_warm_and_stay() {
    let mut s = spec();
    s.hooks.enter = true;
    s.min_containers = 2;
    s.max_containers = 2;
    s.scaledown_window = Duration::from_secs(1);
    let mut w = World::new(s);
    let mut enters = 0;
    while enters < 2 {
        if let Ev::Hook(c, Phase::Enter) = w.next().await {
            enters += 1;
            w.send(Command::HookDone { container: c, phase: Phase::Enter, ok: true });
        }
    }
    assert_eq!(w.ms(), 0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(w.ev.try_recv().is_err(), "no scale-down below minContainers");
}

#[tokio::test(start_paused = true)]
async fn a_lost_containers_inputs_run_again_without_spending_retries() {
    // Modal reschedules the inputs of a container that died; `retries` is for failures of the code.
    let mut w = World::new(spec());
    w.submit([1, 2], 0);
    let e = w.run_ev().await;
    w.send(Command::ContainerLost(e.container));
    let mut done = vec![];
    let mut runs = vec![];
    while done.len() < 2 {
        match w.next_work().await {
            Ev::Run(x) => {
                runs.push(x.inputs.to_vec());
                w.complete(&x, ExecStatus::Ok);
            }
            Ev::Done(i, a, o) => done.push((i, a, o)),
            e => panic!("{e:?}"),
        }
    }
    done.sort_by_key(|d| d.0);
    assert_eq!(done, vec![(1, 2, Outcome::Ok), (2, 1, Outcome::Ok)], "input 1 ran again as attempt 2, with no retries");
    assert_eq!(runs[0], vec![(1, 2)], "the lost input goes first, ahead of those queued after it");
}

#[tokio::test(start_paused = true)]
async fn an_input_that_kills_every_container_fails_after_the_bound() {
    let mut s = spec();
    s.retries = RetryPolicy::fixed(2).expect("ok");
    let mut w = World::new(s);
    w.submit([1], 0);
    let mut containers = vec![];
    let outcome = loop {
        match w.next_work().await {
            Ev::Run(x) => {
                containers.push(x.container);
                w.send(Command::ContainerLost(x.container));
            }
            Ev::Done(i, a, o) => break (i, a, o),
            e => panic!("{e:?}"),
        }
    };
    assert_eq!(outcome, (1, MAX_RESCHEDULES + 1, Outcome::Lost), "retries are not spent on lost containers");
    assert_eq!(containers.len() as u32, MAX_RESCHEDULES + 1);
    containers.dedup();
    assert_eq!(containers.len() as u32, MAX_RESCHEDULES + 1, "each run on a new container");
}

#[tokio::test(start_paused = true)]
async fn an_interrupted_container_sends_its_inputs_elsewhere_then_exits() {
    let mut s = spec();
    s.hooks.exit = true;
    s.max_containers = 2;
    let mut w = World::new(s);
    w.submit([1], 0);
    let first = w.run_ev().await;
    let c1 = first.container;
    w.send(Command::InterruptContainer(c1));
    assert_eq!(w.next().await, Ev::Abort(1, 1, AbortReason::Rescheduled));
    let again = w.run_ev().await;
    assert_ne!(again.container, c1);
    assert_eq!(again.inputs.to_vec(), vec![(1, 2)], "a new attempt, no retry spent (retries: 0)");
    // The interrupted code settles: only now does its container run its exit hooks.
    w.complete(&first, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Hook(c1, Phase::Exit));
    w.send(Command::HookDone { container: c1, phase: Phase::Exit, ok: true });
    assert_eq!(w.next().await, Ev::Stopped(c1));
    w.complete(&again, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(1, 2, Outcome::Ok));
}

#[tokio::test(start_paused = true)]
async fn a_container_stopped_while_starting_runs_no_exit_and_is_no_failure() {
    let mut s = spec();
    s.hooks.enter = true;
    s.hooks.exit = true;
    let mut w = World::new(s);
    w.submit([1], 0);
    let Ev::Hook(c1, Phase::Enter) = w.next().await else { panic!("enter first") };
    tokio::time::sleep(300 * MS).await;
    w.send(Command::DrainContainer(c1));
    assert_eq!(w.next().await, Ev::Stopped(c1), "stopped at once, no exit hooks");
    // The next container starts at once: a stop is not a failed start (no restart backoff),
    // and the input waiting for the first one waits for this one instead of failing.
    let Ev::Hook(c2, Phase::Enter) = w.next().await else { panic!("a new container") };
    assert_eq!(w.ms(), 300);
    // The first container's enter finishing late changes nothing.
    w.send(Command::HookDone { container: c1, phase: Phase::Enter, ok: true });
    w.send(Command::HookDone { container: c2, phase: Phase::Enter, ok: true });
    let e = w.run_ev().await;
    assert_eq!(e.container, c2);
    w.complete(&e, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Ok));
}

#[tokio::test(start_paused = true)]
async fn code_that_ignores_its_abort_past_the_grace_gets_its_container_replaced() {
    let mut s = spec();
    s.timeout = Duration::from_secs(10);
    s.max_inputs = 2;
    s.target_inputs = 2;
    s.hooks.exit = true;
    let mut w = World::new(s);
    w.submit([1], 0);
    let e1 = w.run_ev().await;
    let c1 = e1.container;
    tokio::time::sleep(Duration::from_secs(8)).await;
    w.submit([2], 0);
    let e2 = w.run_ev().await;
    assert_eq!(e2.container, c1);
    assert_eq!(w.next().await, Ev::Abort(1, 1, AbortReason::Timeout));
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Timeout));
    assert_eq!(w.ms(), 10_000);
    // Input 1's code never settles: after the grace its container goes, without exit hooks,
    // and input 2 (still within its own timeout) runs again on a new one.
    assert_eq!(w.next().await, Ev::Replaced(c1, 1));
    assert_eq!(w.ms(), 10_000 + OVERDUE_GRACE.as_millis());
    assert_eq!(w.next().await, Ev::Abort(2, 1, AbortReason::Rescheduled));
    assert_eq!(w.next().await, Ev::Stopped(c1));
    let again = w.run_ev().await;
    assert_ne!(again.container, c1);
    assert_eq!(again.inputs.to_vec(), vec![(2, 2)]);
    // The old execution's late answer changes nothing.
    w.complete(&e2, ExecStatus::Ok);
    w.complete(&e1, ExecStatus::Ok);
    w.complete(&again, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(2, 2, Outcome::Ok));
}

#[tokio::test(start_paused = true)]
async fn single_use_containers_take_one_input_each() {
    let mut s = spec();
    s.hooks = HookSet { enter: true, exit: true, ..HookSet::default() };
    s.single_use = true;
    let mut w = World::new(s);
    w.submit(1..=3, 0);
    let log = w.serve(3, |_| (MS, ExecStatus::Ok)).await;
    let mut used: Vec<ContainerId> =
        log.iter().filter_map(|(_, e)| if let Ev::Run(x) = e { Some(x.container) } else { None }).collect();
    used.dedup();
    assert_eq!(used.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn startup_timeout_abandons_enter_as_an_init_failure() {
    let mut s = spec();
    s.hooks.enter = true;
    s.startup_timeout = Duration::from_secs(5);
    let mut w = World::new(s);
    w.submit([1], 0);
    let Ev::Hook(c, Phase::Enter) = w.next().await else { panic!() };
    assert_eq!(w.next().await, Ev::Abandoned(c, Phase::Enter));
    assert_eq!(w.ms(), 5000);
    assert_eq!(w.next().await, Ev::Stopped(c));
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Init(c)));
}

#[tokio::test(start_paused = true)]
async fn exit_hook_past_grace_is_abandoned() {
    let mut s = spec();
    s.hooks.exit = true;
    s.exit_grace = Duration::from_secs(3);
    let mut w = World::new(s);
    w.submit([1], 0);
    w.serve(1, |_| (MS, ExecStatus::Ok)).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.send(Command::Shutdown(Some(tx)));
    let Ev::Hook(c, Phase::Exit) = w.next().await else { panic!() };
    let t = w.ms();
    assert_eq!(w.next().await, Ev::Abandoned(c, Phase::Exit));
    assert_eq!(w.ms() - t, 3000);
    assert_eq!(w.next().await, Ev::Stopped(c));
    rx.await.expect("shutdown completes after the grace");
}

#[tokio::test(start_paused = true)]
async fn kill_cancels_everything_now() {
    let mut s = spec();
    s.hooks.exit = true;
    let mut w = World::new(s);
    w.submit([1, 2], 0);
    let _e = w.run_ev().await;
    w.send(Command::Kill);
    let mut seen = vec![];
    for _ in 0..4 {
        seen.push(w.next().await);
    }
    assert!(seen.contains(&Ev::Abort(1, 1, AbortReason::Cancelled)));
    assert!(seen.contains(&Ev::Done(1, 1, Outcome::Cancelled)));
    assert!(seen.contains(&Ev::Done(2, 1, Outcome::Cancelled)));
    assert!(seen.iter().any(|e| matches!(e, Ev::Stopped(_))));
    assert!(!seen.iter().any(|e| matches!(e, Ev::Hook(_, Phase::Exit))), "a forced stop runs no exit hook");
}

#[tokio::test(start_paused = true)]
async fn build_runs_once_per_pool_even_across_restarts() {
    let mut s = spec();
    s.hooks = HookSet { build: true, enter: true, ..HookSet::default() };
    s.single_use = true;
    let mut w = World::new(s);
    w.submit(1..=3, 0);
    let log = w.serve(3, |_| (MS, ExecStatus::Ok)).await;
    let builds = log.iter().filter(|(_, e)| matches!(e, Ev::Hook(_, Phase::Build))).count();
    let enters = log.iter().filter(|(_, e)| matches!(e, Ev::Hook(_, Phase::Enter))).count();
    assert_eq!((builds, enters), (1, 3));
}

/// The synchronous drive (handle + tick on the caller's thread), as the N-API binding uses it.
#[tokio::test(start_paused = true)]
async fn sync_drive_runs_work_and_keeps_no_stale_deadlines() {
    let (etx, mut ev) = unbounded_channel();
    let mut s = Scheduler::new(Host(etx.clone()), Host(etx));
    let mut spec = spec();
    spec.max_inputs = 100;
    spec.target_inputs = 100;
    s.handle(Command::AddPool(POOL, spec));
    let mut next = 1u64;
    for _round in 0..50 {
        s.handle(Command::Submit(
            (next..next + 100).map(|input| Submission { input, pool: POOL, method: 0, waits: false }).collect(),
        ));
        next += 100;
        assert!(!s.tick());
        let mut done = Vec::new();
        while let Ok(e) = ev.try_recv() {
            if let Ev::Run(x) = e {
                done.push((x.id, ExecStatus::Ok));
            }
        }
        assert_eq!(done.len(), 100, "every input runs in the same turn");
        s.handle(Command::Complete(done));
        s.tick();
        let oks =
            std::iter::from_fn(|| ev.try_recv().ok()).filter(|e| matches!(e, Ev::Done(_, 1, Outcome::Ok))).count();
        assert_eq!(oks, 100);
    }
    assert!(s.pools[&POOL].deadlines.is_empty(), "completed executions leave no deadline behind");
    assert!(s.execs.is_empty() && s.inputs.is_empty());
    assert!(s.timers.len() <= 1, "only the scale-down check of the idle container is pending");
    s.handle(Command::Shutdown(None));
    assert!(s.tick(), "idle shutdown completes in one turn");
}

#[tokio::test(start_paused = true)]
async fn delivered_successes_finish_without_a_result_event() {
    let mut w = World::new(spec());
    w.submit([1, 2], 0);
    let e1 = w.run_ev().await;
    w.complete(&e1, ExecStatus::Delivered);
    let e2 = w.run_ev().await;
    assert_eq!(e2.inputs.to_vec(), vec![(2, 1)], "the slot was freed");
    w.complete(&e2, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(2, 1, Outcome::Ok), "no Done for input 1");
    let rest = w.shutdown().await;
    assert!(rest.iter().all(|e| !matches!(e, Ev::Done(..))));
}

/// Completions out of start order leave dead deadline entries behind the live one at the front:
/// they are compacted away, and the live execution still times out on time.
#[tokio::test(start_paused = true)]
async fn out_of_order_completions_compact_deadlines_and_keep_timeouts() {
    let (etx, mut ev) = unbounded_channel();
    let mut s = Scheduler::new(Host(etx.clone()), Host(etx));
    let mut spec = spec();
    spec.max_inputs = 500;
    spec.target_inputs = 500;
    spec.timeout = Duration::from_secs(10);
    s.handle(Command::AddPool(POOL, spec));
    s.handle(Command::Submit(
        (1..=500).map(|input| Submission { input, pool: POOL, method: 0, waits: false }).collect(),
    ));
    s.tick();
    let mut runs: Vec<ExecId> = std::iter::from_fn(|| ev.try_recv().ok())
        .filter_map(|e| if let Ev::Run(x) = e { Some(x.id) } else { None })
        .collect();
    assert_eq!(runs.len(), 500);
    let first = runs.remove(0);
    // Everything but the oldest finishes, newest first.
    runs.reverse();
    s.handle(Command::Complete(runs.iter().map(|id| (*id, ExecStatus::Delivered)).collect()));
    s.tick();
    assert!(s.pools[&POOL].deadlines.len() < 100, "dead entries were compacted: {}", s.pools[&POOL].deadlines.len());
    assert_eq!(s.pools[&POOL].deadlines.front().map(|d| d.1), Some(first));
    tokio::time::advance(Duration::from_secs(10)).await;
    s.tick();
    let after: Vec<Ev> = std::iter::from_fn(|| ev.try_recv().ok()).collect();
    assert!(after.contains(&Ev::Abort(1, 1, AbortReason::Timeout)), "{after:?}");
    assert!(after.contains(&Ev::Done(1, 1, Outcome::Timeout)));
    assert!(s.pools[&POOL].deadlines.is_empty());
}

#[tokio::test(start_paused = true)]
async fn process_containers_spawn_first_and_each_startup_stretch_has_its_own_deadline() {
    let mut s = spec();
    s.hooks = HookSet { spawn: true, build: true, enter: true, ..HookSet::default() };
    s.startup_timeout = Duration::from_secs(5);
    let mut w = World::new(s);
    w.submit([1], 0);
    let mut phases = Vec::new();
    let exec = loop {
        match w.next().await {
            Ev::Hook(c, p) => {
                phases.push((w.ms(), p));
                // The process takes 3 s to attach, enter 4 s: each within its 5 s bound, 7 s
                // in all; the spawn's deadline must not cut the enter short.
                let took = if p == Phase::Spawn {
                    3
                } else if p == Phase::Enter {
                    4
                } else {
                    0
                };
                tokio::time::sleep(Duration::from_secs(took)).await;
                w.send(Command::HookDone { container: c, phase: p, ok: true });
            }
            Ev::Run(e) => break e,
            e => panic!("{e:?}"),
        }
    };
    assert_eq!(phases, vec![(0, Phase::Spawn), (3000, Phase::Build), (3000, Phase::Enter)]);
    assert_eq!(w.ms(), 7000);
    assert_eq!(exec.inputs.to_vec(), vec![(1, 1)]);
}

#[tokio::test(start_paused = true)]
async fn a_container_that_never_attaches_is_an_init_failure() {
    let mut s = spec();
    s.hooks = HookSet { spawn: true, ..HookSet::default() };
    s.startup_timeout = Duration::from_secs(2);
    let mut w = World::new(s);
    w.submit([1], 0);
    let Ev::Hook(c, Phase::Spawn) = w.next().await else { panic!() };
    assert_eq!(w.next().await, Ev::Abandoned(c, Phase::Spawn));
    assert_eq!(w.ms(), 2000);
    assert_eq!(w.next().await, Ev::Stopped(c));
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Init(c)));
}

#[tokio::test(start_paused = true)]
async fn a_draining_container_finishes_in_flight_runs_exit_and_its_queue_moves_on() {
    let mut s = spec();
    s.hooks.exit = true;
    s.max_containers = 2;
    let mut w = World::new(s);
    w.submit([1, 2, 3], 0);
    let first = w.run_ev().await;
    let c = first.container;
    w.send(Command::DrainContainer(c));
    let mut runs = vec![];
    let mut done = vec![];
    let mut exited = false;
    w.complete(&first, ExecStatus::Ok);
    while done.len() < 3 || !exited {
        match w.next().await {
            Ev::Hook(cid, Phase::Exit) => {
                assert_eq!(cid, c, "only the draining container exits");
                exited = true;
                w.send(Command::HookDone { container: cid, phase: Phase::Exit, ok: true });
            }
            Ev::Hook(cid, p) => w.send(Command::HookDone { container: cid, phase: p, ok: true }),
            Ev::Run(e) => {
                runs.push(e.container);
                w.complete(&e, ExecStatus::Ok);
            }
            Ev::Done(i, _, o) => done.push((i, o)),
            Ev::Stopped(_) => {}
            e => panic!("{e:?}"),
        }
    }
    assert!(runs.iter().all(|cid| *cid != c), "no new input went to the draining container");
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|(_, o)| *o == Outcome::Ok));
}

/// Runs `n` inputs to the end: enter hooks take `enter`, executions `exec`; returns when each
/// container started (ms) and how many executions each ran.
async fn serve_with_startup(
    w: &mut World,
    n: usize,
    enter: Duration,
    exec: Duration,
) -> (Vec<u128>, HashMap<ContainerId, usize>) {
    let mut started = vec![];
    let mut runs: HashMap<ContainerId, usize> = HashMap::new();
    let mut done = 0;
    while done < n {
        match w.next().await {
            Ev::Hook(c, p) => {
                started.push(w.ms());
                let tx = w.cmd.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(enter).await;
                    let _ = tx.send(Command::HookDone { container: c, phase: p, ok: true });
                });
            }
            Ev::Run(e) => {
                *runs.entry(e.container).or_default() += 1;
                let tx = w.cmd.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(exec).await;
                    let _ = tx.send(Command::Complete(vec![(e.id, ExecStatus::Ok)]));
                });
            }
            Ev::Done(..) => done += 1,
            _ => {}
        }
    }
    (started, runs)
}

#[tokio::test(start_paused = true)]
async fn quick_batches_do_not_start_containers_that_would_find_the_queue_empty() {
    // 50 inputs in batches of 8 are 7 executions: the first container (1 s to load its model)
    // does them in 7 x 30 ms, long before a second one could start.
    let mut s = batched(8, 5);
    s.hooks.enter = true;
    s.max_containers = 8;
    let mut w = World::new(s);
    w.submit(1..=50, 0);
    let (started, runs) = serve_with_startup(&mut w, 50, Duration::from_secs(1), 30 * MS).await;
    assert_eq!(started, vec![0], "one container: {runs:?}");
    assert_eq!(runs.values().sum::<usize>(), 7);
    // A second burst of the same: the measured costs say the same.
    w.submit(51..=100, 0);
    let (started, _) = serve_with_startup(&mut w, 50, Duration::from_secs(1), 30 * MS).await;
    assert!(started.is_empty(), "no new container: {started:?}");
}

#[tokio::test(start_paused = true)]
async fn slow_inputs_scale_out_once_the_first_container_has_measured() {
    // 20 inputs of 2 s: worth more containers. The first start is awaited (nothing is known
    // before it), then the pool scales to its maximum.
    let mut s = spec();
    s.hooks.enter = true;
    s.max_containers = 4;
    let mut w = World::new(s);
    w.submit(1..=20, 0);
    let (started, runs) = serve_with_startup(&mut w, 20, Duration::from_secs(1), Duration::from_secs(2)).await;
    assert_eq!(started.len(), 4, "{started:?}");
    assert_eq!(started[0], 0);
    assert!(started[1..].iter().all(|t| *t >= 1000 && *t < 1100), "started once the first had measured: {started:?}");
    assert_eq!(runs.len(), 4);
    assert!(runs.values().all(|n| *n >= 4), "each did a share: {runs:?}");
}

fn bounded(max_pending: u32) -> PoolSpec {
    let mut s = spec();
    s.max_pending = Some(max_pending);
    s
}

fn outcomes(log: &[(u128, Ev)]) -> HashMap<InputId, Outcome> {
    log.iter().filter_map(|(_, e)| if let Ev::Done(i, _, o) = e { Some((*i, *o)) } else { None }).collect()
}

#[tokio::test(start_paused = true)]
async fn max_pending_refuses_at_once_past_the_bound_and_finishes_what_it_accepted() {
    let mut w = World::new(bounded(2));
    // Cold: no container serves yet, so every accepted input waits; two may.
    w.submit(1..=5, 0);
    let log = w.serve(5, |_| (10 * MS, ExecStatus::Ok)).await;
    let got = outcomes(&log);
    for i in [1, 2] {
        assert_eq!(got[&i], Outcome::Ok, "input {i}");
    }
    for i in [3, 4, 5] {
        assert_eq!(got[&i], Outcome::QueueFull(2), "input {i}");
    }
    // The refusals come at once, before anything ran.
    let first_run = log.iter().position(|(_, e)| matches!(e, Ev::Run(_))).expect("a run");
    let refusals = log.iter().position(|(_, e)| matches!(e, Ev::Done(_, _, Outcome::QueueFull(_)))).expect("refused");
    assert!(refusals < first_run, "{log:?}");
    assert!(log.iter().all(|(t, e)| !matches!(e, Ev::Done(_, _, Outcome::QueueFull(_))) || *t == 0));
}

#[tokio::test(start_paused = true)]
async fn max_pending_counts_free_slots_as_room_not_as_waiting() {
    let mut s = bounded(2);
    s.max_inputs = 2;
    s.target_inputs = 2;
    let mut w = World::new(s);
    w.submit([1], 0);
    w.serve(1, |_| (MS, ExecStatus::Ok)).await;
    // A warm container with 2 free slots: 2 start now, 2 wait, the fifth is refused, exactly.
    w.submit(11..=15, 0);
    let log = w.serve(5, |_| (10 * MS, ExecStatus::Ok)).await;
    let got = outcomes(&log);
    let refused: Vec<InputId> = (11..=15).filter(|i| got[i] == Outcome::QueueFull(2)).collect();
    assert_eq!(refused, vec![15]);
    assert!((11..=14).all(|i| got[&i] == Outcome::Ok));
}

#[tokio::test(start_paused = true)]
async fn waiting_submissions_wait_for_room_in_order_and_plain_ones_are_refused_meanwhile() {
    let mut w = World::new(bounded(1));
    w.send(Command::Submit((1..=6).map(|input| Submission { input, pool: POOL, method: 0, waits: true }).collect()));
    w.submit([100], 0);
    let log = w.serve(7, |_| (10 * MS, ExecStatus::Ok)).await;
    let got = outcomes(&log);
    assert_eq!(got[&100], Outcome::QueueFull(1));
    assert!((1..=6).all(|i| got[&i] == Outcome::Ok), "{got:?}");
    let order: Vec<InputId> =
        log.iter().filter_map(|(_, e)| if let Ev::Run(e) = e { Some(e.inputs[0].0) } else { None }).collect();
    assert_eq!(order, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test(start_paused = true)]
async fn held_inputs_can_be_cancelled_and_fail_with_their_pool_start() {
    let mut w = World::new(bounded(1));
    w.send(Command::Submit((1..=3).map(|input| Submission { input, pool: POOL, method: 0, waits: true }).collect()));
    w.send(Command::Cancel(vec![3]));
    let log = w.serve(3, |_| (10 * MS, ExecStatus::Ok)).await;
    let got = outcomes(&log);
    assert_eq!(got[&3], Outcome::Cancelled);
    assert_eq!((got[&1], got[&2]), (Outcome::Ok, Outcome::Ok));

    let mut s = bounded(1);
    s.hooks.enter = true;
    let mut w = World::new(s);
    w.send(Command::Submit((1..=3).map(|input| Submission { input, pool: POOL, method: 0, waits: true }).collect()));
    let mut done = HashMap::new();
    while done.len() < 3 {
        match w.next().await {
            Ev::Hook(c, p) => w.send(Command::HookDone { container: c, phase: p, ok: false }),
            Ev::Done(i, _, o) => {
                done.insert(i, o);
            }
            _ => {}
        }
    }
    assert!(done.values().all(|o| matches!(o, Outcome::Init(_))), "{done:?}");
}

#[tokio::test(start_paused = true)]
async fn retries_of_accepted_inputs_are_never_refused() {
    let mut s = bounded(1);
    s.retries = RetryPolicy::fixed(2).expect("ok");
    let mut w = World::new(s);
    w.submit([9], 0);
    w.serve(1, |_| (MS, ExecStatus::Ok)).await;
    // Warm: input 1 starts, 2 waits (the bound). 1 fails twice; its retries re-enter the queue
    // without the admission check: both finish.
    w.submit([1, 2], 0);
    let log = w
        .serve(2, |e| {
            if e.inputs[0].0 == 1 && e.inputs[0].1 < 3 {
                (MS, ExecStatus::Failed)
            } else {
                (5 * MS, ExecStatus::Ok)
            }
        })
        .await;
    let got = outcomes(&log);
    assert_eq!((got[&1], got[&2]), (Outcome::Ok, Outcome::Ok));
}

#[tokio::test(start_paused = true)]
async fn a_retired_pool_finishes_what_it_accepted_then_drains_with_exit_hooks() {
    // A reload replaces a pool: what it accepted still runs there, then its containers drain
    // (exit hooks run) although minContainers asked to keep one warm.
    let mut s = spec();
    s.hooks.exit = true;
    s.min_containers = 1;
    s.scaledown_window = Duration::from_secs(600);
    let mut w = World::new(s);
    w.submit([1, 2], 0);
    let e1 = w.run_ev().await;
    w.send(Command::RetirePool(POOL));
    tokio::time::sleep(50 * MS).await;
    assert!(w.ev.try_recv().is_err(), "a running input is not cut short by the retirement");
    w.complete(&e1, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Ok));
    let e2 = w.run_ev().await;
    assert_eq!(e2.container, e1.container, "the queued input runs where it was accepted");
    w.complete(&e2, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(2, 1, Outcome::Ok));
    assert_eq!(w.next().await, Ev::Hook(e1.container, Phase::Exit));
    w.send(Command::HookDone { container: e1.container, phase: Phase::Exit, ok: true });
    assert_eq!(w.next().await, Ev::Stopped(e1.container));
    assert_eq!(w.ms(), 50, "drained at once, not after the scale-down window");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(w.ev.try_recv().is_err(), "no container is kept warm for a retired pool");
}

/// What the scheduler counts (metrics.rs), after a known workload on one container: every
/// count exact, the queue waits and batch sizes in the buckets they belong to.
#[tokio::test(start_paused = true)]
async fn metrics_count_outcomes_retries_queue_waits_and_batches() {
    use super::metrics::{outcome_index, BATCH_BUCKETS, SECONDS_BUCKETS};
    let mut s = PoolSpec::new(
        "m",
        vec![
            MethodSpec::default(),
            MethodSpec {
                batching: Some(Batching::new(4, Duration::from_millis(10)).expect("ok")),
                ..MethodSpec::default()
            },
        ],
    );
    s.retries = RetryPolicy::new(1, 1.0, Duration::ZERO, Duration::from_secs(1)).expect("valid");
    s.max_pending = Some(100);
    let mut w = World::new(s);
    // Method 0: 1 succeeds, 2 fails once and then succeeds, 3 fails twice (its one retry
    // spent). Method 1: six inputs, a full batch of 4 and then 2 after their 10 ms wait.
    w.submit([1, 2, 3], 0);
    w.submit(10..16, 1);
    let log = w
        .serve(9, |e| {
            let (input, attempt) = e.inputs[0];
            let failed = (input == 2 && attempt == 1) || input == 3;
            (Duration::ZERO, if failed { ExecStatus::Failed } else { ExecStatus::Ok })
        })
        .await;
    let done = log.iter().filter(|(_, e)| matches!(e, Ev::Done(..))).count();
    assert_eq!(done, 9);
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.send(Command::Metrics(tx));
    let pools = rx.await.expect("answered");
    assert_eq!(pools.len(), 1);
    let p = &pools[0];
    assert_eq!(p.pool, POOL);
    let (m0, m1) = (&p.methods[0], &p.methods[1]);
    let mut outcomes = [0; super::metrics::OUTCOMES];
    outcomes[outcome_index(Outcome::Ok)] = 2;
    outcomes[outcome_index(Outcome::Failed)] = 1;
    assert_eq!(m0.outcomes, outcomes);
    assert_eq!(m0.retries, 2, "input 2 once, input 3 once");
    assert_eq!((m0.latency.count, m0.queue_wait.count, m0.batch_size.count), (3, 5, 5), "5 attempts of 3 inputs");
    assert_eq!(m0.batch_size.buckets[0], 5, "every execution of an unbatched method holds one input");
    let mut outcomes = [0; super::metrics::OUTCOMES];
    outcomes[outcome_index(Outcome::Ok)] = 6;
    assert_eq!(m1.outcomes, outcomes);
    assert_eq!(m1.retries, 0);
    let bucket = |bounds: &[f64], v: f64| bounds.iter().position(|b| v <= *b).expect("in a bucket");
    let mut sizes = vec![0; BATCH_BUCKETS.len()];
    sizes[bucket(&BATCH_BUCKETS, 4.0)] += 1;
    sizes[bucket(&BATCH_BUCKETS, 2.0)] += 1;
    assert_eq!(m1.batch_size.buckets, sizes);
    assert_eq!((m1.batch_size.count, m1.batch_size.sum), (2, 6.0));
    // The second batch waited exactly its 10 ms; nothing else waited (the clock is paused and
    // every execution took no time).
    let mut waits = vec![0; SECONDS_BUCKETS.len()];
    waits[0] = 4;
    waits[bucket(&SECONDS_BUCKETS, 0.010)] = 2;
    assert_eq!(m1.queue_wait.buckets, waits);
    assert!((m1.queue_wait.sum - 0.020).abs() < 1e-9, "{}", m1.queue_wait.sum);
    assert_eq!(m1.latency.count, 6);
    assert_eq!((p.queued.clone(), p.running.clone()), (vec![0, 0], vec![0, 0]));
    assert_eq!((p.containers.started, p.containers.lost, p.containers.failed_to_start), (1, 0, 0));
    assert_eq!(p.states.serving, 1);
    // A refusal at admission is counted too, though the input was never accepted.
    let mut full = PoolSpec::new("q", vec![MethodSpec::default()]);
    full.max_pending = Some(1);
    let mut w = World::new(full);
    w.submit([1, 2, 3], 0);
    let mut refused = 0;
    while refused == 0 {
        if let Ev::Done(_, _, Outcome::QueueFull(_)) = w.next_work().await {
            refused += 1;
        }
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    w.send(Command::Metrics(tx));
    let p = &rx.await.expect("answered")[0];
    // No container serves yet: room for one input (maxPendingInputs), the other two refused.
    assert_eq!(p.methods[0].outcomes[outcome_index(Outcome::QueueFull(1))], 2);
    assert_eq!(p.queued[0] + p.running[0], 1);
}

/// `Command::Containers` (`berth container list`): each container's state and the inputs it
/// runs, as they are when asked.
#[tokio::test(start_paused = true)]
async fn containers_answer_each_containers_state_and_running_inputs() {
    let mut s = spec();
    s.max_inputs = 3;
    s.max_containers = 1;
    let mut w = World::new(s);
    let ask = |w: &World| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        w.send(Command::Containers(tx));
        rx
    };
    assert_eq!(ask(&w).await.expect("answered"), [], "no container before a call");
    w.submit([1, 2], 0);
    let (a, b) = (w.run_ev().await, w.run_ev().await);
    let listed = ask(&w).await.expect("answered");
    assert_eq!(
        listed,
        [super::metrics::ContainerInfo { container: a.container, pool: POOL, state: "serving", in_flight: 2 }]
    );
    w.complete(&a, ExecStatus::Ok);
    w.complete(&b, ExecStatus::Ok);
    assert_eq!(w.next().await, Ev::Done(1, 1, Outcome::Ok));
    assert_eq!(w.next().await, Ev::Done(2, 1, Outcome::Ok));
    assert_eq!(ask(&w).await.expect("answered")[0].in_flight, 0);
    // Stopped (no exit hook here): no longer listed.
    w.send(Command::DrainContainer(a.container));
    assert_eq!(w.next().await, Ev::Stopped(a.container));
    assert_eq!(ask(&w).await.expect("answered"), []);
}
