//! The conformance checks against a catalog of deliberately broken servers.
//!
//! Every server implements the same tiny spec (items: list, create, read, update, delete,
//! and a paged list, behind a bearer token per tenant) and breaks it in exactly one way. The harness must catch each fault with
//! the check meant for it, and must find nothing wrong with the correct server; otherwise
//! a green conformance run would mean nothing.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
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
    let etag = json!({"required": true, "schema": {"type": "string"}});
    let error = json!({"description": "An error.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "items", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            "/items": {
                "get": {
                    "operationId": "listItems",
                    "parameters": [
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                        {"name": "X-Client", "in": "header", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[a-z]+$"}}
                    ],
                    "responses": {
                        "200": {
                            "description": "Items.",
                            "headers": {"X-Rate": {"required": true, "schema": {"type": "integer"}}},
                            "content": {"application/json": {"schema": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}}
                        },
                        "400": error, "401": error
                    }
                },
                "post": {
                    "operationId": "createItem",
                    "requestBody": {"required": true, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/ItemInput"},
                        "example": {"name": "apple", "count": 3}
                    }}},
                    "responses": {
                        "201": {
                            "description": "Created.",
                            "headers": {"Location": {"required": true, "schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}},
                            "links": {
                                "GetItem": {"operationId": "getItem", "parameters": {"id": "$response.body#/id"}},
                                "UpdateItem": {"operationId": "updateItem", "parameters": {"id": "$response.body#/id"}},
                                "DeleteItem": {"operationId": "deleteItem", "parameters": {"id": "$response.body#/id"}}
                            }
                        },
                        "400": error, "401": error, "422": error
                    }
                }
            },
            "/items/{id}": {
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 40}}],
                "get": {
                    "operationId": "getItem",
                    "parameters": [{"name": "If-None-Match", "in": "header", "schema": {"type": "string", "maxLength": 40}}],
                    "responses": {
                        "200": {"description": "The item.", "headers": {"ETag": etag}, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}},
                        "304": {"description": "Not modified.", "headers": {"ETag": etag}},
                        "400": error, "401": error, "404": error
                    }
                },
                "put": {
                    "operationId": "updateItem",
                    "parameters": [{"name": "If-Match", "in": "header", "schema": {"type": "string", "maxLength": 40}}],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ItemInput"}}}},
                    "responses": {
                        "200": {"description": "The item.", "headers": {"ETag": etag}, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}},
                        "400": error, "401": error, "404": error, "412": error, "422": error
                    }
                },
                "delete": {
                    "operationId": "deleteItem",
                    "responses": {"204": {"description": "Deleted."}, "400": error, "401": error, "404": error}
                }
            },
            "/pages": {
                "get": {
                    "operationId": "pageItems",
                    "parameters": [
                        {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                        {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10}},
                        {"name": "filter", "in": "query", "style": "deepObject", "explode": true, "schema": {
                            "type": "object", "additionalProperties": false,
                            "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 10}}
                        }}
                    ],
                    "responses": {
                        "200": {"description": "A page of items.", "content": {"application/json": {"schema": {
                            "type": "object", "required": ["data", "pagination"], "properties": {
                                "data": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}},
                                "pagination": {"type": "object", "required": ["total", "per_page", "pages"], "properties": {
                                    "total": {"type": "integer", "minimum": 0},
                                    "per_page": {"type": "integer", "minimum": 1},
                                    "pages": {"type": "integer", "minimum": 0}
                                }}
                            }
                        }}}},
                        "400": error, "401": error
                    }
                }
            }
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Item": {"type": "object", "required": ["id", "name", "count"], "properties": {
                    "id": {"type": "string", "readOnly": true},
                    "name": {"type": "string"},
                    "count": {"type": "integer"}
                }},
                "ItemInput": {"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 10},
                    "count": {"type": "integer", "minimum": 0, "maximum": 100}
                }},
                "Error": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}
            }
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    UndocumentedStatus,
    BodyViolatesSchema,
    WrongContentType,
    ServerErrorOnEdgeValue,
    AcceptsInvalidData,
    RejectsValidData,
    MissingDocumentedHeader,
    IgnoresAuth,
    DeletedStillReadable,
    CreatedNotReadable,
    NoLocation,
    IgnoresMissingHeader,
    UnknownMethodNotFound,
    IgnoresIfNoneMatch,
    IgnoresIfMatch,
    WrongPaginationTotal,
    LeaksAcrossTenants,
    /// Answers one read of an item later than the run's `--max-response-time` budget.
    SlowAnswer,
}

