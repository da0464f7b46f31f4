//! The HTTP/1.1 JSON ingress (`berth serve --http-port`): the same calls as gRPC `Invoke`,
//! with JSON in and out.
//!
//! | request                                   | answer                                        |
//! |-------------------------------------------|-----------------------------------------------|
//! | `GET /healthz`                            | 200 `ok` (no token needed)                    |
//! | `GET /metrics`                            | 200 Prometheus text (metrics.rs)              |
//! | `GET /dashboard`, `GET /dashboard/events` | the dashboard page, its SSE (dashboard.rs)    |
//! | `/_berth/...`                             | the CLI's admin routes (admin.rs)             |
//! | `GET /{app}`, `GET /`                      | 200 what the app (every app) serves, as JSON  |
//! | `POST /{app}/{function}`                  | 200 JSON result                               |
//! | `POST /{app}/{Class}/{method}`            | 200 JSON result                               |
//! | the same on a generator                   | 200 its items as NDJSON, or SSE (see below)   |
//! | the function threw, timed out, cancelled  | 500 `{"error":{"name","message","stack"}}`    |
//! | malformed JSON, wrong shape               | 400 `{"error":{"name":"InvalidArgument",..}}` |
//! | no token / wrong token (when configured)  | 401                                           |
//! | unknown app, function, class or method    | 404 naming what exists                        |
//! | another path                              | 404; another method on a route: 405           |
//! | body over `max_message_bytes`             | 413                                           |
//! | body silent for `body_timeout`, or slower than `min_body_rate` after it | 408, and the connection closes |
//!
//! The body is a JSON array of positional arguments, or `{"args": [...], "params": {...}}`
//! (params: a class's parameters); an empty body means no arguments. Arguments cross to the
//! container as a CBOR array and params as a CBOR map, exactly as a gRPC caller sends them.
//! Answers to calls carry the call's id in `x-berth-function-call-id`.
//!
//! A generator's items stream (README "API", Generators): `application/x-ndjson`, one JSON
//! value per line, or `text/event-stream` (one `data:` event per item) when `Accept` asks for
//! it. Each item is written as it comes; the body is polled only as the socket drains, so a
//! slow reader pauses the generator (its credit is given as the body takes items). A throw after
//! items ends the body with the error (`{"error":{..}}` as the last line, or an `event: error`);
//! a client that goes away drops the body, which cancels the call. The head waits for the first
//! item, so that a full queue is still 429 and a generator that fails before yielding anything
//! is 500 with the error, as for a function.
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use berth_proto::v1::{self as pb, result::Outcome};
use http_body_util::BodyExt;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::{json, Value as Json};
use tokio::sync::oneshot;
use tokio_stream::{Stream, StreamExt};

use self::json::{cbor_to_json, parse_body};
use crate::auth::token_rule;
use crate::catalog::Catalog;
use crate::conn::{Counters, Listener, RequestGuard};
use crate::functions::{FunctionsSvc, StreamItems};

pub(crate) mod admin;
pub(crate) mod json;
// Web endpoints live in src/web.rs (ARCHITECTURE.md), as a child of this module: they answer
// with this module's helpers and read bodies with its bounds.
#[path = "../web.rs"]
pub(crate) mod web;

/// A running HTTP ingress.
pub(crate) struct Ingress {
    pub local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

struct Ctx {
    svc: FunctionsSvc,
    token: Option<String>,
    body: BodyLimits,
    counters: Arc<Counters>,
    /// True once the ingress stops: answers that would stream on (the dashboard's) end.
    closing: tokio::sync::watch::Receiver<bool>,
    /// The web endpoints of the catalog they were built from (see [`Ctx::web`]).
    web: std::sync::Mutex<(Arc<Catalog>, Arc<web::Routes>)>,
}

impl Ctx {
    /// The web endpoints of what is served now: rebuilt once after an app is replaced.
    fn web(&self) -> Arc<web::Routes> {
        let catalog = self.svc.registry();
        let mut cached = self.web.lock().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&cached.0, &catalog) {
            let routes = Arc::new(web::Routes::new(&catalog));
            *cached = (catalog, routes);
        }
        Arc::clone(&cached.1)
    }
}

