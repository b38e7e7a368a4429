//! The built-in model with tools: offline and deterministic, so that tool use works, and is
//! tested, without a network.
//!
//! Its rule, for one turn (the *input* is the last user message):
//!
//! 1. **Answer from results.** When `tool` messages follow the input, it answers from them:
//!    `Based on <function name>: <result>` for each result in order (each cut to 300
//!    characters), joined by a space. It never calls a tool again for the same input, so a
//!    loop with it takes at most two turns (with a pause between them for `function` tools).
//! 2. **Call matching tools.** Otherwise it calls every tool one of whose *words* occurs in
//!    the input, in the order of the tools. A word is a run of at least three letters or
//!    digits, lower-cased and not a common English word (`the`, `what`, `with`, …), taken
//!    from the tool's name and description. The arguments: `{"query": <input>}` for a
//!    knowledge tool; for the others, each declared property filled from the input: with an
//!    `enum`, the first value that occurs in the input (else the first value); a `string`,
//!    the whole input; an `integer` or `number`, the first number in the input; a `boolean`,
//!    whether the property's name occurs in it. A property that cannot be filled is left out,
//!    unless `required`: then `0`, `[]` or `{}`.
//! 3. **Answer without tools.** When no tool matches, it answers as the local provider does
//!    ([`LocalProvider::answer`]): from the retrieved passages.
//!
//! Call ids are new (`call_…`); everything else is the same for the same conversation.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use super::{
    Message, ModelSettings, ModelTurn, RequestedCall, ToolKind, ToolModel, ToolSpec, Tools, Usage,
    counted_tokens, excerpt,
};
use crate::engine::provider::{
    CompletionRequest, LocalProvider, Passage, ProviderError, split_deltas, words,
};

/// Characters of each tool result quoted in an answer.
const QUOTED_CHARS: usize = 300;

/// The local model with tools (see the module docs for its rule).
#[derive(Debug, Clone, Default)]
pub struct LocalToolModel {
    pub settings: ModelSettings,
    /// The passages retrieved for the input, which an answer without tools cites.
    pub passages: Vec<Passage>,
}

impl LocalToolModel {
    pub fn new(settings: ModelSettings, passages: Vec<Passage>) -> LocalToolModel {
        LocalToolModel { settings, passages }
    }

    /// The model's turn, without usage: its text, or the calls it makes.
    pub fn decide(&self, messages: &[Message], tools: &Tools) -> (String, Vec<RequestedCall>) {
        let last_user = messages
            .iter()
            .rposition(|m| matches!(m, Message::User { .. }))
            .unwrap_or(0);
        if let Some(answer) = answer_from_results(&messages[last_user.min(messages.len())..]) {
            return (answer, Vec::new());
        }
        let input = messages
            .get(last_user)
            .filter(|m| matches!(m, Message::User { .. }))
            .map_or("", Message::content);
        let asked: BTreeSet<String> = words(input).into_iter().collect();
        let calls: Vec<RequestedCall> = tools
            .iter()
            .filter(|t| {
                words(&t.name)
                    .into_iter()
                    .chain(words(&t.description))
                    .any(|w| asked.contains(&w))
            })
            .map(|t| RequestedCall {
                id: crate::ids::new_id("call"),
                name: t.function_name.clone(),
                arguments: arguments_for(t, input).to_string(),
            })
            .collect();
        if !calls.is_empty() {
            return (String::new(), calls);
        }
        let request = CompletionRequest {
            model: self.settings.model.clone(),
            messages: messages.iter().map(Message::to_chat).collect(),
            passages: self.passages.clone(),
            temperature: self.settings.temperature,
            max_tokens: self.settings.max_tokens,
        };
        (LocalProvider::answer(&request), Vec::new())
    }
}

impl ToolModel for LocalToolModel {
    fn model_name(&self) -> &str {
        &self.settings.model
    }

    async fn turn(
        &self, messages: &[Message], tools: &Tools, deltas: Option<&mpsc::Sender<String>>,
    ) -> Result<ModelTurn, ProviderError> {
        let (text, calls) = self.decide(messages, tools);
        let (input, output) = counted_tokens(messages, &text, &calls);
        let usage = Usage::priced(input, output, self.settings.pricing);
        if let Some(deltas) = deltas {
            for piece in split_deltas(&text) {
                // A receiver that went away stops nothing: the execution still finishes.
                let _ = deltas.send(piece).await;
            }
        }
        Ok(ModelTurn { text, calls, usage })
    }
}

