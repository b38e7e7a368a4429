//! The typed flow: the spec's `AgentFlow`, `FlowNode` (a union by `type`, each with its own
//! config) and `FlowEdge`, with serde that reads and writes exactly the JSON the API stores.
//! Untrusted JSON goes through [`super::validate`], which names every bad field; serde alone
//! is for JSON that has been validated before (a stored agent's flow).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A CodexOS flow graph (`AgentFlow`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFlow {
    pub nodes: Vec<FlowNode>,
    pub edges: Vec<FlowEdge>,
}

/// A connection between two nodes (`FlowEdge`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowEdge {
    /// The node the edge leaves, or [`ENTRY`] when the flow declares no `input` node.
    pub source: String,
    pub target: String,
    /// For an edge leaving a `condition` node, the value (as text) it is followed on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Free text kept for CodexOS compatibility; routing uses `branch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
}

/// The source that names the flow's input when no `input` node is declared.
pub const ENTRY: &str = "entry";

/// One node (`FlowNode`): its id, label and typed config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawNode", into = "RawNode")]
pub struct FlowNode {
    pub id: String,
    pub name: Option<String>,
    pub kind: NodeKind,
}

/// A node's type with its config.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    Input(InputConfig),
    Llm(LlmConfig),
    Retrieval(RetrievalConfig),
    Tool(ToolConfig),
    Condition(ConditionConfig),
    Template(TemplateConfig),
    Output(OutputConfig),
}

/// A node's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeType {
    Input,
    Llm,
    Retrieval,
    Tool,
    Condition,
    Template,
    Output,
}

impl NodeType {
    /// Every type, in the spec's order.
    pub const ALL: [NodeType; 7] = [
        NodeType::Input,
        NodeType::Llm,
        NodeType::Retrieval,
        NodeType::Tool,
        NodeType::Condition,
        NodeType::Template,
        NodeType::Output,
    ];

    /// The wire name (`llm`, `tool`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Input => "input",
            NodeType::Llm => "llm",
            NodeType::Retrieval => "retrieval",
            NodeType::Tool => "tool",
            NodeType::Condition => "condition",
            NodeType::Template => "template",
            NodeType::Output => "output",
        }
    }

    /// The type a wire name names.
    pub fn from_wire(name: &str) -> Option<NodeType> {
        NodeType::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// Whether a node of this type must carry a `config` (all but `input` and `output`).
    pub fn needs_config(self) -> bool {
        !matches!(self, NodeType::Input | NodeType::Output)
    }
}

/// `input`: what the flow expects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `llm`: one model call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// A registered model's id (`model_…`) or a model name; default the agent's model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// A template (`{{input}}`, `{{nodes.<id>.output}}`, parameters by name).
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<i64>,
    /// Ids of tools the model may call in this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
}

/// `retrieval`: a search of knowledge bases.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrievalConfig {
    pub knowledge_base_ids: Vec<String>,
    /// A template; default the upstream output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i64>,
}

/// `tool`: one call of a tool.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    pub tool_id: String,
    /// String values (at any depth) are templates; default `{"query": <upstream output>}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<Map<String, Value>>,
}

/// `condition`: routes on a JSONLogic expression.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionConfig {
    /// A JSONLogic expression (an object) or a boolean.
    pub expression: Value,
}

/// `template`: rendered text.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub template: String,
}

/// `output`: the flow's answer.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// A template; default the upstream output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

impl FlowNode {
    /// The node's type.
    pub fn node_type(&self) -> NodeType {
        match &self.kind {
            NodeKind::Input(_) => NodeType::Input,
            NodeKind::Llm(_) => NodeType::Llm,
            NodeKind::Retrieval(_) => NodeType::Retrieval,
            NodeKind::Tool(_) => NodeType::Tool,
            NodeKind::Condition(_) => NodeType::Condition,
            NodeKind::Template(_) => NodeType::Template,
            NodeKind::Output(_) => NodeType::Output,
        }
    }

    /// The node's templates, each with the config field that holds it (`prompt`,
    /// `arguments.path`, ...).
    pub fn templates(&self) -> Vec<(String, &str)> {
        let fields: Vec<(&str, Option<&String>)> = match &self.kind {
            NodeKind::Llm(c) => vec![("prompt", Some(&c.prompt)), ("system", c.system.as_ref())],
            NodeKind::Retrieval(c) => vec![("query", c.query.as_ref())],
            NodeKind::Template(c) => vec![("template", Some(&c.template))],
            NodeKind::Output(c) => vec![("value", c.value.as_ref())],
            NodeKind::Tool(c) => {
                let mut found = Vec::new();
                for (key, value) in c.arguments.iter().flatten() {
                    strings_in(value, format!("arguments.{key}"), &mut found);
                }
                return found;
            }
            NodeKind::Input(_) | NodeKind::Condition(_) => Vec::new(),
        };
        let present = fields
            .into_iter()
            .filter_map(|(f, t)| Some((f.to_string(), t?.as_str())));
        present.collect()
    }
}

/// Every string in `value` with its path under `at`.
fn strings_in<'a>(value: &'a Value, at: String, found: &mut Vec<(String, &'a str)>) {
    match value {
        Value::String(s) => found.push((at, s.as_str())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                strings_in(item, format!("{at}[{i}]"), found);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                strings_in(item, format!("{at}.{key}"), found);
            }
        }
        _ => {}
    }
}

/// A node as it is written: the config as JSON until the type says what it is.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(rename = "type")]
    node_type: NodeType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
}

fn config<T: DeserializeOwned + Default>(raw: Option<Value>) -> Result<T, String> {
    match raw {
        None => Ok(T::default()),
        Some(v) => serde_json::from_value(v).map_err(|e| e.to_string()),
    }
}

impl TryFrom<RawNode> for FlowNode {
    type Error = String;

    fn try_from(raw: RawNode) -> Result<Self, String> {
        if raw.node_type.needs_config() && raw.config.is_none() {
            return Err(format!("node `{}` needs a config", raw.id));
        }
        let c = raw.config;
        let kind = match raw.node_type {
            NodeType::Input => NodeKind::Input(config(c)?),
            NodeType::Llm => NodeKind::Llm(config(c)?),
            NodeType::Retrieval => NodeKind::Retrieval(config(c)?),
            NodeType::Tool => NodeKind::Tool(config(c)?),
            NodeType::Condition => NodeKind::Condition(config(c)?),
            NodeType::Template => NodeKind::Template(config(c)?),
            NodeType::Output => NodeKind::Output(config(c)?),
        };
        Ok(FlowNode {
            id: raw.id,
            name: raw.name,
            kind,
        })
    }
}

impl From<FlowNode> for RawNode {
    fn from(node: FlowNode) -> RawNode {
        let node_type = node.node_type();
        let config = match node.kind {
            NodeKind::Input(c) if c == InputConfig::default() => None,
            NodeKind::Output(c) if c == OutputConfig::default() => None,
            NodeKind::Input(c) => serde_json::to_value(c).ok(),
            NodeKind::Output(c) => serde_json::to_value(c).ok(),
            NodeKind::Llm(c) => serde_json::to_value(c).ok(),
            NodeKind::Retrieval(c) => serde_json::to_value(c).ok(),
            NodeKind::Tool(c) => serde_json::to_value(c).ok(),
            NodeKind::Condition(c) => serde_json::to_value(c).ok(),
            NodeKind::Template(c) => serde_json::to_value(c).ok(),
        };
        RawNode {
            id: node.id,
            name: node.name,
            node_type,
            config,
        }
    }
}
