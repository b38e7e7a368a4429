//! Validation proxy (`--proxy <upstream>`): forward each request to a real server and judge
//! both directions against the spec.
//!
//! The request is judged by the same [`RequestValidator`](crate::validate::RequestValidator)
//! the mock uses; the response by the conformance harness's own single-exchange checks
//! (`status_code_conformance`, `content_type_conformance`, `response_headers_conformance`,
//! `response_schema_conformance`), so a proxy verdict and a `conform` verdict never differ.
//! Violations go into the `sl-violations` header (a JSON array, as Prism's proxy writes it)
//! and to the log; with `--errors` they fail the exchange instead.

use bytes::Bytes;
use serde_json::{Value, json};

use super::answer::{self, Answer};
use super::compile::MockOperation;
use crate::checks::{self, CaseKind, CheckContext, Verdict};
use crate::response::Exchange;
use crate::validate::Violation;

/// The checks a proxied response goes through.
pub const RESPONSE_CHECKS: &[&str] = &[
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
];

/// Hop-by-hop and recomputed headers that are not forwarded (and `accept-encoding`, so that
/// the upstream answers a body the checks can read).
const SKIPPED: &[&str] = &[
    "accept-encoding",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// A request to forward.
pub struct Outgoing<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// One violation as the `sl-violations` header lists it.
pub fn violation_json(direction: &str, location: &str, code: &str, message: &str) -> Value {
    json!({
        "location": [direction, location],
        "severity": "Error",
        "code": code,
        "message": message,
    })
}

/// Request violations in the header's shape.
pub fn request_violations(violations: &[Violation]) -> Vec<Value> {
    violations
        .iter()
        .map(|v| {
            violation_json(
                "request",
                &format!("{}.{}", v.location.as_str(), v.field),
                &v.code,
                &v.message,
            )
        })
        .collect()
}

/// Sends `out` to `upstream`; a network failure is a 502 problem.
pub async fn forward(
    client: &reqwest::Client, upstream: &str, out: Outgoing<'_>,
) -> Result<Answer, Answer> {
    let url = format!("{}{}", upstream.trim_end_matches('/'), out.path_and_query);
    let method = reqwest::Method::from_bytes(out.method.as_bytes())
        .map_err(|_| answer::problem(400, "Bad Request", "unknown method", &[]))?;
    let mut request = client.request(method, &url);
    for (k, v) in &out.headers {
        if !SKIPPED.contains(&k.to_ascii_lowercase().as_str()) {
            request = request.header(k, v);
        }
    }
    if !out.body.is_empty() {
        request = request.body(out.body);
    }
    let response = request.send().await.map_err(|e| {
        answer::problem(
            502,
            "Bad Gateway",
            &format!("the upstream {upstream} did not answer: {e}"),
            &[],
        )
    })?;
    let status = response.status().as_u16();
    let mut headers = Vec::new();
    let mut content_type = None;
    for (k, v) in response.headers() {
        let name = k.as_str().to_ascii_lowercase();
        let Ok(value) = v.to_str() else { continue };
        if name == "content-type" {
            content_type = Some(value.to_string());
        } else if !SKIPPED.contains(&name.as_str()) {
            headers.push((name, value.to_string()));
        }
    }
    let body = response.bytes().await.map_err(|e| {
        answer::problem(
            502,
            "Bad Gateway",
            &format!("the upstream {upstream} broke off its answer: {e}"),
            &[],
        )
    })?;
    Ok(Answer {
        status,
        headers,
        content_type,
        body,
    })
}

/// Judges an upstream answer against `op`'s documented responses.
pub fn judge_response(op: &MockOperation, method: &str, url: &str, answer: &Answer) -> Vec<Value> {
    let mut headers = answer.headers.clone();
    if let Some(ct) = &answer.content_type {
        headers.push(("content-type".into(), ct.clone()));
    }
    let exchange = Exchange {
        method: method.to_string(),
        url: url.to_string(),
        request_headers: Vec::new(),
        request_body: None,
        status: answer.status,
        headers,
        body: answer.body.to_vec(),
        elapsed: std::time::Duration::ZERO,
    };
    let label = op.label();
    let ctx = CheckContext {
        operation: &label,
        responses: &op.responses,
        kind: CaseKind::Positive,
        exchange: &exchange,
        follow_up: None,
        positive_statuses: &[],
        before: None,
        pages: &[],
        path_methods: &[],
        without_credentials: false,
        max_response_time: None,
    };
    checks::ALL
        .iter()
        .filter(|c| RESPONSE_CHECKS.contains(&c.name))
        .filter_map(|c| match (c.run)(&ctx) {
            Verdict::Fail(message) => Some(violation_json("response", c.name, c.name, &message)),
            _ => None,
        })
        .collect()
}