/// `Based on <name>: <result>` for each `tool` message of `turn` (the input and what
/// followed it), or `None` when there is none.
fn answer_from_results(turn: &[Message]) -> Option<String> {
    let names: BTreeMap<&str, &str> = turn
        .iter()
        .filter_map(|m| match m {
            Message::Assistant { tool_calls, .. } => Some(tool_calls),
            _ => None,
        })
        .flatten()
        .map(|c| (c.id.as_str(), c.name.as_str()))
        .collect();
    let parts: Vec<String> = turn
        .iter()
        .filter_map(|m| match m {
            Message::Tool {
                tool_call_id,
                content,
            } => {
                let name = names
                    .get(tool_call_id.as_str())
                    .copied()
                    .unwrap_or("a tool");
                Some(format!(
                    "Based on {name}: {}",
                    excerpt(content.trim(), QUOTED_CHARS)
                ))
            }
            _ => None,
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// The arguments the local model passes to `tool` for `input`.
fn arguments_for(tool: &ToolSpec, input: &str) -> Value {
    if tool.kind == ToolKind::Knowledge {
        return json!({"query": input});
    }
    let required: BTreeSet<&str> = tool
        .parameters
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut args = Map::new();
    if let Some(properties) = tool.parameters.get("properties").and_then(Value::as_object) {
        for (name, schema) in properties {
            if let Some(value) = fill(name, schema, input, required.contains(name.as_str())) {
                args.insert(name.clone(), value);
            }
        }
    }
    Value::Object(args)
}

/// One property's value from the input (see the module docs).
fn fill(name: &str, schema: &Value, input: &str, required: bool) -> Option<Value> {
    let lower = input.to_lowercase();
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let said = values.iter().find(|v| {
            let text = super::text_of(v).to_lowercase();
            !text.is_empty() && lower.contains(&text)
        });
        return said.or(values.first()).cloned();
    }
    let number = first_number(input);
    match type_of(schema) {
        "integer" => number.map(|n| json!(n.trunc() as i64)),
        "number" => number.map(|n| json!(n)),
        "boolean" => Some(json!(lower.contains(&name.to_lowercase()))),
        "array" => None,
        "object" => None,
        _ => Some(json!(input)),
    }
    .or_else(|| {
        required.then(|| match type_of(schema) {
            "array" => json!([]),
            "object" => json!({}),
            _ => json!(0),
        })
    })
}

/// A schema's `type` (the first that is not `null` when it lists several), `string` when it
/// says none.
fn type_of(schema: &Value) -> &str {
    match schema.get("type") {
        Some(Value::String(t)) => t,
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("string"),
        _ => "string",
    }
}

/// The first number written in `text` (`-3`, `12`, `2.5`).
fn first_number(text: &str) -> Option<f64> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let negative = text[..start].ends_with('-');
    let rest = &text[start..];
    let mut end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    // A trailing dot ends a sentence, not a number.
    while rest[..end].ends_with('.') {
        end -= 1;
    }
    let digits = &rest[..end];
    let digits = match digits.match_indices('.').nth(1) {
        Some((second, _)) => &digits[..second], // `1.2.3`: the number is 1.2
        None => digits,
    };
    let n: f64 = digits.parse().ok()?;
    Some(if negative { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_the_input() {
        assert_eq!(first_number("weather in Paris for 3 days."), Some(3.0));
        assert_eq!(first_number("it was -4.5 degrees"), Some(-4.5));
        assert_eq!(first_number("version 1.2.3"), Some(1.2));
        assert_eq!(first_number("ends with 7."), Some(7.0));
        assert_eq!(first_number("no numbers"), None);
    }

    #[test]
    fn declared_parameters_are_filled_from_the_input() {
        let tool = ToolSpec::new(
            "tool_1",
            "forecast",
            "",
            Some(json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "days": {"type": "integer"},
                    "units": {"type": "string", "enum": ["metric", "imperial"]},
                    "hourly": {"type": "boolean"},
                    "tags": {"type": "array"},
                    "extra": {"type": ["object", "null"]},
                    "limit": {"type": "number"}
                },
                "required": ["tags"]
            })),
            ToolKind::Api,
        );
        let input = "Forecast for Oslo, 4 days, imperial, hourly please";
        assert_eq!(
            arguments_for(&tool, input),
            json!({"city": input, "days": 4, "units": "imperial", "hourly": true,
                   "tags": [], "limit": 4.0})
        );
        let knowledge = ToolSpec::new("tool_2", "faq", "", None, ToolKind::Knowledge);
        assert_eq!(arguments_for(&knowledge, "hi"), json!({"query": "hi"}));
    }
}
