//! What an agent refers to is checked when it is saved (create, replace, patch, bulk patch):
//! its flow (graph, node configs, references) and its model, prompt template, knowledge bases
//! and tools, which must be the caller's organization's. Each violation is a 422 naming the
//! field; nothing is written.

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, json};

/// The fields of an error envelope's details.
fn fields(err: &Value) -> Vec<String> {
    err["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A knowledge base of another organization than `app`'s admin's.
pub(crate) async fn theirs_kb(app: &TestApp) -> String {
    let other = crate::support::other_admin(app).await;
    let body = json!({"name": "Theirs"});
    let resp = crate::support::send_as(app, &other, Method::POST, "/v1/knowledge", Some(&body));
    let (status, theirs) = json(resp.await).await;
    assert_eq!(status, 201, "{theirs}");
    theirs["id"].as_str().expect("id").to_string()
}

/// A `rag` tool named `name`, over a knowledge base of its own: its id.
pub(crate) async fn rag_tool(app: &TestApp, name: &str) -> String {
    let kb = created(app, "/v1/knowledge", json!({"name": "Docs"})).await;
    let body = json!({"type": "rag", "name": name, "knowledge_base_ids": [kb]});
    created(app, "/v1/tools", body).await
}

pub(crate) async fn created(app: &TestApp, path: &str, body: Value) -> String {
    let (status, body) = json(app.send_json(Method::POST, path, &body).await).await;
    assert_eq!(status, 201, "{path}: {body}");
    body["id"].as_str().expect("id").to_string()
}

/// Sends `body` and expects a 422 naming exactly `want`.
async fn refused(app: &TestApp, method: Method, path: &str, body: Value, want: &[&str]) {
    let (status, err) = json(app.send_json(method, path, &body).await).await;
    assert_eq!(status, 422, "{body}: {err}");
    assert_eq!(err["error"]["code"], "VALIDATION_ERROR", "{err}");
    assert_eq!(fields(&err), want, "{body}: {err}");
}

fn flow(nodes: Value, edges: Value) -> Value {
    json!({"name": "Flow", "flow": {"nodes": nodes, "edges": edges}})
}

backend_test!(flows_are_validated_when_saved, |app| {
    let kb = created(&app, "/v1/knowledge", json!({"name": "Docs"})).await;
    let tool = created(
        &app,
        "/v1/tools",
        json!({"type": "retrieval", "name": "Lookup", "knowledge_base_ids": [kb]}),
    )
    .await;
    let llm = json!({"id": "answer", "type": "llm", "config": {"prompt": "{{input}}"}});
    // A dangling edge.
    let body = flow(
        json!([llm]),
        json!([{"source": "answer", "target": "nowhere"}]),
    );
    refused(
        &app,
        Method::POST,
        "/v1/agents",
        body,
        &["flow.edges[0].target"],
    )
    .await;
    // An unknown tool, and a knowledge base that does not exist.
    let nodes = json!([
        {"id": "search", "type": "retrieval", "config": {"knowledge_base_ids": [kb, "kb_none"]}},
        {"id": "call", "type": "tool", "config": {"tool_id": "tool_none"}},
        llm,
    ]);
    let edges = json!([
        {"source": "search", "target": "call"},
        {"source": "call", "target": "answer"},
    ]);
    let want = [
        "flow.nodes[0].config.knowledge_base_ids[1]",
        "flow.nodes[1].config.tool_id",
    ];
    refused(&app, Method::POST, "/v1/agents", flow(nodes, edges), &want).await;
    // A cycle.
    let nodes = json!([
        {"id": "a", "type": "template", "config": {"template": "x"}},
        {"id": "b", "type": "template", "config": {"template": "y"}},
    ]);
    let edges = json!([{"source": "a", "target": "b"}, {"source": "b", "target": "a"}]);
    let (status, err) = json(
        app.send_json(Method::POST, "/v1/agents", &flow(nodes, edges))
            .await,
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert!(
        fields(&err).iter().any(|f| f.starts_with("flow.edges[")),
        "{err}"
    );
    // An unknown node type never reaches storage (the spec's union refuses it).
    let body = flow(json!([{"id": "x", "type": "teleport"}]), json!([]));
    let (status, err) = json(app.send_json(Method::POST, "/v1/agents", &body).await).await;
    assert!(status == 400 || status == 422, "{err}");
    assert!(!fields(&err).is_empty(), "{err}");

    // A valid flow saves; patch and replace check the new flow the same way.
    let nodes = json!([
        {"id": "call", "type": "tool", "config": {"tool_id": tool, "arguments": {"query": "{{input}}"}}},
        {"id": "answer", "type": "llm", "config": {"prompt": "{{nodes.call.output}}", "model": "model_local"}},
    ]);
    let edges = json!([{"source": "call", "target": "answer"}]);
    let id = created(&app, "/v1/agents", flow(nodes, edges)).await;
    let path = format!("/v1/agents/{id}");
    let dangling = json!({"nodes": [llm], "edges": [{"source": "ghost", "target": "answer"}]});
    let body = json!({"flow": dangling});
    refused(&app, Method::PATCH, &path, body, &["flow.edges[0].source"]).await;
    let body = json!({"name": "Flow", "flow": dangling});
    refused(&app, Method::PUT, &path, body, &["flow.edges[0].source"]).await;
    let (_, agent) = json(app.get(&path).await).await;
    assert_eq!(agent["version"], 1, "a refused change writes nothing");
    let (status, _) = json(
        app.send_json(Method::PATCH, &path, &json!({"flow": null}))
            .await,
    )
    .await;
    assert_eq!(status, 200);
});

backend_test!(references_must_be_the_organizations_own, |app| {
    let theirs = theirs_kb(&app).await;
    let kb = created(&app, "/v1/knowledge", json!({"name": "Ours"})).await;

    // Create: another organization's knowledge base, a missing tool, model and template.
    let body = json!({
        "name": "Linked",
        "knowledge_bases": [kb, theirs],
        "tools": ["tool_none"],
        "model_id": "model_none",
        "prompt_template_id": "tpl_none",
    });
    let want = [
        "model_id",
        "prompt_template_id",
        "knowledge_bases[1]",
        "tools[0]",
    ];
    refused(&app, Method::POST, "/v1/agents", body, &want).await;
    let (_, list) = json(app.get("/v1/agents").await).await;
    assert_eq!(list["pagination"]["total"], 0, "nothing was created");

    // The built-in model and a model's name (not an id) are fine.
    let body = json!({"name": "Ok", "knowledge_bases": [kb], "model_id": "model_local"});
    let id = created(&app, "/v1/agents", body).await;
    let body = json!({"name": "Named", "model_id": "gpt-4"});
    created(&app, "/v1/agents", body).await;

    // Replace, patch and bulk patch.
    let path = format!("/v1/agents/{id}");
    let body = json!({"name": "Ok", "knowledge_bases": [theirs]});
    refused(&app, Method::PUT, &path, body, &["knowledge_bases[0]"]).await;
    let body = json!({"knowledge_bases": [kb, theirs]});
    refused(&app, Method::PATCH, &path, body, &["knowledge_bases[1]"]).await;
    let body = json!({"filter": {"ids": [id]}, "updates": {"knowledge_bases": [theirs]}});
    refused(
        &app,
        Method::PATCH,
        "/v1/agents/bulk",
        body,
        &["knowledge_bases[0]"],
    )
    .await;
    let (_, agent) = json(app.get(&path).await).await;
    assert_eq!(
        (&agent["version"], &agent["knowledge_bases"]),
        (&json!(1), &json!([kb]))
    );

    // A patch is checked for what it sets: a knowledge base deleted since stays linked.
    let kb_path = format!("/v1/knowledge/{kb}");
    let resp = app.req(Method::DELETE, &kb_path).send().await.expect("req");
    assert_eq!(resp.status(), 204);
    let (status, patched) = json(
        app.send_json(Method::PATCH, &path, &json!({"name": "Renamed"}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{patched}");
});

backend_test!(a_refused_create_keeps_no_idempotency_key, |app| {
    let post = |body: Value| {
        app.req(Method::POST, "/v1/agents")
            .header("idempotency-key", "refused-1")
            .json(&body)
            .send()
    };
    let (status, err) = json(
        post(json!({"name": "a", "tools": ["tool_none"]}))
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(status, 422, "{err}");
    let (status, agent) = json(post(json!({"name": "a"})).await.expect("req")).await;
    assert_eq!(status, 201, "the key is free after a refusal: {agent}");
    let (status, replay) = json(post(json!({"name": "a"})).await.expect("req")).await;
    assert_eq!((status, &replay["id"]), (201, &agent["id"]));
});
