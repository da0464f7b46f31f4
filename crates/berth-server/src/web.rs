//! Web endpoints (`@webEndpoint`, `app.function({ webEndpoint })`) and web apps (`@fetchApp`,
//! `@webServer`, `@nodeApp`; README "API", web endpoints and web apps): URLs the user designs, on the HTTP port beside the JSON RPC routes of
//! `http/mod.rs`, which hands every request to [`serve`] first.
//!
//! | request                                         | answer                                      |
//! |-------------------------------------------------|---------------------------------------------|
//! | `{METHOD} /{app}/{label}` (label: the endpoint's, else the function's name, or `{Class}/{method}`) | the function's answer |
//! | a JSON value returned                           | 200 `application/json`                      |
//! | a `Response` returned                           | its status, headers and body, streamed      |
//! | an `async *` endpoint                           | its items, NDJSON or SSE (`Accept`)         |
//! | `ANY /{app}/{label}/...` of a web app           | its Response, streamed ([`app_request`])    |
//! | another method on an endpoint's path            | 405 with `Allow`                            |
//! | a path under an app with endpoints, unknown     | 404 naming its endpoints and functions      |
//! | a body that is not JSON                         | 400 naming the problem                      |
//! | past the function's `timeout`                   | 504 `{"error": {...}}`                      |
//! | the function threw                              | 500 `{"error": {...}}`                      |
//! | `requiresAuth` without the server's token       | 401                                         |
//! | its container could not start (`@enter`, a `@webServer` that never listened) | 503          |
//! | a `@webServer`'s or `@nodeApp`'s server not reachable, or gone before answering | 502       |
//!
//! Wire (one design for every caller): the value is the first argument: the JSON body (POST,
//! PUT, PATCH) or the query string as a map of strings (GET, DELETE, HEAD). The second is the
//! request, `{method, url, headers, body}`, for a function that declares a second parameter
//! (src/run/web.ts builds the `Request` from it), else null; callers cannot pass a second
//! argument (its arity is at most 1), so the container knows it came from here, and only then
//! streams a returned `Response`. The answer is read off the input's stream ([`web_answer`]):
//! a value, or a `Response` as CBOR tag [`WEB_RESPONSE_TAG`] over `[status, [[name, value],
//! ...], body]` (src/shared/cbor.ts `WireResponse`), whose body is bytes, or null when its
//! chunks follow as items. An `async *` endpoint's items are NDJSON or SSE, as over the RPC
//! route; a `@fetchApp` gets `[null, request]` and answers with a streamed `Response`; a
//! `@webServer`'s or `@nodeApp`'s request goes to its server itself ([`to_server`], proxy.rs).
use std::borrow::Cow;
use std::collections::HashMap;

use berth_proto::v1 as pb;
use ciborium::Value as Cbor;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::json;

use super::json::{cbor_to_json, json_to_cbor};
use super::{
    accepts_event_stream, answer, body_refused, declared_too_large, fail, json_answer, percent_decode, refused,
    relayed, request_body, stream_items, streaming, with_call_id, Answer, Chunks, Ctx, Limited,
};
use crate::auth::token_rule;
use crate::functions::StreamItems;
use crate::plane::Registry;
use crate::proxy::{self, Unanswered};
use hyper::body::Bytes;
use tokio_stream::StreamExt;

/// berth's own CBOR tag for a returned `Response` ('bert'; src/shared/cbor.ts WEB_RESPONSE_TAG).
pub(crate) const WEB_RESPONSE_TAG: u64 = 0x6265_7274;

/// Where a web app's own path goes in the requests it gets.
static FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");

/// One endpoint: what it calls and how it is reached.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// What it calls, as a caller names it (the class method's name is empty for a function),
    /// made once ([`target`]).
    callee: pb::FunctionRef,
    http: Method,
    requires_auth: bool,
    takes_request: bool,
    /// An `async *` endpoint: its items stream as NDJSON, or SSE (http/mod.rs `stream_items`).
    gen: bool,
    /// A web app (`@fetchApp`, `@webServer`, `@nodeApp`): every request under `path`.
    app_kind: Option<String>,
    /// The path as printed: `/{app}/{label}`.
    path: String,
    /// A web app's `x-forwarded-prefix` (its path), made once.
    prefix: Option<HeaderValue>,
}

