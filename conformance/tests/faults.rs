//! The faults no peer catches (issue 20): a write that ignores a stale `If-Match`, an update
//! answered but not stored, and list totals or page walks that disagree with the items, in
//! the shapes real APIs use. Each fault is built into a small server that must be caught by
//! its check on its operation, beside a correct server that must pass; a caught failure is
//! then replayed from the run's cassette, against the broken server (still fails) and the
//! correct one (fixed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

mod common;

use common::{error, json_response};
use conformance::Outcome;
use conformance::RequestValidator;
use conformance::runner::{self, Config, Report};
use poem::Response;
use poem::http::StatusCode;
use serde_json::{Value, json};

/// Items every list serves.
const LISTED: u64 = 13;

fn spec() -> Value {
    let error = json!({"description": "An error.", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    let ok = |schema: Value| json!({"description": "OK.", "content": {"application/json": {"schema": schema}}});
    let note = json!({"$ref": "#/components/schemas/Note"});
    let note_ok = json!({
        "description": "The note.",
        "headers": {"ETag": {"required": true, "schema": {"type": "string"}}},
        "content": {"application/json": {"schema": note}}
    });
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^n[0-9]{1,6}$"}});
    let if_match =
        json!({"name": "If-Match", "in": "header", "schema": {"type": "string", "maxLength": 64}});
    let input = json!({"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NoteInput"}}}});
    let size = |name: &str| json!({"name": name, "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 50}});
    let page = json!({"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}});
    let item = json!({"$ref": "#/components/schemas/Item"});
    let items = json!({"type": "array", "items": item});
    let count = json!({"type": "integer", "minimum": 0});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "faults", "version": "1"},
        "paths": {
            "/notes": {"post": {
                "operationId": "createNote",
                "requestBody": input,
                "responses": {"201": ok(note.clone()), "400": error, "422": error}
            }},
            "/notes/{id}": {
                "get": {
                    "operationId": "getNote",
                    "parameters": [id],
                    "responses": {"200": note_ok, "400": error, "404": error}
                },
                "put": {
                    "operationId": "replaceNote",
                    "parameters": [id, if_match],
                    "requestBody": input,
                    "responses": {"200": ok(note.clone()), "400": error, "404": error, "412": error, "422": error}
                },
                "patch": {
                    "operationId": "updateNote",
                    "parameters": [id, if_match],
                    "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/NotePatch"}}}},
                    "responses": {"200": ok(note.clone()), "400": error, "404": error, "412": error, "422": error}
                },
                "delete": {
                    "operationId": "deleteNote",
                    "parameters": [id, if_match],
                    "responses": {"204": {"description": "Gone."}, "400": error, "404": error, "412": error}
                }
            },
            "/lists/data-total": {"get": {
                "operationId": "listDataTotal",
                "parameters": [page, size("per_page")],
                "responses": {"200": ok(json!({"type": "object", "required": ["data", "total"], "properties": {"data": items, "total": count}})), "400": error}
            }},
            "/lists/pagination": {"get": {
                "operationId": "listPagination",
                "parameters": [page, size("per_page")],
                "responses": {"200": ok(json!({"type": "object", "required": ["data", "pagination"], "properties": {
                    "data": items,
                    "pagination": {"type": "object", "required": ["total", "pages", "page", "per_page"], "properties": {
                        "total": count, "pages": count, "page": count, "per_page": count
                    }}
                }})), "400": error}
            }},
            "/lists/total-count": {"get": {
                "operationId": "listTotalCount",
                "parameters": [
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 1000}},
                    size("limit")
                ],
                "responses": {"200": ok(json!({"type": "object", "required": ["items", "total_count"], "properties": {"items": items, "total_count": count}})), "400": error}
            }},
            "/lists/link": {"get": {
                "operationId": "listLink",
                "parameters": [page, size("per_page")],
                "responses": {"200": {
                    "description": "A page; `Link` names the next one.",
                    "headers": {
                        "Link": {"schema": {"type": "string"}},
                        "X-Total-Count": {"schema": {"type": "integer"}}
                    },
                    "content": {"application/json": {"schema": items}}
                }, "400": error}
            }},
            "/lists/cursor": {"get": {
                "operationId": "listCursor",
                "parameters": [
                    {"name": "cursor", "in": "query", "schema": {"type": "string", "maxLength": 20}},
                    size("limit")
                ],
                "responses": {"200": ok(json!({"type": "object", "required": ["data", "next_cursor"], "properties": {
                    "data": items, "next_cursor": {"type": ["string", "null"]}
                }})), "400": error}
            }}
        },
        "components": {"schemas": {
            "Note": {"type": "object", "required": ["id", "title", "body"], "properties": {
                "id": {"type": "string"}, "title": {"type": "string"}, "body": {"type": "string"}
            }},
            "NoteInput": {"type": "object", "required": ["title", "body"], "additionalProperties": false, "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 20},
                "body": {"type": "string", "maxLength": 40}
            }},
            "NotePatch": {"type": "object", "additionalProperties": false, "minProperties": 1, "properties": {
                "title": {"type": "string", "minLength": 1, "maxLength": 20},
                "body": {"type": "string", "maxLength": 40}
            }},
            "Item": {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}},
            "Error": {"type": "object", "required": ["message"], "properties": {"message": {"type": "string"}}}
        }}
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    /// A PUT with a stale `If-Match` replaces the note anyway.
    PutIgnoresIfMatch,
    /// A PATCH with a stale `If-Match` changes the note anyway.
    PatchIgnoresIfMatch,
    /// A DELETE with a stale `If-Match` deletes the note anyway.
    DeleteIgnoresIfMatch,
    /// A PATCH answers the changed note but does not store it.
    PatchNotStored,
    /// A PUT answers the replaced note but does not store it.
    PutNotStored,
    /// `{data, total}`: the total counts one item too many.
    DataTotalTooHigh,
    /// `{data, pagination}`: `pages` is one more than the pages there are.
    PaginationPagesWrong,
    /// `{data, pagination}`: each page after the first starts one item early (repeats one).
    PagesOverlap,
    /// `{items, total_count}` with offset and limit: an offset skips one item (loses one).
    OffsetLosesItem,
    /// A bare array and a `Link` header whose `rel="next"` skips a page.
    LinkSkipsPage,
    /// `{data, next_cursor}`: the next page starts at the previous page's last item.
    CursorRepeats,
    /// Not a fault: the first requests are answered 429 with `Retry-After: 1` (which no
    /// operation documents); a run backs off and sends them again.
    RateLimited,
}

