//! Agents that act: the loop in which a model calls an agent's tools.
//!
//! An execution with tools is a loop, not one call ([`run_with_tools`]): the model is called
//! with the tools as functions; the calls it asks for are run (several in one turn
//! concurrently) and their results given back as `tool` messages; and again, until the model
//! answers without calling a tool or `max_steps` model turns have been taken. `rag` and
//! `retrieval` tools ([`ToolKind::Knowledge`]) and `api` tools are run by a [`ToolExecutor`]
//! the runner implements over knowledge search and the egress client; a `function` tool is
//! run by the caller, so the loop stops with [`LoopOutcome::RequiresAction`] and a
//! serialisable [`Paused`] state that any replica resumes once the outputs are posted.
//!
//! What the model asks for is not trusted: a call of a function that does not exist, or with
//! arguments that are not a JSON object, and a tool that fails, are answered to the model as
//! that call's result (it may try again), never a failure of the execution.
//!
//! Two models speak this protocol ([`ToolModel`]): [`OpenAiToolModel`], OpenAI's chat
//! completions with `tools` and `tool_calls` (streamed or not), and [`LocalToolModel`], the
//! offline deterministic default, whose rule is documented in [`local`].
//!
//! The module is self-contained: it knows nothing of executions, the database or events;
//! the runner hands it a model, the tools, an executor and a [`LoopSink`].

pub mod api;
pub mod local;
pub mod openai;
mod run;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::future::Future;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub use local::LocalToolModel;
pub use openai::OpenAiToolModel;
pub use run::{
    DEFAULT_MAX_STEPS, Limits, LoopFailure, LoopFailureCode, LoopOutcome, LoopSink, LoopState,
    LoopStep, ModelCallStep, Paused, ResumeError, StepStatus, ToolCallStep, ToolOutput,
    run_with_tools,
};

use super::provider::{ChatMessage, ProviderError, count_input_tokens, count_tokens};

/// What a tool does when the model calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolKind {
    /// A `rag` or `retrieval` tool: searches its knowledge bases for `{query, top_k?, filters?}`.
    Knowledge,
    /// An `api` tool: an HTTP call through the egress policy.
    Api,
    /// A `function` tool: run by the caller, who posts its output.
    Function,
}

/// A tool as the model sees it: a function with a name, a description and a JSON Schema of
/// its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    /// The tool's id (`tool_…`).
    pub tool_id: String,
    /// The tool's name as its owner wrote it.
    pub name: String,
    /// The name the model calls it by: `^[a-zA-Z0-9_-]{1,64}$`, unique among the tools of
    /// one request (see [`Tools::new`]).
    pub function_name: String,
    pub description: String,
    /// The JSON Schema (an `object` schema) of its arguments.
    pub parameters: Value,
    pub kind: ToolKind,
}

impl ToolSpec {
    /// A tool; a knowledge tool always takes [`knowledge_parameters`], whatever `parameters`
    /// says, and a missing schema is an object without properties.
    pub fn new(
        tool_id: &str, name: &str, description: &str, parameters: Option<Value>, kind: ToolKind,
    ) -> ToolSpec {
        let parameters = match (kind, parameters) {
            (ToolKind::Knowledge, _) => knowledge_parameters(),
            (_, Some(p)) if p.is_object() => p,
            _ => json!({"type": "object", "properties": {}}),
        };
        ToolSpec {
            tool_id: tool_id.to_string(),
            name: name.to_string(),
            function_name: function_name(name),
            description: description.to_string(),
            parameters,
            kind,
        }
    }
}

impl ToolKind {
    /// The kind of a tool of `type` (`rag`, `retrieval`, `api`, `function`).
    pub fn of_type(tool_type: &str) -> Option<ToolKind> {
        match tool_type {
            "rag" | "retrieval" => Some(ToolKind::Knowledge),
            "api" => Some(ToolKind::Api),
            "function" => Some(ToolKind::Function),
            _ => None,
        }
    }
}

impl ToolSpec {
    /// A stored tool as the model sees it: its declared `parameters` (a knowledge tool's
    /// fixed ones); `None` for a type no model can call.
    pub fn of_row(row: &crate::db::tools::ToolRow) -> Option<ToolSpec> {
        let kind = ToolKind::of_type(&row.content.tool_type)?;
        let body: Value = serde_json::from_str(&row.content.body).unwrap_or(Value::Null);
        let description = row.content.description.as_deref().unwrap_or_default();
        let parameters = body.get("parameters").cloned();
        Some(ToolSpec::new(
            &row.id,
            &row.content.name,
            description,
            parameters,
            kind,
        ))
    }
}

/// The arguments every `rag` and `retrieval` tool takes.
pub fn knowledge_parameters() -> Value {
    json!({
        "type": "object",
        "properties": {
            "query": {"type": "string", "description": "What to search the knowledge for."},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 100,
                      "description": "Passages at most (default 5)."},
            "filters": {"type": "object", "additionalProperties": true,
                        "description": "Metadata the passages must match."}
        },
        "required": ["query"]
    })
}

/// The tools of one request, each with a function name no other has.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tools(Vec<ToolSpec>);

impl Tools {
    /// The tools, their function names made unique in order: a name already taken gets
    /// `_2`, `_3`, … (cut so that it stays within 64 characters). Same tools in the same
    /// order, same names.
    pub fn new(tools: Vec<ToolSpec>) -> Tools {
        let mut taken = BTreeSet::new();
        let tools = tools
            .into_iter()
            .map(|mut tool| {
                let base = function_name(&tool.function_name);
                let mut name = base.clone();
                let mut n = 2;
                while taken.contains(&name) {
                    let suffix = format!("_{n}");
                    let keep = 64 - suffix.len();
                    name = format!("{}{suffix}", &base[..base.len().min(keep)]);
                    n += 1;
                }
                taken.insert(name.clone());
                tool.function_name = name;
                tool
            })
            .collect();
        Tools(tools)
    }

