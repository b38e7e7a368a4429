//! Execution rows, and the usage record each finished execution writes.
//!
//! Status moves `queued → running → succeeded | failed | cancelled | timed_out`, or from
//! `running` to `requires_action` (paused for the outputs of `function` tool calls), then
//! `queued` again once they are posted, or `expired`. Each move is a conditional update on
//! the current status, so a cancel and a finishing worker never both win: whichever writes
//! first decides, the other sees zero rows changed.
//!
//! The JSON columns are typed: the accepted request ([`ExecutionRequest`]), the error
//! ([`ExecutionError`]) and the steps ([`Step`]) are written and read by the same serde types.
//!
//! TODO(merge with the vault branch): `insert_usage` writes the same `usage_records` columns
//! as vault's `src/db/usage.rs`; fold the two into that module.

use std::collections::BTreeMap;

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::schema::{execution_continuations as k, executions as e, usage_records as u};
use super::sql::Page;
use super::types::{Flag, Json, text_enum};
use super::{DbConnection, MultiBackend, StoreError, StoreResult};

text_enum! {
    /// Where an execution is.
    pub enum ExecutionStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
        TimedOut = "timed_out",
        RequiresAction = "requires_action",
        Expired = "expired",
    }
}

impl ExecutionStatus {
    /// Whether it is a final status (no change follows).
    pub fn is_finished(self) -> bool {
        !matches!(
            self,
            ExecutionStatus::Queued | ExecutionStatus::Running | ExecutionStatus::RequiresAction
        )
    }
}

/// The statuses an execution can still leave.
const UNFINISHED: [ExecutionStatus; 3] = [
    ExecutionStatus::Queued,
    ExecutionStatus::Running,
    ExecutionStatus::RequiresAction,
];

/// What an execution was asked, as accepted (the `request` column).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExecutionRequest {
    /// A string, or an object given to the model as JSON.
    #[serde(default = "empty_input")]
    pub input: Value,
    /// The values of the agent's template variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<BTreeMap<String, String>>,
    /// Who it runs for, kept as given (`null` when an execute named no one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<Value>,
    #[serde(default)]
    pub options: RunOptions,
    /// The conversation whose message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    /// A case of an evaluation run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evaluation: bool,
}

fn empty_input() -> Value {
    Value::String(String::new())
}

impl ExecutionRequest {
    /// The input as the model reads it: a string as is, anything else as JSON.
    pub fn input_text(&self) -> String {
        match &self.input {
            Value::String(s) => s.clone(),
            Value::Null => String::new(),
            other => other.to_string(),
        }
    }
}

/// How to run and answer (the execute request's `options`, as accepted).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RunOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// Milliseconds it may run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
}

/// Why an execution did not succeed (the `error` column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionError {
    pub code: String,
    pub message: String,
}

text_enum! {
    /// What a step did.
    pub enum StepName {
        Template = "template",
        Retrieval = "retrieval",
        ModelCall = "model_call",
        ToolCall = "tool_call",
        Node = "node",
    }
}

text_enum! {
    /// How a step ended.
    pub enum StepStatus {
        Succeeded = "succeeded",
        Failed = "failed",
        /// A `function` tool call waiting for the caller's output.
        RequiresAction = "requires_action",
        /// Started, not finished: only in the live `tool_call.started` and `node.started`
        /// events, never stored.
        Running = "running",
    }
}

/// One recorded step of a run (an element of the `steps` column).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub name: StepName,
    /// For a flow's `node` step, the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    pub status: StepStatus,
    pub started_at: String,
    pub duration_ms: i64,
    /// What the step saw or did (its `error` when it failed).
    pub detail: Value,
}

