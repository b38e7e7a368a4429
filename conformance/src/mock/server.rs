//! The poem endpoint: every request goes through one handler that routes by the compiled
//! trie, validates, and answers from the precomputed responses (or the store, or upstream).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use poem::http::{HeaderName, HeaderValue, StatusCode};
use poem::{Body, Endpoint, Request, Response};
use serde_json::Value;

use super::Shared;
use super::answer::{self, Answer, Prefer};
use super::compile::{Credential, MockOperation, MockSpec};
use super::proxy;
use super::state::Call;
use crate::validate::{Location, Outcome, Request as Checked, Violation};

/// The mock as a poem endpoint.
pub struct MockEndpoint {
    pub(super) shared: Arc<Shared>,
}

impl Endpoint for MockEndpoint {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let shared = &self.shared;
        if let Some(delay) = &shared.options.delay {
            let n = shared.counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(delay.pick(n as u64)).await;
        }
        let origin = header(&req, "origin");
        let spec = shared.spec();
        let method = req.method().as_str().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or("").to_string();
        if shared.options.cors
            && method == "OPTIONS"
            && header(&req, "access-control-request-method").is_some()
        {
            return Ok(preflight(&spec, &req, &path, origin.as_deref()));
        }
        let headers: Vec<(String, String)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let body = req.into_body().into_bytes().await.unwrap_or_default();
        let answer = handle(shared, &spec, &method, &path, &query, &headers, body).await;
        Ok(finish(answer, shared.options.cors, origin.as_deref()))
    }
}

fn header(req: &Request, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn lookup<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Whether the request carries the credentials one of the operation's alternatives needs.
fn authenticated(op: &MockOperation, headers: &[(String, String)], query: &str) -> bool {
    if op.security.is_empty() {
        return true;
    }
    let pairs = crate::router::parse_query(query);
    let cookies = lookup(headers, "cookie").unwrap_or("");
    op.security.iter().any(|alternative| {
        alternative.iter().all(|c| match c {
            Credential::Header(name) => lookup(headers, name).is_some_and(|v| !v.trim().is_empty()),
            Credential::Query(name) => pairs.iter().any(|(k, v)| k == name && !v.is_empty()),
            Credential::Cookie(name) => cookies
                .split(';')
                .any(|kv| kv.trim().split_once('=').is_some_and(|(k, _)| k == name)),
        })
    })
}

/// Who is calling, for stateful mode: the value of the first credential the request carries
/// for the operation (empty for an unsecured one), so that each identity has its own data.
fn tenant(op: &MockOperation, headers: &[(String, String)], query: &str) -> String {
    let pairs = crate::router::parse_query(query);
    op.security
        .iter()
        .flatten()
        .find_map(|c| match c {
            Credential::Header(name) => lookup(headers, name).map(str::to_string),
            Credential::Query(name) => pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone()),
            Credential::Cookie(name) => lookup(headers, "cookie").and_then(|c| {
                c.split(';').find_map(|kv| {
                    let (k, v) = kv.trim().split_once('=')?;
                    (k == name).then(|| v.to_string())
                })
            }),
        })
        .unwrap_or_default()
}