/// Requests [`Fault::RateLimited`] answers 429.
const RATE_LIMITED: u64 = 3;

/// Every fault, the check meant to find it and the operation it must be found on.
const CATALOG: &[(Fault, &str, &str)] = &[
    (
        Fault::PutIgnoresIfMatch,
        "conditional_requests",
        "PUT /notes/{id}",
    ),
    (
        Fault::PatchIgnoresIfMatch,
        "conditional_requests",
        "PATCH /notes/{id}",
    ),
    (
        Fault::DeleteIgnoresIfMatch,
        "conditional_requests",
        "DELETE /notes/{id}",
    ),
    (
        Fault::PatchNotStored,
        "read_after_write",
        "PATCH /notes/{id}",
    ),
    (Fault::PutNotStored, "read_after_write", "PUT /notes/{id}"),
    (
        Fault::DataTotalTooHigh,
        "pagination_totals",
        "GET /lists/data-total",
    ),
    (
        Fault::PaginationPagesWrong,
        "pagination_totals",
        "GET /lists/pagination",
    ),
    (
        Fault::PagesOverlap,
        "pagination_totals",
        "GET /lists/pagination",
    ),
    (
        Fault::OffsetLosesItem,
        "pagination_totals",
        "GET /lists/total-count",
    ),
    (Fault::LinkSkipsPage, "pagination_totals", "GET /lists/link"),
    (
        Fault::CursorRepeats,
        "pagination_totals",
        "GET /lists/cursor",
    ),
];

