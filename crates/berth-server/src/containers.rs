//! `berth.v1.Containers`: a container's Attach stream, and what its messages do (credits,
//! hooks done, outputs, draining, heartbeats).
use std::sync::Arc;

use berth_core::{Command, Phase};
use berth_proto::v1::{self as pb, container_message, containers_server::Containers, ControlMessage};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::functions::bad;
use crate::plane::{Input, Shared, Waiter};

type Stream<T> = UnboundedReceiverStream<Result<T, Status>>;

pub(crate) struct ContainersSvc {
    pub(crate) shared: Arc<Shared>,
}

fn phase_from_pb(p: i32) -> Phase {
    match pb::Phase::try_from(p) {
        Ok(pb::Phase::Build) => Phase::Build,
        Ok(pb::Phase::SnapEnter) => Phase::SnapEnter,
        Ok(pb::Phase::Exit) => Phase::Exit,
        _ => Phase::Enter,
    }
}

#[tonic::async_trait]
impl Containers for ContainersSvc {
    type AttachStream = Stream<ControlMessage>;

    async fn attach(
        &self,
        req: Request<Streaming<pb::ContainerMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = req.into_inner();
        let first = inbound.next().await.ok_or_else(|| bad("empty Attach stream: say hello first"))??;
        let Some(container_message::Msg::Hello(hello)) = first.msg else {
            return Err(bad("the first Attach message must be hello { container_id, token }"));
        };
        let cid = hello.container_id;
        let (out, rx) = mpsc::unbounded_channel();
        attach_link(&self.shared, cid, &hello.token, out)?;
        let shared = self.shared.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = inbound.next().await {
                handle_container_message(&shared, cid, msg.msg);
            }
            detached(&shared, cid);
        });
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }
}

/// A container's hello: its link (found by id and token) gets the stream's sender and sends
/// what waited for the attach; the scheduler learns that the spawn is done.
pub(crate) fn attach_link(
    shared: &Shared,
    cid: u32,
    token: &str,
    out: mpsc::UnboundedSender<Result<ControlMessage, Status>>,
) -> Result<(), Status> {
    {
        let mut st = shared.lock();
        // One answer for an unknown id and a wrong token: telling them apart would show
        // an unauthenticated caller which container ids exist.
        let link = st.link_of(cid, token.as_bytes()).ok_or_else(|| {
            Status::unauthenticated(
                "unknown container or wrong token: attach with the container id and token the server \
                 gave this container when it started it",
            )
        })?;
        if link.tx.is_some() {
            return Err(Status::already_exists(format!("container {cid} is already attached")));
        }
        link.tx = Some(out);
        link.flush();
    }
    let _ = shared.commands.send(Command::HookDone { container: cid, phase: Phase::Spawn, ok: true });
    Ok(())
}

/// A container's Attach stream ended: a container that was stopped is gone already; any other
/// died.
pub(crate) fn detached(shared: &Shared, cid: u32) {
    let known = shared.lock().links.remove(&cid).is_some();
    if known {
        let _ = shared.commands.send(Command::ContainerLost(cid));
        shared.spawner.stop(cid);
    }
}

/// Finished executions: their results wait for the scheduler's decision, their credits return.
fn outputs(shared: &Shared, cid: u32, outputs: Vec<pb::Output>) {
    let mut done = Vec::with_capacity(outputs.len());
    let mut answered = Vec::new();
    let mut st = shared.lock();
    let overdue = st.links.get(&cid).is_some_and(|l| !l.overdue.is_empty());
    for o in outputs {
        // A proxied request's execution is the control plane's own to complete (proxy.rs): a
        // container never ran it, and its output for it would free the slot mid-answer.
        let proxied = |st: &crate::plane::State| {
            st.execs
                .get(&o.exec_id)
                .and_then(|(_, inputs)| inputs.first())
                .is_some_and(|(i, _)| st.proxied.contains_key(i))
        };
        if proxied(&st) {
            continue;
        }
        let Some(inputs) = st.record(cid, o.exec_id, o.results) else {
            continue;
        };
        if overdue {
            answered.extend(inputs.iter().map(|(i, _)| *i));
        }
        let status = if o.retryable_failure { berth_core::ExecStatus::Failed } else { berth_core::ExecStatus::Ok };
        done.push((o.exec_id, status));
    }
    // Each output acknowledges its execution: the slot's credit comes back.
    if let Some(link) = st.links.get_mut(&cid) {
        link.last_heard = std::time::Instant::now();
        if !link.overdue.is_empty() {
            link.overdue.retain(|i| !answered.contains(i));
            if link.overdue.is_empty() {
                link.overdue_since = None;
            }
        }
        link.credits = link.credits.saturating_add(u32::try_from(done.len()).unwrap_or(u32::MAX));
        link.flush();
    }
    drop(st);
    if !done.is_empty() {
        let _ = shared.commands.send(Command::Complete(done));
    }
}

/// Items a generator input yielded go to its caller's stream, if this container runs it.
fn yielded(shared: &Shared, cid: u32, items: pb::Items) {
    let mut st = shared.lock();
    if let Some(link) = st.links.get_mut(&cid) {
        link.last_heard = std::time::Instant::now();
    }
    if st.running.get(&items.input_id) != Some(&cid) {
        return;
    }
    let Some(Input { waiter: Waiter::Stream(out) | Waiter::Web(out) | Waiter::Forward(out, _), .. }) =
        st.inputs.get(&items.input_id)
    else {
        return;
    };
    for value in items.values {
        let _ = out.send(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Value(value)) }));
    }
}

/// Any message from a container is a sign of life (outputs note it under their own lock).
fn heard(shared: &Shared, cid: u32) {
    if let Some(link) = shared.lock().links.get_mut(&cid) {
        link.last_heard = std::time::Instant::now();
    }
}

