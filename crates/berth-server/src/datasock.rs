//! The data socket (README "Dict", "Queue"; ARCHITECTURE.md): how a container process reaches
//! its control plane's dicts and queues in one hop from its JavaScript thread. gRPC from a
//! container goes JS → the binding's client thread → the control plane → the client thread →
//! JS, four hand-offs per operation; over this socket the container's event loop writes the
//! request and reads the answer itself (src/data/socket.ts), as a Redis client does, so an
//! operation costs two.
//!
//! The control plane listens on an abstract Unix socket named in its containers' environment
//! (`BERTH_DATA_SOCKET`, set by the supervisor). Frames, both ways, are a 9-byte head — the
//! body's length (u32, little-endian), the request's id (u32, little-endian), a kind (u8) —
//! then the body:
//! - asked: kind 0 `hello` (the container's id as u32 LE, then its token: the first frame, and
//!   the only one a connection may send before it is answered), kind 1 a `DictRequest`, kind 2
//!   a `QueueRequest` (proto/berth/v1/data.proto, protobuf-encoded);
//! - answered, under the request's id and in any order: kind 0 the answer as one CBOR value
//!   (berth_proto::values `dict_answer`, `queue_answer`), or kind 1 a failure: the gRPC status
//!   code (u8) then its message, the same statuses the `Dicts` and `Queues` services answer.
//!
//! Requests of a connection run at once, side by side (a blocked `Queue.get` holds up nothing
//! else), up to [`MAX_IN_FLIGHT`]; past it the connection is not read until some finish. A
//! request over the message cap is answered RESOURCE_EXHAUSTED and its body skipped; a
//! connection whose hello is wrong is answered UNAUTHENTICATED and closed. A blocked get whose
//! connection closes takes nothing, as for a gRPC caller that goes away; what a leasing get took
//! and the connection did not ack before it closed goes back to its queue at once (the container
//! is gone) rather than when the lease runs out.
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use berth_proto::v1 as pb;
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tonic::{Code, Status};

use crate::plane::Shared;

const HEAD: usize = 9;
const KIND_HELLO: u8 = 0;
const KIND_DICT: u8 = 1;
const KIND_QUEUE: u8 = 2;
const ANSWER_OK: u8 = 0;
const ANSWER_FAILED: u8 = 1;

/// Requests of one connection running at once; past it the connection waits for some to end.
const MAX_IN_FLIGHT: usize = 4096;

/// Connections at once: each is a container process's (one per process).
const MAX_CONNECTIONS: usize = 4096;

/// A request's id, its answer, and the lease a leasing get's answer carries (0: none).
type Answering = Pin<Box<dyn Future<Output = (u32, Result<Vec<u8>, Status>, u64)> + Send>>;

/// A fresh abstract socket for the containers of the control plane on `port`, and its name
/// (without the leading NUL); none where no abstract socket can be had (containers then use
/// gRPC). [`serve`] accepts on it.
pub(crate) fn listen(port: u16) -> Option<(String, UnixListener)> {
    let name = format!("berth-data-{}-{port}-{:08x}", std::process::id(), crate::plane::rand_token() as u32);
    // Bound by the whole of sun_path, the name padded with NULs, as Node connects to one
    // (proxy.rs `connect_abstract` says why).
    let padded = crate::proxy::padded_abstract(&name)?;
    match UnixListener::bind(padded) {
        Ok(l) => Some((name, l)),
        Err(e) => {
            tracing::debug!("berth: no data socket ({e}): containers reach dicts and queues over gRPC");
            None
        }
    }
}

/// Accepts connections until the control plane is gone or closing.
pub(crate) async fn serve(listener: UnixListener, shared: Weak<Shared>) {
    let Some(mut closing) = shared.upgrade().map(|s| s.closing.subscribe()) else { return };
    let open = Arc::new(());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = closing.wait_for(|c| *c) => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors, say: try again in a moment rather than spin.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if Arc::strong_count(&open) > MAX_CONNECTIONS {
            continue;
        }
        let (shared, open) = (shared.clone(), Arc::clone(&open));
        tokio::spawn(async move {
            let mut conn = Conn::new(shared);
            let _ = conn.run(stream).await;
            conn.give_back();
            drop(open);
        });
    }
}

struct Conn {
    shared: Weak<Shared>,
    cap: usize,
    hello: bool,
    /// Bytes of a refused request's body still to skip.
    skip: usize,
    answers: Vec<u8>,
    running: FuturesUnordered<Answering>,
    /// Set by a wrong hello: the connection closes once its answer is written.
    closing: bool,
    /// Leases of the gets answered here and not acked yet.
    leased: Vec<u64>,
}

impl Conn {
    fn new(shared: Weak<Shared>) -> Self {
        // The protobuf around the largest value the cap allows, as the gRPC services allow.
        let cap = shared.upgrade().map_or(0, |s| s.max_message_bytes).saturating_add(crate::server::FRAMING_BYTES);
        Self {
            shared,
            cap,
            hello: false,
            skip: 0,
            answers: Vec::new(),
            running: FuturesUnordered::new(),
            closing: false,
            leased: Vec::new(),
        }
    }

