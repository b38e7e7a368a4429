//! The `conform` command without its argument parser: load a spec from a file or URL, run
//! the suite, print the summary, write the reports, choose the exit code.
//!
//! It lives here rather than in the binary so that the binary's CLI stays a thin clap layer
//! and tests can drive exactly what users run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

use crate::coverage::Coverage;
use crate::report;
use crate::runner::{self, Config, Phase};
use crate::spec;

/// Exit code: every check passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit code: some check failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the spec or the arguments are unusable.
pub const EXIT_USAGE: u8 = 2;

/// The command's options, as parsed by the binary.
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    /// A file path, or an `http://`/`https://` URL.
    pub spec: String,
    /// The server's base URL; defaults to the spec URL's origin or the spec's first server.
    pub url: Option<String>,
    /// `Name: value` lines.
    pub headers: Vec<String>,
    /// `Name: value` lines: the credentials of a second identity (another tenant), for
    /// `cross_tenant_isolation`.
    pub other_headers: Vec<String>,
    pub seed: Option<u64>,
    pub max_examples: usize,
    pub workers: usize,
    /// Phase names; empty for all.
    pub phases: Vec<String>,
    /// Check names; empty for all.
    pub checks: Vec<String>,
    pub junit: Option<PathBuf>,
    pub report: Option<PathBuf>,
    /// Record every interaction here as a Schemathesis-compatible VCR cassette.
    pub cassette: Option<PathBuf>,
    /// Write the coverage report to each path: JSON for a `.json` name, else HTML.
    pub coverage: Vec<PathBuf>,
    /// Fail the run (exit 1) when fewer than this percent of the documented
    /// (operation, status) pairs were observed.
    pub min_coverage: Option<f64>,
    /// The `max_response_time` budget in milliseconds: every slower answer fails it.
    pub max_response_time: Option<u64>,
    /// Re-send one failure's requests (its id, read from the `cassette` of the run that
    /// found it) or every failure of a cassette (its path), and re-run the checks.
    pub replay: Option<String>,
}

/// Parses a `Name: value` header line.
pub fn parse_header(line: &str) -> Result<(String, String), String> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| format!("a header must look like `Name: value`, got {line:?}"))?;
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("invalid header name {name:?}"));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

/// Loads and normalizes a spec from a file path or an HTTP(S) URL.
pub async fn load_source(source: &str) -> Result<Value, String> {
    if source.starts_with("http://") || source.starts_with("https://") {
        let response = reqwest::get(source)
            .await
            .map_err(|e| format!("cannot fetch {source}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching {source} answered {}", response.status()));
        }
        let text = response
            .text()
            .await
            .map_err(|e| format!("cannot read {source}: {e}"))?;
        let mut doc = spec::parse_document(&text).map_err(|e| format!("{source}: {e}"))?;
        spec::normalize_to_31(&mut doc);
        Ok(doc)
    } else {
        spec::load(std::path::Path::new(source)).map_err(|e| e.to_string())
    }
}

fn default_base(source: &str, doc: &Value) -> Option<String> {
    let server = doc
        .pointer("/servers/0/url")
        .and_then(Value::as_str)
        .unwrap_or("");
    if server.starts_with("http://") || server.starts_with("https://") {
        return Some(server.trim_end_matches('/').to_string());
    }
    let url = url::Url::parse(source).ok()?;
    let origin = url.origin().ascii_serialization();
    Some(format!("{origin}{}", server.trim_end_matches('/')))
}