pub(crate) fn handle_container_message(shared: &Shared, cid: u32, msg: Option<container_message::Msg>) {
    match msg {
        Some(container_message::Msg::Credit(c)) => {
            let mut st = shared.lock();
            if let Some(link) = st.links.get_mut(&cid) {
                link.last_heard = std::time::Instant::now();
                // A container states its own slots; any number it sends must not overflow.
                link.credits = link.credits.saturating_add(c.slots);
                link.flush();
            }
        }
        Some(container_message::Msg::HookDone(h)) => {
            heard(shared, cid);
            let phase = phase_from_pb(h.phase);
            if !h.ok && phase != Phase::Exit {
                if let Some(e) = h.error {
                    crate::plane::start_failed(shared, cid, phase, e);
                }
            }
            let _ = shared.commands.send(Command::HookDone { container: cid, phase, ok: h.ok });
        }
        Some(container_message::Msg::Output(o)) => outputs(shared, cid, vec![o]),
        Some(container_message::Msg::OutputBatch(b)) => outputs(shared, cid, b.outputs),
        Some(container_message::Msg::Draining(d)) => {
            heard(shared, cid);
            let cmd = if d.interrupted { Command::InterruptContainer(cid) } else { Command::DrainContainer(cid) };
            let _ = shared.commands.send(cmd);
        }
        Some(container_message::Msg::Heartbeat(_)) => heard(shared, cid),
        Some(container_message::Msg::Items(items)) => yielded(shared, cid, items),
        Some(container_message::Msg::AppServer(a)) => {
            let mut st = shared.lock();
            // Only a web app member has a server: anything else a container says is ignored
            // (and keeps what a link holds to its members).
            let def = st.links.get(&cid).and_then(|l| l.def).and_then(|d| shared.def(d));
            if def.is_none_or(|d| d.web_app(a.method).is_none()) {
                return;
            }
            if let (Some(link), Ok(port)) = (st.links.get_mut(&cid), u16::try_from(a.port)) {
                link.last_heard = std::time::Instant::now();
                link.servers.retain(|(m, _)| *m != a.method);
                link.servers.push((a.method, Arc::new(crate::proxy::AppServer::new(port, a.socket))));
            }
        }
        Some(container_message::Msg::Hello(_)) | None => {}
    }
}

#[cfg(test)]
mod tests {
    use berth_proto::v1::{self as pb, container_message::Msg};

    use crate::fuzzing::Plane;

    fn output(exec_id: u64) -> pb::ContainerMessage {
        let result = pb::Result { outcome: Some(pb::result::Outcome::Value(vec![0x01])) };
        pb::ContainerMessage {
            msg: Some(Msg::Output(pb::Output { exec_id, results: vec![result], ..Default::default() })),
        }
    }

    #[test]
    fn credits_saturate() {
        // Found by fuzz/ (attach_frames): credits are the container's to state, and two
        // credits of u32::MAX overflowed the count (a panic in debug builds, which ended the
        // task reading the container's stream; a wrapped, near-zero count in release).
        let mut plane = Plane::new(1);
        plane.spawn(vec![0x80]);
        let (cid, token) = plane.started()[0].clone();
        assert!(plane.hello(cid, &token));
        let credit = || pb::ContainerMessage { msg: Some(Msg::Credit(pb::Credit { slots: u32::MAX })) };
        plane.message(cid, credit());
        // One went to the waiting input.
        assert_eq!(plane.credits(), vec![(cid, u32::MAX - 1)]);
        plane.message(cid, credit());
        assert_eq!(plane.credits(), vec![(cid, u32::MAX)]);
        let exec = plane.execs()[0].0;
        plane.message(cid, output(exec));
        assert_eq!(plane.credits(), vec![(cid, u32::MAX)]);
    }

    #[test]
    fn a_container_answers_its_own_executions_only() {
        // Found by fuzz/ (attach_frames): an output from container 1 for an execution running
        // in container 2 completed it, and gave container 1 the credit.
        // Two containers kept: a cold pool starts one for its queue until it has measured.
        let mut plane = Plane::with_min_containers(1, 2);
        plane.spawn(vec![0x81, 0x01]);
        plane.spawn(vec![0x81, 0x02]);
        let started = plane.started();
        assert_eq!(started.len(), 2, "two containers for two inputs");
        for (cid, token) in &started {
            assert!(plane.hello(*cid, token));
            plane.message(*cid, pb::ContainerMessage { msg: Some(Msg::Credit(pb::Credit { slots: 1 })) });
        }
        let execs = plane.execs();
        assert_eq!(execs.iter().map(|e| e.1).collect::<Vec<_>>(), vec![started[0].0, started[1].0]);
        let (mine, theirs) = (execs[0].0, execs[1].0);
        let credits = plane.credits();
        plane.message(started[0].0, output(theirs));
        assert_eq!(plane.execs(), execs, "another container's output is ignored");
        assert_eq!(plane.credits(), credits, "and brings no credit");
        plane.message(started[0].0, output(mine));
        assert_eq!(plane.execs(), vec![execs[1]]);
    }

    #[test]
    fn a_lost_containers_unanswered_executions_are_forgotten() {
        // They used to stay in the execution table for the server's lifetime.
        let mut plane = Plane::new(1);
        plane.spawn(vec![0x81, 0x01]);
        let (cid, token) = plane.started()[0].clone();
        assert!(plane.hello(cid, &token));
        plane.message(cid, pb::ContainerMessage { msg: Some(Msg::Credit(pb::Credit { slots: 1 })) });
        assert_eq!(plane.execs().len(), 1);
        plane.detach(cid);
        assert!(plane.execs().iter().all(|e| e.1 != cid), "{:?}", plane.execs());
    }
}
