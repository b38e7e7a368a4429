//! The execution engine: templates, model providers, retrieval and the worker pool that runs
//! executions.

pub mod act;
pub mod flow;
pub mod pipeline;
pub mod provider;
pub mod runner;
pub mod template;
pub mod tools;
