//! The handlers: the generated traits, implemented over the store.

mod agents;
mod batch;
mod conversations;
mod deployments;
mod evaluations;
mod events;
mod executions;
mod idem;
mod identity;
mod knowledge;
mod marketplace;
mod models;
mod paging;
mod run;
mod security;
mod system;
mod templates;
mod tools;
mod twins;
mod usage;
mod vault;
mod webhooks;

use std::time::Instant;

use agentplane_api::models::Pagination;
use agentplane_api::{AuthRejection, Authenticate};

use crate::auth::{self, Caller, KeyCache};
use crate::db::Store;
use crate::error::{Kind, envelope};
use crate::http::RequestId;

/// The application as one endpoint (middleware and routes), shared with the handlers it
/// contains: batch operations are dispatched through it.
pub type App = poem::endpoint::BoxEndpoint<'static, poem::Response>;

/// The context of a public operation.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
}

/// The state every handler shares.
#[derive(Debug, Clone)]
pub struct Handlers {
    pub store: Store,
    pub started: Instant,
    pub started_at: String,
    /// The API keys, looked up through a cache (see [`auth::Keys`]).
    pub keys: auth::Keys,
    /// Seals secrets at rest (provider API keys, API tools' secret headers).
    pub crypto: crate::crypto::Crypto,
    /// Runs knowledge-source syncs in the background.
    pub syncs: crate::knowledge::sync::SyncRunner,
    /// Rate limits of keys that have none of their own.
    pub limits: crate::ratelimit::Limits,
    /// The operator's limits on outbound calls.
    pub egress: crate::egress::Policy,
    /// The whole application, through which batch operations are dispatched (set once the
    /// application is assembled; weak, since the application holds these handlers).
    pub dispatcher: batch::Dispatcher,
    /// Where agents' deployments run (the embedded runtime by default).
    pub runtime: std::sync::Arc<dyn crate::runtime::Runtime>,
    /// Runs evaluation cases through an agent.
    pub cases: std::sync::Arc<dyn crate::evaluation::CaseRunner>,
    /// Wakes the event log's in-process consumers after a commit that published events.
    pub events: crate::events::EventBus,
    /// Runs executions (jobs of kind `execution`).
    pub runner: crate::engine::runner::ExecutionRunner,
    /// The workers that run jobs; started by the server, woken after an enqueue.
    pub pool: crate::jobs::WorkerPool,
    /// The workers that run jobs which wait on other jobs (evaluation runs wait on their
    /// cases' executions), apart so they never hold the workers those need.
    pub background: crate::jobs::WorkerPool,
    /// What this replica answered (the request-tracking middleware writes it).
    pub metrics: crate::metrics::RequestMetrics,
}

/// Evaluation runs at once per replica.
pub const BACKGROUND_WORKERS: usize = 4;

/// How long a replica trusts what it read of a key (see [`KeyCache`]).
pub const KEY_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(5);

impl Handlers {
    /// Handlers with a worker pool configured as `pool` (not started: see
    /// [`crate::jobs::WorkerPool::start`]), waking `events` after they publish.
    pub fn with_pool(
        store: Store,
        crypto: crate::crypto::Crypto,
        github_api: &str,
        pool: crate::jobs::PoolConfig,
        events: crate::events::EventBus,
    ) -> Self {
        let runner = crate::engine::runner::ExecutionRunner {
            store: store.clone(),
            crypto: crypto.clone(),
            live: std::sync::Arc::default(),
            history: std::sync::Arc::new(|conn, execution| {
                let rows = crate::db::conversations::history(conn, execution)?;
                Ok(rows
                    .into_iter()
                    .map(|r| crate::engine::provider::ChatMessage {
                        role: r.role,
                        content: r.content,
                    })
                    .collect())
            }),
            after_finish: std::sync::Arc::new(crate::db::conversations::record_reply),
            events: events.clone(),
        };
        let syncs =
            crate::knowledge::sync::SyncRunner::new(store.clone(), github_api, events.clone());
        let handlers: std::collections::HashMap<
            String,
            std::sync::Arc<dyn crate::jobs::JobHandler>,
        > = [
            (
                crate::engine::runner::KIND.to_string(),
                std::sync::Arc::new(runner.clone()) as std::sync::Arc<dyn crate::jobs::JobHandler>,
            ),
            (
                crate::knowledge::sync::KIND.to_string(),
                std::sync::Arc::new(syncs.clone()) as std::sync::Arc<dyn crate::jobs::JobHandler>,
            ),
            (
                crate::simulations::KIND.to_string(),
                std::sync::Arc::new(crate::simulations::SimulationRunner {
                    store: store.clone(),
                    crypto: crypto.clone(),
                    events: events.clone(),
                }) as std::sync::Arc<dyn crate::jobs::JobHandler>,
            ),
        ]
        .into();
        let pool = crate::jobs::WorkerPool::new(store.clone(), pool, handlers);
        let cases = std::sync::Arc::new(crate::evaluation::PooledCases {
            store: store.clone(),
            live: runner.live.clone(),
            pool: pool.clone(),
        });
        let runs = crate::evaluation::RunJobs {
            store: store.clone(),
            cases: cases.clone() as std::sync::Arc<dyn crate::evaluation::CaseRunner>,
            events: events.clone(),
        };
        let background = crate::jobs::WorkerPool::new(
            store.clone(),
            crate::jobs::PoolConfig {
                workers: BACKGROUND_WORKERS,
                ..crate::jobs::PoolConfig::default()
            },
            [(
                crate::evaluation::KIND.to_string(),
                std::sync::Arc::new(runs) as std::sync::Arc<dyn crate::jobs::JobHandler>,
            )]
            .into(),
        );
        Self {
            pool,
            background,
            metrics: crate::metrics::RequestMetrics::new(),
            runner,
            crypto,
            runtime: std::sync::Arc::new(crate::runtime::embedded::EmbeddedRuntime::new(
                store.clone(),
            )),
            cases,
            syncs,
            events,
            started: Instant::now(),
            started_at: crate::ids::now(),
            keys: auth::Keys::new(
                store.clone(),
                std::sync::Arc::new(KeyCache::new(KEY_CACHE_TTL, 100_000)),
            ),
            store,
            limits: crate::ratelimit::Limits::default(),
            egress: crate::egress::Policy::default(),
            dispatcher: batch::Dispatcher::default(),
        }
    }

