//! The handlers: the generated traits, implemented over the store.

mod agents;
mod batch;

pub use batch::App;
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

use crate::auth::{self, Caller, KeyCache, KeyRecord};
use crate::db::{Store, identity as id_db};
use crate::error::{Kind, envelope};
use crate::http::RequestId;

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
    pub keys: std::sync::Arc<KeyCache>,
    /// Seals secrets at rest (provider API keys, API tools' secret headers).
    pub crypto: crate::crypto::Crypto,
    /// Runs knowledge-source syncs in the background.
    pub syncs: crate::knowledge::sync::SyncRunner,
    /// Rate limits of keys that have none of their own.
    pub limits: crate::ratelimit::Limits,
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
    pub fn new(store: Store, crypto: crate::crypto::Crypto) -> Self {
        Self::with_github_api(store, crypto, crate::knowledge::sync::GITHUB_API)
    }

    /// Handlers whose GitHub source syncs call the GitHub REST API at `github_api`.
    pub fn with_github_api(store: Store, crypto: crate::crypto::Crypto, github_api: &str) -> Self {
        Self::with_pool(
            store,
            crypto,
            github_api,
            crate::jobs::PoolConfig::default(),
            crate::events::EventBus::new(),
        )
    }

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
            history: std::sync::Arc::new(crate::db::conversations::history),
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
            store,
            started: Instant::now(),
            started_at: crate::ids::now(),
            keys: std::sync::Arc::new(KeyCache::new(KEY_CACHE_TTL, 100_000)),
            limits: crate::ratelimit::Limits::default(),
            dispatcher: batch::Dispatcher::default(),
        }
    }

    /// These handlers with other server-wide rate limits.
    pub fn with_limits(mut self, limits: crate::ratelimit::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The live API key (not revoked, not expired) the request presents, if any.
    async fn live_key(&self, req: &poem::Request) -> Option<KeyRecord> {
        let secret = credential(req)?;
        let record = self.key_record(auth::hash_key(&secret)).await.ok()??;
        (!record.is_dead_at(&crate::ids::now())).then_some(record)
    }

    /// Whether the request presents a live API key.
    pub async fn has_live_key(&self, req: &poem::Request) -> bool {
        self.live_key(req).await.is_some()
    }

    /// Counts the request against its API key's limits: `None` when no live key is presented
    /// (authentication answers that) or the counters cannot be reached.
    pub async fn rate_limit(&self, req: &poem::Request) -> Option<crate::ratelimit::Verdict> {
        let record = self.live_key(req).await?;
        let limits = crate::ratelimit::Limits {
            requests_per_hour: record
                .rate_limit_per_hour
                .unwrap_or(self.limits.requests_per_hour),
            burst: record.rate_limit_burst.unwrap_or(self.limits.burst),
        };
        let now = chrono::Utc::now().timestamp();
        let window_start = now - now.rem_euclid(crate::ratelimit::WINDOW_SECONDS);
        let key_id = record.key_id.clone();
        let counts = match self
            .store
            .run(move |conn| crate::db::ratelimit::hit(conn, &key_id, window_start, now))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "rate-limit counters unavailable; not limiting");
                return None;
            }
        };
        let verdict = crate::ratelimit::judge(limits, counts, now);
        if verdict.first_excess {
            use crate::security::{Event, EventType, Severity};
            let which = verdict.exceeded.unwrap_or("window");
            tracing::warn!(key_id = %record.key_id, limit = which, "rate limit exceeded");
            let event = Event::new(
                EventType::RateLimitExceeded,
                Severity::Medium,
                format!("API key {} passed its {which} rate limit", record.key_id),
            )
            .by(&record.key_id, &record.user_id)
            .on("api_key", &record.key_id)
            .details(serde_json::json!({
                "limit": which,
                "requests_per_hour": limits.requests_per_hour,
                "burst": limits.burst,
            }))
            .request(&request_id(req));
            crate::security::record_detached(&self.store, Some(record.org_id.clone()), event).await;
        }
        Some(verdict)
    }

    /// The key with this hash: from the cache, else from the database (recording its use).
    pub(crate) async fn key_record(
        &self,
        hash: String,
    ) -> Result<Option<KeyRecord>, crate::db::StoreError> {
        if let Some(record) = self.keys.get(&hash) {
            return Ok(Some(record));
        }
        let now = crate::ids::now();
        let lookup = hash.clone();
        let found = self
            .store
            .run(move |conn| {
                let found = id_db::key_by_hash(conn, &lookup)?;
                if let Some((key, _)) = &found {
                    // Record use at most once a minute, so reads stay reads.
                    let stale = key
                        .last_used_at
                        .as_deref()
                        .is_none_or(|t| t.get(..16) != now.get(..16));
                    if stale && key.revoked_at.is_none() {
                        id_db::touch_key(conn, &key.id, &now)?;
                    }
                }
                Ok(found)
            })
            .await?;
        Ok(found.map(|(key, user)| {
            let record = KeyRecord::new(&key, &user);
            self.keys.put(hash, record.clone());
            record
        }))
    }
}

fn request_id(req: &poem::Request) -> String {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default()
}

/// The credential of a request: `Authorization: Bearer <key>` or `X-API-Key: <key>`.
fn credential(req: &poem::Request) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
    {
        let mut parts = v.trim().splitn(2, ' ');
        if let (Some(scheme), Some(token)) = (parts.next(), parts.next())
            && scheme.eq_ignore_ascii_case("bearer")
            && !token.trim().is_empty()
        {
            return Some(token.trim().to_string());
        }
    }
    req.headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .or_else(|| stream_credential(req))
}

/// Browsers cannot set headers on a WebSocket handshake, so the streams (`GET …/stream`)
/// also take the key as the `access_token` query parameter or as a `bearer.<key>`
/// subprotocol (beside `agentplane.v1`, which the server selects).
fn stream_credential(req: &poem::Request) -> Option<String> {
    if req.method() != poem::http::Method::GET || !req.uri().path().ends_with("/stream") {
        return None;
    }
    let from_query = req.uri().query().and_then(|q| {
        url::form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    });
    from_query
        .or_else(|| {
            req.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    v.split(',')
                        .find_map(|p| p.trim().strip_prefix("bearer.").map(str::to_string))
                })
        })
        .filter(|v| !v.is_empty())
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
        let Some(secret) = credential(req) else {
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
        let record = match self.key_record(auth::hash_key(&secret)).await {
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
