//! Webhooks end to end: a loopback receiver the test starts gets signed deliveries from the
//! outbox, retried while it fails, and still all of them across a server restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agentplane::server::Config;
use agentplane::webhooks::{DeliveryPolicy, verify_signature};
use agentplane_api::models::{Role, Scope};
use poem::listener::{Acceptor, Listener};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{Backend, TestApp, fields, json};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: poem::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// Whether the signature verifies under `secret`.
    fn verifies(&self, secret: &str) -> bool {
        verify_signature(
            secret.as_bytes(),
            &self.header("x-agentplane-timestamp"),
            &self.body,
            &self.header("x-agentplane-signature"),
        )
    }
}

/// A webhook receiver on loopback that answers 503 to its first `fail_first` requests.
pub struct Receiver {
    pub url: String,
    pub got: Arc<std::sync::Mutex<Vec<Received>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Receiver {
    pub async fn start(port: u16, fail_first: usize) -> Receiver {
        let got: Arc<std::sync::Mutex<Vec<Received>>> = Arc::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let store = got.clone();
        let endpoint = poem::endpoint::make(move |req: poem::Request| {
            let (store, seen) = (store.clone(), seen.clone());
            async move {
                let headers = req.headers().clone();
                let body = req.into_body().into_vec().await.unwrap_or_default();
                if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                    return poem::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                store.lock().expect("lock").push(Received { headers, body });
                poem::http::StatusCode::NO_CONTENT
            }
        });
        let acceptor = poem::listener::TcpListener::bind(format!("127.0.0.1:{port}"))
            .into_acceptor()
            .await
            .expect("receiver binds");
        let addr = *acceptor.local_addr()[0]
            .as_socket_addr()
            .expect("an address");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = poem::Server::new_with_acceptor(acceptor)
                .run_with_graceful_shutdown(
                    endpoint,
                    async move {
                        let _ = rx.await;
                    },
                    Some(Duration::from_secs(1)),
                )
                .await;
        });
        Receiver {
            url: format!("http://{addr}/hooks"),
            got,
            stop: Some(tx),
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until `n` requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..300 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the receiver got {} requests, expected {n}",
            self.received().len()
        );
    }
}

/// Retries within a second or so, so tests do not wait minutes.
pub fn fast(config: &mut Config) {
    config.webhooks = DeliveryPolicy {
        base_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
        timeout: Duration::from_secs(2),
        lease: Duration::from_secs(4),
        poll: Duration::from_millis(100),
        concurrency: 8,
    };
}

/// Declares one test per backend over servers with [`fast`] delivery retries.
macro_rules! hooks_test {
    ($name:ident, |$app:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($app: TestApp) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run(TestApp::start_with(Backend::Sqlite, fast).await.expect("sqlite")).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                match TestApp::start_with(Backend::Postgres, fast).await {
                    Some(app) => run(app).await,
                    None => eprintln!("skipped: set AGENTPLANE_TEST_POSTGRES to run on PostgreSQL"),
                }
            }
        }
    };
}

async fn create_hook(app: &TestApp, body: Value) -> Value {
    let (status, hook) = json(app.send_json(Method::POST, "/v1/webhooks", &body).await).await;
    assert_eq!(status, 201, "{hook}");
    hook
}

