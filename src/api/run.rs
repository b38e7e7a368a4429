//! Running an agent, for executions and conversations alike: starting an execution (checks,
//! row and job in one transaction, once per `Idempotency-Key`), waiting for it, following its
//! events, and the API forms of an execution and of the messages it answers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentplane_api::EventStreamOf;
use agentplane_api::models::{
    self, Execution, ExecutionError, ExecutionEvent, ExecutionEventType, ExecutionResult,
    ExecutionStep, ExecutionUsage, Message, MessageRole, RequiredAction, RequiredActionType,
    ToolCall,
};
use poem::web::sse::Event;
use poem_openapi::payload::EventStream;
use poem_openapi::types::ToJSON;
use serde_json::{Value, json};
use tokio::sync::broadcast::{Receiver, error::RecvError};
use tokio::sync::mpsc;

use super::Handlers;
use super::idem::{self, Created, NewKeyed};
use crate::auth::Caller;
use crate::db::conversations::MessageRow;
use crate::db::executions::{self as store, ExecutionRequest, ExecutionRow, ExecutionStatus, Step};
use crate::db::types::same_variants;
use crate::db::{Store, StoreError};
use crate::engine::runner::{self, AgentSettings, Live, LiveEvent, StepEvent};
use crate::error::{Failure, Kind, detail, store_error};
use crate::jobs;

pub(crate) const NOT_FOUND: &str = "EXECUTION_NOT_FOUND";
/// How often a follower re-reads an execution it hears nothing about.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// The longest a waited execution holds the request beyond the execution's own timeout.
const WAIT_GRACE: Duration = Duration::from_secs(5);

same_variants!(ExecutionStatus <=> models::ExecutionStatus {
    Queued, Running, Succeeded, Failed, Cancelled, TimedOut, RequiresAction, Expired,
});

impl From<&Step> for ExecutionStep {
    fn from(s: &Step) -> Self {
        ExecutionStep {
            name: s.name.as_str().to_string(),
            status: s.status.as_str().to_string(),
            node_id: s.node_id.clone(),
            started_at: s.started_at.clone(),
            duration_ms: s.duration_ms,
            detail: match &s.detail {
                Value::Object(_) => s.detail.clone(),
                _ => json!({}),
            },
        }
    }
}

/// How long it ran, once started and finished.
fn duration_ms(row: &ExecutionRow) -> Option<i64> {
    let (Some(a), Some(b)) = (&row.started_at, &row.finished_at) else {
        return None;
    };
    match (
        chrono::DateTime::parse_from_rfc3339(a),
        chrono::DateTime::parse_from_rfc3339(b),
    ) {
        (Ok(a), Ok(b)) => Some((b - a).num_milliseconds().max(0)),
        _ => None,
    }
}

/// The API form of a stored execution.
impl From<&ExecutionRow> for Execution {
    fn from(row: &ExecutionRow) -> Self {
        let cost = row.cost_nano_usd as f64 / 1e9;
        let tokens = row.input_tokens + row.output_tokens;
        Execution {
            id: row.id.clone(),
            agent_id: row.agent_id.clone(),
            conversation_id: row.conversation_id().map(str::to_string),
            status: row.status.into(),
            input: row.request.input.clone(),
            parameters: row.request.parameters.clone(),
            result: row.result.as_ref().map(|output| ExecutionResult {
                output: output.clone(),
                tokens_used: tokens,
                cost,
            }),
            error: row.error.as_ref().map(|e| ExecutionError {
                code: e.code.clone(),
                message: e.message.clone(),
            }),
            usage: ExecutionUsage {
                model_id: row.model_id.clone(),
                input_tokens: row.input_tokens,
                output_tokens: row.output_tokens,
                total_tokens: tokens,
                cost_usd: cost,
            },
            required_action: required_action(row),
            steps: row.steps.iter().map(ExecutionStep::from).collect(),
            created_at: row.created_at.clone(),
            started_at: row.started_at.clone(),
            completed_at: row.finished_at.clone(),
            duration_ms: duration_ms(row),
        }
    }
}

/// What a paused execution waits for: the calls of its steps that wait for their output.
fn required_action(row: &ExecutionRow) -> Option<RequiredAction> {
    if row.status != ExecutionStatus::RequiresAction {
        return None;
    }
    let tool_calls = crate::engine::act::pending_calls(&row.steps)
        .into_iter()
        .map(|c| ToolCall {
            id: c.id,
            tool_id: c.tool_id,
            name: c.name,
            arguments: c.arguments,
        })
        .collect();
    Some(RequiredAction {
        type_: RequiredActionType::SubmitToolOutputs,
        tool_calls,
    })
}

