//! Connection hygiene (slow and idle clients cut off, connections bounded per server and per
//! address), on raw sockets against a real server with short limits.

use std::time::{Duration, Instant};

use agentplane::server::ConnectionLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::support::{Backend, TestApp};

const LIMITS: ConnectionLimits = ConnectionLimits {
    header_timeout: Duration::from_secs(2),
    idle_timeout: Duration::from_secs(3),
    body_timeout: Duration::from_secs(2),
    max_connections: 10_000,
    max_per_address: 256,
};

async fn start(backend: Backend, limits: ConnectionLimits) -> Option<TestApp> {
    let app = TestApp::start_with(backend, move |c| c.connections = limits).await;
    if app.is_none() {
        eprintln!("skipped: set AGENTPLANE_TEST_POSTGRES to run on PostgreSQL");
    }
    app
}

async fn connect(app: &TestApp) -> TcpStream {
    let addr = app.base.trim_start_matches("http://");
    TcpStream::connect(addr).await.expect("connects")
}

/// Reads until the server closes the connection (at most `limit`): what was read, and when
/// it closed (`None` when it was still open at `limit`).
async fn read_until_closed(
    read: &mut OwnedReadHalf, limit: Duration,
) -> (Vec<u8>, Option<Instant>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, read.read(&mut buf)).await {
            Err(_) => return (got, None),
            Ok(Ok(0) | Err(_)) => return (got, Some(Instant::now())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends `GET /v1/health` on `stream` and reads its whole answer (it is small, and not
/// chunked): the status line.
async fn health(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("writes");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("answers within 10 s")
            .expect("reads");
        assert!(
            n > 0,
            "closed before answering: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                })
                .expect("a content-length");
            if got.len() >= head_end + 4 + length {
                return text.lines().next().unwrap_or_default().to_string();
            }
        }
    }
}

/// A client that drips one header line a second, never ending its head, is closed within
/// the header timeout (2 s here), without an answer.
async fn header_drip(backend: Backend) {
    let Some(app) = start(backend, LIMITS).await else {
        return;
    };
    let (mut read, mut write) = connect(&app).await.into_split();
    let started = Instant::now();
    let drip = tokio::spawn(async move {
        let _ = write.write_all(b"GET /v1/health HTTP/1.1\r\n").await;
        for i in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if write
                .write_all(format!("X-Drip-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return i;
            }
        }
        30
    });
    let (got, closed) = read_until_closed(&mut read, Duration::from_secs(10)).await;
    let closed = closed
        .expect("the dripping connection is closed")
        .duration_since(started);
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_millis(3500),
        "closed after {closed:?}, the header timeout is 2 s"
    );
    let answer = String::from_utf8_lossy(&got);
    assert!(!answer.contains(" 200 "), "{answer}");
    drip.abort();

    // The server still answers everyone else.
    let mut other = connect(&app).await;
    assert!(health(&mut other).await.contains(" 200 "));
}
crate::both!(a_header_drip_is_cut_off_at_the_header_timeout, header_drip);

/// A keep-alive connection is kept past the header timeout while idle, and closed at the
/// idle timeout (3 s here) after its last answer.
async fn idle_keep_alive(backend: Backend) {
    let Some(app) = start(backend, LIMITS).await else {
        return;
    };
    let mut stream = connect(&app).await;
    assert!(health(&mut stream).await.contains(" 200 "));
    let answered = Instant::now();
    // Still open after the header timeout (2 s): a second request on it is answered.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(health(&mut stream).await.contains(" 200 "));
    let answered_again = Instant::now();
    let (mut read, _write) = stream.into_split();
    let (_, closed) = read_until_closed(&mut read, Duration::from_secs(10)).await;
    let idle = closed
        .expect("the idle connection is closed")
        .duration_since(answered_again);
    assert!(
        idle >= Duration::from_millis(2500) && idle < Duration::from_millis(4500),
        "closed {idle:?} after its last answer, the idle timeout is 3 s (first answer {:?} \
         before)",
        answered_again.duration_since(answered)
    );
}
crate::both!(
    an_idle_keep_alive_connection_is_closed_at_the_idle_timeout,
    idle_keep_alive
);

/// A request whose body never arrives in full is cut off at the body timeout (2 s here).
async fn slow_body(backend: Backend) {
    let Some(app) = start(backend, LIMITS).await else {
        return;
    };
    let (mut read, mut write) = connect(&app).await.into_split();
    let head = format!(
        "POST /v1/agents HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"name\": ",
        app.admin_key
    );
    write.write_all(head.as_bytes()).await.expect("writes");
    let started = Instant::now();
    let drip = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            if write.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let (_, closed) = read_until_closed(&mut read, Duration::from_secs(10)).await;
    let closed = closed
        .expect("the slow body's connection is closed")
        .duration_since(started);
    assert!(
        closed >= Duration::from_millis(1500) && closed < Duration::from_millis(3500),
        "closed after {closed:?}, the body timeout is 2 s"
    );
    drip.abort();
}
crate::both!(a_slow_body_is_cut_off_at_the_body_timeout, slow_body);

/// Past the per-address bound a new connection is closed at once; those within it work, and
/// a closed one frees its slot.
async fn per_address_bound(backend: Backend) {
    let Some(app) = start(
        backend,
        ConnectionLimits {
            max_per_address: 3,
            ..LIMITS
        },
    )
    .await
    else {
        return;
    };
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&app).await;
        // Answered: the server has accepted and counted it.
        assert!(health(&mut stream).await.contains(" 200 "));
        held.push(stream);
    }
    let (mut read, mut write) = connect(&app).await.into_split();
    let _ = write
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await;
    let (got, closed) = read_until_closed(&mut read, Duration::from_secs(2)).await;
    assert!(closed.is_some(), "the fourth connection is closed");
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));

    // The three others still work.
    for stream in &mut held {
        assert!(health(stream).await.contains(" 200 "));
    }
    // One closes: a new connection gets its slot.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = connect(&app).await;
    assert!(health(&mut again).await.contains(" 200 "));
}
crate::both!(
    connections_past_the_per_address_bound_are_closed,
    per_address_bound
);

