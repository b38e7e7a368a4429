//! Agent deployments in the embedded runtime: status, scale, restart (draining the work in
//! flight), metrics computed from recorded executions, and the agent's log.

use std::time::Duration;

use agentplane::db::schema::executions as e;
use agentplane_api::models::{Role, Scope};
use diesel::prelude::*;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, fields, json};

/// An execution as the worker pool would have recorded it.
#[derive(Default)]
struct Recorded {
    status: &'static str,
    started_ms_ago: i64,
    /// `None` while running.
    duration_ms: Option<i64>,
    tokens: (i64, i64),
    cost_nano_usd: i64,
}

fn running() -> Recorded {
    Recorded {
        status: "running",
        started_ms_ago: 10,
        ..Recorded::default()
    }
}

/// Records an execution of `agent` directly.
async fn record_execution(app: &TestApp, org: &str, agent: &str, r: Recorded) -> String {
    let Recorded {
        status,
        started_ms_ago,
        duration_ms,
        tokens,
        cost_nano_usd,
    } = r;
    let id = agentplane::ids::new_id("exec");
    let now = chrono::Utc::now();
    let started = now - chrono::Duration::milliseconds(started_ms_ago);
    let finished = duration_ms.map(|d| started + chrono::Duration::milliseconds(d));
    let fmt = agentplane::ids::format_time;
    let (store, row_id, org, agent) = (
        app.store.clone(),
        id.clone(),
        org.to_string(),
        agent.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            diesel::insert_into(e::table)
                .values((
                    e::id.eq(&row_id),
                    e::org_id.eq(&org),
                    e::agent_id.eq(&agent),
                    e::status.eq(status),
                    e::request.eq("{}"),
                    e::input_tokens.eq(tokens.0),
                    e::output_tokens.eq(tokens.1),
                    e::cost_nano_usd.eq(cost_nano_usd),
                    e::steps.eq("[]"),
                    e::cancel_requested.eq(0i64),
                    e::created_at.eq(fmt(started)),
                    e::started_at.eq(Some(fmt(started))),
                    e::finished_at.eq(finished.map(fmt)),
                ))
                .execute(conn)
                .map_err(agentplane::db::StoreError::from)
        })
    })
    .await
    .expect("join")
    .expect("insert execution");
    id
}

async fn finish_execution(app: &TestApp, id: &str) {
    let (store, id) = (app.store.clone(), id.to_string());
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            diesel::update(e::table.filter(e::id.eq(&id)))
                .set((
                    e::status.eq("succeeded"),
                    e::finished_at.eq(Some(agentplane::ids::now())),
                ))
                .execute(conn)
                .map_err(agentplane::db::StoreError::from)
        })
    })
    .await
    .expect("join")
    .expect("finish execution");
}

async fn org_of(app: &TestApp, agent_id: &str) -> String {
    let (store, id) = (app.store.clone(), agent_id.to_string());
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            agentplane::db::schema::agents::table
                .filter(agentplane::db::schema::agents::id.eq(&id))
                .select(agentplane::db::schema::agents::org_id)
                .first::<String>(conn)
                .map_err(agentplane::db::StoreError::from)
        })
    })
    .await
    .expect("join")
    .expect("org")
}

/// Polls the status until `done` holds (the reconcile loop runs every 200 ms).
async fn status_until(app: &TestApp, agent_id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/v1/agents/{agent_id}/status");
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, body) = json(app.get(&path).await).await;
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the deployment did not converge: {last}");
}

