//! Execution rows, and the usage record each finished execution writes.
//!
//! Status moves `queued → running → succeeded | failed | cancelled | timed_out`, each move a
//! conditional update on the current status, so a cancel and a finishing worker never both
//! win: whichever writes first decides, the other sees zero rows changed.
//!
//! TODO(merge with the vault branch): `insert_usage` writes the same `usage_records` columns
//! as vault's `src/db/usage.rs`; fold the two into that module.

use diesel::prelude::*;

use super::schema::{executions as e, usage_records as u};
use super::{DbConnection, MultiBackend, StoreError, StoreResult};

/// One row of `executions`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = e)]
pub struct ExecutionRow {
    pub id: String,
    pub org_id: String,
    pub agent_id: String,
    pub status: String,
    /// JSON: `input`, `parameters`, `context`, `options` as accepted.
    pub request: String,
    /// The answer text, once succeeded.
    pub result: Option<String>,
    /// JSON `{"code", "message"}` when it did not succeed.
    pub error: Option<String>,
    pub model_id: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
    /// JSON array of steps (name, status, started_at, duration_ms, detail).
    pub steps: String,
    pub cancel_requested: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl ExecutionRow {
    /// A new execution of `agent_id`, queued as `request` (the accepted request's JSON).
    pub fn queued(id: String, org_id: &str, agent_id: &str, request: &serde_json::Value) -> Self {
        ExecutionRow {
            id,
            org_id: org_id.to_string(),
            agent_id: agent_id.to_string(),
            status: "queued".into(),
            request: request.to_string(),
            result: None,
            error: None,
            model_id: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_nano_usd: 0,
            steps: "[]".into(),
            cancel_requested: 0,
            created_at: crate::ids::now(),
            started_at: None,
            finished_at: None,
        }
    }

    /// The conversation whose message it answers (kept in `request`).
    pub fn conversation_id(&self) -> Option<String> {
        serde_json::from_str::<serde_json::Value>(&self.request)
            .ok()?
            .get("conversation_id")?
            .as_str()
            .map(str::to_string)
    }

    /// Whether it has finished (no status change follows).
    pub fn is_finished(&self) -> bool {
        is_terminal(&self.status)
    }
}

/// Whether `status` is a final one.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled" | "timed_out")
}

/// One row of `usage_records` (the columns vault's usage module aggregates).
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = u)]
pub struct UsageRow {
    pub id: String,
    pub org_id: String,
    pub agent_id: String,
    pub model_id: String,
    pub execution_id: Option<String>,
    pub conversation_id: Option<String>,
    pub message_id: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
    pub created_at: String,
}

