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
mod resource;
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

use crate::auth::{self, Caller};
use crate::db::Store;
use crate::error::{Kind, envelope};
use crate::http::RequestId;

/// The application as one endpoint (middleware and routes), shared with the handlers it
/// contains: batch operations are dispatched through it.
pub type AppEndpoint = poem::endpoint::BoxEndpoint<'static, poem::Response>;

/// The context of a public operation.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub request_id: String,
}

/// The state every handler shares, built by the application ([`crate::app::App::build`]).
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
    pub egress: crate::egress::Egress,
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

impl Handlers {
    /// Refuses, as a 422 naming `field`, a URL the egress policy refuses as written (an
    /// internal address, `localhost`); a name that resolves to one is refused when called.
    /// A URL that does not parse is left to the field's own validation.
    pub(crate) fn outbound(
        &self, field: &str, url: Option<&str>, rid: &str,
    ) -> Result<(), crate::error::Failure> {
        let Some(parsed) = url.and_then(|u| url::Url::parse(u).ok()) else {
            return Ok(());
        };
        self.egress.policy().check_url(&parsed).map_err(|message| {
            crate::error::Failure::on_field(
                Kind::Unprocessable,
                "VALIDATION_ERROR",
                field,
                "egress",
                message,
                rid,
            )
        })
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
        &self, req: &poem::Request, scopes: &'static [&'static str],
    ) -> Result<Caller, AuthRejection> {
        let rid = request_id(req);
        self.keys
            .authenticate(req, scopes, &rid)
            .await
            .map_err(|failure| rejection(failure, &rid))
    }
}

/// A refused authentication as the error envelope of its status.
fn rejection(failure: auth::Failure, rid: &str) -> AuthRejection {
    match failure {
        auth::Failure::Unauthorized(message) => AuthRejection::Unauthorized(envelope(
            Kind::Unauthorized,
            "INVALID_API_KEY",
            message,
            Vec::new(),
            rid,
        )),
        auth::Failure::Forbidden(missing) => AuthRejection::Forbidden(envelope(
            Kind::Forbidden,
            "INSUFFICIENT_PERMISSIONS",
            format!("this API key lacks the scope {}", missing.join(", ")),
            Vec::new(),
            rid,
        )),
        auth::Failure::Unavailable => AuthRejection::Unavailable(envelope(
            Kind::Unavailable,
            "SERVICE_UNAVAILABLE",
            "credentials cannot be checked right now; retry later",
            Vec::new(),
            rid,
        )),
    }
}

/// The pagination block of a list answer.
pub(crate) fn pagination(
    page: i64, per_page: i64, total: i64, next_cursor: Option<String>,
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
