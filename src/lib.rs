//! agentplane: the AI-agent platform API server.
//!
//! The routes, models and handler traits are generated from `openapi/` into the
//! `agentplane-api` crate; this crate implements them ([`api`]) over diesel storage ([`db`]),
//! with authentication ([`auth`]), the error envelope ([`error`]) and the HTTP plumbing
//! that validates every request against the spec ([`http`]). [`app`] builds the application
//! (the handlers' state, the job kinds and their worker pools) from the [`server::Config`];
//! [`server`] serves it.

pub mod api;
pub mod app;
pub mod auth;
pub mod crypto;
pub mod db;
pub mod egress;
pub mod engine;
pub mod error;
pub mod evaluation;
pub mod events;
pub mod http;
pub mod ids;
pub mod jobs;
pub mod knowledge;
pub mod marketplace;
pub mod metrics;
pub mod ratelimit;
pub mod runtime;
pub mod secrets;
pub mod security;
pub mod server;
pub mod simulations;
pub mod webhooks;
