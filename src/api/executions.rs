//! Executions: `POST /v1/agents/{id}/execute` (202 to poll, 200 waited, or an SSE stream)
//! and the executions resource (get, list, cancel, logs, events).

use std::collections::BTreeMap;
use std::time::Duration;

use agentplane_api::models::{
    Execution, ExecutionError, ExecutionEvent, ExecutionEventType, ExecutionList, ExecutionLog,
    ExecutionLogLevel, ExecutionLogs, ExecutionResult, ExecutionStatus, ExecutionStep,
    ExecutionUsage,
};
use agentplane_api::*;
use poem::web::sse::Event;
use poem_openapi::payload::{EventStream, Json};
use poem_openapi::types::ToJSON;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::broadcast::error::RecvError;

use super::Handlers;
use super::idem::{self, Created, Keyed};
use super::paging::{PageRequest, etag_matches};
use crate::auth::Caller;
use crate::db::StoreError;
use crate::db::executions::{self as store, ExecutionQuery, ExecutionRow};
use crate::engine::runner::{self, AgentSettings, Live, LiveEvent};
use crate::error::{Failure, Kind, detail};
use crate::failure_response;
use crate::jobs;

failure_response!(StreamExecutionResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(ExecuteAgentResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Conflict => Conflict, Unprocessable => UnprocessableEntity });
failure_response!(ListExecutionsResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden });
failure_response!(GetExecutionResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(CancelExecutionResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound, Conflict => Conflict });
failure_response!(GetExecutionLogsResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });
failure_response!(StreamExecutionEventsResponse { BadRequest => BadRequest, Unauthorized => Unauthorized, Forbidden => Forbidden, NotFound => NotFound });

pub(crate) const NOT_FOUND: &str = "EXECUTION_NOT_FOUND";
const EXECUTE_OPERATION: &str = "executeAgent";
/// How often a follower re-reads an execution it hears nothing about.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// The longest a waited execute holds the request beyond the execution's own timeout.
const WAIT_GRACE: Duration = Duration::from_secs(5);

fn corrupt(row: &ExecutionRow, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("execution {}: {what}", row.id))
}

/// The API form of a stored execution.
pub(crate) fn row_to_execution(row: &ExecutionRow) -> Result<Execution, StoreError> {
    let request: Value = serde_json::from_str(&row.request).map_err(|e| corrupt(row, e))?;
    let steps: Vec<Value> = serde_json::from_str(&row.steps).map_err(|e| corrupt(row, e))?;
    let steps = steps
        .into_iter()
        .map(|s| ExecutionStep {
            name: s["name"].as_str().unwrap_or_default().to_string(),
            status: s["status"].as_str().unwrap_or_default().to_string(),
            started_at: s["started_at"].as_str().unwrap_or_default().to_string(),
            duration_ms: s["duration_ms"].as_i64().unwrap_or(0),
            detail: match &s["detail"] {
                Value::Object(_) => s["detail"].clone(),
                _ => json!({}),
            },
        })
        .collect();
    let status = ExecutionStatus::from_wire(&row.status).ok_or_else(|| corrupt(row, "status"))?;
    let cost = row.cost_nano_usd as f64 / 1e9;
    let tokens = row.input_tokens + row.output_tokens;
    let error = match &row.error {
        Some(text) => {
            let v: Value = serde_json::from_str(text).map_err(|e| corrupt(row, e))?;
            Some(ExecutionError {
                code: v["code"].as_str().unwrap_or("EXECUTION_FAILED").to_string(),
                message: v["message"].as_str().unwrap_or_default().to_string(),
            })
        }
        None => None,
    };
    let duration_ms = match (&row.started_at, &row.finished_at) {
        (Some(a), Some(b)) => {
            match (
                chrono::DateTime::parse_from_rfc3339(a),
                chrono::DateTime::parse_from_rfc3339(b),
            ) {
                (Ok(a), Ok(b)) => Some((b - a).num_milliseconds().max(0)),
                _ => None,
            }
        }
        _ => None,
    };
    Ok(Execution {
        id: row.id.clone(),
        agent_id: row.agent_id.clone(),
        conversation_id: row.conversation_id(),
        status,
        input: request.get("input").cloned().unwrap_or(json!("")),
        parameters: request["parameters"].as_object().map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        }),
        result: row.result.as_ref().map(|output| ExecutionResult {
            output: output.clone(),
            tokens_used: tokens,
            cost,
        }),
        error,
        usage: ExecutionUsage {
            model_id: row.model_id.clone(),
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            total_tokens: tokens,
            cost_usd: cost,
        },
        steps,
        created_at: row.created_at.clone(),
        started_at: row.started_at.clone(),
        completed_at: row.finished_at.clone(),
        duration_ms,
    })
}

