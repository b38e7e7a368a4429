//! The agents resource, end to end.

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{fields, json};

/// The request examples the spec documents for `POST /v1/agents`: one per seed.
fn seed_examples() -> Vec<(String, Value)> {
    let spec: Value = serde_json::from_str(agentplane_api::OPENAPI_JSON).expect("spec");
    spec.pointer("/paths/~1v1~1agents/post/requestBody/content/application~1json/examples")
        .and_then(Value::as_object)
        .expect("examples")
        .iter()
        .map(|(name, ex)| (name.clone(), ex["value"].clone()))
        .collect()
}

backend_test!(seed_examples_create_read_update_replace_delete, |app| {
    let examples = seed_examples();
    assert_eq!(examples.len(), 4, "one example per seed");
    for (name, body) in examples {
        let resp = app.send_json(Method::POST, "/v1/agents", &body).await;
        let location = resp.headers()["location"]
            .to_str()
            .expect("location")
            .to_string();
        let etag = resp.headers()["etag"].to_str().expect("etag").to_string();
        let (status, created) = json(resp).await;
        assert_eq!(status, 201, "{name}: {created}");
        let id = created["id"].as_str().expect("id").to_string();
        assert!(id.starts_with("agent_"));
        assert_eq!(location, format!("/v1/agents/{id}"));
        assert_eq!(created["name"], body["name"]);
        assert_eq!(created["version"], 1);
        assert_eq!(etag, "\"1\"");

        let (status, fetched) = json(app.get(&location).await).await;
        assert_eq!(
            (status, &fetched),
            (200, &created),
            "{name}: GET returns what POST returned"
        );

        let (status, patched) = json(
            app.send_json(
                Method::PATCH,
                &location,
                &json!({"status": "inactive", "tags": ["patched"]}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 200, "{patched}");
        assert_eq!(patched["status"], "inactive");
        assert_eq!(patched["tags"], json!(["patched"]));
        assert_eq!(
            patched["name"], body["name"],
            "PATCH keeps what it does not name"
        );
        assert_eq!(patched["version"], 2);

        let (status, replaced) = json(
            app.send_json(Method::PUT, &location, &json!({"name": "replaced"}))
                .await,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(replaced["name"], "replaced");
        assert_eq!(
            replaced["status"], "active",
            "PUT resets what it leaves out"
        );
        assert_eq!(replaced["tags"], json!([]));
        assert_eq!(replaced["created_at"], created["created_at"]);

        let resp = app
            .req(Method::DELETE, &location)
            .send()
            .await
            .expect("delete");
        assert_eq!(resp.status(), 204);
        let (status, body) = json(app.get(&location).await).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], "AGENT_NOT_FOUND");
        let (status, _) = json(
            app.req(Method::DELETE, &location)
                .send()
                .await
                .expect("delete"),
        )
        .await;
        assert_eq!(status, 404);
    }
});

backend_test!(lists_page_filter_sort_and_select_fields, |app| {
    for i in 0..25 {
        let (kind, status) = if i % 5 == 0 {
            ("analyzer", "training")
        } else {
            ("assistant", "active")
        };
        app.create_agent(json!({
            "name": format!("agent {i:02}"),
            "type": kind,
            "status": status,
            "description": if i == 7 { "Handles REFUNDS 100%" } else { "plain" },
        }))
        .await;
    }
    let (status, page1) = json(app.get("/v1/agents").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        page1["data"].as_array().map(Vec::len),
        Some(20),
        "default per_page is 20"
    );
    assert_eq!(page1["pagination"]["total"], 25);
    assert_eq!(page1["pagination"]["pages"], 2);
    assert_eq!(
        page1["data"][0]["name"], "agent 24",
        "default sort is -created_at"
    );

    let (_, page2) = json(app.get("/v1/agents?page=2&per_page=20").await).await;
    assert_eq!(page2["data"].as_array().map(Vec::len), Some(5));
    assert_eq!(page2["pagination"]["page"], 2);
    assert_eq!(page2["pagination"]["next_cursor"], Value::Null);

    // Walking cursors visits every agent once, in order.
    let mut seen = Vec::new();
    let mut path = "/v1/agents?sort=name&order=asc&limit=7".to_string();
    loop {
        let (status, page) = json(app.get(&path).await).await;
        assert_eq!(status, 200, "{page}");
        for a in page["data"].as_array().expect("data") {
            seen.push(a["name"].as_str().expect("name").to_string());
        }
        match page["pagination"]["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/agents?sort=name&order=asc&limit=7&cursor={c}"),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("agent {i:02}")).collect();
    assert_eq!(seen, expected);

    let (_, desc) = json(app.get("/v1/agents?sort=-name&per_page=3").await).await;
    assert_eq!(desc["data"][0]["name"], "agent 24");

    let (_, filtered) = json(app.get("/v1/agents?type=analyzer&per_page=100").await).await;
    assert_eq!(filtered["pagination"]["total"], 5);
    let (_, filtered) = json(app.get("/v1/agents?filter%5Bstatus%5D=training").await).await;
    assert_eq!(filtered["pagination"]["total"], 5);
    let (_, searched) = json(app.get("/v1/agents?search=refunds%20100%25").await).await;
    assert_eq!(
        searched["pagination"]["total"], 1,
        "search is case-insensitive and % is literal"
    );
    let (_, searched) = json(app.get("/v1/agents?search=agent%2001").await).await;
    assert_eq!(searched["pagination"]["total"], 1);

    let (_, future) = json(
        app.get("/v1/agents?filter[created_at][gte]=2999-01-01T00:00:00Z")
            .await,
    )
    .await;
    assert_eq!(future["pagination"]["total"], 0);
    let (_, past) = json(app.get("/v1/agents?filter[created_at][gte]=2000-01-01T00:00:00%2B02:00&filter[created_at][lte]=2999-01-01T00:00:00Z").await).await;
    assert_eq!(past["pagination"]["total"], 25);

    let (_, sparse) = json(app.get("/v1/agents?fields=id,name&per_page=1").await).await;
    let keys: Vec<&String> = sparse["data"][0]
        .as_object()
        .expect("agent")
        .keys()
        .collect();
    assert_eq!(keys, vec!["id", "name"]);

    let (status, body) = json(app.get("/v1/agents?cursor=garbage").await).await;
    assert_eq!((status, fields(&body)), (400, vec!["cursor".to_string()]));
    // A cursor is a position after an item: deleting that item falls back to the offset.
    let (_, first) = json(app.get("/v1/agents?sort=name&limit=2").await).await;
    let cursor = first["pagination"]["next_cursor"]
        .as_str()
        .expect("cursor")
        .to_string();
    assert_eq!(
        cursor,
        format!("2.{}", first["data"][1]["id"].as_str().expect("id"))
    );
    let (_, second) = json(
        app.get(&format!("/v1/agents?sort=name&limit=2&cursor={cursor}"))
            .await,
    )
    .await;
    assert_eq!(second["data"][0]["name"], "agent 02");
    assert_eq!(second["pagination"]["page"], 2);
    let gone = first["data"][1]["id"].as_str().expect("id");
    assert_eq!(
        app.req(Method::DELETE, &format!("/v1/agents/{gone}"))
            .send()
            .await
            .expect("delete")
            .status(),
        204
    );
    let (_, resumed) = json(
        app.get(&format!("/v1/agents?sort=name&limit=2&cursor={cursor}"))
            .await,
    )
    .await;
    assert_eq!(
        resumed["data"][0]["name"], "agent 03",
        "offset 2 of the 24 left"
    );
});

backend_test!(etags_make_reads_conditional_and_writes_safe, |app| {
    let agent = app
        .create_agent(json!({"name": "etag", "description": "to clear"}))
        .await;
    let path = format!("/v1/agents/{}", agent["id"].as_str().expect("id"));
    let resp = app
        .req(Method::GET, &path)
        .header("If-None-Match", "\"1\"")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers()["etag"], "\"1\"");
    let resp = app
        .req(Method::GET, &path)
        .header("If-None-Match", "\"0\"")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);

    let patch = |if_match: &'static str, body: Value| {
        app.req(Method::PATCH, &path)
            .header("If-Match", if_match)
            .json(&body)
            .send()
    };
    let (status, body) = json(
        patch("\"1\"", json!({"description": null}))
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.get("description").is_none(), "null clears: {body}");
    let (status, body) = json(
        patch("\"1\"", json!({"name": "stale"}))
            .await
            .expect("patch"),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (412, json!("PRECONDITION_FAILED"))
    );
    let resp = app
        .req(Method::PUT, &path)
        .header("If-Match", "\"1\"")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 412);
    let resp = app
        .req(Method::PUT, &path)
        .header("If-Match", "\"2\"")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "\"3\"");
    let (_, after) = json(app.get(&path).await).await;
    assert_eq!(after["name"], "x", "the refused writes changed nothing");
});

