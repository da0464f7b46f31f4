//! A caller of a served app (`Function.fromName`, `Cls.fromName`, and the handles of an app
//! run with process containers): requests are queued with a synchronous call and run by
//! berth_server's client on a thread of its own, over gRPC or, for the control plane in this
//! process, directly; their results come back to JavaScript in packed batches behind one weak
//! doorbell, as everywhere else in this binding.
use std::sync::{Arc, Mutex};

use berth_proto::v1::{self as pb, result::Outcome};
use berth_server::{Client, ConnectError};
use napi::bindgen_prelude::{Buffer, Float64Array, Float64ArraySlice};
use napi::{Error, Result};
use napi_derive::napi;
use tokio::sync::{mpsc, oneshot};

use crate::codes::ClientEvent;
use crate::mailbox::Mailbox;
use crate::Doorbell;

// Result kinds (crates/berth-node/src/codes.rs, read by src/shared/codes.ts).
const K_VALUE: f64 = ClientEvent::Value as i32 as f64;
const K_ERROR: f64 = ClientEvent::Error as i32 as f64;
const K_STATUS: f64 = ClientEvent::Status as i32 as f64;
const K_TEXT: f64 = ClientEvent::Text as i32 as f64;
const K_PENDING: f64 = ClientEvent::Pending as i32 as f64;
const K_NONE: f64 = ClientEvent::None as i32 as f64;
const K_MAP_END: f64 = ClientEvent::MapEnd as i32 as f64;
const K_STREAM_END: f64 = ClientEvent::StreamEnd as i32 as f64;

/// The JavaScript side's hold on one generator call.
struct StreamLink {
    /// Items JavaScript may be sent before it reads more: one permit per item.
    credit: Arc<tokio::sync::Semaphore>,
    cancel: oneshot::Sender<()>,
}

/// The JavaScript side's hold on one Map stream.
struct MapLink {
    /// None once the caller has no more inputs.
    /// One send per `mapPush` batch: one wake of the sending task, not one per input.
    inputs: Option<mpsc::UnboundedSender<Vec<pb::MapInput>>>,
    cancel: oneshot::Sender<()>,
}

/// The client's mailbox: each event is `[id, kind, offset, len, index]` over the bytes.
struct Shared(Mailbox);

impl Shared {
    fn push(&self, id: f64, kind: f64, data: &[u8]) {
        self.push_at(id, kind, data, 0.0);
    }

    fn push_at(&self, id: f64, kind: f64, data: &[u8], index: f64) {
        self.0.push(|inbox| {
            let at = inbox.bytes.len() as f64;
            inbox.bytes.extend_from_slice(data);
            inbox.events.extend_from_slice(&[id, kind, at, data.len() as f64, index]);
        });
    }

    fn result(&self, id: f64, r: Option<pb::Result>) {
        self.result_at(id, r, 0.0);
    }

    fn result_at(&self, id: f64, r: Option<pb::Result>, index: f64) {
        match r.and_then(|r| r.outcome) {
            Some(Outcome::Value(v)) => self.push_at(id, K_VALUE, &v, index),
            Some(Outcome::Error(e)) => {
                self.push_at(id, K_ERROR, format!("{}\0{}\0{}", e.name, e.message, e.stack).as_bytes(), index)
            }
            None => self.push_at(id, K_ERROR, b"Error\0the server sent no result\0", index),
        }
    }

    fn status(&self, id: f64, s: &tonic::Status) {
        self.push(id, K_STATUS, format!("{}\0{}", s.code() as i32, s.message()).as_bytes());
    }
}

/// A request whose task was dropped before it answered (the control plane's runtime, which
/// runs an in-process client's requests, shut down under it): answered UNAVAILABLE, as a call
/// whose connection broke is, rather than left for JavaScript to wait on forever.
struct Unanswered(Option<(f64, Arc<Shared>)>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((id, out)) = self.0.take() {
            out.status(id, &tonic::Status::unavailable("the control plane in this process has stopped"));
        }
    }
}

#[napi(object)]
pub struct ClientEvents {
    pub events: Float64Array,
    pub bytes: Buffer,
}

#[napi]
pub struct BindingClient {
    /// The client thread's runtime, which runs each request as a task of its own.
    rt: tokio::runtime::Handle,
    client: Client,
    shared: Arc<Shared>,
    maps: Mutex<std::collections::HashMap<u64, MapLink>>,
    streams: Mutex<std::collections::HashMap<u64, StreamLink>>,
    /// Dropped with this object: the client thread then ends, and its requests with it.
    _stop: Option<oneshot::Sender<()>>,
}

