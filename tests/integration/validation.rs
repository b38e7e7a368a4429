//! Bad input: every field constraint answers 400/422 naming the field, nothing is written.

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{fields, json};

fn long(n: usize) -> String {
    "x".repeat(n)
}

/// (body, the field `details` must name, the code it must give)
fn bad_bodies() -> Vec<(Value, &'static str, &'static str)> {
    vec![
        (json!({}), "name", "required"),
        (json!({"name": ""}), "name", "minLength"),
        (json!({"name": "nul\u{0}byte"}), "name", "pattern"),
        // References are looked up by id; PostgreSQL cannot even compare a string with NUL.
        (
            json!({"name": "a", "tools": ["web", "nul\u{0}"]}),
            "tools[1]",
            "pattern",
        ),
        (
            json!({"name": "a", "model_id": "nul\u{0}"}),
            "model_id",
            "pattern",
        ),
        (json!({"name": long(201)}), "name", "maxLength"),
        (json!({"name": 5}), "name", "type"),
        (
            json!({"name": "a", "type": "Not A Type"}),
            "type",
            "pattern",
        ),
        (json!({"name": "a", "status": "sleeping"}), "status", "enum"),
        (
            json!({"name": "a", "description": long(2001)}),
            "description",
            "maxLength",
        ),
        (
            json!({"name": "a", "capabilities": "text"}),
            "capabilities",
            "type",
        ),
        (
            json!({"name": "a", "capabilities": [""]}),
            "capabilities[0]",
            "minLength",
        ),
        (
            json!({"name": "a", "capabilities": vec!["c"; 101]}),
            "capabilities",
            "maxItems",
        ),
        (
            json!({"name": "a", "configuration": {"temperature": 2.5}}),
            "configuration.temperature",
            "maximum",
        ),
        (
            json!({"name": "a", "configuration": {"temperature": -0.1}}),
            "configuration.temperature",
            "minimum",
        ),
        (
            json!({"name": "a", "configuration": {"max_tokens": 0}}),
            "configuration.max_tokens",
            "minimum",
        ),
        (
            json!({"name": "a", "configuration": {"max_tokens": 1.5}}),
            "configuration.max_tokens",
            "type",
        ),
        (
            json!({"name": "a", "configuration": {"model": ""}}),
            "configuration.model",
            "minLength",
        ),
        (
            json!({"name": "a", "configuration": {"top_p": 1}}),
            "configuration.top_p",
            "unknown_field",
        ),
        (
            json!({"name": "a", "system_prompt": long(20001)}),
            "system_prompt",
            "maxLength",
        ),
        (
            json!({"name": "a", "model_id": ""}),
            "model_id",
            "minLength",
        ),
        (json!({"name": "a", "tools": [1]}), "tools[0]", "type"),
        (
            json!({"name": "a", "topics": [""]}),
            "topics[0]",
            "minLength",
        ),
        (
            json!({"name": "a", "flow": {"nodes": []}}),
            "flow.edges",
            "required",
        ),
        (
            json!({"name": "a", "flow": {"nodes": [{"id": "n"}], "edges": []}}),
            "flow.nodes[0].type",
            "required",
        ),
        (
            json!({"name": "a", "flow": {"nodes": [], "edges": [{"source": "a"}]}}),
            "flow.edges[0].target",
            "required",
        ),
        (
            json!({"name": "a", "tags": [long(101)]}),
            "tags[0]",
            "maxLength",
        ),
        (json!({"name": "a", "metadata": []}), "metadata", "type"),
        (
            json!({"name": "a", "personality": {"bio": "one"}}),
            "personality.bio",
            "type",
        ),
        (
            json!({"name": "a", "plugins": [""]}),
            "plugins[0]",
            "minLength",
        ),
        (
            json!({"name": "a", "resources": {"memory": "lots"}}),
            "resources.memory",
            "pattern",
        ),
        (
            json!({"name": "a", "resources": {"cpu": "0.5"}}),
            "resources.cpu",
            "pattern",
        ),
        (
            json!({"name": "a", "resources": {"replicas": 101}}),
            "resources.replicas",
            "maximum",
        ),
        (
            json!({"name": "a", "platforms": {"Discord!": {}}}),
            "platforms",
            "propertyNames",
        ),
        (
            json!({"name": "a", "platforms": {"discord": {"token": ""}}}),
            "platforms.discord.token",
            "minLength",
        ),
        (
            json!({"name": "a", "platforms": {"discord": {"webhook": "x"}}}),
            "platforms.discord.webhook",
            "unknown_field",
        ),
        (
            json!({"name": "a", "id": "agent_mine"}),
            "id",
            "unknown_field",
        ),
    ]
}

async fn count(app: &crate::support::TestApp) -> i64 {
    let (_, list) = json(app.get("/v1/agents?per_page=1").await).await;
    list["pagination"]["total"].as_i64().expect("total")
}

