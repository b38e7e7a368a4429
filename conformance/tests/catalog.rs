//! The conformance checks against a catalog of deliberately broken servers.
//!
//! Every server implements the same tiny spec (items: list, create, read, delete, behind a
//! bearer token) and breaks it in exactly one way. The harness must catch each fault with
//! the check meant for it, and must find nothing wrong with the correct server; otherwise
//! a green conformance run would mean nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use conformance::RequestValidator;
use conformance::runner::{self, Config, Report};
use conformance::validate::{Outcome, Request as ValidatedRequest};
use poem::http::StatusCode;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{Response, Server};
use serde_json::{Value, json};

fn spec() -> Value {
    let error = json!({"description": "An error.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "items", "version": "1"},
        "security": [{"bearer": []}],
        "paths": {
            "/items": {
                "get": {
                    "operationId": "listItems",
                    "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}}],
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
                    "responses": {
                        "200": {"description": "The item.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}},
                        "400": error, "401": error, "404": error
                    }
                },
                "delete": {
                    "operationId": "deleteItem",
                    "responses": {"204": {"description": "Deleted."}, "400": error, "401": error, "404": error}
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
}

struct State {
    fault: Fault,
    items: Mutex<BTreeMap<String, Value>>,
    next: AtomicU64,
    validator: RequestValidator,
}

fn json_response(status: u16, body: &Value) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .content_type("application/json")
        .body(body.to_string())
}

fn error(status: u16, message: &str) -> Response {
    json_response(status, &json!({"message": message}))
}

async fn handle(state: Arc<State>, mut req: poem::Request) -> Response {
    let fault = state.fault;
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers = req.headers().clone();
    let body = req.take_body().into_vec().await.unwrap_or_default();
    let authorized =
        headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer secret");
    if !authorized && fault != Fault::IgnoresAuth {
        return error(401, "no credentials");
    }
    if fault != Fault::AcceptsInvalidData {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
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
            Outcome::MethodNotAllowed { .. } => return error(405, "method"),
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
                .cloned()
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
                    .insert(id.clone(), item.clone());
            }
            let mut r = json_response(201, &item);
            if fault != Fault::NoLocation {
                r.headers_mut()
                    .insert("location", format!("/items/{id}").parse().expect("header"));
            }
            r
        }
        ("GET", ["items", id]) => match state.items.lock().expect("lock").get(*id) {
            Some(item) => json_response(200, item),
            None => error(404, "not found"),
        },
        ("DELETE", ["items", id]) => {
            let mut items = state.items.lock().expect("lock");
            let found = if fault == Fault::DeletedStillReadable {
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
    });
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor.local_addr()[0]
        .as_socket_addr()
        .copied()
        .expect("a socket address");
    let app = poem::endpoint::make(move |req: poem::Request| {
        let state = state.clone();
        async move { handle(state, req).await }
    });
    tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
    format!("http://{addr}")
}

async fn conform(fault: Fault) -> Report {
    let base = start(fault).await;
    let mut config = Config::new(base);
    config.headers = vec![("Authorization".into(), "Bearer secret".into())];
    config.seed = 42;
    config.max_examples = 30;
    config.workers = 2;
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_found_by_its_check() {
    let catalog = [
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
    ];
    let mut table = String::new();
    let mut missed = Vec::new();
    for (fault, expected) in catalog {
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