impl Ingress {
    pub fn start(
        local_addr: SocketAddr,
        svc: FunctionsSvc,
        token: Option<String>,
        body: BodyLimits,
        mut incoming: Listener,
        counters: Arc<Counters>,
    ) -> Self {
        let catalog = svc.registry();
        let web = std::sync::Mutex::new((Arc::clone(&catalog), Arc::new(web::Routes::new(&catalog))));
        let (close, closing) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(Ctx { svc, token, body, counters, closing, web });
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let graceful = GracefulShutdown::new();
            let mut http1 = hyper::server::conn::http1::Builder::new();
            // The connection's IO times the request heads (handshake_timeout): hyper's timer
            // would also close keep-alive connections waiting for their next request, which
            // is idle_timeout's to decide.
            http1.header_read_timeout(None);
            loop {
                let conn = tokio::select! {
                    _ = &mut stopped => break,
                    conn = incoming.accept() => conn,
                };
                let state = conn.state();
                let ctx = ctx.clone();
                let service = hyper::service::service_fn(move |req| {
                    let ctx = ctx.clone();
                    // Busy from the head until the answer is ready: the body and the call
                    // have deadlines of their own.
                    let open = state.request();
                    async move {
                        let mut res = handle(&ctx, req).await;
                        // A streaming answer stays open until its body ends: the connection
                        // is busy, not idle, while items a minute apart keep flowing (conn.rs).
                        res.body_mut().hold(open);
                        Ok::<_, Infallible>(res)
                    }
                });
                let conn = graceful.watch(http1.serve_connection(TokioIo::new(conn), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            // Stop accepting; requests in flight finish, idle connections close, and the
            // dashboard's streams end (they would keep their connections open for ever).
            drop(incoming);
            let _ = close.send(true);
            graceful.shutdown().await;
        });
        Self { local_addr, stop, task }
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// How much of a request body the ingress reads, and how slowly (ServeOptions
/// `max_message_bytes`, `body_timeout`, `min_body_rate`; see [`read_body`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    pub max: usize,
    pub timeout: Duration,
    pub min_rate: u32,
}

type Answer = Response<AnswerBody>;

/// An answer's body: all of it at once, or chunks written as they come.
pub(crate) struct AnswerBody(Inner);

/// The chunks of a streaming answer; each is written (and flushed) as it comes.
/// A chunk that is an error ends the answer short: hyper closes the connection without the
/// last chunk, so the client sees a truncated body, not a whole one.
pub(crate) type Chunks = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

enum Inner {
    Full(Option<Bytes>),
    /// A web app server's answer, relayed as it comes (proxy.rs); `open` as for `Stream`.
    Relay {
        relay: Box<crate::proxy::Relay>,
        open: Option<RequestGuard>,
    },
    /// `open`: the request's guard, held until the last chunk (see `hold`).
    Stream {
        chunks: Chunks,
        open: Option<RequestGuard>,
    },
}

impl AnswerBody {
    /// Keeps a streaming answer's request open until its body ends or is dropped; a whole
    /// answer lets it go now (its bytes are written at once).
    fn hold(&mut self, guard: RequestGuard) {
        if let Inner::Stream { open, .. } | Inner::Relay { open, .. } = &mut self.0 {
            *open = Some(guard);
        }
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.get_mut().0 {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream { chunks, open } => match chunks.as_mut().poll_next(cx) {
                Poll::Ready(Some(b)) => Poll::Ready(Some(b.map(Frame::data))),
                Poll::Ready(None) => {
                    *open = None;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
            Inner::Relay { relay, open } => match Pin::new(relay.as_mut()).poll_frame(cx) {
                Poll::Ready(None) => {
                    *open = None;
                    Poll::Ready(None)
                }
                other => other,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(b) => b.is_none(),
            Inner::Relay { relay, .. } => relay.is_end_stream(),
            Inner::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Stream { .. } => SizeHint::default(),
            Inner::Relay { relay, .. } => relay.size_hint(),
        }
    }
}

/// A web app server's answer (proxy.rs): its status and headers as it sent them, its body
/// relayed as it comes.
pub(crate) fn relayed(head: http::response::Parts, relay: crate::proxy::Relay) -> Answer {
    Response::from_parts(head, AnswerBody(Inner::Relay { relay: Box::new(relay), open: None }))
}

/// A streaming answer: `chunks` are written as they come (chunked transfer encoding), and
/// the connection counts as busy until the last one.
pub(crate) fn streaming(status: StatusCode, content_type: &'static str, chunks: Chunks) -> Answer {
    let mut res = Response::new(AnswerBody(Inner::Stream { chunks, open: None }));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn answer(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Answer {
    let mut res = Response::new(AnswerBody(Inner::Full(Some(Bytes::from(body)))));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    res
}

fn json_answer(status: StatusCode, body: &Json) -> Answer {
    answer(status, "application/json", serde_json::to_vec(body).unwrap_or_default())
}

/// Every failure that is not the function's own: `{"error": {"name", "message"}}`.
/// A request's body, read within the server's cap and `body_timeout` (web endpoints and the
/// RPC route alike), or the answer that refuses it: 413 over the cap (declared or sent), 408 for
/// a body that stalls (and the connection closed: the rest may still come), 400 otherwise.
async fn request_body(ctx: &Ctx, headers: &http::HeaderMap, mut body: Incoming) -> Result<Vec<u8>, Answer> {
    if let Some(res) = declared_too_large(ctx, headers, &mut body).await {
        return Err(res);
    }
    read_body(body, &ctx.body).await.map_err(|e| body_refused(ctx, e))
}

/// A request whose Content-Length is over the server's cap: 413, once the body has lingered
/// (see [`linger`]).
async fn declared_too_large(ctx: &Ctx, headers: &http::HeaderMap, body: &mut Incoming) -> Option<Answer> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > ctx.body.max as u64) {
        linger(body, ctx.body.max).await;
        return Some(body_refused(ctx, BodyError::TooLarge));
    }
    None
}

/// The answer to a body refused by [`Limited`]'s rules: 413 over the cap, 408 for a body that
/// stalls (and the connection closed: the rest may still come), 400 otherwise.
fn body_refused(ctx: &Ctx, e: BodyError) -> Answer {
    match e {
        BodyError::TooLarge => fail(
            StatusCode::PAYLOAD_TOO_LARGE,
            "ResourceExhausted",
            format!("the body is over this server's limit of {} bytes", ctx.body.max),
        ),
        BodyError::Stalled | BodyError::TooSlow => {
            ctx.counters.stalled_body();
            let message = if matches!(e, BodyError::Stalled) {
                format!(
                    "the request body brought no bytes for {:?} (the server's body_timeout): send the whole \
                     body without pausing, and a Content-Length no longer than the body",
                    ctx.body.timeout
                )
            } else {
                format!(
                    "the request body came slower than {} bytes a second after its first {:?} (the server's \
                     min_body_rate and body_timeout): send the body at once",
                    ctx.body.min_rate, ctx.body.timeout
                )
            };
            let mut res = fail(StatusCode::REQUEST_TIMEOUT, "RequestTimeout", message);
            res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            res
        }
        BodyError::Other(e) => {
            fail(StatusCode::BAD_REQUEST, "InvalidArgument", format!("could not read the body: {e}"))
        }
    }
}

/// `Retry-After` of a 429 (a full queue, maxPendingInputs). Kept at 1 second on purpose: room
/// opens as soon as one queued input starts, which depends on inputs already running that the
/// server cannot time (a 10 ms call and a 10 minute one look the same until they end), and the
/// header counts whole seconds, so 1 is the shortest wait it can advise. A longer guess would
/// leave capacity idle while callers wait; a caller that is refused again backs off on its own.
pub(crate) fn retry_after() -> HeaderValue {
    HeaderValue::from_static("1")
}

/// A call the control plane refused before running it (unknown name, bad arguments), as HTTP.
fn refused(status: &tonic::Status) -> Answer {
    let (code, name) = match status.code() {
        tonic::Code::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
        tonic::Code::InvalidArgument => (StatusCode::BAD_REQUEST, "InvalidArgument"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "Error"),
    };
    fail(code, name, status.message())
}

fn fail(status: StatusCode, name: &str, message: impl Into<String>) -> Answer {
    json_answer(status, &json!({ "error": { "name": name, "message": message.into() } }))
}

const ROUTES: &str =
    "POST /{app}/{function}, POST /{app}/{Class}/{method}, GET /{app} (what it serves), GET /, GET /metrics, GET /dashboard or GET /healthz";

async fn handle(ctx: &Ctx, req: Request<Incoming>) -> Answer {
    // Web endpoints first: each has its own method and token rule (web.rs).
    let req = match web::serve(ctx, req).await {
        Ok(res) => return res,
        Err(req) => req,
    };
    let path = req.uri().path();
    if path == "/healthz" {
        return match *req.method() {
            Method::GET | Method::HEAD => answer(StatusCode::OK, "text/plain; charset=utf-8", b"ok".to_vec()),
            _ => not_allowed("GET"),
        };
    }
    let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    // A browser cannot send a header with a page it opens: the dashboard takes `?token=` too.
    let dashboard = path == "/dashboard" || path == "/dashboard/events";
    let from_query = dashboard
        .then(|| req.uri().query())
        .flatten()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")))
        .and_then(percent_decode)
        .map(|t| format!("Bearer {t}"));
    let authorization = authorization.or(from_query.as_deref());
    if let Err(message) = token_rule(ctx.token.as_deref(), authorization) {
        let mut res = fail(StatusCode::UNAUTHORIZED, "Unauthenticated", message);
        res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return res;
    }
    if path.starts_with(admin::PREFIX) {
        return admin::serve(&ctx.svc.shared, req.method(), req.uri()).await;
    }
    if path == "/metrics" {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return not_allowed("GET");
        }
        return match crate::metrics::exposition(&ctx.svc.shared, ctx.counters.snapshot()).await {
            Ok(text) => answer(StatusCode::OK, crate::metrics::CONTENT_TYPE, text.into_bytes()),
            Err(why) => fail(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", why),
        };
    }
    if dashboard {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return not_allowed("GET");
        }
        if path == "/dashboard" {
            let mut res =
                answer(StatusCode::OK, "text/html; charset=utf-8", crate::dashboard::PAGE.as_bytes().to_vec());
            res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return res;
        }
        let events = crate::dashboard::events(ctx.svc.shared.clone(), ctx.counters.clone(), ctx.closing.clone());
        let mut res = streaming(StatusCode::OK, "text/event-stream", events);
        res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return res;
    }
    let segments: Option<Vec<String>> = path.strip_prefix('/').unwrap_or(path).split('/').map(percent_decode).collect();
    // GET / and GET /{app} (a trailing slash or not): what is served.
    let listed = path.trim_end_matches('/');
    if matches!(*req.method(), Method::GET | Method::HEAD) && !listed.get(1..).unwrap_or("").contains('/') {
        match listed.get(1..).map(percent_decode) {
            None => return listing(ctx, None),
            Some(Some(app)) => return listing(ctx, Some(&app)),
            Some(None) => {} // a malformed escape: the 404 below says what this server answers
        }
    }
    let Some(segments) = segments.filter(|s| (2..=3).contains(&s.len()) && s.iter().all(|s| !s.is_empty())) else {
        return fail(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no route {}: this server answers {ROUTES}", crate::functions::shown(path)),
        );
    };
    if req.method() != Method::POST {
        return not_allowed("POST");
    }
    let (app, function) = (segments[0].as_str(), segments[1].as_str());
    let method = segments.get(2).map_or("", String::as_str);
    if let Some(res) = wrong_shape(ctx, app, function, method) {
        return res;
    }

    // Read now (the body takes the request); used only if the target is a generator.
    let sse = req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(accepts_event_stream);
    let (head, body) = req.into_parts();
    let trace = crate::functions::caller_trace(&head.headers);
    let body = match request_body(ctx, &head.headers, body).await {
        Ok(b) => b,
        Err(res) => return res,
    };
    let (args, params) = match parse_body(&body) {
        Ok(v) => v,
        Err(message) => return fail(StatusCode::BAD_REQUEST, "InvalidArgument", message),
    };

    let f = pb::FunctionRef { app: app.into(), function: function.into(), method: method.into(), params };
    let checked = ctx.svc.resolve(Some(&f)).and_then(|t| t.check_args(&args, "the arguments").map(|()| t));
    let target = match checked {
        Ok(t) => t,
        Err(status) => return refused(&status),
    };
    if target.is_generator() {
        let (items, fc) = ctx.svc.open_stream(target.pool, target.method, args, trace);
        return with_call_id(stream_items(items, sse).await, fc);
    }
    let (result, fc) = ctx.svc.call(target.pool, target.method, args, trace).await;
    if let Some(message) = crate::plane::queue_full(&result) {
        let mut res = fail(StatusCode::TOO_MANY_REQUESTS, berth_core::failure::QUEUE_FULL, message);
        res.headers_mut().insert(header::RETRY_AFTER, retry_after());
        return res;
    }
    let res = match result.outcome {
        Some(Outcome::Value(bytes)) => match ciborium::from_reader::<ciborium::Value, _>(bytes.as_slice()) {
            Ok(v) => json_answer(StatusCode::OK, &cbor_to_json(&v)),
            Err(e) => fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SerializationError",
                format!("the function's result is not valid CBOR: {e}"),
            ),
        },
        Some(Outcome::Error(e)) => json_answer(StatusCode::INTERNAL_SERVER_ERROR, &error_json(e)),
        None => fail(StatusCode::INTERNAL_SERVER_ERROR, "Error", "the container sent an empty result"),
    };
    with_call_id(res, fc)
}

/// The header naming an HTTP call's function call id.
static CALL_ID: HeaderName = HeaderName::from_static("x-berth-function-call-id");

/// `res` with the call's function call id (its bytes become the header's, not copied).
fn with_call_id(mut res: Answer, fc: String) -> Answer {
    if let Ok(v) = HeaderValue::from_maybe_shared(Bytes::from(fc)) {
        res.headers_mut().insert(&CALL_ID, v);
    }
    res
}

/// The function's own failure, as every HTTP answer shows it.
fn error_json(pb::Error { name, message, stack }: pb::Error) -> Json {
    json!({ "error": { "name": name, "message": message, "stack": stack } })
}

/// `Accept: text/event-stream` (alone or among others) asks for SSE; anything else gets NDJSON.
fn accepts_event_stream(accept: &str) -> bool {
    accept.split(',').any(|t| t.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/event-stream")))
}

/// A generator's answer. The head waits for the first event: a full queue is 429 and a failure
/// before any item is 500 with the error, as for a function; after that the items stream.
async fn stream_items(mut items: StreamItems, sse: bool) -> Answer {
    let first = match items.next().await {
        None => None,
        Some(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Error(e)) })) => {
            if e.name == berth_core::failure::QUEUE_FULL {
                let mut res = fail(StatusCode::TOO_MANY_REQUESTS, berth_core::failure::QUEUE_FULL, e.message);
                res.headers_mut().insert(header::RETRY_AFTER, retry_after());
                return res;
            }
            return json_answer(StatusCode::INTERNAL_SERVER_ERROR, &error_json(e));
        }
        Some(event) => Some(event),
    };
    let mut ended = first.is_none();
    let framed = tokio_stream::iter(first).chain(items).map_while(move |event| {
        if ended {
            return None;
        }
        let (line, last) = frame_item(event, sse);
        ended = last;
        Some(Ok(line))
    });
    let content_type = if sse { "text/event-stream" } else { "application/x-ndjson" };
    let mut res = streaming(StatusCode::OK, content_type, Box::pin(framed));
    // Proxies and browsers must pass events on as they come, not keep them.
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    res
}

/// One event of a generator's stream as NDJSON or SSE bytes, and whether it is the last.
fn frame_item(event: Result<pb::StreamItem, tonic::Status>, sse: bool) -> (Bytes, bool) {
    let (json, error) = match event {
        Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Value(bytes)) }) => {
            match ciborium::from_reader::<ciborium::Value, _>(bytes.as_slice()) {
                Ok(v) => (cbor_to_json(&v), false),
                Err(e) => (
                    json!({ "error": { "name": "SerializationError", "message": format!("an item is not valid CBOR: {e}") } }),
                    true,
                ),
            }
        }
        Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Error(e)) }) => (error_json(e), true),
        Ok(pb::StreamItem { item: None }) => {
            (json!({ "error": { "name": "Error", "message": "the container sent an empty item" } }), true)
        }
        Err(status) => (json!({ "error": { "name": "Error", "message": status.message() } }), true),
    };
    let text = serde_json::to_string(&json).unwrap_or_default();
    let framed = match (sse, error) {
        (false, _) => format!("{text}\n"),
        (true, false) => format!("data: {text}\n\n"),
        (true, true) => format!("event: error\ndata: {text}\n\n"),
    };
    (Bytes::from(framed), error)
}

