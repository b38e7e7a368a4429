//! The three outputs of `agentplane diff`: text for a terminal or CI log, JSON for tools, and
//! Markdown that pastes into a pull request (a summary line, then a table per severity).

use serde_json::json;

use super::{Change, Severity, counts};

/// Operations listed per change before "and N more".
const SHOWN_OPERATIONS: usize = 3;

fn summary(changes: &[Change]) -> String {
    let [(_, breaking), (_, potential), (_, safe)] = counts(changes);
    format!("{breaking} breaking, {potential} potentially breaking, {safe} safe")
}

/// The changes of each severity found, worst first.
fn groups(changes: &[Change]) -> Vec<(Severity, Vec<&Change>)> {
    Severity::ALL
        .into_iter()
        .map(|s| {
            (
                s,
                changes
                    .iter()
                    .filter(|c| c.severity() == s)
                    .collect::<Vec<_>>(),
            )
        })
        .filter(|(_, group)| !group.is_empty())
        .collect()
}

fn operations(change: &Change, quote: &str) -> String {
    let mut shown: Vec<String> = change
        .operations
        .iter()
        .take(SHOWN_OPERATIONS)
        .map(|op| format!("{quote}{op}{quote}"))
        .collect();
    if change.operations.len() > SHOWN_OPERATIONS {
        shown.push(format!(
            "and {} more",
            change.operations.len() - SHOWN_OPERATIONS
        ));
    }
    shown.join(", ")
}

/// Plain text, grouped by severity.
pub fn text(old: &str, new: &str, changes: &[Change]) -> String {
    let mut out = format!("agentplane diff: {old} -> {new}\n{}\n", summary(changes));
    if changes.is_empty() {
        out.push_str("No changes.\n");
    }
    for (severity, group) in groups(changes) {
        out.push_str(&format!("\n{} ({})\n", severity.title(), group.len()));
        for change in group {
            out.push_str(&format!("  [{}] {}\n", change.id(), change.message));
            if !change.operations.is_empty() {
                out.push_str(&format!("      in {}\n", operations(change, "")));
            }
            out.push_str(&format!(
                "      old {}\n      new {}\n",
                change.old_pointer, change.new_pointer
            ));
        }
    }
    out
}

/// One JSON document: the sources, the counts and every change.
pub fn json(old: &str, new: &str, changes: &[Change]) -> String {
    let summary: serde_json::Map<String, serde_json::Value> = counts(changes)
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), json!(n)))
        .collect();
    let changes: Vec<serde_json::Value> = changes
        .iter()
        .map(|c| {
            json!({
                "id": c.id(),
                "severity": c.severity().as_str(),
                "message": c.message,
                "old_pointer": c.old_pointer,
                "new_pointer": c.new_pointer,
                "operations": c.operations,
            })
        })
        .collect();
    let doc = json!({"old": old, "new": new, "summary": summary, "changes": changes});
    let mut out = serde_json::to_string_pretty(&doc).unwrap_or_default();
    out.push('\n');
    out
}

/// Escapes a table cell: pipes and line breaks would end it.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// GitHub-flavoured Markdown: a summary line and one table per severity found.
pub fn markdown(old: &str, new: &str, changes: &[Change]) -> String {
    let [(_, breaking), _, _] = counts(changes);
    let verdict = if changes.is_empty() {
        "No changes.".to_string()
    } else if breaking > 0 {
        format!("**{}** changes.", summary(changes))
    } else {
        format!("No breaking changes ({}).", summary(changes))
    };
    let mut out = format!(
        "### API changes: `{}` → `{}`\n\n{verdict}\n",
        cell(old),
        cell(new)
    );
    for (severity, group) in groups(changes) {
        out.push_str(&format!(
            "\n#### {} ({})\n\n| Rule | Change | Operations | Old | New |\n| --- | --- | --- | --- | --- |\n",
            severity.title(),
            group.len()
        ));
        for change in group {
            out.push_str(&format!(
                "| `{}` | {} | {} | `{}` | `{}` |\n",
                change.id(),
                cell(&change.message),
                cell(&operations(change, "`")),
                cell(&change.old_pointer),
                cell(&change.new_pointer)
            ));
        }
    }
    out
}