/// Every endpoint, by app and the decoded path after the app, built when the ingress starts
/// and again after an app is replaced (http/mod.rs `Ctx::web`): a request to an app without
/// endpoints costs one map lookup, and a path without escapes is looked up as it came, with
/// nothing allocated.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    apps: HashMap<String, AppRoutes>,
    /// Whether any route is a web app, whose paths are prefixes.
    prefixes: bool,
}

/// One app's endpoints.
#[derive(Debug, Default)]
struct AppRoutes {
    /// By the decoded path after the app's (`Model/predict`).
    by_rest: HashMap<String, Route>,
    /// As messages list them (`POST /shop/Model/predict`).
    shown: Vec<String>,
}

impl Routes {
    pub(crate) fn new(reg: &Registry) -> Self {
        let mut routes = Self::default();
        for d in &reg.functions {
            for w in &d.web {
                let (Some(name), Some(path)) = (d.methods.get(w.index as usize), d.web_path(w)) else { continue };
                let Ok(http) = Method::from_bytes(w.method.as_bytes()) else { continue };
                let rest = path[d.app.len() + 2..].to_owned();
                let route = Route {
                    callee: pb::FunctionRef {
                        app: d.app.clone(),
                        function: d.name.clone(),
                        method: if d.is_class { name.clone() } else { String::new() },
                        params: Vec::new(),
                    },
                    http,
                    requires_auth: w.requires_auth,
                    takes_request: w.takes_request,
                    gen: d.is_generator(w.index),
                    prefix: w.app.as_ref().and_then(|_| HeaderValue::from_str(&path).ok()),
                    app_kind: w.app.clone(),
                    path,
                };
                // Two endpoints at one path are refused when the app is served
                // (src/define/served.ts); the first one wins here.
                let app = routes.apps.entry(d.app.clone()).or_default();
                if let std::collections::hash_map::Entry::Vacant(v) = app.by_rest.entry(rest) {
                    app.shown.push(match &route.app_kind {
                        Some(_) => format!("ANY {}/...", route.path),
                        None => format!("{} {}", route.http, route.path),
                    });
                    routes.prefixes |= route.app_kind.is_some();
                    v.insert(route);
                }
            }
        }
        routes
    }

    /// A listing's entry (`GET /{app}`, http/mod.rs) for a web endpoint: its own path, and the
    /// method and body it takes instead of a JSON array of arguments.
    pub(crate) fn listed(&self, app: &str, mut entry: serde_json::Value) -> serde_json::Value {
        let Some(routes) = self.apps.get(app) else {
            return entry;
        };
        let name = |k: &str| entry.get(k).and_then(serde_json::Value::as_str).unwrap_or("").to_owned();
        let (function, method) = (name("function"), name("method"));
        if let Some(r) = routes.by_rest.values().find(|r| r.callee.function == function && r.callee.method == method) {
            entry["path"] = json!(r.path);
            entry["web"] = match &r.app_kind {
                Some(kind) => {
                    json!({ "app": kind, "takes": "every request under the path", "requiresAuth": r.requires_auth })
                }
                None => {
                    let takes =
                        if matches!(r.http, Method::GET | Method::DELETE) { "the query" } else { "a JSON body" };
                    json!({ "method": r.http.as_str(), "takes": takes, "requiresAuth": r.requires_auth })
                }
            };
        }
        entry
    }