async fn log_messages(app: &TestApp, agent_id: &str) -> Vec<String> {
    let (status, body) = json(app.get(&format!("/v1/agents/{agent_id}/logs")).await).await;
    assert_eq!(status, 200, "{body}");
    body["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .map(|l| l["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

backend_test!(a_new_agent_is_deployed_with_one_replica, |app| {
    let agent = app.create_agent(json!({"name": "support"})).await;
    let id = agent["id"].as_str().expect("id");
    let (status, body) = json(app.get(&format!("/v1/agents/{id}/status")).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent_id"], *id);
    assert_eq!(body["runtime"], "embedded");
    assert_eq!(body["state"], "deployed");
    assert_eq!(body["health"], "healthy");
    assert_eq!(
        (
            &body["target_replicas"],
            &body["ready_replicas"],
            &body["in_flight"]
        ),
        (&json!(1), &json!(1), &json!(0))
    );
    assert_eq!(body["revision"], 1);
    assert_eq!(body["deployed_at"], agent["created_at"]);
    assert_eq!(
        log_messages(&app, id).await,
        vec!["deployed revision 1 with 1 replica"]
    );
});

backend_test!(scaling_changes_the_slots_and_zero_stops, |app| {
    let agent = app.create_agent(json!({"name": "scaled"})).await;
    let id = agent["id"].as_str().expect("id");
    let resp = app
        .send_json(
            Method::POST,
            &format!("/v1/agents/{id}/scale"),
            &json!({"replicas": 3}),
        )
        .await;
    assert_eq!(
        resp.headers().get("location").and_then(|v| v.to_str().ok()),
        Some(format!("/v1/agents/{id}/status").as_str())
    );
    let (status, body) = json(resp).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        (&body["state"], &body["target_replicas"]),
        (&json!("scaling"), &json!(3))
    );
    assert_eq!(
        body["ready_replicas"], 3,
        "scaling up opens the slots at once"
    );
    let done = status_until(&app, id, |b| b["state"] == "deployed").await;
    assert_eq!(
        (&done["ready_replicas"], &done["health"]),
        (&json!(3), &json!("healthy"))
    );
    let slots = {
        let (store, id) = (app.store.clone(), id.to_string());
        tokio::task::spawn_blocking(move || {
            store.run_blocking(|conn| agentplane::runtime::embedded::slots(conn, &id))
        })
        .await
        .expect("join")
        .expect("slots")
    };
    assert_eq!(slots, 3, "the worker pool's per-agent limit");

    // Down to one while two run: `scaling` until they finish.
    let org = org_of(&app, id).await;
    let a = record_execution(&app, &org, id, running()).await;
    let b = record_execution(&app, &org, id, running()).await;
    let (_, body) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/agents/{id}/scale"),
            &json!({"replicas": 1}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (&body["state"], &body["in_flight"]),
        (&json!("scaling"), &json!(2))
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, still) = json(app.get(&format!("/v1/agents/{id}/status")).await).await;
    assert_eq!(still["state"], "scaling", "two run, one slot: {still}");
    finish_execution(&app, &a).await;
    status_until(&app, id, |b| b["state"] == "deployed").await;
    finish_execution(&app, &b).await;

    let (status, body) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/agents/{id}/scale"),
            &json!({"replicas": 0}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let stopped = status_until(&app, id, |b| b["state"] == "stopped").await;
    assert_eq!(
        (&stopped["ready_replicas"], &stopped["health"]),
        (&json!(0), &json!("down"))
    );
    let logs = log_messages(&app, id).await;
    for expected in [
        "scaling from 1 to 3 replicas",
        "scaled to 3 replicas",
        "scaling from 3 to 1 replica",
        "scaled to 1 replica",
        "stopped: 0 replicas",
    ] {
        assert!(logs.iter().any(|l| l == expected), "{expected} in {logs:?}");
    }
});

backend_test!(
    a_restart_drains_the_work_in_flight_then_starts_a_new_revision,
    |app| {
        let agent = app.create_agent(json!({"name": "restarted"})).await;
        let id = agent["id"].as_str().expect("id");
        let org = org_of(&app, id).await;
        let running = record_execution(
            &app,
            &org,
            id,
            Recorded {
                started_ms_ago: 100,
                ..running()
            },
        )
        .await;
        let (status, body) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/agents/{id}/restart"),
                &json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["state"], "restarting");
        assert_eq!(
            (&body["ready_replicas"], &body["health"]),
            (&json!(0), &json!("down"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (_, draining) = json(app.get(&format!("/v1/agents/{id}/status")).await).await;
        assert_eq!(
            (&draining["state"], &draining["revision"]),
            (&json!("restarting"), &json!(1)),
            "no new revision while the old one's execution runs"
        );
        finish_execution(&app, &running).await;
        let done = status_until(&app, id, |b| b["state"] == "deployed").await;
        assert_eq!(
            (&done["revision"], &done["ready_replicas"]),
            (&json!(2), &json!(1))
        );
        assert!(done["deployed_at"].as_str() > agent["created_at"].as_str());
        let logs = log_messages(&app, id).await;
        assert!(
            logs.contains(&"restart requested: draining 1 execution in flight".to_string()),
            "{logs:?}"
        );
        assert!(
            logs.contains(&"restarted: revision 2 serving with 1 replica".to_string()),
            "{logs:?}"
        );
    }
);

backend_test!(metrics_are_computed_from_recorded_executions, |app| {
    let agent = app.create_agent(json!({"name": "measured"})).await;
    let id = agent["id"].as_str().expect("id");
    let org = org_of(&app, id).await;
    for (i, ms) in [100, 200, 300, 400].iter().enumerate() {
        record_execution(
            &app,
            &org,
            id,
            Recorded {
                status: "succeeded",
                started_ms_ago: 60_000 + i as i64,
                duration_ms: Some(*ms),
                tokens: (100, 20),
                cost_nano_usd: 1_500_000,
            },
        )
        .await;
    }
    record_execution(
        &app,
        &org,
        id,
        Recorded {
            status: "failed",
            started_ms_ago: 60_000,
            duration_ms: Some(1000),
            tokens: (50, 0),
            cost_nano_usd: 500_000,
        },
    )
    .await;
    record_execution(&app, &org, id, running()).await;
    // Two days ago: outside the default one-hour window.
    record_execution(
        &app,
        &org,
        id,
        Recorded {
            status: "succeeded",
            started_ms_ago: 2 * 86_400_000,
            duration_ms: Some(50),
            tokens: (999, 999),
            cost_nano_usd: 9_000_000,
        },
    )
    .await;

    let (status, m) = json(app.get(&format!("/v1/agents/{id}/metrics")).await).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["window"], "1h");
    assert_eq!(
        m["executions"],
        json!({"total": 5, "succeeded": 4, "failed": 1, "cancelled": 0, "timed_out": 0, "queued": 0, "running": 1})
    );
    assert_eq!(m["error_rate"], 0.2);
    assert_eq!(
        m["latency_ms"],
        json!({"p50": 300, "p95": 1000, "p99": 1000})
    );
    assert_eq!(m["tokens"], json!({"input": 450, "output": 80}));
    assert!(
        (m["cost_usd"].as_f64().expect("cost") - 0.0065).abs() < 1e-12,
        "{m}"
    );

    let (_, week) = json(app.get(&format!("/v1/agents/{id}/metrics?window=7d")).await).await;
    assert_eq!(week["executions"]["total"], 6);
    assert_eq!(week["tokens"]["input"], 1449);

    let other = app.create_agent(json!({"name": "idle"})).await;
    let (_, idle) = json(
        app.get(&format!(
            "/v1/agents/{}/metrics",
            other["id"].as_str().expect("id")
        ))
        .await,
    )
    .await;
    assert_eq!(idle["executions"]["total"], 0);
    assert_eq!(
        idle["latency_ms"],
        json!({"p50": null, "p95": null, "p99": null})
    );
    assert_eq!(
        (&idle["error_rate"], &idle["cost_usd"]),
        (&json!(0.0), &json!(0.0))
    );
});

backend_test!(logs_filter_by_level_since_and_lines, |app| {
    let agent = app.create_agent(json!({"name": "logged"})).await;
    let id = agent["id"].as_str().expect("id");
    let org = org_of(&app, id).await;
    let exec = record_execution(
        &app,
        &org,
        id,
        Recorded {
            status: "failed",
            started_ms_ago: 10,
            duration_ms: Some(5),
            ..Recorded::default()
        },
    )
    .await;
    let (store, o, a, x) = (app.store.clone(), org.clone(), id.to_string(), exec.clone());
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            agentplane::runtime::embedded::log_execution(
                conn,
                &o,
                &a,
                "error",
                "execution failed: model timeout",
                &x,
            )
        })
    })
    .await
    .expect("join")
    .expect("log");
    for r in [2, 3] {
        app.send_json(
            Method::POST,
            &format!("/v1/agents/{id}/scale"),
            &json!({"replicas": r}),
        )
        .await;
    }

    let (_, all) = json(app.get(&format!("/v1/agents/{id}/logs")).await).await;
    assert!(all["logs"].as_array().expect("logs").len() >= 4, "{all}");
    assert_eq!(all["truncated"], false);
    let (_, errors) = json(app.get(&format!("/v1/agents/{id}/logs?level=warn")).await).await;
    assert_eq!(errors["logs"].as_array().map(Vec::len), Some(1), "{errors}");
    assert_eq!(errors["logs"][0]["execution_id"], json!(exec));
    assert_eq!(errors["logs"][0]["level"], "error");
    let (_, last) = json(app.get(&format!("/v1/agents/{id}/logs?lines=1")).await).await;
    assert_eq!(
        (&last["total_lines"], &last["truncated"]),
        (&json!(1), &json!(true))
    );
    assert!(
        last["logs"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("to 3")),
        "{last}"
    );
    let (_, recent) = json(app.get(&format!("/v1/agents/{id}/logs?since=1h")).await).await;
    assert_eq!(
        recent["logs"], all["logs"],
        "everything happened within the hour"
    );
    let future = "2999-01-01T00:00:00Z";
    let (status, none) = json(
        app.get(&format!("/v1/agents/{id}/logs?since={future}"))
            .await,
    )
    .await;
    assert_eq!(
        (status, none["logs"].as_array().map(Vec::len)),
        (200, Some(0))
    );
});