/// The `max_response_time` budget every catalog run sets, and how late
/// [`Fault::SlowAnswer`] answers once.
const RESPONSE_BUDGET: std::time::Duration = std::time::Duration::from_secs(3);
const SLOW_ANSWER: std::time::Duration = std::time::Duration::from_millis(3_500);

/// Set once a server saw a `filter[...]` (deepObject) query parameter.
static SAW_DEEP_OBJECT: AtomicBool = AtomicBool::new(false);

fn etag_of(item: &Value) -> String {
    let mut hasher = DefaultHasher::new();
    item.to_string().hash(&mut hasher);
    format!("\"{:x}\"", hasher.finish())
}

fn with_etag(mut response: Response, item: &Value) -> Response {
    if let Ok(v) = etag_of(item).parse() {
        response.headers_mut().insert("etag", v);
    }
    response
}

/// Every fault and the check meant to find it.
const CATALOG: &[(Fault, &str)] = &[
    (Fault::UndocumentedStatus, "status_code_conformance"),
    (Fault::BodyViolatesSchema, "response_schema_conformance"),
    (Fault::WrongContentType, "content_type_conformance"),
    (Fault::ServerErrorOnEdgeValue, "not_a_server_error"),
    (Fault::AcceptsInvalidData, "negative_data_rejection"),
    (Fault::RejectsValidData, "positive_data_acceptance"),
    (
        Fault::MissingDocumentedHeader,
        "response_headers_conformance",
    ),
    (Fault::IgnoresAuth, "ignored_auth"),
    (Fault::DeletedStillReadable, "use_after_free"),
    (Fault::CreatedNotReadable, "ensure_resource_availability"),
    (Fault::NoLocation, "location_on_created"),
    (Fault::IgnoresMissingHeader, "missing_required_header"),
    (Fault::UnknownMethodNotFound, "unsupported_method"),
    (Fault::IgnoresIfNoneMatch, "conditional_requests"),
    (Fault::IgnoresIfMatch, "conditional_requests"),
    (Fault::WrongPaginationTotal, "pagination_totals"),
    (Fault::LeaksAcrossTenants, "cross_tenant_isolation"),
    (Fault::SlowAnswer, "max_response_time"),
];

