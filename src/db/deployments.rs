//! Deployment rows, agent log lines, and the execution figures the runtime and the metrics
//! read.

use diesel::prelude::*;

use super::executions::ExecutionStatus;
use super::schema::{agent_deployments as d, agent_logs as l, executions as e};
use super::sql::FilterIf;
use super::{DbConnection, MultiBackend, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = d)]
pub struct DeploymentRow {
    pub agent_id: String,
    pub org_id: String,
    pub state: String,
    pub target_replicas: i64,
    pub revision: i64,
    pub drain_before: Option<String>,
    pub deployed_at: String,
    pub last_updated: String,
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = l)]
pub struct LogRow {
    pub id: String,
    pub org_id: String,
    pub agent_id: String,
    pub level: String,
    pub message: String,
    pub revision: i64,
    pub execution_id: Option<String>,
    pub created_at: String,
}

/// Whether the agent's deployment is scaled to 0 replicas (it runs nothing).
pub fn scaled_to_zero(conn: &mut DbConnection, agent_id: &str) -> StoreResult<bool> {
    Ok(get(conn, agent_id)?.is_some_and(|d| d.target_replicas == 0))
}

pub fn get(conn: &mut DbConnection, agent_id: &str) -> StoreResult<Option<DeploymentRow>> {
    let row = d::table.filter(d::agent_id.eq(agent_id));
    Ok(row
        .select(DeploymentRow::as_select())
        .first(conn)
        .optional()?)
}

super::crud::inserts!(insert, d, DeploymentRow);

/// Writes `next` over the stored row if it is still `prev` (another server may have moved
/// it meanwhile); answers whether it did.
pub fn save(
    conn: &mut DbConnection, prev: &DeploymentRow, next: &DeploymentRow,
) -> StoreResult<bool> {
    let changed = diesel::update(
        d::table
            .filter(d::agent_id.eq(&prev.agent_id))
            .filter(d::state.eq(&prev.state))
            .filter(d::target_replicas.eq(prev.target_replicas))
            .filter(d::revision.eq(prev.revision))
            .filter(d::last_updated.eq(&prev.last_updated)),
    )
    .set((
        d::state.eq(&next.state),
        d::target_replicas.eq(next.target_replicas),
        d::revision.eq(next.revision),
        d::drain_before.eq(&next.drain_before),
        d::deployed_at.eq(&next.deployed_at),
        d::last_updated.eq(&next.last_updated),
    ))
    .execute(conn)?;
    Ok(changed == 1)
}

/// The agents whose deployments are converging (`scaling`, `restarting`).
pub fn converging(conn: &mut DbConnection) -> StoreResult<Vec<DeploymentRow>> {
    let rows = d::table.filter(d::state.eq_any(["scaling", "restarting"]));
    Ok(rows.select(DeploymentRow::as_select()).load(conn)?)
}

super::crud::inserts!(insert_log, l, LogRow);

/// The agent's log lines at `levels`.
fn lines<'a>(agent_id: &'a str, levels: &[&str]) -> l::BoxedQuery<'a, MultiBackend> {
    l::table
        .filter(l::agent_id.eq(agent_id))
        .filter(l::level.eq_any(levels.iter().map(|l| l.to_string()).collect::<Vec<_>>()))
        .into_boxed()
}

/// The agent's log lines at `levels`, from `since` on: the newest `limit + 1` of them, newest
/// first (one more than asked, so the caller knows whether older lines were left out).
pub fn logs(
    conn: &mut DbConnection, agent_id: &str, levels: &[&str], since: Option<&str>, limit: i64,
) -> StoreResult<Vec<LogRow>> {
    Ok(lines(agent_id, levels)
        .filter_if(since.map(|since| l::created_at.ge(since)))
        .order((l::created_at.desc(), l::id.desc()))
        .limit(limit + 1)
        .select(LogRow::as_select())
        .load(conn)?)
}

/// The agent's lines at `levels` written at or after `from`, oldest first, at most `limit`
/// (what a followed log polls for).
pub fn logs_from(
    conn: &mut DbConnection, agent_id: &str, levels: &[&str], from: &str, limit: i64,
) -> StoreResult<Vec<LogRow>> {
    super::crud::oldest_from!(conn, l, LogRow, lines(agent_id, levels), from, limit)
}

/// The agent's executions in `status`.
fn executions_in(agent_id: &str, status: ExecutionStatus) -> e::BoxedQuery<'_, MultiBackend> {
    e::table
        .filter(e::agent_id.eq(agent_id))
        .filter(e::status.eq(status))
        .into_boxed()
}

/// How many of the agent's executions are `running`, and how many of those started before
/// `before` (the old revision's, during a restart).
pub fn running(
    conn: &mut DbConnection, agent_id: &str, before: Option<&str>,
) -> StoreResult<(i64, i64)> {
    let all: i64 = executions_in(agent_id, ExecutionStatus::Running)
        .count()
        .get_result(conn)?;
    let old = match before {
        None => 0,
        Some(before) => executions_in(agent_id, ExecutionStatus::Running)
            .filter(e::started_at.lt(before).or(e::started_at.is_null()))
            .count()
            .get_result(conn)?,
    };
    Ok((all, old))
}

/// How many of the agent's executions are `queued`.
pub fn queued(conn: &mut DbConnection, agent_id: &str) -> StoreResult<i64> {
    Ok(executions_in(agent_id, ExecutionStatus::Queued)
        .count()
        .get_result(conn)?)
}

/// One finished execution, as the metrics read it.
#[derive(Debug, Clone, Queryable)]
pub struct FinishedExecution {
    pub status: ExecutionStatus,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
}

/// The agent's executions that finished at or after `from`.
pub fn finished_since(
    conn: &mut DbConnection, org_id: &str, agent_id: &str, from: &str,
) -> StoreResult<Vec<FinishedExecution>> {
    Ok(e::table
        .filter(e::org_id.eq(org_id))
        .filter(e::agent_id.eq(agent_id))
        .filter(e::finished_at.ge(from))
        .select((
            e::status,
            e::started_at,
            e::finished_at,
            e::input_tokens,
            e::output_tokens,
            e::cost_nano_usd,
        ))
        .load(conn)?)
}