    async fn run(&mut self, stream: UnixStream) -> std::io::Result<()> {
        let (mut rd, mut wr) = stream.into_split();
        let mut buf: Vec<u8> = Vec::with_capacity(64 << 10);
        loop {
            tokio::select! {
                Some((id, answer, lease)) = self.running.next(), if !self.running.is_empty() => self.answered(id, answer, lease),
                read = rd.read_buf(&mut buf), if self.running.len() < MAX_IN_FLIGHT && !self.closing => {
                    if read? == 0 {
                        return Ok(());
                    }
                    let used = self.take(&buf);
                    buf.drain(..used);
                    if buf.capacity() > (1 << 20) && buf.len() < (64 << 10) {
                        buf.shrink_to(64 << 10);
                    }
                }
            }
            // What is ready now goes out in the same write.
            while let Some(Some((id, answer, lease))) = self.running.next().now_or_never() {
                self.answered(id, answer, lease);
            }
            if !self.answers.is_empty() {
                wr.write_all(&self.answers).await?;
                self.answers.clear();
                if self.answers.capacity() > (1 << 20) {
                    self.answers.shrink_to(64 << 10);
                }
            }
            if self.closing {
                return Ok(());
            }
        }
    }

    /// Starts every whole request in `buf`; how many bytes it used.
    fn take(&mut self, buf: &[u8]) -> usize {
        let mut at = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(buf.len() - at);
                self.skip -= n;
                at += n;
                if self.skip > 0 {
                    return at;
                }
            }
            let Some(head) = buf.get(at..at + HEAD) else { return at };
            let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let id = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let kind = head[8];
            if len > self.cap {
                self.answer(
                    id,
                    Err(Status::resource_exhausted(format!(
                        "the request is {len} bytes, over the server's message cap of {} (berth serve \
                         --max-message-bytes)",
                        self.cap - crate::server::FRAMING_BYTES
                    ))),
                );
                self.skip = len;
                at += HEAD;
                continue;
            }
            let Some(body) = buf.get(at + HEAD..at + HEAD + len) else {
                return at;
            };
            at += HEAD + len;
            self.start(id, kind, body);
            if self.closing {
                return at;
            }
        }
    }

    fn start(&mut self, id: u32, kind: u8, body: &[u8]) {
        if !self.hello {
            if kind == KIND_HELLO && self.hello_ok(body) {
                self.hello = true;
                self.answer(id, Ok(Vec::new()));
            } else {
                self.answer(
                    id,
                    Err(Status::unauthenticated(
                        "unknown container or wrong token: say hello with the container id and token the server \
                         gave this container when it started it",
                    )),
                );
                self.closing = true;
            }
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            self.answer(id, Err(Status::unavailable("the control plane has stopped")));
            return;
        };
        let answering: Answering = match kind {
            KIND_DICT => match pb::DictRequest::decode(body) {
                Ok(req) => Box::pin(async move {
                    (id, crate::dicts::answer(&shared, req).await.map(|r| berth_proto::values::dict_answer(&r)), 0)
                }),
                Err(e) => {
                    return self.answer(id, Err(Status::invalid_argument(format!("a malformed DictRequest: {e}"))))
                }
            },
            KIND_QUEUE => match pb::QueueRequest::decode(body) {
                Ok(req) => {
                    self.leased.retain(|l| !req.acks.contains(l));
                    Box::pin(async move {
                        match crate::queues::answer(&shared, req).await {
                            Ok(r) => (id, Ok(berth_proto::values::queue_answer(&r)), r.lease),
                            Err(e) => (id, Err(e), 0),
                        }
                    })
                }
                Err(e) => {
                    return self.answer(id, Err(Status::invalid_argument(format!("a malformed QueueRequest: {e}"))))
                }
            },
            other => {
                return self.answer(
                    id,
                    Err(Status::invalid_argument(format!("unknown request kind {other}: 1 is a dict's, 2 a queue's"))),
                )
            }
        };
        // Most answer at once (a dict, a queue that has items): no need to hold them.
        let mut answering = answering;
        match (&mut answering).now_or_never() {
            Some((id, answer, lease)) => self.answered(id, answer, lease),
            None => self.running.push(answering),
        }
    }

    fn answered(&mut self, id: u32, answer: Result<Vec<u8>, Status>, lease: u64) {
        if lease != 0 {
            self.leased.push(lease);
        }
        self.answer(id, answer);
    }

    /// The connection is closed: what its gets took on lease and did not ack goes back.
    fn give_back(&self) {
        if let (false, Some(shared)) = (self.leased.is_empty(), self.shared.upgrade()) {
            shared.queues.give_back(&self.leased);
        }
    }

    fn hello_ok(&self, body: &[u8]) -> bool {
        let (Some(cid), Some(token)) = (body.get(..4), body.get(4..)) else { return false };
        let cid = u32::from_le_bytes([cid[0], cid[1], cid[2], cid[3]]);
        let Some(shared) = self.shared.upgrade() else { return false };
        let linked = shared.lock().link_of(cid, token).is_some();
        linked
    }

    fn answer(&mut self, id: u32, answer: Result<Vec<u8>, Status>) {
        let (kind, body) = match answer {
            Ok(body) => (ANSWER_OK, body),
            Err(s) => {
                let mut body = vec![code_byte(s.code())];
                body.extend_from_slice(s.message().as_bytes());
                (ANSWER_FAILED, body)
            }
        };
        self.answers.extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.answers.extend_from_slice(&id.to_le_bytes());
        self.answers.push(kind);
        self.answers.extend_from_slice(&body);
    }
}

fn code_byte(code: Code) -> u8 {
    code as i32 as u8
}