    /// These handlers with other limits on outbound calls.
    pub fn with_egress(mut self, egress: crate::egress::Policy) -> Self {
        self.egress = egress;
        self
    }

    /// These handlers with other server-wide rate limits.
    pub fn with_limits(mut self, limits: crate::ratelimit::Limits) -> Self {
        self.limits = limits;
        self
    }
}

fn request_id(req: &poem::Request) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

impl Authenticate for Handlers {
    type Caller = Caller;
    type Anonymous = RequestMeta;

    fn anonymous(&self, req: &poem::Request) -> RequestMeta {
        RequestMeta {
            request_id: request_id(req),
        }
    }

    async fn authenticate(
        &self,
        req: &poem::Request,
        scopes: &'static [&'static str],
    ) -> Result<Caller, AuthRejection> {
        let rid = request_id(req);
        let unauthorized = |message: &str| {
            AuthRejection::Unauthorized(envelope(
                Kind::Unauthorized,
                "INVALID_API_KEY",
                message,
                Vec::new(),
                &rid,
            ))
        };
        let Some(secret) = auth::credential(req) else {
            return Err(unauthorized(
                "an API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`",
            ));
        };
        let failed = |org: Option<String>, key: Option<(&str, &str)>, reason: &str| {
            use crate::security::{Event, EventType, Severity};
            let mut event = Event::new(
                EventType::AuthenticationFailed,
                Severity::Medium,
                format!("authentication failed: {reason}"),
            )
            .details(serde_json::json!({
                "reason": reason,
                "method": req.method().as_str(),
                "path": req.uri().path(),
            }))
            .request(&rid);
            if let Some((key_id, user_id)) = key {
                event = event.by(key_id, user_id);
            }
            crate::security::record_detached(&self.store, org, event)
        };
        let record = match self.keys.record(auth::hash_key(&secret)).await {
            Ok(Some(record)) => record,
            Ok(None) => {
                // An unknown key names no organization; the secret itself is never kept.
                failed(None, None, "unknown API key").await;
                return Err(unauthorized("the API key is not valid"));
            }
            Err(e) => {
                tracing::warn!(error = %e, request_id = %rid, "cannot check an API key");
                return Err(AuthRejection::Unavailable(envelope(
                    Kind::Unavailable,
                    "SERVICE_UNAVAILABLE",
                    "credentials cannot be checked right now; retry later",
                    Vec::new(),
                    &rid,
                )));
            }
        };
        let key = Some((record.key_id.as_str(), record.user_id.as_str()));
        if record.revoked {
            failed(Some(record.org_id.clone()), key, "revoked API key").await;
            return Err(unauthorized("the API key has been revoked"));
        }
        if record
            .expires_at
            .as_deref()
            .is_some_and(|t| t <= crate::ids::now().as_str())
        {
            failed(Some(record.org_id.clone()), key, "expired API key").await;
            return Err(unauthorized("the API key has expired"));
        }
        let granted = &record.scopes;
        let missing: Vec<&str> = scopes
            .iter()
            .copied()
            .filter(|s| !granted.iter().any(|g| g.as_str() == *s))
            .collect();
        if !missing.is_empty() {
            use crate::security::{Event, EventType, Severity};
            let event = Event::new(
                EventType::PermissionDenied,
                Severity::Low,
                format!(
                    "{} {} needs the scope {}",
                    req.method(),
                    req.uri().path(),
                    missing.join(", ")
                ),
            )
            .by(&record.key_id, &record.user_id)
            .on(
                "operation",
                &format!("{} {}", req.method(), req.uri().path()),
            )
            .details(serde_json::json!({ "missing_scopes": missing }))
            .request(&rid);
            crate::security::record_detached(&self.store, Some(record.org_id.clone()), event).await;
            return Err(AuthRejection::Forbidden(envelope(
                Kind::Forbidden,
                "INSUFFICIENT_PERMISSIONS",
                format!("this API key lacks the scope {}", missing.join(", ")),
                Vec::new(),
                &rid,
            )));
        }
        Ok(Caller {
            request_id: rid,
            org_id: record.org_id,
            user_id: record.user_id,
            key_id: record.key_id,
            role: record.role,
            scopes: record.scopes,
            credential: auth::Presented(secret),
        })
    }
}

/// The pagination block of a list answer.
pub(crate) fn pagination(
    page: i64,
    per_page: i64,
    total: i64,
    next_cursor: Option<String>,
) -> Pagination {
    Pagination {
        page,
        per_page,
        total,
        pages: if total == 0 {
            0
        } else {
            (total + per_page - 1) / per_page
        },
        next_cursor,
    }
}

/// The items a task sends on `rx`, as the stream behind an SSE or WebSocket answer: it ends
/// when the task drops its sender, and dropping it (the client went away) closes `rx`.
pub(crate) fn channel_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> agentplane_api::EventStreamOf<T> {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}
