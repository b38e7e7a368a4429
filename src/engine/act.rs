//! What an execution of an agent with tools (or a flow) needs beyond the model ⇄ tools loop
//! of [`super::tools`]: the agent's tools run for real ([`Toolbox`]: knowledge search through
//! the [`Retriever`], `api` calls through [`super::tools::api`]), the model as a
//! [`ToolModel`] ([`AgentModel`]), the loop's and the flow's steps as the execution's
//! [`Step`]s, published live as they happen ([`Live`], [`LiveSink`]), and where a paused
//! execution goes on from ([`Continuation`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use super::flow::{NodeStatus, NodeStep};
use super::pipeline::{KnowledgeQuery, Retriever};
use super::provider::ProviderError;
use super::tools::{
    self, LocalToolModel, LoopSink, LoopState, LoopStep, Message, ModelCallStep, ModelTurn,
    OpenAiToolModel, Paused, ToolCall, ToolCallStep, ToolExecutor, ToolKind, ToolModel, ToolSpec,
    Tools, api,
};
use crate::db::Store;
use crate::db::executions::{Step, StepName, StepStatus};
use crate::db::tools::ToolRow;

/// What in-process followers of an execution hear.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// The row changed (started, finished): read it again.
    Changed,
    /// A piece of the answer.
    Token(String),
    /// A tool call or a flow node started or finished.
    Step(StepEvent, Box<Step>),
}

/// What a [`LiveEvent::Step`] says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepEvent {
    ToolCallStarted,
    ToolCallCompleted,
    ToolCallFailed,
    NodeStarted,
    NodeCompleted,
    NodeFailed,
}

/// In-process channels per execution id, for streams on the replica running it.
#[derive(Debug, Default)]
pub struct Live {
    channels: Mutex<HashMap<String, broadcast::Sender<LiveEvent>>>,
}

impl Live {
    /// Listens to execution `id` (before it starts, so no token is missed).
    pub fn subscribe(&self, id: &str) -> broadcast::Receiver<LiveEvent> {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(id.to_string())
            .or_insert_with(|| broadcast::channel(1024).0)
            .subscribe()
    }

    /// Tells the listeners of `id`, if any.
    pub fn publish(&self, id: &str, event: LiveEvent) {
        let map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = map.get(id) {
            let _ = tx.send(event);
        }
    }

    /// Drops the channel of `id` once nobody but the caller (if it still holds a receiver)
    /// listens.
    pub fn release(&self, id: &str) {
        let mut map = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(id).is_some_and(|tx| tx.receiver_count() <= 1) {
            map.remove(id);
        }
    }
}

/// Passages a knowledge tool returns when neither the call nor the tool says.
const DEFAULT_TOOL_TOP_K: usize = 5;
/// Characters of an endpoint's failed answer quoted in the error given to the model.
const ERROR_BODY_CHARS: usize = 500;

/// Where a paused execution goes on from (stored in `execution_continuations`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Continuation {
    /// Waiting for the outputs of `paused.pending`.
    Waiting { paused: Paused },
    /// The outputs were posted: the loop goes on from `state`.
    Resume { state: LoopState },
}

impl Continuation {
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    pub fn of(value: Value) -> Option<Continuation> {
        serde_json::from_value(value).ok()
    }
}

/// The tools of an execution: the specs the model sees and the rows that run them.
#[derive(Clone)]
pub struct Toolbox {
    pub org_id: String,
    pub tools: Tools,
    rows: BTreeMap<String, ToolRow>,
    pub store: Store,
    pub retriever: Arc<dyn Retriever>,
    pub egress: crate::egress::Egress,
    pub crypto: crate::crypto::Crypto,
}

impl Toolbox {
    /// The toolbox of `rows` (the agent's tools, in the agent's order).
    pub fn new(
        org_id: &str, rows: Vec<ToolRow>, store: Store, retriever: Arc<dyn Retriever>,
        (egress, crypto): (crate::egress::Egress, crate::crypto::Crypto),
    ) -> Toolbox {
        let specs = rows.iter().filter_map(ToolSpec::of_row).collect();
        Toolbox {
            org_id: org_id.to_string(),
            tools: Tools::new(specs),
            rows: rows.into_iter().map(|r| (r.id.clone(), r)).collect(),
            store,
            retriever,
            egress,
            crypto,
        }
    }

    /// The tools among `ids` (a flow node's), in that order.
    pub fn only(&self, ids: &[String]) -> Tools {
        let specs = ids
            .iter()
            .filter_map(|id| self.rows.get(id))
            .filter_map(ToolSpec::of_row)
            .collect();
        Tools::new(specs)
    }

    /// Calls tool `tool_id` with `arguments` (a flow's `tool` node); a `function` tool
    /// cannot be called this way.
    pub async fn call(&self, tool_id: &str, arguments: Value) -> Result<Value, String> {
        let Some(row) = self.rows.get(tool_id) else {
            return Err(format!("the tool {tool_id} no longer exists"));
        };
        let Some(spec) = ToolSpec::of_row(row) else {
            return Err(format!("the tool {tool_id} cannot be called"));
        };
        let call = ToolCall {
            id: crate::ids::new_id("call"),
            tool_id: Some(tool_id.to_string()),
            name: spec.function_name.clone(),
            arguments,
        };
        self.execute(&spec, &call).await
    }

