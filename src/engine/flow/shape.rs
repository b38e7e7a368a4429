//! The first half of validation: the JSON has the spec's shape (`AgentFlow`, the `FlowNode`
//! union and each config, `FlowEdge`): required fields, types, lengths, patterns, ranges, no
//! unknown fields. Codes are the JSON Schema keywords (`required`, `type`, `maximum`, ...), as
//! request validation names them.

use serde_json::{Map, Value};

use super::model::NodeType;
use super::violation::{Violation, code};

/// What one field must be.
#[derive(Clone, Copy)]
enum Rule {
    /// A string of `min..=max` characters.
    Text {
        min: usize,
        max: usize,
    },
    /// A `FlowNodeId`: `^[A-Za-z0-9_.-]+$`, 1 to 100 characters.
    NodeId,
    /// A node `type`.
    Type,
    /// A resource id: `^[A-Za-z0-9_-]{1,64}$`.
    RefId,
    /// An array of `min..=max` resource ids.
    RefIds {
        min: usize,
        max: usize,
    },
    Number {
        min: f64,
        max: f64,
    },
    Integer {
        min: i64,
        max: i64,
    },
    /// An object of at most `max` properties.
    Object {
        max: usize,
    },
    /// A JSONLogic expression (an object) or a boolean.
    Expression,
    /// An array its caller checks item by item.
    Items,
}

struct Field {
    name: &'static str,
    required: bool,
    rule: Rule,
}

const fn req(name: &'static str, rule: Rule) -> Field {
    Field {
        name,
        required: true,
        rule,
    }
}

const fn opt(name: &'static str, rule: Rule) -> Field {
    Field {
        name,
        required: false,
        rule,
    }
}

const LABEL: Rule = Rule::Text { min: 0, max: 200 };
const TEMPLATE: Rule = Rule::Text {
    min: 0,
    max: 20_000,
};
const ANY_OBJECT: Rule = Rule::Object { max: usize::MAX };
const MAX_NODES: usize = 500;
const MAX_EDGES: usize = 2000;

const FLOW: &[Field] = &[req("nodes", Rule::Items), req("edges", Rule::Items)];
const NODE: &[Field] = &[
    req("id", Rule::NodeId),
    opt("name", LABEL),
    req("type", Rule::Type),
    opt("config", ANY_OBJECT),
];
const EDGE: &[Field] = &[
    req("source", Rule::Text { min: 1, max: 100 }),
    req("target", Rule::Text { min: 1, max: 100 }),
    opt("branch", Rule::Text { min: 0, max: 200 }),
    opt("condition", Rule::Text { min: 0, max: 1000 }),
];
const INPUT: &[Field] = &[opt("description", Rule::Text { min: 0, max: 2000 })];
const LLM: &[Field] = &[
    opt("model", Rule::Text { min: 1, max: 200 }),
    req("prompt", TEMPLATE),
    opt("system", TEMPLATE),
    opt("temperature", Rule::Number { min: 0.0, max: 2.0 }),
    opt(
        "max_tokens",
        Rule::Integer {
            min: 1,
            max: 1_000_000,
        },
    ),
    opt("tools", Rule::RefIds { min: 0, max: 50 }),
];
const RETRIEVAL: &[Field] = &[
    req("knowledge_base_ids", Rule::RefIds { min: 1, max: 10 }),
    opt("query", TEMPLATE),
    opt("top_k", Rule::Integer { min: 1, max: 100 }),
];
const TOOL: &[Field] = &[
    req("tool_id", Rule::RefId),
    opt("arguments", Rule::Object { max: 50 }),
];
const CONDITION: &[Field] = &[req("expression", Rule::Expression)];
const TEMPLATE_NODE: &[Field] = &[req("template", TEMPLATE)];
const OUTPUT: &[Field] = &[opt("value", TEMPLATE)];

fn config_fields(t: NodeType) -> &'static [Field] {
    match t {
        NodeType::Input => INPUT,
        NodeType::Llm => LLM,
        NodeType::Retrieval => RETRIEVAL,
        NodeType::Tool => TOOL,
        NodeType::Condition => CONDITION,
        NodeType::Template => TEMPLATE_NODE,
        NodeType::Output => OUTPUT,
    }
}

/// Adds a violation for every place `flow` departs from the spec's shape.
pub(super) fn check_flow(flow: &Value, out: &mut Vec<Violation>) {
    let Some(map) = fields(flow, "flow", FLOW, out) else {
        return;
    };
    for (key, max, is_node) in [("nodes", MAX_NODES, true), ("edges", MAX_EDGES, false)] {
        let Some(value) = map.get(key) else { continue };
        let path = format!("flow.{key}");
        let Some(items) = value.as_array() else {
            out.push(Violation::new(&path, code::TYPE, "must be an array"));
            continue;
        };
        if items.len() > max {
            let message = format!("must have at most {max} items");
            out.push(Violation::new(&path, code::MAX_ITEMS, message));
        }
        for (i, item) in items.iter().enumerate() {
            let at = format!("{path}[{i}]");
            if is_node {
                check_node(item, &at, out);
            } else {
                fields(item, &at, EDGE, out);
            }
        }
    }
}

