//! Recall on servers nobody here wrote: the faults conform used to miss (issue 20), each
//! built into a small server that must be caught, beside a correct server that must pass.
//!
//! Every server implements the same spec (integers of both widths, a JSON create answered
//! 200 that also takes XML, a URL-encoded form, a multipart upload, an
//! `application/octet-stream` upload, a path without parameters, an operation that documents
//! no success, a bearer scheme whose 401 no operation documents) and breaks it in one way. The harness must catch each
//! fault with the check meant for it, on the operation meant, and count it once.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod common;

use common::{error, json_response};
use conformance::RequestValidator;
use conformance::runner::{self, Config, Report};
use conformance::validate::{Outcome, Request as ValidatedRequest};
use poem::Response;
use poem::http::StatusCode;
use serde_json::{Value, json};

fn spec() -> Value {
    let error = json!({"description": "An error.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |schema: Value| json!({"description": "OK.", "content": {"application/json": {"schema": schema}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "recall", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            "/health": {"get": {
                "operationId": "health",
                "responses": {"200": ok(json!({"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}))}
            }},
            "/counts": {"get": {
                "operationId": "count",
                "parameters": [{"name": "n", "in": "query", "required": true, "schema": {"type": "integer", "format": "int64"}}],
                "responses": {"200": ok(json!({"type": "object", "required": ["n"], "properties": {"n": {"type": "integer", "format": "int64"}}})), "400": error}
            }},
            "/sizes": {"get": {
                "operationId": "size",
                "parameters": [{"name": "size", "in": "query", "required": true, "schema": {"type": "integer", "format": "int32", "minimum": 0}}],
                "responses": {"200": ok(json!({"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}}})), "400": error}
            }},
            "/widgets": {"post": {
                "operationId": "createWidget",
                "requestBody": {"required": true, "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/NewWidget"}},
                    "application/xml": {"schema": {"$ref": "#/components/schemas/NewWidget"}}
                }},
                "responses": {"200": ok(json!({"$ref": "#/components/schemas/Widget"})), "400": error, "422": error}
            }},
            "/widgets/{id}": {"get": {
                "operationId": "getWidget",
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 20}}],
                "responses": {"200": ok(json!({"$ref": "#/components/schemas/Widget"})), "400": error, "404": error}
            }},
            "/archive": {"post": {
                "operationId": "archive",
                "description": "Documents no success: every answer is an error.",
                "responses": {"400": error}
            }},
            "/login": {"post": {
                "operationId": "login",
                "requestBody": {"required": true, "content": {"application/x-www-form-urlencoded": {"schema": {
                    "type": "object", "required": ["user"], "additionalProperties": false, "properties": {
                        "user": {"type": "string", "pattern": "^[a-z]{1,8}$"},
                        "remember": {"type": "boolean"},
                        "tries": {"type": "integer", "minimum": 1, "maximum": 3}
                    }
                }}}},
                "responses": {"200": ok(json!({"type": "object", "required": ["user"], "properties": {"user": {"type": "string"}}})), "400": error, "422": error}
            }},
            "/avatars": {"put": {
                "operationId": "putAvatar",
                "requestBody": {"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
                "responses": {"200": ok(json!({"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}}})), "400": error, "415": error}
            }},
            "/uploads": {"post": {
                "operationId": "upload",
                "requestBody": {"required": true, "content": {"multipart/form-data": {
                    "schema": {"type": "object", "required": ["file"], "additionalProperties": false, "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "title": {"type": "string", "minLength": 1, "maxLength": 10}
                    }},
                    "encoding": {"file": {"contentType": "text/plain"}}
                }}},
                "responses": {"200": ok(json!({"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}}})), "400": error, "415": error, "422": error}
            }}
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "NewWidget": {
                    "type": "object", "required": ["name"], "additionalProperties": false,
                    "xml": {"name": "widget"},
                    "properties": {
                        "name": {"type": "string", "minLength": 1, "maxLength": 10},
                        "weight": {"type": "integer", "format": "int32", "minimum": 0},
                        "secret": {"type": "string", "writeOnly": true}
                    }
                },
                "Widget": {"type": "object", "required": ["id", "name"], "properties": {
                    "id": {"type": "string"}, "name": {"type": "string"}, "weight": {"type": "integer"},
                    "secret": {"type": "string", "writeOnly": true}
                }},
                "Error": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}
            }
        }
    })
}

/// The spec as a validator that knows nothing of integer formats saw it.
fn without_integer_formats(mut doc: Value) -> Value {
    conformance::spec::walk_schemas_mut(&mut doc, &mut |s| {
        if s.get("format")
            .is_some_and(|f| f == "int32" || f == "int64")
        {
            s.remove("format");
        }
    });
    doc
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// Rejects a valid int64 beyond ±2^53 (a server that reads integers as doubles).
    LosesInt64Precision,
    /// Accepts an int32 above 2^31−1.
    AcceptsInt32Overflow,
    /// Answers broken JSON with a 400 in text/plain, where JSON is documented.
    PlainTextSyntaxError,
    /// Reads a JSON body sent under any Content-Type.
    IgnoresContentType,
    /// Answers any method on a path without parameters.
    AnyMethodOnPlainPath,
    /// Answers 405 with an `Allow` that leaves out documented methods.
    IncompleteAllow,
    /// Does not validate its URL-encoded form.
    FormUnvalidated,
    /// Does not validate its multipart upload.
    MultipartUnvalidated,
    /// Answers a create 200 but never stores it.
    CreatedNotReadable,
    /// Answers a request without credentials 418.
    UnauthenticatedTeapot,
    /// Fails with 500 on a malformed multipart body (Prism 5 does, on a missing boundary).
    MultipartCrash,
    /// Answers a malformed multipart body 400 in text/plain, where JSON is documented.
    MultipartPlainTextError,
    /// Fails with 500 on a form with invalid percent-escapes (a strict decoder that throws).
    FormEscapeCrash,
    /// Fails with 500 on a multipart body sent where JSON is taken (Prism 5's process dies
    /// on a multipart body sent to an operation that takes another media type).
    ForeignMultipartCrash,
    /// Fails with 500 on a multipart body sent to an upload that takes
    /// `application/octet-stream` (the operation Prism 5 died on).
    OctetStreamMultipartCrash,
    /// Exits on a malformed multipart body (as Prism 5's process does): no request after it
    /// is answered, and every path must have been probed for undocumented methods before.
    DiesOnBrokenMultipart,
    /// Takes an empty integer (`size=`) for zero (Prism 5 takes `limit=` for no limit).
    AcceptsEmptyInteger,
    /// Answers a create with its `writeOnly` secret (Prism 5 answers a card's CVC).
    EchoesWriteOnly,
    /// Refuses the XML body it documents beside JSON (Prism 5 reads it as a string).
    RejectsXml,
}

/// Every fault, the check meant to find it and the operation it must be found on.
const CATALOG: &[(Fault, &str, &str)] = &[
    (
        Fault::LosesInt64Precision,
        "positive_data_acceptance",
        "GET /counts",
    ),
    (
        Fault::AcceptsInt32Overflow,
        "negative_data_rejection",
        "GET /sizes",
    ),
    (
        Fault::PlainTextSyntaxError,
        "content_type_conformance",
        "POST /widgets",
    ),
    (
        Fault::IgnoresContentType,
        "negative_data_rejection",
        "POST /widgets",
    ),
    (
        Fault::AnyMethodOnPlainPath,
        "unsupported_method",
        "GET /health",
    ),
    (Fault::IncompleteAllow, "unsupported_method", "GET /health"),
    (
        Fault::FormUnvalidated,
        "negative_data_rejection",
        "POST /login",
    ),
    (
        Fault::MultipartUnvalidated,
        "negative_data_rejection",
        "POST /uploads",
    ),
    (
        Fault::CreatedNotReadable,
        "ensure_resource_availability",
        "POST /widgets",
    ),
    (Fault::UnauthenticatedTeapot, "ignored_auth", "GET /health"),
    (Fault::MultipartCrash, "not_a_server_error", "POST /uploads"),
    (
        Fault::MultipartPlainTextError,
        "content_type_conformance",
        "POST /uploads",
    ),
    (Fault::FormEscapeCrash, "not_a_server_error", "POST /login"),
    (
        Fault::ForeignMultipartCrash,
        "not_a_server_error",
        "POST /widgets",
    ),
    (
        Fault::OctetStreamMultipartCrash,
        "not_a_server_error",
        "PUT /avatars",
    ),
    (
        Fault::AcceptsEmptyInteger,
        "negative_data_rejection",
        "GET /sizes",
    ),
    (
        Fault::EchoesWriteOnly,
        "response_schema_conformance",
        "POST /widgets",
    ),
    (
        Fault::RejectsXml,
        "positive_data_acceptance",
        "POST /widgets",
    ),
];

/// The text of the first `<name>` element of an XML body (escapes left as they are).
fn xml_text(body: &[u8], name: &str) -> String {
    let text = String::from_utf8_lossy(body);
    let open = format!("<{name}>");
    text.split_once(open.as_str())
        .and_then(|(_, rest)| rest.split_once(&format!("</{name}>")))
        .map(|(inner, _)| inner.to_string())
        .unwrap_or_default()
}

/// Whether a URL-encoded body holds a `%` not followed by two hex digits, or escapes bytes
/// that are not UTF-8: what a strict decoder refuses.
fn broken_escapes(body: &[u8]) -> bool {
    let invalid = body.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !body
                .get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
    });
    invalid
        || url::form_urlencoded::parse(body)
            .any(|(k, v)| k.contains('\u{fffd}') || v.contains('\u{fffd}'))
}

struct State {
    fault: Fault,
    widgets: Mutex<BTreeMap<String, Value>>,
    next: AtomicU64,
    validator: RequestValidator,
    /// Set once a valid form, and a valid multipart upload, arrived.
    saw_form: AtomicBool,
    saw_multipart: AtomicBool,
    /// Set once a form with broken percent-escapes, and a malformed multipart body, arrived.
    saw_broken_form: AtomicBool,
    saw_broken_multipart: AtomicBool,
    /// Set once a multipart body arrived where JSON is taken.
    saw_foreign_multipart: AtomicBool,
    /// Set once a valid `application/octet-stream` upload arrived.
    saw_avatar: AtomicBool,
    /// Notified when the server exits.
    exit: tokio::sync::Notify,
    /// Set once a valid XML widget arrived.
    saw_xml: AtomicBool,
}

async fn handle(state: Arc<State>, req: poem::Request) -> Response {
    let fault = state.fault;
    let common::Incoming {
        method,
        path,
        query,
        headers,
        body,
    } = common::incoming(req).await;
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer secret") {
        return match fault {
            Fault::UnauthenticatedTeapot => error(418, "teapot"),
            _ => error(401, "no credentials"),
        };
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    if method == "POST" && path == "/login" && broken_escapes(&body) {
        state.saw_broken_form.store(true, Ordering::SeqCst);
        if fault == Fault::FormEscapeCrash {
            return error(500, "URIError: URI malformed");
        }
    }
    let multipart = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("multipart/"));
    if path == "/avatars" && multipart && fault == Fault::OctetStreamMultipartCrash {
        return error(
            500,
            "TypeError: Cannot read properties of undefined (reading 'trim')",
        );
    }
    if path == "/widgets" && multipart {
        state.saw_foreign_multipart.store(true, Ordering::SeqCst);
        if fault == Fault::ForeignMultipartCrash {
            return error(
                500,
                "TypeError: Cannot read properties of undefined (reading 'trim')",
            );
        }
    }
    let request = ValidatedRequest {
        method: &method,
        path: &path,
        query: &query,
        header: &header,
        body: &body,
    };
    match state.validator.validate(&request) {
        Outcome::NoRoute => return error(404, "no route"),
        Outcome::MethodNotAllowed { .. }
            if fault == Fault::AnyMethodOnPlainPath && path == "/health" =>
        {
            return json_response(200, &json!({"status": "ok"}));
        }
        Outcome::MethodNotAllowed { allow } => {
            let allow = if fault == Fault::IncompleteAllow {
                "OPTIONS".to_string()
            } else {
                allow.join(", ")
            };
            let mut r = error(405, "method");
            if let Ok(v) = allow.parse() {
                r.headers_mut().insert("allow", v);
            }
            return r;
        }
        Outcome::Invalid {
            status, violations, ..
        } => {
            let code = |c: &str| violations.iter().all(|v| v.code == c);
            let unvalidated = (fault == Fault::FormUnvalidated && path == "/login")
                || (fault == Fault::MultipartUnvalidated && path == "/uploads")
                || (fault == Fault::IgnoresContentType && code("content_type"))
                || (fault == Fault::AcceptsEmptyInteger
                    && path == "/sizes"
                    && url::form_urlencoded::parse(query.as_bytes())
                        .any(|(k, v)| k == "size" && v.is_empty()));
            if code("invalid_multipart") {
                state.saw_broken_multipart.store(true, Ordering::SeqCst);
                match fault {
                    Fault::MultipartCrash => return error(500, "Unexpected end of form"),
                    Fault::DiesOnBrokenMultipart => {
                        state.exit.notify_one();
                        return error(500, "Unexpected end of form");
                    }
                    Fault::MultipartPlainTextError => {
                        return Response::builder()
                            .status(StatusCode::BAD_REQUEST)
                            .content_type("text/plain")
                            .body("bad multipart");
                    }
                    _ => {}
                }
            }
            if fault == Fault::PlainTextSyntaxError && code("invalid_json") {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .content_type("text/plain")
                    .body("bad JSON");
            }
            if !unvalidated {
                return error(status, "invalid");
            }
        }
        Outcome::Valid { .. } => {
            if path == "/login" {
                state.saw_form.store(true, Ordering::SeqCst);
            }
            if path == "/uploads" {
                state.saw_multipart.store(true, Ordering::SeqCst);
            }
            if path == "/avatars" {
                state.saw_avatar.store(true, Ordering::SeqCst);
            }
        }
    }
    let param = |name: &str| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["health"]) => json_response(200, &json!({"status": "ok"})),
        ("POST", ["archive"]) => error(400, "nothing to archive"),
        ("GET", ["counts"]) => {
            let n: i64 = param("n").and_then(|n| n.parse().ok()).unwrap_or(0);
            if fault == Fault::LosesInt64Precision && n.unsigned_abs() > 1 << 53 {
                return error(400, "not a safe integer");
            }
            json_response(200, &json!({"n": n}))
        }
        ("GET", ["sizes"]) => {
            let size: i64 = param("size").and_then(|n| n.parse().ok()).unwrap_or(0);
            json_response(200, &json!({"size": size}))
        }
        ("POST", ["widgets"]) => {
            let xml = header("content-type").is_some_and(|t| t.contains("xml"));
            if xml && fault == Fault::RejectsXml {
                return error(400, "request.body Request body must be object");
            }
            let input: Value = match xml {
                true => {
                    if String::from_utf8_lossy(&body).contains("<widget>") {
                        state.saw_xml.store(true, Ordering::SeqCst);
                    }
                    json!({"name": xml_text(&body, "name")})
                }
                false => serde_json::from_slice(&body).unwrap_or(Value::Null),
            };
            let id = format!("w{}", state.next.fetch_add(1, Ordering::SeqCst));
            let mut widget = json!({"id": id, "name": input["name"].as_str().unwrap_or("")});
            if let Some(w) = input["weight"].as_i64() {
                widget["weight"] = json!(w);
            }
            let answer = match fault {
                Fault::EchoesWriteOnly => {
                    let mut echoed = widget.clone();
                    echoed["secret"] = json!("s3cret");
                    echoed
                }
                _ => widget.clone(),
            };
            if fault != Fault::CreatedNotReadable {
                state.widgets.lock().expect("lock").insert(id, widget);
            }
            json_response(200, &answer)
        }
        ("GET", ["widgets", id]) => match state.widgets.lock().expect("lock").get(*id) {
            Some(w) => json_response(200, w),
            None => error(404, "not found"),
        },
        ("POST", ["login"]) => {
            let user = url::form_urlencoded::parse(&body)
                .find(|(k, _)| k == "user")
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            json_response(200, &json!({"user": user}))
        }
        ("POST", ["uploads"]) | ("PUT", ["avatars"]) => {
            json_response(200, &json!({"size": body.len()}))
        }
        _ => error(404, "no route"),
    }
}

