//! Integration tests: real servers on loopback over real databases (one test binary, so
//! linking happens once).

mod agents;
mod conform;
mod identity;
mod knowledge;
mod mock;
mod profile;
mod support;
mod system;
mod tools;
mod validation;
