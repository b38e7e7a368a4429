//! `POST /v1/batch`: several operations in one request, each dispatched in-process through
//! the whole application (request ids, API-Version, rate limits, validation, routes), so a
//! batch operation is exactly the request it stands for, authenticated as the caller.

use std::sync::{Arc, OnceLock, Weak};

use agentplane_api::Json;
use agentplane_api::models::{BatchOperation, BatchOperationResult, BatchResult};
use agentplane_api::{RunBatchParams, RunBatchResponse};
use poem::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use poem::{Endpoint, Request, Response};
use serde_json::Value;

use super::AppEndpoint;
use crate::auth::Caller;
use crate::error::{Kind, detail, envelope};

/// Where batch operations go: the application, once assembled.
#[derive(Clone, Default)]
pub struct Dispatcher(Arc<OnceLock<Weak<AppEndpoint>>>);

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Dispatcher")
    }
}

impl Dispatcher {
    /// Points the dispatcher at the application (once; later calls are ignored).
    pub fn set(&self, app: &Arc<AppEndpoint>) {
        let _ = self.0.set(Arc::downgrade(app));
    }

    fn app(&self) -> Option<Arc<AppEndpoint>> {
        self.0.get().and_then(Weak::upgrade)
    }
}

/// Headers a batch operation cannot set: credentials are the batch's own, the rest belong
/// to the connection or the encoding of the outer request.
const RESERVED: &[&str] = &[
    "authorization",
    "x-api-key",
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "accept-encoding",
    "content-encoding",
    "x-request-id",
];

/// Decodes `%XX` escapes, so `/v1/%62atch` is recognised as the batch route.
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(hi * 16 + lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a batch operation targets the batch route itself.
fn is_batch_route(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    percent_decoded(path).trim_end_matches('/') == "/v1/batch"
}

/// A failed operation that was never dispatched.
fn refused(op: &BatchOperation, rid: &str, field: &str, message: &str) -> BatchOperationResult {
    let body = envelope(
        Kind::BadRequest,
        "INVALID_BATCH_OPERATION",
        message,
        vec![detail(field, "invalid", message)],
        rid,
    );
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(
        "content-type".to_string(),
        "application/json; charset=utf-8".to_string(),
    );
    BatchOperationResult {
        id: op.id.clone(),
        status: 400,
        headers,
        body: poem_openapi::types::ToJSON::to_json(&body).unwrap_or_default(),
    }
}

/// The request an operation stands for, or why it cannot be one.
fn build(op: &BatchOperation, caller: &Caller, rid: &str) -> Result<Request, (String, String)> {
    let method = Method::from_bytes(op.method.as_str().as_bytes())
        .map_err(|_| ("method".to_string(), "not an HTTP method".to_string()))?;
    let uri: Uri = op
        .path
        .parse()
        .map_err(|_| ("path".to_string(), "not a valid path and query".to_string()))?;
    let mut req = Request::builder().method(method).uri(uri).finish();
    let headers = req.headers_mut();
    for (name, value) in op.headers.iter().flatten() {
        let lower = name.to_ascii_lowercase();
        if RESERVED.contains(&lower.as_str()) {
            continue;
        }
        let field = format!("headers.{name}");
        let name = HeaderName::from_bytes(lower.as_bytes())
            .map_err(|_| (field.clone(), "not a valid header name".to_string()))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| (field, "not a valid header value".to_string()))?;
        headers.append(name, value);
    }
    let bearer =
        HeaderValue::from_str(&format!("Bearer {}", caller.credential.0)).map_err(|_| {
            (
                "headers".to_string(),
                "the credentials cannot be forwarded".to_string(),
            )
        })?;
    headers.insert(header::AUTHORIZATION, bearer);
    if let Ok(v) = HeaderValue::from_str(rid) {
        headers.insert("x-request-id", v);
    }
    if let Some(body) = &op.body {
        if !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        req.set_body(body.to_string());
    }
    Ok(req)
}

/// An answer as a batch result.
async fn result_of(op: &BatchOperation, resp: Response) -> BatchOperationResult {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let bytes = resp.into_body().into_bytes().await.unwrap_or_default();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    BatchOperationResult {
        id: op.id.clone(),
        status: i64::from(status),
        headers,
        body,
    }
}

impl super::Handlers {
    pub(super) async fn run_batch_operations(
        &self, caller: Caller, params: RunBatchParams,
    ) -> RunBatchResponse {
        let Some(app) = self.dispatcher.app() else {
            let body = envelope(
                Kind::Unavailable,
                "SERVICE_UNAVAILABLE",
                "batches cannot be dispatched right now; retry later",
                Vec::new(),
                &caller.request_id,
            );
            return RunBatchResponse::ServiceUnavailable(Json(body));
        };
        let mut results = Vec::with_capacity(params.body.operations.len());
        for (i, op) in params.body.operations.iter().enumerate() {
            let rid = format!("{}.{}", caller.request_id, i + 1);
            if is_batch_route(&op.path) {
                results.push(refused(
                    op,
                    &rid,
                    &format!("operations[{i}].path"),
                    "a batch cannot contain a batch",
                ));
                continue;
            }
            let req = match build(op, &caller, &rid) {
                Ok(req) => req,
                Err((field, message)) => {
                    results.push(refused(
                        op,
                        &rid,
                        &format!("operations[{i}].{field}"),
                        &message,
                    ));
                    continue;
                }
            };
            let resp = match app.call(req).await {
                Ok(resp) => resp,
                Err(e) => {
                    let status = e.status();
                    let mut resp = e.into_response();
                    if status.is_server_error() {
                        resp.set_status(StatusCode::SERVICE_UNAVAILABLE);
                    }
                    resp
                }
            };
            results.push(result_of(op, resp).await);
        }
        RunBatchResponse::Ok(Json(BatchResult { results }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_route_is_recognised_however_spelled() {
        for p in ["/v1/batch", "/v1/batch/", "/v1/%62atch", "/v1/batch?x=1"] {
            assert!(is_batch_route(p), "{p}");
        }
        for p in [
            "/v1/batches",
            "/v1/agents",
            "/v1/agents?path=/v1/batch",
            "/v1/%zz",
        ] {
            assert!(!is_batch_route(p), "{p}");
        }
    }
}