struct State {
    fault: Fault,
    /// Item id → (owning tenant, item).
    items: Mutex<BTreeMap<String, (String, Value)>>,
    next: AtomicU64,
    validator: RequestValidator,
    /// Set once [`Fault::SlowAnswer`] answered late.
    slowed: AtomicBool,
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
    let tenant = match headers.get("authorization").and_then(|v| v.to_str().ok()) {
        Some("Bearer secret") => "a",
        Some("Bearer other") => "b",
        _ if fault == Fault::IgnoresAuth => "a",
        _ => return error(401, "no credentials"),
    };
    // Which items this caller may see.
    let visible = |owner: &str| owner == tenant || fault == Fault::LeaksAcrossTenants;
    if query.contains("filter%5B") || query.contains("filter[") {
        SAW_DEEP_OBJECT.store(true, Ordering::SeqCst);
    }
    if fault != Fault::AcceptsInvalidData {
        let header = |name: &str| {
            let value = headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if fault == Fault::IgnoresMissingHeader && name.eq_ignore_ascii_case("x-client") {
                return value.or_else(|| Some("any".into()));
            }
            value
        };
        let request = ValidatedRequest {
            method: &method,
            path: &path,
            query: &query,
            header: &header,
            body: &body,
        };
        match state.validator.validate(&request) {
            Outcome::NoRoute => return error(404, "no route"),
            Outcome::MethodNotAllowed { .. } if fault == Fault::UnknownMethodNotFound => {
                return error(404, "no route");
            }
            Outcome::MethodNotAllowed { allow } => {
                let mut r = error(405, "method");
                if let Ok(v) = allow.join(", ").parse() {
                    r.headers_mut().insert("allow", v);
                }
                return r;
            }
            Outcome::Invalid { status, .. } => return error(status, "invalid"),
            Outcome::Valid { .. } => {}
        }
    }
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["items"]) => {
            let items: Vec<Value> = state
                .items
                .lock()
                .expect("lock")
                .values()
                .filter(|(owner, _)| visible(owner))
                .map(|(_, item)| item.clone())
                .collect();
            match fault {
                Fault::UndocumentedStatus => error(418, "teapot"),
                Fault::WrongContentType => Response::builder()
                    .status(StatusCode::OK)
                    .header("X-Rate", "100")
                    .content_type("text/plain")
                    .body("[]"),
                Fault::BodyViolatesSchema => {
                    let mut r = json_response(200, &json!([{"id": 1, "name": "x"}]));
                    r.headers_mut()
                        .insert("x-rate", "100".parse().expect("header"));
                    r
                }
                Fault::MissingDocumentedHeader => json_response(200, &Value::Array(items)),
                _ => {
                    let mut r = json_response(200, &Value::Array(items));
                    r.headers_mut()
                        .insert("x-rate", "100".parse().expect("header"));
                    r
                }
            }
        }
        ("POST", ["items"]) => {
            let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let name = match &input["name"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let count = input["count"].as_i64().unwrap_or(0);
            if fault == Fault::ServerErrorOnEdgeValue && (count == 0 || count == 100) {
                return error(500, "overflow");
            }
            if fault == Fault::RejectsValidData && name.chars().count() > 3 {
                return error(400, "name too long");
            }
            let id = format!("item{}", state.next.fetch_add(1, Ordering::SeqCst));
            let item = json!({"id": id, "name": name, "count": count});
            if fault != Fault::CreatedNotReadable {
                state
                    .items
                    .lock()
                    .expect("lock")
                    .insert(id.clone(), (tenant.to_string(), item.clone()));
            }
            let mut r = json_response(201, &item);
            if fault != Fault::NoLocation {
                r.headers_mut()
                    .insert("location", format!("/items/{id}").parse().expect("header"));
            }
            r
        }
        ("GET", ["pages"]) => {
            let mut page = 1u64;
            let mut per_page = 10u64;
            for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
                match k.as_ref() {
                    "page" => page = v.parse().unwrap_or(1),
                    "per_page" => per_page = v.parse().unwrap_or(10).max(1),
                    _ => {}
                }
            }
            let items: Vec<Value> = state
                .items
                .lock()
                .expect("lock")
                .values()
                .filter(|(owner, _)| visible(owner))
                .map(|(_, item)| item.clone())
                .collect();
            let mut total = items.len() as u64;
            if fault == Fault::WrongPaginationTotal {
                total += 1;
            }
            let data: Vec<Value> = items
                .into_iter()
                .skip(page.saturating_sub(1).saturating_mul(per_page) as usize)
                .take(per_page as usize)
                .collect();
            json_response(
                200,
                &json!({"data": data, "pagination": {
                    "total": total, "per_page": per_page, "pages": total.div_ceil(per_page)
                }}),
            )
        }
        ("GET", ["items", id]) => {
            if fault == Fault::SlowAnswer && !state.slowed.swap(true, Ordering::SeqCst) {
                tokio::time::sleep(SLOW_ANSWER).await;
            }
            let items = state.items.lock().expect("lock");
            match items.get(*id).filter(|(owner, _)| visible(owner)) {
                Some((_, item)) => {
                    let etag = etag_of(item);
                    let none_match = headers.get("if-none-match").and_then(|v| v.to_str().ok());
                    if none_match == Some(etag.as_str()) && fault != Fault::IgnoresIfNoneMatch {
                        return with_etag(
                            Response::builder()
                                .status(StatusCode::NOT_MODIFIED)
                                .finish(),
                            item,
                        );
                    }
                    with_etag(json_response(200, item), item)
                }
                None => error(404, "not found"),
            }
        }
        ("PUT", ["items", id]) => {
            let mut items = state.items.lock().expect("lock");
            let Some((_, item)) = items.get_mut(*id).filter(|(owner, _)| visible(owner)) else {
                return error(404, "not found");
            };
            let if_match = headers.get("if-match").and_then(|v| v.to_str().ok());
            if let Some(expected) = if_match
                && expected != etag_of(item)
                && fault != Fault::IgnoresIfMatch
            {
                return error(412, "changed");
            }
            let input: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            item["name"] = input["name"].clone();
            item["count"] = json!(input["count"].as_i64().unwrap_or(0));
            with_etag(json_response(200, item), item)
        }
        ("DELETE", ["items", id]) => {
            let mut items = state.items.lock().expect("lock");
            let owned = items.get(*id).is_some_and(|(owner, _)| visible(owner));
            let found = if !owned {
                false
            } else if fault == Fault::DeletedStillReadable {
                items.contains_key(*id)
            } else {
                items.remove(*id).is_some()
            };
            if found {
                Response::builder().status(StatusCode::NO_CONTENT).finish()
            } else {
                error(404, "not found")
            }
        }
        _ => error(404, "no route"),
    }
}

