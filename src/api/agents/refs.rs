//! What an agent names outside itself (its model, prompt template, knowledge bases, tools,
//! and those its flow's nodes name), checked against the caller's organization when the agent
//! is saved: a reference to nothing there, or to another organization's resource, is a 422
//! naming the field (`knowledge_bases[1]`, `flow.nodes[2].config.tool_id`). A flow is checked
//! whole ([`crate::engine::flow::validate`]): its graph, its nodes' configs, its references.
//!
//! A model id without the `model_` prefix (`gpt-4`) is a model's name, not a reference, as in
//! flows; the built-in `model_local` is every organization's.

use std::cell::RefCell;

use serde_json::{Map, Value};

use crate::api::models::BUILTIN_ID as BUILTIN_MODEL;
use crate::db::{DbConnection, Found, StoreResult};
use crate::engine::flow::{self, RefKind};
use crate::error::{Failure, Kind, detail};

/// What a reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Model,
    Template,
    KnowledgeBase,
    Tool,
    /// A tool a flow node calls: any but a `function` tool (a flow does not pause).
    FlowTool,
}

impl From<RefKind> for Target {
    fn from(kind: RefKind) -> Target {
        match kind {
            RefKind::Tool => Target::FlowTool,
            RefKind::Model => Target::Model,
            RefKind::KnowledgeBase => Target::KnowledgeBase,
        }
    }
}

/// Whether `id` names a `target` of the organization `org`.
fn exists(conn: &mut DbConnection, org: &str, target: Target, id: &str) -> StoreResult<bool> {
    use crate::db::{knowledge, models, templates, tools};
    Ok(match target {
        Target::Model => {
            id == BUILTIN_MODEL
                || !id.starts_with("model_")
                || models::get(conn, org, id).found()?.is_some()
        }
        Target::Template => templates::get(conn, org, id).found()?.is_some(),
        Target::KnowledgeBase => knowledge::get(conn, org, id).found()?.is_some(),
        Target::Tool => tools::get(conn, org, id).found()?.is_some(),
        Target::FlowTool => tools::get(conn, org, id)
            .found()?
            .is_some_and(|t| t.content.tool_type != "function"),
    })
}

fn missing(target: Target, id: &str) -> String {
    let what = match target {
        Target::Model => "model",
        Target::Template => "prompt template",
        Target::KnowledgeBase => "knowledge base",
        Target::Tool => "tool",
        Target::FlowTool => "tool a flow can call (a `function` tool cannot be)",
    };
    format!("no {what} `{id}` in this organization")
}

/// The references among the fields of `agent` (as a request sends it): field, target, id.
fn named(agent: &Map<String, Value>) -> Vec<(String, Target, &str)> {
    let mut found = Vec::new();
    for (key, target) in [
        ("model_id", Target::Model),
        ("prompt_template_id", Target::Template),
    ] {
        if let Some(id) = agent.get(key).and_then(Value::as_str) {
            found.push((key.to_string(), target, id));
        }
    }
    for (key, target) in [
        ("knowledge_bases", Target::KnowledgeBase),
        ("tools", Target::Tool),
    ] {
        let ids = agent
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for (i, id) in ids.enumerate() {
            if let Some(id) = id.as_str() {
                found.push((format!("{key}[{i}]"), target, id));
            }
        }
    }
    found
}

/// The violations of the flow `flow`, its references looked up in `org`.
fn flow_violations(
    conn: &mut DbConnection, org: &str, flow: &Value,
) -> StoreResult<Vec<flow::Violation>> {
    let conn = RefCell::new(conn);
    let failed = RefCell::new(None);
    let refs = |kind: RefKind, id: &str| match exists(&mut conn.borrow_mut(), org, kind.into(), id)
    {
        Ok(found) => found,
        Err(e) => {
            failed.borrow_mut().get_or_insert(e);
            true
        }
    };
    let verdict = flow::validate(flow, &refs);
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    Ok(verdict.err().unwrap_or_default())
}

/// Checks what `agent` (the fields a request sets) refers to in the organization `org`, and
/// its flow: a 422 naming every field that is wrong.
pub(super) fn check(
    conn: &mut DbConnection, org: &str, agent: &Map<String, Value>, rid: &str,
) -> StoreResult<Result<(), Failure>> {
    let mut details = Vec::new();
    for (field, target, id) in named(agent) {
        if !exists(conn, org, target, id)? {
            details.push(detail(&field, "not_found", missing(target, id)));
        }
    }
    if let Some(flow) = agent.get("flow").filter(|f| !f.is_null()) {
        for v in flow_violations(conn, org, flow)? {
            details.push(detail(&v.field, v.code, v.message));
        }
    }
    if details.is_empty() {
        return Ok(Ok(()));
    }
    let message = match details.len() {
        1 => format!("{}: {}", details[0].field, details[0].message),
        n => format!(
            "{n} problems, the first {}: {}",
            details[0].field, details[0].message
        ),
    };
    Ok(Err(Failure::with_details(
        Kind::Unprocessable,
        "VALIDATION_ERROR",
        message,
        details,
        rid,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_named_by_their_fields() {
        let agent = serde_json::json!({
            "model_id": "model_x", "prompt_template_id": "tpl_1",
            "knowledge_bases": ["kb_a", "kb_b"], "tools": ["tool_1"], "name": "n"
        });
        let named = named(agent.as_object().expect("object"));
        let fields: Vec<&str> = named.iter().map(|(f, _, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            [
                "model_id",
                "prompt_template_id",
                "knowledge_bases[0]",
                "knowledge_bases[1]",
                "tools[0]"
            ]
        );
        assert_eq!(
            named[3],
            (
                "knowledge_bases[1]".to_string(),
                Target::KnowledgeBase,
                "kb_b"
            )
        );
    }
}
