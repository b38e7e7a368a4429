//! Health, status, the published spec and the documentation.

use reqwest::Method;
use serde_json::Value;

use crate::backend_test;
use crate::support::json;

backend_test!(health_and_status_report_real_figures, |app| {
    let (status, health) = json(
        app.client
            .get(app.url("/v1/health"))
            .send()
            .await
            .expect("health"),
    )
    .await;
    assert_eq!(status, 200, "public: no key needed");
    assert_eq!(health["status"], "healthy");
    let db = &health["components"]["database"];
    assert_eq!(db["status"], "healthy");
    assert!(db["latency_ms"].as_f64().is_some_and(|l| l >= 0.0));
    assert!(db["backend"] == "sqlite" || db["backend"] == "postgres");
    assert!(db["pool_size"].as_i64() > Some(0), "{db}");
    let workers = &health["components"]["worker_pool"];
    assert_eq!(workers["status"], "healthy", "{workers}");
    assert!(workers["workers"].as_i64() > Some(0), "{workers}");
    assert_eq!(workers["queued"], 0, "{workers}");
    let outbox = &health["components"]["webhook_deliveries"];
    assert_eq!(
        (&outbox["status"], &outbox["pending"]),
        (&serde_json::json!("healthy"), &serde_json::json!(0))
    );

    // A job no worker takes, due two minutes ago: the pool is degraded, and so the server.
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        store.run_blocking(|conn| {
            use diesel::RunQueryDsl;
            let org = crate::twins::agentplane_org(conn)?;
            let job = agentplane::jobs::enqueue(
                conn,
                &agentplane::jobs::NewJob {
                    kind: "nobody-runs-this".into(),
                    org_id: org,
                    agent_id: None,
                    payload: serde_json::json!({}),
                    max_attempts: 1,
                },
            )?;
            let past =
                agentplane::ids::format_time(chrono::Utc::now() - chrono::Duration::minutes(2));
            diesel::sql_query(format!(
                "UPDATE jobs SET run_after = '{past}' WHERE id = '{}'",
                job.id
            ))
            .execute(conn)?;
            Ok(())
        })
    })
    .await
    .expect("join")
    .expect("a stuck job");
    let (status, health) = json(
        app.client
            .get(app.url("/v1/health"))
            .send()
            .await
            .expect("health"),
    )
    .await;
    assert_eq!(
        (status, &health["status"]),
        (200, &serde_json::json!("degraded")),
        "{health}"
    );
    let workers = &health["components"]["worker_pool"];
    assert_eq!(workers["status"], "degraded", "{workers}");
    assert_eq!(workers["queued"], 1);
    assert!(
        workers["oldest_queued_seconds"].as_i64() >= Some(119),
        "{workers}"
    );

    let (status, st) = json(
        app.client
            .get(app.url("/v1/status"))
            .send()
            .await
            .expect("status"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(st["database"]["backend"], db["backend"]);
    assert!(st["uptime_seconds"].as_i64().is_some_and(|u| u >= 0));

    let resp = app
        .client
        .get(app.url("/v1/status"))
        .header("X-Request-Id", "trace-me-42")
        .send()
        .await
        .expect("status");
    assert_eq!(resp.headers()["x-request-id"], "trace-me-42");
    let resp = app
        .client
        .get(app.url("/v1/status"))
        .header("X-Request-Id", "x".repeat(300))
        .send()
        .await
        .expect("status");
    assert!(
        resp.headers()["x-request-id"]
            .to_str()
            .expect("id")
            .starts_with("req_")
    );
});

backend_test!(the_published_spec_is_the_bundle, |app| {
    let published = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .expect("spec")
        .text()
        .await
        .expect("text");
    let on_disk = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/generated/openapi.json"
    ))
    .expect("bundle");
    assert_eq!(published, on_disk);
    let v30: Value = app
        .client
        .get(app.url("/openapi-3.0.json"))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("json");
    assert_eq!(v30["openapi"], "3.0.3");
    let docs = app
        .client
        .get(app.url("/docs/"))
        .send()
        .await
        .expect("docs");
    assert_eq!(docs.status(), 200);
    assert!(docs.text().await.expect("html").contains("swagger"));
    let init = app
        .client
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .expect("init")
        .text()
        .await
        .expect("js");
    assert!(
        init.contains("/openapi.json"),
        "Swagger UI loads the hand-written spec"
    );
    let resp = app
        .req(Method::GET, "/v1/agents")
        .send()
        .await
        .expect("list");
    assert_eq!(resp.status(), 200);
});