/// The ETag of an execution: it changes with every status, step and result change.
fn execution_etag(row: &ExecutionRow) -> String {
    let digest = sha2::Sha256::digest(format!(
        "{}|{:?}|{:?}|{}",
        row.status, row.started_at, row.finished_at, row.steps
    ));
    format!("\"{}\"", hex::encode(&digest[..12]))
}

/// The log lines of an execution, from its stored steps.
fn logs_of(execution: &Execution) -> Vec<ExecutionLog> {
    let mut out = Vec::new();
    let line = |t: &str, level, message: String, step: Option<String>| ExecutionLog {
        timestamp: t.to_string(),
        level,
        message,
        step,
    };
    out.push(line(
        &execution.created_at,
        ExecutionLogLevel::Info,
        "Execution accepted".into(),
        None,
    ));
    if let Some(t) = &execution.started_at {
        out.push(line(
            t,
            ExecutionLogLevel::Info,
            "Starting execution".into(),
            None,
        ));
    }
    for s in &execution.steps {
        let failed = s.status != "succeeded";
        let mut message = format!("{} {} in {} ms", s.name, s.status, s.duration_ms);
        if let Some(e) = s.detail.get("error").and_then(Value::as_str) {
            message.push_str(&format!(": {e}"));
        }
        out.push(line(
            &s.started_at,
            if failed {
                ExecutionLogLevel::Error
            } else {
                ExecutionLogLevel::Info
            },
            message,
            Some(s.name.clone()),
        ));
    }
    if let Some(t) = &execution.completed_at {
        let (level, message) = match &execution.error {
            None => (
                ExecutionLogLevel::Info,
                format!(
                    "Execution {} ({} tokens, ${:.6})",
                    execution.status.as_str(),
                    execution.usage.total_tokens,
                    execution.usage.cost_usd
                ),
            ),
            Some(e) => (
                ExecutionLogLevel::Error,
                format!(
                    "Execution {}: {} ({})",
                    execution.status.as_str(),
                    e.message,
                    e.code
                ),
            ),
        };
        out.push(line(t, level, message, None));
    }
    out
}

/// Whether the caller asked for a stream: `options.stream`, or an `Accept` naming
/// `text/event-stream` (before JSON, when it names both).
fn wants_stream(option: Option<bool>, accept: Option<&str>) -> bool {
    if let Some(stream) = option {
        return stream;
    }
    let Some(accept) = accept else { return false };
    for media in accept.split(',') {
        let essence = media.split(';').next().unwrap_or("").trim();
        if essence.eq_ignore_ascii_case("text/event-stream") {
            return true;
        }
        if essence.eq_ignore_ascii_case("application/json") {
            return false;
        }
    }
    false
}

