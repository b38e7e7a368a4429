//! Digital twins and simulations, end to end: CRUD with sealed connection strings, seeded
//! Monte Carlo simulations that repeat exactly, async runs to poll, business-rule 422s,
//! restarts, isolation and scopes.

use std::time::Duration;

use agentplane_api::models::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend_test;
use crate::support::{TestApp, fields, json};

pub async fn create_twin(app: &TestApp, body: Value) -> Value {
    let (status, t) = json(app.send_json(Method::POST, "/v1/twins", &body).await).await;
    assert_eq!(status, 201, "{t}");
    t
}

pub fn supply_chain() -> Value {
    json!({
        "name": "Supply Chain Twin",
        "type": "logistics",
        "description": "Digital twin of supply chain operations",
        "data_sources": [{"type": "database", "connection_string": "postgresql://twin:s3cret@db.example.com/erp", "tables": ["orders", "inventory"]}],
        "update_frequency": "real-time",
        "simulation_models": ["demand_forecast", "capacity_planning"],
        "state": {"base_demand": 1200, "capacity": 1500, "share.US": 0.5, "share.EU": 0.3}
    })
}

async fn simulate(app: &TestApp, twin: &str, body: Value) -> (u16, Value, Option<String>) {
    let resp = app
        .send_json(Method::POST, &format!("/v1/twins/{twin}/simulate"), &body)
        .await;
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (status, body) = json(resp).await;
    (status, body, location)
}

backend_test!(twins_keep_connection_strings_sealed, |app| {
    let t = create_twin(&app, supply_chain()).await;
    let id = t["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("twin_"));
    assert_eq!(t["data_sources"][0]["connection_string_set"], true);
    assert!(!t.to_string().contains("s3cret"), "never echoed: {t}");
    assert_eq!(t["state"]["share.US"], 0.5);
    assert_eq!(t["update_frequency"], "real-time");
    let store = app.store.clone();
    let sealed = tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            let org = agentplane_org(conn)?;
            agentplane::db::twins::get(conn, &org, &id)
        })
    })
    .await
    .expect("join")
    .expect("row");
    assert!(sealed.content.secrets.starts_with("v1:") && !sealed.content.body.contains("s3cret"));
    let id = sealed.id;

    // Defaults, list, ETag.
    let minimal = create_twin(&app, json!({"name": "Plant", "type": "manufacturing"})).await;
    assert_eq!(
        minimal["simulation_models"],
        json!(["demand_forecast", "capacity_planning"])
    );
    assert_eq!(minimal["update_frequency"], "manual");
    let (_, list) = json(app.get("/v1/twins?type=logistics").await).await;
    assert_eq!(list["pagination"]["total"], 1);
    let resp = app.get(&format!("/v1/twins/{id}")).await;
    let etag = resp.headers()["etag"].to_str().expect("etag").to_string();
    let resp = app
        .req(Method::GET, &format!("/v1/twins/{id}"))
        .header("If-None-Match", &etag)
        .send()
        .await
        .expect("r");
    assert_eq!(resp.status(), 304);

    // A replace without the connection string keeps it; a stale If-Match is 412.
    let mut replace = supply_chain();
    replace["data_sources"][0]
        .as_object_mut()
        .expect("obj")
        .remove("connection_string");
    replace["state"]["base_demand"] = json!(1500);
    let (status, replaced) = json(
        app.req(Method::PUT, &format!("/v1/twins/{id}"))
            .header("If-Match", &etag)
            .json(&replace)
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["data_sources"][0]["connection_string_set"], true);
    assert_eq!(replaced["version"], 2);
    let (status, _) = json(
        app.req(Method::PUT, &format!("/v1/twins/{id}"))
            .header("If-Match", &etag)
            .json(&replace)
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 412);

    // Delete takes its simulations along.
    let (status, sim, _) = simulate(
        &app,
        &id,
        json!({"scenario": "base", "options": {"runs": 10}}),
    )
    .await;
    assert_eq!(status, 201, "{sim}");
    let resp = app
        .req(Method::DELETE, &format!("/v1/twins/{id}"))
        .send()
        .await
        .expect("r");
    assert_eq!(resp.status(), 204);
    assert_eq!(json(app.get(&format!("/v1/twins/{id}")).await).await.0, 404);
    let sim_id = sim["id"].as_str().expect("id");
    assert_eq!(
        json(
            app.get(&format!("/v1/twins/{id}/simulations/{sim_id}"))
                .await
        )
        .await
        .0,
        404
    );
});