backend_test!(every_body_constraint_names_its_field, |app| {
    for (body, field, code) in bad_bodies() {
        let (status, err) = json(app.send_json(Method::POST, "/v1/agents", &body).await).await;
        assert_eq!(status, 422, "POST {body}: {err}");
        let details = err["error"]["details"].as_array().expect("details");
        assert!(
            details
                .iter()
                .any(|d| d["field"] == field && d["code"] == code),
            "POST {body}: expected {field}/{code} in {details:?}"
        );
    }
    assert_eq!(count(&app).await, 0, "no invalid request wrote a row");

    let agent = app.create_agent(json!({"name": "target"})).await;
    let path = format!("/v1/agents/{}", agent["id"].as_str().expect("id"));
    for (body, field) in [
        (json!({"name": null}), "name"),
        (
            json!({"configuration": {"temperature": 9}}),
            "configuration.temperature",
        ),
        (json!({"tags": null}), "tags"),
        (json!({"tools": ["\u{0}"]}), "tools[0]"),
        (json!({"version": 7}), "version"),
    ] {
        let (status, err) = json(app.send_json(Method::PATCH, &path, &body).await).await;
        assert_eq!(status, 422, "PATCH {body}: {err}");
        assert!(
            fields(&err).iter().any(|f| f == field),
            "PATCH {body}: {err}"
        );
    }
    let (status, err) = json(
        app.send_json(Method::PUT, &path, &json!({"description": "no name"}))
            .await,
    )
    .await;
    assert_eq!((status, fields(&err)), (422, vec!["name".to_string()]));
    let (_, after) = json(app.get(&path).await).await;
    assert_eq!(after["version"], 1, "refused updates changed nothing");
});

backend_test!(every_parameter_constraint_names_its_parameter, |app| {
    for (query, field) in [
        ("per_page=0", "per_page"),
        ("per_page=101", "per_page"),
        ("per_page=ten", "per_page"),
        ("page=0", "page"),
        ("limit=1000", "limit"),
        ("cursor=", "cursor"),
        ("status=sleeping", "status"),
        ("type=Bad%20Type", "type"),
        ("sort=color", "sort"),
        ("order=up", "order"),
        ("fields=id,secret", "fields[1]"),
        ("search=", "search"),
        (
            "filter[created_at][gte]=yesterday",
            "filter[created_at][gte]",
        ),
        (
            "filter%5Bcreated_at%5D%5Blte%5D=2024-13-01T00:00:00Z",
            "filter[created_at][lte]",
        ),
    ] {
        let (status, err) = json(app.get(&format!("/v1/agents?{query}")).await).await;
        assert_eq!(status, 400, "{query}: {err}");
        assert_eq!(fields(&err), vec![field.to_string()], "{query}");
    }
    for bad_id in ["a".repeat(65), "agent%00x".to_string(), "a%20b".to_string()] {
        let (status, err) = json(app.get(&format!("/v1/agents/{bad_id}")).await).await;
        assert_eq!(
            (status, fields(&err)),
            (400, vec!["agent_id".to_string()]),
            "{bad_id}"
        );
    }
    let resp = app
        .req(Method::GET, "/v1/agents/agent_x")
        .header("If-None-Match", "x".repeat(300))
        .send()
        .await
        .expect("get");
    let (status, err) = json(resp).await;
    assert_eq!(
        (status, fields(&err)),
        (400, vec!["If-None-Match".to_string()])
    );
});

backend_test!(malformed_requests_are_client_errors, |app| {
    let resp = app
        .req(Method::POST, "/v1/agents")
        .header("content-type", "application/json")
        .body("{\"name\":")
        .send()
        .await
        .expect("post");
    let (status, err) = json(resp).await;
    assert_eq!(
        (status, err["error"]["details"][0]["code"].clone()),
        (400, json!("invalid_json"))
    );
    let resp = app
        .req(Method::POST, "/v1/agents")
        .header("content-type", "text/plain")
        .body("name=a")
        .send()
        .await
        .expect("post");
    let (status, err) = json(resp).await;
    assert_eq!(
        (status, fields(&err)),
        (400, vec!["Content-Type".to_string()])
    );
    let resp = app
        .req(Method::POST, "/v1/agents")
        .send()
        .await
        .expect("post");
    let (status, err) = json(resp).await;
    assert_eq!((status, fields(&err)), (400, vec!["body".to_string()]));

    let (status, err) = json(app.get("/v1/nothing-here").await).await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (404, json!("NOT_FOUND"))
    );
    let resp = app
        .req(Method::DELETE, "/v1/agents")
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.headers()["allow"], "GET, POST");
    let (status, _) = json(resp).await;
    assert_eq!(status, 405);
});