/// An execution's events as an SSE body: follows the stored row (any replica) and, on the
/// replica running it, its token deltas. Ends after `execution.completed`/`failed`.
pub(crate) fn follow(
    store: crate::db::Store,
    live: std::sync::Arc<Live>,
    org_id: String,
    id: String,
    heard: tokio::sync::broadcast::Receiver<LiveEvent>,
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
    store: crate::db::Store,
    live: std::sync::Arc<Live>,
    org_id: String,
    id: String,
    mut heard: tokio::sync::broadcast::Receiver<LiveEvent>,
) -> EventStreamOf<ExecutionEvent> {
    let (tx, rx) = tokio::sync::mpsc::channel::<ExecutionEvent>(64);
    tokio::spawn(async move {
        let mut sequence = 0i64;
        let mut started = false;
        let mut read = true;
        let event = |sequence: &mut i64, type_| {
            let e = ExecutionEvent {
                type_,
                execution_id: id.clone(),
                sequence: *sequence,
                step: None,
                delta: None,
                execution: None,
                message: None,
            };
            *sequence += 1;
            e
        };
        'follow: loop {
            if read {
                read = false;
                let (o, i) = (org_id.clone(), id.clone());
                let Ok(row) = store.run(move |conn| store::get(conn, &o, &i)).await else {
                    break;
                };
                let Ok(execution) = row_to_execution(&row) else {
                    break;
                };
                if row.status != "queued" && !started {
                    started = true;
                    if tx
                        .send(event(&mut sequence, ExecutionEventType::ExecutionStarted))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                if row.is_finished() {
                    // Deltas heard before the end was read still go out, in order.
                    while let Ok(heard_before) = heard.try_recv() {
                        if let LiveEvent::Token(piece) = heard_before {
                            let mut e = event(&mut sequence, ExecutionEventType::Token);
                            e.delta = Some(piece);
                            if tx.send(e).await.is_err() {
                                break 'follow;
                            }
                        }
                    }
                    for step in &execution.steps {
                        let mut e = event(&mut sequence, ExecutionEventType::Step);
                        e.step = Some(step.clone());
                        if tx.send(e).await.is_err() {
                            break 'follow;
                        }
                    }
                    let kind = if row.status == "succeeded" {
                        ExecutionEventType::ExecutionCompleted
                    } else {
                        ExecutionEventType::ExecutionFailed
                    };
                    let mut last = event(&mut sequence, kind);
                    last.execution = Some(execution);
                    if row.conversation_id().is_some() {
                        let i = row.id.clone();
                        if let Ok(Some(reply)) = store
                            .run(move |conn| {
                                crate::db::conversations::message_of(conn, &i, "assistant")
                            })
                            .await
                        {
                            last.message = Some(super::conversations::row_to_message(&reply));
                        }
                    }
                    let _ = tx.send(last).await;
                    break;
                }
            }
            tokio::select! {
                heard = heard.recv() => match heard {
                    Ok(LiveEvent::Token(piece)) => {
                        if !started {
                            started = true;
                            let _ = tx.send(event(&mut sequence, ExecutionEventType::ExecutionStarted)).await;
                        }
                        let mut e = event(&mut sequence, ExecutionEventType::Token);
                        e.delta = Some(piece);
                        if tx.send(e).await.is_err() {
                            break;
                        }
                    }
                    Ok(LiveEvent::Changed) | Err(RecvError::Lagged(_)) => read = true,
                    Err(RecvError::Closed) => {
                        tokio::time::sleep(FOLLOW_POLL).await;
                        read = true;
                    }
                },
                () = tokio::time::sleep(FOLLOW_POLL) => read = true,
                () = tx.closed() => break,
            }
        }
        drop(heard);
        live.release(&id);
    });
    super::channel_stream(rx)
}

