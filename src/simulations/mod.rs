//! Simulations of digital twins: the Monte Carlo models ([`model`]) and simulations as
//! background jobs on the shared jobs queue.
//!
//! An async `simulate` (202) writes its `simulations` row and, in the same transaction, a job
//! of kind [`KIND`] under the same id, so any replica's worker pool runs it. The job's payload
//! carries what the request decided: the checked plan (the twin's state as it was when the
//! request was accepted) and the notification's signing secret, sealed under the master key
//! (the registry of [`crate::db::sealed`] reseals it on rotation). A simulation whose server
//! died is failed when its lease runs out, by whichever replica finds it.

pub mod model;

use serde::{Deserialize, Serialize};

use crate::crypto::Crypto;
use crate::db::twins::{self as store, SimulationRow};
use crate::db::{DbConnection, Found, Store, StoreResult};
use crate::jobs::{BoxFuture, Claimed, Job, JobContext, NewJob};

/// The job kind that runs a simulation; the job's id is the simulation's.
pub const KIND: &str = "simulation";

/// The payload field holding the sealed notification secret.
pub const SECRET_FIELD: &str = crate::db::sealed::JOB_SECRET_FIELD;

/// What a simulation job carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Payload {
    id: String,
    plan: model::Plan,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_sealed: Option<String>,
}

/// Queues the simulation `row` (inside the transaction that writes it), to run `plan` and sign
/// its notification with `secret`.
pub fn enqueue(
    conn: &mut DbConnection, crypto: &Crypto, row: &SimulationRow, plan: &model::Plan,
    secret: Option<&str>,
) -> StoreResult<()> {
    let payload = Payload {
        id: row.id.clone(),
        plan: plan.clone(),
        secret_sealed: secret.map(|s| crypto.encrypt(s.as_bytes())),
    };
    let job = NewJob::of::<SimulationRunner>(&row.org_id, payload);
    crate::jobs::enqueue_as(conn, &row.id, &job).map(|_| ())
}

/// Publishes a finished simulation's `simulation.completed` event (whatever its status) and,
/// when it has a `notification_webhook`, queues that URL a delivery signed with `secret`.
/// Called inside the transaction that records the outcome, so the notification is queued
/// exactly when the outcome is stored; wake the event bus after the commit.
pub fn finished(
    conn: &mut DbConnection, crypto: &Crypto, row: &SimulationRow, secret: Option<&str>,
) -> StoreResult<()> {
    let mut data = serde_json::json!({
        "simulation_id": row.id,
        "twin_id": row.twin_id,
        "scenario": row.scenario,
        "model": row.model,
        "status": row.status,
        "seed": row.seed,
        "url": format!("/v1/twins/{}/simulations/{}", row.twin_id, row.id),
    });
    if let Some(e) = &row.error {
        data["error"] = serde_json::Value::String(e.clone());
    }
    let event = crate::events::publish(
        conn,
        &row.org_id,
        "simulation.completed",
        Some(&row.id),
        data,
    )?;
    if let (Some(url), Some(secret)) = (&row.notification_webhook, secret) {
        crate::webhooks::enqueue_adhoc(conn, crypto, &event, url, secret)?;
    }
    Ok(())
}

/// Runs a plan off the async workers; the results as stored JSON.
pub async fn compute(plan: model::Plan, seed: u64, runs: usize) -> Result<String, String> {
    tokio::task::spawn_blocking(move || model::run(&plan, seed, runs))
        .await
        .map_err(|e| format!("the simulation task failed: {e}"))
        .and_then(|r| serde_json::to_string(&r).map_err(|e| e.to_string()))
}

/// Runs simulation jobs.
#[derive(Debug, Clone)]
pub struct SimulationRunner {
    pub store: Store,
    pub crypto: Crypto,
    /// Woken after an outcome is recorded (`simulation.completed`, the notification).
    pub events: crate::events::EventBus,
}

impl SimulationRunner {
    /// Records `outcome` on simulation `id` (unless it already ended, or is gone with its
    /// twin), publishing `simulation.completed` and queueing the notification. A storage
    /// failure is logged, then the simulation is failed in its place (it must not read
    /// `running` forever).
    async fn finish(&self, id: String, outcome: Result<String, String>, secret: Option<String>) {
        if !self.record(id.clone(), outcome, secret.clone()).await {
            let lost = Err("the simulation's outcome could not be recorded".to_string());
            self.record(id, lost, secret).await;
        }
    }