async fn handle(
    shared: &Shared, spec: &MockSpec, method: &str, path: &str, query: &str,
    headers: &[(String, String)], body: Bytes,
) -> Answer {
    let outcome = {
        let header_fn = |name: &str| lookup(headers, name).map(str::to_string);
        let checked = Checked {
            method,
            path,
            query,
            header: &header_fn,
            body: &body,
        };
        spec.validator.validate(&checked)
    };
    if let Some(upstream) = &shared.options.proxy {
        return proxied(
            shared, spec, upstream, outcome, method, path, query, headers, body,
        )
        .await;
    }
    let (operation, parsed) = match outcome {
        Outcome::NoRoute => {
            return answer::problem(
                404,
                "Not Found",
                &format!("no operation of the spec matches {path}"),
                &[],
            );
        }
        Outcome::MethodNotAllowed { allow } => {
            let mut answer = answer::problem(
                405,
                "Method Not Allowed",
                &format!("{path} documents {}", allow.join(", ")),
                &[],
            );
            answer.set_header("Allow", allow.join(", "));
            return answer;
        }
        Outcome::Invalid {
            operation,
            status,
            violations,
        } => {
            let op = spec.operation(&operation.pointer);
            if let Some(op) = op
                && !authenticated(op, headers, query)
            {
                return unauthenticated(op);
            }
            let detail = summary(&violations);
            return answer::error(op, status, title_of(status), &detail, &violations);
        }
        Outcome::Valid { operation, body } => (operation, body),
    };
    let Some(op) = spec.operation(&operation.pointer) else {
        return answer::problem(500, "Internal Server Error", "operation not compiled", &[]);
    };
    if !authenticated(op, headers, query) {
        return unauthenticated(op);
    }
    let prefer = match Prefer::parse(lookup(headers, "prefer")) {
        Ok(p) => p,
        Err(e) => {
            let v = Violation {
                location: Location::Header,
                field: "Prefer".into(),
                code: "prefer".into(),
                message: e.clone(),
            };
            return answer::problem(400, "Bad Request", &e, &[v]);
        }
    };
    let dynamic = prefer.dynamic.unwrap_or(shared.options.dynamic);
    let accept = lookup(headers, "accept");
    // Only dynamic draws advance the sequence, so that a seed replays the same answers
    // whatever static requests come in between.
    let counter = if dynamic {
        shared.draws.fetch_add(1, Ordering::Relaxed)
    } else {
        0
    };
    if shared.options.stateful && prefer.code.is_none() && prefer.example.is_none() {
        let fresh = if dynamic {
            op.success.and_then(|i| {
                let entry = &op.entries[i];
                let media = entry.negotiate(Some("application/json"))?;
                spec.generate(op, &entry.key, media, shared.options.seed, counter)
            })
        } else {
            None
        };
        let call = Call {
            tenant: tenant(op, headers, query),
            path,
            query,
            body: parsed.as_ref(),
            accept,
            if_match: lookup(headers, "if-match"),
            if_none_match: lookup(headers, "if-none-match"),
            fresh,
        };
        if let Some(answer) = shared.store.answer(spec, op, &call) {
            return answer;
        }
    }
    respond(shared, spec, op, &prefer, dynamic, accept, counter)
}

/// The reason phrase of a status, as a problem's title.
fn title_of(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

fn summary(violations: &[Violation]) -> String {
    let parts: Vec<String> = violations
        .iter()
        .map(|v| format!("{} {}: {}", v.location.as_str(), v.field, v.code))
        .collect();
    format!("the request breaks the spec: {}", parts.join("; "))
}

fn unauthenticated(op: &MockOperation) -> Answer {
    let mut answer = answer::error(
        Some(op),
        401,
        "Unauthorized",
        "the operation needs credentials and the request carries none",
        &[],
    );
    if !answer
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("www-authenticate"))
    {
        answer.set_header("WWW-Authenticate", "Bearer".into());
    }
    answer
}

/// The stateless answer: the preferred or documented success response, static or fresh.
fn respond(
    shared: &Shared, spec: &MockSpec, op: &MockOperation, prefer: &Prefer, dynamic: bool,
    accept: Option<&str>, counter: usize,
) -> Answer {
    let (mut entry, mut status) = match prefer.code {
        Some(code)
            if code >= 400 && prefer.example.is_none() && !dynamic && op.entry(code).is_some() =>
        {
            // An error asked for by name: the documented body, filled in like a real one.
            let title = title_of(code);
            return answer::error(
                Some(op),
                code,
                title,
                &format!("{title} (asked for with Prefer: code={code})"),
                &[],
            );
        }
        Some(code) => match op.entry(code) {
            Some(entry) => (entry, code),
            None => {
                let documented: Vec<&str> = op.entries.iter().map(|e| e.key.as_str()).collect();
                return answer::problem(
                    400,
                    "Bad Request",
                    &format!(
                        "Prefer: code={code} is not documented for {} (documented: {})",
                        op.label(),
                        documented.join(", ")
                    ),
                    &[],
                );
            }
        },
        None => match op.success {
            Some(i) => (&op.entries[i], op.entries[i].status),
            None => return Answer::empty(if op.entries.is_empty() { 200 } else { 204 }),
        },
    };
    let mut media = entry.negotiate(accept);
    let mut body = media.map(|m| m.body.clone());
    if let Some(name) = &prefer.example {
        let found = std::iter::once(entry)
            .chain(op.entries.iter())
            .find_map(|e| {
                e.media.iter().find_map(|m| {
                    let (_, v) = m.examples.iter().find(|(n, _)| n == name)?;
                    Some((e, m, v))
                })
            });
        match found {
            Some((e, m, v)) => {
                if !std::ptr::eq(e, entry) {
                    status = e.status;
                }
                entry = e;
                media = Some(m);
                body = Some(super::compile::render(&m.media_type, v));
            }
            None => {
                let names: Vec<&str> = op
                    .entries
                    .iter()
                    .flat_map(|e| e.media.iter())
                    .flat_map(|m| m.examples.iter().map(|(n, _)| n.as_str()))
                    .collect();
                return answer::problem(
                    400,
                    "Bad Request",
                    &format!(
                        "Prefer: example={name} is not an example of {} (examples: {})",
                        op.label(),
                        names.join(", ")
                    ),
                    &[],
                );
            }
        }
    } else if dynamic
        && let Some(m) = media
        && let Some(v) = spec.generate(op, &entry.key, m, shared.options.seed, counter)
    {
        body = Some(super::compile::render(&m.media_type, &v));
    }
    match (media, body) {
        (Some(m), Some(b)) if !b.is_empty() => {
            Answer::documented(entry, status, Some(&m.media_type), b)
        }
        _ => Answer::documented(entry, status, None, Bytes::new()),
    }
}