/// Runs the command; returns the process exit code. Progress goes to stderr, the summary
/// to stdout.
pub async fn run_command(options: CommandOptions) -> u8 {
    let usage = |message: String| {
        eprintln!("agentplane conform: {message}");
        EXIT_USAGE
    };
    let doc = match load_source(&options.spec).await {
        Ok(doc) => doc,
        Err(e) => return usage(e),
    };
    if doc.get("paths").and_then(Value::as_object).is_none() {
        return usage(format!("{} has no `paths`", options.spec));
    }
    let Some(base) = options
        .url
        .clone()
        .or_else(|| default_base(&options.spec, &doc))
    else {
        return usage("no --url given and the spec names no absolute server".into());
    };
    let mut headers = Vec::new();
    for line in &options.headers {
        match parse_header(line) {
            Ok(h) => headers.push(h),
            Err(e) => return usage(e),
        }
    }
    let mut other_headers = Vec::new();
    for line in &options.other_headers {
        match parse_header(line) {
            Ok(h) => other_headers.push(h),
            Err(e) => return usage(e),
        }
    }
    let mut phases = Vec::new();
    for name in options.phases.iter().flat_map(|p| p.split(',')) {
        if name.trim().is_empty() || name.trim() == "all" {
            continue;
        }
        match Phase::parse(name) {
            Some(p) => phases.push(p),
            None => {
                return usage(format!(
                    "unknown phase {name:?}; known: examples, coverage, fuzzing, negative, stateful"
                ));
            }
        }
    }
    if phases.is_empty() {
        phases = Phase::ALL.to_vec();
    }
    let checks: Vec<String> = options
        .checks
        .iter()
        .flat_map(|c| c.split(','))
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .collect();
    if let Err(e) = crate::checks::select(&checks) {
        return usage(e);
    }
    let seed = options.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let mut config = Config::new(base.clone());
    config.headers = headers;
    config.other_headers = other_headers;
    config.seed = seed;
    config.max_examples = options.max_examples.max(1);
    config.workers = options.workers.max(1);
    config.phases = phases;
    config.checks = checks;
    config.cassette = options.cassette.clone();
    config.max_response_time = options
        .max_response_time
        .map(std::time::Duration::from_millis);
    if options.min_coverage.is_some_and(|m| m.is_nan() || m < 0.0) {
        return usage("--min-coverage takes a percentage, 0 or more".into());
    }
    let coverage = (!options.coverage.is_empty() || options.min_coverage.is_some()).then(|| {
        let coverage = Arc::new(Coverage::new(&doc));
        let observer = coverage.clone();
        config.observer = Some(Arc::new(move |op: &str, ex: &crate::response::Exchange| {
            observer.observe(op, ex);
        }));
        coverage
    });
    if let Some(wanted) = &options.replay {
        return crate::runner::replay_command(&doc, config, wanted, options.cassette.as_deref())
            .await;
    }
    config.progress = Some(Arc::new(|line: &str| eprintln!("{line}")));
    // A terminal gets a line per operation and phase; a log file or pipe at most one line
    // per operation (and per stateful chain).
    config.progress_per_operation = !std::io::stderr().is_terminal();
    eprintln!(
        "agentplane conform: {} against {base} (seed {seed}, {} examples, {} workers)",
        options.spec, config.max_examples, config.workers
    );
    let report = match runner::run(&doc, config).await {
        Ok(r) => r,
        Err(e) => return usage(e.to_string()),
    };
    println!("{}", report::summary(&report));
    if let Some(path) = &options.junit
        && let Err(e) = std::fs::write(path, report::to_junit(&report))
    {
        return usage(format!("cannot write {}: {e}", path.display()));
    }
    if let Some(path) = &options.report {
        let text = serde_json::to_string_pretty(&report::to_json(&report)).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text) {
            return usage(format!("cannot write {}: {e}", path.display()));
        }
    }
    let mut passed = report.passed();
    if let Some(coverage) = coverage {
        let covered = coverage.finish(&report);
        println!("{}", covered.summary_line());
        for path in &options.coverage {
            let text = if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json"))
            {
                serde_json::to_string_pretty(&covered.to_json()).unwrap_or_default()
            } else {
                covered.to_html(&format!("{} against {base}", options.spec))
            };
            if let Err(e) = std::fs::write(path, text) {
                return usage(format!("cannot write {}: {e}", path.display()));
            }
        }
        if let Some(min) = options.min_coverage
            && let Err(message) = covered.check_min(min)
        {
            eprintln!("agentplane conform: {message}");
            passed = false;
        }
    }
    if passed { EXIT_PASSED } else { EXIT_FAILED }
}