async fn start(fault: Fault) -> (String, Arc<State>) {
    let doc = if fault == Fault::AcceptsInt32Overflow {
        without_integer_formats(spec())
    } else {
        spec()
    };
    let state = Arc::new(State {
        fault,
        widgets: Mutex::new(BTreeMap::new()),
        next: AtomicU64::new(1),
        validator: RequestValidator::new(&doc).expect("spec compiles"),
        saw_form: AtomicBool::new(false),
        saw_multipart: AtomicBool::new(false),
        saw_broken_form: AtomicBool::new(false),
        saw_broken_multipart: AtomicBool::new(false),
        saw_foreign_multipart: AtomicBool::new(false),
        saw_avatar: AtomicBool::new(false),
        exit: tokio::sync::Notify::new(),
        saw_xml: AtomicBool::new(false),
    });
    let served = state.clone();
    let app = poem::endpoint::make(move |req: poem::Request| {
        let state = served.clone();
        async move { handle(state, req).await }
    });
    let exiting = state.clone();
    let exit = async move { exiting.exit.notified().await };
    (common::serve_until(app, exit).await, state)
}

async fn conform(fault: Fault) -> (Report, Arc<State>) {
    let (base, state) = start(fault).await;
    let mut config = Config::new(base);
    config.headers = vec![("Authorization".into(), "Bearer secret".into())];
    config.seed = 20;
    config.max_examples = 10;
    config.workers = 2;
    let report = runner::run(&spec(), config)
        .await
        .expect("the spec is usable");
    (report, state)
}

