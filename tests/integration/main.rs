//! Integration tests: real servers on loopback over real databases (one test binary, so
//! linking happens once).

mod agent_links;
mod agents;
mod conform;
mod identity;
mod knowledge;
mod mock;
mod models;
mod profile;
mod support;
mod system;
mod templates;
mod tools;
mod twins;
mod usage;
mod validation;
mod vault;
