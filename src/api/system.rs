//! `GET /v1/health` and `GET /v1/status`.

use std::time::Instant;

use agentplane_api::models::{
    BuildInfo, ComponentHealth, DatabaseInfo, Health, HealthComponents, HealthState, SystemStatus,
    SystemStatusStatus,
};
use agentplane_api::{
    GetHealthParams, GetHealthResponse, GetStatusParams, GetStatusResponse, RunBatchParams,
    RunBatchResponse, SystemApi,
};
use poem_openapi::payload::Json;

use super::{Handlers, RequestMeta};

/// A database round trip slower than this reports the component as degraded.
const DEGRADED_AFTER_MS: f64 = 1000.0;

impl SystemApi for Handlers {
    async fn run_batch(
        &self,
        caller: crate::auth::Caller,
        params: RunBatchParams,
    ) -> RunBatchResponse {
        self.run_batch_operations(caller, params).await
    }

    async fn get_health(&self, _ctx: RequestMeta, _params: GetHealthParams) -> GetHealthResponse {
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
        let health = Health {
            status,
            version: env!("CARGO_PKG_VERSION").to_string(),
            timestamp: crate::ids::now(),
            components: HealthComponents {
                database: ComponentHealth {
                    status,
                    backend: self.store.backend().as_str().to_string(),
                    latency_ms: (latency_ms * 1000.0).round() / 1000.0,
                    error,
                },
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
