//! The agentplane code generator: `openapi/` in, `generated/` out.
//!
//! Shaped like progenitor: the spec is bundled and checked ([`conformance::spec`]), turned
//! into an intermediate representation ([`ir`]) and emitted as Rust with `quote!`, laid out by
//! `prettyplease` ([`emit`]). The output is deterministic, so `generated/` is checked in and
//! CI fails when it drifts from the spec.

pub mod emit;
pub mod ir;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Every file codegen writes: (path relative to the output directory, contents).
pub fn generate(spec: &Path) -> Result<Vec<(PathBuf, String)>> {
    let doc =
        conformance::spec::load(spec).with_context(|| format!("loading {}", spec.display()))?;
    let ir = ir::build(&doc)?;
    let mut files = vec![
        (PathBuf::from("openapi.json"), pretty(&doc)?),
        (
            PathBuf::from("openapi-3.0.json"),
            pretty(&conformance::spec::downconvert_to_30(&doc))?,
        ),
    ];
    for (name, text) in emit::emit(&ir)? {
        files.push((Path::new("src").join(name), text));
    }
    Ok(files)
}

fn pretty(doc: &serde_json::Value) -> Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(doc)?))
}

/// Files under `out` whose contents differ from what `generate` produces, plus stale files.
pub fn drift(files: &[(PathBuf, String)], out: &Path) -> Vec<PathBuf> {
    let mut drifted: Vec<PathBuf> = files
        .iter()
        .filter(|(rel, text)| {
            std::fs::read_to_string(out.join(rel)).ok().as_deref() != Some(text.as_str())
        })
        .map(|(rel, _)| rel.clone())
        .collect();
    if let Ok(entries) = std::fs::read_dir(out.join("src")) {
        for entry in entries.flatten() {
            let rel = Path::new("src").join(entry.file_name());
            if !files.iter().any(|(p, _)| *p == rel) {
                drifted.push(rel);
            }
        }
    }
    drifted
}
