//! Executions: `POST /v1/agents/{id}/execute` (202 to poll, 200 waited, or an SSE stream)
//! and the executions resource (get, list, cancel, logs, events).

use std::collections::BTreeMap;

use agentplane_api::Json;
use agentplane_api::models::{
    ExecuteRequest, Execution, ExecutionEvent, ExecutionList, ExecutionLog, ExecutionLogLevel,
    ExecutionLogs,
};
use agentplane_api::*;
use poem_openapi::types::ToJSON;
use serde_json::Value;
use sha2::Digest;
use tokio::sync::broadcast::Receiver;

use super::Handlers;
use super::idem;
use super::paging::not_modified;
use super::run::{Listening, NOT_FOUND, Start, follow, follow_events, wait_limit};
use crate::auth::Caller;
use crate::db::DbConnection;
use crate::db::executions::ExecutionStatus;
use crate::db::executions::{
    self as store, ExecutionQuery, ExecutionRequest, ExecutionRow, RunOptions, StepStatus,
};
use crate::db::sql::Page;
use crate::engine::act::{self, Continuation};
use crate::engine::runner::{self, LiveEvent};
use crate::engine::tools::{ResumeError, ToolOutput};
use crate::error::{Failure, Kind, detail, store_error};
use crate::jobs;

/// Why tool outputs were refused.
enum Refused {
    /// The execution does not wait for outputs (as it is now).
    NotWaiting(Box<ExecutionRow>),
    Outputs(ResumeError),
}

const EXECUTE_OPERATION: &str = "executeAgent";

