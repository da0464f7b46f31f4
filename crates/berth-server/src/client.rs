//! A caller of `berth.v1.Functions`: over gRPC to a control plane anywhere, or, for the
//! process that runs the control plane itself (`app.run({ containers: 'process' })`,
//! `berth run`), straight into it ([`ControlPlane::client`](crate::ControlPlane::client)).
//!
//! In process, requests skip protobuf, HTTP/2 and the loopback socket, but not the handlers:
//! they call the ones gRPC requests reach, so they are checked and refused with the same
//! statuses and messages, and a Map call is read by the same task with the same window. What
//! only the transport did is done here: the message size cap (tonic's decoder), and the
//! answer once the control plane has stopped (a refused connection).
use std::sync::Weak;

use berth_proto::trace::TraceContext;
use berth_proto::v1::{self as pb, functions_client::FunctionsClient, functions_server::Functions, map_request};
use prost::Message as _;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status, Streaming};

use crate::functions::{FunctionsSvc, StreamItems, MAP_CALL_ID_HEADER};
use crate::map::MapResponses;
use crate::plane::Shared;

/// A handle on one control plane; clones share its connection.
#[derive(Clone)]
pub struct Client(Transport);

// One per client (cloned with it, not per message): the gRPC variant's size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Transport {
    Grpc { grpc: FunctionsClient<Channel>, channel: Channel, auth: Option<MetadataValue<Ascii>> },
    InProcess(InProcess),
}

/// The control plane in this process. Weak: a client outliving its control plane must not
/// keep its registry, state and spawner alive.
#[derive(Clone)]
pub(crate) struct InProcess {
    pub shared: Weak<Shared>,
    /// False once the control plane takes no more calls; closed once it is gone.
    pub serving: watch::Receiver<bool>,
    pub max_message_bytes: usize,
    /// The control plane's runtime.
    pub runtime: tokio::runtime::Handle,
}

/// Why [`Client::grpc`] cannot make a client.
#[derive(Debug)]
pub enum ConnectError {
    /// Not a URL tonic can connect to; the reason.
    NotAUrl(String),
    /// A token must be ASCII to go in the `authorization` header.
    TokenNotAscii,
}

