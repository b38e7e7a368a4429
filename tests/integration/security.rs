//! Security events as they happen.

use agentplane_api::models::{Role, Scope};
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, json, other_admin, send_as};

async fn events(app: &TestApp, key: &str, query: &str) -> (u16, Value) {
    let resp = send_as(
        app,
        key,
        Method::GET,
        &format!("/v1/security/events{query}"),
        None,
    )
    .await;
    json(resp).await
}

backend_test!(
    security_events_are_recorded_as_they_happen_without_secrets,
    |app| {
        // A key is created, used past its scopes and its limit, revoked, then used again.
        let resp = app
        .send_json(
            Method::POST,
            "/v1/auth/keys",
            &json!({"name": "ci", "scopes": ["read:agents"], "rate_limit": {"requests_per_hour": 2}}),
        )
        .await;
        let (status, created) = json(resp).await;
        assert_eq!(status, 201);
        let key = created["key"].as_str().expect("secret").to_string();
        let key_id = created["id"].as_str().expect("id").to_string();
        let denied = send_as(
            &app,
            &key,
            Method::POST,
            "/v1/agents",
            Some(&json!({"name": "x"})),
        )
        .await;
        assert_eq!(denied.status(), 403);
        for expected in [200, 429, 429] {
            let resp = send_as(&app, &key, Method::GET, "/v1/agents", None).await;
            assert_eq!(resp.status(), expected);
        }
        let resp = app
            .req(Method::DELETE, &format!("/v1/auth/keys/{key_id}"))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 204);
        let resp = send_as(&app, &key, Method::GET, "/v1/agents", None).await;
        assert_eq!(resp.status(), 401);
        let unknown = app
            .as_key(
                "ap_unknownunknownunknownunknownunknownunkn",
                Method::GET,
                "/v1/agents",
            )
            .send()
            .await
            .expect("request");
        assert_eq!(unknown.status(), 401);

        let (status, body) = events(&app, &app.admin_key, "").await;
        assert_eq!(status, 200, "{body}");
        let types: Vec<&str> = body["data"]
            .as_array()
            .expect("data")
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        // Newest first; the rate limit is recorded once, the unknown key not in this organization.
        assert_eq!(
            types,
            vec![
                "authentication_failed",
                "api_key_revoked",
                "rate_limit_exceeded",
                "permission_denied",
                "api_key_created"
            ],
            "{body}"
        );
        let text = body.to_string();
        assert!(!text.contains(&key), "a secret leaked into events");
        assert!(!text.contains("ap_unknown"), "a presented secret leaked");
        let failed = &body["data"][0];
        assert_eq!(failed["key_id"], key_id.as_str());
        assert_eq!(failed["details"]["reason"], "revoked API key");
        let denied = &body["data"][3];
        assert_eq!(denied["details"]["missing_scopes"], json!(["write:agents"]));
        assert_eq!(denied["resource_id"], "POST /v1/agents");

        // Filters and paging.
        let (_, medium) = events(&app, &app.admin_key, "?severity=medium").await;
        assert_eq!(medium["pagination"]["total"], 2);
        let (_, by_type) = events(&app, &app.admin_key, "?type=api_key_created").await;
        assert_eq!(by_type["data"][0]["resource_id"], key_id.as_str());
        let (_, future) = events(&app, &app.admin_key, "?since=2999-01-01T00:00:00Z").await;
        assert_eq!(future["pagination"]["total"], 0);
        let (_, first) = events(&app, &app.admin_key, "?per_page=2").await;
        let cursor = first["pagination"]["next_cursor"].as_str().expect("cursor");
        let (_, second) = events(&app, &app.admin_key, &format!("?cursor={cursor}&limit=2")).await;
        assert_eq!(second["data"][0]["type"], "rate_limit_exceeded");
        let (status, bad) = events(&app, &app.admin_key, "?severity=urgent").await;
        assert_eq!(status, 400);
        assert_eq!(bad["error"]["details"][0]["field"], "severity");

        // Scopes and organizations.
        let viewer = app.key_for("default", "viewer", Role::Viewer, None).await;
        assert_eq!(events(&app, &viewer, "").await.0, 200);
        let narrow = app
            .key_for(
                "default",
                "narrow",
                Role::Member,
                Some(&[Scope::ReadAgents]),
            )
            .await;
        assert_eq!(events(&app, &narrow, "").await.0, 403);
        let other = other_admin(&app).await;
        let (_, theirs) = events(&app, &other, "").await;
        assert_eq!(theirs["pagination"]["total"], 0, "{theirs}");
    }
);

