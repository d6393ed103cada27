//! The HTTP side: Kubernetes API paths to store verbs, counters, the request log, injected
//! faults and latency, and `Status` bodies for errors.
use super::patch::url_decode;
use super::resource::{namespaced, ApiError, ApiResult, Key};
use super::{FaultKind, RequestRecord, Shared};
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::Arc;

/// What a URL names: `/api/v1/...` (core) or `/apis/{group}/{version}/...`.
#[derive(Debug)]
struct Target {
    gv: String,
    plural: String,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_start_matches('/').trim_end_matches('/').split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    let (gv, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => return None,
    };
    let t = |ns: Option<&str>, plural: &str, name: Option<&str>, sub: Option<&str>| Target {
        gv: gv.clone(),
        plural: plural.into(),
        ns: ns.map(Into::into),
        name: name.map(Into::into),
        sub: sub.map(Into::into),
    };
    let target = match rest {
        // A namespace's own subresource, not a collection in it.
        ["namespaces", name, sub] if gv == "v1" && (*sub == "status" || *sub == "finalize") => {
            t(None, "namespaces", Some(name), Some(sub))
        }
        ["namespaces", ns, plural] => t(Some(ns), plural, None, None),
        ["namespaces", ns, plural, name] => t(Some(ns), plural, Some(name), None),
        ["namespaces", ns, plural, name, sub] => t(Some(ns), plural, Some(name), Some(sub)),
        [plural] => t(None, plural, None, None),
        [plural, name] => t(None, plural, Some(name), None),
        [plural, name, sub] => t(None, plural, Some(name), Some(sub)),
        _ => return None,
    };
    // A namespaced kind named without a namespace (or the reverse) is no route, except to
    // list across namespaces.
    match namespaced(&target.plural) {
        Some(true) if target.ns.is_none() && target.name.is_some() => None,
        Some(false) if target.ns.is_some() => None,
        _ => Some(target),
    }
}

/// The verb a request counts as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    List,
    Create,
    Apply,
    Patch,
    Replace,
    Delete,
    Other,
}

fn verb(method: &Method, target: Option<&Target>, content_type: Option<&str>) -> Verb {
    let one = target.is_some_and(|t| t.name.is_some());
    match *method {
        Method::GET if one => Verb::Get,
        Method::GET if target.is_some() => Verb::List,
        Method::POST => Verb::Create,
        Method::PATCH if content_type.is_some_and(|c| c.starts_with("application/apply-patch")) => Verb::Apply,
        Method::PATCH => Verb::Patch,
        Method::PUT => Verb::Replace,
        Method::DELETE => Verb::Delete,
        _ => Verb::Other,
    }
}

fn respond(code: u16, body: &Value) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (code, [(CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if code == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(RETRY_AFTER, "1".parse().expect("a valid header value"));
    }
    resp
}

fn fault_error(code: u16) -> ApiError {
    let reason = match code {
        409 => "Conflict",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    };
    ApiError::new(code, reason, format!("injected fault: {reason}"))
}

pub(crate) async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let target_str = req.uri().path_and_query().map_or(path.clone(), |p| p.as_str().to_owned());
    let content_type = req.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let target = parse_path(&path);
    let verb = verb(&method, target.as_ref(), content_type.as_deref());
    let (latency, fault) = {
        let mut st = shared.lock();
        st.calls.count(verb);
        let fault = st.faults.iter_mut().find(|f| {
            f.times > 0 && f.method.as_ref().is_none_or(|m| *m == method) && target_str.contains(&f.path_contains)
        });
        let kind = fault.map(|f| {
            f.times -= 1;
            f.kind
        });
        st.faults.retain(|f| f.times > 0);
        (st.latency, kind)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let result = match fault {
        Some(FaultKind::Status(code)) => Err(fault_error(code)),
        Some(FaultKind::Timeout(d)) => {
            tokio::time::sleep(d).await;
            Err(ApiError::new(504, "Timeout", "injected fault: the request timed out"))
        }
        None => match axum::body::to_bytes(req.into_body(), 64 << 20).await {
            Ok(body) => {
                let mut st = shared.lock();
                serve(&mut st, &method, &path, target, &query, content_type.as_deref(), &body)
            }
            Err(e) => Err(ApiError::bad_request(format!("reading the body: {e}"))),
        },
    };
    let (code, body) = match result {
        Ok(ok) => ok,
        Err(e) => (e.code, e.status()),
    };
    shared.lock().requests.push(RequestRecord { method, target: target_str, content_type, status: code });
    if code < 300 && !matches!(verb, Verb::Get | Verb::List | Verb::Other) {
        shared.wake.notify_one();
    }
    respond(code, &body)
}

fn serve(
    st: &mut super::store::State,
    method: &Method,
    path: &str,
    target: Option<Target>,
    query: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> ApiResult<(u16, Value)> {
    if path == "/version" {
        return Ok((
            200,
            json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-fake", "platform": "linux/amd64"}),
        ));
    }
    let t = target.ok_or_else(|| ApiError::new(404, "NotFound", "the server could not find the requested resource"))?;
    let params: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (url_decode(k), url_decode(v)))
        .collect();
    let param = |k: &str| params.iter().find(|p| p.0 == k).map(|p| p.1.as_str());
    if param("watch").is_some_and(|w| w == "true" || w == "1") {
        return Err(ApiError::bad_request("the fake API server does not support watches"));
    }
    if param("dryRun").is_some() {
        return Err(ApiError::bad_request("the fake API server does not support dryRun"));
    }
    let status = match t.sub.as_deref() {
        None => false,
        Some("status") => true,
        Some(other) => return Err(ApiError::new(404, "NotFound", format!("the fake has no subresource {other}"))),
    };
    let json_body = || -> ApiResult<Value> {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))
    };
    let manager = param("fieldManager").unwrap_or("unknown");
    let ns = t.ns.as_deref();
    let Some(name) = t.name.as_deref() else {
        return match *method {
            Method::GET => Ok((200, st.list(&t.gv, &t.plural, ns, param("labelSelector")))),
            Method::POST => Ok((201, st.create(&t.gv, &t.plural, ns, json_body()?, manager)?)),
            _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} on a collection is not supported"))),
        };
    };
    let key = Key::new(&t.gv, &t.plural, ns, name);
    match *method {
        Method::GET => Ok((200, st.get(&key)?)),
        Method::PUT => Ok((200, st.replace(&key, json_body()?, manager, status)?)),
        Method::DELETE => st.delete(&key),
        Method::PATCH => match content_type.unwrap_or_default().split(';').next().unwrap_or_default().trim() {
            "application/apply-patch+yaml" => {
                let manager = param("fieldManager").ok_or_else(|| {
                    ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
                })?;
                let force = param("force") == Some("true");
                let body = serde_json::from_slice(body)
                    .map_err(|e| ApiError::bad_request(format!("the fake reads apply bodies as JSON only: {e}")))?;
                let (created, obj) = st.apply(&key, body, manager, force, status)?;
                Ok((if created { 201 } else { 200 }, obj))
            }
            "application/merge-patch+json" => Ok((200, st.patch(&key, &json_body()?, false, manager, status)?)),
            "application/json-patch+json" => Ok((200, st.patch(&key, &json_body()?, true, manager, status)?)),
            other => {
                Err(ApiError::new(415, "UnsupportedMediaType", format!("the fake does not support PATCH as {other:?}")))
            }
        },
        _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported"))),
    }
}