backend_test!(
    deployments_refuse_bad_input_other_orgs_and_missing_scopes,
    |app| {
        let agent = app.create_agent(json!({"name": "guarded"})).await;
        let id = agent["id"].as_str().expect("id");
        let scale = format!("/v1/agents/{id}/scale");
        for (body, field) in [
            (json!({"replicas": 17}), "replicas"),
            (json!({"replicas": -1}), "replicas"),
            (json!({"replicas": "3"}), "replicas"),
            (json!({}), "replicas"),
            (json!({"replicas": 1, "extra": true}), "extra"),
        ] {
            let (status, err) = json(app.send_json(Method::POST, &scale, &body).await).await;
            assert_eq!(status, 422, "{body}: {err}");
            assert!(
                fields(&err).iter().any(|f| f.contains(field)),
                "{body}: {err}"
            );
        }
        for (query, field) in [
            ("metrics?window=1w", "window"),
            ("metrics?window=0h", "window"),
            ("logs?lines=0", "lines"),
            ("logs?since=yesterday", "since"),
            ("logs?level=trace", "level"),
        ] {
            let (status, err) = json(app.get(&format!("/v1/agents/{id}/{query}")).await).await;
            assert_eq!(status, 400, "{query}: {err}");
            assert!(
                fields(&err).iter().any(|f| f.contains(field)),
                "{query}: {err}"
            );
        }

        let other = app.key_for("other-org", "eve", Role::Admin, None).await;
        for (method, path) in [
            (Method::GET, "status"),
            (Method::POST, "scale"),
            (Method::POST, "restart"),
            (Method::GET, "metrics"),
            (Method::GET, "logs"),
        ] {
            let resp = app
                .as_key(&other, method.clone(), &format!("/v1/agents/{id}/{path}"))
                .json(&json!({"replicas": 2}))
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), 404, "{method} {path} from another org");
        }
        let reader = app
            .key_for("default", "rita", Role::Member, Some(&[Scope::ReadAgents]))
            .await;
        let resp = app
            .as_key(&reader, Method::POST, &scale)
            .json(&json!({"replicas": 2}))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 403);
        let resp = app
            .as_key(&reader, Method::GET, &format!("/v1/agents/{id}/status"))
            .send()
            .await
            .expect("send");
        assert_eq!(resp.status(), 200);
        let (_, status) = json(app.get(&format!("/v1/agents/{id}/status")).await).await;
        assert_eq!(status["target_replicas"], 1, "nothing changed");
    }
);

