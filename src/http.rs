//! HTTP plumbing around the generated routes: request ids, validation against the spec,
//! framework errors in the error envelope, access logs, and the documentation endpoints.

use std::sync::Arc;
use std::time::Instant;

use conformance::{Outcome, RequestValidator};
use poem::http::{HeaderValue, StatusCode, header};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

use crate::error::{Kind, detail, envelope};

/// The id of the request being handled, in the request's extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn json_response(status: StatusCode, body: &impl serde_like::ToJsonString) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json; charset=utf-8")
        .body(body.to_json_string())
}

/// Bridges generated poem-openapi types to JSON text.
mod serde_like {
    pub trait ToJsonString {
        fn to_json_string(&self) -> String;
    }

    impl<T: poem_openapi::types::ToJSON> ToJsonString for T {
        fn to_json_string(&self) -> String {
            self.to_json().map(|v| v.to_string()).unwrap_or_default()
        }
    }
}

fn error_response(
    status: StatusCode, code: &str, message: &str,
    details: Vec<agentplane_api::models::ErrorDetail>, rid: &str,
) -> Response {
    let kind = Kind::from_status(status.as_u16());
    json_response(status, &envelope(kind, code, message, details, rid))
}

fn valid_incoming_id(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

/// `X-Request-Id`, parsed once.
static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Outermost layer: gives every request an id (its own `X-Request-Id` when sane), puts it on
/// every response, turns framework errors into error envelopes, and logs the request.
pub struct RequestContext;

impl<E: Endpoint> Middleware<E> for RequestContext {
    type Output = RequestContextEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        RequestContextEndpoint(ep)
    }
}

pub struct RequestContextEndpoint<E>(E);

impl<E: Endpoint> Endpoint for RequestContextEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        let started = Instant::now();
        let rid = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_incoming_id(v))
            .map(str::to_string)
            .unwrap_or_else(|| crate::ids::new_id("req"));
        req.extensions_mut().insert(RequestId(rid.clone()));
        // What the access log names, kept only when it is written.
        let logged = tracing::enabled!(target: "agentplane::access", tracing::Level::INFO)
            .then(|| (req.method().clone(), req.uri().path().to_string()));
        let mut resp = match self.0.call(req).await {
            Ok(r) => r.into_response(),
            Err(e) => {
                let status = e.status();
                let (code, message) = match status {
                    StatusCode::NOT_FOUND => ("NOT_FOUND", "no such route".to_string()),
                    StatusCode::METHOD_NOT_ALLOWED => (
                        "METHOD_NOT_ALLOWED",
                        "the method is not allowed on this route".to_string(),
                    ),
                    s if s.is_server_error() => {
                        tracing::error!(error = %e, request_id = %rid, "unhandled error");
                        (
                            "INTERNAL_ERROR",
                            "the request could not be completed".to_string(),
                        )
                    }
                    _ => ("VALIDATION_ERROR", e.to_string()),
                };
                // Framework errors are always a client's fault or an outage: never a bare 500.
                let status = if status.is_server_error() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    status
                };
                error_response(status, code, &message, Vec::new(), &rid)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&rid) {
            resp.headers_mut().insert(X_REQUEST_ID.clone(), v);
        }
        if let Some((method, path)) = logged {
            tracing::info!(
                target: "agentplane::access",
                %method,
                path,
                status = resp.status().as_u16(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                request_id = %rid,
            );
        }
        Ok(resp)
    }
}

/// Validates every `/v1` request against the spec before any handler sees it.
pub struct SpecValidation(pub Arc<RequestValidator>);

impl<E: Endpoint> Middleware<E> for SpecValidation {
    type Output = SpecValidationEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        SpecValidationEndpoint {
            inner: ep,
            validator: self.0.clone(),
        }
    }
}

pub struct SpecValidationEndpoint<E> {
    inner: E,
    validator: Arc<RequestValidator>,
}

/// Bodies larger than this are refused before they are read whole.
const MAX_BODY: usize = 4 * 1024 * 1024;

impl<E: Endpoint> Endpoint for SpecValidationEndpoint<E> {
    type Output = Response;