fn check_node(node: &Value, path: &str, out: &mut Vec<Violation>) {
    let Some(map) = fields(node, path, NODE, out) else {
        return;
    };
    let Some(t) = map
        .get("type")
        .and_then(Value::as_str)
        .and_then(NodeType::from_wire)
    else {
        return;
    };
    match map.get("config") {
        Some(config) => {
            fields(config, &format!("{path}.config"), config_fields(t), out);
        }
        None if t.needs_config() => {
            let message = format!("a `{}` node needs a config", t.as_str());
            out.push(Violation::new(
                &format!("{path}.config"),
                code::REQUIRED,
                message,
            ));
        }
        None => {}
    }
}

/// Checks `value` is an object with `fields` and no others; the object when it is one.
fn fields<'v>(
    value: &'v Value, path: &str, fields: &[Field], out: &mut Vec<Violation>,
) -> Option<&'v Map<String, Value>> {
    let Some(map) = value.as_object() else {
        out.push(Violation::new(path, code::TYPE, "must be an object"));
        return None;
    };
    for field in fields {
        let at = format!("{path}.{}", field.name);
        match map.get(field.name) {
            Some(v) => check_rule(v, &at, field.rule, out),
            None if field.required => {
                out.push(Violation::new(&at, code::REQUIRED, "is required"));
            }
            None => {}
        }
    }
    for key in map.keys() {
        if !fields.iter().any(|f| f.name == key) {
            let message = format!("`{key}` is not a field here");
            let at = format!("{path}.{key}");
            out.push(Violation::new(&at, code::ADDITIONAL_PROPERTIES, message));
        }
    }
    Some(map)
}

fn check_rule(value: &Value, path: &str, rule: Rule, out: &mut Vec<Violation>) {
    let mut fail = |code: &'static str, message: String| {
        out.push(Violation::new(path, code, message));
    };
    match rule {
        Rule::Text { min, max } => match value.as_str() {
            None => fail(code::TYPE, "must be a string".into()),
            Some(s) => text_length(s, min, max, &mut fail),
        },
        Rule::NodeId => match value.as_str() {
            None => fail(code::TYPE, "must be a string".into()),
            Some(s) => {
                text_length(s, 1, 100, &mut fail);
                if !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                {
                    let message = "may hold only letters, digits, `_`, `.` and `-`";
                    fail(code::PATTERN, message.into());
                }
            }
        },
        Rule::Type => match value.as_str() {
            None => fail(code::TYPE, "must be a string".into()),
            Some(s) if NodeType::from_wire(s).is_none() => {
                let known: Vec<&str> = NodeType::ALL.iter().map(|t| t.as_str()).collect();
                let message = format!("unknown node type `{s}`: one of {}", known.join(", "));
                fail(code::ENUM, message);
            }
            Some(_) => {}
        },
        Rule::RefId => ref_id(value, &mut fail),
        Rule::RefIds { min, max } => ref_ids(value, path, min, max, out),
        Rule::Number { min, max } => match value.as_f64() {
            None => fail(code::TYPE, "must be a number".into()),
            Some(n) => range(n, min, max, &mut fail),
        },
        Rule::Integer { min, max } => match value.as_i64() {
            None => fail(code::TYPE, "must be an integer".into()),
            Some(n) => range(n, min, max, &mut fail),
        },
        Rule::Object { max } => match value.as_object() {
            None => fail(code::TYPE, "must be an object".into()),
            Some(map) if map.len() > max => {
                fail(
                    code::MAX_PROPERTIES,
                    format!("must have at most {max} fields"),
                );
            }
            Some(_) => {}
        },
        Rule::Items => {}
        Rule::Expression => {
            if !matches!(value, Value::Object(_) | Value::Bool(_)) {
                let message = "must be a JSONLogic expression (an object) or a boolean";
                fail(code::TYPE, message.into());
            }
        }
    }
}

fn text_length(s: &str, min: usize, max: usize, fail: &mut impl FnMut(&'static str, String)) {
    let chars = s.chars().count();
    if chars < min {
        let unit = if min == 1 { "character" } else { "characters" };
        fail(code::MIN_LENGTH, format!("must have at least {min} {unit}"));
    } else if chars > max {
        fail(
            code::MAX_LENGTH,
            format!("must have at most {max} characters"),
        );
    }
}

fn range<N: PartialOrd + std::fmt::Display>(
    n: N, min: N, max: N, fail: &mut impl FnMut(&'static str, String),
) {
    if n < min {
        fail(code::MINIMUM, format!("must be at least {min}"));
    } else if n > max {
        fail(code::MAXIMUM, format!("must be at most {max}"));
    }
}

fn ref_id(value: &Value, fail: &mut impl FnMut(&'static str, String)) {
    match value.as_str() {
        None => fail(code::TYPE, "must be a string".into()),
        Some(s) => {
            let ok = (1..=64).contains(&s.len())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                let message = "must be an id: 1 to 64 letters, digits, `_` or `-`";
                fail(code::PATTERN, message.into());
            }
        }
    }
}

fn ref_ids(value: &Value, path: &str, min: usize, max: usize, out: &mut Vec<Violation>) {
    let Some(items) = value.as_array() else {
        out.push(Violation::new(path, code::TYPE, "must be an array"));
        return;
    };
    if items.len() < min {
        let message = format!(
            "must have at least {min} item{}",
            if min == 1 { "" } else { "s" }
        );
        out.push(Violation::new(path, code::MIN_ITEMS, message));
    } else if items.len() > max {
        let message = format!("must have at most {max} items");
        out.push(Violation::new(path, code::MAX_ITEMS, message));
    }
    for (i, item) in items.iter().enumerate() {
        let at = format!("{path}[{i}]");
        ref_id(item, &mut |code, message| {
            out.push(Violation::new(&at, code, message));
        });
    }
}
