//! The loop: model turn, tool calls, results back, until an answer, a pause or `max_steps`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use futures_util::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Message, ModelTurn, RequestedCall, ToolCall, ToolExecutor, ToolKind, ToolModel, ToolSpec,
    Tools, Usage, excerpt, text_of,
};

/// Model turns an execution takes at most unless its agent says otherwise.
pub const DEFAULT_MAX_STEPS: usize = 8;

/// Characters of a tool's result kept in its step.
const SUMMARY_CHARS: usize = 500;

/// Characters of a tool's result given to the model (an API tool's answer is capped in bytes
/// already; this keeps one call from filling the model's context).
const CONTENT_CHARS: usize = 20_000;

/// How far a loop may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Model turns at most, over the whole execution (pauses included); a model that still
    /// calls tools on the last one fails the loop with `MAX_STEPS_EXCEEDED`.
    pub max_steps: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_steps: DEFAULT_MAX_STEPS,
        }
    }
}

/// Where a loop is: the conversation so far, the model turns taken and their usage. It is
/// what a paused execution stores, so it survives a restart and resumes on any replica.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    pub messages: Vec<Message>,
    /// Model turns taken so far, pauses included.
    pub turns: usize,
    /// Tokens and cost of every model call so far, pauses included.
    pub usage: Usage,
}

impl LoopState {
    /// A loop about to start on `messages` (system prompt, history, the input last).
    pub fn new(messages: Vec<Message>) -> LoopState {
        LoopState {
            messages,
            ..LoopState::default()
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Succeeded,
    Failed,
    /// A `function` call waiting for the caller's output.
    RequiresAction,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::RequiresAction => "requires_action",
        }
    }
}

/// One tool call: the execution's `tool_call` step.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCallStep {
    pub call: ToolCall,
    pub status: StepStatus,
    /// The result (or what went wrong) as given to the model, cut to 500 characters; empty
    /// while the call waits for its output.
    pub result: String,
    /// RFC 3339.
    pub started_at: String,
    pub duration_ms: i64,
}

impl ToolCallStep {
    /// The step's `detail`: `tool_id`, `name`, `call_id`, `arguments` and `result`.
    pub fn detail(&self) -> Value {
        json!({
            "tool_id": self.call.tool_id,
            "name": self.call.name,
            "call_id": self.call.id,
            "arguments": self.call.arguments,
            "result": self.result,
        })
    }
}

/// One model call: the execution's `model_call` step.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCallStep {
    pub model: String,
    /// 1 for the execution's first model call, pauses included.
    pub turn: usize,
    pub status: StepStatus,
    /// RFC 3339.
    pub started_at: String,
    pub duration_ms: i64,
    pub usage: Usage,
    /// The function names the model called, in order.
    pub tool_calls: Vec<String>,
    pub error: Option<String>,
}

impl ModelCallStep {
    /// The step's `detail`: `model`, `turn`, the tokens, the functions called, any `error`.
    pub fn detail(&self) -> Value {
        let mut detail = json!({
            "model": self.model,
            "turn": self.turn,
            "input_tokens": self.usage.input_tokens,
            "output_tokens": self.usage.output_tokens,
        });
        if !self.tool_calls.is_empty() {
            detail["tool_calls"] = json!(self.tool_calls);
        }
        if let Some(error) = &self.error {
            detail["error"] = json!(error);
        }
        detail
    }
}

/// A step of the loop, in the order they finished.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopStep {
    ModelCall(ModelCallStep),
    ToolCall(ToolCallStep),
}

/// Where the loop reports as it goes (the runner publishes events and checks for a cancel).
/// Every method has a default that does nothing.
pub trait LoopSink: Sync {
    /// Where a streamed model's text goes, piece by piece; `None` for whole turns.
    fn deltas(&self) -> Option<&mpsc::Sender<String>> {
        None
    }
    /// A model call finished (its `step`).
    fn model_called(&self, _step: &ModelCallStep) {}
    /// A tool call starts (`tool_call.started`); for a `function` call, the pause follows.
    fn tool_call_started(&self, _call: &ToolCall) {}
    /// A tool call succeeded (`tool_call.completed` and its `step`).
    fn tool_call_completed(&self, _step: &ToolCallStep) {}
    /// A tool call failed, was malformed or named no tool (`tool_call.failed`, its `step`).
    fn tool_call_failed(&self, _step: &ToolCallStep) {}
    /// Whether the execution was cancelled; asked before every model turn.
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// A sink that reports nowhere.
impl LoopSink for () {}

/// A loop waiting for the outputs of `function` calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paused {
    /// The calls waiting, in the order the model made them (`required_action.tool_calls`).
    pub pending: Vec<ToolCall>,
    /// The conversation up to them (the other calls of the turn answered already).
    pub state: LoopState,
    /// When it paused (RFC 3339).
    pub paused_at: String,
}