    /// The endpoint at `path`, or whether the path is under an app with endpoints. A web app
    /// also answers every path under its own: the longest such prefix wins.
    fn find<'p>(&self, path: &'p str) -> Found<'_, 'p> {
        if self.apps.is_empty() {
            return Found::Nothing;
        }
        let Some((app, rest)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Found::Nothing;
        };
        let routes = if app.contains('%') {
            let Some(app) = percent_decode(app) else { return Found::Nothing };
            self.apps.get(&app)
        } else {
            self.apps.get(app)
        };
        let Some(routes) = routes else { return Found::Nothing };
        if rest.contains('%') {
            return self.find_escaped(routes, rest);
        }
        // Without escapes, the decoded path is the path: its prefixes end at its slashes.
        if let Some(route) = routes.by_rest.get(rest) {
            return Found::Route(route, Cow::Borrowed(""));
        }
        if self.prefixes {
            let mut end = rest.len();
            while let Some(slash) = rest[..end].rfind('/') {
                if let Some(route) = routes.by_rest.get(&rest[..slash]).filter(|r| r.app_kind.is_some()) {
                    return Found::Route(route, Cow::Borrowed(&rest[slash..]));
                }
                end = slash;
            }
        }
        Found::UnderApp(&routes.shown)
    }

    /// [`find`](Self::find) for a path after the app's with escapes in it: its segments are
    /// decoded to be matched, and the path under a web app's is passed on as it came.
    fn find_escaped<'a, 'p>(&self, routes: &'a AppRoutes, rest: &str) -> Found<'a, 'p> {
        let Some(segments) = rest.split('/').map(percent_decode).collect::<Option<Vec<String>>>() else {
            return Found::UnderApp(&routes.shown);
        };
        if let Some(route) = routes.by_rest.get(&segments.join("/")) {
            return Found::Route(route, Cow::Borrowed(""));
        }
        if self.prefixes {
            let raw: Vec<&str> = rest.split('/').collect();
            for k in (1..segments.len()).rev() {
                if let Some(route) = routes.by_rest.get(&segments[..k].join("/")).filter(|r| r.app_kind.is_some()) {
                    return Found::Route(route, Cow::Owned(format!("/{}", raw[k..].join("/"))));
                }
            }
        }
        Found::UnderApp(&routes.shown)
    }
}

enum Found<'a, 'p> {
    /// The route, and for a web app the path under its own (`/users/1` of `/app/api/users/1`).
    Route(&'a Route, Cow<'p, str>),
    /// No endpoint at the path, in an app with these (`GET /app/health`, ...).
    UnderApp(&'a [String]),
    Nothing,
}

/// Answers a request for a web endpoint; hands any other back for the RPC routes.
pub(super) async fn serve(ctx: &Ctx, req: Request<Incoming>) -> Result<Answer, Request<Incoming>> {
    let routes = ctx.web();
    let route = match routes.find(req.uri().path()) {
        Found::Nothing => return Err(req),
        Found::UnderApp(endpoints) => {
            // An RPC route of the app (`POST /app/function`) is still served; anything else
            // is unknown, and the answer names what the app has.
            if rpc_route(&ctx.svc.registry(), req.uri().path()) {
                return Err(req);
            }
            let path = crate::functions::shown(req.uri().path());
            let app = req.uri().path().trim_start_matches('/').split('/').next().unwrap_or("");
            return Ok(fail(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "no endpoint {path}: its app's web endpoints are {}; GET /{app} lists its functions",
                    endpoints.join(", ")
                ),
            ));
        }
        Found::Route(route, under) => {
            let path = if route.app_kind.is_some() { app_path(&under, req.uri().query()) } else { String::new() };
            (route, path)
        }
    };
    let (route, path) = route;
    if route.app_kind.is_none()
        && req.method() != route.http
        && !(route.http == Method::GET && req.method() == Method::HEAD)
    {
        let mut res = fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{} answers {} only (the method its webEndpoint names)", route.path, route.http),
        );
        if let Ok(v) = HeaderValue::from_str(route.http.as_str()) {
            res.headers_mut().insert(header::ALLOW, v);
        }
        return Ok(res);
    }
    if route.requires_auth {
        let authorization = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if let Err(message) = token_rule(ctx.token.as_deref(), authorization) {
            let mut res = fail(StatusCode::UNAUTHORIZED, "Unauthenticated", message);
            res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return Ok(res);
        }
    }
    if route.app_kind.is_some() {
        return Ok(app_request(ctx, route, path, req).await);
    }
    Ok(call(ctx, route, req).await)
}

/// The URL of a web app's request: the path under the app's own (`/` for the app's own), and
/// the query.
fn app_path(under: &str, query: Option<&str>) -> String {
    let under = if under.is_empty() { "/" } else { under };
    match query {
        Some(q) => format!("{under}?{q}"),
        None => under.to_owned(),
    }
}

