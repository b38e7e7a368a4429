//! The embedded runtime: an agent's replicas are worker slots in this process's pool.
//!
//! All of its state is the `agent_deployments` row and the `executions` table, so every
//! server on one database sees the same deployment and the same slots:
//! - [`slots`] is how many of an agent's executions may run at once: its target replicas,
//!   or none while a restart drains the old revision's executions.
//! - Scaling up opens slots at once; scaling down lets the executions above the new count
//!   finish (`scaling` until they have); 0 replicas is `stopped`.
//! - A restart closes the slots until every execution started before it has finished, then
//!   deploys revision + 1 and reopens them.
//!
//! Convergence is computed from the rows ([`reconcile`]): on every read, and by a loop that
//! each server runs over the converging deployments. Transitions are compare-and-set on the
//! row, so two servers never both log (or count) one transition.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{AgentRef, Deployment, MAX_REPLICAS, Runtime, State};
use crate::db::deployments::{self as db, DeploymentRow, LogRow};
use crate::db::{DbConnection, Store, StoreError, StoreResult, write_transaction};

/// How often each server moves converging deployments along.
pub const RECONCILE_EVERY: Duration = Duration::from_millis(200);

/// The embedded runtime over a store.
#[derive(Debug, Clone)]
pub struct EmbeddedRuntime {
    store: Store,
}

impl EmbeddedRuntime {
    /// The runtime; when called inside a tokio runtime, also starts its reconcile loop.
    pub fn new(store: Store) -> Self {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let store = store.clone();
            handle.spawn(async move {
                let mut tick = tokio::time::interval(RECONCILE_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if let Err(e) = store.run(reconcile_all).await {
                        tracing::warn!(error = %e, "reconciling deployments");
                    }
                }
            });
        }
        Self { store }
    }

    async fn with_row<T: Send + 'static>(
        &self, agent: &AgentRef,
        f: impl FnOnce(&mut DbConnection, DeploymentRow, &str) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let agent = agent.clone();
        self.store
            .run(move |conn| {
                // Two first reads of one agent may both try to create its row: the loser
                // retries and reads the winner's.
                if db::get(conn, &agent.agent_id)?.is_none() {
                    match write_transaction(conn, |conn| ensure(conn, &agent)) {
                        Ok(_) | Err(StoreError::Conflict(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                write_transaction(conn, |conn| {
                    let now = crate::ids::now();
                    let row = ensure(conn, &agent)?;
                    let row = reconcile(conn, row, &now)?;
                    f(conn, row, &now)
                })
            })
            .await
    }
}

impl Runtime for EmbeddedRuntime {
    fn name(&self) -> &'static str {
        "embedded"
    }

    fn status<'a>(&'a self, agent: &'a AgentRef) -> BoxFuture<'a, StoreResult<Deployment>> {
        self.with_row(agent, |conn, row, _| deployment(conn, &row))
            .boxed()
    }

    fn scale<'a>(
        &'a self, agent: &'a AgentRef, replicas: i64,
    ) -> BoxFuture<'a, StoreResult<Deployment>> {
        self.with_row(agent, move |conn, row, now| {
            let mut next = row.clone();
            next.target_replicas = replicas.clamp(0, MAX_REPLICAS);
            if row.state != State::Restarting.as_str() {
                next.state = State::Scaling.as_str().into();
            }
            next.last_updated = now.to_string();
            if db::save(conn, &row, &next)? {
                log(
                    conn,
                    &next,
                    "info",
                    &format!(
                        "scaling from {} to {} {}",
                        row.target_replicas,
                        next.target_replicas,
                        replica_word(next.target_replicas)
                    ),
                    None,
                    // After any line the reconcile above wrote.
                    &crate::ids::now(),
                )?;
            }
            deployment(conn, &next)
        })
        .boxed()
    }

    fn restart<'a>(&'a self, agent: &'a AgentRef) -> BoxFuture<'a, StoreResult<Deployment>> {
        self.with_row(agent, |conn, row, now| {
            if row.state == State::Restarting.as_str() {
                return deployment(conn, &row);
            }
            let mut next = row.clone();
            next.state = State::Restarting.as_str().into();
            next.drain_before = Some(now.to_string());
            next.last_updated = now.to_string();
            if db::save(conn, &row, &next)? {
                let (running, _) = db::running(conn, &row.agent_id, None)?;
                log(
                    conn,
                    &next,
                    "info",
                    &format!(
                        "restart requested: draining {running} {} in flight",
                        if running == 1 {
                            "execution"
                        } else {
                            "executions"
                        }
                    ),
                    None,
                    now,
                )?;
            }
            deployment(conn, &next)
        })
        .boxed()
    }
}

fn replica_word(n: i64) -> &'static str {
    if n == 1 { "replica" } else { "replicas" }
}

