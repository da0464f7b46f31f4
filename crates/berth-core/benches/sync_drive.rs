//! Scheduler cost per input on the synchronous path the N-API binding uses:
//! `cargo bench -p berth-core --bench sync_drive`. Prints ns per input (submit, run, complete).
use std::time::Instant;

use berth_core::{
    AbortReason, Command, ContainerId, Exec, ExecStatus, InputId, Invoker, MethodSpec, Outcome, Phase, PoolId,
    PoolSpec, ResultSink, Scheduler, Submission,
};

#[derive(Default)]
struct Sink(Vec<f64>);
impl Invoker for Sink {
    fn run_hook(&mut self, _: PoolId, _: ContainerId, _: Phase) {}
    fn run(&mut self, e: &Exec) {
        self.0.push(e.id as f64);
    }
    fn abort(&mut self, _: InputId, _: u32, _: AbortReason) {}
    fn hook_abandoned(&mut self, _: PoolId, _: ContainerId, _: Phase) {}
    fn container_stopped(&mut self, _: PoolId, _: ContainerId) {}
}
struct Quiet;
impl ResultSink for Quiet {
    fn done(&mut self, _: InputId, _: u32, _: Outcome) {}
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    let _guard = rt.enter();
    let mut spec = PoolSpec::new("bench", vec![MethodSpec::default()]);
    spec.max_inputs = 1000;
    spec.target_inputs = 1000;
    let mut s = Scheduler::new(Sink::default(), Quiet);
    s.handle(Command::AddPool(1, spec));
    s.tick();
    let rounds = 2000u64;
    let per = 1000u64;
    let t0 = Instant::now();
    let mut next = 1;
    let mut execs = Vec::with_capacity(per as usize);
    for _ in 0..rounds {
        s.handle(Command::Submit(
            (next..next + per).map(|input| Submission { input, pool: 1, method: 0, waits: false }).collect(),
        ));
        next += per;
        s.tick();
        // the sink is private to the scheduler; ids are dense, so rebuild them
        execs.clear();
        execs.extend((next - per..next).map(|e| (e, ExecStatus::Delivered)));
        s.handle(Command::Complete(std::mem::take(&mut execs)));
        s.tick();
    }
    let ns = t0.elapsed().as_nanos() as f64 / (rounds * per) as f64;
    println!("scheduler, synchronous drive: {ns:.0} ns per input (submit + run + complete), 1000 in flight");
}
