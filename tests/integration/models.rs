//! The model registry, and the openai-compatible provider against a fake server on loopback.

use agentplane::egress::{Egress, Policy};
use std::time::Duration;

use agentplane::engine::provider::{
    ChatMessage, CompletionRequest, OpenAiCompatible, Provider, ProviderError,
};
use agentplane_api::models::Role;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::web::Json as PJson;
use poem::{EndpointExt, Request, Response, Route, handler, post};
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::json;

backend_test!(models_crud_with_write_only_encrypted_keys, |app| {
    let (status, list) = json(app.get("/v1/models").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        list["data"][0]["id"], "model_local",
        "the built-in model is always there"
    );
    assert_eq!(list["pagination"]["total"], 1);
    let (status, local) = json(app.get("/v1/models/model_local").await).await;
    assert_eq!((status, local["built_in"].as_bool()), (200, Some(true)));

    let body = json!({
        "name": "GPT-4 Turbo",
        "provider": "openai-compatible",
        "model_id": "gpt-4-turbo-preview",
        "api_key": "sk-very-secret-value",
        "endpoint": "https://api.openai.com/v1",
        "pricing": {"input_per_1k": 0.01, "output_per_1k": 0.03}
    });
    let resp = app.send_json(Method::POST, "/v1/models", &body).await;
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    let text = resp.text().await.expect("text");
    assert!(!text.contains("sk-very-secret-value"), "{text}");
    let created: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(created["api_key_set"], true);
    assert!(created.get("api_key").is_none());
    assert_eq!(created["pricing"]["output_per_1k"], 0.03);
    let id = created["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("model_"));

    // Stored sealed, not in clear.
    let store = app.store.clone();
    let lookup = id.clone();
    let stored: (Option<String>, String) = tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            use agentplane::db::schema::models::dsl as m;
            use diesel::prelude::*;
            m::models
                .filter(m::id.eq(&lookup))
                .select((m::api_key_encrypted, m::body))
                .first(conn)
                .map_err(agentplane::db::StoreError::from)
        })
    })
    .await
    .expect("join")
    .expect("row");
    let sealed = stored.0.expect("a sealed key");
    assert!(sealed.starts_with("v1:") && !sealed.contains("sk-very"));
    assert!(!stored.1.contains("sk-very"));

    // Replace without a key keeps it; the list shows the new model before the built-in one.
    let (status, replaced) = json(
        app.send_json(
            Method::PUT,
            &location,
            &json!({"name": "renamed", "provider": "openai-compatible", "model_id": "m", "endpoint": "http://127.0.0.1:9/v1"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(
        (
            replaced["api_key_set"].as_bool(),
            replaced["version"].as_i64()
        ),
        (Some(true), Some(2))
    );
    let (_, list) = json(app.get("/v1/models?per_page=1").await).await;
    assert_eq!(list["data"][0]["id"], id.as_str());
    assert_eq!(list["pagination"]["total"], 2);
    let cursor = list["pagination"]["next_cursor"].as_str().expect("cursor");
    let (_, last) = json(
        app.get(&format!("/v1/models?limit=1&cursor={cursor}"))
            .await,
    )
    .await;
    assert_eq!(last["data"][0]["id"], "model_local");
    let (_, only_http) = json(app.get("/v1/models?provider=openai-compatible").await).await;
    assert_eq!(only_http["pagination"]["total"], 1);

    // Bad input.
    let (status, defaulted) = json(
        app.send_json(
            Method::POST,
            "/v1/models",
            &json!({"name": "x", "provider": "openai-compatible", "model_id": "m"}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, defaulted["endpoint"].as_str()),
        (201, Some("https://api.openai.com/v1"))
    );
    let resp = app
        .req(
            Method::DELETE,
            &format!("/v1/models/{}", defaulted["id"].as_str().unwrap_or("")),
        )
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 204);
    for bad in [
        json!({"name": "x", "provider": "magic", "model_id": "m"}),
        json!({"name": "x", "provider": "local"}),
        json!({"name": "x", "provider": "local", "model_id": "m", "pricing": {"input_per_1k": -1, "output_per_1k": 0}}),
        json!({"name": "x", "provider": "local", "model_id": "m", "endpoint": "ftp://x"}),
        json!({"name": "x", "provider": "local", "model_id": "m", "endpoint": "http:///x"}),
    ] {
        let (status, _) = json(app.send_json(Method::POST, "/v1/models", &bad).await).await;
        assert!(status == 400 || status == 422, "{bad}: {status}");
    }

    // Other organizations see nothing; the built-in model cannot be deleted.
    let other = app.key_for("other-org", "eve", Role::Admin, None).await;
    for method in [Method::GET, Method::DELETE] {
        let resp = app
            .as_key(&other, method, &location)
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 404);
    }
    let resp = app
        .req(Method::DELETE, "/v1/models/model_local")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 404);
    let resp = app
        .req(Method::DELETE, &location)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 204);
    let (status, _) = json(app.get(&location).await).await;
    assert_eq!(status, 404);
});