/// The organization of the bootstrap admin (`default`).
pub fn agentplane_org(
    conn: &mut agentplane::db::DbConnection,
) -> agentplane::db::StoreResult<String> {
    agentplane::db::identity::organization_by_name(conn, "default")?
        .map(|o| o.id)
        .ok_or(agentplane::db::StoreError::NotFound)
}

backend_test!(simulations_repeat_with_the_same_seed, |app| {
    let t = create_twin(&app, supply_chain()).await;
    let id = t["id"].as_str().expect("id");
    let spike = json!({
        "scenario": "demand_spike",
        "model": "capacity_planning",
        "parameters": {"increase_percentage": 30, "duration_days": 7, "affected_regions": ["US", "EU"]},
        "options": {"seed": 42, "runs": 500}
    });
    let (status, first, location) = simulate(&app, id, spike.clone()).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["seed"], 42);
    let results = &first["results"];
    assert_eq!(results["periods"], 7);
    assert_eq!(results["series"].as_array().map(Vec::len), Some(7));
    let day1 = &results["series"][0]["metrics"]["demand"];
    assert!(
        day1["p10"].as_f64() < day1["p50"].as_f64() && day1["p50"].as_f64() < day1["p90"].as_f64(),
        "{day1}"
    );
    // 30% on 80% of 1200 a day: the median day is near 1488.
    let p50 = day1["p50"].as_f64().expect("p50");
    assert!((1300.0..1700.0).contains(&p50), "{p50}");
    for key in [
        "shortfall_probability",
        "recommended_capacity",
        "total_demand_p50",
        "baseline_total_demand",
    ] {
        assert!(results["summary"][key].is_number(), "{key}: {results}");
    }
    let location = location.expect("Location");
    let (status, polled) = json(app.get(&location).await).await;
    assert_eq!((status, &polled["results"]), (200, results));

    let (_, second, _) = simulate(&app, id, spike.clone()).await;
    assert_ne!(second["id"], first["id"]);
    assert_eq!(second["results"], *results, "same seed, same numbers");
    let mut other_seed = spike.clone();
    other_seed["options"]["seed"] = json!(43);
    let (_, third, _) = simulate(&app, id, other_seed).await;
    assert_ne!(third["results"], *results);

    // Async: 202, then poll to the same numbers.
    let mut background = spike.clone();
    background["options"]["run_async"] = json!(true);
    background["options"]["notification_webhook"] = json!("http://127.0.0.1:9/hook");
    let (status, queued, location) = simulate(&app, id, background).await;
    assert_eq!(status, 202, "{queued}");
    assert!(queued["status"] == "queued" || queued["status"] == "running");
    assert_eq!(queued["notification_webhook"], "http://127.0.0.1:9/hook");
    let location = location.expect("Location");
    let mut done = Value::Null;
    for _ in 0..200 {
        let (_, s) = json(app.get(&location).await).await;
        if s["status"] == "completed" || s["status"] == "failed" {
            done = s;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["results"], *results);

    let (_, list) = json(
        app.get(&format!("/v1/twins/{id}/simulations?status=completed"))
            .await,
    )
    .await;
    assert_eq!(list["pagination"]["total"], 4);

    // Idempotency-Key: a retry answers the first simulation; another body is a 409.
    let keyed = |body: &Value| {
        app.req(Method::POST, &format!("/v1/twins/{id}/simulate"))
            .header("Idempotency-Key", "sim-1")
            .json(body)
            .send()
    };
    let (_, a) = json(keyed(&spike).await.expect("r")).await;
    let (status, b) = json(keyed(&spike).await.expect("r")).await;
    assert_eq!((status, &b["id"]), (201, &a["id"]));
    let (status, _) = json(keyed(&json!({"scenario": "other"})).await.expect("r")).await;
    assert_eq!(status, 409);
});