    /// Searches knowledge bases (a flow's `retrieval` node and knowledge tools).
    pub async fn search(
        &self, kb_ids: Vec<String>, query: String, options: KnowledgeQuery,
    ) -> Result<Vec<super::provider::Passage>, String> {
        let (org, retriever) = (self.org_id.clone(), self.retriever.clone());
        self.store
            .run(move |conn| retriever.search(conn, &org, &kb_ids, &query, &options))
            .await
            .map_err(|e| match e {
                crate::db::StoreError::Unavailable(m) => m,
                other => format!("the search failed: {other}"),
            })
    }

    async fn knowledge(&self, row: &ToolRow, arguments: &Value) -> Result<Value, String> {
        let body: Value = serde_json::from_str(&row.content.body).unwrap_or(Value::Null);
        let kb_ids: Vec<String> = body
            .get("knowledge_base_ids")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let Some(query) = arguments.get("query").and_then(Value::as_str) else {
            return Err("`query` (a string) is required".into());
        };
        let top_k = arguments
            .get("top_k")
            .or_else(|| body.get("top_k"))
            .and_then(Value::as_u64)
            .and_then(|k| usize::try_from(k).ok())
            .unwrap_or(DEFAULT_TOOL_TOP_K)
            .clamp(1, 100);
        let options = KnowledgeQuery {
            top_k,
            min_score: body.get("min_score").and_then(Value::as_f64),
            filters: arguments
                .get("filters")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        };
        let found = self.search(kb_ids, query.to_string(), options).await?;
        if found.is_empty() {
            return Ok(json!("No passages matched."));
        }
        let listed: Vec<String> = found
            .iter()
            .enumerate()
            .map(|(i, p)| format!("[{}] {} (source: {})", i + 1, p.text, p.source))
            .collect();
        Ok(Value::String(listed.join("\n")))
    }

