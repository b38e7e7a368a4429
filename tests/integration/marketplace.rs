//! The marketplace: search the shipped catalog, install a template into an organization.

use agentplane_api::models::{Role, Scope};
use reqwest::Method;
use serde_json::json;

use crate::backend_test;
use crate::support::json;

backend_test!(search_get_and_install_marketplace_templates, |app| {
    let (status, page) = json(
        app.get("/v1/marketplace/search?q=support&per_page=50")
            .await,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let ids: Vec<&str> = page["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(ids.contains(&"support-kb-assistant"), "{ids:?}");
    let (_, all) = json(app.get("/v1/marketplace/search?per_page=5").await).await;
    assert!(all["pagination"]["total"].as_i64() >= Some(20), "{all}");
    let installs: Vec<i64> = all["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|t| t["installs"].as_i64())
        .collect();
    assert!(
        installs.windows(2).all(|w| w[0] >= w[1]),
        "popular first: {installs:?}"
    );
    let cursor = all["pagination"]["next_cursor"]
        .as_str()
        .expect("a next page");
    let (_, next) = json(
        app.get(&format!("/v1/marketplace/search?cursor={cursor}&limit=5"))
            .await,
    )
    .await;
    assert_ne!(next["data"][0]["id"], all["data"][0]["id"]);
    assert_eq!(next["pagination"]["page"], 2);
    let (_, finance) = json(
        app.get("/v1/marketplace/search?category=finance&sort=rating")
            .await,
    )
    .await;
    assert!(
        finance["data"]
            .as_array()
            .expect("data")
            .iter()
            .all(|t| t["category"] == "finance")
    );
    let (_, tagged) = json(app.get("/v1/marketplace/search?tags=support,rag").await).await;
    assert_eq!(tagged["data"][0]["id"], "support-kb-assistant");
    let (_, paid) = json(app.get("/v1/marketplace/search?price=paid").await).await;
    assert_eq!(paid["pagination"]["total"], 0);
    let (status, err) = json(app.get("/v1/marketplace/search?sort=loudest").await).await;
    assert_eq!(status, 400, "{err}");

    let (status, tpl) = json(app.get("/v1/marketplace/templates/code-reviewer").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        tpl["prompt"]["variables"],
        json!(["language", "style_guide"])
    );
    let (status, _) = json(app.get("/v1/marketplace/templates/no-such-template").await).await;
    assert_eq!(status, 404);

    // Install: a prompt template and an agent linked to it, in the caller's organization.
    let (status, kb) = json(
        app.send_json(Method::POST, "/v1/knowledge", &json!({"name": "Docs"}))
            .await,
    )
    .await;
    assert_eq!(status, 201, "{kb}");
    let kb_docs = kb["id"].clone();
    let send = || {
        app.req(Method::POST, "/v1/marketplace/install/support-kb-assistant")
            .header("idempotency-key", "install-1")
            .json(&json!({"name": "My Copy of Template", "workspace_id": "ws_123", "knowledge_bases": [kb_docs]}))
            .send()
    };
    let resp = send().await.expect("req");
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    let (status, agent) = json(resp).await;
    assert_eq!(status, 201, "{agent}");
    assert_eq!(
        location,
        format!("/v1/agents/{}", agent["id"].as_str().expect("id"))
    );
    assert_eq!(agent["name"], "My Copy of Template");
    assert_eq!(agent["type"], "conversational");
    assert_eq!(agent["knowledge_bases"], json!([kb_docs]));
    assert_eq!(agent["metadata"]["workspace_id"], "ws_123");
    assert_eq!(
        agent["metadata"]["marketplace_template_id"],
        "support-kb-assistant"
    );
    let tpl_id = agent["prompt_template_id"]
        .as_str()
        .expect("linked")
        .to_string();
    let (status, prompt) = json(app.get(&format!("/v1/prompt-templates/{tpl_id}")).await).await;
    assert_eq!(status, 200);
    assert_eq!(prompt["variables"], json!(["company", "escalation_team"]));
    let (status, replay) = json(send().await.expect("req")).await;
    assert_eq!((status, &replay["id"]), (201, &agent["id"]));
    let (_, templates) = json(app.get("/v1/prompt-templates").await).await;
    assert_eq!(
        templates["pagination"]["total"], 1,
        "a replay creates nothing"
    );
    let (_, events) = json(app.get("/v1/events?type=agent.created").await).await;
    assert_eq!(events["data"][0]["subject_id"], agent["id"]);
    // Any id shape is a 404, a prompt template's id too (as Schemathesis's inferred links send).
    for missing in ["no-such-template", "tpl_01m86va3rjjtsstbm7j9vt50f9"] {
        let (status, _) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/marketplace/install/{missing}"),
                &json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 404, "{missing}");
    }
    let (status, err) = json(
        app.send_json(
            Method::POST,
            "/v1/marketplace/install/code-reviewer",
            &json!({"name": ""}),
        )
        .await,
    )
    .await;
    assert!(status == 400 || status == 422, "{err}");

    // Another organization cannot see what was installed; a viewer can search, not install.
    let other = app.key_for("other-org", "eve", Role::Admin, None).await;
    let resp = app
        .as_key(&other, Method::GET, &location)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 404);
    let viewer = app.key_for("viewer-org", "vic", Role::Viewer, None).await;
    let resp = app
        .as_key(&viewer, Method::GET, "/v1/marketplace/search")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    let resp = app
        .as_key(
            &viewer,
            Method::POST,
            "/v1/marketplace/install/code-reviewer",
        )
        .json(&json!({}))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 403);
    let agents_only = app
        .key_for(
            "narrow-org",
            "ann",
            Role::Admin,
            Some(&[Scope::WriteAgents, Scope::ReadMarketplace]),
        )
        .await;
    let resp = app
        .as_key(
            &agents_only,
            Method::POST,
            "/v1/marketplace/install/code-reviewer",
        )
        .json(&json!({}))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 403, "install needs write:templates too");
});