backend_test!(simulations_reject_what_the_model_cannot_use, |app| {
    let t = create_twin(&app, json!({"name": "Demand only", "type": "retail", "simulation_models": ["demand_forecast"], "state": {"base_demand": -5}})).await;
    let id = t["id"].as_str().expect("id");
    let cases = [
        (
            json!({"scenario": "s", "model": "capacity_planning"}),
            "model",
        ),
        (
            json!({"scenario": "s", "parameters": {"surge": 2}}),
            "parameters.surge",
        ),
        (
            json!({"scenario": "s", "parameters": {"duration_days": 1000}}),
            "parameters.duration_days",
        ),
        (
            json!({"scenario": "s", "parameters": {"increase_percentage": "lots"}}),
            "parameters.increase_percentage",
        ),
        (
            json!({"scenario": "s", "parameters": {"capacity_change_percentage": 5}}),
            "parameters.capacity_change_percentage",
        ),
        (json!({"scenario": "s"}), "state.base_demand"),
    ];
    for (body, field) in cases {
        let (status, err, _) = simulate(&app, id, body.clone()).await;
        assert_eq!(status, 422, "{body}: {err}");
        assert!(fields(&err).iter().any(|f| f == field), "{field}: {err}");
    }
    // Schema violations are the validator's.
    for (body, field) in [
        (json!({"parameters": {}}), "scenario"),
        (json!({"scenario": "s", "model": "weather"}), "model"),
        (json!({"scenario": "s", "options": {"runs": 1}}), "options"),
    ] {
        let (status, err, _) = simulate(&app, id, body.clone()).await;
        assert!(status == 400 || status == 422, "{body}: {err}");
        assert!(
            fields(&err).iter().any(|f| f.starts_with(field)),
            "{field}: {err}"
        );
    }
    let (_, list) = json(app.get(&format!("/v1/twins/{id}/simulations")).await).await;
    assert_eq!(list["pagination"]["total"], 0, "nothing written");
    let (status, err) = json(
        app.send_json(
            Method::POST,
            "/v1/twins",
            &json!({"name": "x", "type": "a b"}),
        )
        .await,
    )
    .await;
    assert!(status == 400 || status == 422, "{err}");
    assert!(fields(&err).iter().any(|f| f == "type"), "{err}");
});