struct State {
    fault: Fault,
    notes: Mutex<BTreeMap<String, Value>>,
    next: AtomicU64,
    /// Requests answered 429 so far.
    limited: AtomicU64,
    validator: RequestValidator,
}

fn etag_of(note: &Value) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in note.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{hash:x}\"")
}

fn with_header(mut response: Response, name: &'static str, value: &str) -> Response {
    if let Ok(v) = value.parse() {
        response.headers_mut().insert(name, v);
    }
    response
}

/// `name=value` pairs of a query string, as numbers where they are.
fn query_number(query: &str, name: &str) -> Option<u64> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
}

fn query_text(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Items `from..from + n` of the listed ones.
fn slice(from: u64, n: u64) -> Vec<Value> {
    (from..(from + n).min(LISTED))
        .map(|i| json!({"id": i}))
        .collect()
}

fn list(fault: Fault, path: &str, query: &str) -> Response {
    let per_page = query_number(query, "per_page")
        .or_else(|| query_number(query, "limit"))
        .unwrap_or(10);
    let page = query_number(query, "page").unwrap_or(1);
    let mut from = (page - 1) * per_page;
    if fault == Fault::PagesOverlap && page > 1 && path == "/lists/pagination" {
        from -= 1;
    }
    let pages = LISTED.div_ceil(per_page);
    match path {
        "/lists/data-total" => {
            let total = LISTED + u64::from(fault == Fault::DataTotalTooHigh);
            json_response(200, &json!({"data": slice(from, per_page), "total": total}))
        }
        "/lists/pagination" => {
            let pages = pages + u64::from(fault == Fault::PaginationPagesWrong);
            json_response(
                200,
                &json!({"data": slice(from, per_page), "pagination": {
                    "total": LISTED, "pages": pages, "page": page, "per_page": per_page
                }}),
            )
        }
        "/lists/total-count" => {
            let offset = query_number(query, "offset").unwrap_or(0)
                + u64::from(fault == Fault::OffsetLosesItem);
            json_response(
                200,
                &json!({"items": slice(offset, per_page), "total_count": LISTED}),
            )
        }
        "/lists/link" => {
            let r = json_response(200, &Value::Array(slice(from, per_page)));
            let r = with_header(r, "x-total-count", &LISTED.to_string());
            let step = if fault == Fault::LinkSkipsPage { 2 } else { 1 };
            if page < pages {
                let next = format!(
                    "</lists/link?page={}&per_page={per_page}>; rel=\"next\"",
                    page + step
                );
                with_header(r, "link", &next)
            } else {
                r
            }
        }
        "/lists/cursor" => {
            let start: u64 = query_text(query, "cursor")
                .and_then(|c| c.strip_prefix('c').and_then(|n| n.parse().ok()))
                .unwrap_or(0);
            let end = (start + per_page).min(LISTED);
            let next = if end < LISTED {
                let next = if fault == Fault::CursorRepeats {
                    end - 1
                } else {
                    end
                };
                Value::from(format!("c{next}"))
            } else {
                Value::Null
            };
            json_response(
                200,
                &json!({"data": slice(start, per_page), "next_cursor": next}),
            )
        }
        _ => error(404, "no route"),
    }
}

async fn handle(state: Arc<State>, req: poem::Request) -> Response {
    let fault = state.fault;
    if fault == Fault::RateLimited && state.limited.fetch_add(1, Ordering::SeqCst) < RATE_LIMITED {
        return with_header(error(429, "slow down"), "retry-after", "1");
    }
    let incoming = common::incoming(req).await;
    match incoming.validate(&state.validator) {
        Outcome::NoRoute => return error(404, "no route"),
        Outcome::MethodNotAllowed { allow } => {
            return with_header(error(405, "method"), "allow", &allow.join(", "));
        }
        Outcome::Invalid { status, .. } => return error(status, "invalid"),
        Outcome::Valid { .. } => {}
    }
    let (method, path) = (incoming.method.as_str(), incoming.path.as_str());
    if path.starts_with("/lists/") {
        return list(fault, path, &incoming.query);
    }
    let input: Value = serde_json::from_slice(&incoming.body).unwrap_or(Value::Null);
    let mut notes = state.notes.lock().expect("lock");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let id = match segments.as_slice() {
        ["notes"] if method == "POST" => {
            let id = format!("n{:06}", state.next.fetch_add(1, Ordering::SeqCst));
            let mut note = input;
            note["id"] = Value::from(id.clone());
            notes.insert(id, note.clone());
            return json_response(201, &note);
        }
        ["notes", id] => (*id).to_string(),
        _ => return error(404, "no route"),
    };
    let Some(current) = notes.get(&id).cloned() else {
        return error(404, "no such note");
    };
    let ignores_if_match = matches!(
        (fault, method),
        (Fault::PutIgnoresIfMatch, "PUT")
            | (Fault::PatchIgnoresIfMatch, "PATCH")
            | (Fault::DeleteIgnoresIfMatch, "DELETE")
    );
    if let Some(wanted) = incoming.header("if-match")
        && wanted != etag_of(&current)
        && !ignores_if_match
    {
        return error(412, "the note changed");
    }
    match method {
        "GET" => {
            let etag = etag_of(&current);
            with_header(json_response(200, &current), "etag", &etag)
        }
        "PUT" | "PATCH" => {
            let mut note = if method == "PUT" {
                input
            } else {
                let mut note = current;
                for (k, v) in input.as_object().into_iter().flatten() {
                    note[k] = v.clone();
                }
                note
            };
            note["id"] = Value::from(id.clone());
            let stored = !matches!(
                (fault, method),
                (Fault::PutNotStored, "PUT") | (Fault::PatchNotStored, "PATCH")
            );
            if stored {
                notes.insert(id, note.clone());
            }
            json_response(200, &note)
        }
        "DELETE" => {
            notes.remove(&id);
            Response::builder().status(StatusCode::NO_CONTENT).finish()
        }
        _ => error(405, "method"),
    }
}

async fn start(fault: Fault) -> String {
    start_with_state(fault).await.0
}

async fn start_with_state(fault: Fault) -> (String, Arc<State>) {
    let doc = spec();
    let state = Arc::new(State {
        fault,
        notes: Mutex::new(BTreeMap::new()),
        next: AtomicU64::new(1),
        limited: AtomicU64::new(0),
        validator: RequestValidator::new(&doc).expect("spec compiles"),
    });
    let served = state.clone();
    let app = poem::endpoint::make(move |req: poem::Request| {
        let state = served.clone();
        async move { handle(state, req).await }
    });
    (common::serve(app).await, state)
}

fn config(base: String) -> Config {
    let mut config = Config::new(base);
    config.seed = 20;
    config.max_examples = 10;
    config.workers = 2;
    config
}

async fn conform(base: String, cassette: Option<std::path::PathBuf>) -> Report {
    let mut config = config(base);
    config.cassette = cassette;
    runner::run(&spec(), config)
        .await
        .expect("the spec is usable")
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
async fn a_correct_server_passes_and_every_fault_check_judges_it() {
    let report = conform(start(Fault::None).await, None).await;
    let summary = conformance::report::summary(&report);
    assert!(report.failures.is_empty(), "{summary}");
    for (_, check, operation) in CATALOG {
        assert!(
            passed(&report, operation, check) > 0,
            "{check} never passed on {operation}\n{summary}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_found_by_its_check_on_its_operation() {
    let mut table = String::new();
    let mut missed = Vec::new();
    for (fault, check, operation) in CATALOG.iter().copied() {
        let report = conform(start(fault).await, None).await;
        let found: Vec<String> = report
            .failures
            .iter()
            .map(|f| format!("{} [{}] {}", f.operation, f.check, f.message))
            .collect();
        table.push_str(&format!("{fault:?} → {}\n", found.join("; ")));
        let hits = report
            .failures
            .iter()
            .filter(|f| f.check == check && f.operation == operation)
            .count();
        if hits == 0 {
            missed.push(format!(
                "{fault:?}: expected {operation} [{check}]\n{}",
                conformance::report::summary(&report)
            ));
        }
        // The fault is the only thing wrong: nothing else is reported.
        if let Some(other) = report
            .failures
            .iter()
            .find(|f| f.operation != operation || f.check != check)
        {
            missed.push(format!(
                "{fault:?}: unexpected {} [{}] {}",
                other.operation, other.check, other.message
            ));
        }
    }
    eprintln!("{table}");
    assert!(missed.is_empty(), "{}", missed.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_replays_from_the_cassette_until_it_is_fixed() {
    let dir = std::env::temp_dir().join(format!("conform-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (fault, check, operation) in [
        (
            Fault::PatchNotStored,
            "read_after_write",
            "PATCH /notes/{id}",
        ),
        (
            Fault::DeleteIgnoresIfMatch,
            "conditional_requests",
            "DELETE /notes/{id}",
        ),
        (
            Fault::CursorRepeats,
            "pagination_totals",
            "GET /lists/cursor",
        ),
    ] {
        let cassette = dir.join(format!("{fault:?}.yaml"));
        let broken = start(fault).await;
        let report = conform(broken.clone(), Some(cassette.clone())).await;
        let failure = report
            .failures
            .iter()
            .find(|f| f.check == check && f.operation == operation)
            .unwrap_or_else(|| panic!("{fault:?} not found"));
        assert_eq!(failure.id.len(), 12, "{}", failure.id);
        let text = std::fs::read_to_string(&cassette).expect("cassette");
        let scripts = conformance::cassette::parse_replay(&text).expect("replay scripts");
        let script: Vec<_> = scripts.into_iter().filter(|s| s.id == failure.id).collect();
        assert_eq!(script.len(), 1, "the failure's id replays\n{text}");
        // The same run again gives the same id.
        let again = conform(start(fault).await, None).await;
        assert!(
            again.failures.iter().any(|f| f.id == failure.id),
            "{fault:?}: the id is stable"
        );
        // Against the broken server the failure is still there; against the correct one
        // (the fix) it is gone.
        let (_, still) = runner::replay_failures(&spec(), config(broken), &script)
            .await
            .expect("replay");
        assert!(!still[0].fixed(), "{fault:?}: {:?}", still[0]);
        let fixed = start(Fault::None).await;
        let (report, now) = runner::replay_failures(&spec(), config(fixed.clone()), &script)
            .await
            .expect("replay");
        assert!(
            now[0].fixed() && now[0].verdict == conformance::checks::Verdict::Pass,
            "{fault:?}: {:?}\n{}",
            now[0],
            conformance::report::summary(&report)
        );
        // The command: by id with the cassette, or the cassette alone (every failure).
        let exit =
            runner::replay_command(&spec(), config(fixed.clone()), &failure.id, Some(&cassette))
                .await;
        assert_eq!(exit, conformance::conform::EXIT_PASSED, "{fault:?}");
        let exit = runner::replay_command(
            &spec(),
            config(start(fault).await),
            &cassette.to_string_lossy(),
            None,
        )
        .await;
        assert_eq!(exit, conformance::conform::EXIT_FAILED, "{fault:?}");
        let exit =
            runner::replay_command(&spec(), config(fixed), "0123456789ab", Some(&cassette)).await;
        assert_eq!(exit, conformance::conform::EXIT_USAGE, "an unknown id");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_out_not_reported() {
    let (base, state) = start_with_state(Fault::RateLimited).await;
    let started = std::time::Instant::now();
    let report = conform(base, None).await;
    let summary = conformance::report::summary(&report);
    assert!(report.failures.is_empty(), "{summary}");
    assert!(state.limited.load(Ordering::SeqCst) > RATE_LIMITED);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "the run waited as Retry-After asked"
    );
}