/// Why a request body was refused ([`Limited`]).
#[derive(Debug)]
pub(crate) enum BodyError {
    TooLarge,
    /// No frame within the body timeout, counted from when the next one was asked for.
    Stalled,
    /// Past the body timeout of waiting, fewer bytes than the minimum rate asks.
    TooSlow,
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::TooLarge => f.write_str("the request body is over the server's limit"),
            Self::Stalled => f.write_str("the request body stalled"),
            Self::TooSlow => f.write_str("the request body came too slowly"),
            Self::Other(e) => write!(f, "could not read the request body: {e}"),
        }
    }
}

/// The whole body, within [`Limited`]'s rules.
async fn read_body(body: Incoming, limits: &BodyLimits) -> Result<Vec<u8>, BodyError> {
    let mut body = Limited::new(body, *limits);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Err(e) => {
                let fault = body.take_fault().unwrap_or_else(|| BodyError::Other(Box::new(e)));
                if matches!(fault, BodyError::TooLarge) {
                    linger(&mut body.inner, limits.max).await;
                }
                return Err(fault);
            }
        }
    }
    Ok(out)
}

/// A request body as it is read, whole (the RPC route, web endpoints) or streamed on (a web
/// app's server, proxy.rs), refused past `max` bytes, when no frame comes for `timeout` after
/// it was asked for, or when it comes slower than `min_rate` bytes a second once `timeout` of
/// waiting has passed: a caller trickling a byte a minute, or a byte just within each
/// `timeout`, or declaring more than it sends, would otherwise hold the connection and a task
/// for as long as it likes. Only time spent waiting for the caller counts: a streamed body
/// that its reader does not ask for (an app reading slowly) is not the caller's delay. The
/// refusal is kept for [`body_refused`] to answer ([`Limited::fault`]).
pub(crate) struct Limited<B = Incoming> {
    inner: B,
    limits: BodyLimits,
    read: usize,
    /// Time spent with the next frame asked for and not there.
    waited: Duration,
    pending_since: Option<tokio::time::Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    fault: Arc<std::sync::Mutex<Option<BodyError>>>,
    ended: bool,
}

