//! Integration tests: real servers on loopback over real databases (one test binary, so
//! linking happens once).

mod agent_links;
mod agents;
mod agents_references;
mod auth_flood;
mod bootstrap;
mod conform;
mod conversations;
mod deployments;
mod egress;
mod evaluations;
mod executions;
mod executions_tools;
mod hygiene;
mod identity;
mod knowledge;
mod marketplace;
mod mock;
mod models;
mod ops;
mod profile;
mod rate_limit_replicas;
mod security;
mod stream;
mod support;
mod system;
mod templates;
mod tools;
mod twins;
mod usage;
mod validation;
mod vault;
mod webhooks;