pub fn insert(conn: &mut DbConnection, row: &ExecutionRow) -> StoreResult<()> {
    diesel::insert_into(e::table).values(row).execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<ExecutionRow> {
    e::table
        .filter(e::org_id.eq(org_id))
        .filter(e::id.eq(id))
        .select(ExecutionRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

/// The row by id alone (workers, which act for whichever organization queued it).
pub fn get_any(conn: &mut DbConnection, id: &str) -> StoreResult<ExecutionRow> {
    e::table
        .filter(e::id.eq(id))
        .select(ExecutionRow::as_select())
        .first(conn)
        .map_err(StoreError::from)
}

/// What a list asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecutionQuery {
    pub agent_id: Option<String>,
    pub status: Option<String>,
    pub offset: i64,
    pub limit: i64,
    pub after_id: Option<String>,
}

fn filtered<'a>(org_id: &'a str, q: &'a ExecutionQuery) -> e::BoxedQuery<'a, MultiBackend> {
    let mut b = e::table.filter(e::org_id.eq(org_id)).into_boxed();
    if let Some(a) = &q.agent_id {
        b = b.filter(e::agent_id.eq(a));
    }
    if let Some(s) = &q.status {
        b = b.filter(e::status.eq(s));
    }
    b
}

/// A page, newest first, and the number of matching rows. Paging by cursor continues
/// right after `after_id` (ids sort by creation time); by page number at `offset`.
pub fn list(
    conn: &mut DbConnection,
    org_id: &str,
    q: &ExecutionQuery,
) -> StoreResult<(Vec<ExecutionRow>, i64)> {
    let total: i64 = filtered(org_id, q).count().get_result(conn)?;
    let mut page = filtered(org_id, q).order(e::id.desc()).limit(q.limit);
    page = match &q.after_id {
        Some(after) => page.filter(e::id.lt(after.clone())),
        None => page.offset(q.offset),
    };
    let rows = page.select(ExecutionRow::as_select()).load(conn)?;
    Ok((rows, total))
}

/// `queued → running`, then `after` in the same transaction; `false` when it was no longer
/// queued (cancelled meanwhile).
pub fn mark_running(
    conn: &mut DbConnection,
    id: &str,
    model_id: &str,
    after: &AfterChange,
) -> StoreResult<bool> {
    super::write_transaction(conn, |conn| {
        let now = crate::ids::now();
        let n = diesel::update(e::table.filter(e::id.eq(id)).filter(e::status.eq("queued")))
            .set((
                e::status.eq("running"),
                e::started_at.eq(&now),
                e::model_id.eq(model_id),
            ))
            .execute(conn)?;
        if n != 1 {
            return Ok(false);
        }
        let row = get_any(conn, id)?;
        after(conn, &row)?;
        Ok(true)
    })
}

/// How an execution ended.
#[derive(Debug, Clone)]
pub struct Finish {
    pub status: &'static str,
    pub result: Option<String>,
    pub error: Option<(String, String)>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
    /// The steps run (JSON array); `None` keeps those stored.
    pub steps: Option<String>,
}

/// Ends a queued or running execution with `finish`, and records its usage (once a model
/// was called), inside the caller's write transaction. `None` when it had already ended (a
/// cancel won).
pub fn finish_in(
    conn: &mut DbConnection,
    id: &str,
    finish: &Finish,
) -> StoreResult<Option<ExecutionRow>> {
    {
        let now = crate::ids::now();
        let error = finish.error.as_ref().map(|(code, message)| {
            serde_json::json!({"code": code, "message": message}).to_string()
        });
        let n = diesel::update(
            e::table
                .filter(e::id.eq(id))
                .filter(e::status.eq_any(["queued", "running"])),
        )
        .set((
            e::status.eq(finish.status),
            e::result.eq(&finish.result),
            e::error.eq(&error),
            e::input_tokens.eq(finish.input_tokens),
            e::output_tokens.eq(finish.output_tokens),
            e::cost_nano_usd.eq(finish.cost_nano_usd),
            e::finished_at.eq(&now),
        ))
        .execute(conn)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(steps) = &finish.steps {
            diesel::update(e::table.filter(e::id.eq(id)))
                .set(e::steps.eq(steps))
                .execute(conn)?;
        }
        let row = get_any(conn, id)?;
        if finish.input_tokens + finish.output_tokens > 0 {
            insert_usage(
                conn,
                &UsageRow {
                    id: crate::ids::new_id("usage"),
                    org_id: row.org_id.clone(),
                    agent_id: row.agent_id.clone(),
                    model_id: row
                        .model_id
                        .clone()
                        .unwrap_or_else(|| "model_local".to_string()),
                    execution_id: Some(row.id.clone()),
                    conversation_id: row.conversation_id(),
                    message_id: None,
                    input_tokens: row.input_tokens,
                    output_tokens: row.output_tokens,
                    cost_nano_usd: row.cost_nano_usd,
                    created_at: now,
                },
            )?;
        }
        Ok(Some(row))
    }
}

/// Cancels a queued or running execution: `Ok(None)` when it had already finished.
pub fn cancel(
    conn: &mut DbConnection,
    org_id: &str,
    id: &str,
    after: &AfterChange,
) -> StoreResult<Result<ExecutionRow, ExecutionRow>> {
    super::write_transaction(conn, |conn| {
        let current = get(conn, org_id, id)?;
        if current.is_finished() {
            return Ok(Err(current));
        }
        let now = crate::ids::now();
        let error = serde_json::json!({"code": "CANCELLED", "message": "cancelled on request"});
        diesel::update(
            e::table
                .filter(e::id.eq(id))
                .filter(e::status.eq_any(["queued", "running"])),
        )
        .set((
            e::status.eq("cancelled"),
            e::cancel_requested.eq(1),
            e::error.eq(error.to_string()),
            e::finished_at.eq(&now),
        ))
        .execute(conn)?;
        let row = get(conn, org_id, id)?;
        after(conn, &row)?;
        Ok(Ok(row))
    })
}

/// What else an execution's change writes in its transaction (its events and the agent's
/// log: [`crate::engine::runner::announce`]).
pub type AfterChange = dyn Fn(&mut DbConnection, &ExecutionRow) -> StoreResult<()> + Send + Sync;

/// Records usage (tokens, cost, model) of an execution or a message.
pub fn insert_usage(conn: &mut DbConnection, row: &UsageRow) -> StoreResult<()> {
    diesel::insert_into(u::table).values(row).execute(conn)?;
    Ok(())
}

/// The usage records of an execution (tests and the README's walk-through).
pub fn usage_of(conn: &mut DbConnection, execution_id: &str) -> StoreResult<Vec<UsageRow>> {
    u::table
        .filter(u::execution_id.eq(execution_id))
        .select(UsageRow::as_select())
        .load(conn)
        .map_err(StoreError::from)
}