/// The caller's output of one pending call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolOutput {
    pub tool_call_id: String,
    pub output: String,
}

/// Why outputs do not resume a paused loop; [`ResumeError::field`] names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    #[error("`{id}` is not a pending tool call")]
    NotPending { index: usize, id: String },
    #[error("`{id}` has more than one output")]
    Duplicate { index: usize, id: String },
    #[error("the pending tool call `{id}` has no output")]
    Missing { id: String },
}

impl ResumeError {
    /// The request field at fault (`tool_outputs[1].tool_call_id`, or `tool_outputs`).
    pub fn field(&self) -> String {
        match self {
            ResumeError::NotPending { index, .. } | ResumeError::Duplicate { index, .. } => {
                format!("tool_outputs[{index}].tool_call_id")
            }
            ResumeError::Missing { .. } => "tool_outputs".into(),
        }
    }
}

impl Paused {
    /// The state to run the loop on again: the outputs appended as `tool` messages in the
    /// order of the pending calls, and a completed step for each call (timed from the pause).
    /// Every pending call needs exactly one output.
    pub fn resume(
        self, outputs: &[ToolOutput],
    ) -> Result<(LoopState, Vec<ToolCallStep>), ResumeError> {
        let mut answered: BTreeMap<&str, &str> = BTreeMap::new();
        for (index, o) in outputs.iter().enumerate() {
            let id = o.tool_call_id.clone();
            if !self.pending.iter().any(|c| c.id == o.tool_call_id) {
                return Err(ResumeError::NotPending { index, id });
            }
            if answered.insert(&o.tool_call_id, &o.output).is_some() {
                return Err(ResumeError::Duplicate { index, id });
            }
        }
        if let Some(c) = self.pending.iter().find(|c| !answered.contains_key(&*c.id)) {
            return Err(ResumeError::Missing { id: c.id.clone() });
        }
        let waited = chrono::DateTime::parse_from_rfc3339(&self.paused_at)
            .map(|at| (chrono::Utc::now() - at.to_utc()).num_milliseconds().max(0))
            .unwrap_or(0);
        let Paused {
            pending,
            mut state,
            paused_at,
        } = self;
        let mut steps = Vec::new();
        for call in pending {
            let output = answered.get(&*call.id).copied().unwrap_or_default();
            state.messages.push(Message::Tool {
                tool_call_id: call.id.clone(),
                content: output.to_string(),
            });
            steps.push(ToolCallStep {
                call,
                status: StepStatus::Succeeded,
                result: excerpt(output, SUMMARY_CHARS),
                started_at: paused_at.clone(),
                duration_ms: waited,
            });
        }
        Ok((state, steps))
    }
}

/// How a loop ended well.
#[derive(Debug, Clone, PartialEq)]
pub enum LoopOutcome {
    /// The model answered: its text; the state ends with its message.
    Answered {
        text: String,
        state: LoopState,
        steps: Vec<LoopStep>,
    },
    /// The model called `function` tools: store `paused`, and once the caller posts the
    /// outputs run the loop again on [`Paused::resume`]'s state. The steps include the
    /// pending calls (status `requires_action`).
    RequiresAction {
        paused: Paused,
        steps: Vec<LoopStep>,
    },
}

/// Why a loop failed, as the execution's error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopFailureCode {
    /// The model could not be called, or its answer was not understood.
    ExecutionFailed,
    MaxStepsExceeded,
    Cancelled,
}

impl LoopFailureCode {
    pub fn as_str(self) -> &'static str {
        match self {
            LoopFailureCode::ExecutionFailed => "EXECUTION_FAILED",
            LoopFailureCode::MaxStepsExceeded => "MAX_STEPS_EXCEEDED",
            LoopFailureCode::Cancelled => "CANCELLED",
        }
    }
}

/// A failed loop: why, and the state and steps so far (its model calls are billed all the
/// same: `state.usage`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoopFailure {
    pub code: LoopFailureCode,
    pub message: String,
    pub state: LoopState,
    pub steps: Vec<LoopStep>,
}