backend_test!(
    one_security_event_is_read_by_its_id_in_its_organization_only,
    |app| {
        let narrow = app
            .key_for(
                "default",
                "one-event",
                Role::Member,
                Some(&[Scope::ReadAgents]),
            )
            .await;
        let body = json!({"name": "x"});
        let denied = send_as(&app, &narrow, Method::POST, "/v1/agents", Some(&body)).await;
        assert_eq!(denied.status(), 403);
        let (_, listed) = events(&app, &app.admin_key, "?type=permission_denied").await;
        let listed = listed["data"][0].clone();
        let id = listed["id"].as_str().expect("an event id");

        let (status, one) = events(&app, &app.admin_key, &format!("/{id}")).await;
        assert_eq!(status, 200, "{one}");
        assert_eq!(one, listed, "the event reads as the list shows it");
        assert_eq!(one["details"]["missing_scopes"], json!(["write:agents"]));

        let other = other_admin(&app).await;
        let (status, theirs) = events(&app, &other, &format!("/{id}")).await;
        assert_eq!(status, 404, "another organization's event: {theirs}");
        assert_eq!(theirs["error"]["code"], "SECURITY_EVENT_NOT_FOUND");
        assert_eq!(events(&app, &app.admin_key, "/sev_nope").await.0, 404);
        assert_eq!(
            events(&app, &narrow, &format!("/{id}")).await.0,
            403,
            "needs read:security"
        );
    }
);

const OPENAI_KEY: &str = "sk-proj-4fQ8xZ2LmN7pR1sT9vW3yB6dH0kJ5cE9f2a";

async fn scan(app: &TestApp, key: &str, agent_id: &str) -> (u16, Value, Option<String>) {
    let resp = send_as(
        app,
        key,
        Method::POST,
        &format!("/v1/security/scan/{agent_id}"),
        None,
    )
    .await;
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, body) = json(resp).await;
    (status, body, location)
}

async fn created(app: &TestApp, path: &str, body: Value) -> String {
    let (status, body) = json(app.send_json(Method::POST, path, &body).await).await;
    assert_eq!(status, 201, "{path}: {body}");
    body["id"].as_str().expect("id").to_string()
}

fn finding<'a>(scan: &'a Value, location: &str) -> &'a Value {
    scan["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .find(|f| f["location"] == location)
        .unwrap_or_else(|| panic!("no finding at {location}: {scan}"))
}

backend_test!(a_scan_finds_pasted_secrets_without_repeating_them, |app| {
    let platform = app.key_for("default", "leaky", Role::Member, None).await;
    let tpl = created(
        &app,
        "/v1/prompt-templates",
        json!({"name": "t", "template": format!("Use {OPENAI_KEY} for {{{{topic}}}}")}),
    )
    .await;
    let agent = app
        .create_agent(json!({
            "name": "leaky",
            "system_prompt": format!("You are helpful. The OpenAI key is {OPENAI_KEY}."),
            "metadata": {"api_key": platform, "owner": "ops"},
            "prompt_template_id": tpl,
            "configuration": {"max_tokens": 1024},
            "resources": {"memory": "512Mi", "cpu": "500m"},
        }))
        .await;
    let agent_id = agent["id"].as_str().expect("id");
    let (status, body, location) = scan(&app, &app.admin_key, agent_id).await;
    assert_eq!(status, 201, "{body}");
    let scan_id = body["id"].as_str().expect("id");
    assert!(scan_id.starts_with("scan_"));
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/security/scans/{scan_id}").as_str())
    );
    assert_eq!(body["agent_id"], agent_id);
    assert_eq!(body["passed"], false);
    assert_eq!(body["status"], "completed");
    let key_finding = finding(&body, "/metadata/api_key");
    assert_eq!(key_finding["rule"], "platform_credential_exposed");
    assert_eq!(key_finding["severity"], "critical");
    let prompt = finding(&body, "/system_prompt");
    assert_eq!(prompt["rule"], "secret_exposed");
    assert_eq!(prompt["severity"], "high");
    assert!(
        prompt["message"]
            .as_str()
            .expect("message")
            .contains("sk-…9f2a")
    );
    assert_eq!(
        finding(&body, "prompt_template:/template")["severity"],
        "high"
    );
    assert_eq!(body["counts"]["critical"], 1, "{body}");
    assert_eq!(body["counts"]["high"], 2, "{body}");
    assert_eq!(body["findings"][0]["severity"], "critical");
    let text = body.to_string();
    assert!(!text.contains(OPENAI_KEY), "the OpenAI key leaked: {text}");
    assert!(!text.contains(&platform), "the platform key leaked: {text}");

    // The scan is stored as answered, and recorded as a security event without secrets.
    let resp = app.get(&format!("/v1/security/scans/{scan_id}")).await;
    let tag = resp.headers()["etag"].to_str().expect("etag").to_string();
    let (status, stored) = json(resp).await;
    assert_eq!(status, 200);
    assert_eq!(stored, body);
    let resp = app
        .req(Method::GET, &format!("/v1/security/scans/{scan_id}"))
        .header("if-none-match", &tag)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 304);
    let (status, evs) = events(&app, &app.admin_key, "?type=security_scan_findings").await;
    assert_eq!(status, 200);
    assert_eq!(evs["pagination"]["total"], 1, "{evs}");
    let event = &evs["data"][0];
    assert_eq!(event["severity"], "critical");
    assert_eq!(event["resource_id"], agent_id);
    assert_eq!(event["details"]["scan_id"], scan_id);
    assert_eq!(event["details"]["counts"]["high"], 2);
    let (_, all) = events(&app, &app.admin_key, "?per_page=100").await;
    let text = all.to_string();
    assert!(
        !text.contains(OPENAI_KEY) && !text.contains(&platform),
        "{text}"
    );

    // A retry with the same Idempotency-Key answers the first scan.
    let again = |key: &'static str| {
        app.req(Method::POST, &format!("/v1/security/scan/{agent_id}"))
            .header("idempotency-key", key)
            .send()
    };
    let (_, first) = json(again("scan-1").await.expect("request")).await;
    let (status, second) = json(again("scan-1").await.expect("request")).await;
    assert_eq!(status, 201);
    assert_eq!(first["id"], second["id"]);
});

