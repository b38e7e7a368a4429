//! Rendering a conformance [`Report`]: a text summary for people, JSON for tools, JUnit XML
//! for CI systems that show test results natively.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::runner::Report;

/// A summary table (operation × check, passed/failed) and every failure with its `curl`.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let checks: BTreeSet<&str> = report
        .operations
        .iter()
        .flat_map(|o| o.checks.keys().map(String::as_str))
        .collect();
    let width = report
        .operations
        .iter()
        .map(|o| o.operation.len())
        .max()
        .unwrap_or(9)
        .max(9);
    let _ = writeln!(out, "{:<width$}  {:>8}  result", "operation", "requests");
    for op in &report.operations {
        let failed: usize = op.checks.values().map(|c| c.failed).sum();
        let status = match (&op.skipped, failed) {
            (Some(why), _) => format!("skipped: {why}"),
            (None, 0) if op.cases == 0 => "not exercised".to_string(),
            (None, 0) => "ok".to_string(),
            (None, n) => {
                let names: Vec<&str> = op
                    .checks
                    .iter()
                    .filter(|(_, c)| c.failed > 0)
                    .map(|(n, _)| n.as_str())
                    .collect();
                format!("FAILED {n} ({})", names.join(", "))
            }
        };
        let _ = writeln!(out, "{:<width$}  {:>8}  {status}", op.operation, op.cases);
    }
    let _ = writeln!(out);
    let cw = checks.iter().map(|c| c.len()).max().unwrap_or(5).max(5);
    let _ = writeln!(out, "{:<cw$}  {:>8}  {:>8}", "check", "passed", "failed");
    for check in &checks {
        let (mut passed, mut failed) = (0, 0);
        for op in &report.operations {
            if let Some(c) = op.checks.get(*check) {
                passed += c.passed;
                failed += c.failed;
            }
        }
        let _ = writeln!(out, "{check:<cw$}  {passed:>8}  {failed:>8}");
    }
    if !report.failures.is_empty() {
        let _ = writeln!(out, "\nFailures:");
        for (i, f) in report.failures.iter().enumerate() {
            let times = if f.occurrences > 1 {
                format!(" (×{})", f.occurrences)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "\n{}. {} [{}] {}{times}  (id {})\n   {}",
                i + 1,
                f.operation,
                f.check,
                f.message,
                f.id,
                f.curl.replace('\n', "\n   ")
            );
        }
    }
    let _ = writeln!(
        out,
        "\n{} requests, {} operations, {} distinct failures in {:.2}s (seed {})",
        report.cases,
        report.operations.len(),
        report.failures.len(),
        report.elapsed.as_secs_f64(),
        report.seed
    );
    out
}

/// The report as JSON.
pub fn to_json(report: &Report) -> Value {
    json!({
        "seed": report.seed,
        "requests": report.cases,
        "elapsed_seconds": report.elapsed.as_secs_f64(),
        "passed": report.passed(),
        "operations": report.operations.iter().map(|o| json!({
            "operation": o.operation,
            "operation_id": o.operation_id,
            "requests": o.cases,
            "skipped": o.skipped,
            "checks": o.checks.iter().map(|(k, c)| (k.clone(), json!({"passed": c.passed, "failed": c.failed}))).collect::<serde_json::Map<_, _>>(),
        })).collect::<Vec<_>>(),
        "failures": report.failures.iter().map(|f| json!({
            "id": f.id,
            "operation": f.operation,
            "check": f.check,
            "message": f.message,
            "severity": f.severity.as_str(),
            "status": f.status,
            "curl": f.curl,
            "occurrences": f.occurrences,
        })).collect::<Vec<_>>(),
    })
}

/// Escapes text for XML or HTML (attributes included); drops control characters XML 1.0
/// cannot hold.
pub(crate) fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            '\u{FFFE}' | '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// The report as JUnit XML: one test suite, one test case per operation.
pub fn to_junit(report: &Report) -> String {
    let failing_ops: BTreeSet<&str> = report
        .failures
        .iter()
        .map(|f| f.operation.as_str())
        .collect();
    let skipped = report
        .operations
        .iter()
        .filter(|o| o.skipped.is_some())
        .count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuites name=\"agentplane conform\" tests=\"{}\" failures=\"{}\" time=\"{:.3}\">",
        report.operations.len(),
        failing_ops.len(),
        report.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "  <testsuite name=\"conform\" tests=\"{}\" failures=\"{}\" skipped=\"{skipped}\" time=\"{:.3}\">",
        report.operations.len(),
        failing_ops.len(),
        report.elapsed.as_secs_f64()
    );
    for op in &report.operations {
        let _ = write!(
            out,
            "    <testcase name=\"{}\" classname=\"conform\"",
            xml_escape(&op.operation)
        );
        let failures: Vec<_> = report
            .failures
            .iter()
            .filter(|f| f.operation == op.operation)
            .collect();
        if let Some(why) = &op.skipped {
            let _ = writeln!(
                out,
                ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                xml_escape(why)
            );
        } else if failures.is_empty() {
            out.push_str("/>\n");
        } else {
            out.push_str(">\n");
            for f in failures {
                let _ = writeln!(
                    out,
                    "      <failure type=\"{}\" message=\"{}\">{}</failure>",
                    xml_escape(&f.check),
                    xml_escape(&f.message),
                    xml_escape(&f.curl)
                );
            }
            out.push_str("    </testcase>\n");
        }
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}
