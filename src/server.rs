//! Assembling and running the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::listener::{Acceptor, Listener, TcpListener};
use poem::{EndpointExt, Route, get};

use crate::api::Handlers;
use crate::crypto::Crypto;
use crate::db::Store;
use crate::http::{RequestContext, SpecValidation};

/// How the server is configured.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` to listen on; port 0 picks a free one.
    pub listen: String,
    /// Database URL: a SQLite path (`./data/agentplane.db`) or `postgres://…`.
    pub database_url: String,
    /// Connections in the pool.
    pub pool_size: u32,
    /// The GitHub REST API that GitHub knowledge sources are synced from.
    pub github_api_url: String,
    /// The master key for secrets at rest (base64 of 32 bytes), e.g. from `AGENTPLANE_MASTER_KEY`.
    pub master_key: Option<String>,
    /// A file holding the master key; else `master.key` in the data directory.
    pub master_key_file: Option<std::path::PathBuf>,
    /// Rate limits of API keys that have none of their own.
    pub rate_limits: crate::ratelimit::Limits,
    /// Serve `/metrics` without an API key even when not bound to loopback.
    pub metrics_public: bool,
    /// How webhook deliveries are attempted (backoff, timeout, lease).
    pub webhooks: crate::webhooks::DeliveryPolicy,
    /// How background jobs (executions) run: workers, lease, poll interval.
    pub jobs: crate::jobs::PoolConfig,
    /// Limits on the calls the server makes on tenants' behalf.
    pub egress: crate::egress::Policy,
}

impl Config {
    /// Where generated state beside the database lives: the SQLite file's directory, or
    /// `./data` for PostgreSQL.
    pub fn data_dir(&self) -> std::path::PathBuf {
        let (backend, target) = crate::db::parse_url(&self.database_url);
        match std::path::Path::new(&target).parent() {
            Some(dir) if backend == crate::db::Backend::Sqlite && target != ":memory:" => {
                if dir.as_os_str().is_empty() {
                    std::path::PathBuf::from(".")
                } else {
                    dir.to_path_buf()
                }
            }
            _ => std::path::PathBuf::from("./data"),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            listen: "127.0.0.1:8080".into(),
            database_url: "sqlite://./data/agentplane.db".into(),
            // Requests share the pool with the worker pool, deployment reconciling and webhook
            // deliveries.
            pool_size: u32::try_from(cores * 4).unwrap_or(16).max(8),
            github_api_url: crate::knowledge::sync::GITHUB_API.into(),
            master_key: None,
            master_key_file: None,
            rate_limits: crate::ratelimit::Limits::default(),
            metrics_public: false,
            webhooks: crate::webhooks::DeliveryPolicy::default(),
            jobs: crate::jobs::PoolConfig::default(),
            egress: crate::egress::Policy::default(),
        }
    }
}

/// The whole application as one endpoint, and its worker pools (not started: the jobs pool
/// and the background pool); `events` wakes the in-process consumers of the event log.
/// `/metrics` is open to callers without a key when `metrics_open`.
pub fn app(
    store: Store,
    crypto: Crypto,
    config: &Config,
    events: crate::events::EventBus,
    metrics_open: bool,
) -> anyhow::Result<(Arc<crate::api::App>, [crate::jobs::WorkerPool; 2])> {
    let spec: serde_json::Value = serde_json::from_str(agentplane_api::OPENAPI_JSON)
        .context("the bundled spec is not JSON")?;
    let validator = Arc::new(
        conformance::RequestValidator::new(&spec).context("the bundled spec does not compile")?,
    );
    let handlers = Arc::new(
        Handlers::with_pool(
            store,
            crypto,
            &config.github_api_url,
            config.jobs.clone(),
            events,
        )
        .with_limits(config.rate_limits)
        .with_egress(config.egress),
    );
    let pools = [handlers.pool.clone(), handlers.background.clone()];
    let service = agentplane_api::service(handlers.clone());
    let app: Arc<crate::api::App> = Arc::new(poem::EndpointExt::boxed(
        Route::new()
            .at("/", get(crate::http::root))
            .at("/openapi.json", get(crate::http::openapi_31))
            .at("/openapi-3.0.json", get(crate::http::openapi_30))
            .at("/docs", get(crate::http::docs))
            .at("/docs/*path", get(crate::http::docs))
            .at(
                "/metrics",
                get(PrometheusEndpoint {
                    handlers: handlers.clone(),
                    open: metrics_open,
                }),
            )
            .nest_no_strip("/v1", service)
            .with(SpecValidation(validator))
            .with(crate::ratelimit::RateLimit {
                keys: handlers.keys.clone(),
                store: handlers.store.clone(),
                limits: handlers.limits,
            })
            .with(crate::http::ApiVersion)
            .with(poem::middleware::CatchPanic::new().with_handler(crate::http::panic_response))
            .with(RequestContext)
            .with(crate::http::Compression)
            .with(crate::metrics::Track(handlers.metrics.clone())),
    ));
    handlers.dispatcher.set(&app);
    Ok((app, pools))
}

