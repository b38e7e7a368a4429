//! `TestApp`: a real server on `127.0.0.1:0` over its own fresh database.
//!
//! Every test runs on SQLite; with `AGENTPLANE_TEST_POSTGRES` set to a server URL
//! (`postgres://user@127.0.0.1:5432`) it also runs on a fresh PostgreSQL database.
//! `AGENTPLANE_REQUIRE_POSTGRES=1` (set by CI) turns a missing URL into a failure.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU32, Ordering};

use agentplane::db::Store;
use agentplane::server::{self, Config};
use agentplane_api::models::{Role, Scope};
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}

/// The PostgreSQL server URL, or `None` when the PostgreSQL run is skipped.
pub fn postgres_url() -> Option<String> {
    match std::env::var("AGENTPLANE_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                std::env::var("AGENTPLANE_REQUIRE_POSTGRES").is_err(),
                "AGENTPLANE_REQUIRE_POSTGRES is set but AGENTPLANE_TEST_POSTGRES is not"
            );
            None
        }
    }
}

fn fresh_database(backend: Backend) -> Option<String> {
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join(unique("agentplane_test"));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Some(format!("sqlite://{}/agentplane.db", dir.display()))
        }
        Backend::Postgres => {
            use diesel::{Connection, PgConnection, RunQueryDsl};
            let base = postgres_url()?;
            let name = unique("ap_test");
            let mut admin =
                PgConnection::establish(&format!("{}/postgres", base.trim_end_matches('/')))
                    .expect("connect to the PostgreSQL test server");
            diesel::sql_query(format!("CREATE DATABASE {name}"))
                .execute(&mut admin)
                .expect("create database");
            Some(format!("{}/{name}", base.trim_end_matches('/')))
        }
    }
}

/// A running server and an authenticated client.
pub struct TestApp {
    pub base: String,
    pub admin_key: String,
    pub client: reqwest::Client,
    pub store: Store,
    pub database_url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl TestApp {
    /// Starts a server on `backend`; `None` when that backend is not configured here.
    pub async fn start(backend: Backend) -> Option<TestApp> {
        Self::start_with(backend, |_| {}).await
    }

    /// Starts a server on `backend` with `configure` applied to its configuration.
    pub async fn start_with(
        backend: Backend, configure: impl FnOnce(&mut Config),
    ) -> Option<TestApp> {
        let database_url = fresh_database(backend)?;
        // Server errors (a storage failure behind a 503) show in a failing test's output;
        // `AGENTPLANE_TEST_LOG=debug` shows more.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("AGENTPLANE_TEST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_test_writer()
            .try_init();
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            database_url: database_url.clone(),
            // The background loops (worker pool, deployments, webhook deliveries) hold
            // connections too.
            pool_size: 8,
            // A fixed test key: no key file is written beside the test databases (or into
            // ./data for PostgreSQL).
            master_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
            // The tests' tool, webhook, model and source servers listen on loopback, which
            // the egress policy refuses unless the operator opens it (as here).
            egress: loopback_egress(),
            ..Config::default()
        };
        configure(&mut config);
        let (bound, bootstrap) = server::bind(&config).await.expect("server binds");
        let admin_key = bootstrap.expect("a fresh database prints an admin key");
        let base = format!("http://{}", bound.addr);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        let url = database_url.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&url, 2))
            .await
            .expect("join")
            .expect("store");
        Some(TestApp {
            base,
            admin_key,
            client: reqwest::Client::new(),
            store,
            database_url,
            shutdown: Some(tx),
        })
    }

    /// A second server on this app's database (a restart, or another replica), with
    /// `configure` applied; it shares the admin key.
    pub async fn reopen_with(&self, configure: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            database_url: self.database_url.clone(),
            // The background loops (worker pool, deployments, webhook deliveries) hold
            // connections too.
            pool_size: 8,
            master_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
            // The tests' tool, webhook, model and source servers listen on loopback, which
            // the egress policy refuses unless the operator opens it (as here).
            egress: loopback_egress(),
            ..Config::default()
        };
        configure(&mut config);
        let (bound, _) = server::bind(&config).await.expect("server binds");
        let base = format!("http://{}", bound.addr);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        TestApp {
            base,
            admin_key: self.admin_key.clone(),
            client: reqwest::Client::new(),
            store: self.store.clone(),
            database_url: self.database_url.clone(),
            shutdown: Some(tx),
        }
    }

    /// Stops this server (gracefully) and waits until it no longer answers.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        for _ in 0..100 {
            if self
                .client
                .get(self.url("/v1/health"))
                .send()
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The typed client generated from the spec (`clients/rust`), authenticated with the
    /// admin key. Tests use it wherever they do not deliberately send malformed requests.
    pub fn api(&self) -> agentplane_client::Client {
        self.api_as(&self.admin_key)
    }

    /// The typed client authenticated with `key`.
    pub fn api_as(&self, key: &str) -> agentplane_client::Client {
        agentplane_client::authenticated(&self.base, key).expect("typed client")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request authenticated with the admin key.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.as_key(&self.admin_key, method, path)
    }

    pub fn as_key(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path)).bearer_auth(key)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.req(Method::GET, path).send().await.expect("request")
    }

    pub async fn send_json(&self, method: Method, path: &str, body: &Value) -> Response {
        self.req(method, path)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// Creates an agent and returns its JSON.
    pub async fn create_agent(&self, body: Value) -> Value {
        let resp = self.send_json(Method::POST, "/v1/agents", &body).await;
        assert_eq!(resp.status(), 201, "create {body}");
        resp.json().await.expect("json")
    }

    /// A key for `user` in organization `org` (both created when missing).
    pub async fn key_for(
        &self, org: &str, user: &str, role: Role, scopes: Option<&[Scope]>,
    ) -> String {
        let (org, user) = (org.to_string(), user.to_string());
        let scopes: BTreeSet<Scope> = match scopes {
            Some(s) => s.iter().copied().collect(),
            None => agentplane::auth::role_scopes(role),
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            store.run_blocking(|conn| {
                let user = agentplane::auth::ensure_user(
                    conn,
                    &org,
                    &user,
                    &format!("{user}@example.com"),
                    role,
                )?;
                agentplane::auth::insert_key(conn, &user, "test", &scopes, None)
            })
        })
        .await
        .expect("join")
        .expect("key")
        .1
    }

    /// Another server (a second replica) over this app's database; it stops when dropped.
    pub async fn replica(&self) -> Replica {
        let config = Config {
            listen: "127.0.0.1:0".into(),
            database_url: self.database_url.clone(),
            pool_size: 4,
            master_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()),
            // The tests' tool, webhook, model and source servers listen on loopback, which
            // the egress policy refuses unless the operator opens it (as here).
            egress: loopback_egress(),
            ..Config::default()
        };
        let (bound, bootstrap) = server::bind(&config).await.expect("replica binds");
        assert!(bootstrap.is_none(), "the database is already bootstrapped");
        let base = format!("http://{}", bound.addr);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(bound.serve(async move {
            let _ = rx.await;
        }));
        Replica {
            base,
            _shutdown: tx,
        }
    }
}

