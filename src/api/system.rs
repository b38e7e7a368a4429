//! `GET /v1/health`, `GET /v1/status`, `GET /v1/system/metrics` and `POST /v1/batch` (whose
//! dispatch lives in `batch.rs`).

use std::collections::BTreeMap;
use std::time::Instant;

use agentplane_api::ApiError;
use agentplane_api::Json;
use agentplane_api::models::{
    BuildInfo, ComponentHealth, DatabaseInfo, DeliveryQueueHealth, Health, HealthComponents,
    HealthState, SystemMetrics, SystemMetricsAgents, SystemMetricsExecutions, SystemMetricsProcess,
    SystemMetricsRequests, SystemStatus, SystemStatusStatus, WorkerPoolHealth,
};
use agentplane_api::{
    GetHealthParams, GetHealthResponse, GetStatusParams, GetStatusResponse, GetSystemMetricsParams,
    GetSystemMetricsResponse, RunBatchParams, RunBatchResponse, SystemApi,
};

use super::{Handlers, RequestMeta};
use crate::error::store_error;

/// A database round trip slower than this reports the component as degraded.
const DEGRADED_AFTER_MS: f64 = 1000.0;
/// A due job waiting longer than this (seconds) degrades the worker pool.
const JOB_WAIT_DEGRADED_S: i64 = 60;
/// A due webhook delivery waiting longer than this (seconds) degrades the outbox.
const DELIVERY_WAIT_DEGRADED_S: i64 = 300;

/// `(status, count)` of the organization's agents and of its executions.
type StatusCounts = (Vec<(String, i64)>, Vec<(String, i64)>);

fn status_counts(
    conn: &mut crate::db::DbConnection, org: &str,
) -> crate::db::StoreResult<StatusCounts> {
    use crate::db::schema::{agents as a, executions as e};
    use diesel::prelude::*;
    let agents = a::table
        .filter(a::org_id.eq(org))
        .group_by(a::status)
        .select((a::status, diesel::dsl::count_star()))
        .load::<(String, i64)>(conn)?;
    let executions = e::table
        .filter(e::org_id.eq(org))
        .group_by(e::status)
        .select((e::status, diesel::dsl::count_star()))
        .load::<(String, i64)>(conn)?;
    Ok((agents, executions))
}