/// Whether `path` is `/{app}/{function}` or `/{app}/{Class}/{method}` of a function the app has.
fn rpc_route(reg: &Registry, path: &str) -> bool {
    let segments: Option<Vec<String>> = path.trim_start_matches('/').split('/').map(percent_decode).collect();
    let Some(s) = segments else { return false };
    match s.as_slice() {
        [app, f] => reg.functions.iter().any(|d| d.app == *app && d.name == *f && !d.is_class),
        [app, c, m] => {
            reg.functions.iter().any(|d| d.app == *app && d.name == *c && d.is_class && d.methods.contains(m))
        }
        _ => false,
    }
}

async fn call(ctx: &Ctx, route: &Route, req: Request<Incoming>) -> Answer {
    let (head, body) = req.into_parts();
    let trace = crate::functions::caller_trace(&head.headers);
    let has_body = !matches!(head.method, Method::GET | Method::HEAD | Method::DELETE);
    let body = if has_body || route.takes_request && head.method != Method::GET && head.method != Method::HEAD {
        match request_body(ctx, &head.headers, body).await {
            Ok(b) => b,
            Err(res) => return res,
        }
    } else {
        Vec::new()
    };
    let value = if has_body {
        let content_type = head.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        match body_value(&body, content_type, route.takes_request) {
            Ok(v) => v,
            Err(message) => return fail(StatusCode::BAD_REQUEST, "InvalidArgument", message),
        }
    } else {
        query_value(head.uri.query().unwrap_or(""))
    };
    let mut args = vec![value];
    if route.takes_request {
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        args.push(request_meta(&head, &path, body));
    } else if !route.gen {
        // A second argument, even without a Request, says the call came from here: only then
        // may a returned Response stream (src/run/container.ts); callers pass one value.
        args.push(Cbor::Null);
    }
    let mut bytes = Vec::new();
    // Writing a Value to a Vec does not fail.
    let _ = ciborium::into_writer(&Cbor::Array(args), &mut bytes);

    let target = match target(ctx, route) {
        Ok(t) => t,
        Err(status) => return refused(&status),
    };
    if route.gen {
        let sse = accepts_event_stream(head.headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or(""));
        let (items, fc) = ctx.svc.open_stream(target.pool, target.method, bytes, trace);
        return with_call_id(stream_items(items, sse).await, fc);
    }
    let (items, fc) = ctx.svc.open_web(target.pool, target.method, bytes, trace);
    with_call_id(web_answer(items, &route.path).await, fc)
}

/// What a route calls: resolved as for a caller, except that a web app member is reachable here.
fn target(ctx: &Ctx, route: &Route) -> Result<crate::functions::Target, tonic::Status> {
    ctx.svc.resolve_as(Some(&route.callee), true)
}

/// A request for a web app (`@fetchApp`, `@webServer`, `@nodeApp`), its URL being the path
/// under the app's own with the query (`path`; the app's path goes in `x-forwarded-prefix`).
/// An app with a server of its own gets it there ([`to_server`]). A `@fetchApp`'s is an input
/// of its member with arguments `[null, request]`, the body read whole first. Its answer is the input's
/// result, a whole Response (CBOR tag [`WEB_RESPONSE_TAG`] over `[status, headers, body]`), or
/// a stream: the head (a null body), then the body's chunks as CBOR byte strings, each written
/// as it comes; the generator credits of functions.rs are its backpressure. A failure before
/// the head is answered as a function's; one after it ends the body short, so the client sees
/// a truncated answer rather than a complete one.
async fn app_request(ctx: &Ctx, route: &Route, path: String, req: Request<Incoming>) -> Answer {
    let (mut head, body) = req.into_parts();
    if let Some(prefix) = &route.prefix {
        head.headers.insert(&FORWARDED_PREFIX, prefix.clone());
    }
    if matches!(route.app_kind.as_deref(), Some("webServer" | "nodeApp")) {
        return to_server(ctx, route, path, head, body).await;
    }
    let body = if matches!(head.method, Method::GET | Method::HEAD) {
        Vec::new()
    } else {
        match request_body(ctx, &head.headers, body).await {
            Ok(b) => b,
            Err(res) => return res,
        }
    };
    let target = match target(ctx, route) {
        Ok(t) => t,
        Err(status) => return refused(&status),
    };
    let mut bytes = Vec::new();
    // Writing a Value to a Vec does not fail.
    let trace = crate::functions::caller_trace(&head.headers);
    let _ = ciborium::into_writer(&Cbor::Array(vec![Cbor::Null, request_meta(&head, &path, body)]), &mut bytes);
    let (items, fc) = ctx.svc.open_web(target.pool, target.method, bytes, trace);
    with_call_id(web_answer(items, &route.path).await, fc)
}