backend_test!(platform_tokens_are_stored_and_never_returned, |app| {
    let secret = "discord-token-3a9f";
    let agent = app
        .create_agent(
            json!({"name": "bot", "platforms": {"discord": {"token": secret, "guild_id": "g"}}}),
        )
        .await;
    assert!(!agent.to_string().contains(secret));
    assert_eq!(agent["platforms"]["discord"]["token_set"], true);
    let id = agent["id"].as_str().expect("id").to_string();
    let path = format!("/v1/agents/{id}");
    // A PATCH that resends the platform without its token keeps the stored token.
    let (_, patched) = json(
        app.send_json(
            Method::PATCH,
            &path,
            &json!({"platforms": {"discord": {"guild_id": "g2"}}}),
        )
        .await,
    )
    .await;
    assert_eq!(patched["platforms"]["discord"]["token_set"], true);
    for text in [
        app.get(&path).await.text().await.expect("get"),
        app.get("/v1/agents").await.text().await.expect("list"),
        app.get("/v1/agents?fields=platforms")
            .await
            .text()
            .await
            .expect("list"),
    ] {
        assert!(!text.contains(secret), "a token leaked: {text}");
    }
    let store = app.store.clone();
    let stored = tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            let org = agent_org(conn);
            agentplane::db::agents::get(conn, &org, &id)
        })
    })
    .await
    .expect("join")
    .expect("row");
    assert!(stored.secrets.contains(secret), "the token is stored");
    assert!(!stored.body.contains(secret));
});