async fn deliveries(app: &TestApp, hook_id: &str) -> Vec<Value> {
    let (status, list) = json(
        app.get(&format!("/v1/webhooks/{hook_id}/deliveries?per_page=100"))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    list["data"].as_array().cloned().unwrap_or_default()
}

/// Waits until every delivery of the webhook has `status`.
async fn wait_all(app: &TestApp, hook_id: &str, n: usize, status: &str) -> Vec<Value> {
    for _ in 0..300 {
        let list = deliveries(app, hook_id).await;
        if list.len() >= n && list.iter().all(|d| d["status"] == status) {
            return list;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "deliveries did not all become {status}: {:?}",
        deliveries(app, hook_id).await
    );
}

hooks_test!(
    signed_deliveries_arrive_verify_and_stay_in_their_organization,
    |app| {
        let receiver = Receiver::start(0, 0).await;
        let hook = create_hook(
            &app,
            json!({"url": receiver.url, "events": ["agent.*"], "description": "agents"}),
        )
        .await;
        let hook_id = hook["id"].as_str().expect("id").to_string();
        let secret = hook["secret"]
            .as_str()
            .expect("a generated secret")
            .to_string();
        assert!(secret.starts_with("whsec_"), "{secret}");
        let (status, fetched) = json(app.get(&format!("/v1/webhooks/{hook_id}")).await).await;
        assert_eq!(status, 200);
        assert!(
            fetched.get("secret").is_none(),
            "the secret is write-only: {fetched}"
        );
        assert_eq!(fetched["events"], json!(["agent.*"]));

        let agent = app.create_agent(json!({"name": "Hooked"})).await;
        let agent_id = agent["id"].as_str().expect("id").to_string();
        let path = format!("/v1/agents/{agent_id}");
        let (status, _) = json(
            app.send_json(Method::PATCH, &path, &json!({"description": "changed"}))
                .await,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            app.req(Method::DELETE, &path)
                .send()
                .await
                .expect("req")
                .status(),
            204
        );

        let got = receiver.wait_for(3).await;
        let mut types: Vec<String> = got.iter().map(|r| r.header("x-agentplane-event")).collect();
        types.sort();
        assert_eq!(types, ["agent.created", "agent.deleted", "agent.updated"]);
        for r in &got {
            assert!(r.verifies(&secret), "signature of {:?}", r.json());
            assert!(
                !r.verifies("whsec_not-the-secret"),
                "a wrong secret must not verify"
            );
            assert_eq!(r.header("content-type"), "application/json");
            let body = r.json();
            assert_eq!(body["type"], r.header("x-agentplane-event"));
            assert_eq!(body["event"], body["type"]);
            assert_eq!(body["subject_id"], agent_id.as_str());
            assert!(r.header("x-agentplane-delivery").starts_with("dlv_"));
        }
        let created = got
            .iter()
            .find(|r| r.header("x-agentplane-event") == "agent.created")
            .expect("created");
        assert_eq!(created.json()["data"]["name"], "Hooked");
        // The body is what was signed: tampering breaks the signature.
        let mut tampered = created.clone();
        tampered.body = created
            .body
            .iter()
            .map(|b| if *b == b'H' { b'h' } else { *b })
            .collect();
        assert!(!tampered.verifies(&secret));

        let list = wait_all(&app, &hook_id, 3, "succeeded").await;
        assert!(
            list.iter()
                .all(|d| d["attempts"] == 1 && d["response_status"] == 204)
        );

        // The event log holds them too, filterable by type.
        let (status, events) = json(app.get("/v1/events?type=agent.deleted").await).await;
        assert_eq!(status, 200, "{events}");
        assert_eq!(events["data"].as_array().map(Vec::len), Some(1));
        assert_eq!(
            events["data"][0]["data"],
            json!({"id": agent_id, "name": "Hooked"})
        );
        let event_id = events["data"][0]["id"].as_str().expect("id").to_string();
        let (status, _) = json(app.get(&format!("/v1/events/{event_id}")).await).await;
        assert_eq!(status, 200);

        // A ping reaches this webhook only; a redelivery sends the same event again.
        let (status, ping) = json(
            app.send_json(
                Method::POST,
                &format!("/v1/webhooks/{hook_id}/test"),
                &json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202, "{ping}");
        assert_eq!(ping["event_type"], "webhook.ping");
        let first = &list[0];
        let (status, again) = json(
            app.send_json(
                Method::POST,
                &format!(
                    "/v1/webhooks/{hook_id}/deliveries/{}/redeliver",
                    first["id"].as_str().expect("id")
                ),
                &json!({}),
            )
            .await,
        )
        .await;
        assert_eq!(status, 202, "{again}");
        assert_eq!(again["event_id"], first["event_id"]);
        assert_ne!(again["id"], first["id"]);
        let got = receiver.wait_for(5).await;
        assert!(
            got.iter()
                .any(|r| r.header("x-agentplane-event") == "webhook.ping")
        );
        assert_eq!(
            got.iter()
                .filter(|r| r.json()["id"] == first["event_id"])
                .count(),
            2
        );

        // Another organization sees none of it.
        let other = app.key_for("other-org", "eve", Role::Admin, None).await;
        for path in [
            format!("/v1/webhooks/{hook_id}"),
            format!("/v1/webhooks/{hook_id}/deliveries"),
            format!("/v1/events/{event_id}"),
        ] {
            let resp = app
                .as_key(&other, Method::GET, &path)
                .send()
                .await
                .expect("req");
            assert_eq!(resp.status(), 404, "{path}");
        }
        let resp = app
            .as_key(
                &other,
                Method::POST,
                &format!("/v1/webhooks/{hook_id}/test"),
            )
            .json(&json!({}))
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 404);
        let (_, theirs) = json(
            app.as_key(&other, Method::GET, "/v1/events")
                .send()
                .await
                .expect("req"),
        )
        .await;
        assert_eq!(theirs["pagination"]["total"], 0, "{theirs}");
        // Their agents reach none of our webhooks.
        let resp = app
            .as_key(&other, Method::POST, "/v1/agents")
            .json(&json!({"name": "Theirs"}))
            .send()
            .await
            .expect("req");
        assert_eq!(resp.status(), 201);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(receiver.received().len(), 5);
    }
);

hooks_test!(webhook_crud_bad_input_and_scopes, |app| {
    let (status, err) = json(
        app.send_json(
            Method::POST,
            "/v1/webhooks",
            &json!({"url": "http://127.0.0.1:9/x", "events": ["agent.exploded"]}),
        )
        .await,
    )
    .await;
    assert!(status == 400 || status == 422, "{status} {err}");
    assert!(
        fields(&err).iter().any(|f| f.starts_with("events")),
        "{err}"
    );
    let (status, err) = json(
        app.send_json(
            Method::POST,
            "/v1/webhooks",
            &json!({"url": "ftp://example.com/x", "events": ["agent.*"]}),
        )
        .await,
    )
    .await;
    assert!(status == 400 || status == 422, "{status} {err}");
    assert!(fields(&err).iter().any(|f| f == "url"), "{err}");
    let (status, err) = json(
        app.send_json(
            Method::POST,
            "/v1/webhooks",
            &json!({"url": "https://example.com/x", "events": ["*"], "secret": "short"}),
        )
        .await,
    )
    .await;
    assert!(status == 400 || status == 422, "{status} {err}");
    assert!(fields(&err).iter().any(|f| f == "secret"), "{err}");

    // A given secret is echoed once, then never; an Idempotency-Key replays the answer.
    let body = json!({"url": "https://example.com/hook", "events": ["execution.completed", "agent.*"], "secret": "your-webhook-secret"});
    let send = || {
        app.req(Method::POST, "/v1/webhooks")
            .header("idempotency-key", "hook-1")
            .json(&body)
            .send()
    };
    let resp = send().await.expect("req");
    let location = resp.headers()["location"]
        .to_str()
        .expect("loc")
        .to_string();
    let (status, hook) = json(resp).await;
    assert_eq!(status, 201);
    assert!(
        hook.get("secret").is_none(),
        "a chosen secret is never echoed: {hook}"
    );
    let (status, replay) = json(send().await.expect("req")).await;
    assert_eq!((status, &replay["id"]), (201, &hook["id"]));
    assert!(replay.get("secret").is_none(), "nor on a replay: {replay}");
    let (_, list) = json(app.get("/v1/webhooks").await).await;
    assert_eq!(list["pagination"]["total"], 1);
    assert!(list["data"][0].get("secret").is_none());

    let resp = app
        .req(Method::PATCH, &location)
        .header("if-match", "\"7\"")
        .json(&json!({"active": false}))
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 412);
    let (status, patched) = json(
        app.send_json(
            Method::PATCH,
            &location,
            &json!({"active": false, "description": null}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        (patched["active"].clone(), patched["version"].clone()),
        (json!(false), json!(2))
    );

    // An inactive webhook is owed nothing.
    app.create_agent(json!({"name": "Quiet"})).await;
    let id = hook["id"].as_str().expect("id");
    assert!(deliveries(&app, id).await.is_empty());

    // Scopes: a viewer reads but cannot write; a key without read:webhooks cannot list.
    let viewer = app.key_for("viewer-org", "vera", Role::Viewer, None).await;
    let resp = app
        .as_key(&viewer, Method::GET, "/v1/webhooks")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 200);
    let resp = app
        .as_key(&viewer, Method::POST, "/v1/webhooks")
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 403);
    let narrow = app
        .key_for("scoped-org", "sam", Role::Admin, Some(&[Scope::ReadAgents]))
        .await;
    let resp = app
        .as_key(&narrow, Method::GET, "/v1/webhooks")
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 403);
    let resp = app
        .as_key(&narrow, Method::POST, "/v1/webhooks")
        .json(&body)
        .send()
        .await
        .expect("req");
    assert_eq!(resp.status(), 403);

    assert_eq!(
        app.req(Method::DELETE, &location)
            .send()
            .await
            .expect("req")
            .status(),
        204
    );
    assert_eq!(app.get(&location).await.status(), 404);
});

