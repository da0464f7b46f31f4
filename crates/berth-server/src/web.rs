//! Web endpoints (`@webEndpoint`, `app.function({ webEndpoint })`; README "API", web
//! endpoints): URLs the user designs, on the HTTP port beside the JSON RPC routes of
//! `http/mod.rs`, which hands every request to [`serve`] first.
//!
//! | request                                         | answer                                      |
//! |-------------------------------------------------|---------------------------------------------|
//! | `{METHOD} /{app}/{label}` (label: the endpoint's, else the function's name, or `{Class}/{method}`) | the function's answer |
//! | a JSON value returned                           | 200 `application/json`                      |
//! | a `Response` returned                           | its status, headers and body (buffered)     |
//! | another method on an endpoint's path            | 405 with `Allow`                            |
//! | a path under an app with endpoints, unknown     | 404 naming its endpoints and functions      |
//! | a body that is not JSON                         | 400 naming the problem                      |
//! | past the function's `timeout`                   | 504 `{"error": {...}}`                      |
//! | the function threw                              | 500 `{"error": {...}}`                      |
//! | `requiresAuth` without the server's token       | 401                                         |
//!
//! Wire (one design for every caller): the value is the one argument, `[value]`: the JSON body
//! (POST, PUT, PATCH) or the query string as a map of strings (GET, DELETE, HEAD). A function
//! that declares a second parameter also gets the request, `[value, {method, url, headers,
//! body}]` (src/run/web.ts builds the `Request` from it); callers cannot pass a second argument
//! (its arity is at most 1), so the container knows it came from here. A returned `Response`
//! comes back as CBOR tag [`WEB_RESPONSE_TAG`] over `[status, [[name, value], ...], body]`
//! (src/shared/cbor.ts `WireResponse`).
use std::collections::HashMap;

use berth_core::{Command, InputId};
use berth_proto::v1::{self as pb, result::Outcome};
use ciborium::Value as Cbor;
use hyper::body::Incoming;
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use serde_json::json;
use tokio::sync::oneshot;

use super::json::{cbor_to_json, json_to_cbor};
use super::{answer, fail, json_answer, percent_decode, refused, request_body, Answer, Ctx};
use crate::auth::token_rule;
use crate::plane::{Registry, Shared, Waiter};

/// berth's own CBOR tag for a returned `Response` ('bert'; src/shared/cbor.ts WEB_RESPONSE_TAG).
pub(crate) const WEB_RESPONSE_TAG: u64 = 0x6265_7274;

/// One endpoint: what it calls and how it is reached.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    app: String,
    function: String,
    /// The class method's name; empty for a function.
    method: String,
    http: Method,
    requires_auth: bool,
    takes_request: bool,
    /// The path as printed: `/{app}/{label}`.
    path: String,
}

/// Every endpoint, by app and the decoded path after the app, built once when the ingress
/// starts: a request to an app without endpoints costs one map lookup.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    by_path: HashMap<(String, String), Route>,
    apps: HashMap<String, Vec<String>>,
}

impl Routes {
    pub(crate) fn new(reg: &Registry) -> Self {
        let mut routes = Self::default();
        for d in &reg.functions {
            for w in &d.web {
                let Some(name) = d.methods.get(w.index as usize) else { continue };
                let rest = match (&w.label, d.is_class) {
                    (Some(label), _) => label.clone(),
                    (None, true) => format!("{}/{name}", d.name),
                    (None, false) => d.name.clone(),
                };
                let Ok(http) = Method::from_bytes(w.method.as_bytes()) else { continue };
                let path = format!("/{}/{rest}", d.app);
                let route = Route {
                    app: d.app.clone(),
                    function: d.name.clone(),
                    method: if d.is_class { name.clone() } else { String::new() },
                    http,
                    requires_auth: w.requires_auth,
                    takes_request: w.takes_request,
                    path,
                };
                // Two endpoints at one path are refused when the app is served
                // (src/define/served.ts); the first one wins here.
                if let std::collections::hash_map::Entry::Vacant(v) = routes.by_path.entry((d.app.clone(), rest)) {
                    routes.apps.entry(d.app.clone()).or_default().push(format!("{} {}", route.http, route.path));
                    v.insert(route);
                }
            }
        }
        routes
    }

