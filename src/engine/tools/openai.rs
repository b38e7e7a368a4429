//! OpenAI's chat completions with tools: the request carries the tools as `functions`
//! (`tools`, `tool_choice: auto`); the answer's `tool_calls` (`id`, `function.name`,
//! `function.arguments` as JSON text) become the turn's calls, whole or, streamed, assembled
//! from the deltas of each `tool_calls[i].index`. The conversation goes back with the
//! assistant message that made the calls and a `tool` message per result.
//!
//! Every request goes through the egress client, as the plain provider's do.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{
    Message, ModelSettings, ModelTurn, RequestedCall, ToolModel, ToolSpec, Tools, Usage,
    counted_tokens,
};
use crate::egress::Egress;
use crate::engine::provider::sse;
use crate::engine::provider::{OpenAiCompatible, ProviderError, storable, usage_of};

/// An OpenAI-compatible chat-completions endpoint, asked with tools.
#[derive(Debug, Clone)]
pub struct OpenAiToolModel {
    /// The plain provider's client of the endpoint, which sends every request.
    client: OpenAiCompatible,
    settings: ModelSettings,
}

impl OpenAiToolModel {
    /// A client of `endpoint` (the base URL, `…/v1`) calling it through `egress`.
    pub fn new(
        endpoint: &str, api_key: Option<String>, timeout: Duration, egress: Egress,
        settings: ModelSettings,
    ) -> OpenAiToolModel {
        OpenAiToolModel {
            client: OpenAiCompatible::new(endpoint, api_key, timeout, egress),
            settings,
        }
    }

    /// The request body for `messages` with `tools`.
    pub fn body(&self, messages: &[Message], tools: &Tools, stream: bool) -> Value {
        let wire: Vec<Value> = messages.iter().map(wire_message).collect();
        let mut body = json!({"model": self.settings.model, "messages": wire, "stream": stream});
        if !tools.is_empty() {
            body["tools"] = tools.iter().map(wire_tool).collect();
            body["tool_choice"] = json!("auto");
        }
        if let Some(t) = self.settings.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = self.settings.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    /// A failure reading the answer, without the URL.
    fn read_failed(&self, e: reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::Timeout(self.client.timeout)
        } else {
            ProviderError::BadResponse(e.without_url().to_string())
        }
    }

    /// The turn's usage: as the server reported it, else counted.
    fn usage(
        &self, reported: Option<(i64, i64)>, messages: &[Message], text: &str,
        calls: &[RequestedCall],
    ) -> Usage {
        let (input, output) = reported.unwrap_or_else(|| counted_tokens(messages, text, calls));
        Usage::priced(input, output, self.settings.pricing)
    }

    async fn complete(
        &self, messages: &[Message], tools: &Tools,
    ) -> Result<ModelTurn, ProviderError> {
        let resp = self.client.send(&self.body(messages, tools, false)).await?;
        let v: Value = resp.json().await.map_err(|e| self.read_failed(e))?;
        let message = v
            .pointer("/choices/0/message")
            .ok_or_else(|| ProviderError::BadResponse("no choices[0].message".into()))?;
        let calls: Vec<RequestedCall> = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| calls.iter().map(requested).collect())
            .unwrap_or_default();
        let text = match message.get("content") {
            Some(Value::String(text)) => storable(text),
            _ if !calls.is_empty() => String::new(),
            _ => {
                let why = "no choices[0].message.content or tool_calls";
                return Err(ProviderError::BadResponse(why.into()));
            }
        };
        let usage = self.usage(usage_of(&v), messages, &text, &calls);
        Ok(ModelTurn { text, calls, usage })
    }

    async fn stream(
        &self, messages: &[Message], tools: &Tools, deltas: &mpsc::Sender<String>,
    ) -> Result<ModelTurn, ProviderError> {
        let resp = self.client.send(&self.body(messages, tools, true)).await?;
        let mut streamed = Streamed::default();
        sse::read(resp, &mut streamed, deltas, |e| self.read_failed(e)).await?;
        let Streamed {
            text, calls, usage, ..
        } = streamed;
        let usage = self.usage(usage, messages, &text, &calls);
        Ok(ModelTurn { text, calls, usage })
    }
}

impl ToolModel for OpenAiToolModel {
    fn model_name(&self) -> &str {
        &self.settings.model
    }