fn function_ref(app: String, name: String, method: String, params: Buffer) -> pb::FunctionRef {
    pb::FunctionRef { app, function: name, method, params: params.to_vec() }
}

#[napi]
impl BindingClient {
    /// Connects lazily (at the first call) to `server`, e.g. `http://127.0.0.1:7450`.
    #[napi(constructor)]
    pub fn new(server: String, token: Option<String>, doorbell: Doorbell) -> Result<Self> {
        Self::start(doorbell, || {
            Client::grpc(&server, token.as_deref()).map_err(|e| match e {
                ConnectError::NotAUrl(e) => Error::from_reason(format!(
                    "berth: BERTH_SERVER '{server}' is not a URL like http://127.0.0.1:7450 ({e})"
                )),
                ConnectError::TokenNotAscii => Error::from_reason("berth: the token must be ASCII"),
            })
        })
    }

    /// A client of the control plane in this process (`BindingServer.client`): its requests
    /// run on the control plane's runtime, beside the handlers they call, instead of on a
    /// thread of their own that would wake for every result.
    pub(crate) fn in_process(client: Client, runtime: tokio::runtime::Handle, doorbell: Doorbell) -> Self {
        Self {
            rt: runtime,
            client,
            shared: Arc::new(Shared(Mailbox::new(doorbell))),
            maps: Mutex::new(std::collections::HashMap::new()),
            streams: Mutex::new(std::collections::HashMap::new()),
            _stop: None,
        }
    }

