//! Validation of a flow as the API receives it: first its shape ([`super::shape`]), then the
//! graph (unique ids, edges between existing nodes, one entry, no cycles, branches only out
//! of conditions), the references (tools, models, knowledge bases, through the caller's
//! [`References`]) and the templates (`{{nodes.<id>.output}}` names an upstream node). Each
//! violation names the field as the API's error details do (`flow.nodes[2].config.tool_id`).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::expr;
use super::graph::Graph;
use super::model::{AgentFlow, ENTRY, NodeKind, NodeType};
use super::shape;
pub use super::violation::{Violation, code};
use crate::engine::template;

/// What a flow may refer to outside itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind {
    /// A tool a flow can call (not a `function` tool: a flow does not pause).
    Tool,
    /// A registered model (`model_…`).
    Model,
    KnowledgeBase,
}

/// Answers whether a referenced resource exists (in the organization saving the flow).
pub trait References {
    fn exists(&self, kind: RefKind, id: &str) -> bool;
}

impl<F: Fn(RefKind, &str) -> bool> References for F {
    fn exists(&self, kind: RefKind, id: &str) -> bool {
        self(kind, id)
    }
}

/// One reference a flow makes, with the field that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference<'a> {
    pub kind: RefKind,
    pub id: &'a str,
    pub field: String,
}

/// A flow that passed [`validate`]: acyclic, every edge between existing nodes, ready to run.
#[derive(Debug, Clone)]
pub struct Flow {
    pub(super) definition: AgentFlow,
    pub(super) graph: Graph,
}

impl Flow {
    /// A stored flow, validated again but for its references (checked when it was saved).
    pub fn parse(value: &Value) -> Result<Flow, Vec<Violation>> {
        validate(value, &|_: RefKind, _: &str| true)
    }

    /// The typed flow.
    pub fn definition(&self) -> &AgentFlow {
        &self.definition
    }
}

/// Checks `flow` (the JSON of an agent's `flow`), its references through `refs`.
pub fn validate(flow: &Value, refs: &impl References) -> Result<Flow, Vec<Violation>> {
    let mut out = Vec::new();
    shape::check_flow(flow, &mut out);
    if !out.is_empty() {
        return Err(out);
    }
    let definition: AgentFlow = serde_json::from_value(flow.clone())
        .map_err(|e| vec![Violation::new("flow", code::TYPE, e.to_string())])?;
    let graph = Graph::new(&definition);
    check_nodes(&definition, &mut out);
    check_edges(&definition, &graph, &mut out);
    for (i, node) in definition.nodes.iter().enumerate() {
        if let NodeKind::Condition(c) = &node.kind
            && let Err(message) = expr::check(&c.expression)
        {
            let field = format!("flow.nodes[{i}].config.expression");
            out.push(Violation::new(&field, code::EXPRESSION, message));
        }
    }
    for r in references(&definition) {
        if !refs.exists(r.kind, r.id) {
            out.push(Violation::new(
                &r.field,
                code::NOT_FOUND,
                missing(r.kind, r.id),
            ));
        }
    }
    let cycles = graph.back_edges();
    for back in &cycles {
        let ids: Vec<&str> = back
            .cycle
            .iter()
            .map(|&n| definition.nodes[n].id.as_str())
            .collect();
        let message = format!("closes a cycle: {} → {}", ids.join(" → "), ids[0]);
        out.push(Violation::new(
            &format!("flow.edges[{}]", back.edge),
            code::CYCLE,
            message,
        ));
    }
    if cycles.is_empty() {
        check_templates(&definition, &graph, &mut out);
    }
    if out.is_empty() {
        Ok(Flow { definition, graph })
    } else {
        Err(out)
    }
}

fn missing(kind: RefKind, id: &str) -> String {
    match kind {
        RefKind::Tool => format!(
            "no tool `{id}` a flow can call in this organization (a `function` tool cannot be)"
        ),
        RefKind::Model => format!("no model `{id}` in this organization"),
        RefKind::KnowledgeBase => format!("no knowledge base `{id}` in this organization"),
    }
}

