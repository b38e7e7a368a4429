//! The application: everything one server runs, built in one place from its [`Config`].
//!
//! The areas know little of each other; this is where they meet. The execution engine
//! retrieves through the knowledge bases' search, evaluation cases run as executions on the
//! worker pool, every job kind is registered on the pool that runs it, and the handlers get
//! the state they share. [`crate::server`] serves the handlers and starts what runs in the
//! background ([`App::start`]).

use crate::egress::Egress;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::api::Handlers;
use crate::auth::{KeyCache, Keys};
use crate::crypto::Crypto;
use crate::db::Store;
use crate::engine::provider::ChatMessage;
use crate::engine::runner::ExecutionRunner;
use crate::evaluation::{CaseRunner, PooledCases, RunJobs};
use crate::events::EventBus;
use crate::jobs::{PoolConfig, Registry, WorkerPool};
use crate::knowledge::sync::SyncRunner;
use crate::security::failures::FailedAuth;
use crate::simulations::SimulationRunner;

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
    /// Timeouts and bounds on client connections.
    pub connections: ConnectionLimits,
    /// How failed authentications are summed and their sources throttled.
    pub auth_failures: crate::security::failures::FailurePolicy,
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
            connections: ConnectionLimits::default(),
            auth_failures: crate::security::failures::FailurePolicy::default(),
        }
    }
}

/// Evaluation runs at once per replica.
pub const BACKGROUND_WORKERS: usize = 4;

/// How long a replica trusts what it read of a key (see [`KeyCache`]).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// The most keys a replica's [`KeyCache`] holds.
const KEY_CACHE_CAPACITY: usize = 100_000;

/// One server's application: the handlers' shared state, and the background work (worker
/// pools, webhook deliveries) that [`App::start`] starts.
#[derive(Debug)]
pub struct App {
    pub handlers: Arc<Handlers>,
    deliveries: crate::webhooks::DeliveryWorker,
    failures: FailedAuth,
}

impl App {
    /// The application over `store`, sealing secrets with `crypto`, configured by `config`.
    /// Nothing runs until [`Self::start`] (the embedded runtime's reconciling excepted).
    pub fn build(store: Store, crypto: Crypto, config: &Config) -> Self {
        let events = EventBus::new();
        let egress = Egress::new(config.egress.clone());
        let runner = execution_runner(&store, &crypto, &events, &egress);
        let syncs = SyncRunner::new(
            store.clone(),
            &config.github_api_url,
            events.clone(),
            egress.clone(),
        );
        let simulations = SimulationRunner {
            store: store.clone(),
            crypto: crypto.clone(),
            events: events.clone(),
        };
        let jobs = Registry::new()
            .register(runner.clone())
            .register(syncs.clone())
            .register(simulations);
        let pool = WorkerPool::new(store.clone(), config.jobs.clone(), jobs);
        let cases: Arc<dyn CaseRunner> = Arc::new(PooledCases {
            store: store.clone(),
            live: runner.live.clone(),
            pool: pool.clone(),
        });
        // Evaluation runs wait on their cases' executions: on a pool of their own, so they
        // never hold the workers those need.
        let runs = RunJobs {
            store: store.clone(),
            cases: cases.clone(),
            events: events.clone(),
        };
        let background = WorkerPool::new(
            store.clone(),
            PoolConfig {
                workers: BACKGROUND_WORKERS,
                ..PoolConfig::default()
            },
            Registry::new().register(runs),
        );
        let cache = Arc::new(KeyCache::new(KEY_CACHE_TTL, KEY_CACHE_CAPACITY));
        let failures = FailedAuth::new(store.clone(), config.auth_failures);
        let handlers = Handlers {
            keys: Keys::new(store.clone(), cache.clone(), failures.clone()),
            runtime: Arc::new(crate::runtime::embedded::EmbeddedRuntime::new(
                store.clone(),
            )),
            started: Instant::now(),
            started_at: crate::ids::now(),
            metrics: crate::metrics::RequestMetrics::new(),
            limits: config.rate_limits,
            egress: egress.clone(),
            dispatcher: Default::default(),
            store: store.clone(),
            crypto: crypto.clone(),
            events: events.clone(),
            syncs,
            runner,
            cases,
            pool,
            background,
        };
        let deliveries = crate::webhooks::DeliveryWorker::new(
            store,
            crypto,
            events,
            config.webhooks.clone(),
            egress,
        );
        Self {
            handlers: Arc::new(handlers),
            deliveries,
            failures,
        }
    }

