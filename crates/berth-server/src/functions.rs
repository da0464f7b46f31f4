//! `berth.v1.Functions` for callers: what a request names (resolved, its arguments checked),
//! Invoke, Spawn, GetResult and Cancel, and the not-found messages that name what exists.
//! Map's stream lives in `map.rs`.
use std::sync::Arc;
use std::time::Duration;

use berth_core::{failure, Command, InputId, PoolId, Submission};
use berth_proto::trace::TraceContext;
use berth_proto::v1::{self as pb, functions_server::Functions};
use berth_proto::values;
use tokio::sync::{mpsc, oneshot, Notify};
use tonic::{Request, Response, Status, Streaming};

use crate::catalog::Catalog;
use crate::map::MapResponses;
use crate::plane::{
    cancel_map, error, failed, queue_full, CallRef, CallSlot, FunctionDef, Input, Shared, State, Waiter,
};

pub(crate) fn bad(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// A name or id a caller sent, as echoed in an error: long ones are cut, so that an answer
/// (and its `grpc-message` header) stays small whatever the caller sent.
pub(crate) fn shown(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = 48;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// What a request named, resolved: the pool and method to submit to, and what its arguments
/// must look like.
pub(crate) struct Target {
    pub pool: PoolId,
    pub method: u32,
    arity: Option<crate::plane::Arity>,
    /// Its definition, for messages (`label`).
    def: Arc<FunctionDef>,
    /// A generator: InvokeStream only.
    gen: bool,
}

impl Target {
    /// `square`, `Embedder.embed`: made for a message only.
    fn label(&self) -> String {
        self.def.label(self.method)
    }

    /// Arguments must be what a container decodes (berth_proto::values) and as many as the
    /// method takes. `what` names them in the message, e.g. "args of input 3".
    pub fn check_args(&self, args: &[u8], what: &str) -> Result<(), Status> {
        let n = values::check_args(args)
            .map_err(|e| bad(format!("{what} are not a value berth can pass to {}: {e}", self.label())))?;
        match self.arity.and_then(|a| a.refuses(n)) {
            Some(takes) => Err(bad(format!("{} takes {takes}; {what} hold {n}", self.label()))),
            None => Ok(()),
        }
    }

    /// Invoke, Spawn, Map and HTTP calls wait for one result, which a generator has not.
    pub fn not_generator(&self, call: &str) -> Result<(), Status> {
        if !self.gen {
            return Ok(());
        }
        Err(bad(format!(
            "{} is a generator (async function*): {call} would have no single result. Call it with InvokeStream \
             (in TypeScript, .remoteGen(...args) and read the items with for await)",
            self.label()
        )))
    }

    /// A generator: its items stream (InvokeStream, or HTTP as NDJSON/SSE).
    pub fn is_generator(&self) -> bool {
        self.gen
    }

    /// InvokeStream streams a generator's items; anything else has one result.
    fn generator(&self) -> Result<(), Status> {
        if self.gen {
            return Ok(());
        }
        Err(bad(format!(
            "{} is not a generator: call it with Invoke (in TypeScript, .remote(...args)). InvokeStream is for \
             async function* functions and async * methods",
            self.label()
        )))
    }
}

#[derive(Clone)]
pub(crate) struct FunctionsSvc {
    pub(crate) shared: Arc<Shared>,
}

#[cfg(any(test, feature = "fuzzing"))]
impl FunctionsSvc {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// The response header that carries a Map call's function call id (what `Cancel` takes).
pub(crate) const MAP_CALL_ID_HEADER: &str = "berth-function-call-id";

impl FunctionsSvc {
    /// The pool and method index a request names, creating the pool for new parameters.
    /// NOT_FOUND names what exists; INVALID_ARGUMENT says what to fix.
    pub(crate) fn resolve(&self, f: Option<&pb::FunctionRef>) -> Result<Target, Status> {
        self.resolve_as(f, false)
    }

    /// `resolve` for a caller (`web` false), or for the web ingress (web.rs), the one caller
    /// that reaches a web app member: it is no call, so callers are told where it answers.
    pub(crate) fn resolve_as(&self, f: Option<&pb::FunctionRef>, web: bool) -> Result<Target, Status> {
        let f = f.ok_or_else(|| bad("missing `function`: name the app and function to call"))?;
        loop {
            let catalog = self.shared.catalog();
            let (index, def) =
                catalog.find(&f.app, &f.function).ok_or_else(|| unknown_function(&catalog, &f.app, &f.function))?;
            if let Some(target) = self.target(f, index, def, web)? {
                return Ok(target);
            }
            // Replaced since the catalog was read (a reload): the new definition takes it.
        }
    }

    fn target(
        &self,
        f: &pb::FunctionRef,
        index: usize,
        def: &Arc<FunctionDef>,
        web: bool,
    ) -> Result<Option<Target>, Status> {
        if let Some(what) = def.not_a_method(&f.method) {
            return Err(Status::not_found(what));
        }
        let method = if def.is_class {
            def.methods.iter().position(|m| *m == f.method).ok_or_else(|| {
                Status::not_found(format!(
                    "class '{}' has no method '{}'{}; its methods: {}",
                    def.name,
                    shown(&f.method),
                    did_you_mean(&f.method, &def.methods),
                    def.methods.join(", ")
                ))
            })? as u32
        } else {
            if !(f.method.is_empty() || f.method == def.name) {
                return Err(bad(format!("'{}' is a function, not a class: leave `method` empty", def.name)));
            }
            if !f.params.is_empty() {
                return Err(bad(format!("'{}' is a function: it takes no class parameters", def.name)));
            }
            0
        };
        if let Some((decorator, path)) = (!web).then(|| def.web_app(method)).flatten() {
            return Err(bad(format!(
                "{}.{} is a @{decorator}(): it answers the HTTP requests under {path} on the server's HTTP port, \
                 not calls; send them there",
                def.name, f.method
            )));
        }
        // Checked here, before any container starts; the pool is keyed by the full set.
        let params = crate::params::canonical(def, &f.params).map_err(bad)?;
        let arity = def.arity.get(method as usize).copied();
        let Some(pool) = self.shared.pool(index, &params) else { return Ok(None) };
        Ok(Some(Target { pool, method, arity, def: Arc::clone(def), gen: def.is_generator(method) }))
    }

    /// What is served now (it changes when an app is replaced: catalog.rs).
    pub(crate) fn registry(&self) -> Arc<Catalog> {
        self.shared.catalog()
    }

    /// One call, as Invoke makes it: submitted with its own function call id, awaited.
    /// `trace`: the caller's trace context, continued by the input (README "Tracing").
    pub(crate) async fn call(
        &self,
        pool: PoolId,
        method: u32,
        args: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> (pb::Result, String) {
        let fc = self.new_call_id();
        let (tx, rx) = oneshot::channel();
        self.submit(pool, method, args, fc.clone(), Waiter::Call(tx), trace);
        let result = rx.await.unwrap_or_else(|_| error("Error", "the control plane stopped before the result"));
        (result, fc)
    }

    fn submit(
        &self,
        pool: PoolId,
        method: u32,
        args: Vec<u8>,
        fc: String,
        waiter: Waiter,
        trace: Option<TraceContext>,
    ) {
        self.submit_many(pool, method, fc, vec![(args, waiter)], false, trace);
    }

    /// Many inputs, one lock and one command; returns the id of the last. The inputs of a
    /// cancelled Map call are answered `InputCancelledError` instead (and 0 returned).
    /// `waits`: past maxPendingInputs they wait for room instead of being refused (a Map
    /// call's: README "API", load shedding). `trace`: the caller's trace context, which the
    /// inputs continue; none starts a trace for the call (README "Tracing").
    pub(crate) fn submit_many(
        &self,
        pool: PoolId,
        method: u32,
        fc: String,
        inputs: Vec<(Vec<u8>, Waiter)>,
        waits: bool,
        trace: Option<TraceContext>,
    ) -> InputId {
        self.submit_driven(pool, method, fc, inputs, waits, false, trace)
    }

    /// As [`submit_many`](Self::submit_many); `now`: the scheduler's turn runs on this task
    /// (driver.rs), rather than on the turn task, which takes what waits from every caller at
    /// once (larger batches to containers: `.map()` and many calls in flight go faster so).
    #[allow(clippy::too_many_arguments)]
    fn submit_driven(
        &self,
        pool: PoolId,
        method: u32,
        fc: String,
        inputs: Vec<(Vec<u8>, Waiter)>,
        waits: bool,
        now: bool,
        trace: Option<TraceContext>,
    ) -> InputId {
        let mut subs = Vec::with_capacity(inputs.len());
        let mut st = self.shared.lock();
        if st.maps.get(&fc).is_some_and(|m| m.is_cancelled()) {
            drop(st);
            let label = self.label(pool, method);
            for (_, waiter) in inputs {
                waiter.send(failed(failure::cancelled(&label)));
            }
            return 0;
        }
        let inputs = match &self.shared.front {
            Some(front) => {
                match crate::broker::divert(&self.shared, front, &mut st, pool, method, &fc, inputs, trace) {
                    Ok(last) => return last,
                    Err(inputs) => inputs,
                }
            }
            None => inputs,
        };
        // One trace per call: the caller's, or a new one.
        let call = Arc::new(CallRef { fc, trace: berth_proto::trace::continued(trace) });
        for (args, waiter) in inputs {
            st.next_input += 1;
            let input = st.next_input;
            st.inputs.insert(input, Input { args, call: Arc::clone(&call), waiter, pool, method });
            subs.push(Submission { input, pool, method, waits });
        }
        let last = subs.last().map_or(0, |s| s.input);
        // A spawned call's slot learns its input before anything can cancel or answer it.
        if let Some(slot) = st.calls.get_mut(&call.fc) {
            slot.input = last;
        }
        // Sent under the lock, so a Cancel of these inputs always follows their submission.
        if now {
            self.shared.commands.queue(Command::Submit(subs));
            drop(st);
            self.shared.drive();
        } else {
            let _ = self.shared.commands.send(Command::Submit(subs));
        }
        last
    }

    /// One generator call: its items as they come, and its end; and its function call id.
    pub(crate) fn open_stream(
        &self,
        pool: PoolId,
        method: u32,
        args: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> (StreamItems, String) {
        self.open(pool, method, args, Waiter::Stream, trace)
    }

    /// One web endpoint request (web.rs): a stream of the items of a streamed Response, or of
    /// its result alone.
    pub(crate) fn open_web(
        &self,
        pool: PoolId,
        method: u32,
        args: Vec<u8>,
        trace: Option<TraceContext>,
    ) -> (StreamItems, String) {
        self.open(pool, method, args, Waiter::Web, trace)
    }

    /// One request for a web app with a server of its own (web.rs, proxy.rs): an input whose
    /// execution is the exchange with that server; what its handler waits on, and its call id.
    pub(crate) fn open_proxied(
        &self,
        pool: PoolId,
        method: u32,
        request: Box<crate::proxy::Outgoing>,
        trace: Option<TraceContext>,
    ) -> (crate::proxy::Proxied, String) {
        let fc = self.new_call_id();
        let (waiter, proxied) = crate::proxy::waiter(request);
        // Its turn here: the scheduler's assignment comes back to this task at once (proxy.rs).
        let input = self.submit_driven(pool, method, fc.clone(), vec![(Vec::new(), waiter)], false, true, trace);
        (proxied(self.shared.clone(), input), fc)
    }

    fn open(
        &self,
        pool: PoolId,
        method: u32,
        args: Vec<u8>,
        waiter: fn(mpsc::UnboundedSender<Result<pb::StreamItem, Status>>) -> Waiter,
        trace: Option<TraceContext>,
    ) -> (StreamItems, String) {
        let (tx, rx) = mpsc::unbounded_channel();
        let fc = self.new_call_id();
        let input = self.submit_many(pool, method, fc.clone(), vec![(args, waiter(tx))], false, trace);
        (StreamItems { rx, shared: self.shared.clone(), input, taken: 0, ended: false, first: None }, fc)
    }

    /// How messages name what `pool` serves at `method` (crates/berth-core/src/failure.rs).
    fn label(&self, pool: PoolId, method: u32) -> String {
        let def = self.shared.lock().pools.get(&pool).map(|p| p.def);
        def.and_then(|d| self.shared.def(d)).map_or_else(|| "a function".to_owned(), |d| d.label(method))
    }

    /// The status a caller gets for a request message the server could not read: tonic's
    /// OUT_OF_RANGE for a message over the cap becomes RESOURCE_EXHAUSTED, naming the cap.
    pub(crate) fn inbound_status(&self, status: Status) -> Status {
        if status.code() != tonic::Code::OutOfRange {
            return status;
        }
        Status::resource_exhausted(format!(
            "a Map message is over this server's message size cap of {} bytes ({}): send smaller inputs, \
             or start the server with a larger max_message_bytes",
            self.shared.max_message_bytes,
            status.message()
        ))
    }

    pub(crate) fn new_call_id(&self) -> String {
        let n = {
            let mut st = self.shared.lock();
            st.next_call += 1;
            st.next_call
        };
        match &self.shared.front {
            // Unique across fronts: another front reads a spawned call's result by its id.
            Some(front) => front.call_id(n),
            None => format!("fc-{n}"),
        }
    }
}

#[tonic::async_trait]
impl Functions for FunctionsSvc {
    async fn invoke(&self, req: Request<pb::InvokeRequest>) -> Result<Response<pb::InvokeResponse>, Status> {
        let trace = caller_trace(req.metadata());
        let req = req.into_inner();
        let target = self.resolve(req.function.as_ref())?;
        target.not_generator("Invoke")?;
        target.check_args(&req.args, "args")?;
        let (result, fc) = self.call(target.pool, target.method, req.args, trace).await;
        if let Some(message) = queue_full(&result) {
            return Err(Status::resource_exhausted(message));
        }
        Ok(Response::new(pb::InvokeResponse { result: Some(result), function_call_id: fc }))
    }

    type MapStream = MapResponses;

    async fn map(&self, req: Request<Streaming<pb::MapRequest>>) -> Result<Response<Self::MapStream>, Status> {
        let trace = caller_trace(req.metadata());
        let (responses, fc) = self.open_map(req.into_inner(), trace).await?;
        let mut response = Response::new(responses);
        if let Ok(v) = fc.parse() {
            response.metadata_mut().insert(MAP_CALL_ID_HEADER, v);
        }
        Ok(response)
    }

    async fn spawn(&self, req: Request<pb::InvokeRequest>) -> Result<Response<pb::SpawnResponse>, Status> {
        let trace = caller_trace(req.metadata());
        let req = req.into_inner();
        let target = self.resolve(req.function.as_ref())?;
        target.not_generator("Spawn")?;
        target.check_args(&req.args, "args")?;
        let (pool, method) = (target.pool, target.method);
        let fc = self.new_call_id();
        // The slot exists before the input, so a fast result always finds it.
        let ready = Arc::new(Notify::new());
        self.shared.lock().calls.insert(fc.clone(), CallSlot { input: 0, result: None, ready });
        // The slot learns its input in `submit`, under the same lock.
        self.submit(pool, method, req.args, fc.clone(), Waiter::None, trace);
        Ok(Response::new(pb::SpawnResponse { function_call_id: fc }))
    }

    async fn get_result(&self, req: Request<pb::GetResultRequest>) -> Result<Response<pb::GetResultResponse>, Status> {
        let req = req.into_inner();
        let ready = {
            let st = self.shared.lock();
            match st.calls.get(&req.function_call_id) {
                Some(slot) => Some(slot.ready.clone()),
                None if self.shared.front.as_ref().is_some_and(|f| f.foreign_call(&req.function_call_id)) => None,
                None => return Err(gone_or_unknown(&st, &req.function_call_id, &self.shared)),
            }
        };
        // None: another front's spawned call (broker mode), whose result is in the app's
        // results bucket once a worker has it.
        let Some(ready) = ready else {
            let front = self.shared.front.as_ref().ok_or_else(|| not_a_call(&req.function_call_id))?;
            let wait = Duration::from_secs_f64(req.timeout.clamp(0.0, 86_400.0));
            let result = front
                .stored_result(&req.function_call_id, wait)
                .await
                .map_err(|e| Status::unavailable(format!("reading the result of {}: {e}", req.function_call_id)))?;
            return Ok(Response::new(pb::GetResultResponse { ready: result.is_some(), result }));
        };
        let notified = ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // A delivered result is forgotten: slots must not pile up on a long-running server.
        let take = |shared: &Shared| {
            let mut st = shared.lock();
            let ready = st.calls.get(&req.function_call_id).is_some_and(|s| s.result.is_some());
            if ready {
                st.calls.remove(&req.function_call_id).and_then(|s| s.result)
            } else {
                None
            }
        };
        let mut result = take(&self.shared);
        if result.is_none() && req.timeout > 0.0 {
            let wait = Duration::from_secs_f64(req.timeout.min(86_400.0));
            let _ = tokio::time::timeout(wait, notified).await;
            result = take(&self.shared);
        }
        Ok(Response::new(pb::GetResultResponse { ready: result.is_some(), result }))
    }

    type InvokeStreamStream = StreamItems;

    async fn invoke_stream(&self, req: Request<pb::InvokeRequest>) -> Result<Response<StreamItems>, Status> {
        let trace = caller_trace(req.metadata());
        let req = req.into_inner();
        let target = self.resolve(req.function.as_ref())?;
        target.generator()?;
        target.check_args(&req.args, "args")?;
        let mut items = self.open_stream(target.pool, target.method, req.args, trace).0;
        // Refused past maxPendingInputs: a status, as Invoke answers, not a stream whose one
        // item is the error (the response waits for the first event to know).
        if let Some(message) = items.refused().await {
            return Err(Status::resource_exhausted(message));
        }
        Ok(Response::new(items))
    }

    /// A spawned call's input, or every input of a Map call not answered yet.
    async fn cancel(&self, req: Request<pb::CancelRequest>) -> Result<Response<pb::CancelResponse>, Status> {
        let fc = req.into_inner().function_call_id;
        let st = self.shared.lock();
        if let Some(call) = st.maps.get(&fc).cloned() {
            drop(st);
            cancel_map(&self.shared, &fc, &call);
            return Ok(Response::new(pb::CancelResponse {}));
        }
        if let Some(front) = &self.shared.front {
            // Broker mode: the workers hold the call's inputs; this front's call or another's.
            if st.calls.contains_key(&fc) || front.foreign_call(&fc) {
                front.cancel(&fc);
                return Ok(Response::new(pb::CancelResponse {}));
            }
        }
        let Some(input) = st.calls.get(&fc).map(|s| s.input) else {
            // A call of this server whose result was delivered (a get() that just returned) or
            // has expired: it is over, and there is nothing to cancel.
            if issued(&st, &fc, &self.shared) {
                return Ok(Response::new(pb::CancelResponse {}));
            }
            return Err(not_a_call(&fc));
        };
        // Under the lock: after the input's submission.
        let _ = self.shared.commands.send(Command::Cancel(vec![input]));
        Ok(Response::new(pb::CancelResponse {}))
    }
}

/// The header (HTTP) and metadata key (gRPC) of a caller's W3C trace context.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// A caller's `traceparent`, gRPC metadata or HTTP headers alike; one that does not parse is
/// none (the call starts a trace: README "Tracing").
pub(crate) fn caller_trace<H: TraceHeaders>(headers: &H) -> Option<TraceContext> {
    headers.traceparent().and_then(TraceContext::parse)
}

/// Where a `traceparent` comes from.
pub(crate) trait TraceHeaders {
    fn traceparent(&self) -> Option<&[u8]>;
}

impl TraceHeaders for tonic::metadata::MetadataMap {
    fn traceparent(&self) -> Option<&[u8]> {
        self.get(TRACEPARENT).map(|v| v.as_bytes())
    }
}

impl TraceHeaders for hyper::HeaderMap {
    fn traceparent(&self) -> Option<&[u8]> {
        self.get(TRACEPARENT).map(|v| v.as_bytes())
    }
}

/// The caller's stream takes this many items before the generator is given credit for them:
/// one StreamCredit message per few items, not per item.
const CREDIT_BATCH: u32 = 8;

/// A generator call's items, as InvokeStream answers them. Each item the caller's stream takes
/// gives the generator credit for one more (a caller that stops reading stops it, README
/// "API"); dropping the stream before its end (a reset, an in-process caller gone) cancels the
/// call.
pub struct StreamItems {
    rx: mpsc::UnboundedReceiver<Result<pb::StreamItem, Status>>,
    shared: Arc<Shared>,
    input: InputId,
    taken: u32,
    ended: bool,
    /// The first event, read by [`StreamItems::refused`] and not yet taken.
    first: Option<Option<Result<pb::StreamItem, Status>>>,
}

impl StreamItems {
    /// Waits for the call's first event: a call refused at admission (its queue held
    /// maxPendingInputs) ends there, with the refusal's message; any other event stays, to be
    /// read first.
    pub(crate) async fn refused(&mut self) -> Option<String> {
        let first = self.rx.recv().await;
        if let Some(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Error(e)) })) = &first {
            if e.name == failure::QUEUE_FULL {
                // Never queued: nothing to cancel.
                self.ended = true;
                return Some(e.message.clone());
            }
        }
        self.first = Some(first);
        None
    }

    /// An event as the caller's stream takes it: a value gives credit, once per CREDIT_BATCH.
    fn took(&mut self, event: Option<Result<pb::StreamItem, Status>>) -> Option<Result<pb::StreamItem, Status>> {
        match &event {
            Some(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Value(_)) })) => {
                self.taken += 1;
                if self.taken >= CREDIT_BATCH {
                    grant(&self.shared, self.input, self.taken);
                    self.taken = 0;
                }
            }
            Some(_) => {}
            None => self.ended = true,
        }
        event
    }
}

