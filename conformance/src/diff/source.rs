//! Where the two documents come from: a file, an `http(s)://` URL, or `git:<rev>:<path>`
//! (a spec as it was at a commit, branch or tag). Files and URLs go through the loader
//! `conform` uses; a git spec that spans files has each file it references copied out of that
//! revision into a scratch directory first, so the same bundler reads it.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

use crate::spec;

/// Loads, bundles and normalizes the document named by `source`.
pub async fn load(source: &str) -> Result<Value, String> {
    match source.strip_prefix("git:") {
        Some(rest) => {
            let (rev, path) = rest.split_once(':').ok_or_else(|| {
                format!("{source}: a git source looks like git:<rev>:<path>, e.g. git:main:openapi/openapi.yaml")
            })?;
            load_git(rev, path)
        }
        None => crate::conform::load_source(source).await,
    }
}

/// The file `path` (relative to the repository root) at revision `rev`, with every file it
/// references, loaded through [`spec::load`].
pub fn load_git(rev: &str, path: &str) -> Result<Value, String> {
    static SCRATCH: AtomicUsize = AtomicUsize::new(0);
    let root = normalize(Path::new(path))
        .ok_or_else(|| format!("git:{rev}:{path}: the path leaves the repository"))?;
    let dir = std::env::temp_dir().join(format!(
        "agentplane-diff-{}-{}",
        std::process::id(),
        SCRATCH.fetch_add(1, Ordering::Relaxed)
    ));
    let result = materialize(rev, &root, &dir)
        .and_then(|()| spec::load(&dir.join(&root)).map_err(|e| format!("git:{rev}:{path}: {e}")));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Copies `root` and every file it references (transitively) at `rev` under `dir`.
fn materialize(rev: &str, root: &Path, dir: &Path) -> Result<(), String> {
    let mut pending = vec![root.to_path_buf()];
    let mut done = BTreeSet::new();
    while let Some(file) = pending.pop() {
        if !done.insert(file.clone()) {
            continue;
        }
        let text = git_show(rev, &file)?;
        let target = dir.join(&file);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        std::fs::write(&target, &text)
            .map_err(|e| format!("cannot write {}: {e}", target.display()))?;
        let doc = spec::parse_document(&text)
            .map_err(|e| format!("git:{rev}:{}: {e}", file.display()))?;
        let base = file.parent().unwrap_or(Path::new(""));
        let mut references = Vec::new();
        external_references(&doc, &mut references);
        for reference in references {
            let joined = normalize(&base.join(reference)).ok_or_else(|| {
                format!(
                    "git:{rev}:{}: the reference {reference} leaves the repository",
                    file.display()
                )
            })?;
            pending.push(joined);
        }
    }
    Ok(())
}

fn git_show(rev: &str, file: &Path) -> Result<String, String> {
    let spec = format!("{rev}:{}", file.to_string_lossy().replace('\\', "/"));
    let output = Command::new("git")
        .args(["show", &spec])
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "git show {spec}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout).map_err(|_| format!("git show {spec}: not UTF-8 text"))
}

/// The file parts of every `$ref` that points outside its own document.
fn external_references<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                let file = r.split('#').next().unwrap_or("");
                if !file.is_empty() && !file.contains("://") {
                    out.push(file);
                }
            }
            map.values().for_each(|v| external_references(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| external_references(v, out)),
        _ => {}
    }
}

/// `a/./b/../c` → `a/c`; `None` when it climbs above its start.
fn normalize(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_relative_paths_inside_the_repository() {
        assert_eq!(
            normalize(Path::new("openapi/paths/../schemas/./a.yaml")),
            Some(PathBuf::from("openapi/schemas/a.yaml"))
        );
        assert_eq!(normalize(Path::new("../x.yaml")), None);
        assert_eq!(normalize(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn finds_references_to_other_files_only() {
        let doc = serde_json::json!({
            "a": {"$ref": "schemas.yaml#/Task"},
            "b": [{"$ref": "#/components/schemas/X"}, {"$ref": "paths/p.yaml"}],
            "c": {"$ref": "https://example.com/x.yaml"}
        });
        let mut refs = Vec::new();
        external_references(&doc, &mut refs);
        refs.sort();
        assert_eq!(refs, vec!["paths/p.yaml", "schemas.yaml"]);
    }
}