/// Sends `body` (if any) as JSON with `key`.
pub async fn send_as(
    app: &TestApp, key: &str, method: Method, path: &str, body: Option<&Value>,
) -> Response {
    let mut req = app.as_key(key, method, path);
    if let Some(body) = body {
        req = req.json(body);
    }
    req.send().await.expect("request")
}

/// An admin key of another organization.
pub async fn other_admin(app: &TestApp) -> String {
    app.key_for("other-org", "eve", Role::Admin, None).await
}

/// A second server over the same database (see [`TestApp::replica`]).
pub struct Replica {
    pub base: String,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

/// Reads a JSON body, asserting the error envelope's shape when the status is an error.
pub async fn json(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    assert!(
        resp.headers().contains_key("x-request-id"),
        "every response carries X-Request-Id"
    );
    let body: Value = if status == 204 || status == 304 {
        Value::Null
    } else {
        resp.json().await.expect("a JSON body")
    };
    if status >= 400 {
        let error = &body["error"];
        for key in [
            "type",
            "code",
            "message",
            "details",
            "request_id",
            "timestamp",
        ] {
            assert!(
                error.get(key).is_some(),
                "error envelope lacks {key}: {body}"
            );
        }
    }
    (status, body)
}

/// The status and error code of a typed client's error; panics (failing the test) when the
/// server's answer is not a documented error decoded into the envelope.
pub fn api_error<T: std::fmt::Debug>(
    result: Result<T, agentplane_client::Error<agentplane_client::types::ErrorEnvelope>>,
) -> (u16, String) {
    match result {
        Err(agentplane_client::Error::ErrorResponse(resp)) => {
            (resp.status().as_u16(), resp.into_inner().error.code)
        }
        other => panic!("expected a documented error response, got {other:?}"),
    }
}

/// A typed request body from JSON (the generated types check patterns and bounds, so this
/// panics, failing the test, on a body the spec forbids).
pub fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{value} is not a valid {}: {e}", std::any::type_name::<T>()))
}

/// The `ETag` header of a typed response.
pub fn etag<T>(resp: &agentplane_client::ResponseValue<T>) -> String {
    resp.headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .expect("an ETag header")
        .to_string()
}

/// The `details[].field` values of an error body.
pub fn fields(body: &Value) -> Vec<String> {
    body["error"]["details"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|x| x["field"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Declares `NAME::sqlite` and `NAME::postgres` running `test(backend)`, for tests that
/// start their own servers (a `test` returns early when its backend is not configured).
#[macro_export]
macro_rules! both {
    ($name:ident, $test:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test($crate::support::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test($crate::support::Backend::Postgres).await;
            }
        }
    };
}

/// Declares one test per backend: `NAME::sqlite` and `NAME::postgres`.
#[macro_export]
macro_rules! backend_test {
    ($name:ident, |$app:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn run($app: $crate::support::TestApp) $body

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app = $crate::support::TestApp::start($crate::support::Backend::Sqlite).await.expect("sqlite always runs");
                run(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                match $crate::support::TestApp::start($crate::support::Backend::Postgres).await {
                    Some(app) => run(app).await,
                    None => eprintln!("skipped: set AGENTPLANE_TEST_POSTGRES to run on PostgreSQL"),
                }
            }
        }
    };
}

/// The egress policy of the tests' servers: loopback open, everything else as by default.
pub fn loopback_egress() -> agentplane::egress::Policy {
    agentplane::egress::Policy::with_loopback(std::time::Duration::from_secs(30))
}