/// A fake chat-completions server: `fail` answers 500, `slow` sleeps, `stream: true` answers
/// SSE; it checks the bearer key.
#[handler]
async fn fake_completions(req: &Request, PJson(body): PJson<Value>) -> Response {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if auth != "Bearer sk-test" {
        return Response::builder()
            .status(poem::http::StatusCode::UNAUTHORIZED)
            .body(r#"{"error":{"message":"bad key"}}"#);
    }
    match body["model"].as_str() {
        Some("fail") => {
            return Response::builder()
                .status(poem::http::StatusCode::INTERNAL_SERVER_ERROR)
                .body(r#"{"error":{"message":"upstream exploded"}}"#);
        }
        Some("slow") => tokio::time::sleep(Duration::from_secs(3)).await,
        // `sleep-<ms>`: a model that takes that long to answer.
        Some(m) if m.starts_with("sleep-") => {
            let ms = m["sleep-".len()..].parse().unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        _ => {}
    }
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_string();
    if body["stream"] == true {
        let mut sse = String::from(": keep-alive\n\n");
        for piece in ["Echo", ": ", &last] {
            sse.push_str(&format!(
                "data: {}\n\n",
                json!({"choices": [{"delta": {"content": piece}}]})
            ));
        }
        sse.push_str(&format!(
            "data: {}\n\ndata: [DONE]\n\n",
            json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3}})
        ));
        return Response::builder()
            .content_type("text/event-stream")
            .body(sse);
    }
    Response::builder().content_type("application/json").body(
        json!({
            "choices": [{"message": {"role": "assistant", "content": format!("Echo: {last}")}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3}
        })
        .to_string(),
    )
}

/// Starts the fake server; returns its base URL (`…/v1`).
pub async fn fake_openai() -> String {
    let acceptor = TcpListener::bind("127.0.0.1:0")
        .into_acceptor()
        .await
        .expect("bind");
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .expect("addr");
    let app = Route::new().at("/v1/chat/completions", post(fake_completions).boxed());
    tokio::spawn(poem::Server::new_with_acceptor(acceptor).run(app));
    format!("http://{addr}/v1")
}

fn ask(model: &str) -> CompletionRequest {
    CompletionRequest {
        model: model.into(),
        messages: vec![ChatMessage {
            role: "user".into(),
            content: "hello there".into(),
        }],
        passages: Vec::new(),
        temperature: Some(0.2),
        max_tokens: Some(50),
    }
}

#[tokio::test]
async fn openai_compatible_completes_streams_and_maps_failures() {
    let base = fake_openai().await;
    // The tests' model server is on loopback, which the egress policy opens only when told.
    let open = Egress::new(Policy::with_loopback(Duration::from_secs(30)));
    let refused = OpenAiCompatible::new(
        &base,
        Some("sk-test".into()),
        Duration::from_secs(2),
        Egress::new(Policy::default()),
    );
    match refused.complete(&ask("gpt")).await {
        Err(ProviderError::Transport(why)) => assert!(why.contains("egress policy"), "{why}"),
        other => panic!("a loopback model endpoint was called by default: {other:?}"),
    }
    let provider = OpenAiCompatible::new(
        &base,
        Some("sk-test".into()),
        Duration::from_millis(800),
        open.clone(),
    );
    let done = provider.complete(&ask("gpt")).await.expect("complete");
    assert_eq!(done.text, "Echo: hello there");
    assert_eq!((done.input_tokens, done.output_tokens), (11, 3));

    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let streamed = provider.stream(&ask("gpt"), tx).await.expect("stream");
    let mut pieces = Vec::new();
    while let Some(p) = rx.recv().await {
        pieces.push(p);
    }
    assert_eq!(pieces, vec!["Echo", ": ", "hello there"]);
    assert_eq!(streamed.text, "Echo: hello there");
    assert_eq!((streamed.input_tokens, streamed.output_tokens), (11, 3));

    let err = provider.complete(&ask("fail")).await.expect_err("500");
    assert_eq!(
        err,
        ProviderError::Upstream {
            status: 500,
            message: "upstream exploded".into()
        }
    );
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    assert!(matches!(
        provider.stream(&ask("fail"), tx).await,
        Err(ProviderError::Upstream { status: 500, .. })
    ));
    let started = std::time::Instant::now();
    assert!(matches!(
        provider.complete(&ask("slow")).await,
        Err(ProviderError::Timeout(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
    let (tx, _rx) = tokio::sync::mpsc::channel(16);
    assert!(matches!(
        provider.stream(&ask("slow"), tx).await,
        Err(ProviderError::Timeout(_))
    ));
    let wrong_key = OpenAiCompatible::new(
        &base,
        Some("nope".into()),
        Duration::from_secs(2),
        open.clone(),
    );
    assert!(matches!(
        wrong_key.complete(&ask("gpt")).await,
        Err(ProviderError::Upstream { status: 401, .. })
    ));
    let nowhere =
        OpenAiCompatible::new("http://127.0.0.1:9/v1", None, Duration::from_secs(2), open);
    assert!(matches!(
        nowhere.complete(&ask("gpt")).await,
        Err(ProviderError::Transport(_))
    ));
}
