//! `GET /v1/health` and `GET /v1/status`.

use agentplane_api::ApiError;
use std::time::Instant;

use agentplane_api::models::{
    BuildInfo, ComponentHealth, DatabaseInfo, DeliveryQueueHealth, Health, HealthComponents,
    HealthState, SystemMetrics, SystemMetricsAgents, SystemMetricsExecutions, SystemMetricsProcess,
    SystemMetricsRequests, SystemStatus, SystemStatusStatus, WorkerPoolHealth,
};
use agentplane_api::{
    GetHealthParams, GetHealthResponse, GetStatusParams, GetStatusResponse, GetSystemMetricsParams,
    GetSystemMetricsResponse, RunBatchParams, RunBatchResponse, SystemApi,
};
use poem_openapi::payload::Json;

use super::{Handlers, RequestMeta};

/// A database round trip slower than this reports the component as degraded.
const DEGRADED_AFTER_MS: f64 = 1000.0;
/// A due job waiting longer than this (seconds) degrades the worker pool.
const JOB_WAIT_DEGRADED_S: i64 = 60;
/// A due webhook delivery waiting longer than this (seconds) degrades the outbox.
const DELIVERY_WAIT_DEGRADED_S: i64 = 300;

crate::failure_response!(GetSystemMetricsResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });

/// `(status, count)` of the organization's agents and of its executions.
type StatusCounts = (Vec<(String, i64)>, Vec<(String, i64)>);

fn status_counts(
    conn: &mut crate::db::DbConnection,
    org: &str,
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

impl SystemApi for Handlers {
    async fn get_system_metrics(
        &self,
        caller: crate::auth::Caller,
        _params: GetSystemMetricsParams,
    ) -> Result<GetSystemMetricsResponse, ApiError> {
        Ok(async {
            let org = caller.org_id.clone();
            let counts = match self.store.run(move |conn| status_counts(conn, &org)).await {
                Ok(c) => c,
                Err(e) => {
                    return crate::error::Failure::from_store(e, "NOT_FOUND", &caller.request_id)
                        .into();
                }
            };
            let tally = |rows: Vec<(String, i64)>| {
                let total = rows.iter().map(|(_, n)| n).sum();
                (
                    total,
                    rows.into_iter()
                        .collect::<std::collections::BTreeMap<_, _>>(),
                )
            };
            let (agents_total, agents) = tally(counts.0);
            let (executions_total, executions) = tally(counts.1);
            let requests = self.metrics.figures();
            let uptime = self.metrics.uptime_seconds();
            let (cpu, rss) = crate::metrics::process_usage();
            let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            GetSystemMetricsResponse::Ok(Json(SystemMetrics {
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
            }))
        }
        .await)
    }

    async fn run_batch(
        &self,
        caller: crate::auth::Caller,
        params: RunBatchParams,
    ) -> Result<RunBatchResponse, ApiError> {
        Ok(async { self.run_batch_operations(caller, params).await }.await)
    }

    async fn get_health(&self, _ctx: RequestMeta, _params: GetHealthParams) -> GetHealthResponse {
        let started = Instant::now();
        let result = self.store.ping().await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let (database_status, error) = match result {
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
        let status = database_status;
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
        let (pool_size, pool_idle) = self.store.pool_state();
        let worker_pool = WorkerPoolHealth {
            status: if oldest_job > JOB_WAIT_DEGRADED_S {
                HealthState::Degraded
            } else {
                HealthState::Healthy
            },
            workers: i64::try_from(workers).unwrap_or(i64::MAX),
            busy: i64::try_from(busy).unwrap_or(i64::MAX),
            queued,
            oldest_queued_seconds: oldest_job,
        };
        let webhook_deliveries = DeliveryQueueHealth {
            status: if oldest_delivery > DELIVERY_WAIT_DEGRADED_S {
                HealthState::Degraded
            } else {
                HealthState::Healthy
            },
            pending,
            retrying,
            oldest_due_seconds: oldest_delivery,
        };
        // The server is as healthy as its database; a slow queue degrades it.
        let status = match status {
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
                database: ComponentHealth {
                    status: database_status,
                    backend: self.store.backend().as_str().to_string(),
                    latency_ms: (latency_ms * 1000.0).round() / 1000.0,
                    error,
                    pool_size: Some(i64::from(pool_size)),
                    pool_idle: Some(i64::from(pool_idle)),
                },
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