    async fn api(&self, row: &ToolRow, arguments: &Value) -> Result<Value, String> {
        let tool: Value = serde_json::from_str(&row.content.body).unwrap_or(Value::Null);
        let url = tool.get("url").and_then(Value::as_str).unwrap_or_default();
        let method = tool.get("method").and_then(Value::as_str).unwrap_or("GET");
        let request = api::Request::from_arguments(url, method, arguments);
        let answer = api::call(
            &self.egress,
            &self.crypto,
            (&tool, &row.content.secrets),
            request,
        )
        .await
        .map_err(|failed| failed.error)?;
        let text = answer.text();
        if !answer.is_success() {
            return Err(format!(
                "the endpoint answered HTTP {}: {}",
                answer.status,
                tools::excerpt(&text, ERROR_BODY_CHARS)
            ));
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

impl ToolExecutor for Toolbox {
    async fn execute(&self, tool: &ToolSpec, call: &ToolCall) -> Result<Value, String> {
        let Some(row) = self.rows.get(&tool.tool_id) else {
            return Err(format!("the tool {} no longer exists", tool.tool_id));
        };
        match tool.kind {
            ToolKind::Knowledge => self.knowledge(row, &call.arguments).await,
            ToolKind::Api => self.api(row, &call.arguments).await,
            ToolKind::Function => Err("a function tool is run by the caller".into()),
        }
    }
}

/// The model an execution with tools calls.
pub enum AgentModel {
    Local(LocalToolModel),
    OpenAi(OpenAiToolModel),
}

impl ToolModel for AgentModel {
    fn model_name(&self) -> &str {
        match self {
            AgentModel::Local(m) => m.model_name(),
            AgentModel::OpenAi(m) => m.model_name(),
        }
    }

    async fn turn(
        &self, messages: &[Message], tools: &Tools, deltas: Option<&mpsc::Sender<String>>,
    ) -> Result<ModelTurn, ProviderError> {
        match self {
            AgentModel::Local(m) => m.turn(messages, tools, deltas).await,
            AgentModel::OpenAi(m) => m.turn(messages, tools, deltas).await,
        }
    }
}

fn status_of(status: tools::StepStatus) -> StepStatus {
    match status {
        tools::StepStatus::Succeeded => StepStatus::Succeeded,
        tools::StepStatus::Failed => StepStatus::Failed,
        tools::StepStatus::RequiresAction => StepStatus::RequiresAction,
    }
}

/// A tool call as the execution's `tool_call` step.
pub fn tool_call_step(step: &ToolCallStep) -> Step {
    Step {
        name: StepName::ToolCall,
        node_id: None,
        status: status_of(step.status),
        started_at: step.started_at.clone(),
        duration_ms: step.duration_ms,
        detail: step.detail(),
    }
}

/// A model call as the execution's `model_call` step.
pub fn model_call_step(step: &ModelCallStep) -> Step {
    Step {
        name: StepName::ModelCall,
        node_id: None,
        status: status_of(step.status),
        started_at: step.started_at.clone(),
        duration_ms: step.duration_ms,
        detail: step.detail(),
    }
}

/// The loop's steps as the execution's.
pub fn loop_steps(steps: &[LoopStep]) -> Vec<Step> {
    steps
        .iter()
        .map(|s| match s {
            LoopStep::ModelCall(m) => model_call_step(m),
            LoopStep::ToolCall(t) => tool_call_step(t),
        })
        .collect()
}

/// A flow node's run as the execution's `node` step.
pub fn node_step(step: &NodeStep) -> Step {
    Step {
        name: StepName::Node,
        node_id: Some(step.node_id.clone()),
        status: match step.status {
            NodeStatus::Succeeded => StepStatus::Succeeded,
            NodeStatus::Failed => StepStatus::Failed,
        },
        started_at: step.started_at.clone(),
        duration_ms: step.duration_ms,
        detail: step.detail(),
    }
}

/// `steps` with each waiting `tool_call` step that `answered` has an answer for (by call id)
/// replaced by it.
pub fn answer_steps(steps: &[Step], answered: &[ToolCallStep]) -> Vec<Step> {
    steps
        .iter()
        .map(|s| {
            let call_id = s.detail.get("call_id").and_then(Value::as_str);
            let done = answered
                .iter()
                .find(|a| Some(a.call.id.as_str()) == call_id);
            match done {
                Some(done)
                    if s.name == StepName::ToolCall && s.status == StepStatus::RequiresAction =>
                {
                    tool_call_step(done)
                }
                _ => s.clone(),
            }
        })
        .collect()
}

/// The pending calls of an execution's `requires_action` steps (its `required_action`).
pub fn pending_calls(steps: &[Step]) -> Vec<ToolCall> {
    steps
        .iter()
        .filter(|s| s.name == StepName::ToolCall && s.status == StepStatus::RequiresAction)
        .map(|s| {
            let text = |k: &str| s.detail.get(k).and_then(Value::as_str).map(str::to_string);
            ToolCall {
                id: text("call_id").unwrap_or_default(),
                tool_id: text("tool_id"),
                name: text("name").unwrap_or_default(),
                arguments: match s.detail.get("arguments") {
                    Some(args @ Value::Object(_)) => args.clone(),
                    _ => json!({}),
                },
            }
        })
        .collect()
}

/// Publishes an execution's steps live as they happen, and passes the model's text on.
pub struct LiveSink {
    pub live: Arc<Live>,
    pub execution_id: String,
    pub deltas: Option<mpsc::Sender<String>>,
}

impl LiveSink {
    pub fn publish(&self, event: StepEvent, step: Step) {
        self.live
            .publish(&self.execution_id, LiveEvent::Step(event, Box::new(step)));
    }
}

impl LoopSink for LiveSink {
    fn deltas(&self) -> Option<&mpsc::Sender<String>> {
        self.deltas.as_ref()
    }

    fn tool_call_started(&self, call: &ToolCall) {
        let step = Step {
            name: StepName::ToolCall,
            node_id: None,
            status: StepStatus::Running,
            started_at: crate::ids::now(),
            duration_ms: 0,
            detail: json!({"tool_id": call.tool_id, "name": call.name, "call_id": call.id,
                           "arguments": call.arguments}),
        };
        self.publish(StepEvent::ToolCallStarted, step);
    }

    fn tool_call_completed(&self, step: &ToolCallStep) {
        self.publish(StepEvent::ToolCallCompleted, tool_call_step(step));
    }

    fn tool_call_failed(&self, step: &ToolCallStep) {
        self.publish(StepEvent::ToolCallFailed, tool_call_step(step));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_calls_replace_their_waiting_steps_and_pending_calls_read_back() {
        let call = ToolCall {
            id: "call_1".into(),
            tool_id: Some("tool_1".into()),
            name: "lookup".into(),
            arguments: json!({"q": "x"}),
        };
        let waiting = ToolCallStep {
            call: call.clone(),
            status: tools::StepStatus::RequiresAction,
            result: String::new(),
            started_at: "2026-01-01T00:00:00.000000Z".into(),
            duration_ms: 0,
        };
        let steps = vec![tool_call_step(&waiting)];
        assert_eq!(pending_calls(&steps), std::slice::from_ref(&call));
        let done = ToolCallStep {
            status: tools::StepStatus::Succeeded,
            result: "42".into(),
            ..waiting
        };
        let answered = answer_steps(&steps, &[done]);
        assert_eq!(answered[0].status, StepStatus::Succeeded);
        assert_eq!(answered[0].detail["result"], "42");
        assert!(pending_calls(&answered).is_empty());
        let c = Continuation::Resume {
            state: LoopState::default(),
        };
        assert_eq!(Continuation::of(c.to_value()), Some(c));
    }
}
