//! Rate limits, API-Version and compression.

use reqwest::Method;
use serde_json::json;

use crate::backend_test;
use crate::support::{TestApp, json, other_admin, send_as};

/// Creates a key with its own rate limits and returns (id, secret).
async fn limited_key(app: &TestApp, limits: serde_json::Value) -> (String, String) {
    let resp = app
        .send_json(
            Method::POST,
            "/v1/auth/keys",
            &json!({"name": "limited", "scopes": ["read:agents"], "rate_limit": limits}),
        )
        .await;
    let (status, body) = json(resp).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["rate_limit"]["custom"], true);
    (
        body["id"].as_str().expect("id").to_string(),
        body["key"].as_str().expect("key").to_string(),
    )
}

fn header(resp: &reqwest::Response, name: &str) -> Option<i64> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

backend_test!(
    every_authenticated_response_carries_the_rate_limit_headers,
    |app| {
        let first = app.get("/v1/agents").await;
        assert_eq!(first.status(), 200);
        assert_eq!(header(&first, "x-ratelimit-limit"), Some(1_000_000));
        assert_eq!(header(&first, "x-ratelimit-window"), Some(3600));
        let reset = header(&first, "x-ratelimit-reset").expect("reset");
        let now = chrono::Utc::now().timestamp();
        assert!(reset > now && reset <= now + 3600, "{reset} vs {now}");
        let remaining = header(&first, "x-ratelimit-remaining").expect("remaining");
        // An error answer counts and carries them too.
        let missing = app.get("/v1/agents/agent_nope").await;
        assert_eq!(missing.status(), 404);
        assert_eq!(
            header(&missing, "x-ratelimit-remaining"),
            Some(remaining - 1)
        );
        // A bad key is not a key: no counters, just 401.
        let bad = send_as(&app, "ap_nope", Method::GET, "/v1/agents", None).await;
        assert_eq!(bad.status(), 401);
        assert!(bad.headers().get("x-ratelimit-limit").is_none());
    }
);

backend_test!(
    a_key_past_its_window_limit_gets_429_with_retry_after,
    |app| {
        let (id, key) = limited_key(&app, json!({"requests_per_hour": 3})).await;
        for left in [2, 1, 0] {
            let resp = send_as(&app, &key, Method::GET, "/v1/agents", None).await;
            assert_eq!(resp.status(), 200);
            assert_eq!(header(&resp, "x-ratelimit-limit"), Some(3));
            assert_eq!(header(&resp, "x-ratelimit-remaining"), Some(left));
        }
        let resp = send_as(&app, &key, Method::GET, "/v1/agents", None).await;
        let wait = header(&resp, "retry-after").expect("Retry-After");
        assert!((1..=3600).contains(&wait), "{wait}");
        assert_eq!(header(&resp, "x-ratelimit-remaining"), Some(0));
        let (status, body) = json(resp).await;
        assert_eq!(status, 429);
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert_eq!(body["error"]["code"], "RATE_LIMIT_EXCEEDED");
        // Other keys are not affected; the admin lifts the limit and the key works again.
        assert_eq!(app.get("/v1/agents").await.status(), 200);
        let resp = app
            .send_json(
                Method::PATCH,
                &format!("/v1/auth/keys/{id}"),
                &json!({"rate_limit": null}),
            )
            .await;
        let (status, body) = json(resp).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["rate_limit"],
            json!({"requests_per_hour": 1_000_000, "burst": 10_000, "custom": false})
        );
        let resp = send_as(&app, &key, Method::GET, "/v1/agents", None).await;
        assert_eq!(resp.status(), 200);
    }
);

backend_test!(a_burst_past_the_burst_limit_gets_429, |app| {
    let (_, key) = limited_key(&app, json!({"burst": 2})).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let resp = send_as(&app, &key, Method::GET, "/v1/agents", None).await;
        if resp.status() == 429 {
            assert_eq!(header(&resp, "retry-after"), Some(1));
        }
        statuses.push(resp.status().as_u16());
    }
    // Eight requests cannot all fall into distinct seconds in two-request groups this fast.
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");
});