impl Client {
    /// A client of the control plane at `server` (e.g. `http://127.0.0.1:7450`), connecting at
    /// the first call; with `token`, each request carries `authorization: Bearer <token>`.
    /// Call it within a tokio runtime: the channel's worker is spawned on it.
    pub fn grpc(server: &str, token: Option<&str>) -> Result<Self, ConnectError> {
        let endpoint = Endpoint::from_shared(server.to_string()).map_err(|e| ConnectError::NotAUrl(e.to_string()))?;
        let auth = match token {
            Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| ConnectError::TokenNotAscii)?),
            None => None,
        };
        let channel = endpoint.connect_lazy();
        let grpc = FunctionsClient::new(channel.clone()).max_decoding_message_size(usize::MAX);
        Ok(Self(Transport::Grpc { grpc, channel, auth }))
    }

    pub(crate) fn in_process(plane: InProcess) -> Self {
        Self(Transport::InProcess(plane))
    }

    /// Whether calls go straight into a control plane in this process.
    pub fn is_in_process(&self) -> bool {
        matches!(self.0, Transport::InProcess(_))
    }

    /// One call. `trace`: the caller's trace context, sent as `traceparent` (README "Tracing");
    /// without one the control plane starts a trace.
    pub async fn invoke(
        &self,
        function: pb::FunctionRef,
        args: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> Result<pb::InvokeResponse, Status> {
        let req = traced(pb::InvokeRequest { function: Some(function), args }, trace);
        match &self.0 {
            Transport::Grpc { grpc, auth, .. } => Ok(grpc.clone().invoke(authed(req, auth)).await?.into_inner()),
            Transport::InProcess(p) => p.call(req, |svc, req| async move { svc.invoke(req).await }).await,
        }
    }

    pub async fn spawn(
        &self,
        function: pb::FunctionRef,
        args: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> Result<pb::SpawnResponse, Status> {
        let req = traced(pb::InvokeRequest { function: Some(function), args }, trace);
        match &self.0 {
            Transport::Grpc { grpc, auth, .. } => Ok(grpc.clone().spawn(authed(req, auth)).await?.into_inner()),
            Transport::InProcess(p) => p.call(req, |svc, req| async move { svc.spawn(req).await }).await,
        }
    }

    pub async fn get_result(&self, function_call_id: String, timeout: f64) -> Result<pb::GetResultResponse, Status> {
        let req = Request::new(pb::GetResultRequest { function_call_id, timeout });
        match &self.0 {
            Transport::Grpc { grpc, auth, .. } => Ok(grpc.clone().get_result(authed(req, auth)).await?.into_inner()),
            Transport::InProcess(p) => p.call(req, |svc, req| async move { svc.get_result(req).await }).await,
        }
    }

    /// One operation on a named dict (proto/berth/v1/data.proto `Dicts`).
    pub async fn dict(&self, req: pb::DictRequest) -> Result<pb::DictResponse, Status> {
        let req = Request::new(req);
        match &self.0 {
            Transport::Grpc { channel, auth, .. } => {
                let mut dicts = berth_proto::v1::dicts_client::DictsClient::new(channel.clone())
                    .max_decoding_message_size(usize::MAX);
                Ok(dicts.dict(authed(req, auth)).await?.into_inner())
            }
            Transport::InProcess(p) => {
                p.call(
                    req,
                    |svc, req| async move { svc.shared.dicts.apply(req.into_inner()).map(tonic::Response::new) },
                )
                .await
            }
        }
    }

    /// One operation on a named queue (proto/berth/v1/data.proto `Queues`). Over the network a
    /// get is leased, and acked once its answer is here (queues.rs): a caller that dies before
    /// the answer reaches it loses no item.
    pub async fn queue(&self, mut req: pb::QueueRequest) -> Result<pb::QueueResponse, Status> {
        match &self.0 {
            Transport::Grpc { channel, auth, .. } => {
                let mut queues = berth_proto::v1::queues_client::QueuesClient::new(channel.clone())
                    .max_decoding_message_size(usize::MAX);
                req.lease = req.op == pb::QueueOp::Get as i32;
                let res = queues.queue(authed(Request::new(req), auth)).await?.into_inner();
                if res.lease != 0 {
                    // Not waited for: the items are here; an ack that does not arrive returns
                    // them to the queue after the lease, as for a caller that died.
                    let ack =
                        pb::QueueRequest { op: pb::QueueOp::Ack as i32, acks: vec![res.lease], ..Default::default() };
                    let auth = auth.clone();
                    tokio::spawn(async move {
                        let _ = queues.queue(authed(Request::new(ack), &auth)).await;
                    });
                }
                Ok(res)
            }
            Transport::InProcess(p) => {
                p.call(Request::new(req), |svc, req| async move {
                    crate::queues::answer(&svc.shared, req.into_inner()).await.map(tonic::Response::new)
                })
                .await
            }
        }
    }

    pub async fn cancel(&self, function_call_id: String) -> Result<(), Status> {
        let req = Request::new(pb::CancelRequest { function_call_id });
        match &self.0 {
            Transport::Grpc { grpc, auth, .. } => grpc.clone().cancel(authed(req, auth)).await.map(drop),
            Transport::InProcess(p) => p.call(req, |svc, req| async move { svc.cancel(req).await }).await.map(drop),
        }
    }

    /// One call of a generator: its items as they come. Read them as far as the caller reads:
    /// the generator runs a small window ahead (README "API"); dropping the items before their
    /// end cancels the call.
    pub async fn invoke_stream(
        &self,
        function: pb::FunctionRef,
        args: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> Result<GenItems, Status> {
        let req = traced(pb::InvokeRequest { function: Some(function), args }, trace);
        match &self.0 {
            Transport::Grpc { grpc, auth, .. } => {
                Ok(GenItems::Grpc(grpc.clone().invoke_stream(authed(req, auth)).await?.into_inner()))
            }
            Transport::InProcess(p) => {
                let serving = p.serving.clone();
                let items = p.call(req, |svc, req| async move { svc.invoke_stream(req).await }).await?;
                Ok(GenItems::InProcess { items, serving })
            }
        }
    }

    /// A Map call of `function` over the inputs `inputs` brings, a batch at a time, until its
    /// sender is dropped. Dropping the results before their end cancels the inputs not
    /// finished.
    pub async fn map(
        &self,
        function: pb::FunctionRef,
        inputs: mpsc::UnboundedReceiver<Vec<pb::MapInput>>,
        trace: Option<TraceContext>,
    ) -> Result<MapResults, Status> {
        let requests = Requests { function: Some(function), inputs, buf: Vec::new().into_iter() };
        match &self.0 {
            Transport::Grpc { grpc, auth, .. } => {
                let response = grpc.clone().map(authed(traced(requests, trace), auth)).await?;
                let id = response.metadata().get(MAP_CALL_ID_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string);
                Ok(MapResults { id, results: Results::Grpc(response.into_inner()) })
            }
            Transport::InProcess(p) => {
                let cap = p.max_message_bytes;
                // What tonic's decoder does with a request message over the cap.
                let requests = requests.map(move |r| match r.encoded_len() {
                    len if len > cap => Err(Status::out_of_range(too_large(len, cap))),
                    _ => Ok(r),
                });
                let serving = p.serving.clone();
                let (responses, id) = p.run(|svc| async move { svc.open_map(requests, trace).await }).await?;
                Ok(MapResults { id: Some(id), results: Results::InProcess { responses, serving } })
            }
        }
    }
}

fn authed<T>(mut r: Request<T>, token: &Option<MetadataValue<Ascii>>) -> Request<T> {
    if let Some(t) = token {
        r.metadata_mut().insert("authorization", t.clone());
    }
    r
}

/// A request carrying `trace` as its `traceparent` metadata (read by the handlers, gRPC or in
/// process alike: functions.rs `caller_trace`).
fn traced<T>(message: T, trace: Option<TraceContext>) -> Request<T> {
    let mut r = Request::new(message);
    if let Some(t) = trace {
        let mut text = [0u8; berth_proto::trace::TRACEPARENT_LEN];
        t.write(&mut text);
        if let Ok(v) = MetadataValue::try_from(&text[..]) {
            r.metadata_mut().insert(crate::functions::TRACEPARENT, v);
        }
    }
    r
}

/// tonic's words for a message over the decoder's cap; the gRPC listener answers it
/// RESOURCE_EXHAUSTED (`server.rs`, oversized_is_resource_exhausted).
fn too_large(len: usize, cap: usize) -> String {
    format!("Error, decoded message length too large: found {len} bytes, the limit is: {cap} bytes")
}

/// What a caller gets once the control plane it calls in this process has stopped, as a
/// gRPC caller gets UNAVAILABLE from a server that is gone.
fn stopped() -> Status {
    Status::unavailable("the control plane in this process has stopped")
}

/// Resolves when the control plane is gone (its sender dropped).
async fn gone(mut serving: watch::Receiver<bool>) {
    while serving.changed().await.is_ok() {}
}

impl InProcess {
    /// A unary call: the request within the cap, then the handler.
    async fn call<M, F, Fut, T>(&self, req: Request<M>, handler: F) -> Result<T, Status>
    where
        M: prost::Message,
        F: FnOnce(FunctionsSvc, Request<M>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let len = req.get_ref().encoded_len();
        if len > self.max_message_bytes {
            return Err(Status::resource_exhausted(too_large(len, self.max_message_bytes)));
        }
        self.run(|svc| handler(svc, req)).await.map(tonic::Response::into_inner)
    }

    /// Runs `handler` on the control plane's runtime while it serves, as a gRPC request's
    /// handler runs there: the tasks it starts (a Map call's reader) work beside the caller's
    /// thread, not on it. A call under way when the control plane goes is answered as a broken
    /// connection would be; one whose caller goes away stops, as a reset stream's handler does.
    async fn run<F, Fut, T>(&self, handler: F) -> Result<T, Status>
    where
        F: FnOnce(FunctionsSvc) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        let shared = match self.shared.upgrade() {
            Some(shared) if *self.serving.borrow() => shared,
            _ => return Err(stopped()),
        };
        let mut task = AbortOnDrop(self.runtime.spawn(handler(FunctionsSvc { shared })));
        tokio::select! {
            biased;
            r = &mut task.0 => r.unwrap_or_else(|_| Err(stopped())),
            () = gone(self.serving.clone()) => Err(stopped()),
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A Map call's results as they finish: each input's by its index.
pub struct MapResults {
    id: Option<String>,
    results: Results,
}

enum Results {
    Grpc(Streaming<pb::MapResponse>),
    InProcess { responses: MapResponses, serving: watch::Receiver<bool> },
}

impl MapResults {
    /// The call's id, which `cancel` takes (None from a server that did not send it).
    pub fn function_call_id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The next result; `None` at the end, once every input is answered; an error status if
    /// the call failed (after the results of the inputs before the message it could not take).
    pub async fn message(&mut self) -> Result<Option<pb::MapResponse>, Status> {
        match &mut self.results {
            Results::Grpc(stream) => stream.message().await,
            Results::InProcess { responses, serving } => tokio::select! {
                biased;
                m = responses.next() => m.transpose(),
                () = gone(serving.clone()) => Err(stopped()),
            },
        }
    }
}

/// A generator call's items (`Client::invoke_stream`).
pub enum GenItems {
    Grpc(Streaming<pb::StreamItem>),
    InProcess { items: StreamItems, serving: watch::Receiver<bool> },
}

impl GenItems {
    /// The next item; `None` at the end. A failed generator's error is its last item.
    pub async fn message(&mut self) -> Result<Option<pb::StreamItem>, Status> {
        match self {
            GenItems::Grpc(stream) => stream.message().await,
            GenItems::InProcess { items, serving } => tokio::select! {
                biased;
                m = items.next() => m.transpose(),
                () = gone(serving.clone()) => Err(stopped()),
            },
        }
    }
}

/// A Map call's requests: the function, then the inputs of each batch the caller sends.
struct Requests {
    function: Option<pb::FunctionRef>,
    inputs: mpsc::UnboundedReceiver<Vec<pb::MapInput>>,
    buf: std::vec::IntoIter<pb::MapInput>,
}

impl Stream for Requests {
    type Item = pb::MapRequest;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if let Some(f) = self.function.take() {
            return Poll::Ready(Some(pb::MapRequest { item: Some(map_request::Item::Function(f)) }));
        }
        loop {
            if let Some(i) = self.buf.next() {
                return Poll::Ready(Some(pb::MapRequest { item: Some(map_request::Item::Input(i)) }));
            }
            match self.inputs.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.buf = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