/// One row of `executions`.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = e)]
pub struct ExecutionRow {
    pub id: String,
    pub org_id: String,
    pub agent_id: String,
    pub status: ExecutionStatus,
    /// The request as accepted.
    pub request: Json<ExecutionRequest>,
    /// The answer text, once succeeded.
    pub result: Option<String>,
    /// Why it did not succeed.
    pub error: Option<Json<ExecutionError>>,
    pub model_id: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
    /// The steps run.
    pub steps: Json<Vec<Step>>,
    #[diesel(serialize_as = Flag, deserialize_as = Flag)]
    pub cancel_requested: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

impl ExecutionRow {
    /// A new execution of `agent_id`, queued as `request`.
    pub fn queued(id: String, org_id: &str, agent_id: &str, request: ExecutionRequest) -> Self {
        ExecutionRow {
            id,
            org_id: org_id.to_string(),
            agent_id: agent_id.to_string(),
            status: ExecutionStatus::Queued,
            request: Json(request),
            result: None,
            error: None,
            model_id: None,
            input_tokens: 0,
            output_tokens: 0,
            cost_nano_usd: 0,
            steps: Json(Vec::new()),
            cancel_requested: false,
            created_at: crate::ids::now(),
            started_at: None,
            finished_at: None,
        }
    }

    /// The conversation whose message it answers.
    pub fn conversation_id(&self) -> Option<&str> {
        self.request.conversation_id.as_deref()
    }

    /// Whether it has finished (no status change follows).
    pub fn is_finished(&self) -> bool {
        self.status.is_finished()
    }

    /// Whether it has finished or waits for the caller (`requires_action`): what a waiting
    /// request answers with.
    pub fn is_settled(&self) -> bool {
        self.is_finished() || self.status == ExecutionStatus::RequiresAction
    }
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

/// What marks a `result` stored escaped (see [`stored_text`]): a noncharacter, then a tag.
const ESCAPED_TEXT: &str = "\u{FFFF}json:";

/// The `result` column's text as stored. PostgreSQL's `TEXT` cannot hold a NUL character
/// (SQLite's can), and an answer may quote one from the parameters, so a text with a NUL
/// is stored as [`ESCAPED_TEXT`] and its JSON string literal (`\u0000` for the NUL), on both
/// backends; so is a text that starts with the mark itself, so that reading back is exact.
/// Every other text, and every row written before, is stored as is.
fn stored_text(text: &str) -> String {
    if text.contains('\0') || text.starts_with(ESCAPED_TEXT) {
        format!("{ESCAPED_TEXT}{}", Value::String(text.to_string()))
    } else {
        text.to_string()
    }
}

/// The text [`stored_text`] stored.
fn read_text(stored: String) -> String {
    match stored
        .strip_prefix(ESCAPED_TEXT)
        .and_then(|json| serde_json::from_str::<String>(json).ok())
    {
        Some(text) => text,
        None => stored,
    }
}

/// The row as read: its `result` unescaped.
fn read_row(mut row: ExecutionRow) -> ExecutionRow {
    row.result = row.result.map(read_text);
    row
}

super::crud::identified!(ExecutionRow);

pub fn insert(conn: &mut DbConnection, row: &ExecutionRow) -> StoreResult<()> {
    let mut stored = row.clone();
    stored.result = stored.result.as_deref().map(stored_text);
    diesel::insert_into(e::table).values(stored).execute(conn)?;
    Ok(())
}

pub fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<ExecutionRow> {
    read_first(conn, e::table.filter(e::org_id.eq(org_id)).into_boxed(), id)
}

/// The row by id alone (workers, which act for whichever organization queued it).
pub fn get_any(conn: &mut DbConnection, id: &str) -> StoreResult<ExecutionRow> {
    read_first(conn, e::table.into_boxed(), id)
}

/// The row `id` of the rows `q` selects, as read ([`read_row`]).
fn read_first(
    conn: &mut DbConnection, q: e::BoxedQuery<'_, MultiBackend>, id: &str,
) -> StoreResult<ExecutionRow> {
    let row = q
        .filter(e::id.eq(id))
        .select(ExecutionRow::as_select())
        .first(conn)?;
    Ok(read_row(row))
}

/// What a list asks for.
#[derive(Debug, Clone, Default)]
pub struct ExecutionQuery {
    pub agent_id: Option<String>,
    pub status: Option<ExecutionStatus>,
}

fn filtered<'a>(org_id: &'a str, q: &'a ExecutionQuery) -> e::BoxedQuery<'a, MultiBackend> {
    let mut b = e::table.filter(e::org_id.eq(org_id)).into_boxed();
    if let Some(a) = &q.agent_id {
        b = b.filter(e::agent_id.eq(a));
    }
    if let Some(s) = q.status {
        b = b.filter(e::status.eq(s));
    }
    b
}

/// A page, newest first, and the number of matching rows.
pub fn list(
    conn: &mut DbConnection, org_id: &str, q: &ExecutionQuery, page: &Page,
) -> StoreResult<(Vec<ExecutionRow>, i64)> {
    let filtered = || filtered(org_id, q);
    let (rows, total) = super::crud::newest_first!(conn, e, ExecutionRow, filtered, page)?;
    Ok((rows.into_iter().map(read_row).collect(), total))
}

/// Execution `id` while its status is one of `from`: what a change of status updates (no row
/// once another change moved it on).
fn while_in<'a>(id: &'a str, from: &[ExecutionStatus]) -> WhileIn<'a> {
    e::table
        .filter(e::id.eq(id))
        .filter(e::status.eq_any(from.to_vec()))
}