async fn start(fault: Fault) -> String {
    let doc = spec();
    let state = Arc::new(State {
        fault,
        items: Mutex::new(BTreeMap::new()),
        next: AtomicU64::new(1),
        validator: RequestValidator::new(&doc).expect("spec compiles"),
        slowed: AtomicBool::new(false),
    });
    let app = poem::endpoint::make(move |req: poem::Request| {
        let state = state.clone();
        async move { handle(state, req).await }
    });
    common::serve(app).await
}

async fn conform(fault: Fault) -> Report {
    let base = start(fault).await;
    let mut config = Config::new(base);
    config.headers = vec![("Authorization".into(), "Bearer secret".into())];
    config.other_headers = vec![("Authorization".into(), "Bearer other".into())];
    config.seed = 42;
    config.max_examples = 30;
    config.workers = 2;
    config.max_response_time = Some(RESPONSE_BUDGET);
    runner::run(&spec(), config)
        .await
        .expect("the spec is usable")
}

fn failed_checks(report: &Report) -> Vec<String> {
    let mut checks: Vec<String> = report.failures.iter().map(|f| f.check.clone()).collect();
    checks.sort();
    checks.dedup();
    checks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_server_passes_every_check() {
    let report = conform(Fault::None).await;
    assert!(
        report.failures.is_empty(),
        "{}",
        conformance::report::summary(&report)
    );
    // Every check had something to judge.
    for check in conformance::checks::ALL {
        let passed: usize = report
            .operations
            .iter()
            .filter_map(|o| o.checks.get(check.name))
            .map(|c| c.passed)
            .sum();
        assert!(passed > 0, "{} never ran", check.name);
    }
    assert!(
        SAW_DEEP_OBJECT.load(Ordering::SeqCst),
        "deepObject parameters are sent as name[key]=value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_found_by_its_check() {
    let mut table = String::new();
    let mut missed = Vec::new();
    for (fault, expected) in CATALOG.iter().copied() {
        let report = conform(fault).await;
        let found = failed_checks(&report);
        table.push_str(&format!("{fault:?} → {}\n", found.join(", ")));
        if !found.iter().any(|c| c == expected) {
            missed.push(format!(
                "{fault:?}: expected {expected}\n{}",
                conformance::report::summary(&report)
            ));
        }
    }
    eprintln!("{table}");
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

/// `docs/conformance-catalog.md` names every check of the registry, and every kind of
/// request a check judges, so a check added without its line there fails here.
#[test]
fn the_catalog_page_lists_every_check() {
    let page = include_str!("../../docs/conformance-catalog.md");
    let missing: Vec<&str> = conformance::checks::ALL
        .iter()
        .map(|c| c.name)
        .filter(|name| !page.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "checks without a row in docs/conformance-catalog.md: {missing:?}"
    );
    assert!(
        page.contains(&format!("{} checks", conformance::checks::ALL.len())),
        "the page's count of checks is stale"
    );
    for kind in ["malformed_body", "lenient_body"] {
        assert!(page.contains(kind), "{kind} is not described");
    }
}

#[test]
fn reports_render_as_json_and_junit() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let report = rt.block_on(conform(Fault::UndocumentedStatus));
    let json = conformance::report::to_json(&report);
    assert_eq!(json["passed"], false);
    assert!(
        json["failures"][0]["curl"]
            .as_str()
            .is_some_and(|c| c.starts_with("curl -X GET"))
    );
    let xml = conformance::report::to_junit(&report);
    assert!(
        xml.contains("<failure type=\"status_code_conformance\""),
        "{xml}"
    );
    assert!(
        !xml.contains("Bearer secret"),
        "credentials never reach a report"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cassette_records_every_interaction_in_schemathesis_format() {
    let base = start(Fault::ServerErrorOnEdgeValue).await;
    let path = std::env::temp_dir().join(format!(
        "agentplane-cassette-{}-{}.yaml",
        std::process::id(),
        base.rsplit(':').next().unwrap_or("0")
    ));
    let mut config = Config::new(base);
    config.headers = vec![("Authorization".into(), "Bearer secret".into())];
    config.seed = 7;
    config.max_examples = 5;
    config.workers = 2;
    config.cassette = Some(path.clone());
    let report = runner::run(&spec(), config)
        .await
        .expect("the spec is usable");
    let text = std::fs::read_to_string(&path).expect("the cassette is written");
    let _ = std::fs::remove_file(&path);
    assert!(!text.contains("Bearer secret"), "credentials are redacted");
    let doc: Value = yaml_serde::from_str(&text).expect("the cassette is YAML");
    assert_eq!(doc["seed"], 7);
    assert!(doc["command"].is_string() && doc["recorded_with"].is_string());
    let interactions = doc["http_interactions"].as_array().expect("interactions");
    assert!(
        interactions.len() >= report.cases,
        "{} interactions for {} cases",
        interactions.len(),
        report.cases
    );
    let mut ids = std::collections::BTreeSet::new();
    let mut phases = std::collections::BTreeSet::new();
    for i in interactions {
        assert!(
            ids.insert(i["id"].as_str().expect("id").to_string()),
            "ids are unique"
        );
        assert!(
            ["SUCCESS", "FAILURE", "SKIP", "ERROR"]
                .contains(&i["status"].as_str().expect("status"))
        );
        assert_eq!(i["seed"], 7);
        assert!(
            i["elapsed"]
                .as_str()
                .is_some_and(|e| e.parse::<f64>().is_ok())
        );
        assert!(i["recorded_at"].as_str().is_some_and(|t| t.contains('T')));
        phases.insert(i["phase"]["name"].as_str().expect("phase").to_string());
        assert!(i["checks"].is_array());
        let request = &i["request"];
        assert!(
            request["uri"]
                .as_str()
                .is_some_and(|u| u.starts_with("http://127.0.0.1:"))
        );
        assert!(request["method"].is_string());
        assert!(request["headers"].is_object());
        let response = &i["response"];
        assert!(
            response["status"]["code"]
                .as_str()
                .is_some_and(|c| c.parse::<u16>().is_ok())
        );
        assert!(response["status"]["message"].is_string());
        assert!(response["headers"].is_object());
        assert_eq!(response["body"]["encoding"], "utf-8");
        assert!(response["body"]["string"].is_string());
        assert_eq!(response["http_version"], "1.1");
    }
    for phase in ["examples", "coverage", "fuzzing", "negative", "stateful"] {
        assert!(phases.contains(phase), "{phase} recorded: {phases:?}");
    }
    // Authenticated requests carry the redacted header; the unauthenticated probe none.
    assert!(interactions.iter().any(|i| {
        i["request"]["headers"]["Authorization"][0] == conformance::cassette::REDACTED
    }));
    // The edge-value 500 is recorded as a failed check.
    assert!(interactions.iter().any(|i| {
        i["status"] == "FAILURE"
            && i["response"]["status"]["code"] == "500"
            && i["checks"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["name"] == "not_a_server_error" && c["status"] == "FAILURE")
            })
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_alone_finds_the_edge_value_fault_deterministically() {
    let base = start(Fault::ServerErrorOnEdgeValue).await;
    let mut config = Config::new(base);
    config.headers = vec![("Authorization".into(), "Bearer secret".into())];
    config.phases = vec![runner::Phase::Coverage];
    config.max_examples = 1;
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    config.progress = Some(Arc::new(move |line: &str| {
        sink.lock().expect("lock").push(line.to_string());
    }));
    config.progress_per_operation = true;
    let report = runner::run(&spec(), config)
        .await
        .expect("the spec is usable");
    assert!(
        failed_checks(&report).contains(&"not_a_server_error".to_string()),
        "{}",
        conformance::report::summary(&report)
    );
    for op in &report.operations {
        assert!(
            op.cases <= runner::COVERAGE_MAX_CASES + 1,
            "{}: {} cases",
            op.operation,
            op.cases
        );
    }
    let lines = lines.lock().expect("lock");
    assert_eq!(
        lines.len(),
        report.operations.len(),
        "one line per operation: {lines:?}"
    );
}

/// The failures (`code title`) Schemathesis reported in its JSON run report.
fn schemathesis_failures(report: &Value) -> Vec<String> {
    let mut out: Vec<String> = report
        .get("failures")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|f| {
            format!(
                "{} {}",
                f["code"].as_str().unwrap_or(""),
                f["title"].as_str().unwrap_or("")
            )
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Runs Schemathesis (`--checks all --mode all`) against every catalog server and prints
/// which checks it fails, next to the check of ours meant for the fault. A comparison for
/// `docs/conformance-catalog.md`, not a gate: it needs `.tools/venv/bin/schemathesis`
/// (or `SCHEMATHESIS`) and takes minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Schemathesis and takes minutes"]
async fn schemathesis_on_the_catalog() {
    let exe = std::env::var("SCHEMATHESIS").map_or_else(
        |_| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/venv/bin/schemathesis")
        },
        std::path::PathBuf::from,
    );
    assert!(exe.exists(), "no Schemathesis at {}", exe.display());
    let dir = std::env::temp_dir().join(format!("agentplane-catalog-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec().to_string()).expect("spec written");
    let mut table = String::from("| fault | ours | Schemathesis |\n|---|---|---|\n");
    let faults = std::iter::once((Fault::None, "")).chain(CATALOG.iter().copied());
    for (fault, expected) in faults {
        let base = start(fault).await;
        let report_path = dir.join(format!("{fault:?}.json"));
        let mut command = std::process::Command::new(&exe);
        command
            .arg("run")
            .arg(&spec_path)
            .args(["--url", &base, "-H", "Authorization: Bearer secret"])
            .args([
                "--checks", "all", "--mode", "all", "-n", "30", "--seed", "42",
            ])
            .args(["--report", "json", "--report-json-path"])
            .arg(&report_path);
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("join")
            .expect("schemathesis runs");
        let report: Value = std::fs::read_to_string(&report_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let found = schemathesis_failures(&report);
        if std::env::var_os("CATALOG_DEBUG").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&output.stdout));
            eprintln!("{report:#}");
        }
        table.push_str(&format!(
            "| {fault:?} | {expected} | {} |\n",
            found.join(", ")
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{table}");
}

/// A spec whose server fails past a threshold: `GET /search?count=N` answers 500 when
/// `N >= 50`, and `PUT /notes` when the note's `text` is longer than 10 characters.
fn threshold_spec() -> Value {
    let ok = json!({"description": "OK.", "content": {"application/json": {"schema": {"type": "object"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "thresholds", "version": "1"},
        "paths": {
            "/search": {"get": {
                "operationId": "search",
                "parameters": [{"name": "count", "in": "query", "required": true,
                                "schema": {"type": "integer", "minimum": 0, "maximum": 1000}}],
                "responses": {"200": ok}
            }},
            "/notes": {"put": {
                "operationId": "putNote",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["text"], "additionalProperties": false,
                    "properties": {"text": {"type": "string", "pattern": "^[a-z]*$", "maxLength": 40}}
                }}}},
                "responses": {"200": ok}
            }}
        }
    })
}

async fn start_threshold_server() -> String {
    let app = poem::endpoint::make(|mut req: poem::Request| async move {
        let query = req.uri().query().unwrap_or("").to_string();
        let body = req.take_body().into_vec().await.unwrap_or_default();
        let count = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "count")
            .and_then(|(_, v)| v.parse::<i64>().ok());
        let text = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|b| b["text"].as_str().map(|t| t.chars().count()));
        if count.is_some_and(|c| c >= 50) || text.is_some_and(|n| n > 10) {
            return error(500, "boom");
        }
        json_response(200, &json!({}))
    });
    common::serve(app).await
}

async fn fuzz_threshold_server(seed: u64) -> Report {
    let base = start_threshold_server().await;
    let mut config = Config::new(base);
    config.seed = seed;
    config.max_examples = 20;
    config.phases = vec![runner::Phase::Fuzzing];
    config.checks = vec!["not_a_server_error".into()];
    runner::run(&threshold_spec(), config)
        .await
        .expect("the spec is usable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzing_failures_are_shrunk_to_the_boundary() {
    let report = fuzz_threshold_server(3).await;
    let summary = conformance::report::summary(&report);
    let of = |operation: &str| {
        report
            .failures
            .iter()
            .filter(|f| f.operation == operation && f.check == "not_a_server_error")
            .collect::<Vec<_>>()
    };
    let search = of("GET /search");
    assert_eq!(search.len(), 1, "one distinct failure: {summary}");
    assert!(
        search[0].curl.contains("count=50'") || search[0].curl.ends_with("count=50"),
        "shrunk to count=50: {summary}"
    );
    assert!(search[0].message.contains("shrunk in"), "{summary}");
    let notes = of("PUT /notes");
    assert_eq!(notes.len(), 1, "one distinct failure: {summary}");
    let text = notes[0]
        .curl
        .split(" -d '")
        .nth(1)
        .and_then(|b| serde_json::from_str::<Value>(b.trim_end_matches('\'')).ok())
        .and_then(|b| b["text"].as_str().map(str::to_string));
    assert_eq!(
        text.map(|t| t.chars().count()),
        Some(11),
        "shrunk to an 11-character text: {summary}"
    );
    assert!(notes[0].message.contains("shrunk in"), "{summary}");
    // Deterministic for a seed.
    let again = fuzz_threshold_server(3).await;
    let render = |r: &Report| {
        let mut v: Vec<(String, String, String)> = r
            .failures
            .iter()
            .map(|f| {
                let curl = f.curl.replace(
                    f.curl
                        .split("http://")
                        .nth(1)
                        .and_then(|rest| rest.split('/').next())
                        .unwrap_or(""),
                    "HOST",
                );
                (f.operation.clone(), f.message.clone(), curl)
            })
            .collect();
        v.sort();
        v
    };
    assert_eq!(render(&report), render(&again));
}

/// `POST /simulate` answers 422 to every body: a business rule (an unknown model) that no
/// schema states. `positive_data_acceptance` fails it unless the operation declares 422 in
/// `x-business-rule-statuses`.
fn business_rule_spec(declared: bool) -> Value {
    let problem = json!({"description": "Unknown model.", "content": {"application/json": {"schema": {"type": "object"}}}});
    let mut op = json!({
        "operationId": "simulate",
        "requestBody": {"required": true, "content": {"application/json": {"schema": {
            "type": "object", "required": ["model"], "additionalProperties": false,
            "properties": {"model": {"type": "string", "maxLength": 20}}
        }}}},
        "responses": {"200": {"description": "OK."}, "422": problem}
    });
    if declared {
        op["x-business-rule-statuses"] = json!([422]);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "rules", "version": "1"},
        "paths": {"/simulate": {"post": op}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_business_rule_statuses_are_accepted_for_valid_input() {
    let app = poem::endpoint::make(|_req: poem::Request| async move {
        json_response(422, &json!({"error": "unknown model"}))
    });
    let base = common::serve(app).await;
    let acceptance_failures = |declared: bool| {
        let base = base.clone();
        async move {
            let mut config = Config::new(base);
            config.max_examples = 5;
            config.phases = vec![runner::Phase::Examples, runner::Phase::Fuzzing];
            config.checks = vec!["positive_data_acceptance".into()];
            let report = runner::run(&business_rule_spec(declared), config)
                .await
                .expect("the spec is usable");
            report
                .failures
                .iter()
                .filter(|f| f.check == "positive_data_acceptance")
                .count()
        }
    };
    assert!(
        acceptance_failures(false).await > 0,
        "undeclared 422 is a failure"
    );
    assert_eq!(
        acceptance_failures(true).await,
        0,
        "declared 422 is accepted"
    );
}