/// Every tool, registered model and knowledge base `flow` refers to. A model named without
/// the `model_` prefix (`gpt-4`) is a name, not a reference.
pub fn references<'a>(flow: &'a AgentFlow) -> Vec<Reference<'a>> {
    let mut found = Vec::new();
    for (i, node) in flow.nodes.iter().enumerate() {
        let at = |field: &str| format!("flow.nodes[{i}].config.{field}");
        let push = |found: &mut Vec<Reference<'a>>, kind, id: &'a str, field| {
            found.push(Reference { kind, id, field });
        };
        match &node.kind {
            NodeKind::Tool(c) => push(&mut found, RefKind::Tool, &c.tool_id, at("tool_id")),
            NodeKind::Llm(c) => {
                if let Some(model) = c.model.as_deref().filter(|m| m.starts_with("model_")) {
                    push(&mut found, RefKind::Model, model, at("model"));
                }
                for (j, tool) in c.tools.iter().enumerate() {
                    push(&mut found, RefKind::Tool, tool, at(&format!("tools[{j}]")));
                }
            }
            NodeKind::Retrieval(c) => {
                for (j, kb) in c.knowledge_base_ids.iter().enumerate() {
                    let field = at(&format!("knowledge_base_ids[{j}]"));
                    push(&mut found, RefKind::KnowledgeBase, kb, field);
                }
            }
            _ => {}
        }
    }
    found
}

/// Unique ids; at most one `input` node.
fn check_nodes(flow: &AgentFlow, out: &mut Vec<Violation>) {
    let mut input: Option<&str> = None;
    for (i, node) in flow.nodes.iter().enumerate() {
        if let Some(first) = flow.nodes[..i].iter().position(|n| n.id == node.id) {
            let message = format!("node id `{}` is also flow.nodes[{first}]'s", node.id);
            out.push(Violation::new(
                &format!("flow.nodes[{i}].id"),
                code::UNIQUE,
                message,
            ));
        }
        if node.node_type() == NodeType::Input {
            match input {
                Some(first) => {
                    let message = format!("a flow has one `input` node, and `{first}` is one");
                    let field = format!("flow.nodes[{i}].type");
                    out.push(Violation::new(&field, code::ENTRY, message));
                }
                None => input = Some(&node.id),
            }
        }
    }
}

/// Edge ends name nodes (or the entry), nothing enters the input, branches leave conditions.
fn check_edges(flow: &AgentFlow, graph: &Graph, out: &mut Vec<Violation>) {
    let input = flow.nodes.iter().find(|n| n.node_type() == NodeType::Input);
    for (e, edge) in flow.edges.iter().enumerate() {
        let at = |field: &str| format!("flow.edges[{e}].{field}");
        match graph.index.get(&edge.source) {
            Some(_) => {}
            None if edge.source == ENTRY => {
                if let Some(input) = input {
                    let message = format!("this flow's entry is its `input` node `{}`", input.id);
                    out.push(Violation::new(&at("source"), code::ENTRY, message));
                }
            }
            None => {
                let message = format!("no node `{}` in this flow", edge.source);
                out.push(Violation::new(&at("source"), code::NOT_FOUND, message));
            }
        }
        match graph.index.get(&edge.target) {
            None => {
                let message = format!("no node `{}` in this flow", edge.target);
                out.push(Violation::new(&at("target"), code::NOT_FOUND, message));
            }
            Some(&t) if flow.nodes[t].node_type() == NodeType::Input => {
                let message = format!("`{}` is the flow's input: no edge enters it", edge.target);
                out.push(Violation::new(&at("target"), code::ENTRY, message));
            }
            Some(_) => {}
        }
        let from_condition = graph
            .source(e)
            .is_some_and(|s| flow.nodes[s].node_type() == NodeType::Condition);
        if edge.branch.is_some() && !from_condition {
            let message = "only an edge leaving a `condition` node takes a branch";
            out.push(Violation::new(&at("branch"), code::BRANCH, message));
        }
    }
}

/// `{{nodes.<id>.output}}` as people write it, whether or not the template syntax can name
/// that id.
static NODE_OUTPUT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{ *nodes\.([^{}]+?)\.output *\}\}").expect("a valid pattern"));

/// `{{nodes.<id>.output}}` in a template names a node that runs before this one, by an id
/// the template syntax can name.
fn check_templates(flow: &AgentFlow, graph: &Graph, out: &mut Vec<Violation>) {
    let ancestors = graph.ancestors();
    for (i, node) in flow.nodes.iter().enumerate() {
        for (field, text) in node.templates() {
            let names = template::variables_in(text);
            let at = format!("flow.nodes[{i}].config.{field}");
            for found in NODE_OUTPUT.captures_iter(text) {
                let id = &found[1];
                let (code, message) = if !names.contains(&format!("nodes.{id}.output")) {
                    let message = format!(
                        "a template cannot name node `{id}`: only ids of letters, digits and `_` \
                         (51 at most) can be named"
                    );
                    (code::PATTERN, message)
                } else {
                    match graph.index.get(id) {
                        None => (code::NOT_FOUND, format!("no node `{id}` in this flow")),
                        Some(&n) if !ancestors[i][n] => {
                            let message = format!("node `{id}` does not run before `{}`", node.id);
                            (code::UPSTREAM, message)
                        }
                        Some(_) => continue,
                    }
                };
                out.push(Violation::new(&at, code, message));
            }
        }
    }
}