backend_test!(twins_are_isolated_and_scoped, |app| {
    let t = create_twin(&app, supply_chain()).await;
    let id = t["id"].as_str().expect("id");
    let other = app.key_for("globex", "gina", Role::Admin, None).await;
    for (method, path) in [
        (Method::GET, format!("/v1/twins/{id}")),
        (Method::GET, format!("/v1/twins/{id}/simulations")),
        (Method::DELETE, format!("/v1/twins/{id}")),
    ] {
        let (status, _) = json(app.as_key(&other, method, &path).send().await.expect("r")).await;
        assert_eq!(status, 404, "{path}");
    }
    let (status, _) = json(
        app.as_key(&other, Method::POST, &format!("/v1/twins/{id}/simulate"))
            .json(&json!({"scenario": "s"}))
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = json(
        app.as_key(&other, Method::PUT, &format!("/v1/twins/{id}"))
            .json(&json!({"name": "x", "type": "y"}))
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 404);
    let (_, list) = json(
        app.as_key(&other, Method::GET, "/v1/twins")
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(list["pagination"]["total"], 0);

    let viewer = app.key_for("default", "vic", Role::Viewer, None).await;
    let (status, _) = json(
        app.as_key(&viewer, Method::GET, &format!("/v1/twins/{id}"))
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = json(
        app.as_key(&viewer, Method::POST, &format!("/v1/twins/{id}/simulate"))
            .json(&json!({"scenario": "s"}))
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = json(
        app.as_key(&viewer, Method::POST, "/v1/twins")
            .json(&supply_chain())
            .send()
            .await
            .expect("r"),
    )
    .await;
    assert_eq!(status, 403);
});

/// Inserts simulation `id` of `twin_id` as running, with no job: what a server that ran it
/// left behind.
fn insert_running_simulation(
    conn: &mut agentplane::db::DbConnection, id: &str, twin_id: &str,
) -> agentplane::db::StoreResult<agentplane::db::twins::SimulationRow> {
    let row = agentplane::db::twins::SimulationRow {
        id: id.to_string(),
        org_id: agentplane_org(conn)?,
        twin_id: twin_id.to_string(),
        scenario: "s".into(),
        model: "demand_forecast".into(),
        status: "running".into(),
        parameters: "{}".into(),
        seed: 1,
        runs: 10,
        run_async: 1,
        notification_webhook: None,
        results: None,
        error: None,
        created_at: agentplane::ids::now(),
        started_at: Some(agentplane::ids::now()),
        finished_at: None,
    };
    agentplane::db::twins::insert_simulation(conn, &row)?;
    Ok(row)
}

backend_test!(
    a_restart_fails_unfinished_simulations_without_a_job,
    |app| {
        let t = create_twin(&app, supply_chain()).await;
        let twin_id = t["id"].as_str().expect("id").to_string();
        let store = app.store.clone();
        let sim_id = agentplane::ids::new_id("sim");
        let sid = sim_id.clone();
        let failed = tokio::task::spawn_blocking(move || {
            store.run_blocking(|conn| {
                let row = insert_running_simulation(conn, &sid, &twin_id)?;
                // Another replica's, on the jobs queue: its lease decides, not this start.
                let mut queued = row.clone();
                queued.id = agentplane::ids::new_id("sim");
                agentplane::db::twins::insert_simulation(conn, &queued)?;
                agentplane::jobs::enqueue_for_row(
                    conn,
                    agentplane::simulations::KIND,
                    &queued.org_id,
                    &queued.id,
                )?;
                let failed = agentplane::jobs::fail_orphans(conn)?
                    .into_iter()
                    .find(|(what, _)| *what == "simulations")
                    .map_or(0, |(_, n)| n);
                let kept = agentplane::db::twins::simulation_by_id(conn, &queued.id)?;
                Ok((failed, kept.status))
            })
        })
        .await
        .expect("join")
        .expect("marks");
        assert_eq!(failed, (1, "running".to_string()));
        let (_, s) = json(
            app.get(&format!(
                "/v1/twins/{}/simulations/{sim_id}",
                t["id"].as_str().expect("id")
            ))
            .await,
        )
        .await;
        assert_eq!(
            (s["status"].as_str(), s["error"].as_str()),
            (Some("failed"), Some("interrupted by a server restart"))
        );
    }
);

backend_test!(
    a_simulation_whose_server_died_is_failed_through_its_lease,
    |app| {
        // A replica took the simulation's job and died: the job is running, its one attempt
        // spent, its lease long expired. This server's pool finds it and fails the simulation.
        let t = create_twin(&app, supply_chain()).await;
        let twin_id = t["id"].as_str().expect("id").to_string();
        let store = app.store.clone();
        let sim_id = agentplane::ids::new_id("sim");
        let (sid, tid) = (sim_id.clone(), twin_id.clone());
        tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            agentplane::db::write_transaction(conn, |conn| {
                let row = insert_running_simulation(conn, &sid, &tid)?;
                agentplane::jobs::enqueue_for_row(conn, agentplane::simulations::KIND, &row.org_id, &sid)?;
                use diesel::RunQueryDsl;
                diesel::sql_query(format!(
                    "UPDATE jobs SET status = 'running', attempts = 1, lease_owner = 'worker_dead', \
                     lease_until = '2000-01-01T00:00:00.000000Z' WHERE id = '{sid}'"
                ))
                .execute(conn)
                .map_err(agentplane::db::StoreError::from)
            })
        })
    })
    .await
    .expect("join")
    .expect("a dead replica's simulation");
        let path = format!("/v1/twins/{twin_id}/simulations/{sim_id}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let failed = loop {
            let (_, s) = json(app.get(&path).await).await;
            if s["status"] != "running" {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "still {s}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(failed["status"], "failed", "{failed}");
        assert!(
            failed["error"]
                .as_str()
                .is_some_and(|m| m.contains("interrupted")),
            "{failed}"
        );
    }
);