    /// [`Self::finish`] once; whether storage took it.
    async fn record(
        &self, id: String, outcome: Result<String, String>, secret: Option<String>,
    ) -> bool {
        let crypto = self.crypto.clone();
        let log_id = id.clone();
        let finished = self
            .store
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    let Some(row) = store::simulation_by_id(conn, &id).found()? else {
                        return Ok(false);
                    };
                    if !matches!(row.status.as_str(), "queued" | "running") {
                        return Ok(false);
                    }
                    let done = store::finish_simulation(conn, &id, outcome, &crate::ids::now())?;
                    finished(conn, &crypto, &done, secret.as_deref())?;
                    Ok(true)
                })
            })
            .await;
        match finished {
            Ok(true) => {
                self.events.wake();
                true
            }
            Ok(false) => true,
            Err(e) => {
                tracing::warn!(simulation_id = %log_id, error = %e, "cannot record a simulation's outcome");
                false
            }
        }
    }
}

impl Job for SimulationRunner {
    const KIND: &'static str = KIND;
    type Payload = Payload;

    fn run(&self, job: Claimed<Payload>, _: JobContext) -> BoxFuture<Result<(), String>> {
        let (runner, payload) = (self.clone(), job.payload);
        Box::pin(async move {
            // The secret opens before anything runs: a payload the key cannot open fails the
            // simulation rather than notify unsigned.
            let secret = match &payload.secret_sealed {
                None => None,
                Some(sealed) => match runner.crypto.decrypt(sealed) {
                    Ok(bytes) => Some(String::from_utf8_lossy(&bytes).into_owned()),
                    Err(e) => {
                        let message = format!("the notification secret cannot be opened: {e}");
                        runner.finish(payload.id, Err(message), None).await;
                        return Ok(());
                    }
                },
            };
            let id = payload.id.clone();
            let started = runner
                .store
                .run(move |conn| {
                    store::start_simulation(conn, &id, &crate::ids::now())?;
                    store::simulation_by_id(conn, &id).found()
                })
                .await
                .map_err(|e| format!("cannot start simulation {}: {e}", payload.id))?;
            // Gone with its twin, or ended already: nothing to run.
            let Some(row) = started.filter(|r| r.status == "running") else {
                return Ok(());
            };
            let outcome = compute(payload.plan, row.seed as u64, row.runs as usize).await;
            runner.finish(row.id, outcome, secret).await;
            Ok(())
        })
    }

    fn abandon(&self, job: Claimed<Option<Payload>>) -> BoxFuture<()> {
        let runner = self.clone();
        Box::pin(async move {
            let interrupted = "interrupted: the server running it stopped".to_string();
            runner.finish(job.id, Err(interrupted), None).await;
        })
    }

    /// A payload this version cannot read fails the simulation, saying why.
    fn unreadable(&self, job: Claimed<()>, error: String) -> BoxFuture<Result<(), String>> {
        let runner = self.clone();
        Box::pin(async move {
            let message = format!("simulation job {}: {error}", job.id);
            runner.finish(job.id, Err(message), None).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payload_round_trips_its_plan_and_seals_the_secret() {
        let plan = model::plan(
            model::Model::CapacityPlanning,
            &[
                ("base_demand".to_string(), 100.0),
                ("capacity".to_string(), 150.0),
            ]
            .into(),
            &serde_json::json!({"increase_percentage": 30, "duration_days": 7}),
        )
        .expect("a plan");
        let crypto = Crypto::new(&[7u8; 32]);
        let payload = Payload {
            id: "sim_1".into(),
            plan: plan.clone(),
            secret_sealed: Some(crypto.encrypt(b"whsec_abc")),
        };
        let text = serde_json::to_string(&payload).expect("json");
        assert!(!text.contains("whsec_abc"), "sealed: {text}");
        // Where master-key rotation looks for it.
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            value[SECRET_FIELD],
            payload.secret_sealed.as_deref().expect("sealed")
        );
        let back: Payload = serde_json::from_str(&text).expect("parses");
        assert_eq!(back.plan, plan);
        let sealed = back.secret_sealed.expect("sealed");
        assert_eq!(crypto.decrypt(&sealed).expect("opens"), b"whsec_abc");
        assert_eq!(
            model::run(&back.plan, 7, 20),
            model::run(&plan, 7, 20),
            "the same numbers"
        );
    }
}