backend_test!(key_limits_are_validated_and_isolated, |app| {
    let (id, _) = limited_key(&app, json!({"requests_per_hour": 50, "burst": 5})).await;
    for bad in [
        json!({"rate_limit": {"requests_per_hour": 0}}),
        json!({"rate_limit": {"burst": "many"}}),
        json!({"rate_limit": {"per_minute": 5}}),
    ] {
        let resp = app
            .send_json(Method::PATCH, &format!("/v1/auth/keys/{id}"), &bad)
            .await;
        let (status, body) = json(resp).await;
        assert!(status == 400 || status == 422, "{bad}: {status}");
        let field = body["error"]["details"][0]["field"].as_str().unwrap_or("");
        assert!(field.starts_with("rate_limit"), "{bad}: {body}");
    }
    let resp = app
        .send_json(
            Method::PATCH,
            &format!("/v1/auth/keys/{id}"),
            &json!({"name": "renamed", "rate_limit": {"burst": 7}}),
        )
        .await;
    let (status, body) = json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["name"], "renamed");
    assert_eq!(
        body["rate_limit"],
        json!({"requests_per_hour": 1_000_000, "burst": 7, "custom": true})
    );
    // Limits are set by admins, never by the key they limit.
    let (_, keys) = json(app.get("/v1/auth/keys?per_page=100").await).await;
    let own = keys["data"]
        .as_array()
        .and_then(|d| d.iter().find(|k| k["name"] == "bootstrap admin key"))
        .and_then(|k| k["id"].as_str())
        .expect("the admin key")
        .to_string();
    let limit = json!({"rate_limit": {"requests_per_hour": 1}});
    let resp = app
        .send_json(Method::PATCH, &format!("/v1/auth/keys/{own}"), &limit)
        .await;
    let (status, body) = json(resp).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["details"][0]["field"], "rate_limit");
    let member = app
        .key_for(
            "default",
            "member",
            agentplane_api::models::Role::Member,
            None,
        )
        .await;
    let path = format!("/v1/auth/keys/{id}");
    let resp = send_as(&app, &member, Method::PATCH, &path, Some(&limit)).await;
    assert_eq!(resp.status(), 403);
    let create = json!({"name": "mine", "rate_limit": {"burst": 1000000}});
    let resp = send_as(&app, &member, Method::POST, "/v1/auth/keys", Some(&create)).await;
    assert_eq!(resp.status(), 403);
    // Another organization's admin sees no such key; a key without write:keys is refused.
    let other = other_admin(&app).await;
    let resp = send_as(
        &app,
        &other,
        Method::PATCH,
        &format!("/v1/auth/keys/{id}"),
        Some(&json!({"name": "mine"})),
    )
    .await;
    assert_eq!(resp.status(), 404);
    let reader = app
        .key_for(
            "default",
            "reader",
            agentplane_api::models::Role::Member,
            Some(&[agentplane_api::models::Scope::ReadKeys]),
        )
        .await;
    let resp = send_as(
        &app,
        &reader,
        Method::PATCH,
        &format!("/v1/auth/keys/{id}"),
        Some(&json!({"name": "mine"})),
    )
    .await;
    assert_eq!(resp.status(), 403);
});

backend_test!(two_servers_on_one_database_share_the_limit, |app| {
    let replica = app.replica().await;
    let (_, key) = limited_key(&app, json!({"requests_per_hour": 6})).await;
    let mut remaining = Vec::new();
    for i in 0..6 {
        let base = if i % 2 == 0 { &app.base } else { &replica.base };
        let resp = app
            .client
            .get(format!("{base}/v1/agents"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "request {i} on {base}");
        remaining.push(header(&resp, "x-ratelimit-remaining").expect("remaining"));
    }
    assert_eq!(remaining, vec![5, 4, 3, 2, 1, 0]);
    // The seventh is refused by whichever server gets it.
    for base in [&app.base, &replica.base] {
        let resp = app
            .client
            .get(format!("{base}/v1/agents"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 429, "{base}");
    }
});

backend_test!(api_version_v1_or_absent_is_served_others_are_400, |app| {
    for ok in ["v1", "0.1.0"] {
        let resp = app
            .req(Method::GET, "/v1/agents")
            .header("API-Version", ok)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{ok}");
    }
    let resp = app
        .req(Method::GET, "/v1/agents")
        .header("API-Version", "v2")
        .send()
        .await
        .expect("request");
    let (status, body) = json(resp).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "UNSUPPORTED_API_VERSION");
    assert_eq!(body["error"]["details"][0]["field"], "API-Version");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("supported versions: v1"),
        "{body}"
    );
    // The generated Rust client sends its document version and keeps working.
    let agents = app
        .api()
        .list_agents()
        .send()
        .await
        .expect("the typed client is served");
    assert_eq!(agents.into_inner().pagination.page.get(), 1);
});

async fn decode(resp: reqwest::Response) -> (Option<String>, String) {
    use tokio::io::AsyncReadExt;
    let encoding = resp
        .headers()
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.bytes().await.expect("body");
    let mut out = Vec::new();
    match encoding.as_deref() {
        Some("gzip") => {
            async_compression::tokio::bufread::GzipDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .await
                .expect("gzip");
        }
        Some("br") => {
            async_compression::tokio::bufread::BrotliDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .await
                .expect("br");
        }
        _ => out = bytes.to_vec(),
    }
    (encoding, String::from_utf8(out).expect("utf-8"))
}