    /// A listing's entry (`GET /{app}`, http/mod.rs) for a web endpoint: its own path, and the
    /// method and body it takes instead of a JSON array of arguments.
    pub(crate) fn listed(&self, app: &str, mut entry: serde_json::Value) -> serde_json::Value {
        if !self.apps.contains_key(app) {
            return entry;
        }
        let name = |k: &str| entry.get(k).and_then(serde_json::Value::as_str).unwrap_or("").to_owned();
        let (function, method) = (name("function"), name("method"));
        if let Some(r) = self.by_path.values().find(|r| r.app == app && r.function == function && r.method == method) {
            let takes = if matches!(r.http, Method::GET | Method::DELETE) { "the query" } else { "a JSON body" };
            entry["path"] = json!(r.path);
            entry["web"] = json!({ "method": r.http.as_str(), "takes": takes, "requiresAuth": r.requires_auth });
        }
        entry
    }

    /// The endpoint at `path`, or whether the path is under an app with endpoints.
    fn find(&self, path: &str) -> Found<'_> {
        if self.by_path.is_empty() {
            return Found::Nothing;
        }
        let Some((app, rest)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return Found::Nothing;
        };
        let Some(app) = percent_decode(app) else { return Found::Nothing };
        let Some(list) = self.apps.get(&app) else { return Found::Nothing };
        let rest: Option<Vec<String>> = rest.split('/').map(percent_decode).collect();
        match rest.and_then(|r| self.by_path.get(&(app, r.join("/")))) {
            Some(route) => Found::Route(route),
            None => Found::UnderApp(list),
        }
    }
}

