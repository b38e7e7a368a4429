//! Agents linked to knowledge bases and a prompt template.

use reqwest::Method;
use serde_json::json;

use crate::backend_test;
use crate::support::json;

backend_test!(agents_keep_knowledge_bases_and_prompt_template, |app| {
    let (status, tpl) = json(
        app.send_json(
            Method::POST,
            "/v1/prompt-templates",
            &json!({"name": "sys", "template": "You support {{product}}."}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);
    let mut kbs = Vec::new();
    for name in ["Manuals", "FAQ"] {
        let (_, kb) = json(
            app.send_json(Method::POST, "/v1/knowledge", &json!({"name": name}))
                .await,
        )
        .await;
        kbs.push(kb["id"].clone());
    }
    let created = app
        .create_agent(json!({
            "name": "Support",
            "model_id": "model_local",
            "system_prompt": "Be brief.",
            "knowledge_bases": kbs,
            "prompt_template_id": tpl["id"],
            "configuration": {"temperature": 0.2, "max_tokens": 200}
        }))
        .await;
    assert_eq!(created["knowledge_bases"], json!(kbs));
    assert_eq!(created["prompt_template_id"], tpl["id"]);
    let path = format!("/v1/agents/{}", created["id"].as_str().expect("id"));
    let (status, patched) = json(
        app.send_json(
            Method::PATCH,
            &path,
            &json!({"prompt_template_id": null, "knowledge_bases": []}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert!(patched.get("prompt_template_id").is_none());
    assert_eq!(patched["knowledge_bases"], json!([]));
    let (status, page) = json(app.get("/v1/agents?fields=knowledge_bases").await).await;
    assert_eq!(status, 200);
    assert_eq!(page["data"][0]["knowledge_bases"], json!([]));
    for bad in [
        json!({"name": "x", "knowledge_bases": ["a", "a"]}),
        json!({"name": "x", "knowledge_bases": ["bad id!"]}),
        json!({"name": "x", "prompt_template_id": ""}),
    ] {
        let (status, _) = json(app.send_json(Method::POST, "/v1/agents", &bad).await).await;
        assert!(status == 400 || status == 422, "{bad}: {status}");
    }
});

backend_test!(lists_expand_knowledge_bases_and_tools, |app| {
    use agentplane_api::models::{Role, Scope};
    let (_, kb) = json(
        app.send_json(Method::POST, "/v1/knowledge", &json!({"name": "Manuals"}))
            .await,
    )
    .await;
    let (status, tool) = json(
        app.send_json(
            Method::POST,
            "/v1/tools",
            &json!({"type": "retrieval", "name": "Lookup", "knowledge_base_ids": [kb["id"]]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{tool}");
    // A knowledge base deleted since the agent was saved is not expanded. (Another
    // organization's cannot be linked: saving the agent is a 422.)
    let (_, gone) = json(
        app.send_json(Method::POST, "/v1/knowledge", &json!({"name": "Gone"}))
            .await,
    )
    .await;
    let agent = app
        .create_agent(json!({
            "name": "Linked",
            "knowledge_bases": [gone["id"], kb["id"]],
            "tools": [tool["id"]]
        }))
        .await;
    let gone_path = format!("/v1/knowledge/{}", gone["id"].as_str().expect("id"));
    let resp = app
        .req(Method::DELETE, &gone_path)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 204);
    app.create_agent(json!({"name": "Plain"})).await;

    let (status, list) = json(
        app.get("/v1/agents?expand=knowledge_bases,tools&sort=name")
            .await,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    let linked = &list["data"][0];
    assert_eq!(linked["id"], agent["id"]);
    assert_eq!(linked["knowledge_bases"], json!([gone["id"], kb["id"]]));
    let kbs = linked["expanded"]["knowledge_bases"]
        .as_array()
        .expect("kbs");
    assert_eq!(kbs.len(), 1, "{linked}");
    assert_eq!(
        (&kbs[0]["id"], &kbs[0]["name"]),
        (&kb["id"], &json!("Manuals"))
    );
    assert_eq!(linked["expanded"]["tools"][0]["name"], "Lookup");
    assert_eq!(
        list["data"][1]["expanded"],
        json!({"knowledge_bases": [], "tools": []})
    );

    // Only what was asked, beside `fields`; nothing without `expand`.
    let (_, narrow) = json(
        app.get("/v1/agents?expand=tools&fields=name&sort=name")
            .await,
    )
    .await;
    let mut keys: Vec<&String> = narrow["data"][0]
        .as_object()
        .expect("agent")
        .keys()
        .collect();
    keys.sort();
    assert_eq!(keys, ["expanded", "id", "name"], "{narrow}");
    assert_eq!(narrow["data"][0]["expanded"], json!({"tools": [tool]}));
    let (_, plain) = json(app.get("/v1/agents").await).await;
    assert!(plain["data"][0].get("expanded").is_none(), "{plain}");

    // Expanding reads knowledge bases and tools: a key that may not, may not expand.
    let agents_only = app
        .key_for("default", "ro", Role::Viewer, Some(&[Scope::ReadAgents]))
        .await;
    let resp = crate::support::send_as(
        &app,
        &agents_only,
        Method::GET,
        "/v1/agents?expand=tools",
        None,
    )
    .await;
    let (status, denied) = json(resp).await;
    assert_eq!(status, 403, "{denied}");
    assert_eq!(denied["error"]["details"][0]["field"], "expand");
    let (status, bad) = json(app.get("/v1/agents?expand=owners").await).await;
    assert_eq!(status, 400, "{bad}");
});