/// Runs the loop from `state` (see the module docs): calls `model` with `tools`, runs the
/// calls it makes through `executor` (several at once concurrently), and goes on until the
/// model answers without calling a tool, calls a `function` tool (a pause), or has taken
/// `limits.max_steps` turns.
pub async fn run_with_tools<M: ToolModel, E: ToolExecutor, S: LoopSink>(
    model: &M, state: LoopState, tools: &Tools, executor: &E, limits: Limits, sink: &S,
) -> Result<LoopOutcome, LoopFailure> {
    let mut run = Run {
        state,
        steps: Vec::new(),
    };
    loop {
        if sink.is_cancelled() {
            let message = "the execution was cancelled".to_string();
            return Err(run.fail(LoopFailureCode::Cancelled, message));
        }
        if run.state.turns >= limits.max_steps {
            return Err(run.too_many_turns(limits));
        }
        let turn = run.call_model(model, tools, sink).await?;
        if turn.calls.is_empty() {
            run.state.messages.push(Message::Assistant {
                content: turn.text.clone(),
                tool_calls: Vec::new(),
            });
            let Run { state, steps } = run;
            let text = turn.text;
            return Ok(LoopOutcome::Answered { text, state, steps });
        }
        if run.state.turns >= limits.max_steps {
            return Err(run.too_many_turns(limits));
        }
        run.state.messages.push(Message::Assistant {
            content: turn.text,
            tool_calls: turn.calls.clone(),
        });
        let pending = run.run_calls(&turn.calls, tools, executor, sink).await;
        if !pending.is_empty() {
            let paused = Paused {
                pending,
                state: run.state,
                paused_at: crate::ids::now(),
            };
            let steps = run.steps;
            return Ok(LoopOutcome::RequiresAction { paused, steps });
        }
    }
}

/// A loop under way.
struct Run {
    state: LoopState,
    steps: Vec<LoopStep>,
}

impl Run {
    fn fail(&mut self, code: LoopFailureCode, message: String) -> LoopFailure {
        LoopFailure {
            code,
            message,
            state: std::mem::take(&mut self.state),
            steps: std::mem::take(&mut self.steps),
        }
    }

    fn too_many_turns(&mut self, limits: Limits) -> LoopFailure {
        let message = format!(
            "the model was still calling tools after {} model turns (max_steps)",
            limits.max_steps
        );
        self.fail(LoopFailureCode::MaxStepsExceeded, message)
    }

    /// One model turn, its step recorded and reported; its calls' ids made unique.
    async fn call_model<M: ToolModel, S: LoopSink>(
        &mut self, model: &M, tools: &Tools, sink: &S,
    ) -> Result<ModelTurn, LoopFailure> {
        let (t, at) = (Instant::now(), crate::ids::now());
        let answer = model.turn(&self.state.messages, tools, sink.deltas()).await;
        self.state.turns += 1;
        let mut step = ModelCallStep {
            model: model.model_name().to_string(),
            turn: self.state.turns,
            status: StepStatus::Succeeded,
            started_at: at,
            duration_ms: elapsed_ms(t),
            usage: Usage::default(),
            tool_calls: Vec::new(),
            error: None,
        };
        let result = match answer {
            Ok(mut turn) => {
                unique_ids(&mut turn.calls);
                step.usage = turn.usage;
                step.tool_calls = turn.calls.iter().map(|c| c.name.clone()).collect();
                self.state.usage.add(turn.usage);
                Ok(turn)
            }
            Err(e) => {
                step.status = StepStatus::Failed;
                step.error = Some(e.to_string());
                Err(e.to_string())
            }
        };
        sink.model_called(&step);
        self.steps.push(LoopStep::ModelCall(step));
        result.map_err(|message| self.fail(LoopFailureCode::ExecutionFailed, message))
    }

    /// Runs one turn's calls, all at once; their results are appended as `tool` messages in
    /// the order of the calls. The `function` calls are returned, not run.
    async fn run_calls<E: ToolExecutor, S: LoopSink>(
        &mut self, calls: &[RequestedCall], tools: &Tools, executor: &E, sink: &S,
    ) -> Vec<ToolCall> {
        let handled = join_all(
            calls
                .iter()
                .map(|call| handle(resolve(call, tools), executor, sink)),
        )
        .await;
        let mut pending = Vec::new();
        for h in handled {
            match h {
                Handled::Done(step, content) => {
                    self.state.messages.push(Message::Tool {
                        tool_call_id: step.call.id.clone(),
                        content,
                    });
                    self.steps.push(LoopStep::ToolCall(step));
                }
                Handled::Pending(step) => {
                    pending.push(step.call.clone());
                    self.steps.push(LoopStep::ToolCall(step));
                }
            }
        }
        pending
    }
}

