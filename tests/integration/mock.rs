//! `agentplane mock`: Prefer handling, validation errors, CORS, stateful CRUD, the validation
//! proxy, reload and delay, each against a mock on 127.0.0.1:0; and the conformance harness
//! against mocks of our spec and two third-party fixtures, which must find every response
//! valid. The mock does not touch a database, so these tests run once, not per backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use conformance::mock::{self, MockOptions};
use conformance::runner::{self, Config};
use serde_json::{Value, json};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("conformance/tests/fixtures")
        .join(name)
}

fn tasks() -> PathBuf {
    fixture("tasks-3.1/openapi.yaml")
}

fn our_spec() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("generated/openapi.json")
}

/// A running mock; stops when dropped.
struct Running {
    base: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start(mut options: MockOptions) -> Running {
    options.port = 0;
    let mock = mock::bind(options).await.expect("the mock starts");
    let base = format!("http://{}", mock.addr);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(mock.serve(async {
        let _ = stopped.await;
    }));
    Running { base, _stop: stop }
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn json_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

#[tokio::test]
async fn prefer_picks_the_code_the_example_and_dynamic_data() {
    let mut options = MockOptions::new(tasks());
    options.seed = 7;
    let app = start(options.clone()).await;
    let get = |prefer: Option<&str>| {
        let mut request = client()
            .get(format!(
                "{}/tasks/3fa85f64-5717-4562-b3fc-2c963f66afa6",
                app.base
            ))
            .header("X-Api-Key", "k");
        if let Some(p) = prefer {
            request = request.header("Prefer", p);
        }
        request.send()
    };
    // Static: the first named example of the documented success response.
    let (status, body) = json_of(get(None).await.expect("get")).await;
    assert_eq!((status, &body["title"]), (200, &json!("Buy groceries")));
    let (status, body) = json_of(get(Some("example=done")).await.expect("get")).await;
    assert_eq!((status, &body["title"]), (200, &json!("File taxes")));
    let response = get(Some("code=404")).await.expect("get");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let (status, body) = json_of(response).await;
    assert_eq!((status, &body["status"]), (404, &json!(404)));
    let (status, body) = json_of(get(Some("code=418")).await.expect("get")).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("418"),
        "{body}"
    );
    let (status, _) = json_of(get(Some("example=nope")).await.expect("get")).await;
    assert_eq!(status, 400);
    // Dynamic: fresh valid data per request, the same sequence for the same seed.
    let mut first = Vec::new();
    for _ in 0..4 {
        let (status, body) = json_of(get(Some("dynamic=true")).await.expect("get")).await;
        assert_eq!(status, 200);
        assert_eq!(body["kind"], "task", "{body}");
        first.push(body);
    }
    assert!(
        first.windows(2).any(|w| w[0] != w[1]),
        "dynamic answers vary: {first:?}"
    );
    let again = start(options).await;
    for expected in &first {
        let response = client()
            .get(format!(
                "{}/tasks/3fa85f64-5717-4562-b3fc-2c963f66afa6",
                again.base
            ))
            .header("X-Api-Key", "k")
            .header("Prefer", "dynamic=true")
            .send()
            .await
            .expect("get");
        assert_eq!(&json_of(response).await.1, expected, "--seed repeats");
    }
}

#[tokio::test]
async fn a_broken_request_gets_the_documented_error_or_a_problem() {
    let ours = start(MockOptions::new(our_spec())).await;
    let auth = ("Authorization", "Bearer anything");
    // Our spec documents 400 with the error envelope: the details name the field.
    let (status, body) = json_of(
        client()
            .get(format!("{}/v1/agents?per_page=500", ours.base))
            .header(auth.0, auth.1)
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "per_page", "{body}");
    assert_eq!(body["error"]["details"][0]["code"], "maximum", "{body}");
    let (status, body) = json_of(
        client()
            .post(format!("{}/v1/agents", ours.base))
            .header(auth.0, auth.1)
            .json(&json!({"name": 5}))
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["details"]
            .as_array()
            .is_some_and(|d| d.iter().any(|d| d["field"] == "name")),
        "{body}"
    );
    // Security presence: no credentials answer the documented 401.
    let (status, body) = json_of(
        client()
            .get(format!("{}/v1/agents", ours.base))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].is_object(), "{body}");
    // Unknown path, wrong method.
    let response = client()
        .get(format!("{}/v1/nope", ours.base))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = client()
        .post(format!("{}/v1/health", ours.base))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
    // Wrong content type.
    let (status, body) = json_of(
        client()
            .post(format!("{}/v1/agents", ours.base))
            .header(auth.0, auth.1)
            .header("content-type", "text/plain")
            .body("name=x")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "Content-Type");

