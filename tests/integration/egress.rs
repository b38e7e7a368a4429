//! The egress policy on every outbound path: a server with the default policy reaches no
//! loopback address, in any spelling or through a redirect, and the listener never sees a
//! connection; secret headers stay with the origin they were configured for.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Backend, TestApp, json};

/// A loopback listener that answers every request with `answer`, counting connections and
/// keeping each request's head (lower-cased).
struct Listener {
    port: u16,
    connections: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Listener {
    async fn start(answer: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let mut head = vec![0u8; 16 * 1024];
                let n = socket.read(&mut head).await.unwrap_or(0);
                if let Ok(mut seen) = seen.lock() {
                    seen.push(String::from_utf8_lossy(&head[..n]).to_lowercase());
                }
                let _ = socket.write_all(answer.as_bytes()).await;
            }
        });
        Self {
            port,
            connections,
            heads,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

const OK: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

fn redirect_to(location: &str) -> String {
    format!(
        "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
}

/// Creates an `api` tool at `url` and runs its test; `None` when the create was refused.
async fn tool_test(app: &TestApp, url: &str, secret: Option<&str>) -> Option<Value> {
    let mut tool = json!({"type": "api", "name": "Probe", "url": url, "timeout_ms": 3000});
    if let Some(s) = secret {
        tool["secret_headers"] = json!({"X-Api-Key": s});
    }
    let (status, created) = json(app.send_json(Method::POST, "/v1/tools", &tool).await).await;
    if status == 422 {
        assert_names(&created, "url");
        return None;
    }
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().expect("id");
    let (status, result) = json(
        app.send_json(Method::POST, &format!("/v1/tools/{id}/test"), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{result}");
    Some(result)
}

/// A 422 whose details name `field` with the egress code.
fn assert_names(body: &Value, field: &str) {
    let named = body["error"]["details"].as_array().is_some_and(|d| {
        d.iter()
            .any(|d| d["field"] == field && d["code"] == "egress")
    });
    assert!(named, "{body}");
}

fn assert_refused(result: &Value) {
    assert_eq!(result["ok"], false, "{result}");
    let error = result["error"].as_str().unwrap_or_default();
    assert!(error.contains("egress policy"), "{result}");
}

/// A server whose egress policy is the default one (nothing internal reachable).
async fn closed(backend: Backend) -> Option<TestApp> {
    TestApp::start_with(backend, |c| {
        c.egress = agentplane::egress::Policy::default();
    })
    .await
}

async fn nothing_internal_is_reached(app: TestApp) {
    let target = Listener::start(OK.into()).await;
    let port = target.port;
    for host in [
        "127.0.0.1".to_string(),
        "127.1".into(),
        "2130706433".into(),
        "0x7f000001".into(),
        "[::ffff:127.0.0.1]".into(),
        "localhost".into(),
    ] {
        if let Some(result) = tool_test(&app, &format!("http://{host}:{port}/x"), None).await {
            assert_refused(&result);
        }
    }

    // A webhook's delivery to loopback fails, with the reason on the delivery.
    let (status, hook) = json(
        app.send_json(
            Method::POST,
            "/v1/webhooks",
            &json!({"url": format!("http://127.0.0.1:{port}/hook"), "events": ["agent.created"]}),
        )
        .await,
    )
    .await;
    if status == 201 {
        let hook_id = hook["id"].as_str().expect("id");
        let (status, delivery) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/webhooks/{hook_id}/test"),
                &json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202, "{delivery}");
        let path = format!(
            "/v1/webhooks/{hook_id}/deliveries/{}",
            delivery["id"].as_str().expect("id")
        );
        let mut last = Value::Null;
        for _ in 0..100 {
            let (_, d) = json(app.get(&path).await).await;
            if d["error"].is_string() || d["status"] == "succeeded" {
                last = d;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let error = last["error"].as_str().unwrap_or_default();
        assert!(error.contains("egress policy"), "{last}");
    } else {
        assert_eq!(status, 422, "{hook}");
        assert_names(&hook, "url");
    }

    // A url source's sync fails, with the reason on the sync.
    let (_, kb) = json(
        app.send_json(Method::POST, "/v1/knowledge", &json!({"name": "Internal"}))
            .await,
    )
    .await;
    let kb_id = kb["id"].as_str().expect("kb id");
    let (status, source) = json(
        app.send_json(
            Method::POST,
            &format!("/v1/knowledge/{kb_id}/sources"),
            &json!({"type": "url", "url": format!("http://127.0.0.1:{port}/doc")}),
        )
        .await,
    )
    .await;
    if status == 201 {
        let source_id = source["id"].as_str().expect("id");
        let (status, sync) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/knowledge/{kb_id}/sources/{source_id}/sync"),
                &json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202, "{sync}");
        let path = format!(
            "/v1/knowledge/{kb_id}/syncs/{}",
            sync["id"].as_str().expect("id")
        );
        let mut last = Value::Null;
        for _ in 0..100 {
            let (_, s) = json(app.get(&path).await).await;
            if matches!(s["status"].as_str(), Some("failed" | "succeeded")) {
                last = s;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last["status"], "failed", "{last}");
        let error = last["error"].as_str().unwrap_or_default();
        assert!(error.contains("egress policy"), "{last}");
    } else {
        assert_eq!(status, 422, "{source}");
        assert_names(&source, "url");
    }
    let (status, model) = json(
        app.send_json(
            Method::POST,
            "/v1/models",
            &json!({"name": "Internal", "provider": "openai-compatible", "model_id": "m",
                    "endpoint": format!("http://[::1]:{port}/v1")}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 422, "{model}");
    assert_names(&model, "endpoint");
    assert_eq!(
        target.connections(),
        0,
        "a refused listener was connected to"
    );
}

async fn redirects_are_checked_and_lose_secrets(backend: Backend) {
    // Only the first hop is open: its redirect to another loopback port is refused.
    let target = Listener::start(OK.into()).await;
    let start = Listener::start(redirect_to(&format!("http://127.0.0.1:{}/", target.port))).await;
    let allow = format!("127.0.0.1:{}", start.port);
    let Some(app) = TestApp::start_with(backend, move |c| {
        c.egress = agentplane::egress::Policy {
            allow: vec![allow.parse().expect("an allow entry")],
            ..agentplane::egress::Policy::default()
        };
    })
    .await
    else {
        return;
    };
    let result = tool_test(&app, &format!("http://127.0.0.1:{}/", start.port), None)
        .await
        .expect("an allowed URL is accepted");
    assert_refused(&result);
    assert_eq!(start.connections(), 1);
    assert_eq!(
        target.connections(),
        0,
        "the redirect target was connected to"
    );

    // Both open (the tests' usual policy): the secret header stays with the first origin.
    let Some(open) = TestApp::start(backend).await else {
        return;
    };
    let result = tool_test(
        &open,
        &format!("http://127.0.0.1:{}/", start.port),
        Some("sk-never-follows"),
    )
    .await
    .expect("accepted");
    assert_eq!(result["ok"], true, "{result}");
    let first = start.heads().pop().unwrap_or_default();
    assert!(first.contains("x-api-key: sk-never-follows"), "{first}");
    let second = target.heads().pop().unwrap_or_default();
    assert!(second.starts_with("get / "), "{second}");
    assert!(!second.contains("sk-never-follows"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reaches_nothing_internal() {
    nothing_internal_is_reached(closed(Backend::Sqlite).await.expect("sqlite")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reaches_nothing_internal() {
    match closed(Backend::Postgres).await {
        Some(app) => nothing_internal_is_reached(app).await,
        None => eprintln!("skipped: set AGENTPLANE_TEST_POSTGRES to run on PostgreSQL"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_redirects_are_checked() {
    redirects_are_checked_and_lose_secrets(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_redirects_are_checked() {
    redirects_are_checked_and_lose_secrets(Backend::Postgres).await;
}
