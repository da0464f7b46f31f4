#![allow(clippy::unwrap_used)]
//! The process supervisor without a control plane: `sh` stands in for the container process.
//! Each container script logs to the file the supervisor passes as the app file (its only
//! environment variable), so a test sees when a process started and what it was told.
#![cfg(target_os = "linux")]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use berth_core::{MethodSpec, PoolSpec};
use berth_server::gpu::Device;
use berth_server::supervisor::{prestart_container, Placements};
use berth_server::{ExitReporter, FunctionDef, Spawner, Supervisor, SupervisorOptions};

/// Every wait in a test is bounded by this.
const LIMIT: Duration = Duration::from_secs(10);

/// Logs `start <pid>` when the process starts, reads its identity line (a closed stdin ends it
/// quietly, as a spare that is not needed), logs `identity <pid> <line>`, then does `then`.
fn container(then: &str) -> Vec<String> {
    let script = format!(
        r#"echo "start $$" >> "$BERTH_APP_FILE"; read -r line || exit 0; printf 'identity %s %s\n' $$ "$line" >> "$BERTH_APP_FILE"; {then}"#
    );
    vec!["sh".into(), "-c".into(), script]
}

/// A log file of this test's own, removed when the test ends.
struct Log(PathBuf);

impl std::ops::Deref for Log {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn log_file(test: &str) -> Log {
    let path = std::env::temp_dir().join(format!("berth-supervisor-{}-{test}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    Log(path)
}

fn lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_string).collect()
}

/// The pids of the processes that started, in order.
fn started(log: &Path) -> Vec<u32> {
    lines(log).iter().filter_map(|l| l.strip_prefix("start ")).map(|p| p.parse().unwrap()).collect()
}

/// `(pid, identity line)` of the processes that were told who they are, in order.
fn identities(log: &Path) -> Vec<(u32, String)> {
    lines(log)
        .iter()
        .filter_map(|l| l.strip_prefix("identity "))
        .map(|l| {
            let (pid, line) = l.split_once(' ').unwrap();
            (pid.parse().unwrap(), line.to_string())
        })
        .collect()
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < LIMIT, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Running: neither gone nor a zombie (the forced stop kills the spare without reaping it, as
/// the process exits right after).
fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z'))
}

fn def(name: &str) -> FunctionDef {
    common::function("app", name, PoolSpec::new(name, vec![MethodSpec::default()]), Vec::new())
}

fn reporter() -> (ExitReporter, Receiver<String>) {
    let (tx, rx) = channel();
    (
        ExitReporter::new(move |why| {
            let _ = tx.send(why);
        }),
        rx,
    )
}

fn options(command: Vec<String>, log: &Path) -> SupervisorOptions {
    SupervisorOptions { warm_spare: false, ..SupervisorOptions::new(command, log.display().to_string()) }
}

/// Spawns container `id` of function `f` and returns what reports its end.
fn spawn(s: &Supervisor, id: u32) -> Receiver<String> {
    let (exited, rx) = reporter();
    s.spawn(&def("f"), &[0x00, 0xff], id, "tok", "http://127.0.0.1:1", exited);
    rx
}

#[test]
fn a_container_learns_who_it_is_on_stdin_after_its_function_env() {
    let log = log_file("identity");
    let mut placements = Placements::default();
    // Who the container is comes last, so it wins over the function's env.
    let env = HashMap::from([("BERTH_APP".to_string(), "not \"me\"\\".to_string())]);
    placements.add("app", "f", env, &[], &mut def("f").spec).unwrap();
    let s = Supervisor::start(SupervisorOptions {
        placements,
        max_message_bytes: 1234,
        ..options(container("exec sleep 30"), &log)
    });
    let _rx = spawn(&s, 7);
    until("the container got its identity", || identities(&log).len() == 1);
    let (pid, line) = identities(&log).remove(0);
    assert_eq!(
        line,
        concat!(
            r#"{"BERTH_APP":"not \"me\"\\","BERTH_ENDPOINT":"http://127.0.0.1:1","BERTH_CONTAINER_ID":"7","#,
            r#""BERTH_CONTAINER_TOKEN":"tok","BERTH_APP":"app","BERTH_FUNCTION":"f","BERTH_PARAMS":"00ff","#,
            r#""BERTH_MAX_INPUTS":"1","BERTH_MAX_MESSAGE_BYTES":"1234"}"#
        )
    );
    assert_eq!(s.handle().live(), 1);
    s.kill(7);
    until("the container is gone", || s.handle().live() == 0 && !alive(pid));
}

#[test]
fn a_process_that_ends_unasked_is_reported_with_how_it_ended() {
    let log = log_file("unasked");
    let failing = Supervisor::start(options(container("exit 3"), &log));
    let rx = spawn(&failing, 1);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "exited with status 3");
    until("it is no longer counted", || failing.handle().live() == 0);

    let crashing = Supervisor::start(options(container("kill -9 $$"), &log));
    let rx = spawn(&crashing, 2);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "was killed by signal 9");