/// Forwards an execution's events to a WebSocket as text frames, then closes it. A client
/// that goes away ends the forwarding.
async fn forward_to_socket(
    socket: poem::web::websocket::WebSocketStream,
    mut events: EventStreamOf<ExecutionEvent>,
) {
    use futures_util::{SinkExt, StreamExt};
    use poem::web::websocket::Message;
    let (mut sink, mut incoming) = socket.split();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(e) => {
                    if sink.send(Message::Text(e.to_json_string())).await.is_err() {
                        return;
                    }
                }
                None => break,
            },
            message = incoming.next() => match message {
                Some(Ok(Message::Ping(data))) => {
                    if sink.send(Message::Pong(data)).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}

impl Handlers {
    async fn execution_row(&self, caller: &Caller, id: String) -> Result<ExecutionRow, Failure> {
        let org = caller.org_id.clone();
        self.store
            .run(move |conn| store::get(conn, &org, &id))
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, &caller.request_id))
    }

    /// Waits until execution `id` finishes or `limit` passes; the row as last read.
    pub(crate) async fn wait_for(
        &self,
        org: &str,
        id: &str,
        heard: tokio::sync::broadcast::Receiver<LiveEvent>,
        limit: Duration,
    ) -> Result<ExecutionRow, StoreError> {
        runner::wait_finished(&self.store, org, id, heard, limit).await
    }

    /// Accepts execution `id`: checks the agent and its template variables, stores the
    /// execution and its job in one transaction (once per `Idempotency-Key`: a retry answers
    /// the first execution, another id). Subscribe to `id` first to hear all of it.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call per entry point, each field named"
    )]
    pub(crate) async fn start_execution(
        &self,
        caller: &Caller,
        id: String,
        agent_id: String,
        request: Value,
        parameters: BTreeMap<String, String>,
        conversation_id: Option<String>,
        idempotency: Option<(&'static str, Option<String>, String)>,
        also: Option<runner::AfterFinish>,
    ) -> Result<ExecutionRow, Failure> {
        let rid = caller.request_id.clone();
        let org = caller.org_id.clone();
        let (a, given) = (agent_id.clone(), parameters);
        let missing = self
            .store
            .run(move |conn| {
                let agent = crate::db::agents::get(conn, &org, &a)?;
                let stopped = crate::db::deployments::scaled_to_zero(conn, &a)?;
                let missing =
                    runner::missing_variables(conn, &org, &AgentSettings::of(&agent.body), &given)?;
                Ok((missing, stopped))
            })
            .await
            .map_err(|e| Failure::from_store(e, super::agents::NOT_FOUND, &rid))?;
        let (missing, stopped) = missing;
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
                &rid,
            ));
        }
        if !missing.is_empty() {
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
            return Err(Failure::with_details(
                Kind::Unprocessable,
                "MISSING_VARIABLES",
                format!(
                    "the agent's prompt template needs values for: {}",
                    missing.join(", ")
                ),
                details,
                &rid,
            ));
        }
        let mut request = request;
        if let Some(c) = conversation_id {
            request["conversation_id"] = Value::String(c);
        }
        let row = ExecutionRow::queued(id, &caller.org_id, &agent_id, &request);
        let (operation, key, hash) = idempotency.unwrap_or(("", None, String::new()));
        let created = self
            .store
            .run(move |conn| {
                let keyed = Keyed {
                    org_id: &row.org_id,
                    operation,
                    key: key.as_deref(),
                    request_hash: &hash,
                    resource_id: &row.id,
                };
                let job = runner::job_for(&row);
                idem::create_once(
                    conn,
                    &keyed,
                    |conn| {
                        store::insert(conn, &row)?;
                        jobs::enqueue(conn, &job)?;
                        if let Some(also) = &also {
                            also(conn, &row)?;
                        }
                        Ok(row.clone())
                    },
                    |conn, id| store::get(conn, &row.org_id, id),
                )
            })
            .await
            .map_err(|e| Failure::from_store(e, NOT_FOUND, &rid))?;
        match created {
            Created::New(row) => {
                self.pool.wake();
                Ok(row)
            }
            Created::Replayed(row) => Ok(row),
            Created::KeyReused => Err(idem::key_reused(&rid)),
        }
    }

    async fn execute(&self, caller: &Caller, params: ExecuteAgentParams) -> ExecuteAgentResponse {
        let rid = caller.request_id.clone();
        let body = params.body;
        let hash = idem::request_hash(&body.to_json().unwrap_or_default());
        let mut parameters = body.variables.clone().unwrap_or_default();
        parameters.extend(body.parameters.clone().unwrap_or_default());
        let options = body.options.clone().unwrap_or_default();
        let input = match (&body.input, &body.query) {
            (Some(i), _) => i.clone(),
            (None, Some(q)) => Value::String(q.clone()),
            (None, None) => Value::String(String::new()),
        };
        let request = json!({
            "input": input,
            "parameters": parameters,
            "context": body.context.to_json(),
            "options": options.to_json(),
        });
        // Listen before the worker can start it, so no token is missed.
        let id = crate::ids::new_id("exec");
        let live = self.runner.live.clone();
        let heard = live.subscribe(&id);
        let started = self
            .start_execution(
                caller,
                id.clone(),
                params.agent_id,
                request,
                parameters,
                None,
                Some((EXECUTE_OPERATION, params.idempotency_key, hash)),
                None,
            )
            .await;
        let row = match started {
            Ok(row) => row,
            Err(f) => {
                drop(heard);
                live.release(&id);
                return f.into();
            }
        };
        let heard = if row.id == id {
            heard
        } else {
            // A replay: follow the first request's execution instead.
            drop(heard);
            live.release(&id);
            live.subscribe(&row.id)
        };
        if wants_stream(options.stream, params.accept.as_deref()) {
            return ExecuteAgentResponse::OkEventStream(follow(
                self.store.clone(),
                self.runner.live.clone(),
                caller.org_id.clone(),
                row.id.clone(),
                heard,
            ));
        }
        let row = if options.wait == Some(true) {
            let timeout = options.timeout.unwrap_or(runner::DEFAULT_TIMEOUT_MS);
            let limit = Duration::from_millis(u64::try_from(timeout).unwrap_or(0)) + WAIT_GRACE;
            match self.wait_for(&caller.org_id, &row.id, heard, limit).await {
                Ok(r) => r,
                Err(e) => return Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        } else {
            drop(heard);
            self.runner.live.release(&row.id);
            row
        };
        let execution = match row_to_execution(&row) {
            Ok(e) => e,
            Err(e) => return Failure::from_store(e, NOT_FOUND, &rid).into(),
        };
        if row.is_finished() {
            ExecuteAgentResponse::Ok(Json(execution))
        } else {
            ExecuteAgentResponse::Accepted(Json(execution), format!("/v1/executions/{}", row.id))
        }
    }
}