    /// Requests run on a thread of their own; `make` runs within its runtime.
    fn start(doorbell: Doorbell, make: impl FnOnce() -> Result<Client>) -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::from_reason(format!("berth: cannot start the client runtime: {e}")))?;
        let client = {
            let _in_runtime = rt.enter();
            make()?
        };
        let handle = rt.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("berth-client".into())
            .spawn(move || {
                rt.block_on(async move {
                    let _ = stopped.await;
                });
            })
            .map_err(|e| Error::from_reason(format!("berth: cannot start the client thread: {e}")))?;
        Ok(Self {
            rt: handle,
            client,
            shared: Arc::new(Shared(Mailbox::new(doorbell))),
            maps: Mutex::new(std::collections::HashMap::new()),
            streams: Mutex::new(std::collections::HashMap::new()),
            _stop: Some(stop),
        })
    }

    /// Runs request `id` as a task of its own; `f` gets the client and the mailbox.
    fn run<F, Fut>(&self, id: f64, f: F)
    where
        F: FnOnce(Client, Arc<Shared>) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let request = f(self.client.clone(), self.shared.clone());
        let unanswered = Unanswered(Some((id, self.shared.clone())));
        self.rt.spawn(async move {
            let mut unanswered = unanswered;
            request.await;
            unanswered.0 = None;
        });
    }

    /// Calls a function (`spawn` false: its result comes back) or spawns it (`spawn` true: its
    /// function call id comes back). `traceparent`: the calling input's W3C trace context, which
    /// the call continues (README "Tracing"); one that does not parse is ignored.
    // Flat arguments: an object would be built and read field by field on every call.
    #[allow(clippy::too_many_arguments)]
    #[napi]
    pub fn call(
        &self,
        id: f64,
        spawn: bool,
        app: String,
        name: String,
        method: String,
        params: Buffer,
        args: Buffer,
        traceparent: Option<String>,
    ) -> Result<()> {
        let (function, args) = (function_ref(app, name, method, params), args.to_vec());
        let trace = parse_trace(traceparent);
        self.run(id, move |client, out| async move {
            let answer = if spawn {
                client.spawn(function, args, trace).await.map(|r| out.push(id, K_TEXT, r.function_call_id.as_bytes()))
            } else {
                client.invoke(function, args, trace).await.map(|r| out.result(id, r.result))
            };
            if let Err(s) = answer {
                out.status(id, &s);
            }
        });
        Ok(())
    }

    #[napi]
    pub fn get_result(&self, id: f64, call: String, timeout: f64) -> Result<()> {
        self.run(id, |client, out| async move {
            match client.get_result(call, timeout).await {
                Ok(r) if r.ready => out.result(id, r.result),
                Ok(_) => out.push(id, K_PENDING, &[]),
                Err(s) => out.status(id, &s),
            }
        });
        Ok(())
    }

    /// One operation on a named dict (proto/berth/v1/data.proto): answered as one value, the
    /// CBOR array `[found, len, value or null, [[key, value], ...]]` (src/data/dict.ts reads it).
    /// `entries`: keys and values, alternating.
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn dict(
        &self,
        id: f64,
        name: String,
        create_if_missing: bool,
        op: i32,
        key: Option<Buffer>,
        value: Option<Buffer>,
        entries: Option<Vec<Buffer>>,
        skip_if_exists: bool,
    ) -> Result<()> {
        let entries = entries
            .unwrap_or_default()
            .chunks(2)
            .map(|kv| pb::DictEntry { key: kv[0].to_vec(), value: kv.get(1).map(|v| v.to_vec()).unwrap_or_default() })
            .collect();
        let req = pb::DictRequest {
            name,
            create_if_missing,
            op,
            key: key.map(|k| k.to_vec()).unwrap_or_default(),
            value: value.map(|v| v.to_vec()).unwrap_or_default(),
            entries,
            skip_if_exists,
        };
        self.run(id, |client, out| async move {
            match client.dict(req).await {
                Ok(r) => out.push(id, K_VALUE, &berth_proto::values::dict_answer(&r)),
                Err(s) => out.status(id, &s),
            }
        });
        Ok(())
    }

    /// One operation on a named queue (proto/berth/v1/data.proto): answered as one value, the
    /// CBOR array `[[item, ...], len, found]` (src/data/queue.ts reads it).
    #[napi]
    #[allow(clippy::too_many_arguments)]
    pub fn queue(
        &self,
        id: f64,
        name: String,
        create_if_missing: bool,
        op: i32,
        partition: String,
        values: Vec<Buffer>,
        max: u32,
        block: bool,
        timeout: f64,
        all_partitions: bool,
    ) -> Result<()> {
        let req = pb::QueueRequest {
            name,
            create_if_missing,
            op,
            partition,
            values: values.into_iter().map(|v| v.to_vec()).collect(),
            max,
            block,
            timeout,
            all_partitions,
            ..Default::default()
        };
        self.run(id, |client, out| async move {
            match client.queue(req).await {
                Ok(r) => out.push(id, K_VALUE, &berth_proto::values::queue_answer(&r)),
                Err(s) => out.status(id, &s),
            }
        });
        Ok(())
    }

    #[napi]
    pub fn cancel(&self, id: f64, call: String) -> Result<()> {
        self.run(id, |client, out| async move {
            match client.cancel(call).await {
                Ok(()) => out.push(id, K_NONE, &[]),
                Err(s) => out.status(id, &s),
            }
        });
        Ok(())
    }

    /// Opens a Map stream as request `id`: its results arrive as events of that id with their
    /// input's index, then one end event.
    #[napi]
    pub fn map_open(
        &self,
        id: f64,
        app: String,
        name: String,
        method: String,
        params: Buffer,
        traceparent: Option<String>,
    ) -> Result<()> {
        let trace = parse_trace(traceparent);
        let (tx, inputs) = mpsc::unbounded_channel();
        let (cancel_tx, cancel) = oneshot::channel();
        self.maps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id as u64, MapLink { inputs: Some(tx), cancel: cancel_tx });
        let function = function_ref(app, name, method, params);
        self.run(id, |client, out| async move {
            let mut stream = match client.map(function, inputs, trace).await {
                Ok(stream) => stream,
                Err(s) => return out.status(id, &s),
            };
            let mut cancel = Some(cancel);
            loop {
                let next = match cancel.as_mut() {
                    Some(c) => tokio::select! {
                        m = stream.message() => m,
                        fired = c => {
                            if fired.is_ok() {
                                // Dropping the stream ends the call: the server cancels what
                                // has not finished.
                                out.push(id, K_MAP_END, &[]);
                                break;
                            }
                            cancel = None;
                            continue;
                        }
                    },
                    None => stream.message().await,
                };
                match next {
                    Ok(Some(m)) => out.result_at(id, m.result, m.index as f64),
                    Ok(None) => {
                        out.push(id, K_MAP_END, &[]);
                        break;
                    }
                    Err(s) => {
                        out.status(id, &s);
                        break;
                    }
                }
            }
        });
        Ok(())
    }

    /// Inputs for Map stream `id`: `meta` is `[index, offset, len] * n` over `bytes` (CBOR args).
    #[napi]
    pub fn map_push(&self, id: f64, meta: Float64ArraySlice, bytes: Buffer) {
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = maps.get(&(id as u64)).and_then(|m| m.inputs.as_ref()) else { return };
        let batch = meta
            .chunks_exact(3)
            .map(|c| {
                let (at, len) = (c[1] as usize, c[2] as usize);
                let args = bytes.get(at..at + len).unwrap_or_default().to_vec();
                pb::MapInput { index: c[0] as u64, args }
            })
            .collect();
        let _ = tx.send(batch);
    }

    /// No more inputs for Map stream `id`.
    #[napi]
    pub fn map_close(&self, id: f64) {
        if let Some(m) = self.maps.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&(id as u64)) {
            m.inputs = None;
        }
    }

    /// The caller is done with Map stream `id`. With `cancel` (it stopped reading before the
    /// end: a `break`, a throw), the stream is reset and the server cancels every input of it
    /// not finished yet, instead of running them for nobody.
    #[napi]
    pub fn map_finish(&self, id: f64, cancel: bool) {
        let link = self.maps.lock().unwrap_or_else(|e| e.into_inner()).remove(&(id as u64));
        if let (Some(link), true) = (link, cancel) {
            let _ = link.cancel.send(());
        }
    }

    /// Calls generator `name` as request `id`: its items arrive as value events of that id, at
    /// most `window` before JavaScript reads more (`stream_more`), then a stream-end event, or
    /// an error (the generator's) or a status (the request's) event.
    // Flat arguments, as `call`'s.
    #[allow(clippy::too_many_arguments)]
    #[napi]
    pub fn stream_open(
        &self,
        id: f64,
        app: String,
        name: String,
        method: String,
        params: Buffer,
        args: Buffer,
        window: u32,
        traceparent: Option<String>,
    ) -> Result<()> {
        let trace = parse_trace(traceparent);
        let credit = Arc::new(tokio::sync::Semaphore::new(window as usize));
        let (cancel_tx, mut cancel) = oneshot::channel();
        self.streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id as u64, StreamLink { credit: credit.clone(), cancel: cancel_tx });
        let (function, args) = (function_ref(app, name, method, params), args.to_vec());
        self.run(id, move |client, out| async move {
            let mut items = match client.invoke_stream(function, args, trace).await {
                Ok(items) => items,
                Err(s) => return out.status(id, &s),
            };
            loop {
                // An item is read only when JavaScript has room for it: a reader that stops
                // stops this read, and so the server's stream and the generator. A cancel (the
                // reader left) drops the stream, which cancels the call.
                tokio::select! {
                    biased;
                    _ = &mut cancel => return,
                    permit = credit.acquire() => match permit {
                        Ok(p) => p.forget(),
                        Err(_) => return,
                    },
                }
                let next = tokio::select! {
                    biased;
                    _ = &mut cancel => return,
                    m = items.message() => m,
                };
                match next {
                    Ok(Some(pb::StreamItem { item: Some(pb::stream_item::Item::Value(v)) })) => {
                        out.push(id, K_VALUE, &v)
                    }
                    Ok(Some(pb::StreamItem { item: Some(pb::stream_item::Item::Error(e)) })) => {
                        out.result(id, Some(pb::Result { outcome: Some(Outcome::Error(e)) }));
                        return;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return out.push(id, K_STREAM_END, &[]),
                    Err(s) => return out.status(id, &s),
                }
            }
        });
        Ok(())
    }

    /// The reader of generator call `id` took `n` items: `n` more may come.
    #[napi]
    pub fn stream_more(&self, id: f64, n: u32) {
        if let Some(link) = self.streams.lock().unwrap_or_else(|e| e.into_inner()).get(&(id as u64)) {
            link.credit.add_permits(n as usize);
        }
    }

    /// JavaScript is done with generator call `id`; with `cancel` (the reader left before the
    /// end), the call is cancelled.
    #[napi]
    pub fn stream_close(&self, id: f64, cancel: bool) {
        let link = self.streams.lock().unwrap_or_else(|e| e.into_inner()).remove(&(id as u64));
        if let (Some(link), true) = (link, cancel) {
            let _ = link.cancel.send(());
        }
    }

    /// `[id, kind, offset, len, index] * n` over `bytes`; `null` when nothing arrived.
    #[napi]
    pub fn drain(&self) -> Option<ClientEvents> {
        self.shared
            .0
            .drain()
            .map(|(events, bytes)| ClientEvents { events: Float64Array::new(events), bytes: bytes.into() })
    }
}

/// The control plane's value contract for positional arguments (`berth_proto::values::check_args`):
/// the reason the bytes would be refused, or null when they pass. Private: for
/// `scripts/fuzz-values.ts`, which checks the contract against cbor-x.
#[napi]
pub fn check_args(bytes: Buffer) -> Option<String> {
    berth_proto::values::check_args(&bytes).err().map(|e| e.to_string())
}

/// A `traceparent` from JavaScript (the calling input's), parsed; none if it does not parse.
fn parse_trace(traceparent: Option<String>) -> Option<berth_proto::trace::TraceContext> {
    traceparent.and_then(|t| berth_proto::trace::TraceContext::parse(t.as_bytes()))
}