    let clean = Supervisor::start(options(container("exit 0"), &log));
    let rx = spawn(&clean, 3);
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "exited with status 0", "lost, even when it ended well");
}

#[test]
fn a_stopped_process_that_stays_is_killed_after_the_grace_and_not_reported() {
    let log = log_file("grace");
    let grace = Duration::from_millis(300);
    let s = Supervisor::start(SupervisorOptions { stop_grace: grace, ..options(container("exec sleep 30"), &log) });
    let rx = spawn(&s, 1);
    until("it started", || identities(&log).len() == 1);
    let pid = identities(&log)[0].0;
    let t0 = Instant::now();
    s.stop(1);
    std::thread::sleep(grace / 2);
    assert!(alive(pid), "a stop is no signal: the container is told over its stream");
    until("it is gone", || s.handle().live() == 0);
    let took = t0.elapsed();
    assert!(took >= grace && took < grace + Duration::from_secs(2), "killed {took:?} after its stop");
    assert!(!alive(pid));
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "a stopped container is not lost");
}

#[test]
fn a_stopped_process_that_exits_by_itself_is_not_reported() {
    let log = log_file("exits");
    let s = Supervisor::start(options(container("sleep 0.2; exit 1"), &log));
    let rx = spawn(&s, 1);
    until("it started", || identities(&log).len() == 1);
    s.stop(1);
    until("it is gone", || s.handle().live() == 0);
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err());
}

#[test]
fn kill_ends_the_process_at_once_and_is_not_reported() {
    let log = log_file("kill");
    let s = Supervisor::start(options(container("exec sleep 30"), &log));
    let rx = spawn(&s, 1);
    until("it started", || identities(&log).len() == 1);
    let t0 = Instant::now();
    s.kill(1);
    until("it is gone", || s.handle().live() == 0);
    assert!(t0.elapsed() < Duration::from_secs(2), "no grace for a hung container");
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "the control plane reported it already");
}

#[test]
fn wait_stopped_returns_once_every_process_is_gone() {
    let log = log_file("wait");
    let grace = Duration::from_millis(300);
    let s = Supervisor::start(SupervisorOptions { stop_grace: grace, ..options(container("exec sleep 30"), &log) });
    let _rx = (spawn(&s, 1), spawn(&s, 2));
    until("both started", || identities(&log).len() == 2);
    let t0 = Instant::now();
    s.handle().wait_stopped();
    assert_eq!(s.handle().live(), 0);
    assert!(t0.elapsed() < grace + Duration::from_secs(2));
    assert!(identities(&log).iter().all(|(pid, _)| !alive(*pid)));
}

#[test]
fn kill_all_ends_every_process_and_the_spare_and_nothing_starts_after() {
    let log = log_file("kill-all");
    let s = Supervisor::start(SupervisorOptions { warm_spare: true, ..options(container("exec sleep 30"), &log) });
    let _rx = (spawn(&s, 1), spawn(&s, 2));
    until("two containers and a spare started", || identities(&log).len() == 2 && started(&log).len() == 3);
    let pids = started(&log);
    s.handle().kill_all();
    until("every process is gone", || s.handle().live() == 0 && pids.iter().all(|p| !alive(*p)));
    let rx = spawn(&s, 3);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(started(&log).len(), 3, "nothing starts once closed");
    assert!(rx.try_recv().is_err(), "and nothing is reported");
}

#[test]
fn the_warm_spare_becomes_the_next_container_and_another_takes_its_place() {
    let log = log_file("spare");
    let s = Supervisor::start(SupervisorOptions { warm_spare: true, ..options(container("exec sleep 30"), &log) });
    until("the spare started", || started(&log).len() == 1);
    let spare = started(&log)[0];
    let _rx = spawn(&s, 1);
    until("a new spare started", || started(&log).len() == 2);
    until("the container got its identity", || identities(&log).len() == 1);
    assert_eq!(identities(&log)[0].0, spare, "the spare became the container");
    let next = started(&log)[1];
    s.handle().close();
    assert!(!alive(next), "close reaps the spare (its stdin closed, it exited)");
    assert_eq!(identities(&log).len(), 1, "the spare was never told it was a container");
    s.kill(1);
}

