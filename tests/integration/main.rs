//! Integration tests: real servers on loopback over real databases (one test binary, so
//! linking happens once).

mod agent_links;
mod agents;
mod conform;
mod identity;
mod models;
mod support;
mod system;
mod templates;
mod validation;
