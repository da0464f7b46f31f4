//! `GET /metrics` on the HTTP port (README "Metrics"): what the scheduler counted
//! (berth-core `metrics.rs`) per app, function and method, what holds now (queued and running
//! inputs, containers by state), the connection counters, and the CPU and memory of this
//! process and of each container process, in Prometheus' text format (version 0.0.4).
//!
//! Nothing is counted here: a scrape asks the scheduler for its counts (one command, answered
//! in its next turn) and reads `/proc`. Pools of the same method add up (a class's parameter
//! sets, the version a reload replaced), so every series has one line.
use std::collections::BTreeMap;
use std::fmt::Write;

use berth_core::metrics::{ContainerCounts, ContainerStates, Histogram, MethodMetrics, OUTCOME_NAMES};
use berth_core::Command;

use crate::conn::ConnCounters;
use crate::plane::Shared;

/// The media type of the text format.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `(app, function, method)`; a plain function's method is its own name.
type MethodKey = (String, String, String);
/// `(app, function)`.
type PoolKey = (String, String);
/// Which histogram of a method's metrics a family shows.
type HistogramOf = fn(&MethodMetrics) -> &Histogram;

#[derive(Default)]
struct PoolTotals {
    containers: ContainerCounts,
    states: ContainerStates,
}

/// The exposition, or why the scheduler could not answer (it has stopped).
pub(crate) async fn exposition(shared: &Shared, conn: ConnCounters) -> Result<String, &'static str> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if !shared.commands.send(Command::Metrics(tx)) {
        return Err("the scheduler has stopped");
    }
    let pools = rx.await.map_err(|_| "the scheduler has stopped")?;
    let mut methods: BTreeMap<MethodKey, (MethodMetrics, u32, u32)> = BTreeMap::new();
    let mut totals: BTreeMap<PoolKey, PoolTotals> = BTreeMap::new();
    // What is served has its series from the start, at zero, before its first call makes a
    // pool: a rate over a counter that appears late misses its first increase.
    for def in &shared.catalog().current.functions {
        for name in &def.methods {
            methods
                .entry((def.app.clone(), def.name.clone(), name.clone()))
                .or_insert_with(|| (MethodMetrics::new(), 0, 0));
        }
        totals.entry((def.app.clone(), def.name.clone())).or_default();
    }
    let mut processes: Vec<(PoolKey, u32, u32)> = Vec::new();
    {
        let st = shared.lock();
        for p in &pools {
            let Some(def) = st.pools.get(&p.pool).and_then(|e| shared.def(e.def)) else { continue };
            for (i, m) in p.methods.iter().enumerate() {
                let name = def.methods.get(i).cloned().unwrap_or_default();
                let entry = methods
                    .entry((def.app.clone(), def.name.clone(), name))
                    .or_insert_with(|| (MethodMetrics::new(), 0, 0));
                entry.0.merge(m);
                entry.1 += p.queued.get(i).copied().unwrap_or(0);
                entry.2 += p.running.get(i).copied().unwrap_or(0);
            }
            let t = totals.entry((def.app.clone(), def.name.clone())).or_default();
            t.containers.started += p.containers.started;
            t.containers.lost += p.containers.lost;
            t.containers.failed_to_start += p.containers.failed_to_start;
            t.states.starting += p.states.starting;
            t.states.serving += p.states.serving;
            t.states.draining += p.states.draining;
            t.states.exiting += p.states.exiting;
        }
        for (cid, pid) in shared.spawner.processes() {
            let Some(def) = st.links.get(&cid).and_then(|l| l.def).and_then(|d| shared.def(d)) else { continue };
            processes.push(((def.app.clone(), def.name.clone()), cid, pid));
        }
    }

    let mut out = String::with_capacity(4096 + methods.len() * 4096);
    // Each series' labels, written once.
    let per_method: Vec<(String, &MethodMetrics, u32, u32)> = methods
        .iter()
        .map(|(k, (mm, queued, running))| {
            (
                format!("app=\"{}\",function=\"{}\",method=\"{}\"", esc(&k.0), esc(&k.1), esc(&k.2)),
                mm,
                *queued,
                *running,
            )
        })
        .collect();
    let pool_labels = |k: &PoolKey| format!("app=\"{}\",function=\"{}\"", esc(&k.0), esc(&k.1));
    let per_pool: Vec<(String, &PoolTotals)> = totals.iter().map(|(k, t)| (pool_labels(k), t)).collect();

    series(
        &mut out,
        "berth_inputs_total",
        "counter",
        "Inputs by final outcome (rejected and queue_full: refused, never accepted).",
        per_method.iter().flat_map(|(l, mm, _, _)| {
            OUTCOME_NAMES.iter().zip(mm.outcomes).map(move |(name, n)| (format!("{l},outcome=\"{name}\""), n))
        }),
    );
    series(
        &mut out,
        "berth_input_retries_total",
        "counter",
        "Failed attempts run again under the Retries policy.",
        per_method.iter().map(|(l, mm, _, _)| (l, mm.retries)),
    );
    series(
        &mut out,
        "berth_input_reschedules_total",
        "counter",
        "Attempts stopped through no fault of their code (container lost, interrupted, replaced) and queued again.",
        per_method.iter().map(|(l, mm, _, _)| (l, mm.rescheduled)),
    );
    series(
        &mut out,
        "berth_inputs_queued",
        "gauge",
        "Inputs waiting for a container (queued, or held under maxPendingInputs).",
        per_method.iter().map(|(l, _, queued, _)| (l, queued)),
    );
    series(
        &mut out,
        "berth_inputs_running",
        "gauge",
        "Inputs running in a container.",
        per_method.iter().map(|(l, _, _, running)| (l, running)),
    );
    let histograms: [(&str, &str, HistogramOf); 3] = [
        ("berth_input_latency_seconds", "Seconds from an input's acceptance to its final outcome.", |mm| &mm.latency),
        ("berth_queue_wait_seconds", "Seconds each attempt waited in the queue for a container.", |mm| &mm.queue_wait),
        ("berth_batch_size", "Inputs per execution (the batch formed, for a @batched method).", |mm| &mm.batch_size),
    ];
    for (name, help, of) in histograms {
        family(&mut out, name, "histogram", help);
        for (l, mm, _, _) in &per_method {
            histogram(&mut out, name, l, of(mm));
        }
    }
    series(
        &mut out,
        "berth_containers",
        "gauge",
        "Containers by state.",
        per_pool.iter().flat_map(|(l, t)| {
            let s = t.states;
            [("starting", s.starting), ("serving", s.serving), ("draining", s.draining), ("exiting", s.exiting)]
                .map(|(state, n)| (format!("{l},state=\"{state}\""), n))
        }),
    );
    series(
        &mut out,
        "berth_containers_started_total",
        "counter",
        "Containers started.",
        per_pool.iter().map(|(l, t)| (l, t.containers.started)),
    );
    series(
        &mut out,
        "berth_containers_lost_total",
        "counter",
        "Containers whose process died or stopped answering.",
        per_pool.iter().map(|(l, t)| (l, t.containers.lost)),
    );
    series(
        &mut out,
        "berth_container_start_failures_total",
        "counter",
        "Containers whose startup hooks failed or timed out.",
        per_pool.iter().map(|(l, t)| (l, t.containers.failed_to_start)),
    );

    let usage: Vec<(String, (f64, u64))> = processes
        .iter()
        .filter_map(|(k, cid, pid)| {
            Some((format!("{},container=\"{cid}\"", pool_labels(k)), proc_usage(&pid.to_string())?))
        })
        .collect();
    series(
        &mut out,
        "berth_container_cpu_seconds_total",
        "counter",
        "CPU time of each container process.",
        usage.iter().map(|(l, (cpu, _))| (l, cpu)),
    );
    series(
        &mut out,
        "berth_container_resident_memory_bytes",
        "gauge",
        "Resident memory of each container process.",
        usage.iter().map(|(l, (_, rss))| (l, rss)),
    );
    if let Some((cpu, rss)) = proc_usage("self") {
        family(&mut out, "process_cpu_seconds_total", "counter", "CPU time of the serving process.");
        let _ = writeln!(out, "process_cpu_seconds_total {cpu}");
        family(&mut out, "process_resident_memory_bytes", "gauge", "Resident memory of the serving process.");
        let _ = writeln!(out, "process_resident_memory_bytes {rss}");
    }

    for (name, help, n) in [
        (
            "berth_handshake_timeouts_total",
            "Connections closed for sending no complete request head in time.",
            conn.handshake_timeouts,
        ),
        ("berth_idle_closes_total", "Connections closed after idle_timeout.", conn.idle_closes),
        ("berth_connections_refused_total", "Connections refused over max_connections.", conn.refused_over_cap),
        (
            "berth_stalled_bodies_total",
            "HTTP requests answered 408 for a body that stalled or trickled.",
            conn.stalled_bodies,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {n}");
    }
    Ok(out)
}