/// A bound server, not yet serving.
pub struct Bound {
    acceptor: poem::listener::TcpAcceptor,
    store: Store,
    crypto: Crypto,
    config: Config,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
}

/// Opens the database, runs migrations, creates the first admin key on an empty database
/// (returned so the caller can print it once) and binds the listener.
pub async fn bind(config: &Config) -> anyhow::Result<(Bound, Option<String>)> {
    let url = config.database_url.clone();
    let pool = config.pool_size;
    let store = tokio::task::spawn_blocking(move || Store::open(&url, pool)).await??;
    let bootstrap = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.run_blocking(crate::auth::bootstrap)).await??
    };
    let crypto = Crypto::load(
        config.master_key.as_deref(),
        config.master_key_file.as_deref(),
        &config.data_dir(),
    )
    .context("loading the master key for secrets at rest")?;
    let orphans = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.run_blocking(crate::jobs::fail_orphans)).await??
    };
    for (what, interrupted) in orphans {
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "{what} interrupted by a restart were marked failed"
            );
        }
    }
    let acceptor = TcpListener::bind(config.listen.clone())
        .into_acceptor()
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = acceptor
        .local_addr()
        .first()
        .and_then(|a| a.as_socket_addr().copied())
        .context("the listener has no address")?;
    Ok((
        Bound {
            acceptor,
            store,
            crypto,
            config: config.clone(),
            addr,
        },
        bootstrap,
    ))
}

impl Bound {
    /// Serves until `shutdown` resolves; in-flight requests get 30 seconds to finish.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let events = crate::events::EventBus::new();
        let worker = crate::webhooks::DeliveryWorker::new(
            self.store.clone(),
            self.crypto.clone(),
            events.clone(),
            self.config.webhooks.clone(),
        );
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let deliveries = tokio::spawn(worker.run(stopped));
        let metrics_open = self.config.metrics_public || self.addr.ip().is_loopback();
        let (app, pools) = app(self.store, self.crypto, &self.config, events, metrics_open)?;
        // Jobs whose holder died (this server's previous run, or another replica) are
        // reclaimed by this pool once their lease runs out.
        for pool in &pools {
            pool.start();
        }
        let served = poem::Server::new_with_acceptor(self.acceptor)
            .run_with_graceful_shutdown(app, shutdown, Some(Duration::from_secs(30)))
            .await;
        for pool in &pools {
            pool.stop();
        }
        let _ = stop.send(true);
        let _ = deliveries.await;
        served?;
        Ok(())
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so call it before announcing that the server is up.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send {
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(term) => {},
                () = wait(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutting down: finishing in-flight requests");
    }
}

/// `/metrics`: the replica's figures in Prometheus text format; open on a loopback bind or
/// with `--metrics-public`, else only with a live API key.
struct PrometheusEndpoint {
    handlers: Arc<Handlers>,
    open: bool,
}

impl poem::Endpoint for PrometheusEndpoint {
    type Output = poem::Response;

    async fn call(&self, req: poem::Request) -> poem::Result<poem::Response> {
        use poem::IntoResponse;
        if !self.open && self.handlers.keys.live(&req).await.is_none() {
            return Ok(poem::Response::builder()
                .status(poem::http::StatusCode::UNAUTHORIZED)
                .header("WWW-Authenticate", "Bearer")
                .body("an API key is needed: this server is not bound to loopback\n"));
        }
        let backlog = self
            .handlers
            .store
            .run(|conn| {
                Ok((
                    crate::jobs::backlog(conn)?.0,
                    crate::db::webhooks::backlog(conn)?.0,
                ))
            })
            .await;
        let (jobs, deliveries) = match backlog {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: the database does not answer");
                return Ok(poem::http::StatusCode::SERVICE_UNAVAILABLE.into_response());
            }
        };
        let metrics = &self.handlers.metrics;
        let text = crate::metrics::prometheus_text(
            &metrics.figures(),
            metrics.uptime_seconds(),
            crate::metrics::process_usage(),
            jobs,
            deliveries,
        );
        Ok(poem::Response::builder()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(text))
    }
}