/// The event a step's live news is.
fn event_type(event: StepEvent) -> ExecutionEventType {
    match event {
        StepEvent::ToolCallStarted => ExecutionEventType::ToolCallStarted,
        StepEvent::ToolCallCompleted => ExecutionEventType::ToolCallCompleted,
        StepEvent::ToolCallFailed => ExecutionEventType::ToolCallFailed,
        StepEvent::NodeStarted => ExecutionEventType::NodeStarted,
        StepEvent::NodeCompleted => ExecutionEventType::NodeCompleted,
        StepEvent::NodeFailed => ExecutionEventType::NodeFailed,
    }
}

/// The API form of a stored message.
impl From<&MessageRow> for Message {
    fn from(row: &MessageRow) -> Self {
        Message {
            id: row.id.clone(),
            conversation_id: row.conversation_id.clone(),
            role: MessageRole::from_wire(&row.role).unwrap_or(MessageRole::User),
            content: row.content.clone(),
            execution_id: row.execution_id.clone(),
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            timestamp: row.created_at.clone(),
        }
    }
}

/// How long to wait for an execution given `timeout_ms`, its own timeout.
pub(crate) fn wait_limit(timeout_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0)) + WAIT_GRACE
}

/// Listening to an execution's live events from before it starts (so no token is missed);
/// dropped unkept (the start failed, say), it stops listening.
pub(crate) struct Listening {
    live: Arc<Live>,
    id: String,
    heard: Option<Receiver<LiveEvent>>,
}

impl Listening {
    pub(crate) fn new(live: Arc<Live>, id: String) -> Self {
        let heard = Some(live.subscribe(&id));
        Listening { live, id, heard }
    }

    /// The events, for the caller to follow (and release).
    pub(crate) fn keep(mut self) -> Receiver<LiveEvent> {
        self.heard
            .take()
            .expect("a listening holds its receiver until kept")
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(heard) = self.heard.take() {
            drop(heard);
            self.live.release(&self.id);
        }
    }
}

/// An execution's events as an SSE body: follows the stored row (any replica) and, on the
/// replica running it, its token deltas. Ends after `execution.completed`/`failed`.
pub(crate) fn follow(
    store: Store, live: Arc<Live>, org_id: String, id: String, heard: Receiver<LiveEvent>,
) -> EventStream<EventStreamOf<ExecutionEvent>> {
    EventStream::new(follow_events(store, live, org_id, id, heard))
        .keep_alive(Duration::from_secs(15))
        .to_event(|e| {
            let name = e.type_.as_str();
            Event::message(e.to_json_string()).event_type(name)
        })
}

/// An execution's events, ending after the last (the stream behind SSE and WebSocket
/// followers alike).
pub(crate) fn follow_events(
    store: Store, live: Arc<Live>, org_id: String, id: String, heard: Receiver<LiveEvent>,
) -> EventStreamOf<ExecutionEvent> {
    let (tx, rx) = mpsc::channel::<ExecutionEvent>(64);
    let follower = Follower {
        store,
        live,
        org_id,
        id,
        tx,
        sequence: 0,
        started: false,
    };
    tokio::spawn(follower.run(heard));
    super::channel_stream(rx)
}

/// The task behind [`follow_events`].
struct Follower {
    store: Store,
    live: Arc<Live>,
    org_id: String,
    id: String,
    tx: mpsc::Sender<ExecutionEvent>,
    sequence: i64,
    started: bool,
}

/// Whether a follower goes on after reading the row.
#[derive(PartialEq, Eq)]
enum Next {
    Listen,
    End,
}

impl Follower {
    async fn run(mut self, mut heard: Receiver<LiveEvent>) {
        let mut read = true;
        loop {
            if read && self.read(&mut heard).await == Next::End {
                break;
            }
            match self.wait(&mut heard).await {
                Some(again) => read = again,
                None => break,
            }
        }
        drop(heard);
        self.live.release(&self.id);
    }

    fn event(&mut self, type_: ExecutionEventType) -> ExecutionEvent {
        let e = ExecutionEvent {
            type_,
            execution_id: self.id.clone(),
            sequence: self.sequence,
            step: None,
            delta: None,
            execution: None,
            message: None,
        };
        self.sequence += 1;
        e
    }

