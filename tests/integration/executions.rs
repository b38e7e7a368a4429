//! Executing agents: polled, waited for and streamed; the executions resource; cancel,
//! timeouts, and executions interrupted by a dead server.

use std::time::Duration;

use agentplane_api::models::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, fields, json};

/// A knowledge base of two documents (the router's warranty, shipping); its id.
pub(crate) async fn manuals(app: &TestApp) -> String {
    let (status, kb) = json(
        app.send_json(Method::POST, "/v1/knowledge", &json!({"name": "Manuals"}))
            .await,
    )
    .await;
    assert_eq!(status, 201, "{kb}");
    let kb = kb["id"].as_str().expect("kb id").to_string();
    let (status, out) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb}/ingest"),
            &json!({"documents": [
                {"title": "Warranty", "text": "The router warranty lasts two years. Keep the receipt."},
                {"title": "Shipping", "text": "Shipping is free within the country."}
            ]}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{out}");
    kb
}

/// A knowledge base with two documents, a template and an agent using both on a priced
/// local model. Returns the agent id.
async fn support_agent(app: &TestApp) -> String {
    let kb = manuals(app).await;
    let (status, tpl) = json(
        app.send_json(
            Method::POST,
            "/v1/prompt-templates",
            &json!({"name": "support", "template": "You support {{product}}."}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{tpl}");
    let (status, model) = json(
        app.send_json(
            Method::POST,
            "/v1/models",
            &json!({"name": "Local, priced", "provider": "local", "model_id": "local-extractive-1",
                    "pricing": {"input_per_1k": 0.01, "output_per_1k": 0.03}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{model}");
    let agent = app
        .create_agent(json!({
            "name": "Support",
            "system_prompt": "Be brief.",
            "model_id": model["id"],
            "knowledge_bases": [kb],
            "prompt_template_id": tpl["id"],
        }))
        .await;
    agent["id"].as_str().expect("agent id").to_string()
}

/// Polls an execution until it leaves `queued`/`running`.
async fn finished(app: &TestApp, id: &str) -> Value {
    for _ in 0..200 {
        let (status, e) = json(app.get(&format!("/v1/executions/{id}")).await).await;
        assert_eq!(status, 200, "{e}");
        if !matches!(e["status"].as_str(), Some("queued" | "running")) {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("execution {id} did not finish");
}

/// Waits (up to two seconds) until an execution runs.
async fn until_running(app: &TestApp, id: &str) {
    for _ in 0..100 {
        let (_, now) = json(app.get(&format!("/v1/executions/{id}")).await).await;
        if now["status"] == "running" {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (event name, data) of an SSE body.
pub(crate) fn events(body: &[u8]) -> Vec<(String, Value)> {
    conformance::response::sse_events(body)
        .into_iter()
        .map(|e| {
            (
                e.event.unwrap_or_default(),
                serde_json::from_str(&e.data).expect("JSON data"),
            )
        })
        .collect()
}

backend_test!(execute_polled_waited_and_streamed, |app| {
    let agent = support_agent(&app).await;
    let path = format!("/v1/agents/{agent}/execute");
    let body = json!({"input": "How long is the router warranty?", "parameters": {"product": "Acme Router"}});

    // Polled: 202 with a Location to poll.
    let resp = app.send_json(Method::POST, &path, &body).await;
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, accepted) = json(resp).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("id").to_string();
    assert_eq!(location, Some(format!("/v1/executions/{id}")));
    assert!(matches!(
        accepted["status"].as_str(),
        Some("queued" | "running" | "succeeded")
    ));
    let done = finished(&app, &id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let output = done["result"]["output"].as_str().expect("output");
    assert!(output.contains("two years"), "{output}");
    let steps: Vec<&str> = done["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(steps, ["template", "retrieval", "model_call"]);
    let (input, output_tokens) = (
        done["usage"]["input_tokens"].as_i64().expect("in"),
        done["usage"]["output_tokens"].as_i64().expect("out"),
    );
    assert!(input > 0 && output_tokens > 0);
    let cost = (input as f64 * 0.01 + output_tokens as f64 * 0.03) / 1000.0;
    assert!((done["usage"]["cost_usd"].as_f64().expect("cost") - cost).abs() < 1e-9);
    assert_eq!(done["result"]["tokens_used"], input + output_tokens);
    assert!(done["duration_ms"].as_i64().is_some() && done["completed_at"].is_string());

    // One usage record, written with the finished execution.
    let store = app.store.clone();
    let eid = id.clone();
    let usage = tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| agentplane::db::executions::usage_of(conn, &eid))
    })
    .await
    .expect("join")
    .expect("usage");
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (
            usage[0].input_tokens,
            usage[0].output_tokens,
            usage[0].agent_id.as_str()
        ),
        (input, output_tokens, agent.as_str())
    );

    // ETag and If-None-Match on the finished execution.
    let resp = app.get(&format!("/v1/executions/{id}")).await;
    let tag = resp
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("etag")
        .to_string();
    let again = app
        .req(Method::GET, &format!("/v1/executions/{id}"))
        .header("if-none-match", &tag)
        .send()
        .await
        .expect("send");
    assert_eq!(again.status(), 304);

    // Logs, oldest first, one line per step.
    let (status, logs) = json(app.get(&format!("/v1/executions/{id}/logs")).await).await;
    assert_eq!(status, 200, "{logs}");
    let lines = logs["data"].as_array().expect("lines");
    assert_eq!(lines.len(), 6, "{logs}");
    assert_eq!(lines[2]["step"], "template");

    // Waited: 200 with the finished execution.
    let mut waited = body.clone();
    waited["options"] = json!({"wait": true, "timeout": 10000});
    let (status, e) = json(app.send_json(Method::POST, &path, &waited).await).await;
    assert_eq!(
        (status, e["status"].as_str()),
        (200, Some("succeeded")),
        "{e}"
    );

    // Streamed, by option and by Accept: started, tokens, steps, completed.
    let mut streamed = body.clone();
    streamed["options"] = json!({"stream": true});
    for (req_body, accept) in [(streamed, "*/*"), (body.clone(), "text/event-stream")] {
        let resp = app
            .req(Method::POST, &path)
            .header("accept", accept)
            .json(&req_body)
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("text/event-stream"))
        );
        let bytes = resp.bytes().await.expect("body");
        let evs = events(&bytes);
        let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.first(), Some(&"execution.started"), "{names:?}");
        assert_eq!(names.last(), Some(&"execution.completed"), "{names:?}");
        assert!(names.contains(&"token") && names.iter().filter(|n| **n == "step").count() == 3);
        let text: String = evs
            .iter()
            .filter(|(n, _)| n == "token")
            .map(|(_, d)| d["delta"].as_str().unwrap_or_default())
            .collect();
        let (_, last) = evs.last().expect("last");
        assert_eq!(
            last["execution"]["result"]["output"].as_str(),
            Some(text.as_str())
        );
        for (i, (name, data)) in evs.iter().enumerate() {
            assert_eq!(
                (data["type"].as_str(), data["sequence"].as_i64()),
                (Some(name.as_str()), Some(i as i64))
            );
        }
    }

    // Following a finished execution replays its steps and its end.
    let resp = app.get(&format!("/v1/executions/{id}/events")).await;
    assert_eq!(resp.status(), 200);
    let evs = events(&resp.bytes().await.expect("body"));
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "execution.started",
            "step",
            "step",
            "step",
            "execution.completed"
        ]
    );

    // Lists: filters and both paginations.
    let (status, page) = json(
        app.get(&format!(
            "/v1/executions?agent_id={agent}&status=succeeded&per_page=2"
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["pagination"]["total"], 4);
    assert_eq!(page["data"].as_array().map(Vec::len), Some(2));
    let cursor = page["pagination"]["next_cursor"].as_str().expect("cursor");
    let (_, next) = json(
        app.get(&format!(
            "/v1/executions?agent_id={agent}&cursor={cursor}&limit=10"
        ))
        .await,
    )
    .await;
    assert_eq!(next["data"].as_array().map(Vec::len), Some(2));
    assert!(next["data"][0]["id"].as_str() < page["data"][1]["id"].as_str());
    let (_, none) = json(app.get("/v1/executions?status=cancelled").await).await;
    assert_eq!(none["pagination"]["total"], 0);

    // Idempotency-Key: a retry answers the first execution.
    let keyed = |b: &Value| {
        app.req(Method::POST, &path)
            .header("idempotency-key", "exec-once")
            .json(b)
            .send()
    };
    let (_, first) = json(keyed(&body).await.expect("send")).await;
    let (_, second) = json(keyed(&body).await.expect("send")).await;
    assert_eq!(first["id"], second["id"]);
    let (status, _) = json(
        keyed(&json!({"input": "other", "parameters": {"product": "p"}}))
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 409);
});

backend_test!(execute_rejects_bad_input_and_other_organizations, |app| {
    let agent = support_agent(&app).await;
    let path = format!("/v1/agents/{agent}/execute");
    // A declared template variable without a value: 422 naming it.
    let (status, err) = json(
        app.send_json(Method::POST, &path, &json!({"input": "hi"}))
            .await,
    )
    .await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(fields(&err), ["parameters.product"]);
    for bad in [
        json!({"input": 5}),
        json!({"input": "x", "options": {"timeout": 0}}),
        json!({"input": "x", "options": {"stream": "yes"}}),
        json!({"input": "x", "surprise": true}),
        json!({"input": "x", "parameters": {"product": 1}}),
    ] {
        let (status, _) = json(app.send_json(Method::POST, &path, &bad).await).await;
        assert!(status == 400 || status == 422, "{bad}: {status}");
    }
    let (status, _) = json(
        app.send_json(
            Method::POST,
            "/v1/agents/agent_nope/execute",
            &json!({"input": "x"}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);

    let (_, e) = json(
        app.send_json(
            Method::POST,
            &path,
            &json!({"input": "x", "parameters": {"product": "p"}, "options": {"wait": true}}),
        )
        .await,
    )
    .await;
    let id = e["id"].as_str().expect("id").to_string();
    // Finished: cancel is a conflict.
    let (status, err) = json(
        app.req(Method::POST, &format!("/v1/executions/{id}/cancel"))
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(status, 409, "{err}");

    // Another organization sees none of it.
    let other = app.key_for("org_other", "eve", Role::Admin, None).await;
    for (method, p) in [
        (Method::GET, format!("/v1/executions/{id}")),
        (Method::GET, format!("/v1/executions/{id}/logs")),
        (Method::GET, format!("/v1/executions/{id}/events")),
        (Method::POST, format!("/v1/executions/{id}/cancel")),
    ] {
        let resp = app.as_key(&other, method, &p).send().await.expect("send");
        assert_eq!(resp.status(), 404, "{p}");
    }
    let resp = app
        .as_key(&other, Method::POST, &path)
        .json(&json!({"input": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
    let (_, list) = json(
        app.as_key(&other, Method::GET, "/v1/executions")
            .send()
            .await
            .expect("send"),
    )
    .await;
    assert_eq!(list["pagination"]["total"], 0);
    // Viewers read executions but cannot execute.
    let viewer = app.key_for("org_other", "val", Role::Viewer, None).await;
    let resp = app
        .as_key(&viewer, Method::POST, "/v1/agents/agent_x/execute")
        .json(&json!({"input": "x"}))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 403);
});

/// An agent on the fake OpenAI-compatible server's model `model`.
pub(crate) async fn remote_agent(app: &TestApp, model: &str) -> String {
    let base = crate::models::fake_openai().await;
    let (status, m) = json(
        app.send_json(
            Method::POST,
            "/v1/models",
            &json!({"name": "remote", "provider": "openai-compatible", "model_id": model,
                    "endpoint": base, "api_key": "sk-test",
                    "pricing": {"input_per_1k": 1.0, "output_per_1k": 2.0}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{m}");
    let agent = app
        .create_agent(json!({"name": "Remote", "model_id": m["id"]}))
        .await;
    agent["id"].as_str().expect("id").to_string()
}

backend_test!(
    remote_models_stream_through_executions_and_time_out_or_cancel,
    |app| {
        // Streaming through the OpenAI-compatible client.
        let agent = remote_agent(&app, "gpt-test").await;
        let resp = app
            .req(Method::POST, &format!("/v1/agents/{agent}/execute"))
            .header("accept", "text/event-stream")
            .json(&json!({"query": "hello"}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let evs = events(&resp.bytes().await.expect("body"));
        let deltas: Vec<&str> = evs
            .iter()
            .filter(|(n, _)| n == "token")
            .filter_map(|(_, d)| d["delta"].as_str())
            .collect();
        assert_eq!(deltas, ["Echo", ": ", "hello"]);
        let (_, last) = evs.last().expect("last");
        assert_eq!(last["execution"]["usage"]["input_tokens"], 11);
        assert_eq!(last["execution"]["usage"]["output_tokens"], 3);
        // 11 * 1.0 / 1000 + 3 * 2.0 / 1000
        assert!(
            (last["execution"]["usage"]["cost_usd"]
                .as_f64()
                .expect("cost")
                - 0.017)
                .abs()
                < 1e-9
        );

        // A slow model past `options.timeout`: timed_out.
        let slow = remote_agent(&app, "slow").await;
        let (status, e) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/agents/{slow}/execute"),
                &json!({"input": "x", "options": {"timeout": 300, "wait": true}}),
            )
            .await,
        )
        .await;
        assert_eq!(
            (status, e["status"].as_str()),
            (200, Some("timed_out")),
            "{e}"
        );
        assert_eq!(e["error"]["code"], "TIMED_OUT");

        // Cancelled while running: it stops, and stays cancelled.
        let (status, e) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/agents/{slow}/execute"),
                &json!({"input": "x", "options": {"timeout": 20000}}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202);
        let id = e["id"].as_str().expect("id").to_string();
        until_running(&app, &id).await;
        let (status, c) = json(
            app.req(Method::POST, &format!("/v1/executions/{id}/cancel"))
                .send()
                .await
                .expect("send"),
        )
        .await;
        assert_eq!(
            (status, c["status"].as_str()),
            (200, Some("cancelled")),
            "{c}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, after) = json(app.get(&format!("/v1/executions/{id}")).await).await;
        assert_eq!(after["status"], "cancelled");
        assert_eq!(after["error"]["code"], "CANCELLED");
    }
);

backend_test!(executions_of_a_dead_server_are_failed_not_lost, |app| {
    // A server runs an execution on a slow model, then dies: its lease stops being renewed
    // (simulated by expiring it and giving it to a worker that no longer exists).
    let slow = remote_agent(&app, "slow").await;
    let (status, e) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/agents/{slow}/execute"),
            &json!({"input": "x", "options": {"timeout": 20000}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202);
    let id = e["id"].as_str().expect("id").to_string();
    until_running(&app, &id).await;
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            use diesel::RunQueryDsl;
            diesel::sql_query(
                "UPDATE jobs SET lease_owner = 'worker_dead', lease_until = '2000-01-01T00:00:00.000000Z'",
            )
            .execute(conn)
            .map_err(agentplane::db::StoreError::from)
        })
    })
    .await
    .expect("join")
    .expect("expire");

    // Another server on the same database reclaims the job and fails the execution.
    let config = agentplane::server::Config {
        listen: "127.0.0.1:0".into(),
        database_url: app.database_url.clone(),
        pool_size: 2,
        master_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
        jobs: agentplane::jobs::PoolConfig {
            workers: 2,
            lease: Duration::from_secs(5),
            poll: Duration::from_millis(50),
            ..Default::default()
        },
        ..Default::default()
    };
    let (bound, bootstrap) = agentplane::server::bind(&config).await.expect("binds");
    assert!(bootstrap.is_none(), "the database is not new");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(bound.serve(async move {
        let _ = rx.await;
    }));
    let done = finished(&app, &id).await;
    let _ = tx.send(());
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["error"]["code"], "INTERRUPTED");
    assert!(
        done["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("interrupted"))
    );
});

backend_test!(
    executions_publish_events_log_lines_and_respect_replicas,
    |app| {
        let agent = support_agent(&app).await;
        let path = format!("/v1/agents/{agent}/execute");
        let body = json!({"input": "How long is the warranty?", "parameters": {"product": "Acme"},
        "options": {"wait": true}});
        let (status, done) = json(app.send_json(Method::POST, &path, &body).await).await;
        assert_eq!(
            (status, done["status"].as_str()),
            (200, Some("succeeded")),
            "{done}"
        );
        let id = done["id"].as_str().expect("id").to_string();

        // The event log (so webhooks and /v1/stream) heard it start and complete.
        for kind in ["execution.started", "execution.completed"] {
            let (status, events) = json(app.get(&format!("/v1/events?type={kind}")).await).await;
            assert_eq!(status, 200, "{events}");
            let data = events["data"].as_array().expect("events");
            assert_eq!(data.len(), 1, "{kind}: {events}");
            assert_eq!(data[0]["data"]["execution_id"], id.as_str(), "{kind}");
            assert_eq!(data[0]["data"]["agent_id"], agent.as_str(), "{kind}");
        }
        let (_, completed) = json(app.get("/v1/events?type=execution.completed").await).await;
        assert!(completed["data"][0]["data"]["usage"]["input_tokens"].as_i64() > Some(0));

        // The agent's log has a line for each, naming the execution.
        let (status, logs) = json(app.get(&format!("/v1/agents/{agent}/logs")).await).await;
        assert_eq!(status, 200, "{logs}");
        let mine: Vec<&Value> = logs["logs"]
            .as_array()
            .expect("lines")
            .iter()
            .filter(|l| l["execution_id"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 2, "{logs}");
        assert!(mine.iter().any(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("succeeded"))
        }));

        // Scaled to 0 replicas the agent runs nothing: 409 naming it, until scaled up again.
        let scale = format!("/v1/agents/{agent}/scale");
        let (status, out) = json(
            app.send_json(Method::POST, &scale, &json!({"replicas": 0}))
                .await,
        )
        .await;
        assert_eq!(status, 202, "{out}");
        let (status, err) = json(app.send_json(Method::POST, &path, &body).await).await;
        assert_eq!(status, 409, "{err}");
        assert_eq!(err["error"]["code"], "AGENT_NOT_SERVING");
        assert_eq!(fields(&err), ["agent_id"]);
        let (status, out) = json(
            app.send_json(Method::POST, &scale, &json!({"replicas": 2}))
                .await,
        )
        .await;
        assert_eq!(status, 202, "{out}");
        let (status, done) = json(app.send_json(Method::POST, &path, &body).await).await;
        assert_eq!(
            (status, done["status"].as_str()),
            (200, Some("succeeded")),
            "{done}"
        );

        // A cancelled execution is an `execution.failed` event with its reason.
        let (status, queued) = json(
            app.send_json(Method::POST, &scale, &json!({"replicas": 1}))
                .await,
        )
        .await;
        assert_eq!(status, 202, "{queued}");
        let (status, accepted) = json(
            app.send_json(
                Method::POST,
                &path,
                &json!({"input": "x", "parameters": {"product": "A"}}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202, "{accepted}");
        let exec = accepted["id"].as_str().expect("id").to_string();
        let (status, cancelled) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/executions/{exec}/cancel"),
                &json!({}),
            )
            .await,
        )
        .await;
        if status == 200 {
            assert_eq!(cancelled["status"], "cancelled");
            let (_, failed) = json(app.get("/v1/events?type=execution.failed").await).await;
            let found = failed["data"].as_array().expect("events").iter().any(|e| {
                e["data"]["execution_id"] == exec.as_str() && e["data"]["status"] == "cancelled"
            });
            assert!(found, "{failed}");
        } else {
            // It finished first: 409, and it completed instead.
            assert_eq!(status, 409, "{cancelled}");
        }
    }
);