impl<B> Limited<B> {
    pub(crate) fn new(inner: B, limits: BodyLimits) -> Self {
        Self {
            inner,
            limits,
            read: 0,
            waited: Duration::ZERO,
            pending_since: None,
            timer: None,
            fault: Arc::default(),
            ended: false,
        }
    }

    /// Where the body's refusal goes once it is refused (the body may be another task's by then).
    pub(crate) fn fault(&self) -> Arc<std::sync::Mutex<Option<BodyError>>> {
        Arc::clone(&self.fault)
    }

    fn take_fault(&self) -> Option<BodyError> {
        self.fault.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn refuse(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let message = e.to_string();
        *self.fault.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        self.ended = true;
        Poll::Ready(Some(Err(std::io::Error::other(message))))
    }
}

impl<B> Body for Limited<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let BodyLimits { max, timeout, min_rate } = this.limits;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                if let Some(since) = this.pending_since.take() {
                    this.waited += since.elapsed();
                }
                match frame {
                    None => {
                        this.ended = true;
                        Poll::Ready(None)
                    }
                    Some(Ok(frame)) => {
                        this.read += frame.data_ref().map_or(0, Bytes::len);
                        if this.read > max {
                            return this.refuse(BodyError::TooLarge);
                        }
                        Poll::Ready(Some(Ok(frame)))
                    }
                    Some(Err(e)) => this.refuse(BodyError::Other(e.into())),
                }
            }
            Poll::Pending => {
                let since = *this.pending_since.get_or_insert_with(tokio::time::Instant::now);
                // The next frame within `timeout`, and, after a first `timeout` of grace, no
                // later than the minimum rate allows for the bytes so far.
                let by_gap = since + timeout;
                let allowed = Duration::try_from_secs_f64(this.read as f64 / f64::from(min_rate.max(1)))
                    .ok()
                    .and_then(|d| d.checked_add(timeout))
                    .map(|d| d.saturating_sub(this.waited));
                let by_rate = allowed.and_then(|d| since.checked_add(d)).unwrap_or(by_gap);
                let deadline = by_gap.min(by_rate);
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                if timer.as_mut().poll(cx).is_ready() {
                    return this.refuse(if by_rate < by_gap { BodyError::TooSlow } else { BodyError::Stalled });
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How long a body over the cap is still read (and discarded) before the 413 goes out.
const LINGER: Duration = Duration::from_secs(1);

/// Reads on, discarding, for up to [`LINGER`] and up to 4 × `max` bytes, a body refused for
/// its size: the connection closes after the 413, and closing it with the client's bytes
/// unread resets it, which can make the client lose the answer while it is still sending
/// (what other servers call a lingering close). A client sending more than that, or slower,
/// gets the reset.
async fn linger(body: &mut Incoming, max: usize) {
    let deadline = tokio::time::Instant::now() + LINGER;
    let mut left = max.saturating_mul(4);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        let n = frame.data_ref().map_or(0, Bytes::len);
        if n >= left {
            return;
        }
        left -= n;
    }
}

fn not_allowed(allow: &'static str) -> Answer {
    let mut res = fail(
        StatusCode::METHOD_NOT_ALLOWED,
        "MethodNotAllowed",
        format!("use {allow} here; this server answers {ROUTES}"),
    );
    res.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

/// `GET /{app}`: what the app serves, each function and class method with the path that calls
/// it (a gRPC caller sends the same names in `FunctionRef`); `GET /`: every app. An app not
/// served here is 404 naming those that are.
fn listing(ctx: &Ctx, app: Option<&str>) -> Answer {
    let reg = ctx.svc.registry();
    let web = ctx.web();
    let mut apps: Vec<&str> = Vec::new();
    for d in &reg.functions {
        if !apps.contains(&d.app.as_str()) {
            apps.push(&d.app);
        }
    }
    let describe = |app: &str| {
        let mut functions = Vec::new();
        for d in reg.functions.iter().filter(|d| d.app == app) {
            if d.is_class {
                for m in &d.methods {
                    let path = format!("/{}/{}/{}", path_segment(app), path_segment(&d.name), path_segment(m));
                    functions.push(web.listed(app, json!({ "function": d.name, "method": m, "path": path })));
                }
            } else {
                let path = format!("/{}/{}", path_segment(app), path_segment(&d.name));
                functions.push(web.listed(app, json!({ "function": d.name, "path": path })));
            }
        }
        json!({ "app": app, "functions": functions })
    };
    const CALL: &str = concat!(
        r#"POST a path with a JSON array of arguments, or {"args": [...], "params": {...}} for a class's parameters; "#,
        "over gRPC, berth.v1.Functions with function {app, function, method}",
    );
    match app {
        None => json_answer(
            StatusCode::OK,
            &json!({ "apps": apps.iter().map(|a| describe(a)).collect::<Vec<_>>(), "call": CALL }),
        ),
        Some(app) if apps.contains(&app) => {
            let mut body = describe(app);
            body["call"] = json!(CALL);
            json_answer(StatusCode::OK, &body)
        }
        Some(app) => fail(StatusCode::NOT_FOUND, "NotFound", crate::functions::unknown_app(&reg, app)),
    }
}

/// A name as one path segment: `%XX` for every byte but the unreserved ones (RFC 3986).
fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A class called without a method, or a function called with one: the path's shape is
/// wrong, and the answer says which path to use. Unknown names are `resolve`'s to report.
fn wrong_shape(ctx: &Ctx, app: &str, function: &str, method: &str) -> Option<Answer> {
    let reg = ctx.svc.registry();
    let def = reg.functions.iter().find(|d| d.app == app && d.name == function)?;
    let message = match (def.is_class, method.is_empty()) {
        (true, true) => format!(
            "'{function}' is a class: call one of its methods, POST /{app}/{function}/{{method}}; its methods: {}",
            def.methods.join(", ")
        ),
        (false, false) => format!("'{function}' is a function, not a class: POST /{app}/{function}"),
        _ => return None,
    };
    Some(fail(StatusCode::NOT_FOUND, "NotFound", message))
}

/// `%XX` escapes in a path segment; None if one is malformed or the result is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::json::base64;
    use super::*;

    type Sent = Result<Frame<Bytes>, std::convert::Infallible>;

    /// A body whose frames come when the test sends them.
    fn body(limits: BodyLimits) -> (tokio::sync::mpsc::Sender<Sent>, Limited<http_body_util::StreamBody<Frames>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let frames = Frames(rx);
        (tx, Limited::new(http_body_util::StreamBody::new(frames), limits))
    }

    struct Frames(tokio::sync::mpsc::Receiver<Sent>);

    impl Stream for Frames {
        type Item = Sent;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Sent>> {
            self.0.poll_recv(cx)
        }
    }

    fn data(s: &'static str) -> Sent {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    const LIMITS: BodyLimits = BodyLimits { max: 10, timeout: Duration::from_secs(1), min_rate: 4 };

    #[tokio::test(start_paused = true)]
    async fn a_body_within_the_rules_passes_and_one_over_the_cap_is_refused() {
        let (tx, mut b) = body(LIMITS);
        tx.send(data("12345")).await.unwrap();
        assert_eq!(b.frame().await.unwrap().unwrap().into_data().unwrap(), "12345");
        tx.send(data("67890")).await.unwrap();
        assert!(b.frame().await.unwrap().is_ok(), "10 bytes: at the cap");
        tx.send(data("x")).await.unwrap();
        assert!(b.frame().await.unwrap().is_err());
        assert!(matches!(b.take_fault(), Some(BodyError::TooLarge)));
        assert!(b.frame().await.is_none(), "a refused body ends");
    }

    #[tokio::test(start_paused = true)]
    async fn only_time_spent_waiting_for_the_caller_counts() {
        let (tx, mut b) = body(LIMITS);
        tx.send(data("ab")).await.unwrap();
        // The reader does not ask for 10 s (an app reading slowly): no fault of the caller's.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert!(b.frame().await.unwrap().is_ok());
        // Asked for, the next frame has `timeout` to come.
        let started = tokio::time::Instant::now();
        assert!(b.frame().await.unwrap().is_err());
        assert_eq!(started.elapsed(), LIMITS.timeout);
        assert!(matches!(b.take_fault(), Some(BodyError::Stalled)));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_trickles_is_too_slow_after_its_grace() {
        let (tx, mut b) = body(LIMITS);
        // A byte every 0.9 s: each within `timeout`, but under 4 bytes a second.
        let sender = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                if tx.send(data("x")).await.is_err() {
                    return;
                }
            }
        });
        let mut read = 0;
        let fault = loop {
            match b.frame().await {
                Some(Ok(_)) => read += 1,
                Some(Err(_)) => break b.take_fault(),
                None => break None,
            }
        };
        assert!(matches!(fault, Some(BodyError::TooSlow)), "{fault:?} after {read} bytes");
        assert!(read < 3, "{read}");
        sender.abort();
    }

    #[test]
    fn base64_and_percent_decoding() {
        for (raw, want) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            assert_eq!(base64(raw.as_bytes()), want);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
        assert_eq!(percent_decode("my%20app").as_deref(), Some("my app"));
        assert_eq!(percent_decode("caf%C3%A9").as_deref(), Some("café"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%+f"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
