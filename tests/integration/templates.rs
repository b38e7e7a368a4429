//! Prompt templates, end to end.

use agentplane_api::models::Role;
use reqwest::Method;
use serde_json::json;

use crate::backend_test;
use crate::support::{fields, json};

backend_test!(templates_crud_render_and_missing_variables, |app| {
    let body = json!({
        "name": "Customer Support Template",
        "description": "Template for customer support",
        "template": "You are a customer support agent. Topic: {{topic}} for {{ company }}.",
        "variables": ["topic", "company"],
        "type": "system"
    });
    let resp = app
        .send_json(Method::POST, "/v1/prompt-templates", &body)
        .await;
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    let (status, created) = json(resp).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("tpl_"));
    assert_eq!(location, format!("/v1/prompt-templates/{id}"));
    assert_eq!(created["variables"], json!(["topic", "company"]));

    let (status, fetched) = json(app.get(&location).await).await;
    assert_eq!((status, &fetched), (200, &created));
    let resp = app
        .req(Method::GET, &location)
        .header("if-none-match", "\"1\"")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 304);

    let render = format!("{location}/render");
    let (status, out) = json(
        app.send_json(
            Method::POST,
            &render,
            &json!({"variables": {"topic": "billing", "company": "Acme"}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(
        out["rendered"],
        "You are a customer support agent. Topic: billing for Acme."
    );
    assert_eq!(out["variables_used"], json!(["topic", "company"]));

    let (status, err) = json(app.send_json(Method::POST, &render, &json!({})).await).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(fields(&err), vec!["variables.topic", "variables.company"]);
    let (status, err) = json(
        app.send_json(Method::POST, &render, &json!({"variables": {"topic": "x"}}))
            .await,
    )
    .await;
    assert_eq!(
        (status, fields(&err)),
        (422, vec!["variables.company".to_string()])
    );

    // Detected variables when none are declared; replace with If-Match.
    let (status, replaced) = json(
        app.req(Method::PUT, &location)
            .header("if-match", "\"1\"")
            .json(&json!({"name": "v2", "template": "Hello {{name}}"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["variables"], json!(["name"]));
    assert_eq!(replaced["version"], 2);
    assert_eq!(replaced["type"], "system");
    let (status, _) = json(
        app.req(Method::PUT, &location)
            .header("if-match", "\"1\"")
            .json(&json!({"name": "v3", "template": "x"}))
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(status, 412);

    // Lists page by cursor, newest first.
    for i in 0..3 {
        let (s, _) = json(
            app.send_json(
                Method::POST,
                "/v1/prompt-templates",
                &json!({"name": format!("t{i}"), "template": "t", "type": "user"}),
            )
            .await,
        )
        .await;
        assert_eq!(s, 201);
    }
    let (status, page) = json(app.get("/v1/prompt-templates?limit=2&type=user").await).await;
    assert_eq!(status, 200);
    assert_eq!(page["pagination"]["total"], 3);
    assert_eq!(page["data"][0]["name"], "t2");
    let cursor = page["pagination"]["next_cursor"].as_str().expect("cursor");
    let (_, next) = json(
        app.get(&format!(
            "/v1/prompt-templates?limit=2&type=user&cursor={cursor}"
        ))
        .await,
    )
    .await;
    assert_eq!(next["data"][0]["name"], "t0");
    assert!(next["pagination"]["next_cursor"].is_null());
    let (_, found) = json(app.get("/v1/prompt-templates?search=V2").await).await;
    assert_eq!(found["pagination"]["total"], 1);

    let resp = app
        .req(Method::DELETE, &location)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 204);
    let (status, err) = json(app.get(&location).await).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("TEMPLATE_NOT_FOUND"))
    );
});

backend_test!(templates_refuse_undeclared_variables_and_bad_input, |app| {
    let (status, err) = json(
        app.send_json(
            Method::POST,
            "/v1/prompt-templates",
            &json!({"name": "t", "template": "{{a}} {{b}} {{c}}", "variables": ["a"]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["code"], "UNDECLARED_VARIABLE");
    assert_eq!(fields(&err), vec!["variables", "variables"]);
    let message = err["error"]["details"][0]["message"].as_str().unwrap_or("");
    assert!(message.contains("{{b}}"), "{message}");
    for bad in [
        json!({"template": "no name"}),
        json!({"name": "t"}),
        json!({"name": "t", "template": "x", "type": "robot"}),
        json!({"name": "t", "template": "x", "variables": ["1bad"]}),
        json!({"name": "t", "template": "x", "extra": 1}),
    ] {
        let (status, err) = json(
            app.send_json(Method::POST, "/v1/prompt-templates", &bad)
                .await,
        )
        .await;
        assert!(status == 400 || status == 422, "{bad} → {status} {err}");
    }
});

backend_test!(
    templates_are_isolated_between_organizations_and_keyed,
    |app| {
        let body = json!({"name": "mine", "template": "{{x}}"});
        let first = app
            .req(Method::POST, "/v1/prompt-templates")
            .header("idempotency-key", "tpl-key-1")
            .json(&body)
            .send()
            .await
            .expect("req");
        let (status, created) = json(first).await;
        assert_eq!(status, 201);
        let again = app
            .req(Method::POST, "/v1/prompt-templates")
            .header("idempotency-key", "tpl-key-1")
            .json(&body)
            .send()
            .await
            .expect("req");
        let (status, replayed) = json(again).await;
        assert_eq!((status, &replayed["id"]), (201, &created["id"]));
        let other_body = app
            .req(Method::POST, "/v1/prompt-templates")
            .header("idempotency-key", "tpl-key-1")
            .json(&json!({"name": "other", "template": "y"}))
            .send()
            .await
            .expect("req");
        assert_eq!(other_body.status(), 409);

        let id = created["id"].as_str().expect("id");
        let other = app.key_for("other-org", "eve", Role::Admin, None).await;
        let path = format!("/v1/prompt-templates/{id}");
        for (method, p) in [(Method::GET, path.clone()), (Method::DELETE, path.clone())] {
            let resp = app.as_key(&other, method, &p).send().await.expect("req");
            assert_eq!(resp.status(), 404);
        }
        let resp = app
            .as_key(&other, Method::POST, &format!("{path}/render"))
            .json(&json!({"variables": {"x": "1"}}))
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 404);
        let (_, list) = json(
            app.as_key(&other, Method::GET, "/v1/prompt-templates")
                .send()
                .await
                .expect("req"),
        )
        .await;
        assert_eq!(list["pagination"]["total"], 0);
        let viewer = app.key_for("default", "vic", Role::Viewer, None).await;
        let resp = app
            .as_key(&viewer, Method::POST, "/v1/prompt-templates")
            .json(&body)
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 403);
        let resp = app
            .as_key(&viewer, Method::GET, &path)
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 200);
    }
);