backend_test!(
    a_clean_agent_passes_and_missing_references_are_found,
    |app| {
        let model = created(
        &app,
        "/v1/models",
        json!({"name": "m", "provider": "openai-compatible", "model_id": "gpt", "endpoint": "https://llm.example.com/v1"}),
    )
    .await;
        let kb = created(&app, "/v1/knowledge", json!({"name": "Product docs"})).await;
        let clean = app
        .create_agent(json!({
            "name": "clean",
            "description": "Answers questions about agent_01jh8k2m3n4p5q6r7s8t9v0w1x and 550e8400-e29b-41d4-a716-446655440000.",
            "system_prompt": "You are a helpful, concise support agent. Never share credentials.",
            "model_id": model,
            "knowledge_bases": [kb],
            "metadata": {"team": "support", "ticket": "SUP-1234"},
            "configuration": {"max_tokens": 2048},
            "resources": {"memory": "1Gi", "cpu": "1"},
        }))
        .await;
        let clean_id = clean["id"].as_str().expect("id");
        let (status, body, _) = scan(&app, &app.admin_key, clean_id).await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["passed"], true, "{body}");
        assert_eq!(body["findings"], json!([]), "{body}");
        assert_eq!(
            body["counts"],
            json!({"critical": 0, "high": 0, "medium": 0, "low": 0})
        );

        let tool = created(
            &app,
            "/v1/tools",
            // The egress policy refuses internal addresses unless the operator opens them, as the
            // tests open loopback: a tool let through that way is still flagged by the scan.
            json!({"type": "api", "name": "admin", "url": "http://127.0.0.1:9/admin"}),
        )
        .await;
        // References that name nothing cannot be saved: these are deleted after the agent
        // was, as a model, template or knowledge base can be.
        let gone_model = created(
            &app,
            "/v1/models",
            json!({"name": "gone", "provider": "local", "model_id": "local-extractive-1"}),
        )
        .await;
        let gone_tpl = created(
            &app,
            "/v1/prompt-templates",
            json!({"name": "gone", "template": "Hi"}),
        )
        .await;
        let gone_kb = created(&app, "/v1/knowledge", json!({"name": "gone"})).await;
        let broken = app
            .create_agent(json!({
                "name": "broken",
                "model_id": gone_model,
                "prompt_template_id": gone_tpl,
                "knowledge_bases": [kb, gone_kb],
                "tools": [tool],
            }))
            .await;
        for path in [
            format!("/v1/models/{gone_model}"),
            format!("/v1/prompt-templates/{gone_tpl}"),
            format!("/v1/knowledge/{gone_kb}"),
        ] {
            let resp = app.req(Method::DELETE, &path).send().await.expect("req");
            assert_eq!(resp.status(), 204, "{path}");
        }
        let broken_id = broken["id"].as_str().expect("id");
        let (status, body, _) = scan(&app, &app.admin_key, broken_id).await;
        assert_eq!(status, 201, "{body}");
        for location in ["/model_id", "/prompt_template_id", "/knowledge_bases/1"] {
            assert_eq!(finding(&body, location)["rule"], "missing_reference");
        }
        assert!(
            body["findings"]
                .as_array()
                .expect("findings")
                .iter()
                .all(|f| f["location"] != "/knowledge_bases/0"),
            "{body}"
        );
        let network = finding(&body, &format!("tool:{tool}:/url"));
        assert_eq!(network["rule"], "unrestricted_network_tool");
        assert_eq!(network["severity"], "high");
        assert_eq!(
            finding(&body, "/configuration/max_tokens")["rule"],
            "unbounded_tokens"
        );
        assert_eq!(
            finding(&body, "/resources")["rule"],
            "missing_resource_limits"
        );
        assert_eq!(body["passed"], false);

        // Lists, filters and pages.
        let app_ref = &app;
        let list = move |query: &str| {
            let path = format!("/v1/security/scans{query}");
            async move { json(app_ref.get(&path).await).await }
        };
        let (status, all) = list("").await;
        assert_eq!(status, 200, "{all}");
        assert_eq!(all["pagination"]["total"], 2);
        assert_eq!(all["data"][0]["agent_id"], broken_id, "newest first");
        let (_, mine) = list(&format!("?agent_id={clean_id}")).await;
        assert_eq!(mine["pagination"]["total"], 1);
        assert_eq!(mine["data"][0]["passed"], true);
        let (_, high) = list("?min_severity=high").await;
        assert_eq!(high["pagination"]["total"], 1);
        assert_eq!(high["data"][0]["agent_id"], broken_id);
        let (_, low) = list("?min_severity=low").await;
        assert_eq!(
            low["pagination"]["total"], 1,
            "the clean scan found nothing"
        );
        let (_, first) = list("?per_page=1").await;
        let cursor = first["pagination"]["next_cursor"].as_str().expect("cursor");
        let (_, second) = list(&format!("?cursor={cursor}&limit=1")).await;
        assert_eq!(second["data"][0]["agent_id"], clean_id);
        assert_eq!(second["pagination"]["next_cursor"], Value::Null);

        // Bad input names the field.
        for (query, field) in [
            ("?min_severity=urgent", "min_severity"),
            ("?agent_id=not%20an%20id", "agent_id"),
            ("?per_page=0", "per_page"),
        ] {
            let (status, bad) = list(query).await;
            assert_eq!(status, 400, "{query}: {bad}");
            assert_eq!(bad["error"]["details"][0]["field"], field, "{query}: {bad}");
        }
        let (status, bad) = json(app.get("/v1/security/scans/bad%20id").await).await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(bad["error"]["details"][0]["field"], "scan_id");
        let (status, bad, _) = scan(&app, &app.admin_key, "bad%20id").await;
        assert_eq!(status, 400, "{bad}");
        assert_eq!(bad["error"]["details"][0]["field"], "agent_id");
        let (status, _, _) = scan(&app, &app.admin_key, "agent_doesnotexist").await;
        assert_eq!(status, 404);
        let (status, _) = json(app.get("/v1/security/scans/scan_doesnotexist").await).await;
        assert_eq!(status, 404);

        // Organizations and scopes.
        let other = other_admin(&app).await;
        let (status, body, _) = scan(&app, &other, clean_id).await;
        assert_eq!(status, 404, "{body}");
        let scan_id = all["data"][0]["id"].as_str().expect("id");
        let resp = send_as(
            &app,
            &other,
            Method::GET,
            &format!("/v1/security/scans/{scan_id}"),
            None,
        )
        .await;
        assert_eq!(resp.status(), 404);
        let resp = send_as(&app, &other, Method::GET, "/v1/security/scans", None).await;
        assert_eq!(json(resp).await.1["pagination"]["total"], 0);
        let narrow = app
            .key_for(
                "default",
                "narrow",
                Role::Member,
                Some(&[Scope::ReadAgents]),
            )
            .await;
        let (status, body, _) = scan(&app, &narrow, clean_id).await;
        assert_eq!(status, 403, "{body}");
        let resp = send_as(&app, &narrow, Method::GET, "/v1/security/scans", None).await;
        assert_eq!(resp.status(), 403);
    }
);