/// The total of `(status, count)` rows and the count per status.
fn tally(rows: Vec<(String, i64)>) -> (i64, BTreeMap<String, i64>) {
    let total = rows.iter().map(|(_, n)| n).sum();
    (total, rows.into_iter().collect())
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Healthy, or degraded when the oldest item has waited longer than `limit` seconds.
fn queue_state(oldest: i64, limit: i64) -> HealthState {
    if oldest > limit {
        HealthState::Degraded
    } else {
        HealthState::Healthy
    }
}

impl Handlers {
    /// Organization `org_id`'s figures: its agents, executions and requests (the replica's
    /// request counters are on `/metrics`, for operators), and this process's.
    fn system_metrics(&self, org_id: &str, (agents, executions): StatusCounts) -> SystemMetrics {
        let (agents_total, agents) = tally(agents);
        let (executions_total, executions) = tally(executions);
        let requests = self.metrics.org_figures(org_id);
        let uptime = self.metrics.uptime_seconds();
        let (cpu, rss) = crate::metrics::process_usage();
        SystemMetrics {
            timestamp: crate::ids::now(),
            agents: SystemMetricsAgents {
                total: agents_total,
                by_status: agents,
            },
            executions: SystemMetricsExecutions {
                total: executions_total,
                by_status: executions,
            },
            process: SystemMetricsProcess {
                uptime_seconds: as_i64(uptime),
                cpu_seconds: cpu,
                cpu_percent_average: cpu
                    .zip(crate::metrics::process_seconds())
                    .map(|(c, wall)| (c / wall * 10_000.0).round() / 100.0),
                memory_rss_bytes: rss,
            },
            requests: SystemMetricsRequests {
                total: as_i64(requests.total),
                in_flight: as_i64(requests.in_flight),
                last_minute: as_i64(requests.last_minute),
                per_second: (requests.last_minute as f64 / 60.0 * 1000.0).round() / 1000.0,
                by_class: requests
                    .by_class
                    .into_iter()
                    .map(|(c, n)| (c, as_i64(n)))
                    .collect(),
            },
        }
    }

    /// The database's health and its round trip in milliseconds (the pool is filled in last).
    async fn database_health(&self) -> ComponentHealth {
        let started = Instant::now();
        let result = self.store.ping().await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (status, error) = match result {
            Ok(()) if latency_ms > DEGRADED_AFTER_MS => (HealthState::Degraded, None),
            Ok(()) => (HealthState::Healthy, None),
            Err(e) => {
                tracing::warn!(error = %e, "health check: database unreachable");
                (
                    HealthState::Unhealthy,
                    Some("the database does not answer".to_string()),
                )
            }
        };
        ComponentHealth {
            status,
            backend: self.store.backend().as_str().to_string(),
            latency_ms: (latency_ms * 1000.0).round() / 1000.0,
            error,
            pool_size: None,
            pool_idle: None,
        }
    }

    /// The job queue's and the webhook outbox's health (empty when the database does not
    /// answer).
    async fn queue_health(&self) -> (WorkerPoolHealth, DeliveryQueueHealth) {
        let queues = self
            .store
            .run(|conn| {
                Ok((
                    crate::jobs::backlog(conn)?,
                    crate::db::webhooks::backlog(conn)?,
                ))
            })
            .await;
        let ((queued, oldest_job), (pending, retrying, oldest_delivery)) =
            queues.unwrap_or(((0, 0), (0, 0, 0)));
        let (workers, busy) = self.pool.usage();
        let worker_pool = WorkerPoolHealth {
            status: queue_state(oldest_job, JOB_WAIT_DEGRADED_S),
            workers: i64::try_from(workers).unwrap_or(i64::MAX),
            busy: i64::try_from(busy).unwrap_or(i64::MAX),
            queued,
            oldest_queued_seconds: oldest_job,
        };
        let webhook_deliveries = DeliveryQueueHealth {
            status: queue_state(oldest_delivery, DELIVERY_WAIT_DEGRADED_S),
            pending,
            retrying,
            oldest_due_seconds: oldest_delivery,
        };
        (worker_pool, webhook_deliveries)
    }
}

impl SystemApi for Handlers {
    async fn get_system_metrics(
        &self, caller: crate::auth::Caller, _params: GetSystemMetricsParams,
    ) -> Result<GetSystemMetricsResponse, ApiError> {
        let org = caller.org_id.clone();
        let counts = self
            .store
            .run(move |conn| status_counts(conn, &org))
            .await
            .map_err(store_error("NOT_FOUND", &caller.request_id))?;
        Ok(GetSystemMetricsResponse::Ok(Json(
            self.system_metrics(&caller.org_id, counts),
        )))
    }

    async fn run_batch(
        &self, caller: crate::auth::Caller, params: RunBatchParams,
    ) -> Result<RunBatchResponse, ApiError> {
        Ok(self.run_batch_operations(caller, params).await)
    }

    async fn get_health(&self, _ctx: RequestMeta, _params: GetHealthParams) -> GetHealthResponse {
        let mut database = self.database_health().await;
        let (worker_pool, webhook_deliveries) = self.queue_health().await;
        let (pool_size, pool_idle) = self.store.pool_state();
        database.pool_size = Some(i64::from(pool_size));
        database.pool_idle = Some(i64::from(pool_idle));
        // The server is as healthy as its database; a slow queue degrades it.
        let status = match database.status {
            HealthState::Healthy
                if worker_pool.status != HealthState::Healthy
                    || webhook_deliveries.status != HealthState::Healthy =>
            {
                HealthState::Degraded
            }
            other => other,
        };
        let health = Health {
            status,
            version: env!("CARGO_PKG_VERSION").to_string(),
            timestamp: crate::ids::now(),
            components: HealthComponents {
                database,
                worker_pool,
                webhook_deliveries,
            },
        };
        if status == HealthState::Unhealthy {
            GetHealthResponse::ServiceUnavailable(Json(health))
        } else {
            GetHealthResponse::Ok(Json(health))
        }
    }

    async fn get_status(&self, _ctx: RequestMeta, _params: GetStatusParams) -> GetStatusResponse {
        GetStatusResponse::Ok(Json(SystemStatus {
            status: SystemStatusStatus::Operational,
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: self.started_at.clone(),
            uptime_seconds: i64::try_from(self.started.elapsed().as_secs()).unwrap_or(i64::MAX),
            build: BuildInfo {
                profile: if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
                .to_string(),
                target: format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS),
                commit: option_env!("AGENTPLANE_COMMIT").map(str::to_string),
            },
            database: DatabaseInfo {
                backend: self.store.backend().as_str().to_string(),
            },
        }))
    }
}