/// The ETag of an execution: it changes with every status, step and result change.
fn execution_etag(row: &ExecutionRow) -> String {
    let digest = sha2::Sha256::digest(format!(
        "{}|{:?}|{:?}|{}",
        row.status,
        row.started_at,
        row.finished_at,
        row.steps.to_text().unwrap_or_default()
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
        let failed = s.status != StepStatus::Succeeded.as_str();
        let name = match &s.node_id {
            Some(node) => format!("{} `{node}`", s.name),
            None => s.name.clone(),
        };
        let mut message = format!("{name} {} in {} ms", s.status, s.duration_ms);
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

/// Forwards an execution's events to a WebSocket as text frames, then closes it. A client
/// that goes away ends the forwarding.
async fn forward_to_socket(
    socket: poem::web::websocket::WebSocketStream, mut events: EventStreamOf<ExecutionEvent>,
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

/// The request an execute accepts (`input`, `parameters`, `context`, `options`), and the
/// values of the agent's template variables (`variables`, then `parameters`).
fn accepted(body: &ExecuteRequest) -> (ExecutionRequest, BTreeMap<String, String>) {
    let mut parameters = body.variables.clone().unwrap_or_default();
    parameters.extend(body.parameters.clone().unwrap_or_default());
    let input = match (&body.input, &body.query) {
        (Some(i), _) => i.clone(),
        (None, Some(q)) => Value::String(q.clone()),
        (None, None) => Value::String(String::new()),
    };
    let options = body.options.clone().unwrap_or_default();
    let request = ExecutionRequest {
        input,
        parameters: Some(parameters.clone()),
        context: Some(body.context.to_json().unwrap_or(Value::Null)),
        options: RunOptions {
            stream: options.stream,
            wait: options.wait,
            timeout: options.timeout,
            max_tokens: options.max_tokens,
            temperature: options.temperature,
        },
        conversation_id: None,
        evaluation: false,
    };
    (request, parameters)
}

impl Handlers {
    async fn execution_row(&self, caller: &Caller, id: String) -> Result<ExecutionRow, Failure> {
        self.run_for(caller, NOT_FOUND, move |conn, org| {
            store::get(conn, org, &id)
        })
        .await
    }

    /// Starts the execution an execute asks for, listening to it (to the first request's
    /// execution on a replay).
    async fn start_execute(
        &self, caller: &Caller, params: ExecuteAgentParams,
    ) -> Result<(ExecutionRow, Receiver<LiveEvent>), Failure> {
        let hash = idem::request_hash(&params.body.to_json().unwrap_or_default());
        let (request, parameters) = accepted(&params.body);
        // Listen before the worker can start it, so no token is missed.
        let id = crate::ids::new_id("exec");
        let live = self.runner.live.clone();
        let listening = Listening::new(live.clone(), id.clone());
        let start = Start {
            id: id.clone(),
            agent_id: params.agent_id,
            request,
            parameters,
            conversation_id: None,
            idempotency: Some((EXECUTE_OPERATION, params.idempotency_key, hash)),
            also: None,
        };
        let row = self.start_execution(caller, start).await?;
        let heard = if row.id == id {
            listening.keep()
        } else {
            // A replay: follow the first request's execution instead.
            drop(listening);
            live.subscribe(&row.id)
        };
        Ok((row, heard))
    }

    /// Answers the pending calls of paused execution `id` with `outputs` and queues it again:
    /// 409 when it is not waiting, 422 naming an output whose call is not pending (or a
    /// pending call without one).
    async fn resume(
        &self, caller: &Caller, id: String, outputs: Vec<ToolOutput>,
    ) -> Result<ExecutionRow, Failure> {
        let rid = caller.request_id.as_str();
        let outcome = self
            .run_for(caller, NOT_FOUND, move |conn, org| {
                crate::db::write_transaction(conn, |conn| {
                    let row = store::get(conn, org, &id)?;
                    let waiting =
                        match store::continuation(conn, &row.id)?.and_then(Continuation::of) {
                            Some(Continuation::Waiting { paused })
                                if row.status == ExecutionStatus::RequiresAction =>
                            {
                                paused
                            }
                            _ => return Ok(Err(Refused::NotWaiting(Box::new(row)))),
                        };
                    let (state, answered) = match waiting.resume(&outputs) {
                        Ok(resumed) => resumed,
                        Err(e) => return Ok(Err(Refused::Outputs(e))),
                    };
                    let steps = act::answer_steps(&row.steps, &answered);
                    let next = Continuation::Resume { state }.to_value();
                    if !store::requeue_in(conn, &row.id, &steps, &next)? {
                        return Ok(Err(Refused::NotWaiting(Box::new(row))));
                    }
                    jobs::enqueue(conn, &runner::job_for(&row))?;
                    store::get(conn, org, &row.id).map(Ok)
                })
            })
            .await?;
        match outcome {
            Ok(row) => {
                self.pool.wake();
                self.runner.live.publish(&row.id, LiveEvent::Changed);
                Ok(row)
            }
            Err(Refused::NotWaiting(row)) => Err(Failure::with_details(
                Kind::Conflict,
                "EXECUTION_NOT_WAITING",
                format!(
                    "execution {} is {}, not waiting for tool outputs",
                    row.id,
                    row.status.as_str()
                ),
                vec![detail(
                    "execution_id",
                    "not_waiting",
                    "only an execution in requires_action takes tool outputs",
                )],
                rid,
            )),
            Err(Refused::Outputs(e)) => {
                let code = match e {
                    ResumeError::NotPending { .. } => "not_pending",
                    ResumeError::Duplicate { .. } => "duplicate",
                    ResumeError::Missing { .. } => "missing",
                };
                Err(Failure::with_details(
                    Kind::Unprocessable,
                    "INVALID_TOOL_OUTPUTS",
                    e.to_string(),
                    vec![detail(&e.field(), code, e.to_string())],
                    rid,
                ))
            }
        }
    }

    async fn cancel(&self, caller: &Caller, id: String) -> Result<ExecutionRow, Failure> {
        let rid = caller.request_id.as_str();
        let outcome = self
            .run_for(caller, NOT_FOUND, move |conn, org| {
                store::cancel(conn, org, &id, &runner::announce)
            })
            .await?;
        let row = outcome.map_err(|finished| {
            Failure::with_details(
                Kind::Conflict,
                "EXECUTION_FINISHED",
                format!("the execution already ended: {}", finished.status),
                vec![detail(
                    "execution_id",
                    "finished",
                    "only a queued or running execution can be cancelled",
                )],
                rid,
            )
        })?;
        self.runner.live.publish(&row.id, LiveEvent::Changed);
        self.events.wake();
        Ok(row)
    }
}

impl ExecutionsApi for Handlers {
    async fn execute_agent(
        &self, caller: Caller, params: ExecuteAgentParams,
    ) -> Reply<ExecuteAgentResponse> {
        let rid = caller.request_id.as_str();
        let options = params.body.options.clone().unwrap_or_default();
        let stream = wants_stream(options.stream, params.accept.as_deref());
        let (row, heard) = self.start_execute(&caller, params).await?;
        if stream {
            return Ok(ExecuteAgentResponse::OkEventStream(follow(
                self.store.clone(),
                self.runner.live.clone(),
                caller.org_id.clone(),
                row.id.clone(),
                heard,
            )));
        }
        let row = if options.wait == Some(true) {
            let limit = wait_limit(options.timeout.unwrap_or(runner::DEFAULT_TIMEOUT_MS));
            self.wait_for(&caller.org_id, &row.id, heard, limit)
                .await
                .map_err(store_error(NOT_FOUND, rid))?
        } else {
            drop(heard);
            self.runner.live.release(&row.id);
            row
        };
        let execution = Execution::from(&row);
        if row.is_settled() {
            return Ok(ExecuteAgentResponse::Ok(Json(execution)));
        }
        Ok(ExecuteAgentResponse::Accepted(
            Json(execution),
            format!("/v1/executions/{}", row.id),
        ))
    }

    async fn list_executions(
        &self, caller: Caller, params: ListExecutionsParams,
    ) -> Reply<ListExecutionsResponse> {
        let query = ExecutionQuery {
            agent_id: params.agent_id.clone(),
            status: params.status.map(Into::into),
        };
        let list = move |conn: &mut DbConnection, org: &str, page: &Page| {
            store::list(conn, org, &query, page)
        };
        let (data, pagination) = self
            .page_of(&caller, &params, NOT_FOUND, list, |row| {
                Ok(Execution::from(row))
            })
            .await?;
        let list = ExecutionList { data, pagination };
        Ok(ListExecutionsResponse::Ok(Json(list)))
    }

    async fn get_execution(
        &self, caller: Caller, params: GetExecutionParams,
    ) -> Reply<GetExecutionResponse> {
        let row = self.execution_row(&caller, params.execution_id).await?;
        let tag = execution_etag(&row);
        if not_modified(params.if_none_match.as_deref(), &tag) {
            return Ok(GetExecutionResponse::NotModified(tag));
        }
        Ok(GetExecutionResponse::Ok(Json(Execution::from(&row)), tag))
    }

    async fn submit_tool_outputs(
        &self, caller: Caller, params: SubmitToolOutputsParams,
    ) -> Reply<SubmitToolOutputsResponse> {
        let outputs: Vec<ToolOutput> = params
            .body
            .tool_outputs
            .into_iter()
            .map(|o| ToolOutput {
                tool_call_id: o.tool_call_id,
                output: o.output,
            })
            .collect();
        let row = self.resume(&caller, params.execution_id, outputs).await?;
        Ok(SubmitToolOutputsResponse::Accepted(Json(Execution::from(
            &row,
        ))))
    }

    async fn cancel_execution(
        &self, caller: Caller, params: CancelExecutionParams,
    ) -> Reply<CancelExecutionResponse> {
        let row = self.cancel(&caller, params.execution_id).await?;
        Ok(CancelExecutionResponse::Ok(Json(Execution::from(&row))))
    }

    async fn get_execution_logs(
        &self, caller: Caller, params: GetExecutionLogsParams,
    ) -> Reply<GetExecutionLogsResponse> {
        let row = self.execution_row(&caller, params.execution_id).await?;
        let execution = Execution::from(&row);
        Ok(GetExecutionLogsResponse::Ok(Json(ExecutionLogs {
            execution_id: execution.id.clone(),
            data: logs_of(&execution),
        })))
    }

    async fn stream_execution_events(
        &self, caller: Caller, params: StreamExecutionEventsParams,
    ) -> Reply<StreamExecutionEventsResponse> {
        let live = self.runner.live.clone();
        let listening = Listening::new(live.clone(), params.execution_id.clone());
        let row = self.execution_row(&caller, params.execution_id).await?;
        Ok(StreamExecutionEventsResponse::OkEventStream(follow(
            self.store.clone(),
            live,
            caller.org_id.clone(),
            row.id,
            listening.keep(),
        )))
    }

    async fn stream_execution(
        &self, caller: Caller, params: StreamExecutionParams,
        upgrade: Option<poem::web::websocket::WebSocket>,
    ) -> Reply<Upgraded<StreamExecutionResponse>> {
        let row = self.execution_row(&caller, params.execution_id).await?;
        let Some(ws) = upgrade else {
            let f = super::events::upgrade_required(&caller.request_id);
            return Ok(Upgraded::Answer(StreamExecutionResponse::UpgradeRequired(
                Json(*f.envelope),
                Some("websocket".to_string()),
            )));
        };
        let (store, live, org) = (
            self.store.clone(),
            self.runner.live.clone(),
            caller.org_id.clone(),
        );
        Ok(Upgraded::Switching(
            ws.protocols([super::events::STREAM_PROTOCOL])
                .on_upgrade(move |socket| {
                    let heard = live.subscribe(&row.id);
                    forward_to_socket(socket, follow_events(store, live, org, row.id, heard))
                })
                .boxed(),
        ))
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