backend_test!(
    every_template_installs_and_links_only_its_own_knowledge,
    |app| {
        // The catalog's agents (their flows too) are valid as shipped.
        let (status, all) = json(app.get("/v1/marketplace/search?per_page=100").await).await;
        assert_eq!(status, 200, "{all}");
        let templates = all["data"].as_array().expect("templates");
        assert!(!templates.is_empty());
        let (kb, tool) = kb_and_tool(&app).await;
        for t in templates {
            let id = t["id"].as_str().expect("id");
            let path = format!("/v1/marketplace/install/{id}");
            let (status, agent) = json(app.send_json(Method::POST, &path, &json!({})).await).await;
            if status == 422 {
                // A flow that searches knowledge bases or calls a tool names what it lacks.
                let lacks = crate::support::fields(&agent);
                assert!(
                    !lacks.is_empty()
                        && lacks.iter().all(|f| f == "knowledge_bases" || f == "tools"),
                    "{id}: {agent}"
                );
                let body = json!({"knowledge_bases": [kb], "tools": [tool]});
                let (status, agent) = json(app.send_json(Method::POST, &path, &body).await).await;
                assert_eq!(status, 201, "{id}: {agent}");
                continue;
            }
            assert_eq!(status, 201, "{id}: {agent}");
        }
        // A knowledge base of another organization, or of none, is not linked.
        let theirs = crate::agents_references::theirs_kb(&app).await;
        let body = json!({"knowledge_bases": [theirs, "kb_none"]});
        let path = "/v1/marketplace/install/support-kb-assistant";
        let (status, err) = json(app.send_json(Method::POST, path, &body).await).await;
        assert_eq!(status, 422, "{err}");
        let fields: Vec<&str> = err["error"]["details"]
            .as_array()
            .expect("details")
            .iter()
            .filter_map(|d| d["field"].as_str())
            .collect();
        assert_eq!(
            fields,
            ["knowledge_bases[0]", "knowledge_bases[1]"],
            "{err}"
        );
        let (_, agents) = json(app.get("/v1/agents").await).await;
        assert_eq!(
            agents["pagination"]["total"],
            json!(templates.len()),
            "a refused install creates nothing"
        );
    }
);