    /// Sends `e`; `false` once the client went away.
    async fn send(&self, e: ExecutionEvent) -> bool {
        self.tx.send(e).await.is_ok()
    }

    /// Sends `execution.started`, unless sent already.
    async fn start(&mut self) -> bool {
        if self.started {
            return true;
        }
        self.started = true;
        let e = self.event(ExecutionEventType::ExecutionStarted);
        self.send(e).await
    }

    async fn token(&mut self, piece: String) -> bool {
        let mut e = self.event(ExecutionEventType::Token);
        e.delta = Some(piece);
        self.send(e).await
    }

    /// Waits for a live event or the next poll: whether to read the row again, `None` to stop.
    async fn wait(&mut self, heard: &mut Receiver<LiveEvent>) -> Option<bool> {
        let woke = tokio::select! {
            heard = heard.recv() => Some(heard),
            () = tokio::time::sleep(FOLLOW_POLL) => None,
            () = self.tx.closed() => return None,
        };
        match woke {
            None | Some(Ok(LiveEvent::Changed) | Err(RecvError::Lagged(_))) => Some(true),
            Some(Ok(LiveEvent::Token(piece))) => {
                let _ = self.start().await;
                self.token(piece).await.then_some(false)
            }
            Some(Ok(LiveEvent::Step(event, step))) => {
                let _ = self.start().await;
                let mut e = self.event(event_type(event));
                e.step = Some(ExecutionStep::from(&*step));
                self.send(e).await.then_some(false)
            }
            Some(Err(RecvError::Closed)) => {
                tokio::time::sleep(FOLLOW_POLL).await;
                Some(true)
            }
        }
    }

    /// Reads the row: announces the start, and the end once it finished.
    async fn read(&mut self, heard: &mut Receiver<LiveEvent>) -> Next {
        let (o, i) = (self.org_id.clone(), self.id.clone());
        let Ok(row) = self.store.run(move |conn| store::get(conn, &o, &i)).await else {
            return Next::End;
        };
        let execution = Execution::from(&row);
        if row.status != ExecutionStatus::Queued && !self.start().await {
            return Next::End;
        }
        if row.is_settled() {
            self.finish(&row, execution, heard).await;
            return Next::End;
        }
        Next::Listen
    }

    /// The end of a finished (or paused) execution: the deltas heard before the end was read
    /// (in order), its steps, then the last event with the execution (and the reply to a
    /// message).
    async fn finish(
        &mut self, row: &ExecutionRow, execution: Execution, heard: &mut Receiver<LiveEvent>,
    ) {
        while let Ok(heard_before) = heard.try_recv() {
            let sent = match heard_before {
                LiveEvent::Token(piece) => self.token(piece).await,
                LiveEvent::Step(event, step) => {
                    let mut e = self.event(event_type(event));
                    e.step = Some(ExecutionStep::from(&*step));
                    self.send(e).await
                }
                LiveEvent::Changed => true,
            };
            if !sent {
                return;
            }
        }
        for step in &execution.steps {
            let mut e = self.event(ExecutionEventType::Step);
            e.step = Some(step.clone());
            if !self.send(e).await {
                return;
            }
        }
        let kind = match row.status {
            ExecutionStatus::Succeeded => ExecutionEventType::ExecutionCompleted,
            ExecutionStatus::RequiresAction => ExecutionEventType::ExecutionRequiresAction,
            _ => ExecutionEventType::ExecutionFailed,
        };
        let mut last = self.event(kind);
        last.execution = Some(execution);
        last.message = self.reply_to(row).await;
        let _ = self.send(last).await;
    }

    /// The assistant's reply an execution answering a conversation's message wrote.
    async fn reply_to(&self, row: &ExecutionRow) -> Option<Message> {
        row.conversation_id()?;
        let i = row.id.clone();
        let reply = self
            .store
            .run(move |conn| crate::db::conversations::message_of(conn, &i, "assistant"))
            .await;
        reply.ok().flatten().as_ref().map(Message::from)
    }
}

/// An execution to start.
pub(crate) struct Start {
    /// Its id (subscribe to it first to hear all of it).
    pub id: String,
    pub agent_id: String,
    /// The accepted request (`input`, `parameters`, `context`, `options`).
    pub request: ExecutionRequest,
    /// The values of the agent's template variables.
    pub parameters: BTreeMap<String, String>,
    /// The conversation whose message it answers.
    pub conversation_id: Option<String>,
    /// The operation, `Idempotency-Key` and request hash of a keyed create.
    pub idempotency: Option<(&'static str, Option<String>, String)>,
    /// What else its finish writes.
    pub also: Option<runner::AfterFinish>,
}

impl Handlers {
    /// Waits until execution `id` finishes or `limit` passes; the row as last read.
    pub(crate) async fn wait_for(
        &self, org: &str, id: &str, heard: Receiver<LiveEvent>, limit: Duration,
    ) -> Result<ExecutionRow, StoreError> {
        runner::wait_finished(&self.store, org, id, heard, limit).await
    }