/// A request for a web app with a server of its own (`@webServer`, `@nodeApp`): an input of its
/// member whose execution sends the request to that server (proxy.rs), its body streaming on as
/// it comes, under the server's body rules (http/mod.rs `Limited`: 413, 408). The server's
/// answer is relayed as it comes; a failure before its head is answered as a function's, a
/// refused body with its 413 or 408.
async fn to_server(
    ctx: &Ctx,
    route: &Route,
    path: String,
    head: hyper::http::request::Parts,
    mut body: Incoming,
) -> Answer {
    if let Some(res) = declared_too_large(ctx, &head.headers, &mut body).await {
        return res;
    }
    let target = match target(ctx, route) {
        Ok(t) => t,
        Err(status) => return refused(&status),
    };
    let trace = crate::functions::caller_trace(&head.headers);
    let request = match proxy::request(&head.method, &path, head.headers, Limited::new(body, ctx.body)) {
        Ok(r) => r,
        Err(message) => return fail(StatusCode::BAD_REQUEST, "InvalidArgument", message),
    };
    let (proxied, fc) = ctx.svc.open_proxied(target.pool, target.method, request, trace);
    let res = match proxied.answer().await {
        Ok(res) => {
            let (mut parts, relay) = res.into_parts();
            proxy::strip_hop_by_hop(&mut parts.headers);
            relayed(parts, relay)
        }
        Err(Unanswered::Body(e)) => body_refused(ctx, e),
        Err(Unanswered::Failed(e)) => answer_error(e),
    };
    with_call_id(res, fc)
}

/// The answer to a web request from its input's stream (`path` names it in messages). The
/// first event decides: a JSON value, a whole Response, the head of a streamed Response (a
/// null body: its chunks follow, each written as it comes, the generator credits of
/// functions.rs its backpressure), or a failure, answered as a function's. A failure after a
/// streamed head ends the body short, so the client sees a truncated answer, not a whole one.
async fn web_answer(mut items: StreamItems, path: &str) -> Answer {
    let first = match items.next().await {
        Some(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Value(v)) })) => v,
        Some(Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Error(e)) })) => {
            return answer_error(e);
        }
        _ => return fail(StatusCode::INTERNAL_SERVER_ERROR, "Error", format!("{path} ended without a response")),
    };
    let parts = match ciborium::from_reader::<Cbor, _>(first.as_slice()) {
        Ok(Cbor::Tag(WEB_RESPONSE_TAG, inner)) => match response_parts(*inner) {
            Ok(parts) => parts,
            Err(what) => return bad_response(what),
        },
        Ok(v) => return json_answer(StatusCode::OK, &cbor_to_json(&v)),
        Err(e) => {
            return fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SerializationError",
                format!("the function's result is not valid CBOR: {e}"),
            )
        }
    };
    response(parts, move || body_chunks(items))
}

/// A streamed body's chunks, from the items after its head.
fn body_chunks(items: StreamItems) -> Chunks {
    let mut ended = false;
    Box::pin(items.map_while(move |item| {
        if ended {
            return None;
        }
        let chunk = match item {
            Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Value(v)) }) => {
                match ciborium::from_reader::<Cbor, _>(v.as_slice()) {
                    Ok(Cbor::Bytes(b)) => Ok(Bytes::from(b)),
                    // An endpoint's result (null) after its streamed body: the end.
                    Ok(Cbor::Null) => return None,
                    _ => Err(std::io::Error::other("a chunk of the response body is not bytes")),
                }
            }
            Ok(pb::StreamItem { item: Some(pb::stream_item::Item::Error(e)) }) => {
                Err(std::io::Error::other(format!("{}: {}", e.name, e.message)))
            }
            Ok(pb::StreamItem { item: None }) => Err(std::io::Error::other("an empty item")),
            Err(status) => Err(std::io::Error::other(status.message().to_owned())),
        };
        ended = chunk.is_err();
        Some(chunk)
    }))
}