    // Petstore documents only `default` (an Error with code and message): it is filled in.
    let pets = start(MockOptions::new(fixture("petstore-expanded.yaml"))).await;
    let (status, body) = json_of(
        client()
            .post(format!("{}/pets", pets.base))
            .json(&json!({"tag": "x"}))
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], 422, "{body}");
    assert!(
        body["message"].as_str().unwrap_or("").contains("name"),
        "{body}"
    );
    let (status, _) = json_of(
        client()
            .get(format!("{}/pets/not-a-number", pets.base))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 400);
    // `limit` is an int32: 2^31−1 is valid, 2^31 is outside the format.
    for (limit, expected) in [
        ("2147483647", 200),
        ("2147483648", 400),
        ("-2147483649", 400),
    ] {
        let (status, body) = json_of(
            client()
                .get(format!("{}/pets?limit={limit}", pets.base))
                .send()
                .await
                .expect("get"),
        )
        .await;
        assert_eq!(status, expected, "limit={limit}: {body}");
    }
}

#[tokio::test]
async fn cors_preflights_are_answered_and_answers_carry_cors_headers() {
    let app = start(MockOptions::new(tasks())).await;
    let response = client()
        .request(reqwest::Method::OPTIONS, format!("{}/tasks", app.base))
        .header("Origin", "http://localhost:3000")
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "x-api-key, content-type")
        .send()
        .await
        .expect("preflight");
    assert_eq!(response.status(), 204);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], "http://localhost:3000");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-headers"], "x-api-key, content-type");
    assert_eq!(h["access-control-allow-credentials"], "true");
    let response = client()
        .post(format!("{}/tasks", app.base))
        .header("Origin", "http://localhost:3000")
        .header("X-Api-Key", "k")
        .json(&json!({"title": "x"}))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 201);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert!(
        response.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap_or("")
            .contains("location")
    );
    let mut off = MockOptions::new(tasks());
    off.cors = false;
    let off = start(off).await;
    let response = client()
        .get(format!("{}/health", off.base))
        .header("Origin", "http://localhost:3000")
        .send()
        .await
        .expect("get");
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn stateful_mode_keeps_what_is_created() {
    let mut options = MockOptions::new(tasks());
    options.stateful = true;
    let app = start(options).await;
    let c = client();
    let send = |method: reqwest::Method, path: &str, key: &str, body: Option<Value>| {
        let mut request = c
            .request(method, format!("{}{path}", app.base))
            .header("X-Api-Key", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send()
    };
    use reqwest::Method;
    let (status, list) = json_of(
        send(Method::GET, "/tasks", "alice", None)
            .await
            .expect("list"),
    )
    .await;
    assert_eq!((status, list), (200, json!({"items": [], "total": 0})));
    let response = send(
        Method::POST,
        "/tasks",
        "alice",
        Some(json!({"title": "Write the mock", "tags": ["work"], "due": null})),
    )
    .await
    .expect("create");
    assert_eq!(response.status(), 201);
    let location = response.headers()["location"]
        .to_str()
        .expect("location")
        .to_string();
    let (_, created) = json_of(response).await;
    assert_eq!(created["title"], "Write the mock");
    assert_eq!(created["tags"], json!(["work"]));
    assert_eq!(created["due"], Value::Null);
    let id = created["id"].as_str().expect("an id").to_string();
    assert_eq!(location, format!("/tasks/{id}"));
    let second = json_of(
        send(
            Method::POST,
            "/tasks",
            "alice",
            Some(json!({"title": "Two"})),
        )
        .await
        .expect("create"),
    )
    .await
    .1;
    assert_ne!(second["id"], created["id"], "ids are fresh");

    let (status, read) = json_of(
        send(Method::GET, &location, "alice", None)
            .await
            .expect("read"),
    )
    .await;
    assert_eq!((status, &read), (200, &created));
    let (_, list) = json_of(
        send(Method::GET, "/tasks", "alice", None)
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["items"][0], created);
    let (_, filtered) = json_of(
        send(Method::GET, "/tasks?status=done", "alice", None)
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(filtered["total"], 0);

    // Another identity sees none of it.
    let (status, _) = json_of(
        send(Method::GET, &location, "bob", None)
            .await
            .expect("read"),
    )
    .await;
    assert_eq!(status, 404);
    let (_, list) = json_of(
        send(Method::GET, "/tasks", "bob", None)
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(list["total"], 0);

    let (status, patched) = json_of(
        send(
            Method::PATCH,
            &location,
            "alice",
            Some(json!({"status": "done", "notes": "shipped"})),
        )
        .await
        .expect("patch"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (&patched["status"], &patched["notes"], &patched["title"]),
        (&json!("done"), &json!("shipped"), &json!("Write the mock"))
    );
    let (_, read) = json_of(
        send(Method::GET, &location, "alice", None)
            .await
            .expect("read"),
    )
    .await;
    assert_eq!(read, patched);
    let (_, filtered) = json_of(
        send(Method::GET, "/tasks?status=done", "alice", None)
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(filtered["items"], json!([patched]));

    let response = send(Method::DELETE, &location, "alice", None)
        .await
        .expect("delete");
    assert_eq!(response.status(), 204);
    let (status, body) = json_of(
        send(Method::GET, &location, "alice", None)
            .await
            .expect("read"),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let response = send(Method::DELETE, &location, "alice", None)
        .await
        .expect("delete");
    assert_eq!(response.status(), 404);
    let (_, list) = json_of(
        send(Method::GET, "/tasks", "alice", None)
            .await
            .expect("list"),
    )
    .await;
    assert_eq!(list["total"], 1);
}

/// An upstream whose `/tasks` list breaks the spec and whose `/health` keeps it.
async fn upstream(hits: Arc<AtomicUsize>) -> (String, tokio::sync::oneshot::Sender<()>) {
    use poem::listener::{Acceptor, Listener, TcpListener};
    use poem::{EndpointExt, Route, get, handler};
    #[handler]
    fn list() -> poem::web::Json<Value> {
        poem::web::Json(json!({"items": [{"id": "nope"}], "total": -1}))
    }
    #[handler]
    fn health() -> &'static str {
        "ok"
    }
    let app = Route::new()
        .at("/tasks", get(list))
        .at("/health", get(health))
        .before(move |req| {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                Ok(req)
            }
        });
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        poem::Server::new_with_acceptor(acceptor).run_with_graceful_shutdown(
            app,
            async {
                let _ = stopped.await;
            },
            None,
        ),
    );
    (format!("http://{addr}"), stop)
}

#[tokio::test]
async fn the_proxy_validates_both_directions() {
    let hits = Arc::new(AtomicUsize::new(0));
    let (upstream_url, _stop) = upstream(hits.clone()).await;
    let mut options = MockOptions::new(tasks());
    options.proxy = Some(upstream_url.clone());
    let proxy = start(options.clone()).await;
    // A valid exchange passes through untouched.
    let response = client()
        .get(format!("{}/health", proxy.base))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("sl-violations").is_none());
    assert_eq!(response.text().await.expect("body"), "ok");
    // A response that breaks the schema is passed on with its violations listed.
    let response = client()
        .get(format!("{}/tasks", proxy.base))
        .header("X-Api-Key", "k")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    let violations: Value =
        serde_json::from_str(response.headers()["sl-violations"].to_str().expect("ascii"))
            .expect("a JSON list");
    assert!(
        violations
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["code"] == "response_schema_conformance")),
        "{violations}"
    );
    // A request that breaks the spec is forwarded and reported.
    let before = hits.load(Ordering::SeqCst);
    let response = client()
        .get(format!("{}/tasks?limit=500", proxy.base))
        .header("X-Api-Key", "k")
        .send()
        .await
        .expect("get");
    assert_eq!(hits.load(Ordering::SeqCst), before + 1);
    let header = response.headers()["sl-violations"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(header.contains("query.limit"), "{header}");

    // With --errors, violations fail instead.
    options.errors = true;
    let strict = start(options).await;
    let before = hits.load(Ordering::SeqCst);
    let (status, body) = json_of(
        client()
            .get(format!("{}/tasks?limit=500", strict.base))
            .header("X-Api-Key", "k")
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), before, "not forwarded");
    let response = client()
        .get(format!("{}/tasks", strict.base))
        .header("X-Api-Key", "k")
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 502);
    assert!(response.headers().get("sl-violations").is_some());
    let response = client()
        .get(format!("{}/health", strict.base))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_changed_spec_is_reloaded_behind_the_same_socket() {
    let dir = std::env::temp_dir().join(format!("agentplane-mock-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    for file in ["openapi.yaml", "schemas.yaml"] {
        std::fs::copy(fixture("tasks-3.1").join(file), dir.join(file)).expect("copy");
    }
    let mut options = MockOptions::new(dir.join("openapi.yaml"));
    options.watch_interval = Duration::from_millis(50);
    let app = start(options).await;
    let c = client();
    assert_eq!(
        c.get(format!("{}/version", app.base))
            .send()
            .await
            .expect("get")
            .status(),
        404
    );
    // A new path in the root file appears.
    let root = std::fs::read_to_string(dir.join("openapi.yaml")).expect("read");
    let changed = root.replace(
        "  /health:\n",
        "  /version:\n    get:\n      security: []\n      responses:\n        '200':\n          description: v\n          content:\n            application/json:\n              schema: {type: object, properties: {version: {const: '2.0.0'}}, required: [version]}\n  /health:\n",
    );
    assert_ne!(root, changed);
    std::fs::write(dir.join("openapi.yaml"), changed).expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = c
            .get(format!("{}/version", app.base))
            .send()
            .await
            .expect("the same socket keeps answering");
        if response.status() == 200 {
            assert_eq!(
                response.json::<Value>().await.expect("json"),
                json!({"version": "2.0.0"})
            );
            break;
        }
        assert!(Instant::now() < deadline, "the new path never appeared");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken spec keeps the old one serving.
    let schemas = std::fs::read_to_string(dir.join("schemas.yaml")).expect("read");
    std::fs::write(dir.join("schemas.yaml"), "Task: [unclosed\n").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        c.get(format!("{}/version", app.base))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    // A change in a referenced file counts too: a new enum member becomes valid.
    let archived = |base: String| {
        let c = c.clone();
        async move {
            c.get(format!("{base}/tasks?status=archived"))
                .header("X-Api-Key", "k")
                .send()
                .await
                .expect("get")
                .status()
        }
    };
    assert_eq!(archived(app.base.clone()).await, 400);
    std::fs::write(
        dir.join("schemas.yaml"),
        schemas.replace("enum: [open, done]", "enum: [open, done, archived]"),
    )
    .expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while archived(app.base.clone()).await != 200 {
        assert!(Instant::now() < deadline, "the schema change never took");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn delay_slows_every_answer() {
    let mut options = MockOptions::new(tasks());
    options.delay = Some(mock::Delay::parse("150ms").expect("delay"));
    let app = start(options).await;
    let started = Instant::now();
    let response = client()
        .get(format!("{}/health", app.base))
        .send()
        .await
        .expect("get");
    assert_eq!(response.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

/// The checks that judge whether what the mock answers is what the spec allows.
const SCHEMA_CHECKS: &[&str] = &[
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
];

async fn conform(spec: PathBuf, stateful: bool, other: bool) -> runner::Report {
    let mut options = MockOptions::new(spec.clone());
    options.stateful = stateful;
    let app = start(options).await;
    let doc = conformance::spec::load(&spec).expect("spec");
    let mut config = Config::new(app.base.clone());
    config.headers = vec![
        ("Authorization".into(), "Bearer main".into()),
        ("X-Api-Key".into(), "main".into()),
    ];
    if other {
        config.other_headers = vec![
            ("Authorization".into(), "Bearer other".into()),
            ("X-Api-Key".into(), "other".into()),
        ];
    }
    config.seed = 20_260_101;
    config.max_examples = 20;
    config.workers = 2;
    runner::run(&doc, config).await.expect("the spec is usable")
}

fn schema_failures(report: &runner::Report) -> Vec<String> {
    report
        .failures
        .iter()
        .filter(|f| SCHEMA_CHECKS.contains(&f.check.as_str()))
        .map(|f| format!("{} [{}] {}", f.operation, f.check, f.message))
        .collect()
}

#[tokio::test]
async fn conform_finds_every_answer_of_a_mock_of_our_spec_valid() {
    let report = conform(our_spec(), true, true).await;
    let summary = conformance::report::summary(&report);
    // Stateful, every check passes: even the ones that need a server that remembers.
    assert!(report.failures.is_empty(), "{summary}");
    for check in [
        "response_schema_conformance",
        "use_after_free",
        "ensure_resource_availability",
        "cross_tenant_isolation",
        "conditional_requests",
        "read_after_write",
        "pagination_totals",
    ] {
        let passed: usize = report
            .operations
            .iter()
            .filter_map(|o| o.checks.get(check))
            .map(|c| c.passed)
            .sum();
        assert!(passed > 0, "{check} never passed\n{summary}");
    }
    // Static, every answer is still valid.
    let report = conform(our_spec(), false, false).await;
    let failures = schema_failures(&report);
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(report.cases > 300);
}

#[tokio::test]
async fn conform_finds_every_answer_of_mocks_of_third_party_specs_valid() {
    for spec in [fixture("petstore-expanded.yaml"), tasks()] {
        for stateful in [false, true] {
            let report = conform(spec.clone(), stateful, false).await;
            let failures = schema_failures(&report);
            assert!(
                failures.is_empty(),
                "{} (stateful: {stateful}): {failures:#?}",
                spec.display()
            );
            assert!(
                report.cases > 50,
                "{}",
                conformance::report::summary(&report)
            );
        }
    }
    // Each fixture's stateful mock passes every check.
    for spec in [fixture("petstore-expanded.yaml"), tasks()] {
        let report = conform(spec.clone(), true, false).await;
        assert!(
            report.failures.is_empty(),
            "{}: {}",
            spec.display(),
            conformance::report::summary(&report)
        );
    }
}