impl ExecutionsApi for Handlers {
    async fn execute_agent(
        &self,
        caller: Caller,
        params: ExecuteAgentParams,
    ) -> Result<ExecuteAgentResponse, ApiError> {
        Ok(async { self.execute(&caller, params).await }.await)
    }

    async fn list_executions(
        &self,
        caller: Caller,
        params: ListExecutionsParams,
    ) -> Result<ListExecutionsResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let page = match PageRequest::of(&params, &rid) {
                Ok(p) => p,
                Err(f) => return f.into(),
            };
            let query = ExecutionQuery {
                agent_id: params.agent_id,
                status: params.status.map(|s| s.as_str().to_string()),
                offset: page.offset,
                limit: page.limit,
                after_id: page.after_id.clone(),
            };
            let org = caller.org_id.clone();
            let listed = self
                .store
                .run(move |conn| store::list(conn, &org, &query))
                .await
                .and_then(|(rows, total)| {
                    let data = rows
                        .iter()
                        .map(row_to_execution)
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok((data, rows.last().map(|r| r.id.clone()), total))
                });
            match listed {
                Ok((data, last, total)) => ListExecutionsResponse::Ok(Json(ExecutionList {
                    pagination: page.pagination(data.len(), last.as_deref(), total),
                    data,
                })),
                Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
            }
        }
        .await)
    }

    async fn get_execution(
        &self,
        caller: Caller,
        params: GetExecutionParams,
    ) -> Result<GetExecutionResponse, ApiError> {
        Ok(async {
            let row = match self.execution_row(&caller, params.execution_id).await {
                Ok(r) => r,
                Err(f) => return f.into(),
            };
            let tag = execution_etag(&row);
            if params
                .if_none_match
                .as_deref()
                .is_some_and(|h| etag_matches(h, &tag))
            {
                return GetExecutionResponse::NotModified(tag);
            }
            match row_to_execution(&row) {
                Ok(e) => GetExecutionResponse::Ok(Json(e), tag),
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn cancel_execution(
        &self,
        caller: Caller,
        params: CancelExecutionParams,
    ) -> Result<CancelExecutionResponse, ApiError> {
        Ok(async {
            let rid = caller.request_id.clone();
            let (org, id) = (caller.org_id.clone(), params.execution_id);
            let outcome = match self
                .store
                .run(move |conn| store::cancel(conn, &org, &id, &crate::engine::runner::announce))
                .await
            {
                Ok(o) => o,
                Err(e) => return Failure::from_store(e, NOT_FOUND, &rid).into(),
            };
            match outcome {
                Ok(row) => {
                    self.runner.live.publish(&row.id, LiveEvent::Changed);
                    self.events.wake();
                    match row_to_execution(&row) {
                        Ok(e) => CancelExecutionResponse::Ok(Json(e)),
                        Err(e) => Failure::from_store(e, NOT_FOUND, &rid).into(),
                    }
                }
                Err(finished) => Failure::with_details(
                    Kind::Conflict,
                    "EXECUTION_FINISHED",
                    format!("the execution already ended: {}", finished.status),
                    vec![detail(
                        "execution_id",
                        "finished",
                        "only a queued or running execution can be cancelled",
                    )],
                    &rid,
                )
                .into(),
            }
        }
        .await)
    }

    async fn get_execution_logs(
        &self,
        caller: Caller,
        params: GetExecutionLogsParams,
    ) -> Result<GetExecutionLogsResponse, ApiError> {
        Ok(async {
            let row = match self.execution_row(&caller, params.execution_id).await {
                Ok(r) => r,
                Err(f) => return f.into(),
            };
            match row_to_execution(&row) {
                Ok(e) => GetExecutionLogsResponse::Ok(Json(ExecutionLogs {
                    execution_id: e.id.clone(),
                    data: logs_of(&e),
                })),
                Err(e) => Failure::from_store(e, NOT_FOUND, &caller.request_id).into(),
            }
        }
        .await)
    }

    async fn stream_execution_events(
        &self,
        caller: Caller,
        params: StreamExecutionEventsParams,
    ) -> Result<StreamExecutionEventsResponse, ApiError> {
        Ok(async {
            let heard = self.runner.live.subscribe(&params.execution_id);
            let row = match self
                .execution_row(&caller, params.execution_id.clone())
                .await
            {
                Ok(r) => r,
                Err(f) => {
                    drop(heard);
                    self.runner.live.release(&params.execution_id);
                    return f.into();
                }
            };
            StreamExecutionEventsResponse::OkEventStream(follow(
                self.store.clone(),
                self.runner.live.clone(),
                caller.org_id.clone(),
                row.id,
                heard,
            ))
        }
        .await)
    }

    async fn stream_execution(
        &self,
        caller: Caller,
        params: StreamExecutionParams,
        upgrade: Option<poem::web::websocket::WebSocket>,
    ) -> Result<Upgraded<StreamExecutionResponse>, ApiError> {
        Ok(async {
            let row = match self
                .execution_row(&caller, params.execution_id.clone())
                .await
            {
                Ok(r) => r,
                Err(f) => return Upgraded::Answer(f.into()),
            };
            let Some(ws) = upgrade else {
                let f = super::events::upgrade_required(&caller.request_id);
                return Upgraded::Answer(StreamExecutionResponse::UpgradeRequired(
                    Json(*f.envelope),
                    Some("websocket".to_string()),
                ));
            };
            let (store, live, org) = (
                self.store.clone(),
                self.runner.live.clone(),
                caller.org_id.clone(),
            );
            Upgraded::Switching(
                ws.protocols([super::events::STREAM_PROTOCOL])
                    .on_upgrade(move |socket| {
                        let heard = live.subscribe(&row.id);
                        forward_to_socket(socket, follow_events(store, live, org, row.id, heard))
                    })
                    .boxed(),
            )
        }
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_chosen_by_the_option_then_by_accept() {
        assert!(wants_stream(Some(true), None));
        assert!(!wants_stream(Some(false), Some("text/event-stream")));
        assert!(wants_stream(None, Some("text/event-stream")));
        assert!(wants_stream(
            None,
            Some("text/event-stream;q=1, application/json")
        ));
        assert!(!wants_stream(
            None,
            Some("application/json, text/event-stream")
        ));
        assert!(!wants_stream(None, Some("*/*")));
        assert!(!wants_stream(None, None));
    }
}
