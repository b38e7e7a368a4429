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
    let created = app
        .create_agent(json!({
            "name": "Support",
            "model_id": "model_local",
            "system_prompt": "Be brief.",
            "knowledge_bases": ["kb_manuals", "kb_faq"],
            "prompt_template_id": tpl["id"],
            "configuration": {"temperature": 0.2, "max_tokens": 200}
        }))
        .await;
    assert_eq!(created["knowledge_bases"], json!(["kb_manuals", "kb_faq"]));
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