/// A Response as the answer: its status, its headers, and its body, whole or (a null body in
/// the head) the `chunks` that follow.
fn response(parts: ResponseParts, chunks: impl FnOnce() -> Chunks) -> Answer {
    let mut res = match parts.body {
        Cbor::Null => streamed(parts.status, chunks()),
        Cbor::Bytes(b) => answer(parts.status, "application/octet-stream", b),
        _ => return bad_response("body is not bytes"),
    };
    with_headers(&mut res, parts.headers);
    res
}

/// A streamed body's answer. What already came with the head, a body made whole in one turn
/// of the container's event loop (as a JSON answer is), is answered with its length in one
/// write instead of chunk by chunk; any other streams on from where it stands.
fn streamed(status: StatusCode, mut chunks: Chunks) -> Answer {
    let mut came = Vec::new();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let ended = loop {
        match chunks.as_mut().poll_next(&mut cx) {
            std::task::Poll::Ready(Some(chunk)) => came.push(chunk),
            std::task::Poll::Ready(None) => break true,
            std::task::Poll::Pending => break false,
        }
    };
    if ended && came.iter().all(Result::is_ok) {
        return answer(status, "application/octet-stream", came.into_iter().flatten().flatten().collect());
    }
    streaming(status, "application/octet-stream", Box::pin(tokio_stream::iter(came).chain(chunks)))
}

/// A function's failure as a web answer.
fn answer_error(pb::Error { name, message, stack }: pb::Error) -> Answer {
    if name == berth_core::failure::QUEUE_FULL {
        let mut res = fail(StatusCode::TOO_MANY_REQUESTS, berth_core::failure::QUEUE_FULL, message);
        res.headers_mut().insert(header::RETRY_AFTER, super::retry_after());
        return res;
    }
    // A request past its timeout is the gateway's timeout, not the function's error; a
    // container that could not start (its @enter, a @webServer that never listened) leaves
    // the service unavailable.
    let status = match name.as_str() {
        "FunctionTimeoutError" => StatusCode::GATEWAY_TIMEOUT,
        "InitError" => StatusCode::SERVICE_UNAVAILABLE,
        proxy::BAD_GATEWAY => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_answer(status, &json!({ "error": { "name": name, "message": message, "stack": stack } }))
}

/// The function's value from a request body: JSON, or nothing (`null`) for an empty body, or
/// for a body of another type when the function reads the `Request` itself.
fn body_value(body: &[u8], content_type: &str, takes_request: bool) -> Result<Cbor, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Cbor::Null);
    }
    let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let json_like = media.is_empty() || media == "application/json" || media.ends_with("+json");
    if !json_like && takes_request {
        return Ok(Cbor::Null);
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => Ok(json_to_cbor(&v)),
        Err(e) => Err(format!(
            "the body is not valid JSON ({e}): send a JSON body (content-type: application/json){}",
            if takes_request { "" } else { ", or take the Request as a second parameter to read another type" }
        )),
    }
}

/// The query string as a map of strings (`?a=1&b=x` → `{a: "1", b: "x"}`; a repeated name
/// keeps its last value, a name without `=` maps to "").
fn query_value(query: &str) -> Cbor {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_decode(&s).unwrap_or(s)
        };
        let (k, v) = (decode(k), decode(v));
        match pairs.iter_mut().find(|(name, _)| *name == k) {
            Some(p) => p.1 = v,
            None => pairs.push((k, v)),
        }
    }
    Cbor::Map(pairs.into_iter().map(|(k, v)| (Cbor::Text(k), Cbor::Text(v))).collect())
}

/// What src/run/web.ts builds the `Request` from: method, absolute URL (with `path`),
/// headers, body bytes.
fn request_meta(head: &hyper::http::request::Parts, path: &str, body: Vec<u8>) -> Cbor {
    let host = head.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let headers = head
        .headers
        .iter()
        .filter_map(|(k, v)| {
            Some(Cbor::Array(vec![Cbor::Text(k.as_str().into()), Cbor::Text(v.to_str().ok()?.into())]))
        })
        .collect();
    let text = |k: &str, v: Cbor| (Cbor::Text(k.into()), v);
    Cbor::Map(vec![
        text("method", Cbor::Text(head.method.as_str().into())),
        text("url", Cbor::Text(format!("http://{host}{path}"))),
        text("headers", Cbor::Array(headers)),
        text("body", if body.is_empty() { Cbor::Null } else { Cbor::Bytes(body) }),
    ])
}