/// The agent's row; an agent without one is deployed (revision 1, one replica) as of its
/// creation.
fn ensure(conn: &mut DbConnection, agent: &AgentRef) -> StoreResult<DeploymentRow> {
    if let Some(row) = db::get(conn, &agent.agent_id)? {
        return Ok(row);
    }
    let row = DeploymentRow {
        agent_id: agent.agent_id.clone(),
        org_id: agent.org_id.clone(),
        state: State::Deployed.as_str().into(),
        target_replicas: 1,
        revision: 1,
        drain_before: None,
        deployed_at: agent.created_at.clone(),
        last_updated: agent.created_at.clone(),
    };
    db::insert(conn, &row)?;
    log(
        conn,
        &row,
        "info",
        "deployed revision 1 with 1 replica",
        None,
        &agent.created_at,
    )?;
    Ok(row)
}

/// Moves a converging deployment along as far as the executions allow.
pub fn reconcile(
    conn: &mut DbConnection, row: DeploymentRow, now: &str,
) -> StoreResult<DeploymentRow> {
    let (running, old) = db::running(conn, &row.agent_id, row.drain_before.as_deref())?;
    let settled = |target: i64| {
        if target == 0 {
            State::Stopped
        } else {
            State::Deployed
        }
        .as_str()
        .to_string()
    };
    let mut next = row.clone();
    let message = match State::parse(&row.state) {
        Some(State::Restarting) if old == 0 => {
            next.revision += 1;
            next.deployed_at = now.to_string();
            next.drain_before = None;
            next.state = settled(row.target_replicas);
            format!(
                "restarted: revision {} serving with {} {}",
                next.revision,
                row.target_replicas,
                replica_word(row.target_replicas)
            )
        }
        Some(State::Scaling) if running <= row.target_replicas => {
            next.state = settled(row.target_replicas);
            if row.target_replicas == 0 {
                "stopped: 0 replicas".to_string()
            } else {
                format!(
                    "scaled to {} {}",
                    row.target_replicas,
                    replica_word(row.target_replicas)
                )
            }
        }
        _ => return Ok(row),
    };
    next.last_updated = now.to_string();
    if db::save(conn, &row, &next)? {
        log(conn, &next, "info", &message, None, now)?;
        Ok(next)
    } else {
        // Another server moved it first; report what it wrote.
        db::get(conn, &row.agent_id)?.ok_or(StoreError::NotFound)
    }
}

/// Reconciles every converging deployment (the loop's body).
pub fn reconcile_all(conn: &mut DbConnection) -> StoreResult<()> {
    for row in db::converging(conn)? {
        let now = crate::ids::now();
        write_transaction(conn, |conn| reconcile(conn, row, &now))?;
    }
    Ok(())
}

/// How many of the agent's executions may run at once now: the worker pool's per-agent
/// limit. An agent without a deployment row has its default single replica.
pub fn slots(conn: &mut DbConnection, agent_id: &str) -> StoreResult<i64> {
    let Some(row) = db::get(conn, agent_id)? else {
        return Ok(1);
    };
    ready(conn, &row)
}

fn ready(conn: &mut DbConnection, row: &DeploymentRow) -> StoreResult<i64> {
    if row.state == State::Restarting.as_str() {
        let (_, old) = db::running(conn, &row.agent_id, row.drain_before.as_deref())?;
        if old > 0 {
            return Ok(0);
        }
    }
    Ok(row.target_replicas)
}

fn deployment(conn: &mut DbConnection, row: &DeploymentRow) -> StoreResult<Deployment> {
    let (in_flight, _) = db::running(conn, &row.agent_id, None)?;
    Ok(Deployment {
        agent_id: row.agent_id.clone(),
        runtime: "embedded",
        state: State::parse(&row.state)
            .ok_or_else(|| StoreError::Corrupt(format!("deployment state {}", row.state)))?,
        target_replicas: row.target_replicas,
        ready_replicas: ready(conn, row)?,
        in_flight,
        revision: row.revision,
        deployed_at: row.deployed_at.clone(),
        last_updated: row.last_updated.clone(),
    })
}

/// Appends a line to the agent's log, in the deployment's current revision.
fn log(
    conn: &mut DbConnection, row: &DeploymentRow, level: &str, message: &str,
    execution_id: Option<&str>, at: &str,
) -> StoreResult<()> {
    db::insert_log(
        conn,
        &LogRow {
            id: crate::ids::new_id("log"),
            org_id: row.org_id.clone(),
            agent_id: row.agent_id.clone(),
            level: level.into(),
            message: message.into(),
            revision: row.revision,
            execution_id: execution_id.map(str::to_string),
            created_at: at.into(),
        },
    )
}

/// Appends a line about one of the agent's executions (the worker pool calls this as
/// executions start and finish).
pub fn log_execution(
    conn: &mut DbConnection, org_id: &str, agent_id: &str, level: &str, message: &str,
    execution_id: &str,
) -> StoreResult<()> {
    let revision = db::get(conn, agent_id)?.map_or(1, |r| r.revision);
    db::insert_log(
        conn,
        &LogRow {
            id: crate::ids::new_id("log"),
            org_id: org_id.into(),
            agent_id: agent_id.into(),
            level: level.into(),
            message: message.into(),
            revision,
            execution_id: Some(execution_id.into()),
            created_at: crate::ids::now(),
        },
    )
}