backend_test!(responses_are_compressed_as_accept_encoding_allows, |app| {
    app.create_agent(json!({"name": "Compressed", "description": "x".repeat(2000)}))
        .await;
    let plain = app.get("/v1/agents").await;
    assert!(plain.headers().get("content-encoding").is_none());
    let (_, expected) = decode(plain).await;
    for (accept, coding) in [
        ("gzip", "gzip"),
        ("gzip, deflate, br", "br"),
        ("br;q=0.5, gzip", "gzip"),
    ] {
        let resp = app
            .req(Method::GET, "/v1/agents")
            .header("Accept-Encoding", accept)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("x-ratelimit-limit"));
        let (encoding, text) = decode(resp).await;
        assert_eq!(encoding.as_deref(), Some(coding), "{accept}");
        let a: serde_json::Value = serde_json::from_str(&text).expect("json");
        let b: serde_json::Value = serde_json::from_str(&expected).expect("json");
        assert_eq!(a["data"], b["data"]);
    }
    // Errors are compressed too; identity-only clients get plain bodies.
    let resp = app
        .req(Method::GET, "/v1/agents?per_page=0")
        .header("Accept-Encoding", "identity")
        .send()
        .await
        .expect("request");
    assert!(resp.headers().get("content-encoding").is_none());
    assert_eq!(resp.status(), 400);
});

backend_test!(
    a_batch_runs_each_operation_in_order_and_a_bad_one_fails_alone,
    |app| {
        let resp = app
        .send_json(
            Method::POST,
            "/v1/batch",
            &json!({"operations": [
                {"id": "a", "method": "POST", "path": "/v1/agents",
                 "body": {"name": "Agent 1", "type": "assistant"}},
                {"id": "b", "method": "POST", "path": "/v1/agents", "body": {"type": "assistant"}},
                {"method": "GET", "path": "/v1/agents?type=assistant&fields=id,name"},
                {"method": "POST", "path": "/v1/batch", "body": {"operations": []}},
                {"method": "GET", "path": "/v1/agents/agent_missing",
                 "headers": {"Authorization": "Bearer ap_forged", "X-Trace": "1"}},
                {"method": "GET", "path": "/v1/agents", "headers": {"API-Version": "v9"}},
                {"method": "DELETE", "path": "/v1/nowhere"}
            ]}),
        )
        .await;
        let (status, body) = json(resp).await;
        assert_eq!(status, 200, "{body}");
        let results = body["results"].as_array().expect("results");
        let statuses: Vec<i64> = results
            .iter()
            .map(|r| r["status"].as_i64().unwrap_or(0))
            .collect();
        assert_eq!(statuses, vec![201, 422, 200, 400, 404, 400, 404]);
        assert_eq!(results[0]["id"], "a");
        assert_eq!(results[2]["id"], serde_json::Value::Null);
        let created = results[0]["body"]["id"].as_str().expect("created id");
        assert_eq!(
            results[0]["headers"]["location"],
            format!("/v1/agents/{created}")
        );
        assert!(results[0]["headers"]["etag"].is_string());
        assert!(results[0]["headers"]["x-ratelimit-remaining"].is_string());
        assert_eq!(results[1]["body"]["error"]["details"][0]["field"], "name");
        // Later operations see what earlier ones did.
        assert_eq!(results[2]["body"]["data"][0]["id"], created);
        assert_eq!(
            results[3]["body"]["error"]["details"][0]["field"],
            "operations[3].path"
        );
        // A forged credential is ignored: the batch's own key answered (404, not 401).
        assert_eq!(results[4]["body"]["error"]["code"], "AGENT_NOT_FOUND");
        assert_eq!(
            results[5]["body"]["error"]["code"],
            "UNSUPPORTED_API_VERSION"
        );
        // The agent really exists.
        assert_eq!(
            app.get(&format!("/v1/agents/{created}")).await.status(),
            200
        );
    }
);

