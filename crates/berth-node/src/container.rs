//! The container process's side: one Attach stream to the control plane, read and written on
//! a thread of its own; JavaScript pulls what arrived in packed batches and pushes outputs the
//! same way, so no value crosses N-API once per input.
use std::sync::Arc;

use berth_proto::v1::{
    self as pb, container_message, containers_client::ContainersClient, control_message, result::Outcome,
};
use napi::bindgen_prelude::{Buffer, Float64Array, Float64ArraySlice};
use napi::{Error, Result};
use napi_derive::napi;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;

use crate::codes::{AbortReasonCode, ContainerEvent, OutputKind};
use crate::mailbox::{Inbox, Mailbox};
use crate::Doorbell;

// Event tags (crates/berth-node/src/codes.rs, read by src/shared/codes.ts).
/// phase
const EV_HOOK: f64 = ContainerEvent::Hook as i32 as f64;
/// execId, method, n, (inputId, attempt, argsOffset, argsLen, fcOffset, fcLen) * n; an input's
/// call's trace follows its function call id in the bytes: trace-id (16), flags (1)
/// (src/run/container.ts formats its traceparent, with a span id of its own, only when asked).
/// `fcLen` -1: the input is of the previous input's call (same id, same trace), whose bytes are not repeated.
const EV_EXECUTE: f64 = ContainerEvent::Execute as i32 as f64;
/// inputId, attempt, reason (an `AbortReasonCode`)
const EV_ABORT: f64 = ContainerEvent::Abort as i32 as f64;
const EV_STOP: f64 = ContainerEvent::Stop as i32 as f64;
/// The control plane went away.
const EV_CLOSED: f64 = ContainerEvent::Closed as i32 as f64;
/// inputId, items
const EV_CREDIT: f64 = ContainerEvent::Credit as i32 as f64;

/// The call of the last input read: the control plane sends an input of the previous input's
/// call without its function call id, and of its trace with a zero trace-id (containers.proto
/// `ExecInput`).
#[derive(Default)]
struct LastCall {
    fc: String,
    high: u64,
    low: u64,
    flags: u32,
}

fn pack(inbox: &mut Inbox, last: &mut LastCall, msg: control_message::Msg) {
    match msg {
        control_message::Msg::RunHook(h) => inbox.events.extend_from_slice(&[EV_HOOK, f64::from(h.phase)]),
        control_message::Msg::ExecuteBatch(b) => {
            for e in b.executions {
                pack(inbox, last, control_message::Msg::Execute(e));
            }
        }
        control_message::Msg::Execute(e) => {
            inbox.events.extend_from_slice(&[EV_EXECUTE, e.exec_id as f64, f64::from(e.method), e.inputs.len() as f64]);
            for i in e.inputs {
                let args_at = inbox.bytes.len();
                inbox.bytes.extend_from_slice(&i.args);
                let new_trace = i.trace_id_high != 0 || i.trace_id_low != 0;
                // The call's id and trace travel to JavaScript when either changes; else the
                // input is the previous one's call (`fcLen` -1), and nothing is copied or decoded.
                let (fc_at, fc_len) = if i.function_call_id.is_empty() && !new_trace {
                    (0.0, -1.0)
                } else {
                    if !i.function_call_id.is_empty() {
                        last.fc = i.function_call_id;
                    }
                    if new_trace {
                        (last.high, last.low, last.flags) = (i.trace_id_high, i.trace_id_low, i.trace_flags);
                    }
                    let fc_at = inbox.bytes.len();
                    inbox.bytes.extend_from_slice(last.fc.as_bytes());
                    inbox.bytes.extend_from_slice(&last.high.to_be_bytes());
                    inbox.bytes.extend_from_slice(&last.low.to_be_bytes());
                    inbox.bytes.push(last.flags as u8);
                    (fc_at as f64, last.fc.len() as f64)
                };
                inbox.events.extend_from_slice(&[
                    i.input_id as f64,
                    f64::from(i.attempt),
                    args_at as f64,
                    i.args.len() as f64,
                    fc_at,
                    fc_len,
                ]);
            }
        }
        control_message::Msg::Abort(a) => {
            let reason = match a.reason.as_str() {
                "timeout" => AbortReasonCode::Timeout,
                "rescheduled" => AbortReasonCode::Rescheduled,
                _ => AbortReasonCode::Cancelled,
            };
            inbox.events.extend_from_slice(&[
                EV_ABORT,
                a.input_id as f64,
                f64::from(a.attempt),
                f64::from(reason as i32),
            ]);
        }
        control_message::Msg::Stop(_) => inbox.events.push(EV_STOP),
        control_message::Msg::StreamCredit(c) => {
            inbox.events.extend_from_slice(&[EV_CREDIT, c.input_id as f64, f64::from(c.items)])
        }
    }
}