hooks_test!(
    a_failing_receiver_gets_retries_with_backoff_then_success,
    |app| {
        let receiver = Receiver::start(0, 2).await;
        let hook = create_hook(
            &app,
            json!({"url": receiver.url, "events": ["agent.created"]}),
        )
        .await;
        let hook_id = hook["id"].as_str().expect("id").to_string();
        app.create_agent(json!({"name": "Retried"})).await;
        let list = wait_all(&app, &hook_id, 1, "succeeded").await;
        assert_eq!(list[0]["attempts"], 3, "{:?}", list[0]);
        assert_eq!(list[0]["response_status"], 204);
        assert!(list[0]["error"].is_null());
        let got = receiver.received();
        assert_eq!(
            got.len(),
            1,
            "the two 503 answers are not recorded as received"
        );
        assert!(got[0].verifies(hook["secret"].as_str().expect("secret")));

        // Every attempt is kept: two 503s, then the 204.
        let delivery = list[0]["id"].as_str().expect("delivery id");
        let path = format!("/v1/webhooks/{hook_id}/deliveries/{delivery}/attempts");
        let (status, attempts) = crate::support::json(app.get(&path).await).await;
        assert_eq!(status, 200, "{attempts}");
        let attempts = attempts["data"].as_array().expect("data").clone();
        let seen: Vec<(i64, i64)> = attempts
            .iter()
            .map(|a| {
                let n = a["attempt"].as_i64().unwrap_or(0);
                (n, a["response_status"].as_i64().unwrap_or(0))
            })
            .collect();
        assert_eq!(seen, vec![(1, 503), (2, 503), (3, 204)], "{attempts:?}");
        assert_eq!(attempts[0]["error"], "the receiver answered 503");
        assert!(attempts[2]["error"].is_null());
        assert!(
            attempts
                .iter()
                .all(|a| a["duration_ms"].as_i64() >= Some(0))
        );
        assert!(attempts[0]["started_at"].as_str() < attempts[2]["started_at"].as_str());
        let other = crate::support::other_admin(&app).await;
        let theirs = app
            .as_key(&other, Method::GET, &path)
            .send()
            .await
            .expect("sends");
        assert_eq!(theirs.status(), 404, "another organization's delivery");
        let unknown = format!("/v1/webhooks/{hook_id}/deliveries/dlv_nope/attempts");
        assert_eq!(app.get(&unknown).await.status(), 404);
    }
);