fn passed(report: &Report, operation: &str, check: &str) -> usize {
    report
        .operations
        .iter()
        .filter(|o| o.operation == operation)
        .filter_map(|o| o.checks.get(check))
        .map(|c| c.passed)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_server_passes_and_every_class_is_exercised() {
    let (report, state) = conform(Fault::None).await;
    let summary = conformance::report::summary(&report);
    // A 401 no operation documents, answering the request sent without credentials, is
    // implied by the security scheme: no undocumented status.
    assert!(report.failures.is_empty(), "{summary}");
    assert!(
        report.operations.iter().all(|o| o.skipped.is_none()),
        "forms and multipart bodies are generated: {summary}"
    );
    assert!(
        state.saw_form.load(Ordering::SeqCst),
        "a valid form was sent"
    );
    assert!(
        state.saw_multipart.load(Ordering::SeqCst),
        "a valid upload was sent"
    );
    assert!(
        state.saw_broken_form.load(Ordering::SeqCst),
        "a form with broken percent-escapes was sent"
    );
    assert!(
        state.saw_broken_multipart.load(Ordering::SeqCst),
        "a malformed multipart body was sent"
    );
    assert!(
        state.saw_foreign_multipart.load(Ordering::SeqCst),
        "a multipart body was sent where JSON is taken"
    );
    assert!(
        state.saw_avatar.load(Ordering::SeqCst),
        "a valid octet-stream upload was sent"
    );
    assert!(
        state.saw_xml.load(Ordering::SeqCst),
        "a valid widget was sent as XML"
    );
    for (operation, check) in [
        ("GET /health", "unsupported_method"),
        ("GET /health", "ignored_auth"),
        ("POST /widgets", "ensure_resource_availability"),
        ("POST /widgets", "negative_data_rejection"),
        ("POST /login", "negative_data_rejection"),
        ("POST /uploads", "negative_data_rejection"),
        ("GET /sizes", "negative_data_rejection"),
    ] {
        assert!(
            passed(&report, operation, check) > 0,
            "{operation} [{check}] never ran\n{summary}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_found_once_by_its_check() {
    let mut table = String::new();
    let mut missed = Vec::new();
    for (fault, check, operation) in CATALOG.iter().copied() {
        let (report, _) = conform(fault).await;
        let found: Vec<_> = report
            .failures
            .iter()
            .filter(|f| f.check == check && f.operation == operation)
            .collect();
        let all: Vec<String> = report
            .failures
            .iter()
            .map(|f| format!("{} [{}] x{}", f.operation, f.check, f.occurrences))
            .collect();
        table.push_str(&format!("{fault:?} → {}\n", all.join(", ")));
        let statuses: std::collections::BTreeSet<_> = found.iter().map(|f| f.status).collect();
        if found.is_empty() || found.len() != statuses.len() {
            missed.push(format!(
                "{fault:?}: expected {operation} [{check}] once per status\n{}",
                conformance::report::summary(&report)
            ));
        }
    }
    eprintln!("{table}");
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_finding_on_many_methods_counts_once() {
    let (report, _) = conform(Fault::AnyMethodOnPlainPath).await;
    let found: Vec<_> = report
        .failures
        .iter()
        .filter(|f| f.check == "unsupported_method")
        .collect();
    assert_eq!(found.len(), 1, "{}", conformance::report::summary(&report));
    assert!(found[0].occurrences >= 4, "PUT, POST, DELETE and PATCH");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_path_is_probed_before_a_body_that_kills_the_server() {
    let (report, _) = conform(Fault::DiesOnBrokenMultipart).await;
    let summary = conformance::report::summary(&report);
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.check == "not_a_server_error" && f.operation == "POST /uploads"),
        "the server died on the broken upload: {summary}"
    );
    for operation in [
        "POST /archive",
        "GET /health",
        "GET /counts",
        "GET /sizes",
        "POST /widgets",
        "GET /widgets/{id}",
        "POST /login",
        "PUT /avatars",
        "POST /uploads",
    ] {
        assert!(
            passed(&report, operation, "unsupported_method") > 0,
            "{operation} was not probed for undocumented methods before the server died\n{summary}"
        );
    }
}