fn bad_response(what: &str) -> Answer {
    fail(StatusCode::INTERNAL_SERVER_ERROR, "SerializationError", format!("the returned Response {what}"))
}

/// A Response as the container sent it (CBOR tag [`WEB_RESPONSE_TAG`]).
struct ResponseParts {
    status: StatusCode,
    /// Those that are valid HTTP.
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Bytes, or null in the head of a streamed body.
    body: Cbor,
}

/// `[status, [[name, value], ...], body]`, or what is wrong with it.
fn response_parts(inner: Cbor) -> Result<ResponseParts, &'static str> {
    let Cbor::Array(parts) = inner else { return Err("is not [status, headers, body]") };
    let [Cbor::Integer(status), Cbor::Array(headers), body] =
        <[Cbor; 3]>::try_from(parts).unwrap_or([Cbor::Null, Cbor::Null, Cbor::Null])
    else {
        return Err("is not [status, headers, body]");
    };
    let Some(status) = u16::try_from(status).ok().and_then(|s| StatusCode::from_u16(s).ok()) else {
        return Err("has a status outside 100..999");
    };
    let headers = headers
        .into_iter()
        .filter_map(|h| {
            let Cbor::Array(kv) = h else { return None };
            let [Cbor::Text(k), Cbor::Text(v)] = kv.as_slice() else { return None };
            Some((HeaderName::from_bytes(k.as_bytes()).ok()?, HeaderValue::from_str(v).ok()?))
        })
        .collect();
    Ok(ResponseParts { status, headers, body })
}

