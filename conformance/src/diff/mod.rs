//! `agentplane diff <old> <new>`: the changes between two OpenAPI documents, each classified
//! as breaking, potentially breaking or safe for clients written against the old one.
//!
//! CI users of oasdiff and Specmatic's backward-compatibility check gate pull requests on
//! this; neither Schemathesis nor Prism has it. Both documents go through the toolkit's one
//! loader ([`crate::spec`]): bundled, and normalized to 3.1 forms, so a 3.0 `nullable` and a
//! 3.1 `type: [.., "null"]` compare equal and a 3.0 document can be diffed against its 3.1
//! successor. The walk ([`walk`]) pairs paths (by template, whatever the parameter names),
//! operations, parameters, bodies and responses per media type, and compares their schemas
//! recursively ([`schema`]) on the side they sit on: what a client sends, or what it reads.
//! Every finding names a [`rules`] entry (a stable id with a fixed severity), the JSON
//! pointer on both sides and one sentence. A change inside a shared component is reported
//! once, with every operation it reaches.

pub mod render;
pub mod rules;
mod schema;
pub mod source;
mod walk;

use serde_json::Value;

pub use rules::{Rule, Severity};

/// Exit code: nothing at or above the `--fail-on` severity.
pub const EXIT_PASSED: u8 = 0;
/// Exit code: a change at or above the `--fail-on` severity.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad arguments, or a document that cannot be loaded.
pub const EXIT_USAGE: u8 = 2;

/// One change between the two documents.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub rule: Rule,
    /// One plain sentence.
    pub message: String,
    /// JSON pointer in the old document: the changed node, or for an addition the node that
    /// lacks it.
    pub old_pointer: String,
    /// JSON pointer in the new document: the changed node, or for a removal the node that
    /// lost it.
    pub new_pointer: String,
    /// The operations it reaches (`GET /pets/{id}`), in document order.
    pub operations: Vec<String>,
}

impl Change {
    pub fn id(&self) -> &'static str {
        self.rule.id
    }

    pub fn severity(&self) -> Severity {
        self.rule.severity
    }
}

/// Compares two loaded (bundled, normalized) documents. The changes come sorted: worst
/// severity first, then by rule id and pointer.
pub fn diff(old: &Value, new: &Value) -> Vec<Change> {
    let mut changes = walk::Differ::new(old, new).run();
    changes.sort_by(|a, b| {
        (
            a.severity(),
            a.id(),
            &a.new_pointer,
            &a.old_pointer,
            &a.message,
        )
            .cmp(&(
                b.severity(),
                b.id(),
                &b.new_pointer,
                &b.old_pointer,
                &b.message,
            ))
    });
    changes
}

/// How many changes of each severity, worst first.
pub fn counts(changes: &[Change]) -> [(Severity, usize); 3] {
    Severity::ALL.map(|s| (s, changes.iter().filter(|c| c.severity() == s).count()))
}

/// The output formats of the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
    Markdown,
}

impl Format {
    pub fn parse(name: &str) -> Result<Format, String> {
        match name {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            other => Err(format!(
                "unknown format {other:?}; known: text, json, markdown"
            )),
        }
    }
}

/// Parses `--fail-on`: `breaking`, or `potential` (potentially breaking or worse).
pub fn parse_fail_on(name: &str) -> Result<Severity, String> {
    match name {
        "breaking" => Ok(Severity::Breaking),
        "potential" | "potentially-breaking" => Ok(Severity::Potential),
        other => Err(format!(
            "unknown --fail-on {other:?}; known: breaking, potential"
        )),
    }
}

/// The command's options, as parsed by the binary.
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    /// A file (YAML or JSON, may span files), an `http(s)://` URL, or `git:<rev>:<path>`.
    pub old: String,
    pub new: String,
    /// `text`, `json` or `markdown`.
    pub format: Option<String>,
    /// `breaking` or `potential`.
    pub fail_on: Option<String>,
}

/// Runs the command: prints the report to stdout and returns the exit code.
pub async fn run_command(options: CommandOptions) -> u8 {
    let usage = |message: String| {
        eprintln!("agentplane diff: {message}");
        EXIT_USAGE
    };
    let format = match options.format.as_deref().map(Format::parse).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => return usage(e),
    };
    let fail_on = match options.fail_on.as_deref().map(parse_fail_on).transpose() {
        Ok(f) => f,
        Err(e) => return usage(e),
    };
    let old = match source::load(&options.old).await {
        Ok(doc) => doc,
        Err(e) => return usage(e),
    };
    let new = match source::load(&options.new).await {
        Ok(doc) => doc,
        Err(e) => return usage(e),
    };
    let changes = diff(&old, &new);
    let out = match format {
        Format::Text => render::text(&options.old, &options.new, &changes),
        Format::Json => render::json(&options.old, &options.new, &changes),
        Format::Markdown => render::markdown(&options.old, &options.new, &changes),
    };
    print!("{out}");
    match fail_on {
        Some(threshold) if changes.iter().any(|c| c.severity() <= threshold) => EXIT_FAILED,
        _ => EXIT_PASSED,
    }
}