    async fn turn(
        &self, messages: &[Message], tools: &Tools, deltas: Option<&mpsc::Sender<String>>,
    ) -> Result<ModelTurn, ProviderError> {
        match deltas {
            Some(deltas) => self.stream(messages, tools, deltas).await,
            None => self.complete(messages, tools).await,
        }
    }
}

/// A message as chat completions take it.
fn wire_message(m: &Message) -> Value {
    match m {
        Message::Assistant {
            content,
            tool_calls,
        } if !tool_calls.is_empty() => {
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|c| {
                    json!({"id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": c.arguments}})
                })
                .collect();
            let content = if content.is_empty() {
                Value::Null
            } else {
                json!(content)
            };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        Message::Tool {
            tool_call_id,
            content,
        } => json!({"role": "tool", "tool_call_id": tool_call_id, "content": content}),
        other => json!({"role": other.role(), "content": other.content()}),
    }
}

/// A tool as a function definition.
fn wire_tool(tool: &ToolSpec) -> Value {
    let mut function = json!({"name": tool.function_name, "parameters": tool.parameters});
    if !tool.description.is_empty() {
        function["description"] = json!(tool.description);
    }
    json!({"type": "function", "function": function})
}

/// A call of a whole answer's `tool_calls`.
fn requested(call: &Value) -> RequestedCall {
    let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str).map(storable);
    RequestedCall {
        id: text("/id").unwrap_or_default(),
        name: text("/function/name").unwrap_or_default(),
        arguments: arguments_text(call.pointer("/function/arguments")),
    }
}

/// `function.arguments` as text: JSON text as it is (a server that sends an object instead
/// gets it written out).
fn arguments_text(arguments: Option<&Value>) -> String {
    match arguments {
        Some(Value::String(text)) => storable(text),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// What a streamed turn has said so far.
#[derive(Debug, Default)]
struct Streamed {
    text: String,
    calls: Vec<RequestedCall>,
    /// A delta's `index` → its call in `calls`.
    slots: BTreeMap<i64, usize>,
    usage: Option<(i64, i64)>,
}

impl sse::Chunks for Streamed {
    fn usage(&mut self) -> &mut Option<(i64, i64)> {
        &mut self.usage
    }

    async fn chunk(&mut self, v: &Value, deltas: &mpsc::Sender<String>) {
        let Some(delta) = v.pointer("/choices/0/delta") else {
            return;
        };
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for (position, call) in calls.iter().enumerate() {
                self.add(position, call);
            }
        }
        sse::pass_on(delta.get("content"), &mut self.text, deltas).await;
    }
}

impl Streamed {
    /// Adds one `tool_calls[]` delta: the call at its `index` (its position in the delta when
    /// it has none) gets its id, and its name and arguments grow. A new id at an index in use
    /// starts another call (servers that number every call of a turn 0).
    fn add(&mut self, position: usize, delta: &Value) {
        let index = delta
            .get("index")
            .and_then(Value::as_i64)
            .unwrap_or(position as i64);
        let id = delta
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty());
        let slot = match self.slots.get(&index) {
            Some(&slot)
                if id.is_none_or(|id| {
                    self.calls[slot].id.is_empty() || self.calls[slot].id == id
                }) =>
            {
                slot
            }
            _ => {
                self.calls.push(RequestedCall::default());
                self.slots.insert(index, self.calls.len() - 1);
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[slot];
        if let Some(id) = id
            && call.id.is_empty()
        {
            call.id = storable(id);
        }
        if let Some(name) = delta.pointer("/function/name").and_then(Value::as_str)
            && call.name != name
        {
            call.name.push_str(&storable(name));
        }
        call.arguments
            .push_str(&arguments_text(delta.pointer("/function/arguments")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_that_reuse_an_index_with_a_new_id_are_another_call() {
        let mut s = Streamed::default();
        let delta = |id: Option<&str>, name: Option<&str>, args: &str| {
            let mut d = json!({"index": 0, "function": {"arguments": args}});
            if let Some(id) = id {
                d["id"] = json!(id);
            }
            if let Some(name) = name {
                d["function"]["name"] = json!(name);
            }
            d
        };
        s.add(0, &delta(Some("call_a"), Some("weather"), "{\"city\""));
        s.add(0, &delta(None, Some("weather"), ":\"Rome\"}"));
        s.add(0, &delta(Some("call_b"), Some("faq"), "{}"));
        let got: Vec<(&str, &str, &str)> = s
            .calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("call_a", "weather", r#"{"city":"Rome"}"#),
                ("call_b", "faq", "{}")
            ]
        );
    }
}