enum Found<'a> {
    Route(&'a Route),
    /// No endpoint at the path, in an app with these (`GET /app/health`, ...).
    UnderApp(&'a [String]),
    Nothing,
}

/// Answers a request for a web endpoint; hands any other back for the RPC routes.
pub(super) async fn serve(ctx: &Ctx, req: Request<Incoming>) -> Result<Answer, Request<Incoming>> {
    let route = match ctx.web.find(req.uri().path()) {
        Found::Nothing => return Err(req),
        Found::UnderApp(endpoints) => {
            // An RPC route of the app (`POST /app/function`) is still served; anything else
            // is unknown, and the answer names what the app has.
            if rpc_route(ctx.svc.registry(), req.uri().path()) {
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
        Found::Route(route) => route,
    };
    if req.method() != route.http && !(route.http == Method::GET && req.method() == Method::HEAD) {
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
    Ok(call(ctx, route, req).await)
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

/// Tells the scheduler to cancel the input when the request is dropped before its answer (the
/// client went away): its signal aborts, as for a cancelled call.
struct CancelOnDrop<'a> {
    shared: &'a Shared,
    input: Option<InputId>,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(input) = self.input {
            let _ = self.shared.commands.send(Command::Cancel(vec![input]));
        }
    }
}

async fn call(ctx: &Ctx, route: &Route, req: Request<Incoming>) -> Answer {
    let (head, body) = req.into_parts();
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
        args.push(request_meta(&head, body));
    }
    let mut bytes = Vec::new();
    // Writing a Value to a Vec does not fail.
    let _ = ciborium::into_writer(&Cbor::Array(args), &mut bytes);

    let f = pb::FunctionRef {
        app: route.app.clone(),
        function: route.function.clone(),
        method: route.method.clone(),
        params: Vec::new(),
    };
    let target = match ctx.svc.resolve(Some(&f)) {
        Ok(t) => t,
        Err(status) => return refused(&status),
    };
    let fc = ctx.svc.new_call_id();
    let (tx, rx) = oneshot::channel();
    let input = ctx.svc.submit_many(target.pool, target.method, fc.clone(), vec![(bytes, Waiter::Call(tx))], false);
    let mut guard = CancelOnDrop { shared: &ctx.svc.shared, input: Some(input) };
    let result =
        rx.await.unwrap_or_else(|_| crate::plane::error("Error", "the control plane stopped before the result"));
    guard.input = None;

    let mut res = answer_result(result);
    if let Ok(v) = HeaderValue::from_str(&fc) {
        res.headers_mut().insert("x-berth-function-call-id", v);
    }
    res
}

fn answer_result(result: pb::Result) -> Answer {
    if let Some(message) = crate::plane::queue_full(&result) {
        let mut res = fail(StatusCode::TOO_MANY_REQUESTS, berth_core::failure::QUEUE_FULL, message);
        res.headers_mut().insert(header::RETRY_AFTER, super::retry_after());
        return res;
    }
    match result.outcome {
        Some(Outcome::Value(bytes)) => match ciborium::from_reader::<Cbor, _>(bytes.as_slice()) {
            Ok(Cbor::Tag(WEB_RESPONSE_TAG, inner)) => passthrough(*inner),
            Ok(v) => json_answer(StatusCode::OK, &cbor_to_json(&v)),
            Err(e) => fail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SerializationError",
                format!("the function's result is not valid CBOR: {e}"),
            ),
        },
        Some(Outcome::Error(pb::Error { name, message, stack })) => {
            // A request past its timeout is the gateway's timeout, not the function's error.
            let status = if name == "FunctionTimeoutError" {
                StatusCode::GATEWAY_TIMEOUT
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            json_answer(status, &json!({ "error": { "name": name, "message": message, "stack": stack } }))
        }
        None => fail(StatusCode::INTERNAL_SERVER_ERROR, "Error", "the container sent an empty result"),
    }
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

/// What src/run/web.ts builds the `Request` from: method, absolute URL, headers, body bytes.
fn request_meta(head: &hyper::http::request::Parts, body: Vec<u8>) -> Cbor {
    let host = head.headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("localhost");
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
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

/// A returned `Response`, `[status, [[name, value], ...], body]`, as the HTTP answer.
fn passthrough(inner: Cbor) -> Answer {
    let bad = |what: &str| {
        fail(StatusCode::INTERNAL_SERVER_ERROR, "SerializationError", format!("the returned Response {what}"))
    };
    let Cbor::Array(parts) = inner else { return bad("is not [status, headers, body]") };
    let [Cbor::Integer(status), Cbor::Array(headers), body] =
        <[Cbor; 3]>::try_from(parts).unwrap_or([Cbor::Null, Cbor::Null, Cbor::Null])
    else {
        return bad("is not [status, headers, body]");
    };
    let Some(status) = u16::try_from(status).ok().and_then(|s| StatusCode::from_u16(s).ok()) else {
        return bad("has a status outside 100..999");
    };
    let body = match body {
        Cbor::Bytes(b) => b,
        Cbor::Null => Vec::new(),
        _ => return bad("body is not bytes"),
    };
    let mut res = answer(status, "application/octet-stream", body);
    res.headers_mut().remove(header::CONTENT_TYPE);
    for h in headers {
        let Cbor::Array(kv) = h else { continue };
        let [Cbor::Text(k), Cbor::Text(v)] = kv.as_slice() else { continue };
        // The body is whole here: hyper frames it and sets its length itself.
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) else { continue };
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        res.headers_mut().append(name, value);
    }
    res
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
        }
    }

    fn web(index: u32, method: &str, label: Option<&str>) -> WebSpec {
        WebSpec {
            index,
            method: method.into(),
            label: label.map(Into::into),
            requires_auth: false,
            takes_request: false,
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
        let Found::Route(r) = routes.find("/shop/Model/predict") else { panic!("no route") };
        assert_eq!((r.function.as_str(), r.method.as_str(), &r.http), ("Model", "predict", &Method::POST));
        let Found::Route(r) = routes.find("/shop/healthy") else { panic!("no route") };
        assert_eq!((r.function.as_str(), r.method.as_str(), &r.http), ("health", "", &Method::GET));
        // An escaped path finds the same endpoint.
        assert!(matches!(routes.find("/sh%6Fp/healthy"), Found::Route(_)));
        let Found::UnderApp(list) = routes.find("/shop/nope") else { panic!("not under the app") };
        assert_eq!(list, ["POST /shop/Model/predict", "GET /shop/healthy"]);
        assert!(matches!(routes.find("/other/f"), Found::Nothing));
        assert!(matches!(routes.find("/shop"), Found::Nothing));
        assert!(rpc_route(&reg, "/shop/square") && rpc_route(&reg, "/shop/Model/load_info"));
        assert!(!rpc_route(&reg, "/shop/nope") && !rpc_route(&reg, "/shop/Model"));
        assert!(matches!(Routes::new(&Registry { functions: Vec::new() }).find("/a/b"), Found::Nothing));
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
        let res = passthrough(Cbor::Array(vec![
            Cbor::Integer(201.into()),
            Cbor::Array(vec![
                Cbor::Array(vec![Cbor::Text("x-made-by".into()), Cbor::Text("berth".into())]),
                Cbor::Array(vec![Cbor::Text("content-type".into()), Cbor::Text("text/plain".into())]),
                Cbor::Array(vec![Cbor::Text("content-length".into()), Cbor::Text("99".into())]),
            ]),
            Cbor::Bytes(b"x".to_vec()),
        ]));
        assert_eq!(res.status(), StatusCode::CREATED);
        assert_eq!(res.headers()["x-made-by"], "berth");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "text/plain");
        assert!(res.headers().get(header::CONTENT_LENGTH).is_none());
        assert_eq!(passthrough(Cbor::Null).status(), StatusCode::INTERNAL_SERVER_ERROR);
        let timeout = answer_result(pb::Result {
            outcome: Some(Outcome::Error(pb::Error {
                name: "FunctionTimeoutError".into(),
                message: "past 1s".into(),
                stack: String::new(),
            })),
        });
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