backend_test!(
    batch_operations_keep_the_callers_scopes_and_organization,
    |app| {
        let agent = app.create_agent(json!({"name": "Mine"})).await;
        let id = agent["id"].as_str().expect("id");
        let reader = app
            .key_for(
                "default",
                "batch-reader",
                agentplane_api::models::Role::Member,
                Some(&[agentplane_api::models::Scope::ReadAgents]),
            )
            .await;
        let ops = json!({"operations": [
            {"method": "GET", "path": format!("/v1/agents/{id}")},
            {"method": "DELETE", "path": format!("/v1/agents/{id}")}
        ]});
        let resp = send_as(&app, &reader, Method::POST, "/v1/batch", Some(&ops)).await;
        let (status, body) = json(resp).await;
        assert_eq!(status, 200);
        assert_eq!(body["results"][0]["status"], 200);
        assert_eq!(body["results"][1]["status"], 403);
        let other = other_admin(&app).await;
        let resp = send_as(&app, &other, Method::POST, "/v1/batch", Some(&ops)).await;
        let (_, body) = json(resp).await;
        assert_eq!(body["results"][0]["status"], 404);
        assert_eq!(body["results"][1]["status"], 404);
        assert_eq!(app.get(&format!("/v1/agents/{id}")).await.status(), 200);
        // Bad batches as a whole: empty, too many, unauthenticated.
        let (status, _) = json(
            app.send_json(Method::POST, "/v1/batch", &json!({"operations": []}))
                .await,
        )
        .await;
        assert!(status == 400 || status == 422);
        let many: Vec<_> = (0..101)
            .map(|_| json!({"method": "GET", "path": "/v1/agents"}))
            .collect();
        let (status, body) = json(
            app.send_json(Method::POST, "/v1/batch", &json!({"operations": many}))
                .await,
        )
        .await;
        assert!(status == 400 || status == 422, "{body}");
        assert_eq!(body["error"]["details"][0]["field"], "operations");
        let resp = app
            .client
            .post(app.url("/v1/batch"))
            .json(&ops)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 401);
    }
);

backend_test!(bulk_updates_apply_in_one_step_and_bump_versions, |app| {
    let a = app
        .create_agent(json!({"name": "A", "type": "assistant", "status": "inactive"}))
        .await;
    let b = app
        .create_agent(json!({"name": "B", "type": "assistant", "status": "active"}))
        .await;
    let c = app
        .create_agent(json!({"name": "C", "type": "analyzer", "status": "inactive"}))
        .await;
    let resp = app
        .send_json(
            Method::PATCH,
            "/v1/agents/bulk",
            &json!({"filter": {"type": "assistant"}, "updates": {"status": "active"}}),
        )
        .await;
    let (status, body) = json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["matched"], 2);
    assert_eq!(body["updated"], 1);
    assert_eq!(body["updated_ids"], json!([a["id"]]));
    let get = |v: &serde_json::Value| format!("/v1/agents/{}", v["id"].as_str().unwrap_or(""));
    let (_, a2) = json(app.get(&get(&a)).await).await;
    assert_eq!(
        (a2["status"].clone(), a2["version"].clone()),
        (json!("active"), json!(2))
    );
    let (_, b2) = json(app.get(&get(&b)).await).await;
    assert_eq!(b2["version"], 1, "unchanged agents keep their version");
    let (_, c2) = json(app.get(&get(&c)).await).await;
    assert_eq!(c2["status"], "inactive");
    // By ids, with a field the Agent schema checks.
    let resp = app
        .send_json(
            Method::PATCH,
            "/v1/agents/bulk",
            &json!({"filter": {"ids": [b["id"], c["id"]]}, "updates": {"tags": ["x"], "description": null}}),
        )
        .await;
    let (status, body) = json(resp).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["updated"], 2);
    // Invalid updates change nothing and name the field.
    for (bad, field) in [
        (
            json!({"filter": {"type": "assistant"}, "updates": {"status": "sleeping"}}),
            "updates.status",
        ),
        (
            json!({"filter": {}, "updates": {"status": "active"}}),
            "filter",
        ),
        (
            json!({"filter": {"type": "assistant"}, "updates": {"configuration": {"temperature": 9}}}),
            "updates.configuration.temperature",
        ),
        (json!({"updates": {}}), "filter"),
    ] {
        let (status, body) =
            json(app.send_json(Method::PATCH, "/v1/agents/bulk", &bad).await).await;
        assert!(status == 400 || status == 422, "{bad}: {status}");
        assert_eq!(body["error"]["details"][0]["field"], field, "{body}");
    }
    // Other organizations' agents never match; a read-only key cannot bulk-update.
    let other = other_admin(&app).await;
    let resp = send_as(
        &app,
        &other,
        Method::PATCH,
        "/v1/agents/bulk",
        Some(&json!({"filter": {"ids": [a["id"]]}, "updates": {"name": "stolen"}})),
    )
    .await;
    let (status, body) = json(resp).await;
    assert_eq!((status, body["matched"].clone()), (200, json!(0)));
    let viewer = app
        .key_for(
            "default",
            "viewer",
            agentplane_api::models::Role::Viewer,
            None,
        )
        .await;
    let resp = send_as(
        &app,
        &viewer,
        Method::PATCH,
        "/v1/agents/bulk",
        Some(&json!({"filter": {"type": "assistant"}, "updates": {"name": "x"}})),
    )
    .await;
    assert_eq!(resp.status(), 403);
    let (_, a3) = json(app.get(&get(&a)).await).await;
    assert_eq!(a3["name"], "A");
});