    /// Accepts an execution: checks the agent and its template variables, stores the
    /// execution and its job in one transaction (once per `Idempotency-Key`: a retry answers
    /// the first execution, another id).
    pub(crate) async fn start_execution(
        &self, caller: &Caller, start: Start,
    ) -> Result<ExecutionRow, Failure> {
        self.check_runnable(caller, &start.agent_id, start.parameters)
            .await?;
        let request = ExecutionRequest {
            conversation_id: start.conversation_id,
            ..start.request
        };
        let row = ExecutionRow::queued(start.id, &caller.org_id, &start.agent_id, request);
        let (operation, key, hash) = start.idempotency.unwrap_or(("", None, String::new()));
        let keyed = NewKeyed {
            org_id: row.org_id.clone(),
            operation,
            key,
            request_hash: hash,
            resource_id: row.id.clone(),
        };
        let (job, org, also) = (runner::job_for(&row), row.org_id.clone(), start.also);
        let created = idem::create_keyed(
            &self.store,
            keyed,
            move |conn| {
                store::insert(conn, &row)?;
                jobs::enqueue(conn, &job)?;
                if let Some(also) = &also {
                    also(conn, &row)?;
                }
                Ok(row.clone())
            },
            move |conn, id| store::get(conn, &org, id),
        )
        .await
        .map_err(store_error(NOT_FOUND, &caller.request_id))?;
        match created {
            Created::New(row) => {
                self.pool.wake();
                Ok(row)
            }
            Created::Replayed(row) => Ok(row),
            Created::KeyReused => Err(idem::key_reused(&caller.request_id)),
        }
    }

    /// Whether the agent can run with `given`: it serves (not scaled to 0 replicas), and
    /// every variable of its prompt template has a value.
    async fn check_runnable(
        &self, caller: &Caller, agent_id: &str, given: BTreeMap<String, String>,
    ) -> Result<(), Failure> {
        let rid = caller.request_id.as_str();
        let (org, a) = (caller.org_id.clone(), agent_id.to_string());
        let (missing, stopped) = self
            .store
            .run(move |conn| {
                let agent = crate::db::agents::get(conn, &org, &a)?;
                let stopped = crate::db::deployments::scaled_to_zero(conn, &a)?;
                let missing = runner::missing_variables(
                    conn,
                    &org,
                    &AgentSettings::of(&agent.content.body),
                    &given,
                )?;
                Ok((missing, stopped))
            })
            .await
            .map_err(store_error(super::agents::NOT_FOUND, rid))?;
        if stopped {
            return Err(Failure::with_details(
                Kind::Conflict,
                "AGENT_NOT_SERVING",
                "the agent's deployment is scaled to 0 replicas; scale it up to run it",
                vec![detail(
                    "agent_id",
                    "scaled_to_zero",
                    "POST /v1/agents/{agent_id}/scale with replicas of 1 or more",
                )],
                rid,
            ));
        }
        if missing.is_empty() {
            return Ok(());
        }
        let details = missing
            .iter()
            .map(|name| {
                detail(
                    &format!("parameters.{name}"),
                    "required",
                    format!("the agent's prompt template needs a value for `{name}`"),
                )
            })
            .collect();
        Err(Failure::with_details(
            Kind::Unprocessable,
            "MISSING_VARIABLES",
            format!(
                "the agent's prompt template needs values for: {}",
                missing.join(", ")
            ),
            details,
            rid,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_map_roles_and_times() {
        let row = MessageRow {
            id: "msg_1".into(),
            org_id: "org".into(),
            conversation_id: "conv_1".into(),
            role: "assistant".into(),
            content: "Hi".into(),
            execution_id: Some("exec_1".into()),
            input_tokens: 3,
            output_tokens: 1,
            created_at: "2026-01-01T00:00:00.000000Z".into(),
        };
        let m = Message::from(&row);
        assert_eq!(m.role, MessageRole::Assistant);
        assert_eq!(m.timestamp, row.created_at);
    }
}