#[expect(clippy::too_many_arguments, reason = "the request, taken apart once")]
async fn proxied(
    shared: &Shared, spec: &MockSpec, upstream: &str, outcome: Outcome<'_>, method: &str,
    path: &str, query: &str, headers: &[(String, String)], body: Bytes,
) -> Answer {
    let label = format!("{method} {path}");
    let mut violations = Vec::new();
    let mut op = None;
    match outcome {
        Outcome::NoRoute => violations.push(proxy::violation_json(
            "request",
            "path",
            "no_route",
            &format!("no operation of the spec matches {path}"),
        )),
        Outcome::MethodNotAllowed { allow } => violations.push(proxy::violation_json(
            "request",
            "method",
            "method_not_allowed",
            &format!("{path} documents {}", allow.join(", ")),
        )),
        Outcome::Invalid {
            operation,
            status,
            violations: found,
        } => {
            op = spec.operation(&operation.pointer);
            if shared.options.errors {
                return answer::error(op, status, title_of(status), &summary(&found), &found);
            }
            violations.extend(proxy::request_violations(&found));
        }
        Outcome::Valid { operation, .. } => op = spec.operation(&operation.pointer),
    }
    let path_and_query = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let out = proxy::Outgoing {
        method,
        path_and_query: &path_and_query,
        headers: headers.to_vec(),
        body,
    };
    let mut answer = match proxy::forward(&shared.client, upstream, out).await {
        Ok(a) => a,
        Err(a) => return a,
    };
    if let Some(op) = op {
        let url = format!("{}{path_and_query}", upstream.trim_end_matches('/'));
        violations.extend(proxy::judge_response(op, method, &url, &answer));
    }
    if violations.is_empty() {
        return answer;
    }
    for v in &violations {
        eprintln!(
            "agentplane mock: proxy violation {label}: {}: {}",
            v["location"]
                .as_array()
                .map(|l| l
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("."))
                .unwrap_or_default(),
            v["message"].as_str().unwrap_or_default()
        );
    }
    let list = Value::Array(violations);
    if shared.options.errors {
        let mut failed = answer::problem(
            502,
            "Bad Gateway",
            "the upstream answer breaks the spec",
            &[],
        );
        failed.set_header("sl-violations", list.to_string());
        return failed;
    }
    answer.set_header("sl-violations", list.to_string());
    answer
}

fn preflight(spec: &MockSpec, req: &Request, path: &str, origin: Option<&str>) -> Response {
    let methods = match spec.validator.route("__none__", path) {
        Err(Some(allow)) => allow.join(", "),
        _ => "GET, PUT, POST, DELETE, PATCH, HEAD".to_string(),
    };
    let requested = header(req, "access-control-request-headers").unwrap_or_else(|| "*".into());
    let mut answer = Answer::empty(204);
    answer.set_header("Access-Control-Allow-Methods", methods);
    answer.set_header("Access-Control-Allow-Headers", requested);
    answer.set_header("Access-Control-Max-Age", "86400".into());
    finish(answer, true, origin)
}

/// Turns an answer into a poem response, with CORS headers when on.
fn finish(answer: Answer, cors: bool, origin: Option<&str>) -> Response {
    let mut response = Response::builder()
        .status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    let mut exposed = Vec::new();
    for (k, v) in &answer.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v))
        {
            exposed.push(name.as_str().to_string());
            response = response.header(name, value);
        }
    }
    if let Some(ct) = &answer.content_type
        && let Ok(value) = HeaderValue::try_from(ct)
    {
        response = response.header(poem::http::header::CONTENT_TYPE, value);
    }
    if cors {
        match origin {
            Some(origin) => {
                if let Ok(value) = HeaderValue::try_from(origin) {
                    response = response
                        .header("access-control-allow-origin", value)
                        .header("access-control-allow-credentials", "true")
                        .header("vary", "Origin");
                }
            }
            None => response = response.header("access-control-allow-origin", "*"),
        }
        if !exposed.is_empty() {
            response = response.header("access-control-expose-headers", exposed.join(", "));
        }
    }
    response.body(Body::from_bytes(answer.body))
}