    async fn call(&self, mut req: Request) -> poem::Result<Response> {
        if !req.uri().path().starts_with("/v1/") {
            return self.inner.call(req).await.map(IntoResponse::into_response);
        }
        let rid = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        let body = match req.take_body().into_bytes_limit(MAX_BODY).await {
            Ok(b) => b,
            Err(_) => {
                let message = format!("the body is unreadable or larger than {MAX_BODY} bytes");
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    &message,
                    vec![detail("body", "size", &message)],
                    &rid,
                ));
            }
        };
        let mut normalized: Option<String> = None;
        let outcome = {
            let headers = req.headers();
            // Bytes outside visible ASCII still reach the validator (and fail its patterns)
            // instead of passing as an absent header.
            let header = |name: &str| {
                headers
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let request = conformance::validate::Request {
                method: req.method().as_str(),
                path: &path,
                query: &query,
                header: &header,
                body: &body,
            };
            match self.validator.validate(&request) {
                Outcome::Valid {
                    body: Some(mut value),
                    ..
                } => {
                    // Typed decoding downstream reads `26.0` as not-an-integer; the spec says it is.
                    if conformance::validate::integral_floats_to_integers(&mut value) {
                        normalized = Some(value.to_string());
                    }
                    None
                }
                Outcome::Valid { .. } => None,
                Outcome::NoRoute => Some(error_response(
                    StatusCode::NOT_FOUND,
                    "NOT_FOUND",
                    "no such route",
                    Vec::new(),
                    &rid,
                )),
                Outcome::MethodNotAllowed { allow } => {
                    let mut resp = error_response(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "METHOD_NOT_ALLOWED",
                        &format!("allowed methods: {}", allow.join(", ")),
                        Vec::new(),
                        &rid,
                    );
                    if let Ok(v) = HeaderValue::from_str(&allow.join(", ")) {
                        resp.headers_mut().insert(header::ALLOW, v);
                    }
                    Some(resp)
                }
                Outcome::Invalid {
                    status, violations, ..
                } => {
                    let details = violations
                        .iter()
                        .map(|v| detail(&v.field, &v.code, &v.message))
                        .collect();
                    let (status, message) = if status == 422 {
                        (
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "the body does not match its schema",
                        )
                    } else {
                        (
                            StatusCode::BAD_REQUEST,
                            "the request contains invalid parameters",
                        )
                    };
                    Some(error_response(
                        status,
                        "VALIDATION_ERROR",
                        message,
                        details,
                        &rid,
                    ))
                }
            }
        };
        if let Some(resp) = outcome {
            return Ok(resp);
        }
        match normalized {
            Some(text) => req.set_body(text),
            None => req.set_body(body),
        }
        self.inner.call(req).await.map(IntoResponse::into_response)
    }
}

/// A handler panicked: answer 503 in the envelope instead of dropping the connection.
pub fn panic_response(_: Box<dyn std::any::Any + Send>) -> Response {
    tracing::error!("a handler panicked");
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "INTERNAL_ERROR",
        "the request could not be completed",
        Vec::new(),
        "",
    )
}

/// `GET /openapi.json` and `/openapi-3.0.json`: the bundled hand-written spec.
#[poem::handler]
pub fn openapi_31() -> Response {
    Response::builder()
        .content_type("application/json")
        .body(agentplane_api::OPENAPI_JSON)
}

#[poem::handler]
pub fn openapi_30() -> Response {
    Response::builder()
        .content_type("application/json")
        .body(agentplane_api::OPENAPI_3_0_JSON)
}