hooks_test!(every_event_is_delivered_across_a_restart, |app| {
    // The receiver is down: reserve a port and leave it closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/hooks");
    let hook = create_hook(&app, json!({"url": url, "events": ["*"]})).await;
    let hook_id = hook["id"].as_str().expect("id").to_string();
    let secret = hook["secret"].as_str().expect("secret").to_string();
    let mut agent_ids = Vec::new();
    for i in 0..4 {
        let a = app
            .create_agent(json!({"name": format!("agent {i}")}))
            .await;
        agent_ids.push(a["id"].as_str().expect("id").to_string());
    }
    // Wait until the first attempts failed (connection refused).
    for _ in 0..200 {
        let list = deliveries(&app, &hook_id).await;
        if list.len() == 4 && list.iter().all(|d| d["attempts"].as_i64() >= Some(1)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = deliveries(&app, &hook_id).await;
    assert!(list.iter().all(|d| d["status"] != "succeeded"), "{list:?}");
    assert!(
        list.iter().any(|d| d["error"].as_str().is_some()),
        "{list:?}"
    );
    let mut app = app;
    app.stop().await;

    // A replica that died mid-attempt left a lease behind.
    let crashed = list[0]["id"].as_str().expect("id").to_string();
    let store = app.store.clone();
    tokio::task::spawn_blocking(move || {
        use agentplane::db::schema::webhook_deliveries as d;
        use diesel::prelude::*;
        store.run_blocking(|conn| {
            diesel::update(d::table.filter(d::id.eq(&crashed)))
                .set((
                    d::status.eq("delivering"),
                    d::lease_owner.eq("worker_dead"),
                    d::lease_expires_at.eq("2000-01-01T00:00:00.000000Z"),
                ))
                .execute(conn)
                .map_err(agentplane::db::StoreError::from)
        })
    })
    .await
    .expect("join")
    .expect("update");

    let receiver = Receiver::start(port, 0).await;
    let restarted = app.reopen_with(fast).await;
    let list = wait_all(&restarted, &hook_id, 4, "succeeded").await;
    assert_eq!(list.len(), 4);
    let got = receiver.received();
    for id in &agent_ids {
        assert!(
            got.iter()
                .any(|r| r.json()["subject_id"] == id.as_str() && r.verifies(&secret)),
            "agent.created of {id} was delivered, signed"
        );
    }
});

hooks_test!(a_finished_simulation_notifies_its_webhook_signed, |app| {
    let receiver = Receiver::start(0, 0).await;
    let twin = crate::twins::create_twin(&app, crate::twins::supply_chain()).await;
    let twin = twin["id"].as_str().expect("twin id");
    let body = |options: Value| {
        json!({
            "scenario": "demand_spike",
            "model": "capacity_planning",
            "parameters": {"increase_percentage": 30, "duration_days": 7},
            "options": options,
        })
    };
    let path = format!("/v1/twins/{twin}/simulate");

    // Without a secret: one is generated and shown once, in this answer only.
    let (status, sim) = json(
        app.send_json(
            Method::POST,
            &path,
            &body(json!({"seed": 7, "runs": 100, "run_async": true,
                "notification_webhook": receiver.url})),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "{sim}");
    let secret = sim["notification_secret"]
        .as_str()
        .expect("a generated secret")
        .to_string();
    let sim_id = sim["id"].as_str().expect("id").to_string();
    let got = receiver.wait_for(1).await;
    assert!(got[0].verifies(&secret), "signed with the shown secret");
    let event = got[0].json();
    assert_eq!(event["type"], "simulation.completed", "{event}");
    assert_eq!(event["data"]["simulation_id"], sim_id.as_str());
    assert_eq!(event["data"]["status"], "completed");
    let (_, read) = json(
        app.get(&format!("/v1/twins/{twin}/simulations/{sim_id}"))
            .await,
    )
    .await;
    assert!(
        read.get("notification_secret").is_none(),
        "never shown again: {read}"
    );

    // With the caller's secret (synchronous): signed with it, never echoed.
    let mine = "a-secret-of-my-own-0123";
    let (status, sim) = json(
        app.send_json(
            Method::POST,
            &path,
            &body(
                json!({"seed": 7, "runs": 100, "notification_webhook": receiver.url,
                "notification_secret": mine}),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{sim}");
    assert!(!sim.to_string().contains(mine), "{sim}");
    let got = receiver.wait_for(2).await;
    assert!(got[1].verifies(mine));
    assert_eq!(got[1].json()["data"]["simulation_id"], sim["id"]);

    // The organization's own subscriptions hear simulations too, from the event log.
    let (status, events) = json(app.get("/v1/events?type=simulation.completed").await).await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["data"].as_array().map(Vec::len), Some(2), "{events}");
});

hooks_test!(a_pause_for_tool_outputs_is_an_event_webhooks_hear, |app| {
    let receiver = Receiver::start(0, 0).await;
    let hook = create_hook(
        &app,
        json!({"url": receiver.url, "events": ["execution.requires_action"]}),
    )
    .await;
    let hook_id = hook["id"].as_str().expect("id").to_string();
    let (status, tool) = json(
        app.send_json(
            Method::POST,
            "/v1/tools",
            &json!({"type": "function", "name": "lookup_order", "description": "Look up an order",
                   "parameters": {"type": "object",
                                  "properties": {"order_id": {"type": "string"}}}}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201, "{tool}");
    let agent = app
        .create_agent(json!({"name": "Orders", "tools": [tool["id"]]}))
        .await;
    let path = format!("/v1/agents/{}/execute", agent["id"].as_str().expect("id"));
    let (status, paused) = json(
        app.send_json(
            Method::POST,
            &path,
            &json!({"input": "Where is order 42?", "options": {"wait": true}}),
        )
        .await,
    )
    .await;
    assert_eq!(
        (status, paused["status"].as_str()),
        (200, Some("requires_action")),
        "{paused}"
    );
    let exec_id = paused["id"].as_str().expect("id").to_string();

    let got = receiver.wait_for(1).await;
    assert_eq!(
        got[0].header("x-agentplane-event"),
        "execution.requires_action"
    );
    let event = got[0].json();
    assert_eq!(event["subject_id"], exec_id.as_str(), "{event}");
    assert_eq!(event["data"]["execution_id"], exec_id.as_str());
    assert_eq!(event["data"]["status"], "requires_action");
    wait_all(&app, &hook_id, 1, "succeeded").await;

    let (status, events) = json(app.get("/v1/events?type=execution.requires_action").await).await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(events["data"].as_array().map(Vec::len), Some(1), "{events}");
    assert_eq!(events["data"][0]["subject_id"], exec_id.as_str());
    // `execution.*` includes it; the execution itself completed nothing.
    let (_, all) = json(app.get("/v1/events?type=execution.*").await).await;
    let types: Vec<&str> = all["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(types.contains(&"execution.requires_action"), "{types:?}");
    assert!(!types.contains(&"execution.completed"), "{types:?}");
});