/// How many of the agent's executions are `running` now.
async fn running_now(app: &TestApp, agent_id: &str) -> usize {
    let (status, body) = json(
        app.get(&format!(
            "/v1/executions?agent_id={agent_id}&status=running&per_page=100"
        ))
        .await,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["data"].as_array().map_or(0, Vec::len)
}

backend_test!(three_replicas_run_three_executions_at_once, |app| {
    // Each answer of this model takes 6 s: long enough to see who runs beside whom.
    let agent = crate::executions::remote_agent(&app, "sleep-6000").await;
    for _ in 0..3 {
        let (status, body) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/agents/{agent}/execute"),
                &json!({"input": "work"}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202, "{body}");
    }
    // One replica: one runs, two wait, however many workers the pool has.
    let mut most = 0;
    for _ in 0..15 {
        most = most.max(running_now(&app, &agent).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(most, 1, "one replica runs one execution at a time");

    let (status, body) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/agents/{agent}/scale"),
            &json!({"replicas": 3}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let mut now = 0;
    for _ in 0..40 {
        now = running_now(&app, &agent).await;
        if now == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(now, 3, "three replicas run the three executions at once");
});

backend_test!(
    following_a_log_streams_new_lines_as_they_are_written,
    |app| {
        let agent = app.create_agent(json!({"name": "followed"})).await;
        let id = agent["id"].as_str().expect("id");
        let mut resp = app
            .get(&format!("/v1/agents/{id}/logs?follow=true&level=info"))
            .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("text/event-stream")
        );
        let mut seen = String::new();
        // Reads until `want` has arrived as a `log` event's message.
        let mut until = async |resp: &mut reqwest::Response, want: &str| {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let has = seen.split("\n\n").any(|event| {
                    event.lines().any(|l| l == "event: log")
                        && event
                            .lines()
                            .filter_map(|l| l.strip_prefix("data: "))
                            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                            .any(|line| line["message"] == want)
                });
                if has {
                    return;
                }
                let chunk = tokio::time::timeout_at(deadline, resp.chunk())
                    .await
                    .unwrap_or_else(|_| panic!("no {want:?} in {seen}"))
                    .expect("read");
                let Some(chunk) = chunk else {
                    panic!("the stream ended before {want:?}: {seen}");
                };
                seen.push_str(&String::from_utf8_lossy(&chunk));
            }
        };
        // What was there, then what happens while we watch.
        until(&mut resp, "deployed revision 1 with 1 replica").await;
        app.send_json(
            Method::POST,
            &format!("/v1/agents/{id}/scale"),
            &json!({"replicas": 2}),
        )
        .await;
        until(&mut resp, "scaling from 1 to 2 replicas").await;
        until(&mut resp, "scaled to 2 replicas").await;
        let messages = seen.matches("scaling from 1 to 2 replicas").count();
        assert_eq!(messages, 1, "each line once: {seen}");

        // Without follow, the same lines as JSON.
        let logs = log_messages(&app, id).await;
        assert!(logs.iter().any(|l| l == "scaled to 2 replicas"), "{logs:?}");
    }
);