fn agent_org(conn: &mut agentplane::db::DbConnection) -> String {
    use diesel::prelude::*;
    agentplane::db::schema::organizations::table
        .select(agentplane::db::schema::organizations::id)
        .first::<String>(conn)
        .expect("org")
}

backend_test!(concurrent_updates_all_land, |app| {
    let agent = app.create_agent(json!({"name": "contended"})).await;
    let path = format!("/v1/agents/{}", agent["id"].as_str().expect("id"));
    let mut tasks = Vec::new();
    for i in 0..16 {
        let req = app
            .req(Method::PATCH, &path)
            .json(&json!({"tags": [format!("t{i}")]}));
        tasks.push(tokio::spawn(async move {
            req.send().await.map(|r| r.status().as_u16())
        }));
    }
    for task in tasks {
        assert_eq!(
            task.await.expect("join").expect("response"),
            200,
            "no update is refused or lost"
        );
    }
    let (_, after) = json(app.get(&path).await).await;
    assert_eq!(after["version"], 17);
});

backend_test!(idempotency_keys_replay_the_first_create, |app| {
    let body = json!({"name": "once"});
    let post = |key: &str, body: &Value| {
        app.req(Method::POST, "/v1/agents")
            .header("Idempotency-Key", key)
            .json(body)
            .send()
    };
    let (status, first) = json(post("key-1", &body).await.expect("post")).await;
    assert_eq!(status, 201);
    let (status, again) = json(post("key-1", &body).await.expect("post")).await;
    assert_eq!(
        (status, &again["id"]),
        (201, &first["id"]),
        "a retry creates nothing new"
    );
    let (status, err) = json(
        post("key-1", &json!({"name": "other"}))
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(
        (status, err["error"]["code"].clone()),
        (409, json!("IDEMPOTENCY_KEY_REUSED"))
    );

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let req = app
            .req(Method::POST, "/v1/agents")
            .header("Idempotency-Key", "key-2")
            .json(&json!({"name": "racing"}));
        tasks.push(tokio::spawn(async move {
            let resp = req.send().await.expect("post");
            let status = resp.status().as_u16();
            let body: Value = resp.json().await.expect("json");
            (status, body["id"].clone())
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    for task in tasks {
        let (status, id) = task.await.expect("join");
        assert_eq!(status, 201);
        ids.insert(id.to_string());
    }
    assert_eq!(ids.len(), 1, "concurrent retries agree on one agent");
    let (_, list) = json(app.get("/v1/agents").await).await;
    assert_eq!(list["pagination"]["total"], 2);

    // Other organizations have their own key space.
    let other = app
        .key_for(
            "idem-other",
            "olga",
            agentplane_api::models::Role::Admin,
            None,
        )
        .await;
    let resp = app
        .as_key(&other, Method::POST, "/v1/agents")
        .header("Idempotency-Key", "key-1")
        .json(&body)
        .send()
        .await
        .expect("post");
    let (status, theirs) = json(resp).await;
    assert_eq!(status, 201);
    assert_ne!(theirs["id"], first["id"]);
});
