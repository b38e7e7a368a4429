//! Tools, end to end: RAG and retrieval tools over real knowledge bases, API tools whose test
//! calls a local endpoint for real, secrets that never come back, isolation and bad input.

use std::time::Duration;

use agentplane_api::models::Role;
use poem::{Request, Route, get, handler, post};
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, fields, json};

async fn serve(route: Route) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    tokio::spawn(poem::Server::new(poem::listener::TcpListener::bind(addr.to_string())).run(route));
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    format!("http://{addr}")
}

/// Echoes what it received, so a test can see the headers and body sent.
#[handler]
fn echo(req: &Request, body: String) -> poem::Response {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accept = req
        .headers()
        .get("x-plain")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    poem::Response::builder().content_type("application/json").body(
        json!({"method": req.method().as_str(), "query": req.uri().query(), "authorization": auth, "plain": accept, "body": body}).to_string(),
    )
}

#[handler]
fn broken() -> poem::Response {
    poem::Response::builder()
        .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
        .body("boom")
}

async fn create(app: &TestApp, body: Value) -> (u16, Value) {
    json(app.send_json(Method::POST, "/v1/tools", &body).await).await
}

backend_test!(rag_and_retrieval_tools_answer_from_knowledge_bases, |app| {
    let (_, kb) = json(
        app.send_json(Method::POST, "/v1/knowledge", &json!({"name": "Guide"}))
            .await,
    )
    .await;
    let kb_id = kb["id"].as_str().expect("kb").to_string();
    let (status, _) = json(app.send_json(Method::POST, &format!("/v1/knowledge/{kb_id}/ingest"), &json!({"documents": [
        {"title": "Passwords", "text": "To reset your password, open Settings and choose Reset password."},
        {"title": "Billing", "text": "Invoices are emailed on the first day of each month."}
    ]})).await).await;
    assert_eq!(status, 200);

    let (status, rag) = create(&app, json!({"type": "rag", "name": "Product Q&A", "knowledge_base_ids": [kb_id], "top_k": 3, "embedding_model": "text-embedding-ada-002"})).await;
    assert_eq!(status, 201, "{rag}");
    assert!(rag["id"].as_str().unwrap_or("").starts_with("tool_"));
    assert_eq!(
        (rag["type"].as_str(), rag["top_k"].as_i64()),
        (Some("rag"), Some(3))
    );
    let rag_id = rag["id"].as_str().expect("id");
    let (status, answer) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/tools/{rag_id}/query"),
            &json!({"query": "How do I reset my password?"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["metadata"]["title"], "Passwords");
    assert!(
        answer["answer"].as_str().unwrap_or("").contains("Settings"),
        "{answer}"
    );
    let (_, none) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/tools/{rag_id}/query"),
            &json!({"query": "kubernetes"}),
        )
        .await,
    )
    .await;
    assert!(
        none["answer"].is_null() && none["results"] == json!([]),
        "{none}"
    );

    let (status, retrieval) = create(
        &app,
        json!({"type": "retrieval", "name": "Docs search", "knowledge_base_ids": [kb_id]}),
    )
    .await;
    assert_eq!(status, 201, "{retrieval}");
    let ret_id = retrieval["id"].as_str().expect("id");
    let (status, found) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/tools/{ret_id}/search"),
            &json!({"query": "invoices month", "top_k": 1}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["total"], 1);
    assert_eq!(found["results"][0]["metadata"]["title"], "Billing");
    assert!(found["results"][0]["score"].as_f64().unwrap_or(0.0) > 0.0);

    // The wrong operation for a tool's type is a conflict, not a silent success.
    let (status, body) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/tools/{ret_id}/query"),
            &json!({"query": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("TOOL_TYPE_MISMATCH"))
    );
    let (status, _) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/tools/{rag_id}/test"),
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 409);

    // Lists filter by type; PUT with If-Match; delete.
    let (_, list) = json(app.get("/v1/tools?type=rag").await).await;
    assert_eq!(list["pagination"]["total"], 1);
    let (status, replaced) = json(app.req(Method::PUT, &format!("/v1/tools/{rag_id}")).header("if-match", "\"1\"")
        .json(&json!({"type": "retrieval", "name": "Now retrieval", "knowledge_base_ids": [kb_id]})).send().await.expect("send")).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(
        (replaced["type"].as_str(), replaced["version"].as_i64()),
        (Some("retrieval"), Some(2))
    );
    let resp = app
        .req(Method::PUT, &format!("/v1/tools/{rag_id}"))
        .header("if-match", "\"1\"")
        .json(&json!({"type": "rag", "name": "stale", "knowledge_base_ids": [kb_id]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 412);
    let resp = app
        .req(Method::DELETE, &format!("/v1/tools/{rag_id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 204);
    assert_eq!(app.get(&format!("/v1/tools/{rag_id}")).await.status(), 404);
});

backend_test!(api_tools_call_their_endpoint_and_keep_secrets, |app| {
    let base = serve(
        Route::new()
            .at("/echo", get(echo).post(echo))
            .at("/broken", post(broken).get(broken)),
    )
    .await;
    let secret = "Bearer sk-live-very-secret";
    let resp = app
        .req(Method::POST, "/v1/tools")
        .header("idempotency-key", "tool-1")
        .json(&json!({"type": "api", "name": "Echo", "method": "POST", "url": format!("{base}/echo"),
                      "headers": {"X-Plain": "visible"}, "secret_headers": {"Authorization": secret}, "timeout_ms": 5000}))
        .send()
        .await
        .expect("send");
    let text = resp.text().await.expect("text");
    assert!(
        !text.contains("sk-live"),
        "a secret never comes back: {text}"
    );
    let tool: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(tool["secret_header_names"], json!(["Authorization"]));
    assert_eq!(tool["headers"], json!({"X-Plain": "visible"}));
    let id = tool["id"].as_str().expect("id").to_string();

    let stored_id = id.clone();
    let (body, secrets) = app
        .store
        .run(move |conn| {
            use agentplane::db::schema::tools;
            use diesel::prelude::*;
            tools::table
                .filter(tools::id.eq(stored_id))
                .select((tools::body, tools::secrets))
                .first::<(String, String)>(conn)
                .map_err(agentplane::db::StoreError::from)
        })
        .await
        .expect("row");
    assert!(
        !body.contains("sk-live") && !secrets.contains("sk-live") && secrets.starts_with("v1:"),
        "sealed at rest"
    );

    let get_text = app
        .get(&format!("/v1/tools/{id}"))
        .await
        .text()
        .await
        .expect("text");
    assert!(!get_text.contains("sk-live"));

    let (status, result) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/tools/{id}/test"),
            &json!({"body": {"city": "Paris"}, "query": {"units": "metric"}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(
        (result["ok"].as_bool(), result["status"].as_i64()),
        (Some(true), Some(200)),
        "{result}"
    );
    assert!(result["latency_ms"].as_f64().unwrap_or(-1.0) >= 0.0);
    assert_eq!(result["content_type"], "application/json");
    let echoed: Value =
        serde_json::from_str(result["body_excerpt"].as_str().expect("excerpt")).expect("echo json");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(
        echoed["authorization"], secret,
        "the secret header was sent"
    );
    assert_eq!(echoed["plain"], "visible");
    assert_eq!(echoed["query"], "units=metric");
    assert_eq!(echoed["body"], "{\"city\":\"Paris\"}");

    // A PUT without secret_headers keeps them.
    let (status, _) = json(
        app.send_json(
            Method::PUT,
            &format!("/v1/tools/{id}"),
            &json!({"type": "api", "name": "Echo2", "url": format!("{base}/echo")}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    let (_, result) = json(
        app.send_json(Method::POST, &format!("/v1/tools/{id}/test"), &json!({}))
            .await,
    )
    .await;
    let echoed: Value =
        serde_json::from_str(result["body_excerpt"].as_str().expect("excerpt")).expect("echo json");
    assert_eq!(
        (echoed["method"].as_str(), echoed["authorization"].as_str()),
        (Some("GET"), Some(secret))
    );

    // Failing endpoints are results, not errors.
    let (_, t) = create(
        &app,
        json!({"type": "api", "name": "Broken", "url": format!("{base}/broken")}),
    )
    .await;
    let (status, result) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/tools/{}/test", t["id"].as_str().expect("id")),
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            result["ok"].as_bool(),
            result["status"].as_i64(),
            result["body_excerpt"].as_str()
        ),
        (Some(false), Some(500), Some("boom"))
    );
    let (_, t) = create(&app, json!({"type": "api", "name": "Down", "url": "http://127.0.0.1:9/nothing", "timeout_ms": 2000})).await;
    let (status, result) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/tools/{}/test", t["id"].as_str().expect("id")),
            &json!({}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        result["ok"] == false && result["status"].is_null() && result["error"].is_string(),
        "{result}"
    );
});

backend_test!(tools_reject_bad_input_and_other_organizations, |app| {
    let (status, body) = create(&app, json!({"type": "ftp", "name": "x"})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = create(
        &app,
        json!({"type": "api", "name": "x", "url": "file:///etc/passwd"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = create(
        &app,
        json!({"type": "rag", "name": "x", "knowledge_base_ids": []}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = create(
        &app,
        json!({"type": "rag", "name": "x", "knowledge_base_ids": ["kb_missing"]}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(fields(&body), vec!["knowledge_base_ids[0]".to_string()]);

    let stranger = app.key_for("other-org", "eve", Role::Admin, None).await;
    let (_, theirs) = json(
        app.as_key(&stranger, Method::POST, "/v1/knowledge")
            .json(&json!({"name": "theirs"}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    let (status, body) = create(
        &app,
        json!({"type": "retrieval", "name": "x", "knowledge_base_ids": [theirs["id"]]}),
    )
    .await;
    assert_eq!(
        status, 404,
        "another organization's knowledge base is not found: {body}"
    );

    let (_, kb) = json(
        app.send_json(Method::POST, "/v1/knowledge", &json!({"name": "mine"}))
            .await,
    )
    .await;
    let (_, mine) = create(
        &app,
        json!({"type": "retrieval", "name": "mine", "knowledge_base_ids": [kb["id"]]}),
    )
    .await;
    let id = mine["id"].as_str().expect("id");
    for (method, path, body) in [
        (Method::GET, format!("/v1/tools/{id}"), None),
        (
            Method::PUT,
            format!("/v1/tools/{id}"),
            Some(json!({"type": "api", "name": "x", "url": "http://127.0.0.1:9/"})),
        ),
        (Method::DELETE, format!("/v1/tools/{id}"), None),
        (
            Method::POST,
            format!("/v1/tools/{id}/search"),
            Some(json!({"query": "x"})),
        ),
    ] {
        let mut req = app.as_key(&stranger, method.clone(), &path);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let (status, err) = json(req.send().await.expect("send")).await;
        assert_eq!(status, 404, "{method} {path}: {err}");
    }
    let viewer = app.key_for("default", "val", Role::Viewer, None).await;
    let resp = app
        .as_key(&viewer, Method::POST, &format!("/v1/tools/{id}/search"))
        .json(&json!({"query": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "viewers may search");
    let resp = app
        .as_key(&viewer, Method::POST, "/v1/tools")
        .json(&json!({"type": "retrieval", "name": "x", "knowledge_base_ids": [kb["id"]]}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 403);
});

backend_test!(concurrent_keyed_creates_make_one_tool, |app| {
    let (_, kb) = json(
        app.send_json(Method::POST, "/v1/knowledge", &json!({"name": "docs"}))
            .await,
    )
    .await;
    let body = json!({"type": "rag", "name": "racing", "knowledge_base_ids": [kb["id"]]});
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = app
            .req(Method::POST, "/v1/tools")
            .header("idempotency-key", "tool-race")
            .json(&body);
        tasks.push(tokio::spawn(async move {
            json(req.send().await.expect("send")).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let (status, tool) = task.await.expect("join");
        assert_eq!(status, 201, "every retry answers the first create: {tool}");
        ids.insert(tool["id"].as_str().expect("id").to_string());
    }
    assert_eq!(ids.len(), 1, "concurrent retries agree on one tool");
    let (status, list) = json(app.get("/v1/tools").await).await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["pagination"]["total"], 1, "{list}");
});