/// Past the server's bound a new connection waits (in the listen queue) until another
/// closes, then is served.
async fn server_bound(backend: Backend) {
    let Some(app) = start(
        backend,
        ConnectionLimits {
            max_connections: 2,
            ..LIMITS
        },
    )
    .await
    else {
        return;
    };
    let mut first = connect(&app).await;
    assert!(health(&mut first).await.contains(" 200 "));
    let mut second = connect(&app).await;
    assert!(health(&mut second).await.contains(" 200 "));
    let mut third = connect(&app).await;
    third
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("writes");
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buf)).await;
    assert!(early.is_err(), "not served while two connections are open");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf))
        .await
        .expect("served once a connection closed")
        .expect("reads");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(health(&mut second).await.contains(" 200 "));
}
crate::both!(
    connections_past_the_server_bound_wait_for_a_slot,
    server_bound
);

/// A NUL character in an execution's parameters (rendered into its prompt, its steps and
/// its output) runs as any other character on both backends, and reads back as sent.
async fn nul_in_parameters(backend: Backend) {
    use reqwest::Method;
    use serde_json::json;

    use crate::support::json;

    let Some(app) = start(backend, ConnectionLimits::default()).await else {
        return;
    };
    let (status, tpl) = json(
        app.send_json(
            Method::POST,
            "/v1/prompt-templates",
            &json!({"name": "nul", "template": "You support {{product}}."}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{tpl}");
    let agent = app
        .create_agent(json!({"name": "Nul", "prompt_template_id": tpl["id"]}))
        .await;
    let path = format!("/v1/agents/{}/execute", agent["id"].as_str().expect("id"));
    let body = json!({"input": "Tell me about it", "parameters": {"product": "Ac\u{0}me"}});
    let (status, accepted) = json(app.send_json(Method::POST, &path, &body).await).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().expect("id").to_string();
    let mut done = serde_json::Value::Null;
    for _ in 0..400 {
        let (status, e) = json(app.get(&format!("/v1/executions/{id}")).await).await;
        assert_eq!(status, 200, "{e}");
        if !matches!(e["status"].as_str(), Some("queued" | "running")) {
            done = e;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["parameters"]["product"], "Ac\u{0}me", "{done}");
    let output = done["result"]["output"].as_str().expect("an output");
    // The local model quotes its instructions: the NUL is in the stored answer too.
    assert!(output.contains("You support Ac\u{0}me."), "{output:?}");
    let (status, logs) = json(app.get(&format!("/v1/executions/{id}/logs")).await).await;
    assert_eq!(status, 200, "{logs}");
}
crate::both!(a_nul_in_parameters_runs_on_both_backends, nul_in_parameters);

/// `/v1/system/metrics` counts the caller's organization's requests only; the replica's
/// counters stay on `/metrics`.
async fn tenant_metrics(backend: Backend) {
    use reqwest::Method;

    use crate::support::json;

    let Some(app) = start(backend, ConnectionLimits::default()).await else {
        return;
    };
    let other = app
        .key_for(
            "metrics-tenant",
            "mt",
            agentplane_api::models::Role::Admin,
            None,
        )
        .await;
    // The first organization: 20 answered requests, 5 of them 404s.
    for i in 0..20 {
        let path = if i < 5 {
            "/v1/agents/agent_nope"
        } else {
            "/v1/agents"
        };
        let resp = app.req(Method::GET, path).send().await.expect("sends");
        assert!(resp.status().is_success() || resp.status() == 404);
    }
    // The other: two requests, then its metrics.
    for _ in 0..2 {
        let resp = app
            .as_key(&other, Method::GET, "/v1/agents")
            .send()
            .await
            .expect("sends");
        assert_eq!(resp.status(), 200);
    }
    let (status, theirs) = json(
        app.as_key(&other, Method::GET, "/v1/system/metrics")
            .send()
            .await
            .expect("sends"),
    )
    .await;
    assert_eq!(status, 200, "{theirs}");
    let requests = &theirs["requests"];
    assert_eq!(requests["total"], 2, "its own two requests only: {theirs}");
    assert_eq!(requests["in_flight"], 1, "this one: {theirs}");
    assert_eq!(requests["by_class"]["2xx"], 2, "{theirs}");
    assert!(
        requests["by_class"]["4xx"].as_i64().unwrap_or(0) == 0,
        "another organization's 404s are not shown: {theirs}"
    );

    let (status, ours) = json(app.get("/v1/system/metrics").await).await;
    assert_eq!(status, 200, "{ours}");
    let total = ours["requests"]["total"].as_i64().expect("total");
    assert!((20..=23).contains(&total), "{ours}");
    assert_eq!(ours["requests"]["by_class"]["4xx"], 5, "{ours}");

    // The replica's figures (both organizations, and the requests without a key) stay on
    // `/metrics`.
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let served: f64 = text
        .lines()
        .filter(|l| l.starts_with("agentplane_http_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    // Both organizations' answered requests: 20 + 2 + 2 metrics reads.
    assert!(served >= 24.0, "{text}");
}
crate::both!(
    system_metrics_show_the_callers_organization_only,
    tenant_metrics
);