#[test]
fn without_the_warm_spare_a_process_starts_with_each_container_only() {
    let log = log_file("no-spare");
    let s = Supervisor::start(options(container("exec sleep 30"), &log));
    std::thread::sleep(Duration::from_millis(200));
    assert!(started(&log).is_empty());
    let _rx = spawn(&s, 1);
    until("the container got its identity", || identities(&log).len() == 1);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(started(&log).len(), 1);
    s.kill(1);
}

#[test]
fn a_prestarted_process_is_adopted_by_the_supervisor_for_the_same_command() {
    let log = log_file("prestart");
    let command = container("exec sleep 30");
    prestart_container(command.clone(), log.display().to_string(), berth_server::supervisor::Output::Inherit);
    until("the early spare started", || started(&log).len() == 1);
    let early = started(&log)[0];
    let s = Supervisor::start(SupervisorOptions { warm_spare: true, ..options(command, &log) });
    let _rx = spawn(&s, 1);
    until("the container got its identity", || identities(&log).len() == 1);
    assert_eq!(identities(&log)[0].0, early);
    s.kill(1);
}

#[test]
fn a_command_that_cannot_start_is_reported() {
    let log = log_file("missing");
    let s = Supervisor::start(options(vec!["/nonexistent/berth-container".into()], &log));
    let rx = spawn(&s, 1);
    assert_eq!(
        rx.recv_timeout(LIMIT).unwrap(),
        "could not start (/nonexistent/berth-container: No such file or directory (os error 2))"
    );
    assert_eq!(s.handle().live(), 0);
}

#[test]
fn a_container_dies_with_the_thread_that_started_it() {
    let log = log_file("pdeathsig");
    let s = std::sync::Arc::new(Supervisor::start(options(container("exec sleep 30"), &log)));
    let starter = s.clone();
    let rx = std::thread::spawn(move || spawn(&starter, 1)).join().unwrap();
    assert_eq!(rx.recv_timeout(LIMIT).unwrap(), "was killed by signal 9", "no container outlives its starter");
}

#[test]
fn gpus_are_held_whole_by_one_container_and_come_back_when_it_ends() {
    let log = log_file("gpu");
    let device = Device { index: 0, name: "NVIDIA A100-SXM4-80GB".into(), uuid: Some("GPU-a".into()) };
    let mut placements = Placements::with_gpus(vec![device]);
    let mut spec = def("f").spec;
    spec.max_containers = 4;
    placements.add("app", "f", HashMap::new(), &["A100".into()], &mut spec).unwrap();
    assert_eq!(spec.max_containers, 1, "no more containers than the GPUs hold");
    let s = Supervisor::start(SupervisorOptions { placements, ..options(container("exec sleep 30"), &log) });

    let _first = spawn(&s, 1);
    until("the first container got its identity", || identities(&log).len() == 1);
    assert!(identities(&log)[0].1.ends_with(r#","CUDA_VISIBLE_DEVICES":"GPU-a"}"#), "{:?}", identities(&log));
    let second = spawn(&s, 2);
    assert_eq!(second.recv_timeout(LIMIT).unwrap(), "could not start: every matching GPU is held by another container");
    s.kill(1);
    until("the first container is gone", || s.handle().live() == 0);
    let _third = spawn(&s, 3);
    until("the third container got the GPU", || identities(&log).len() == 2);
    assert!(identities(&log)[1].1.contains(r#""CUDA_VISIBLE_DEVICES":"GPU-a""#));
    s.kill(3);
}

#[test]
fn a_gpu_request_the_machine_cannot_meet_is_refused_with_the_fix() {
    let a100 = |index| Device { index, name: "NVIDIA A100-SXM4-80GB".into(), uuid: None };
    let mut placements = Placements::with_gpus(vec![a100(0)]);
    let mut spec = def("g").spec;
    spec.min_containers = 2;
    spec.max_containers = 2;
    assert_eq!(
        placements.add("app", "g", HashMap::new(), &["A100".into()], &mut spec).unwrap_err(),
        "berth: g keeps minContainers 2 warm, but the machine's GPUs fit 1 such container(s) at once; lower minContainers"
    );
    assert_eq!(
        placements.add("app", "g", HashMap::new(), &["A100:0".into()], &mut def("g").spec).unwrap_err(),
        "berth: g: gpu 'A100:0': the count after ':' must be a whole number of at least 1, e.g. 'A100:2'"
    );
}