/// `GET /docs/*`: Swagger UI on the hand-written spec.
#[poem::handler]
pub fn docs(req: &Request) -> Response {
    let path = req.uri().path();
    let tail = path
        .strip_prefix("/docs")
        .unwrap_or("")
        .trim_start_matches('/');
    if path == "/docs" {
        return Response::builder()
            .status(StatusCode::FOUND)
            .header(header::LOCATION, "/docs/")
            .finish();
    }
    let tail = if tail.is_empty() { "index.html" } else { tail };
    let config = Arc::new(
        utoipa_swagger_ui::Config::from("/openapi.json")
            .try_it_out_enabled(true)
            .persist_authorization(true),
    );
    match utoipa_swagger_ui::serve(tail, config) {
        Ok(Some(file)) => Response::builder()
            .content_type(file.content_type)
            .body(file.bytes.to_vec()),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "swagger ui");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// `GET /`: to the documentation.
#[poem::handler]
pub fn root() -> Response {
    Response::builder()
        .status(StatusCode::FOUND)
        .header(header::LOCATION, "/docs/")
        .finish()
}

/// The API versions a request may name in `API-Version`.
pub const SUPPORTED_VERSIONS: &[&str] = &["v1"];

/// Whether an `API-Version` value means a version this server speaks: `v1` (or `1`), or the
/// document version of a `v1` contract (`0.x.y`, `1.x.y`), which generated clients send.
pub fn supported_version(value: &str) -> bool {
    let v = value.trim();
    if v.eq_ignore_ascii_case("v1") || v == "1" {
        return true;
    }
    let mut parts = v.split('.');
    let major = parts.next();
    let rest: Vec<&str> = parts.collect();
    matches!(major, Some("0" | "1"))
        && rest.len() == 2
        && rest
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Refuses a `/v1` request whose `API-Version` names a version this server does not speak.
pub struct ApiVersion;

impl<E: Endpoint> Middleware<E> for ApiVersion {
    type Output = ApiVersionEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        ApiVersionEndpoint(ep)
    }
}

pub struct ApiVersionEndpoint<E>(E);

impl<E: Endpoint> Endpoint for ApiVersionEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        if req.uri().path().starts_with("/v1/")
            && let Some(v) = req.headers().get("api-version")
        {
            let text = String::from_utf8_lossy(v.as_bytes()).into_owned();
            if !supported_version(&text) {
                let rid = req
                    .extensions()
                    .get::<RequestId>()
                    .map(|r| r.0.clone())
                    .unwrap_or_default();
                let message = format!(
                    "API version {:?} is not supported; supported versions: {}",
                    text.chars().take(64).collect::<String>(),
                    SUPPORTED_VERSIONS.join(", ")
                );
                return Ok(error_response(
                    StatusCode::BAD_REQUEST,
                    "UNSUPPORTED_API_VERSION",
                    &message,
                    vec![detail("API-Version", "enum", &message)],
                    &rid,
                ));
            }
        }
        self.0.call(req).await.map(IntoResponse::into_response)
    }
}

/// Compresses responses with Brotli or gzip as `Accept-Encoding` allows. Never an event
/// stream (a compressor buffers, and a stream's events must leave as they happen), never a
/// response without a body or already encoded. Request bodies are not decompressed.
pub struct Compression;

impl<E: Endpoint> Middleware<E> for Compression {
    type Output = CompressionEndpoint<E>;

    fn transform(&self, ep: E) -> Self::Output {
        CompressionEndpoint(ep)
    }
}

pub struct CompressionEndpoint<E>(E);

/// The coding to answer with: the acceptable one of highest `q`, Brotli before gzip on a tie.
pub fn negotiate_encoding(accept: &str) -> Option<poem::web::CompressionAlgo> {
    use poem::web::CompressionAlgo;
    let mut best: Option<(u32, u8, CompressionAlgo)> = None;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let mut q = 1000u32;
        for param in parts {
            if let Some(v) = param.trim().strip_prefix("q=") {
                q = v
                    .trim()
                    .parse::<f32>()
                    .map(|f| (f.clamp(0.0, 1.0) * 1000.0) as u32)
                    .unwrap_or(0);
            }
        }
        let (rank, algo) = if coding.eq_ignore_ascii_case("br") {
            (2, CompressionAlgo::BR)
        } else if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            (1, CompressionAlgo::GZIP)
        } else {
            continue;
        };
        if q > 0 && best.is_none_or(|(bq, br, _)| (q, rank) > (bq, br)) {
            best = Some((q, rank, algo));
        }
    }
    best.map(|(_, _, algo)| algo)
}

