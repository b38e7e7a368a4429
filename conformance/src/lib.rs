//! The spec-agnostic core of the agentplane contract toolkit.
//!
//! It reads any OpenAPI 3.0 or 3.1 document (YAML or JSON, one file or many), bundles and
//! normalizes it ([`spec`]), matches paths against its templates ([`router`]) and validates
//! requests against it ([`validate`]). The server validates every request with it before a
//! handler runs; `codegen` bundles with it; the mock and the conformance runner build on it.
//! The conformance harness (`agentplane conform`) generates data from schemas ([`generate`]),
//! sends it ([`runner`]), judges the responses with named [`checks`] and renders a
//! [`report`] and a [`coverage`] report of what it exercised, and can record every
//! interaction as a Schemathesis-compatible [`cassette`]. The mock server (`agentplane mock`, [`mock`]) serves any spec from the same
//! loader, router, validator and generator.

pub mod cassette;
pub mod checks;
pub mod conform;
pub mod coverage;
pub mod diff;
pub mod generate;
pub mod mock;
pub mod report;
pub mod response;
pub mod router;
pub mod runner;
pub mod spec;
pub mod sse;
pub mod validate;
pub mod xml;

pub use spec::SpecError;
pub use validate::{Outcome, RequestValidator, Violation};

/// The HTTP methods an OpenAPI path item can hold, in the order the spec lists them.
pub const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];
