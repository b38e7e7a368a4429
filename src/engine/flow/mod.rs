//! CodexOS flows: an agent's graph of typed nodes (`input`, `llm`, `retrieval`, `tool`,
//! `condition`, `template`, `output`), validated when it is saved ([`validate`]) and run node
//! by node when the agent executes ([`run`]).
//!
//! The module is pure: it knows nothing of storage, providers or HTTP. What it needs from
//! the organization (do these tools exist?) comes through [`References`], and what nodes do
//! with models, tools and knowledge, and where their steps go, through [`NodeEnv`].

mod expr;
mod graph;
mod model;
mod run;
mod shape;
mod validate;
mod violation;

#[cfg(test)]
mod tests;

pub use model::{
    AgentFlow, ConditionConfig, ENTRY, FlowEdge, FlowNode, InputConfig, LlmConfig, NodeKind,
    NodeType, OutputConfig, RetrievalConfig, TemplateConfig, ToolConfig,
};
pub use run::{
    Completion, FailureCode, FlowFailure, FlowInput, FlowOutcome, Limits, LlmCall, NodeEnv,
    NodeStatus, NodeStep, Usage, as_text, run,
};
pub use validate::{Flow, RefKind, Reference, References, Violation, code, references, validate};
