//! `agentplane conform --coverage` end to end: a small correct server, its spec, the numbers
//! of the JSON report, the HTML page, and `--min-coverage` deciding the exit code.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

mod common;

use common::{error, json_response};
use conformance::RequestValidator;
use conformance::conform::{self, CommandOptions};
use conformance::validate::{Outcome, Request as ValidatedRequest};
use serde_json::{Value, json};

/// Three operations over two tags; nine documented statuses, of which a correct server
/// never answers one (the list's 503).
fn spec() -> Value {
    let error = json!({"description": "An error.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let thing = json!({"$ref": "#/components/schemas/Thing"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "things", "version": "1"},
        "paths": {
            "/things": {
                "get": {
                    "operationId": "listThings",
                    "tags": ["things"],
                    "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10}}],
                    "responses": {
                        "200": {"description": "Things.", "content": {"application/json": {"schema": {"type": "array", "items": thing}}}},
                        "400": error,
                        "503": error
                    }
                },
                "post": {
                    "operationId": "createThing",
                    "tags": ["things"],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1, "maxLength": 20},
                            "note": {"type": "string", "maxLength": 50}
                        }
                    }}}},
                    "responses": {
                        "201": {
                            "description": "Created.",
                            "content": {"application/json": {"schema": thing}},
                            "links": {"GetThing": {"operationId": "getThing", "parameters": {"id": "$response.body#/id"}}}
                        },
                        "400": error,
                        "422": error
                    }
                }
            },
            "/things/{id}": {
                "get": {
                    "operationId": "getThing",
                    "tags": ["lookup"],
                    "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 20}}],
                    "responses": {
                        "200": {"description": "A thing.", "content": {"application/json": {"schema": thing}}},
                        "400": error,
                        "404": error
                    }
                }
            }
        },
        "components": {"schemas": {
            "Thing": {
                "type": "object",
                "required": ["id", "name"],
                "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "note": {"type": "string"}}
            },
            "Error": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}
        }}
    })
}

struct State {
    validator: RequestValidator,
    things: Mutex<Vec<Value>>,
}

async fn handle(state: Arc<State>, req: poem::Request) -> poem::Response {
    let common::Incoming {
        method,
        path,
        query,
        headers,
        body,
    } = common::incoming(req).await;
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
    let mut things = state.things.lock().expect("lock");
    match (
        method.as_str(),
        path.trim_start_matches('/').split_once('/'),
    ) {
        ("GET", None) => {
            let limit = query
                .split('&')
                .find_map(|p| p.strip_prefix("limit="))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(10);
            let page: Vec<Value> = things.iter().take(limit).cloned().collect();
            json_response(200, &Value::Array(page))
        }
        ("POST", None) => {
            let Ok(Value::Object(mut thing)) = serde_json::from_slice::<Value>(&body) else {
                return error(400, "not an object");
            };
            thing.insert("id".into(), json!(format!("t{}", things.len() + 1)));
            let thing = Value::Object(thing);
            things.push(thing.clone());
            json_response(201, &thing)
        }
        ("GET", Some((_, id))) => match things.iter().find(|t| t["id"] == id) {
            Some(t) => json_response(200, t),
            None => error(404, "no such thing"),
        },
        _ => error(404, "no route"),
    }
}

async fn server() -> String {
    let state = Arc::new(State {
        validator: RequestValidator::new(&spec()).expect("spec compiles"),
        things: Mutex::new(Vec::new()),
    });
    common::serve(poem::endpoint::make(move |req: poem::Request| {
        let state = state.clone();
        async move { handle(state, req).await }
    }))
    .await
}

fn scratch(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("agentplane-coverage-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn options(dir: &std::path::Path, url: &str) -> CommandOptions {
    let spec_path = dir.join("openapi.json");
    std::fs::write(&spec_path, spec().to_string()).expect("write spec");
    CommandOptions {
        spec: spec_path.display().to_string(),
        url: Some(url.to_string()),
        seed: Some(1),
        max_examples: 5,
        workers: 2,
        ..CommandOptions::default()
    }
}

#[tokio::test]
async fn the_json_report_counts_what_the_run_exercised() {
    let url = server().await;
    let dir = scratch("numbers");
    let json_path = dir.join("coverage.json");
    let html_path = dir.join("coverage.html");
    let mut opts = options(&dir, &url);
    opts.coverage = vec![json_path.clone(), html_path.clone()];
    // 8 of 9: every documented status but the list's 503.
    opts.min_coverage = Some(88.0);
    assert_eq!(conform::run_command(opts).await, conform::EXIT_PASSED);

    let report: Value =
        serde_json::from_slice(&std::fs::read(&json_path).expect("JSON report")).expect("JSON");
    let totals = &report["totals"];
    let pair = |key: &str| {
        (
            totals[key]["covered"].as_u64().unwrap_or(u64::MAX),
            totals[key]["documented"].as_u64().unwrap_or(u64::MAX),
        )
    };
    assert_eq!(pair("operations"), (3, 3), "{totals}");
    assert_eq!(pair("statuses"), (8, 9), "{totals}");
    assert_eq!(totals["statuses"]["percent"], 88.9);
    assert_eq!(pair("parameters"), (2, 2), "{totals}");
    assert_eq!(pair("body_properties"), (2, 2), "{totals}");
    assert_eq!(pair("links"), (1, 1), "{totals}");
    // Response properties: id, name, note of a thing (the list's under `[]`) and the
    // error's message, for each of the three operations; every one was seen.
    assert_eq!(pair("response_properties"), (12, 12), "{totals}");

    let tags: Vec<(&str, u64)> = report["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .map(|t| {
            (
                t["tag"].as_str().unwrap_or(""),
                t["operations"]["documented"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(tags, [("lookup", 1), ("things", 2)]);

    let list = report["operations"]
        .as_array()
        .and_then(|ops| ops.iter().find(|o| o["operation_id"] == "listThings"))
        .expect("listThings");
    assert_eq!(list["statuses"]["observed"], json!(["200", "400"]));
    assert_eq!(list["statuses"]["never_observed"], json!(["503"]));
    assert_eq!(list["parameters"]["sent"], json!(["query:limit"]));
    assert!(list["requests"].as_u64().unwrap_or(0) > 0);

    let html = std::fs::read_to_string(&html_path).expect("HTML report");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("GET /things/{id}") && html.contains("88.9%"));
    assert!(!html.contains("<script") && !html.contains("<link"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_threshold_above_what_was_observed_fails_the_run() {
    let url = server().await;
    let dir = scratch("threshold");
    let mut opts = options(&dir, &url);
    opts.phases = vec!["examples".into(), "fuzzing".into()];
    opts.min_coverage = Some(101.0);
    assert_eq!(conform::run_command(opts).await, conform::EXIT_FAILED);

    let mut opts = options(&dir, &url);
    opts.min_coverage = Some(-1.0);
    assert_eq!(conform::run_command(opts).await, conform::EXIT_USAGE);
    let _ = std::fs::remove_dir_all(&dir);
}