    pub fn iter(&self) -> std::slice::Iter<'_, ToolSpec> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tool the model calls `function_name`.
    pub fn by_function(&self, function_name: &str) -> Option<&ToolSpec> {
        self.0.iter().find(|t| t.function_name == function_name)
    }
}

/// A tool's name as a function name: runs of characters other than ASCII letters, digits,
/// `_` and `-` become one `_`, at most 64 characters; `tool` when nothing is left.
pub fn function_name(name: &str) -> String {
    let parts: Vec<&str> = name
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .filter(|p| !p.is_empty())
        .collect();
    let mut out = parts.join("_");
    out.truncate(64); // ASCII only: every index is a character boundary
    if out.is_empty() {
        out.push_str("tool");
    }
    out
}

/// A call as the model made it: its arguments are the model's text, not yet trusted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestedCall {
    pub id: String,
    /// The function name the model used.
    pub name: String,
    /// The arguments as the model wrote them (meant to be a JSON object).
    pub arguments: String,
}

/// A call of one of the request's tools, its arguments a JSON object (the spec's `ToolCall`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, quoted back in its result.
    pub id: String,
    /// The tool called, when the name is one of the tools'.
    pub tool_id: Option<String>,
    /// The function name the model used.
    pub name: String,
    /// The arguments: an object, or for a call whose arguments are not one, the model's text.
    pub arguments: Value,
}

/// One message of a conversation with tools, as stored in a paused loop's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Message {
    System {
        content: String,
    },
    User {
        content: String,
    },
    /// The model's turn: its text and the calls it made.
    Assistant {
        content: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<RequestedCall>,
    },
    /// The result of one call, after the assistant message that made it.
    Tool {
        tool_call_id: String,
        content: String,
    },
}

impl Message {
    /// The message's role on the wire.
    pub fn role(&self) -> &'static str {
        match self {
            Message::System { .. } => "system",
            Message::User { .. } => "user",
            Message::Assistant { .. } => "assistant",
            Message::Tool { .. } => "tool",
        }
    }

    /// Its text (a tool message's result).
    pub fn content(&self) -> &str {
        match self {
            Message::System { content }
            | Message::User { content }
            | Message::Assistant { content, .. }
            | Message::Tool { content, .. } => content,
        }
    }

    /// The message as the plain providers see it (a tool message as a `tool` role).
    pub fn to_chat(&self) -> ChatMessage {
        ChatMessage {
            role: self.role().to_string(),
            content: self.content().to_string(),
        }
    }
}

impl From<&ChatMessage> for Message {
    /// A plain message (the system prompt, a conversation's history): `system` and
    /// `assistant` keep their role, anything else is the user's.
    fn from(m: &ChatMessage) -> Message {
        let content = m.content.clone();
        match m.role.as_str() {
            "system" => Message::System { content },
            "assistant" => Message::Assistant {
                content,
                tool_calls: Vec::new(),
            },
            _ => Message::User { content },
        }
    }
}

/// Tokens and cost, summed over model calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// In billionths of a dollar.
    pub cost_nano_usd: i64,
}

impl Usage {
    /// The usage of one call of a model priced at `pricing` (dollars per 1,000 input and
    /// output tokens).
    pub fn priced(input_tokens: i64, output_tokens: i64, pricing: (f64, f64)) -> Usage {
        let dollars =
            input_tokens as f64 * pricing.0 / 1000.0 + output_tokens as f64 * pricing.1 / 1000.0;
        Usage {
            input_tokens,
            output_tokens,
            cost_nano_usd: (dollars * 1e9).round() as i64,
        }
    }

    pub fn add(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost_nano_usd += other.cost_nano_usd;
    }
}

/// How a model is asked: its name, its settings and its price.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelSettings {
    /// The provider's model name.
    pub model: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
    /// Dollars per 1,000 input and output tokens.
    pub pricing: (f64, f64),
}

/// One model turn: its text, the calls it asks for (none when it answered), and its usage.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelTurn {
    pub text: String,
    pub calls: Vec<RequestedCall>,
    pub usage: Usage,
}

/// A model that may call tools: one turn over the conversation so far. With `deltas` the
/// turn is streamed and its text sent there piece by piece.
pub trait ToolModel: Sync {
    /// The model's name, as its steps record it.
    fn model_name(&self) -> &str;

    fn turn(
        &self, messages: &[Message], tools: &Tools, deltas: Option<&mpsc::Sender<String>>,
    ) -> impl Future<Output = Result<ModelTurn, ProviderError>> + Send;
}

/// Runs `knowledge` and `api` tools for the loop: the runner implements it over knowledge
/// search and the egress client. An `Err` is the tool's failure, given to the model.
pub trait ToolExecutor: Sync {
    fn execute(
        &self, tool: &ToolSpec, call: &ToolCall,
    ) -> impl Future<Output = Result<Value, String>> + Send;
}

/// The tokens of a turn counted the local provider's way (for a server that reports none):
/// the conversation in, the text and the calls out.
pub fn counted_tokens(messages: &[Message], text: &str, calls: &[RequestedCall]) -> (i64, i64) {
    let chat: Vec<ChatMessage> = messages.iter().map(Message::to_chat).collect();
    let said: i64 = calls
        .iter()
        .map(|c| count_tokens(&c.name) + count_tokens(&c.arguments))
        .sum();
    (count_input_tokens(&chat), count_tokens(text) + said)
}

/// A value as text: a string as it is, anything else as JSON.
pub fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `text` cut to at most `max` characters, `…` marking a cut.
pub fn excerpt(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