/// A family with one sample per `(labels, value)`.
fn series<L: std::fmt::Display, V: std::fmt::Display>(
    out: &mut String,
    name: &str,
    kind: &str,
    help: &str,
    rows: impl IntoIterator<Item = (L, V)>,
) {
    family(out, name, kind, help);
    for (labels, value) in rows {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A histogram's cumulative buckets, sum and count.
fn histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (bound, n) in h.bounds.iter().zip(&h.buckets) {
        cumulative += n;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}", h.count);
}

/// A label value as the text format writes it: backslash, quote and newline escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// CPU seconds (user + system) and resident bytes of `/proc/<pid>`; `None` on a system
/// without `/proc`, or when the process has gone.
fn proc_usage(pid: &str) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count fields after its end.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15, in clock ticks: USER_HZ, 100 on Linux.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some((ticks as f64 / 100.0, rss_kb * 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_histograms_cumulative() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut h = Histogram::new(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut out = String::new();
        histogram(&mut out, "x", "f=\"g\"", &h);
        assert_eq!(
            out,
            "x_bucket{f=\"g\",le=\"1\"} 1\nx_bucket{f=\"g\",le=\"2\"} 2\nx_bucket{f=\"g\",le=\"+Inf\"} 3\nx_sum{f=\"g\"} 11\nx_count{f=\"g\"} 3\n"
        );
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let (cpu, rss) = proc_usage("self").expect("/proc on Linux");
        assert!(cpu >= 0.0);
        assert!(rss > 1024 * 1024, "{rss}");
    }
}