/// Gives a call without an id, or with the id of an earlier call of the turn, a new one.
fn unique_ids(calls: &mut [RequestedCall]) {
    let mut seen = BTreeSet::new();
    for call in calls {
        if call.id.trim().is_empty() || !seen.insert(call.id.clone()) {
            call.id = crate::ids::new_id("call");
            seen.insert(call.id.clone());
        }
    }
}

/// What the loop does with a call the model made.
enum Resolved<'t> {
    /// Run it with the tool.
    Run(&'t ToolSpec, ToolCall),
    /// A `function` call: the caller runs it.
    Pending(ToolCall),
    /// Answer the model that the call is wrong, and why.
    Rejected(ToolCall, String),
}

fn resolve<'t>(call: &RequestedCall, tools: &'t Tools) -> Resolved<'t> {
    let Some(tool) = tools.by_function(&call.name) else {
        let known: Vec<&str> = tools.iter().map(|t| t.function_name.as_str()).collect();
        let why = format!(
            "there is no function named `{}`; the functions are: {}",
            call.name,
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
        let arguments =
            arguments_of(&call.arguments).unwrap_or_else(|_| Value::String(call.arguments.clone()));
        let unknown = ToolCall {
            id: call.id.clone(),
            tool_id: None,
            name: call.name.clone(),
            arguments,
        };
        return Resolved::Rejected(unknown, why);
    };
    let with = |arguments: Value| ToolCall {
        id: call.id.clone(),
        tool_id: Some(tool.tool_id.clone()),
        name: call.name.clone(),
        arguments,
    };
    match arguments_of(&call.arguments) {
        Err(e) => {
            let why = format!(
                "the arguments of `{}` are not a JSON object ({e}); call it again with a JSON \
                 object that matches its parameters",
                call.name
            );
            Resolved::Rejected(with(Value::String(call.arguments.clone())), why)
        }
        Ok(args) if tool.kind == ToolKind::Function => Resolved::Pending(with(args)),
        Ok(args) => Resolved::Run(tool, with(args)),
    }
}

/// The model's arguments as an object (none at all is `{}`).
fn arguments_of(text: &str) -> Result<Value, String> {
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    match serde_json::from_str::<Value>(text) {
        Ok(object @ Value::Object(_)) => Ok(object),
        Ok(other) => Err(format!(
            "they are the JSON value {}",
            excerpt(&other.to_string(), 80)
        )),
        Err(e) => Err(format!("they are not valid JSON: {e}")),
    }
}

/// A call dealt with: its step and the result for the model, or waiting for the caller.
enum Handled {
    Done(ToolCallStep, String),
    Pending(ToolCallStep),
}

async fn handle<E: ToolExecutor, S: LoopSink>(
    resolved: Resolved<'_>, executor: &E, sink: &S,
) -> Handled {
    let (t, at) = (Instant::now(), crate::ids::now());
    let (call, result) = match resolved {
        Resolved::Pending(call) => {
            sink.tool_call_started(&call);
            return Handled::Pending(ToolCallStep {
                call,
                status: StepStatus::RequiresAction,
                result: String::new(),
                started_at: at,
                duration_ms: 0,
            });
        }
        Resolved::Rejected(call, why) => {
            sink.tool_call_started(&call);
            (call, Err(why))
        }
        Resolved::Run(tool, call) => {
            sink.tool_call_started(&call);
            let result = executor.execute(tool, &call).await;
            (call, result)
        }
    };
    let (status, content) = match result {
        Ok(value) => (
            StepStatus::Succeeded,
            excerpt(&text_of(&value), CONTENT_CHARS),
        ),
        Err(why) => (StepStatus::Failed, json!({"error": why}).to_string()),
    };
    let step = ToolCallStep {
        call,
        status,
        result: excerpt(&content, SUMMARY_CHARS),
        started_at: at,
        duration_ms: elapsed_ms(t),
    };
    match status {
        StepStatus::Succeeded => sink.tool_call_completed(&step),
        _ => sink.tool_call_failed(&step),
    }
    Handled::Done(step, content)
}

fn elapsed_ms(t: Instant) -> i64 {
    i64::try_from(t.elapsed().as_millis()).unwrap_or(i64::MAX)
}