impl<E: Endpoint> Endpoint for CompressionEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let algo = req
            .headers()
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",");
        let algo = negotiate_encoding(&algo);
        let head = req.method() == poem::http::Method::HEAD;
        let mut resp = self.0.call(req).await?.into_response();
        let streaming = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
        if streaming {
            return Ok(resp);
        }
        resp.headers_mut()
            .append(header::VARY, HeaderValue::from_static("accept-encoding"));
        let bodiless = matches!(
            resp.status(),
            StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        ) || resp.status().is_informational()
            || head;
        let Some(algo) = algo else {
            return Ok(resp);
        };
        if bodiless || resp.headers().contains_key(header::CONTENT_ENCODING) {
            return Ok(resp);
        }
        let level = match algo {
            // Brotli's default (11) is for static files; 4 is about gzip's speed and smaller.
            poem::web::CompressionAlgo::BR => poem::web::CompressionLevel::Precise(4),
            _ => poem::web::CompressionLevel::Default,
        };
        Ok(poem::web::Compress::new(resp, algo)
            .with_quality(level)
            .into_response())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::web::CompressionAlgo;

    #[test]
    fn versions() {
        for ok in ["v1", "V1", "1", "0.1.0", "1.2.3", " v1 "] {
            assert!(supported_version(ok), "{ok}");
        }
        for bad in [
            "v2",
            "2",
            "2.0.0",
            "",
            "0.1",
            "v1.0",
            "latest",
            "0.1.0-beta",
        ] {
            assert!(!supported_version(bad), "{bad}");
        }
    }

    #[test]
    fn encodings() {
        let pick = |s: &str| negotiate_encoding(s).map(|a| a.as_str_name());
        assert_eq!(pick("gzip, deflate, br"), Some("br"));
        assert_eq!(pick("gzip;q=1.0, br;q=0.5"), Some("gzip"));
        assert_eq!(pick("br;q=0, gzip"), Some("gzip"));
        assert_eq!(pick("identity"), None);
        assert_eq!(pick("deflate, *"), None);
        assert_eq!(pick(""), None);
    }

    /// An event stream passes uncompressed and unbuffered: the first event arrives while the
    /// stream is still open. A JSON answer of the same endpoint stack is compressed.
    #[tokio::test]
    async fn event_streams_are_never_compressed() {
        use futures_util::StreamExt;
        use poem::web::sse::{Event, SSE};

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
        let rx = std::sync::Mutex::new(Some(rx));
        let sse = poem::endpoint::make_sync(move |_| {
            let rx = rx.lock().ok().and_then(|mut r| r.take());
            let stream = futures_util::stream::unfold(rx, |rx| async move {
                let mut rx = rx?;
                let event = rx.recv().await?;
                Some((event, Some(rx)))
            });
            SSE::new(stream).into_response()
        });
        let ep = Compression.transform(sse);
        let req = Request::builder()
            .header(header::ACCEPT_ENCODING, "gzip, br")
            .finish();
        let resp = ep.call(req).await.expect("answers");
        assert!(resp.headers().get(header::CONTENT_ENCODING).is_none());
        let mut body = resp.into_body().into_bytes_stream();
        tx.send(Event::message("first")).expect("send");
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), body.next())
            .await
            .expect("the first event is not held back")
            .expect("a chunk")
            .expect("bytes");
        assert!(String::from_utf8_lossy(&first).contains("data: first"));
        drop(tx);

        let json = poem::endpoint::make_sync(|_| {
            Response::builder()
                .content_type("application/json")
                .body("[1,2,3]".repeat(100))
        });
        let resp = Compression
            .transform(json)
            .call(
                Request::builder()
                    .header(header::ACCEPT_ENCODING, "gzip")
                    .finish(),
            )
            .await
            .expect("answers");
        assert_eq!(
            resp.headers()
                .get(header::CONTENT_ENCODING)
                .and_then(|v| v.to_str().ok()),
            Some("gzip")
        );
    }

    trait Name {
        fn as_str_name(&self) -> &'static str;
    }

    impl Name for CompressionAlgo {
        fn as_str_name(&self) -> &'static str {
            match self {
                CompressionAlgo::BR => "br",
                CompressionAlgo::GZIP => "gzip",
                _ => "other",
            }
        }
    }
}