type WhileIn<'a> = diesel::dsl::Filter<
    diesel::dsl::Filter<e::table, diesel::dsl::Eq<e::id, &'a str>>,
    diesel::dsl::EqAny<e::status, Vec<ExecutionStatus>>,
>;

/// `queued → running`, then `after` in the same transaction; `false` when it was no longer
/// queued (cancelled meanwhile). An execution resumed after a pause keeps its first start.
pub fn mark_running(
    conn: &mut DbConnection, id: &str, model_id: &str, after: &AfterChange,
) -> StoreResult<bool> {
    super::write_transaction(conn, |conn| {
        let started: Option<Option<String>> = e::table
            .filter(e::id.eq(id))
            .select(e::started_at)
            .first(conn)
            .optional()?;
        let started = started.flatten().unwrap_or_else(crate::ids::now);
        let n = diesel::update(while_in(id, &[ExecutionStatus::Queued]))
            .set((
                e::status.eq(ExecutionStatus::Running),
                e::started_at.eq(&started),
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
    pub status: ExecutionStatus,
    pub result: Option<String>,
    pub error: Option<ExecutionError>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
    /// The steps run; `None` keeps those stored.
    pub steps: Option<Vec<Step>>,
}

/// Ends an unfinished execution with `finish`, and records its usage (once a model was
/// called), inside the caller's write transaction. `None` when it had already ended (a
/// cancel won).
pub fn finish_in(
    conn: &mut DbConnection, id: &str, finish: &Finish,
) -> StoreResult<Option<ExecutionRow>> {
    finish_from(conn, id, finish, &UNFINISHED)
}

/// [`finish_in`], only from one of the statuses `from` (an expiry only ends a pause).
pub fn finish_from(
    conn: &mut DbConnection, id: &str, finish: &Finish, from: &[ExecutionStatus],
) -> StoreResult<Option<ExecutionRow>> {
    {
        let now = crate::ids::now();
        let n = diesel::update(while_in(id, from))
            .set((
                e::status.eq(finish.status),
                e::result.eq(finish.result.as_deref().map(stored_text)),
                e::error.eq(finish.error.clone().map(Json)),
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
                .set(e::steps.eq(Json(steps.clone())))
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
                    conversation_id: row.conversation_id().map(str::to_string),
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

/// A running execution paused for tool outputs: its steps so far, the usage of its model
/// calls so far, and where it goes on from.
#[derive(Debug, Clone)]
pub struct Pause {
    pub steps: Vec<Step>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_nano_usd: i64,
    pub continuation: Value,
}

/// `running → requires_action` with `pause`, inside the caller's write transaction; `None`
/// when it was no longer running (a cancel won).
pub fn pause_in(
    conn: &mut DbConnection, id: &str, pause: &Pause,
) -> StoreResult<Option<ExecutionRow>> {
    let n = diesel::update(while_in(id, &[ExecutionStatus::Running]))
        .set((
            e::status.eq(ExecutionStatus::RequiresAction),
            e::steps.eq(Json(pause.steps.clone())),
            e::input_tokens.eq(pause.input_tokens),
            e::output_tokens.eq(pause.output_tokens),
            e::cost_nano_usd.eq(pause.cost_nano_usd),
        ))
        .execute(conn)?;
    if n == 0 {
        return Ok(None);
    }
    put_continuation(conn, id, &pause.continuation)?;
    get_any(conn, id).map(Some)
}

/// Stores where execution `id` goes on from.
fn put_continuation(conn: &mut DbConnection, id: &str, state: &Value) -> StoreResult<()> {
    let (state, now) = (state.to_string(), crate::ids::now());
    diesel::delete(k::table.filter(k::execution_id.eq(id))).execute(conn)?;
    diesel::insert_into(k::table)
        .values((
            k::execution_id.eq(id),
            k::state.eq(state),
            k::updated_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Where execution `id` goes on from, if it ever paused.
pub fn continuation(conn: &mut DbConnection, id: &str) -> StoreResult<Option<Value>> {
    let text: Option<String> = k::table
        .filter(k::execution_id.eq(id))
        .select(k::state)
        .first(conn)
        .optional()?;
    text.map(|t| {
        serde_json::from_str(&t)
            .map_err(|e| StoreError::Corrupt(format!("the continuation of {id}: {e}")))
    })
    .transpose()
}

/// `requires_action → queued` with the steps and continuation the outputs made, inside the
/// caller's write transaction; `false` when it was no longer waiting.
pub fn requeue_in(
    conn: &mut DbConnection, id: &str, steps: &[Step], continuation: &Value,
) -> StoreResult<bool> {
    let n = diesel::update(while_in(id, &[ExecutionStatus::RequiresAction]))
        .set((
            e::status.eq(ExecutionStatus::Queued),
            e::steps.eq(Json(steps.to_vec())),
        ))
        .execute(conn)?;
    if n == 1 {
        put_continuation(conn, id, continuation)?;
    }
    Ok(n == 1)
}

/// Cancels an unfinished execution: `Ok(None)` when it had already finished.
pub fn cancel(
    conn: &mut DbConnection, org_id: &str, id: &str, after: &AfterChange,
) -> StoreResult<Result<ExecutionRow, ExecutionRow>> {
    super::write_transaction(conn, |conn| {
        let current = get(conn, org_id, id)?;
        if current.is_finished() {
            return Ok(Err(current));
        }
        let now = crate::ids::now();
        let error = ExecutionError {
            code: "CANCELLED".into(),
            message: "cancelled on request".into(),
        };
        diesel::update(while_in(id, &UNFINISHED))
            .set((
                e::status.eq(ExecutionStatus::Cancelled),
                e::cancel_requested.eq(Flag(true)),
                e::error.eq(Json(error)),
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

super::crud::inserts!(
    /// Records usage (tokens, cost, model) of an execution or a message.
    insert_usage,
    u,
    UsageRow
);

/// The usage records of an execution (tests and the README's walk-through).
pub fn usage_of(conn: &mut DbConnection, execution_id: &str) -> StoreResult<Vec<UsageRow>> {
    u::table
        .filter(u::execution_id.eq(execution_id))
        .select(UsageRow::as_select())
        .load(conn)
        .map_err(StoreError::from)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn text(v: &impl Serialize) -> String {
        serde_json::to_string(v).expect("serializes")
    }

    /// A result with a NUL is stored without one (PostgreSQL refuses it) and reads back
    /// exactly; so does one that looks escaped; any other text is stored as is.
    #[test]
    fn results_with_a_nul_round_trip_without_one() {
        for t in [
            "Ac\0me",
            "\0",
            "\u{FFFF}json:\"x\"",
            "\u{FFFF}json:not json",
            "plain \\u0000 text",
            "",
        ] {
            let stored = stored_text(t);
            assert!(!stored.contains('\0'), "{stored:?}");
            assert_eq!(read_text(stored), t);
        }
        assert_eq!(stored_text("plain"), "plain");
        assert_eq!(
            read_text("\u{FFFF}json:broken".into()),
            "\u{FFFF}json:broken"
        );
    }

    /// The typed columns write the bytes the `json!` documents they replace wrote, so rows
    /// stored before read back and rows stored now read the same elsewhere.
    #[test]
    fn typed_documents_write_what_the_untyped_ones_wrote() {
        let parameters: BTreeMap<String, String> = [("product".to_string(), "Acme".to_string())]
            .into_iter()
            .collect();
        // An execute, without and with a context, then answering a conversation.
        let mut request = ExecutionRequest {
            input: json!("hi"),
            parameters: Some(parameters.clone()),
            context: Some(Value::Null),
            options: RunOptions {
                wait: Some(true),
                timeout: Some(500),
                temperature: Some(0.5),
                ..RunOptions::default()
            },
            ..ExecutionRequest::default()
        };
        let before = json!({"input": "hi", "parameters": parameters, "context": null,
            "options": {"wait": true, "timeout": 500, "temperature": 0.5}});
        assert_eq!(text(&request), before.to_string());
        request.context = Some(json!({"user_id": "u1"}));
        request.conversation_id = Some("conv_1".into());
        let mut before = json!({"input": "hi", "parameters": parameters,
            "context": {"user_id": "u1"}, "options": {"wait": true, "timeout": 500, "temperature": 0.5}});
        before["conversation_id"] = json!("conv_1");
        assert_eq!(text(&request), before.to_string());
        // A conversation's message (no context) and an evaluation's case.
        let message = ExecutionRequest {
            input: json!("hello"),
            parameters: Some(BTreeMap::new()),
            options: RunOptions {
                timeout: Some(120_000),
                ..RunOptions::default()
            },
            ..ExecutionRequest::default()
        };
        let before = json!({"input": "hello", "parameters": {}, "options": {"timeout": 120_000}});
        assert_eq!(text(&message), before.to_string());
        let case = ExecutionRequest {
            input: json!("2+2?"),
            parameters: Some(BTreeMap::new()),
            evaluation: true,
            ..ExecutionRequest::default()
        };
        let before = json!({"input": "2+2?", "parameters": {}, "options": {}, "evaluation": true});
        assert_eq!(text(&case), before.to_string());
        assert_eq!(
            serde_json::from_str::<ExecutionRequest>(&before.to_string()).ok(),
            Some(case)
        );

        let error = ExecutionError {
            code: "CANCELLED".into(),
            message: "cancelled on request".into(),
        };
        let before = json!({"code": "CANCELLED", "message": "cancelled on request"});
        assert_eq!(text(&error), before.to_string());

        let step = Step {
            name: StepName::ModelCall,
            node_id: None,
            status: StepStatus::Failed,
            started_at: "2026-01-01T00:00:00.000000Z".into(),
            duration_ms: 12,
            detail: json!({"model": "m", "error": "boom"}),
        };
        let before = json!({"name": "model_call", "status": "failed",
            "started_at": "2026-01-01T00:00:00.000000Z", "duration_ms": 12,
            "detail": {"model": "m", "error": "boom"}});
        assert_eq!(text(&vec![step.clone()]), json!([before]).to_string());
        assert_eq!(serde_json::from_value::<Step>(before).ok(), Some(step));
    }

    #[test]
    fn a_request_stored_without_input_or_options_reads_with_their_defaults() {
        let request: ExecutionRequest = serde_json::from_str("{}").expect("reads");
        assert_eq!(request.input, json!(""));
        assert_eq!(request.options, RunOptions::default());
        assert_eq!(request.input_text(), "");
        let object: ExecutionRequest =
            serde_json::from_str(r#"{"input": {"q": 1}}"#).expect("reads");
        assert_eq!(object.input_text(), r#"{"q":1}"#);
    }

    #[test]
    fn only_queued_running_and_waiting_executions_can_still_change() {
        let open: Vec<_> = ExecutionStatus::ALL
            .iter()
            .filter(|s| !s.is_finished())
            .collect();
        assert_eq!(
            open,
            [
                &ExecutionStatus::Queued,
                &ExecutionStatus::Running,
                &ExecutionStatus::RequiresAction
            ]
        );
        assert_eq!(ExecutionStatus::TimedOut.as_str(), "timed_out");
    }
}