// Every operation the spec documents is answered by the server with a documented status.
backend_test!(every_operation_is_routed, |app| {
    for op in agentplane_api::OPERATIONS {
        let path = op
            .path
            .replace("{agent_id}", "agent_missing")
            .replace("{key_id}", "key_missing");
        let method = Method::from_bytes(op.method.as_bytes()).expect("method");
        let mut req = app.req(method, &path);
        if matches!(op.method, "POST" | "PUT" | "PATCH") {
            req = req.json(&serde_json::json!({}));
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        assert!(
            status != 404 || path.contains("missing"),
            "{} {} is not routed",
            op.method,
            op.path
        );
        assert!(status < 500, "{} {} answered {status}", op.method, op.path);
    }
});

/// `agentplane serve` prints the admin key once, serves, and exits cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_prints_the_key_once_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = std::env::temp_dir().join(format!("agentplane-serve-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let db = dir.join("serve.db");
    let start = || {
        Command::new(env!("CARGO_BIN_EXE_agentplane"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database"])
            .arg(&db)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start agentplane serve")
    };
    let read_until_listening = |child: &mut std::process::Child| {
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            let done = line.contains("listening on");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    };
    let stop = |child: &mut std::process::Child| {
        let pid = child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(killed.success());
        for _ in 0..100 {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = child.kill();
        panic!("the server did not stop within 5 s of SIGTERM");
    };

    let mut first = start();
    let lines = read_until_listening(&mut first);
    let key = lines
        .iter()
        .find_map(|l| l.split_whitespace().find(|w| w.starts_with("ap_")))
        .expect("the first start prints an admin key")
        .to_string();
    let addr = lines
        .last()
        .and_then(|l| l.split("http://").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("address")
        .to_string();
    let resp = reqwest::Client::new()
        .get(format!("http://{addr}/v1/users/me"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert!(stop(&mut first).success(), "SIGTERM is a clean exit");

    let mut second = start();
    let lines = read_until_listening(&mut second);
    assert!(
        !lines.iter().any(|l| l.contains("ap_")),
        "the key is printed only once: {lines:?}"
    );
    assert!(stop(&mut second).success());
}

backend_test!(system_metrics_count_what_really_ran, |app| {
    for name in ["One", "Two"] {
        app.create_agent(serde_json::json!({"name": name})).await;
    }
    let (status, m) = json(app.get("/v1/system/metrics").await).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["agents"]["total"], 2, "{m}");
    let by_status: i64 = m["agents"]["by_status"]
        .as_object()
        .expect("counts")
        .values()
        .filter_map(Value::as_i64)
        .sum();
    assert_eq!(by_status, 2);
    assert_eq!(m["executions"]["total"], 0);
    // The requests above were counted; this one is in flight.
    assert!(m["requests"]["total"].as_i64() >= Some(2), "{m}");
    assert!(m["requests"]["in_flight"].as_i64() >= Some(1), "{m}");
    assert!(m["requests"]["by_class"]["2xx"].as_i64() >= Some(2), "{m}");
    let cpu = m["process"]["cpu_percent_average"].as_f64().expect("cpu");
    assert!((0.0..=100.0 * 64.0).contains(&cpu), "{m}");
    assert!(m["process"]["memory_rss_bytes"].as_i64() > Some(0), "{m}");
    assert!(m["process"]["cpu_seconds"].as_f64() > Some(0.0), "{m}");

    // Another organization sees its own agents only.
    let other = app
        .key_for(
            "metrics-other",
            "mo",
            agentplane_api::models::Role::Admin,
            None,
        )
        .await;
    let (_, theirs) = json(
        app.as_key(&other, Method::GET, "/v1/system/metrics")
            .send()
            .await
            .expect("req"),
    )
    .await;
    assert_eq!(theirs["agents"]["total"], 0, "{theirs}");

    // Prometheus text on a loopback bind, without a key.
    let resp = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4"))
    );
    let text = resp.text().await.expect("text");
    assert!(
        text.contains("# TYPE agentplane_http_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains("agentplane_http_requests_total{class=\"2xx\"}"),
        "{text}"
    );
    assert!(text.contains("agentplane_jobs_queued 0"), "{text}");
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_key_off_loopback() {
    let app = crate::support::TestApp::start_with(crate::support::Backend::Sqlite, |c| {
        c.listen = "0.0.0.0:0".into();
    })
    .await
    .expect("sqlite");
    let port = app.base.rsplit(':').next().expect("port").to_string();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let resp = app.client.get(&url).send().await.expect("req");
    assert_eq!(resp.status(), 401);
    let resp = app
        .client
        .get(&url)
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    let resp = app
        .client
        .get(&url)
        .bearer_auth("ap_not_a_key")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 401);
}
