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
