//! Assembling and running the server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use poem::{EndpointExt, Route, get};

use crate::api::{AppEndpoint, Handlers};
use crate::app::App;
/// How the server is configured (the application's [`crate::app::Config`]).
pub use crate::app::Config;
use crate::crypto::Crypto;
use crate::db::Store;
use crate::http::{RequestContext, SpecValidation};
use crate::metrics::{Scope, Track};

mod connections;
pub use connections::ConnectionLimits;

/// The application `app` as one endpoint: the spec's routes under `/v1` behind validation,
/// rate limits and the request context, the docs and specs, and `/metrics` (open to callers
/// without a key when `metrics_open`). Batch operations are dispatched through it.
pub fn endpoint(app: &App, metrics_open: bool) -> anyhow::Result<Arc<AppEndpoint>> {
    let spec: serde_json::Value = serde_json::from_str(agentplane_api::OPENAPI_JSON)
        .context("the bundled spec is not JSON")?;
    let validator = Arc::new(
        conformance::RequestValidator::new(&spec).context("the bundled spec does not compile")?,
    );
    let handlers = &app.handlers;
    let service = agentplane_api::service(handlers.clone());
    let endpoint: Arc<AppEndpoint> = Arc::new(poem::EndpointExt::boxed(
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
            .with(Track(handlers.metrics.clone(), Scope::Organization))
            .with(crate::ratelimit::RateLimit {
                keys: handlers.keys.clone(),
                store: handlers.store.clone(),
                limits: handlers.limits,
                public: Arc::new(public_paths(&spec)),
            })
            .with(crate::http::ApiVersion)
            .with(poem::middleware::CatchPanic::new().with_handler(crate::http::panic_response))
            .with(RequestContext)
            .with(crate::http::Compression)
            .with(Track(handlers.metrics.clone(), Scope::Replica)),
    ));
    handlers.dispatcher.set(&endpoint);
    Ok(endpoint)
}

/// The paths of `spec` (without parameters) whose every operation needs no credentials.
fn public_paths(spec: &serde_json::Value) -> std::collections::HashSet<String> {
    let methods = ["get", "put", "post", "delete", "patch", "head", "options"];
    let Some(paths) = spec["paths"].as_object() else {
        return Default::default();
    };
    paths
        .iter()
        .filter(|(path, item)| {
            let mut ops = methods.iter().filter_map(|m| item.get(*m)).peekable();
            !path.contains('{')
                && ops.peek().is_some()
                && ops.all(|op| op["security"].as_array().is_some_and(Vec::is_empty))
        })
        .map(|(path, _)| path.clone())
        .collect()
}

/// A bound server, not yet serving.
pub struct Bound {
    listener: tokio::net::TcpListener,
    store: Store,
    crypto: Crypto,
    config: Config,
    /// The address it listens on.
    pub addr: std::net::SocketAddr,
}

/// Opens the database, runs migrations, loads the master key, binds the listener and, last,
/// creates the first admin key on an empty database (returned so the caller can print it
/// once).
pub async fn bind(config: &Config) -> anyhow::Result<(Bound, Option<String>)> {
    let url = config.database_url.clone();
    let pool = config.pool_size;
    let store = tokio::task::spawn_blocking(move || Store::open(&url, pool)).await??;
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
    let listener = tokio::net::TcpListener::bind(config.listen.as_str())
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("the listener has no address")?;
    // Last, once nothing else can fail: a start that fails after writing the first admin
    // key would lose it (the next start sees a key and prints nothing).
    let bootstrap = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.run_blocking(crate::auth::bootstrap)).await??
    };
    Ok((
        Bound {
            listener,
            store,
            crypto,
            config: config.clone(),
            addr,
        },
        bootstrap,
    ))
}

impl Bound {
    /// Serves until `shutdown` resolves; in-flight requests get 30 seconds to finish. Slow
    /// and idle clients are cut off and connections bounded as `config.connections` says.
    pub async fn serve(
        self, shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let metrics_open = self.config.metrics_public || self.addr.ip().is_loopback();
        let app = App::build(self.store, self.crypto, &self.config);
        let endpoint = endpoint(&app, metrics_open)?;
        let running = app.start();
        tracing::info!(addr = %self.addr, "server started");
        connections::serve(
            self.listener,
            endpoint,
            self.config.connections,
            shutdown,
            Duration::from_secs(30),
        )
        .await;
        running.stop().await;
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