/// Sets a Response's headers on the answer in place of its content type. hyper frames the body
/// and sets its length itself, so the Response's own framing headers are dropped.
fn with_headers(res: &mut Answer, headers: Vec<(HeaderName, HeaderValue)>) {
    res.headers_mut().remove(header::CONTENT_TYPE);
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        res.headers_mut().append(name, value);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::plane::{FunctionDef, WebSpec};

    fn def(app: &str, name: &str, methods: &[&str], is_class: bool, web: Vec<WebSpec>) -> FunctionDef {
        FunctionDef {
            app: app.into(),
            name: name.into(),
            methods: methods.iter().map(|m| (*m).into()).collect(),
            is_class,
            spec: berth_core::PoolSpec::new(name, Vec::new()),
            arity: Vec::new(),
            params: Vec::new(),
            not_callable: Vec::new(),
            generators: Vec::new(),
            web,
            schedule: None,
            tags: Vec::new(),
        }
    }

    fn web(index: u32, method: &str, label: Option<&str>) -> WebSpec {
        WebSpec {
            index,
            method: method.into(),
            label: label.map(Into::into),
            requires_auth: false,
            takes_request: false,
            app: None,
        }
    }

    #[test]
    fn routes_by_label_or_default_path() {
        let reg = Registry {
            functions: vec![
                def("shop", "Model", &["load_info", "predict"], true, vec![web(1, "POST", None)]),
                def("shop", "health", &["health"], false, vec![web(0, "GET", Some("healthy"))]),
                def("shop", "square", &["square"], false, Vec::new()),
                def("other", "f", &["f"], false, Vec::new()),
            ],
        };
        let routes = Routes::new(&reg);
        let Found::Route(r, _) = routes.find("/shop/Model/predict") else { panic!("no route") };
        assert_eq!(
            (r.callee.function.as_str(), r.callee.method.as_str(), &r.http),
            ("Model", "predict", &Method::POST)
        );
        let Found::Route(r, _) = routes.find("/shop/healthy") else { panic!("no route") };
        assert_eq!((r.callee.function.as_str(), r.callee.method.as_str(), &r.http), ("health", "", &Method::GET));
        // An escaped path finds the same endpoint.
        assert!(matches!(routes.find("/sh%6Fp/healthy"), Found::Route(..)));
        let Found::UnderApp(list) = routes.find("/shop/nope") else { panic!("not under the app") };
        assert_eq!(list, ["POST /shop/Model/predict", "GET /shop/healthy"]);
        assert!(matches!(routes.find("/other/f"), Found::Nothing));
        assert!(matches!(routes.find("/shop"), Found::Nothing));
        assert!(rpc_route(&reg, "/shop/square") && rpc_route(&reg, "/shop/Model/load_info"));
        assert!(!rpc_route(&reg, "/shop/nope") && !rpc_route(&reg, "/shop/Model"));
        assert!(matches!(Routes::new(&Registry { functions: Vec::new() }).find("/a/b"), Found::Nothing));
    }

    #[test]
    fn web_apps_answer_every_path_under_their_own() {
        let app = |index, label: Option<&str>| WebSpec { app: Some("fetchApp".into()), ..web(index, "*", label) };
        let reg = Registry {
            functions: vec![
                def("site", "Api", &["serve"], true, vec![app(0, Some("api"))]),
                def("site", "Docs", &["serve"], true, vec![app(0, None)]),
                def("site", "health", &["health"], false, vec![web(0, "GET", Some("api2"))]),
            ],
        };
        let routes = Routes::new(&reg);
        let under = |path: &str| match routes.find(path) {
            Found::Route(r, under) => Some((r.callee.function.clone(), under.into_owned())),
            _ => None,
        };
        assert_eq!(under("/site/api"), Some(("Api".into(), String::new())));
        assert_eq!(under("/site/api/"), Some(("Api".into(), "/".into())));
        // The path under the app's own is passed on as it came, escapes included.
        assert_eq!(under("/site/api/users/a%2Fb"), Some(("Api".into(), "/users/a%2Fb".into())));
        assert_eq!(under("/site/Docs/serve/guide/intro"), Some(("Docs".into(), "/guide/intro".into())));
        // An endpoint is no prefix, and a label that merely starts the same is another path.
        assert!(matches!(routes.find("/site/api2/x"), Found::UnderApp(_)));
        assert_eq!(under("/site/api2"), Some(("health".into(), String::new())));
        let Found::UnderApp(list) = routes.find("/site/nope") else { panic!("not under the app") };
        assert_eq!(list, ["ANY /site/api/...", "ANY /site/Docs/serve/...", "GET /site/api2"]);
    }

    #[test]
    fn query_strings_become_maps_of_strings() {
        let text = |s: &str| Cbor::Text(s.into());
        assert_eq!(
            query_value("name=Ada+L&x=%2F1&flag&x=2"),
            Cbor::Map(vec![(text("name"), text("Ada L")), (text("x"), text("2")), (text("flag"), text(""))])
        );
        assert_eq!(query_value(""), Cbor::Map(Vec::new()));
    }

    #[test]
    fn bodies_are_json_or_nothing() {
        assert_eq!(body_value(b" ", "", false).unwrap(), Cbor::Null);
        assert_eq!(
            body_value(b"[1]", "application/json; charset=utf-8", false).unwrap(),
            Cbor::Array(vec![Cbor::Integer(1.into())])
        );
        let e = body_value(b"{oops", "application/json", false).unwrap_err();
        assert!(e.contains("not valid JSON") && e.contains("second parameter"), "{e}");
        // Another type is the Request's to read, when the function takes it.
        assert_eq!(body_value(b"a=1", "application/x-www-form-urlencoded", true).unwrap(), Cbor::Null);
        assert!(body_value(b"a=1", "application/x-www-form-urlencoded", false).is_err());
    }

    #[test]
    fn returned_responses_pass_through() {
        let parts = response_parts(Cbor::Array(vec![
            Cbor::Integer(201.into()),
            Cbor::Array(vec![
                Cbor::Array(vec![Cbor::Text("x-made-by".into()), Cbor::Text("berth".into())]),
                Cbor::Array(vec![Cbor::Text("content-type".into()), Cbor::Text("text/plain".into())]),
                Cbor::Array(vec![Cbor::Text("content-length".into()), Cbor::Text("99".into())]),
            ]),
            Cbor::Bytes(b"x".to_vec()),
        ]))
        .unwrap();
        let res = response(parts, || unreachable!("a whole body has no chunks"));
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.headers()["x-made-by"], "berth");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/plain");
        assert!(res.headers().get(header::CONTENT_LENGTH).is_none());
        assert!(response_parts(Cbor::Null).is_err());
        let timeout = answer_error(pb::Error {
            name: "FunctionTimeoutError".into(),
            message: "past 1s".into(),
            stack: String::new(),
        });
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        let init = answer_error(pb::Error { name: "InitError".into(), message: "x".into(), stack: String::new() });
        assert_eq!(init.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
