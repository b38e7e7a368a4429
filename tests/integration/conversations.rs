//! Conversations: CRUD, messages answered with the history (waited and streamed), usage
//! per message, bad input and other organizations.

use agentplane_api::models::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, fields, json};

async fn conversation(app: &TestApp, agent: &str) -> Value {
    let resp = app
        .send_json(
            Method::POST,
            "/v1/conversations",
            &json!({"agent_id": agent, "user_id": "user_456", "title": "Orders"}),
        )
        .await;
    assert!(resp.headers().contains_key("etag"));
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, c) = json(resp).await;
    assert_eq!(status, 201, "{c}");
    assert_eq!(
        location,
        Some(format!(
            "/v1/conversations/{}",
            c["id"].as_str().expect("id")
        ))
    );
    c
}

backend_test!(conversations_answer_with_history_and_stream, |app| {
    // The fake OpenAI-compatible model echoes the last message; the request it gets shows
    // the history, so use the local model and check what it was sent through the usage.
    let agent = app
        .create_agent(json!({"name": "Helper", "system_prompt": "Be brief."}))
        .await;
    let agent = agent["id"].as_str().expect("id").to_string();
    let c = conversation(&app, &agent).await;
    let id = c["id"].as_str().expect("id").to_string();
    assert_eq!(
        (c["message_count"].as_i64(), c["messages"].clone()),
        (Some(0), json!([]))
    );

    // Waited: 201 with the message, the reply and the execution.
    let path = format!("/v1/conversations/{id}/messages");
    let (status, first) = json(
        app.send_json(
            Method::POST,
            &path,
            &json!({"message": "I need help with my order"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["message"]["role"], "user");
    assert_eq!(first["reply"]["role"], "assistant");
    assert_eq!(first["execution"]["status"], "succeeded");
    assert_eq!(first["execution"]["conversation_id"], id.as_str());
    let exec = first["execution"]["id"].as_str().expect("exec").to_string();
    assert_eq!(first["reply"]["execution_id"], exec.as_str());
    assert_eq!(first["message"]["execution_id"], exec.as_str());
    let first_input = first["execution"]["usage"]["input_tokens"]
        .as_i64()
        .expect("tokens");
    assert_eq!(first["reply"]["input_tokens"], first_input);

    // The second turn carries the first two messages as history: more input tokens.
    let (status, second) = json(
        app.send_json(Method::POST, &path, &json!({"message": "It is order 1234"}))
            .await,
    )
    .await;
    assert_eq!(status, 201, "{second}");
    let second_input = second["execution"]["usage"]["input_tokens"]
        .as_i64()
        .expect("tokens");
    let history = agentplane::engine::provider::count_tokens("I need help with my order")
        + 4
        + agentplane::engine::provider::count_tokens(
            first["reply"]["content"].as_str().expect("reply"),
        )
        + 4;
    let alone = agentplane::engine::provider::count_tokens("It is order 1234")
        - agentplane::engine::provider::count_tokens("I need help with my order");
    assert_eq!(second_input, first_input + alone + history, "{second}");

    // Streamed: events, the last one carrying the reply.
    let resp = app
        .send_json(
            Method::POST,
            &path,
            &json!({"message": "Thanks!", "stream": true}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let evs = conformance::response::sse_events(&resp.bytes().await.expect("body"));
    let last: Value = serde_json::from_str(&evs.last().expect("events").data).expect("json");
    assert_eq!(last["type"], "execution.completed");
    assert_eq!(last["message"]["role"], "assistant");
    assert!(evs.iter().any(|e| e.event.as_deref() == Some("token")));

    // The conversation holds six messages, oldest first, paged both ways.
    let (status, got) = json(app.get(&format!("/v1/conversations/{id}")).await).await;
    assert_eq!(status, 200);
    assert_eq!(got["message_count"], 6);
    let roles: Vec<&str> = got["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["role"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        roles,
        [
            "user",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant"
        ]
    );
    let (_, page) = json(app.get(&format!("{path}?per_page=4")).await).await;
    assert_eq!(page["pagination"]["total"], 6);
    let cursor = page["pagination"]["next_cursor"].as_str().expect("cursor");
    let (_, rest) = json(app.get(&format!("{path}?cursor={cursor}&limit=4")).await).await;
    assert_eq!(rest["data"].as_array().map(Vec::len), Some(2));
    assert_eq!(rest["data"][1]["content"], got["messages"][5]["content"]);

    // Usage: one record per answered message, linked to the reply.
    let store = app.store.clone();
    let e = exec.clone();
    let usage = tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| agentplane::db::executions::usage_of(conn, &e))
    })
    .await
    .expect("join")
    .expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(usage[0].conversation_id.as_deref(), Some(id.as_str()));
    assert_eq!(
        usage[0].message_id.as_ref(),
        first["reply"]["id"].as_str().map(str::to_string).as_ref()
    );

    // List with the agent filter; update with If-Match; delete.
    conversation(&app, &agent).await;
    let (_, list) = json(
        app.get(&format!("/v1/conversations?agent_id={agent}&per_page=1"))
            .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 2);
    let (_, none) = json(app.get("/v1/conversations?agent_id=agent_nobody").await).await;
    assert_eq!(none["pagination"]["total"], 0);
    let resp = app.get(&format!("/v1/conversations/{id}")).await;
    let tag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("etag")
        .to_string();
    let not_modified = app
        .req(Method::GET, &format!("/v1/conversations/{id}"))
        .header("if-none-match", &tag)
        .send()
        .await
        .expect("send");
    assert_eq!(not_modified.status(), 304);
    let (status, patched) = json(
        app.req(Method::PATCH, &format!("/v1/conversations/{id}"))
            .header("if-match", &tag)
            .json(&json!({"title": null, "metadata": {"order": 1234}}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched.get("title").is_none());
    assert_eq!(patched["metadata"]["order"], 1234);
    let (status, _) = json(
        app.req(Method::PATCH, &format!("/v1/conversations/{id}"))
            .header("if-match", &tag)
            .json(&json!({"title": "stale"}))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 412);
    let resp = app
        .req(Method::DELETE, &format!("/v1/conversations/{id}"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 204);
    let (status, _) = json(app.get(&format!("/v1/conversations/{id}")).await).await;
    assert_eq!(status, 404);
    let (status, _) = json(app.get(&path).await).await;
    assert_eq!(status, 404);
});

backend_test!(
    conversations_reject_bad_input_and_other_organizations,
    |app| {
        let (_, tpl) = json(
            app.send_json(
                Method::POST,
                "/v1/prompt-templates",
                &json!({"name": "t", "template": "You help with {{topic}}."}),
            )
            .await,
        )
        .await;
        let agent = app
            .create_agent(json!({"name": "Templated", "prompt_template_id": tpl["id"]}))
            .await;
        let agent = agent["id"].as_str().expect("id").to_string();
        // An agent the organization does not have: 422 naming agent_id.
        let (status, err) = json(
            app.send_json(
                Method::POST,
                "/v1/conversations",
                &json!({"agent_id": "agent_nope"}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(fields(&err), ["agent_id"]);
        for bad in [
            json!({}),
            json!({"agent_id": "bad id!"}),
            json!({"agent_id": agent, "x": 1}),
        ] {
            let (status, _) =
                json(app.send_json(Method::POST, "/v1/conversations", &bad).await).await;
            assert!(status == 400 || status == 422, "{bad}: {status}");
        }
        let c = conversation(&app, &agent).await;
        let id = c["id"].as_str().expect("id").to_string();
        let path = format!("/v1/conversations/{id}/messages");
        // A missing template variable: 422, and nothing written.
        let (status, err) = json(
            app.send_json(Method::POST, &path, &json!({"message": "hi"}))
                .await,
        )
        .await;
        assert_eq!(status, 422, "{err}");
        assert_eq!(fields(&err), ["parameters.topic"]);
        let (_, after) = json(app.get(&format!("/v1/conversations/{id}")).await).await;
        assert_eq!(after["message_count"], 0);
        for bad in [
            json!({}),
            json!({"message": ""}),
            json!({"message": "x", "stream": 1}),
        ] {
            let (status, _) = json(app.send_json(Method::POST, &path, &bad).await).await;
            assert!(status == 400 || status == 422, "{bad}: {status}");
        }
        let (status, ok) = json(
            app.send_json(
                Method::POST,
                &path,
                &json!({"message": "hi", "parameters": {"topic": "billing"}}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 201, "{ok}");

        let other = app.key_for("org_other", "eve", Role::Admin, None).await;
        for (method, p) in [
            (Method::GET, format!("/v1/conversations/{id}")),
            (Method::DELETE, format!("/v1/conversations/{id}")),
            (Method::GET, path.clone()),
        ] {
            let resp = app.as_key(&other, method, &p).send().await.expect("send");
            assert_eq!(resp.status(), 404, "{p}");
        }
        let resp = app
            .as_key(&other, Method::POST, &path)
            .json(&json!({"message": "hi"}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 404);
        let resp = app
            .as_key(&other, Method::PATCH, &format!("/v1/conversations/{id}"))
            .json(&json!({"title": "mine"}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 404);
        let resp = app
            .as_key(&other, Method::POST, "/v1/conversations")
            .json(&json!({"agent_id": agent}))
            .send()
            .await
            .expect("send");
        assert_eq!(
            resp.status(),
            422,
            "another organization's agent is no agent of theirs"
        );
        let (_, list) = json(
            app.as_key(&other, Method::GET, "/v1/conversations")
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(list["pagination"]["total"], 0);
    }
);