impl tokio_stream::Stream for StreamItems {
    type Item = Result<pb::StreamItem, Status>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(this.took(first));
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(event) => Poll::Ready(this.took(event)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for StreamItems {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let st = self.shared.lock();
        if st.inputs.contains_key(&self.input) {
            // Under the lock: after the input's submission.
            let _ = self.shared.commands.send(Command::Cancel(vec![self.input]));
        } else if let Some(front) = &self.shared.front {
            // Broker mode: the stream input runs on a worker; its call is cancelled there.
            drop(st);
            front.abandon(self.input);
        }
    }
}

/// Credit for `n` more items to the container running generator input `input`. Sent at once,
/// not queued behind executions waiting for a slot: the generator holds its slot until it ends.
pub(crate) fn grant(shared: &Shared, input: InputId, n: u32) {
    let st = shared.lock();
    let Some(cid) = st.running.get(&input) else {
        drop(st);
        // Broker mode: a front's stream input runs on a worker, which hears it there.
        if let Some(front) = &shared.front {
            front.credit(input, n);
        }
        return;
    };
    if let Some(tx) = st.links.get(cid).and_then(|l| l.tx.as_ref()) {
        let credit = pb::StreamCredit { input_id: input, items: n };
        let _ = tx.send(Ok(pb::ControlMessage { msg: Some(pb::control_message::Msg::StreamCredit(credit)) }));
    }
}

/// Whether this server issued call id `fc`.
fn issued(st: &State, fc: &str, shared: &Shared) -> bool {
    let number = match &shared.front {
        Some(front) => front.own_call(fc),
        None => fc.strip_prefix("fc-").and_then(|n| n.parse::<u64>().ok()),
    };
    number.is_some_and(|n| n >= 1 && n <= st.next_call)
}

/// A call id GetResult does not find: one this server issued (its result was delivered, or
/// expired), or none it knows.
fn gone_or_unknown(st: &State, fc: &str, shared: &Shared) -> Status {
    let ttl = shared.result_ttl;
    if !issued(st, fc, shared) {
        return not_a_call(fc);
    }
    Status::not_found(format!(
        "the result of {fc} is no longer kept: a spawned call's result is delivered once, and kept for {} s after it \
         finishes (berth serve --result-ttl); collect it sooner",
        ttl.as_secs()
    ))
}

fn not_a_call(fc: &str) -> Status {
    let fc = shown(fc);
    Status::not_found(format!(
        "no spawned call or open Map call '{fc}' on this server (Spawn returns the ids GetResult and Cancel \
         take; Map sends its id in the `{MAP_CALL_ID_HEADER}` response header)"
    ))
}

/// NOT_FOUND for a function or class the registry does not have: what the app has, or, for
/// an app not served here, the apps that are (README "CLI": an unknown name is answered naming
/// what exists).
fn unknown_function(reg: &crate::catalog::Catalog, app: &str, function: &str) -> Status {
    let known: Vec<String> = reg.functions.iter().filter(|d| d.app == app).map(|d| d.name.clone()).collect();
    if known.is_empty() {
        return Status::not_found(unknown_app(reg, app));
    }
    Status::not_found(format!(
        "app '{}' has no function or class '{}'{}; it has: {}",
        shown(app),
        shown(function),
        did_you_mean(function, &known),
        known.join(", ")
    ))
}

/// `no app named 'x' is served here`, with the apps that are (and the one meant, if close).
pub(crate) fn unknown_app(reg: &crate::catalog::Catalog, app: &str) -> String {
    if reg.stopped.iter().any(|a| a == app) {
        return format!(
            "app '{}' was stopped (berth app stop) and takes no more calls: restart berth serve (or save its file, \
             which reloads it) to serve it again",
            shown(app)
        );
    }
    let mut apps: Vec<String> = Vec::new();
    for d in &reg.functions {
        if !apps.contains(&d.app) {
            apps.push(d.app.clone());
        }
    }
    if apps.is_empty() {
        return format!("no app named '{}' is served here: this server serves no app", shown(app));
    }
    format!("no app named '{}' is served here{}; served: {}", shown(app), did_you_mean(app, &apps), apps.join(", "))
}

/// ` (perhaps you mean 'square')` when one candidate is plausibly what `name` meant
/// (`params::closest`), else empty. No `?`: tonic sends it in `grpc-message` as `%3F`, which
/// @grpc/grpc-js (decodeURI) leaves as is.
fn did_you_mean(name: &str, candidates: &[String]) -> String {
    crate::params::closest(name, candidates).map_or_else(String::new, |c| format!(" (perhaps you mean '{c}')"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn not_found_suggests_what_was_meant() {
        let names = |xs: &[&str]| xs.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let apps = names(&["tinyml", "embeddings"]);
        assert_eq!(crate::params::closest("tinyml2", &apps), Some("tinyml"), "a prefix");
        assert_eq!(crate::params::closest("embedings", &apps), Some("embeddings"), "a typo");
        assert_eq!(crate::params::closest("Embeddings", &apps), Some("embeddings"), "case");
        assert_eq!(crate::params::closest("billing", &apps), None, "nothing close");
        assert_eq!(crate::params::closest(&"x".repeat(10_000), &apps), None);
        assert_eq!(super::did_you_mean("sqare", &names(&["square", "cube"])), " (perhaps you mean 'square')");
        assert_eq!(super::did_you_mean("zzz", &names(&["square"])), "");
    }
}