/// What `drain()` hands JavaScript: numbers, and the bytes they point into.
#[napi(object)]
pub struct ContainerEvents {
    pub events: Float64Array,
    pub bytes: Buffer,
}

/// This process's link to the control plane.
#[napi]
pub struct BindingContainer {
    out: mpsc::UnboundedSender<pb::ContainerMessage>,
    shared: Arc<Mailbox>,
    /// The control plane's message cap: outputs are sent in messages no larger.
    max_message_bytes: usize,
}

#[napi]
impl BindingContainer {
    /// Connects and attaches as `containerId`, granting `slots` credits.
    #[napi(constructor)]
    pub fn new(
        endpoint: String,
        container_id: u32,
        token: String,
        slots: u32,
        max_message_bytes: f64,
        doorbell: Doorbell,
    ) -> Result<Self> {
        crate::log::install();
        let shared = Arc::new(Mailbox::new(doorbell));
        let (out, rx) = mpsc::unbounded_channel();
        let send = |m: container_message::Msg| out.send(pb::ContainerMessage { msg: Some(m) });
        let _ = send(container_message::Msg::Hello(pb::Hello { container_id, token }));
        let _ = send(container_message::Msg::Credit(pb::Credit { slots }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::from_reason(format!("berth container: cannot start its runtime: {e}")))?;
        let link = shared.clone();
        std::thread::Builder::new()
            .name("berth-container".into())
            .spawn(move || {
                rt.block_on(async move {
                    let attached = async {
                        // The control plane is this container's own server: it bounds each
                        // input by the message cap, but one @batched execution carries many.
                        let mut client = ContainersClient::connect(endpoint)
                            .await?
                            .max_decoding_message_size(usize::MAX)
                            .max_encoding_message_size(usize::MAX);
                        let inbound = client.attach(UnboundedReceiverStream::new(rx)).await?.into_inner();
                        Ok::<_, Box<dyn std::error::Error>>(inbound)
                    };
                    match attached.await {
                        Ok(mut inbound) => {
                            let mut last = LastCall::default();
                            while let Some(Ok(msg)) = inbound.next().await {
                                if let Some(m) = msg.msg {
                                    link.push(|inbox| pack(inbox, &mut last, m));
                                }
                            }
                        }
                        Err(e) => tracing::error!("berth container {container_id}: cannot attach: {e}"),
                    }
                    link.push(|inbox| inbox.events.push(EV_CLOSED));
                });
            })
            .map_err(|e| Error::from_reason(format!("berth container: cannot start its thread: {e}")))?;
        Ok(Self { out, shared, max_message_bytes: max_message_bytes as usize })
    }

    /// Everything that arrived since the last call; `null` when nothing did.
    #[napi]
    pub fn drain(&self) -> Option<ContainerEvents> {
        self.shared
            .drain()
            .map(|(events, bytes)| ContainerEvents { events: Float64Array::new(events), bytes: bytes.into() })
    }

    /// This container got SIGTERM (or, `interrupted`, SIGINT): ask the control plane to drain
    /// and stop it (after sending its running inputs elsewhere when interrupted).
    #[napi]
    pub fn leave(&self, interrupted: bool) {
        let msg = container_message::Msg::Draining(pb::Draining { interrupted });
        let _ = self.out.send(pb::ContainerMessage { msg: Some(msg) });
    }

    #[napi]
    pub fn hook_done(
        &self,
        phase: i32,
        ok: bool,
        error_name: Option<String>,
        error_message: Option<String>,
        error_stack: Option<String>,
    ) {
        let error = error_name.map(|name| pb::Error {
            name,
            message: error_message.unwrap_or_default(),
            stack: error_stack.unwrap_or_default(),
        });
        let _ = self.out.send(pb::ContainerMessage {
            msg: Some(container_message::Msg::HookDone(pb::HookDone { phase, ok, error })),
        });
    }

    /// Outputs of finished executions, packed: `meta` is `[execId, retryable, n, (kind, offset, len) * n] * m`
    /// over `bytes`; kind an `OutputKind`: a CBOR value, or an error as UTF-8 `name\0message\0stack`.
    #[napi]
    pub fn outputs(&self, meta: Float64ArraySlice, bytes: Buffer) {
        let mut i = 0;
        let m = &*meta;
        let mut outputs = Vec::new();
        while i + 3 <= m.len() {
            let (exec_id, retryable, n) = (m[i] as u64, m[i + 1] != 0.0, m[i + 2] as usize);
            i += 3;
            let mut results = Vec::with_capacity(n);
            for _ in 0..n {
                if i + 3 > m.len() {
                    break;
                }
                let (kind, at, len) = (m[i], m[i + 1] as usize, m[i + 2] as usize);
                i += 3;
                let slice = bytes.get(at..at + len).unwrap_or_default();
                let outcome = if kind == f64::from(OutputKind::Value as i32) {
                    Outcome::Value(slice.to_vec())
                } else {
                    let text = String::from_utf8_lossy(slice);
                    let mut parts = text.splitn(3, '\0');
                    Outcome::Error(pb::Error {
                        name: parts.next().unwrap_or("Error").to_string(),
                        message: parts.next().unwrap_or_default().to_string(),
                        stack: parts.next().unwrap_or_default().to_string(),
                    })
                };
                results.push(pb::Result { outcome: Some(outcome) });
            }
            outputs.push(pb::Output { exec_id, results, retryable_failure: retryable });
        }
        // Everything that finished together leaves in as few messages as the cap allows (each
        // result is at most the cap: JavaScript refuses larger ones).
        let mut message = Vec::new();
        let mut size = 0usize;
        for o in outputs {
            let bytes = o.encoded_len();
            if !message.is_empty() && size + bytes > self.max_message_bytes {
                self.send_outputs(std::mem::take(&mut message));
                size = 0;
            }
            size += bytes;
            message.push(o);
        }
        self.send_outputs(message);
    }

    /// Values generator inputs yielded, packed: `meta` is `[inputId, attempt, offset, len] * n`
    /// over `bytes` (CBOR each), in the order yielded. Sent before any output pushed after them.
    #[napi]
    pub fn items(&self, meta: Float64ArraySlice, bytes: Buffer) {
        let mut current: Option<pb::Items> = None;
        let mut size = 0usize;
        for c in meta.chunks_exact(4) {
            let (input_id, attempt) = (c[0] as u64, c[1] as u32);
            let value = bytes.get(c[2] as usize..(c[2] + c[3]) as usize).unwrap_or_default().to_vec();
            let same = current.as_ref().is_some_and(|m| m.input_id == input_id && m.attempt == attempt);
            // One message per run of one input's items, within the message cap.
            if !same || size + value.len() > self.max_message_bytes {
                if let Some(m) = current.take() {
                    self.send_items(m);
                }
                size = 0;
            }
            size += value.len();
            current.get_or_insert_with(|| pb::Items { input_id, attempt, values: Vec::new() }).values.push(value);
        }
        if let Some(m) = current {
            self.send_items(m);
        }
    }

    /// Web app member `method`'s server accepts connections on 127.0.0.1:`port` (a
    /// `@webServer`'s, or the one berth starts for a `@nodeApp`), and on the abstract Unix
    /// socket `socket` when there is one: the control plane sends that member's HTTP requests
    /// to it directly. Sent after @enter started it, before its HookDone.
    #[napi]
    pub fn app_server(&self, method: u32, port: u32, socket: Option<String>) {
        let msg = container_message::Msg::AppServer(pb::AppServer { method, port, socket: socket.unwrap_or_default() });
        let _ = self.out.send(pb::ContainerMessage { msg: Some(msg) });
    }

    /// This container's event loop is alive (a timer fired): the control plane replaces a
    /// container that stops saying so while an input of it is past its timeout.
    #[napi]
    pub fn heartbeat(&self) {
        let _ = self.out.send(pb::ContainerMessage { msg: Some(container_message::Msg::Heartbeat(pb::Heartbeat {})) });
    }
}

impl BindingContainer {
    fn send_items(&self, items: pb::Items) {
        let _ = self.out.send(pb::ContainerMessage { msg: Some(container_message::Msg::Items(items)) });
    }

    fn send_outputs(&self, mut outputs: Vec<pb::Output>) {
        let msg = match outputs.len() {
            0 => return,
            1 => container_message::Msg::Output(outputs.pop().unwrap_or_default()),
            _ => container_message::Msg::OutputBatch(pb::OutputBatch { outputs }),
        };
        let _ = self.out.send(pb::ContainerMessage { msg: Some(msg) });
    }
}