backend_test!(concurrent_installs_with_one_key_replay_the_first, |app| {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = app
            .req(Method::POST, "/v1/marketplace/install/code-reviewer")
            .header("idempotency-key", "install-race")
            .json(&json!({"name": "Raced"}));
        tasks.push(tokio::spawn(async move {
            json(req.send().await.expect("req")).await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let (status, agent) = task.await.expect("join");
        assert_eq!(status, 201, "{agent}");
        ids.insert(agent["id"].to_string());
    }
    assert_eq!(ids.len(), 1, "concurrent retries agree on one agent");
    let (_, templates) = json(app.get("/v1/prompt-templates").await).await;
    assert_eq!(templates["pagination"]["total"], 1);
    // The key for another template is another request.
    let resp = app
        .req(Method::POST, "/v1/marketplace/install/support-kb-assistant")
        .header("idempotency-key", "install-race")
        .json(&json!({"name": "Raced"}))
        .send()
        .await
        .expect("req");
    let (status, err) = json(resp).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (409, &json!("IDEMPOTENCY_KEY_REUSED"))
    );
});

/// A knowledge base with two documents and a `rag` tool searching it.
async fn kb_and_tool(app: &crate::support::TestApp) -> (String, String) {
    let kb = crate::executions::manuals(app).await;
    let (status, tool) = json(
        app.send_json(
            Method::POST,
            "/v1/tools",
            &json!({"type": "rag", "name": "manuals", "description": "Search the manuals",
                   "knowledge_base_ids": [kb]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{tool}");
    (kb, tool["id"].as_str().expect("id").to_string())
}

/// Installs `template` with `body`, runs the agent on `input` (waiting) with the built-in
/// model; the execution, succeeded, and the `node_id`s of its node steps in order.
async fn install_and_run(
    app: &crate::support::TestApp, template: &str, body: serde_json::Value, input: &str,
) -> (serde_json::Value, Vec<String>) {
    let path = format!("/v1/marketplace/install/{template}");
    let (status, agent) = json(app.send_json(Method::POST, &path, &body).await).await;
    assert_eq!(status, 201, "{template}: {agent}");
    assert!(agent["flow"]["nodes"].is_array(), "{agent}");
    let run = format!("/v1/agents/{}/execute", agent["id"].as_str().expect("id"));
    // Every variable of the template's prompt gets a value.
    let (_, tpl) = json(
        app.get(&format!("/v1/marketplace/templates/{template}"))
            .await,
    )
    .await;
    let parameters: serde_json::Map<String, serde_json::Value> = tpl["prompt"]["variables"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v.as_str())
        .map(|v| (v.to_string(), json!(format!("the {v}"))))
        .collect();
    let ask = json!({"input": input, "parameters": parameters, "options": {"wait": true}});
    let (status, e) = json(app.send_json(Method::POST, &run, &ask).await).await;
    assert_eq!(
        (status, e["status"].as_str()),
        (200, Some("succeeded")),
        "{template}: {e}"
    );
    let nodes = e["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| s["name"] == "node")
        .map(|s| {
            assert_eq!(s["status"], "succeeded", "{template}: {s}");
            s["node_id"].as_str().expect("node_id").to_string()
        })
        .collect();
    (e, nodes)
}

backend_test!(flow_templates_install_and_run_offline, |app| {
    // Triage, then a condition picks the refund branch; the answer branch is skipped.
    let (e, nodes) = install_and_run(
        &app,
        "request-router",
        json!({}),
        "I want a refund for my order",
    )
    .await;
    assert_eq!(nodes, ["triage", "route", "refund", "out"], "{e}");
    let (e, nodes) = install_and_run(
        &app,
        "request-router",
        json!({"name": "Router 2"}),
        "How do I reset my password?",
    )
    .await;
    assert_eq!(nodes, ["triage", "route", "answer", "out"], "{e}");
    assert!(e["result"]["output"].is_string(), "{e}");

    // Retrieve from the install's knowledge base, summarize, check.
    let (kb, tool) = kb_and_tool(&app).await;
    let path = "/v1/marketplace/install/doc-summary-checker";
    let (status, err) = json(app.send_json(Method::POST, path, &json!({})).await).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(crate::support::fields(&err), ["knowledge_bases"]);
    let (e, nodes) = install_and_run(
        &app,
        "doc-summary-checker",
        json!({"knowledge_bases": [kb]}),
        "How long is the router warranty?",
    )
    .await;
    assert_eq!(nodes, ["retrieve", "summarize", "check", "out"], "{e}");
    let retrieved = e["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["node_id"] == "retrieve")
        .expect("retrieve")
        .to_string();
    assert!(retrieved.contains("two years"), "{retrieved}");

    // A tool node calling the install's `rag` tool, then a report of what it returned.
    let path = "/v1/marketplace/install/tool-lookup-reporter";
    let (status, err) = json(app.send_json(Method::POST, path, &json!({})).await).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(crate::support::fields(&err), ["tools"]);
    let (status, err) = json(
        app.send_json(Method::POST, path, &json!({"tools": ["tool_none"]}))
            .await,
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(
        crate::support::fields(&err),
        ["flow.nodes[0].config.tool_id"]
    );
    let (e, nodes) = install_and_run(
        &app,
        "tool-lookup-reporter",
        json!({"tools": [tool]}),
        "router warranty",
    )
    .await;
    assert_eq!(nodes, ["lookup", "report", "out"], "{e}");
    let lookup = e["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .find(|s| s["node_id"] == "lookup")
        .expect("lookup")
        .to_string();
    assert!(lookup.contains("two years"), "{lookup}");
});