    /// Starts the background work on the current tokio runtime: the worker pools (which
    /// also reclaim the jobs of servers that died, once their leases run out) and the webhook
    /// deliveries.
    pub fn start(self) -> Running {
        let (stop, stopped) = watch::channel(false);
        let failures = tokio::spawn(self.failures.run(stopped.clone()));
        let deliveries = tokio::spawn(self.deliveries.run(stopped));
        let pools = [self.handlers.pool.clone(), self.handlers.background.clone()];
        for pool in &pools {
            pool.start();
        }
        Running {
            pools,
            stop,
            deliveries,
            failures,
        }
    }
}

/// The background work of a started [`App`].
#[derive(Debug)]
pub struct Running {
    pools: [WorkerPool; 2],
    stop: watch::Sender<bool>,
    deliveries: tokio::task::JoinHandle<()>,
    failures: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops claiming jobs (running ones finish or lose their lease) and stops the webhook
    /// deliveries, waiting for the one in flight.
    pub async fn stop(self) {
        for pool in &self.pools {
            pool.stop();
        }
        let _ = self.stop.send(true);
        let _ = self.deliveries.await;
        let _ = self.failures.await;
    }
}

/// The runner of executions: the engine with what it needs of the other areas (a
/// conversation's history and reply, the knowledge bases' search).
fn execution_runner(
    store: &Store, crypto: &Crypto, events: &EventBus, egress: &Egress,
) -> ExecutionRunner {
    ExecutionRunner {
        store: store.clone(),
        crypto: crypto.clone(),
        egress: egress.clone(),
        live: Arc::default(),
        history: Arc::new(|conn, execution| {
            let rows = crate::db::conversations::history(conn, execution)?;
            Ok(rows
                .into_iter()
                .map(|r| ChatMessage {
                    role: r.role,
                    content: r.content,
                })
                .collect())
        }),
        after_finish: Arc::new(crate::db::conversations::record_reply),
        events: events.clone(),
        retriever: Arc::new(crate::knowledge::KnowledgeRetriever),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::pipeline::{self, Plan};
    use crate::engine::provider::LocalProvider;

    /// The engine's retrieval, as the application wires it, refuses knowledge bases the
    /// organization does not have, naming them.
    #[tokio::test]
    async fn executions_retrieve_from_the_organizations_knowledge_bases() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("app_test"));
        let store = Store::open(&format!("sqlite://{}/t.db", dir.display()), 1).expect("store");
        let egress = Egress::new(crate::egress::Policy::default());
        let runner = execution_runner(&store, &Crypto::new(&[1u8; 32]), &EventBus::new(), &egress);
        let plan = Plan {
            org_id: "org_x".into(),
            input: "How long is the warranty?".into(),
            knowledge_bases: vec!["kb_1".into()],
            top_k: 3,
            model: "local-extractive-1".into(),
            ..Plan::default()
        };
        let failed = pipeline::run(&store, runner.retriever, &LocalProvider, &plan, None)
            .await
            .expect_err("an unknown knowledge base");
        assert_eq!(
            failed
                .steps
                .last()
                .map(|s| (s.name.as_str(), s.status.as_str())),
            Some(("retrieval", "failed"))
        );
        assert!(failed.message.contains("kb_1"), "{}", failed.message);
    }
}

/// How long clients may take and how many connections they may hold (`serve` flags
/// `--header-timeout`, `--idle-timeout`, `--body-timeout`, `--max-connections`,
/// `--max-connections-per-address`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From the first byte of a request until its head (request line and headers) is in.
    pub header_timeout: Duration,
    /// How long a keep-alive connection may wait for its next request.
    pub idle_timeout: Duration,
    /// From the end of a request's head until its whole body is in.
    pub body_timeout: Duration,
    /// Connections open at once; past it the listener waits for one to close.
    pub max_connections: usize,
    /// Connections open at once from one client IP address (0: no bound); past it a new one
    /// is closed as soon as it is accepted. Behind a proxy every client has its address.
    pub max_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            // Longer than the 60 s idle timeout of common load balancers, so that they, not
            // the server, close an idle connection (no request lost to a race).
            idle_timeout: Duration::from_secs(75),
            body_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_per_address: 256,
        }
    }
}
