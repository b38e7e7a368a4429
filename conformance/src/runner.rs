//! The conformance runner: generates requests from a spec, sends them, runs the checks.
//!
//! It works on any bundled, 3.1-normalized document. Five phases, each optional:
//! `examples` sends every request example the spec carries, `coverage` sends deterministic
//! boundary values (each enum member, bounds, shortest and longest strings and arrays,
//! optional parts present and absent, and the value just outside each constraint as a
//! negative request), `fuzzing` sends random
//! schema-valid requests, `negative` sends requests that break exactly one constraint, and
//! `stateful` follows create → read → update → delete chains (from OpenAPI `links`, or by
//! convention: a POST on a collection answering 201 or 200 with an `id`, and the operations
//! on `{collection}/{param}`). Every response goes through the enabled [`checks`](crate::checks).
//!
//! Bodies are generated for JSON, `application/x-www-form-urlencoded` and
//! `multipart/form-data` request bodies (a form's fields are judged as the server reads
//! them back: text, read by each property's type), and as raw bytes for any other media
//! type whose schema is a string (`application/octet-stream`, `text/plain`). Integers include the edges of their
//! width (±2^53 and ±(2^63−1), or ±(2^31−1) for an `int32`) within the schema's bounds, and
//! the first value outside an `int32`/`int64` format as a negative request.
//!
//! Some checks send requests of their own: the negative phase probes every path, with
//! valid path values, with the methods it does not document (`unsupported_method`), leaves
//! out required headers (`missing_required_header`) and sends syntactically broken bodies
//! in each operation's own media type (a lone NUL and truncated JSON; a multipart body
//! without its boundary, under a wrong one, cut short, and a part without a name; a Content-Type the operation
//! does not take, `text/plain` and a multipart form), whose answers must be documented 4xx errors, and URL-encoded forms with
//! invalid percent-escapes, whose answers must be no server error and documented; the stateful phase sends conditional requests with the
//! created resource's `ETag` and a PUT, PATCH and DELETE with a stale `If-Match` wherever
//! 412 is documented (`conditional_requests`), reads the resource right after each PUT and
//! PATCH (`read_after_write`) and, with [`Config::other_headers`], sends the same
//! operations as another identity (`cross_tenant_isolation`); after every phase, list
//! operations are walked page by page, by page number, offset, cursor or `Link`
//! (`pagination_totals`).
//!
//! A 429 with a `Retry-After` of at most [`MAX_RETRY_WAIT`] is waited out and the request
//! sent again (up to [`MAX_RETRIES`] times), not judged. Every failure carries a stable id
//! ([`checks::failure_id`]); with a cassette, the requests that showed it are kept in it as a
//! replay script, and [`replay_failures`] (`agentplane conform --replay <id|cassette>`)
//! re-sends them and re-runs the checks.
//!
//! A fuzzing-phase failure of a check that judges one request and its response alone
//! (`not_a_server_error`, `status_code_conformance`, `content_type_conformance`,
//! `response_headers_conformance`, `response_schema_conformance`,
//! `positive_data_acceptance`) is shrunk the way proptest shrinks: the parameters' and
//! body's value trees are simplified one at a time, each simpler request is sent and
//! judged again, a simpler request that still fails is kept and one that passes is
//! complicated back. Shrinking stops when no tree moves, or after
//! [`SHRINK_MAX_REQUESTS`] requests ([`SHRINK_MAX_REQUESTS_POST`] for a POST, whose every
//! request may create a resource); the failure then reports the smallest failing request
//! and says how many shrink requests (steps) it took.
//!
//! Runs are deterministic for a seed: each operation draws its data from its own proptest
//! RNG seeded from the run seed and the operation's position, so the number of workers
//! changes the order requests are sent in, never what is sent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use jsonschema::Validator;
use proptest::strategy::{SBoxedStrategy, Strategy, ValueTree};
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Map, Value};

use crate::SpecError;
use crate::cassette::{CheckRecord, Interaction, RecordedResponse, ReplayScript, ReplayStep};
use crate::checks::{self, CaseKind, Check, CheckContext, Failure, Severity, Verdict};
use crate::generate::{Direction, Generator, prepare_doc, sample};
use crate::response::{Exchange, Responses, essence, is_json, is_xml};
use crate::spec::{deref, escape_pointer};
use crate::validate::{coerce_scalar, compile_schema, form_fields, form_value};

/// A phase of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Examples,
    /// Deterministic boundary values (Schemathesis v4's coverage phase).
    Coverage,
    Fuzzing,
    Negative,
    Stateful,
}

impl Phase {
    /// Every phase, in run order.
    pub const ALL: [Phase; 5] = [
        Phase::Examples,
        Phase::Coverage,
        Phase::Fuzzing,
        Phase::Negative,
        Phase::Stateful,
    ];

    /// The phase's name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Examples => "examples",
            Phase::Coverage => "coverage",
            Phase::Fuzzing => "fuzzing",
            Phase::Negative => "negative",
            Phase::Stateful => "stateful",
        }
    }

    /// Parses a phase name.
    pub fn parse(name: &str) -> Option<Phase> {
        match name.trim() {
            "examples" => Some(Phase::Examples),
            "fuzzing" => Some(Phase::Fuzzing),
            "coverage" => Some(Phase::Coverage),
            "negative" => Some(Phase::Negative),
            "stateful" => Some(Phase::Stateful),
            _ => None,
        }
    }
}

/// A progress callback: one line per finished unit of work.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;
/// An observer of every judged exchange and its operation (`METHOD /path`).
pub type Observer = Arc<dyn Fn(&str, &Exchange) + Send + Sync>;

/// What to run and against what.
#[derive(Clone)]
pub struct Config {
    /// The server's base URL; operation paths are appended to it.
    pub base_url: String,
    /// Headers sent with every request (usually credentials), as name and value.
    pub headers: Vec<(String, String)>,
    /// The credentials of a second identity (another tenant), used instead of the secret
    /// headers of [`Config::headers`] by the `cross_tenant_isolation` check; empty to skip it.
    pub other_headers: Vec<(String, String)>,
    pub seed: u64,
    /// Generated requests per operation and phase.
    pub max_examples: usize,
    /// Operations worked on at the same time.
    pub workers: usize,
    pub phases: Vec<Phase>,
    /// Check names; empty for all.
    pub checks: Vec<String>,
    /// Statuses `positive_data_acceptance` accepts (`2xx`, `404`, ...).
    pub positive_statuses: Vec<String>,
    pub request_timeout: Duration,
    /// The `max_response_time` check's budget: an answer slower than this fails it. `None`
    /// (the default) leaves the check out.
    pub max_response_time: Option<Duration>,
    pub progress: Option<Progress>,
    /// When set, the progress callback gets one line per operation (after its last
    /// per-operation phase, with totals over all phases) and one per stateful chain, instead
    /// of one per operation and phase. Meant for output that is not a terminal.
    pub progress_per_operation: bool,
    /// Record every interaction into this file as a Schemathesis-compatible VCR cassette.
    pub cassette: Option<PathBuf>,
    /// Called with every judged exchange, for [`crate::coverage`].
    pub observer: Option<Observer>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("base_url", &self.base_url)
            .field("seed", &self.seed)
            .field("max_examples", &self.max_examples)
            .field("workers", &self.workers)
            .field("phases", &self.phases)
            .field("checks", &self.checks)
            .field("cassette", &self.cassette)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults: all phases and checks, 20 examples, 4 workers, seed 0.
    pub fn new(base_url: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            headers: Vec::new(),
            other_headers: Vec::new(),
            seed: 0,
            max_examples: 20,
            workers: 4,
            phases: Phase::ALL.to_vec(),
            checks: Vec::new(),
            positive_statuses: ["2xx", "3xx", "401", "403", "404", "409", "412", "429"]
                .iter()
                .map(|s| (*s).to_string())
                .collect(),
            request_timeout: Duration::from_secs(10),
            max_response_time: None,
            progress: None,
            progress_per_operation: false,
            cassette: None,
            observer: None,
        }
    }
}

/// Pass and fail counts of one check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CheckCount {
    pub passed: usize,
    pub failed: usize,
}

/// What happened to one operation.
#[derive(Debug, Clone, Default)]
pub struct OperationReport {
    /// `METHOD /path/template`.
    pub operation: String,
    pub operation_id: String,
    /// Requests sent for it.
    pub cases: usize,
    /// Why it was not tested, when it was not.
    pub skipped: Option<String>,
    pub checks: BTreeMap<String, CheckCount>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub seed: u64,
    pub operations: Vec<OperationReport>,
    /// Distinct failures: one per operation, check and status, with its occurrences.
    pub failures: Vec<Failure>,
    pub cases: usize,
    pub elapsed: Duration,
}

impl Report {
    /// True when no check failed with [`Severity::Error`].
    pub fn passed(&self) -> bool {
        !self.failures.iter().any(|f| f.severity == Severity::Error)
    }
}

/// Where a parameter goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loc {
    Path,
    Query,
    Header,
    Cookie,
}

struct Param {
    name: String,
    loc: Loc,
    required: bool,
    explode: bool,
    /// `style: deepObject`: an object serialized as `name[key]=value`.
    deep: bool,
    /// `allowEmptyValue`: a query parameter that may be sent as `name=`.
    allow_empty: bool,
    /// The schema with `$ref`s and `allOf` resolved at the top level.
    flat: Value,
    schema: Value,
    validator: Validator,
    examples: Vec<Value>,
}

/// How a request body is serialized.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BodyEncoding {
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// `multipart/form-data`; the file fields (`format: binary`) and the media type each is
    /// sent as (its `encoding.contentType`, else `application/octet-stream`).
    Multipart {
        files: Vec<(String, String)>,
    },
    /// Any other media type whose schema is a string (`format: binary`, say) or absent:
    /// the string's bytes, sent as `media_type` (a wildcard key's usual concrete type).
    Raw {
        media_type: String,
    },
}

struct Body {
    media_type: String,
    encoding: BodyEncoding,
    /// For a form: its fields' schemas, as the server reads the fields back.
    fields: Map<String, Value>,
    /// A Content-Type the operation does not take (for a broken-body request), unless it
    /// takes any.
    wrong_media: Option<String>,
    /// The operation takes neither `multipart/form-data` nor a wildcard: the valid body is
    /// also sent as a multipart form, which the server must refuse, not parse.
    foreign_multipart: bool,
    /// An XML media type the operation also takes beside JSON, and its schema: a valid body
    /// is sent in it too.
    xml: Option<(String, Value)>,
    required: bool,
    schema: Value,
    validator: Validator,
    examples: Vec<Value>,
}

struct Op {
    index: usize,
    id: String,
    label: String,
    method: String,
    template: String,
    /// The methods the spec documents on this path (upper case), for a 405's `Allow`.
    path_methods: Vec<String>,
    secured: bool,
    params: Vec<Param>,
    body: Option<Body>,
    skipped: Option<String>,
    responses: Responses,
    /// Statuses the run accepts for schema-valid input here: the configured ones plus the
    /// operation's `x-business-rule-statuses` (a 422 for an unknown simulation model, say:
    /// a rule no schema can state).
    positive_statuses: Vec<String>,
    /// Set once the operation has been called without credentials.
    auth_probed: AtomicBool,
}

/// One request to send, before serialization.
#[derive(Debug, Clone, Default)]
struct Case {
    values: Vec<(usize, Value)>,
    body: Option<Value>,
    /// A body sent as it is instead of `body` (a syntactically broken one): its
    /// Content-Type and bytes.
    raw: Option<(String, Vec<u8>)>,
}

struct Shared {
    request_doc: Value,
    ops: Vec<Op>,
    checks: Vec<Check>,
    config: Config,
    client: reqwest::Client,
    auth_headers: Vec<String>,
    done: AtomicUsize,
    total: usize,
    /// The phase running now (an index into [`Phase::ALL`]); phases never overlap.
    phase: AtomicUsize,
    /// Interactions for the cassette, when one is written.
    recorder: Option<Mutex<Vec<Interaction>>>,
    /// Interactions recorded so far (ids).
    recorded: AtomicUsize,
    /// One replay script per failure id, when a cassette is written.
    scripts: Option<Mutex<Vec<ReplayScript>>>,
}

#[derive(Default)]
struct OpOutcome {
    cases: usize,
    checks: BTreeMap<String, CheckCount>,
    failures: Vec<Failure>,
}

impl OpOutcome {
    fn merge(&mut self, other: OpOutcome) {
        self.cases += other.cases;
        for (k, v) in other.checks {
            let e = self.checks.entry(k).or_default();
            e.passed += v.passed;
            e.failed += v.failed;
        }
        self.failures.extend(other.failures);
    }
}

/// Runs the conformance suite; `Err` only for a spec or configuration it cannot use.
pub async fn run(doc: &Value, config: Config) -> Result<Report, SpecError> {
    let started = Instant::now();
    let (checks, request_doc, ops, client) = prepare(doc, &config)?;
    let auth_headers = auth_header_names(doc);
    let testable = ops.iter().filter(|o| o.skipped.is_none()).count();
    let per_op_phases = config
        .phases
        .iter()
        .filter(|p| **p != Phase::Stateful)
        .count();
    let chains = if config.phases.contains(&Phase::Stateful) {
        find_chains(&ops).len()
    } else {
        0
    };
    let total = if config.progress_per_operation {
        testable + chains
    } else {
        testable * per_op_phases + chains
    };
    let last_op_phase = config
        .phases
        .iter()
        .copied()
        .filter(|p| *p != Phase::Stateful)
        .max();
    let shared = Arc::new(Shared {
        request_doc,
        ops,
        checks,
        config: config.clone(),
        client,
        auth_headers,
        done: AtomicUsize::new(0),
        total,
        phase: AtomicUsize::new(0),
        recorder: config.cassette.as_ref().map(|_| Mutex::new(Vec::new())),
        recorded: AtomicUsize::new(0),
        scripts: config.cassette.as_ref().map(|_| Mutex::new(Vec::new())),
    });
    let mut outcomes: Vec<OpOutcome> = shared.ops.iter().map(|_| OpOutcome::default()).collect();
    let semaphore = Arc::new(tokio::sync::Semaphore::new(config.workers.max(1)));
    let mut phases = config.phases.clone();
    phases.sort();
    phases.dedup();
    // Undocumented methods are probed on every path before any phase: a later request (a
    // broken body, say) may take a fragile server down, and the probes must not go with it.
    if let Some(first) = phases.iter().find(|p| **p != Phase::Stateful) {
        let phase_index = Phase::ALL.iter().position(|p| p == first).unwrap_or(0);
        shared.phase.store(phase_index, Ordering::SeqCst);
        let mut tasks = tokio::task::JoinSet::new();
        for index in path_firsts(&shared.ops) {
            let shared = shared.clone();
            let semaphore = semaphore.clone();
            tasks.spawn(async move {
                let _permit = semaphore.acquire_owned().await;
                (index, probe_unsupported_methods(&shared, index).await)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok((index, outcome)) = joined
                && let Some(slot) = outcomes.get_mut(index)
            {
                slot.merge(outcome);
            }
        }
    }
    for phase in phases {
        let phase_index = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        shared.phase.store(phase_index, Ordering::SeqCst);
        let mut tasks = tokio::task::JoinSet::new();
        if phase == Phase::Stateful {
            for chain in find_chains(&shared.ops) {
                let shared = shared.clone();
                let semaphore = semaphore.clone();
                tasks.spawn(async move {
                    let _permit = semaphore.acquire_owned().await;
                    run_chain(&shared, &chain).await
                });
            }
        } else {
            for index in 0..shared.ops.len() {
                if shared.ops[index].skipped.is_some() {
                    continue;
                }
                let shared = shared.clone();
                let semaphore = semaphore.clone();
                tasks.spawn(async move {
                    let _permit = semaphore.acquire_owned().await;
                    run_phase(&shared, index, phase).await
                });
            }
        }
        while let Some(joined) = tasks.join_next().await {
            if let Ok(results) = joined {
                for (index, outcome) in results {
                    if let Some(slot) = outcomes.get_mut(index) {
                        slot.merge(outcome);
                        if shared.config.progress_per_operation
                            && Some(phase) == last_op_phase
                            && let Some(op) = shared.ops.get(index)
                        {
                            progress(shared.as_ref(), &op_line("", &op.label, slot));
                        }
                    }
                }
            }
        }
    }
    // List walks run alone, after every phase, so no other request changes the totals
    // under them.
    if config.phases.contains(&Phase::Fuzzing) {
        for (index, slot) in outcomes.iter_mut().enumerate() {
            let op = &shared.ops[index];
            if op.skipped.is_some() {
                continue;
            }
            let mut runner = seeded_runner(config.seed, index, 6);
            let factory = CaseFactory::new(&shared, op);
            walk_pages(&shared, op, &factory, &mut runner, slot).await;
        }
    }
    let mut report = Report {
        seed: config.seed,
        ..Report::default()
    };
    let mut distinct: Vec<Failure> = Vec::new();
    for (op, outcome) in shared.ops.iter().zip(outcomes) {
        report.cases += outcome.cases;
        for f in outcome.failures {
            group_failure(&mut distinct, f);
        }
        report.operations.push(OperationReport {
            operation: op.label.clone(),
            operation_id: op.id.clone(),
            cases: outcome.cases,
            skipped: op.skipped.clone(),
            checks: outcome.checks,
        });
    }
    report.failures = distinct;
    report.elapsed = started.elapsed();
    if let (Some(path), Some(recorder)) = (&config.cassette, &shared.recorder) {
        let interactions = recorder.lock().unwrap_or_else(PoisonError::into_inner);
        let mut scripts = shared
            .scripts
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .unwrap_or_default();
        // Only the failures the report shows, so every id it prints replays.
        scripts.retain(|s| report.failures.iter().any(|f| f.id == s.id));
        let text = crate::cassette::render(
            &format!("agentplane conform --url {}", config.base_url),
            config.seed,
            &interactions,
            &scripts,
            &shared.auth_headers,
        );
        std::fs::write(path, text).map_err(|source| SpecError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(report)
}

/// What a run and a replay share: the enabled checks, the spec prepared for requests, its
/// compiled operations and the HTTP client.
fn prepare(
    doc: &Value, config: &Config,
) -> Result<(Vec<Check>, Value, Vec<Op>, reqwest::Client), SpecError> {
    let checks = checks::select(&config.checks).map_err(|m| SpecError::invalid("", "", m))?;
    let request_doc = prepare_doc(doc, Direction::Request);
    let response_doc = prepare_doc(doc, Direction::Response);
    let ops = compile_ops(doc, &request_doc, &response_doc, &config.positive_statuses)?;
    let client = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| SpecError::invalid("", "", format!("HTTP client: {e}")))?;
    Ok((checks, request_doc, ops, client))
}

/// Adds a failure to the distinct ones: one finding is one check failing on one operation
/// with one status, however many methods, phases or values showed it. The group keeps the
/// shortest reproducing request (and its message) and counts the occurrences.
fn group_failure(distinct: &mut Vec<Failure>, f: Failure) {
    match distinct
        .iter_mut()
        .find(|d| d.operation == f.operation && d.check == f.check && d.status == f.status)
    {
        Some(d) => {
            let occurrences = d.occurrences + f.occurrences;
            if f.curl.len() < d.curl.len() {
                *d = f;
            }
            d.occurrences = occurrences;
        }
        None => distinct.push(f),
    }
}

fn auth_header_names(doc: &Value) -> Vec<String> {
    let mut names = vec![
        "authorization".to_string(),
        "cookie".to_string(),
        "x-api-key".to_string(),
    ];
    if let Some(schemes) = doc
        .pointer("/components/securitySchemes")
        .and_then(Value::as_object)
    {
        for scheme in schemes.values() {
            let scheme = deref(doc, scheme);
            if scheme.get("type").and_then(Value::as_str) == Some("apiKey")
                && scheme.get("in").and_then(Value::as_str) == Some("header")
                && let Some(name) = scheme.get("name").and_then(Value::as_str)
            {
                names.push(name.to_ascii_lowercase());
            }
        }
    }
    names
}

fn examples_of(holder: &Value, doc: &Value) -> Vec<Value> {
    named_examples(holder, doc)
        .into_iter()
        .map(|(_, v)| v)
        .collect()
}

/// The examples a parameter or media type carries: `example` (unnamed) first, then each of
/// the `examples` map by name (`$ref`s resolved, `externalValue` skipped).
pub fn named_examples(holder: &Value, doc: &Value) -> Vec<(Option<String>, Value)> {
    let mut out = Vec::new();
    if let Some(e) = holder.get("example") {
        out.push((None, e.clone()));
    }
    if let Some(Value::Object(map)) = holder.get("examples") {
        for (name, e) in map {
            if let Some(v) = deref(doc, e).get("value") {
                out.push((Some(name.clone()), v.clone()));
            }
        }
    }
    out
}

fn compile_ops(
    doc: &Value, request_doc: &Value, response_doc: &Value, positive_statuses: &[String],
) -> Result<Vec<Op>, SpecError> {
    let mut ops = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Ok(ops);
    };
    let global_security = doc.get("security");
    let generator = Generator::new(request_doc, Direction::Request);
    for (template, item) in paths {
        let item = deref(doc, item);
        let shared_params: Vec<Value> = item
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for method in crate::METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            let pointer = format!("/paths/{}/{method}", escape_pointer(template));
            let label = format!("{} {template}", method.to_ascii_uppercase());
            let id = op
                .get("operationId")
                .and_then(Value::as_str)
                .map_or_else(|| label.clone(), str::to_string);
            let mut params: Vec<Param> = Vec::new();
            let own: Vec<Value> = op
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for raw in own.iter().chain(shared_params.iter()) {
                let p = deref(doc, raw);
                let Some(name) = p.get("name").and_then(Value::as_str) else {
                    continue;
                };
                let loc = match p.get("in").and_then(Value::as_str) {
                    Some("path") => Loc::Path,
                    Some("query") => Loc::Query,
                    Some("header") => Loc::Header,
                    Some("cookie") => Loc::Cookie,
                    _ => continue,
                };
                if params.iter().any(|q| q.name == name && q.loc == loc) {
                    continue; // operation-level parameters override path-level ones
                }
                let schema = p.get("schema").cloned().unwrap_or(Value::Bool(true));
                let validator = compile_schema(request_doc, &schema, &pointer)?;
                let style = p.get("style").and_then(Value::as_str).unwrap_or("form");
                let mut examples = examples_of(p, doc);
                examples.extend(examples_of(deref(doc, &schema), doc));
                params.push(Param {
                    name: name.to_string(),
                    loc,
                    required: loc == Loc::Path
                        || p.get("required").and_then(Value::as_bool) == Some(true),
                    deep: style == "deepObject",
                    allow_empty: p.get("allowEmptyValue").and_then(Value::as_bool) == Some(true),
                    explode: p
                        .get("explode")
                        .and_then(Value::as_bool)
                        .unwrap_or(style == "form"),
                    flat: Value::Object(generator.flatten(&schema)),
                    schema,
                    validator,
                    examples,
                });
            }
            let mut skipped = None;
            let mut body = None;
            if let Some(rb) = op.get("requestBody") {
                let rb = deref(doc, rb);
                let content = rb.get("content").and_then(Value::as_object);
                match content.and_then(|c| body_media(request_doc, c)) {
                    Some((media_type, media, encoding)) => {
                        let schema = media.get("schema").cloned().unwrap_or(Value::Bool(true));
                        let validator = compile_schema(request_doc, &schema, &pointer)?;
                        let mut examples = examples_of(media, doc);
                        examples.extend(examples_of(deref(doc, &schema), doc));
                        let fields = match encoding {
                            BodyEncoding::Json | BodyEncoding::Raw { .. } => Map::new(),
                            _ => form_fields(request_doc, &schema),
                        };
                        let taken = content.into_iter().flat_map(|c| c.keys());
                        let wrong_media = taken
                            .clone()
                            .all(|mt| !mt.contains('*') && !mt.starts_with("text/plain"))
                            .then(|| "text/plain".to_string());
                        let foreign_multipart = taken.clone().all(|mt| {
                            !mt.contains('*') && !mt.to_ascii_lowercase().starts_with("multipart/")
                        });
                        let xml = content
                            .filter(|_| encoding == BodyEncoding::Json)
                            .into_iter()
                            .flatten()
                            .find(|(mt, _)| is_xml(mt))
                            .map(|(mt, m)| {
                                let schema = m.get("schema").unwrap_or(&schema);
                                (mt.clone(), schema.clone())
                            });
                        body = Some(Body {
                            media_type: media_type.clone(),
                            encoding,
                            fields,
                            wrong_media,
                            foreign_multipart,
                            xml,
                            required: rb.get("required").and_then(Value::as_bool) == Some(true),
                            schema,
                            validator,
                            examples,
                        });
                    }
                    None => {
                        skipped = Some(
                            "the request body is not JSON, a form, multipart/form-data or a string"
                                .to_string(),
                        );
                    }
                }
            }
            let security = op.get("security").or(global_security);
            let secured = security.and_then(Value::as_array).is_some_and(|reqs| {
                !reqs.is_empty()
                    && !reqs
                        .iter()
                        .any(|r| r.as_object().is_some_and(Map::is_empty))
            });
            let responses = Responses::compile(response_doc, op, &pointer)?;
            let mut positive = positive_statuses.to_vec();
            positive.extend(business_rule_statuses(op));
            let path_methods = crate::METHODS
                .iter()
                .filter(|m| item.get(**m).is_some())
                .map(|m| m.to_ascii_uppercase())
                .collect();
            ops.push(Op {
                index: ops.len(),
                id,
                label,
                method: method.to_ascii_uppercase(),
                template: template.clone(),
                path_methods,
                secured,
                params,
                body,
                skipped,
                responses,
                positive_statuses: positive,
                auth_probed: AtomicBool::new(false),
            });
        }
    }
    Ok(ops)
}

/// An operation's `x-business-rule-statuses`: statuses it documents for schema-valid input
/// that breaks a rule of the business (integers or strings like `422`).
fn business_rule_statuses(op: &Value) -> Vec<String> {
    op.get("x-business-rule-statuses")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|v| match v {
                    Value::Number(n) => Some(n.to_string()),
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The media type of a request body the runner builds requests for: JSON first, then a
/// URL-encoded form, then `multipart/form-data`, then any other media type whose schema is
/// a string or absent (`application/octet-stream`, `text/plain`, …), sent as raw bytes.
fn body_media<'a>(
    doc: &Value, content: &'a Map<String, Value>,
) -> Option<(&'a String, &'a Value, BodyEncoding)> {
    if let Some((mt, media)) = content.iter().find(|(mt, _)| is_json(mt)) {
        return Some((mt, media, BodyEncoding::Json));
    }
    if let Some((mt, media)) = content
        .iter()
        .find(|(mt, _)| essence(mt) == "application/x-www-form-urlencoded")
    {
        return Some((mt, media, BodyEncoding::Form));
    }
    let Some((mt, media)) = content
        .iter()
        .find(|(mt, _)| essence(mt) == "multipart/form-data")
    else {
        return content.iter().find_map(|(mt, media)| {
            let media_type = match essence(mt).as_str() {
                "*/*" | "application/*" => "application/octet-stream".to_string(),
                "text/*" => "text/plain".to_string(),
                e if e.contains('*') || e.starts_with("multipart/") => return None,
                _ => mt.clone(),
            };
            let stringy = media.get("schema").is_none_or(|schema| {
                let schema = deref(doc, schema);
                let types = match schema.get("type") {
                    Some(Value::String(t)) => vec![t.as_str()],
                    Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
                    _ => Vec::new(),
                };
                schema == &Value::Bool(true)
                    || (types.contains(&"string")
                        && types.iter().all(|t| *t == "string" || *t == "null"))
            });
            stringy.then_some((mt, media, BodyEncoding::Raw { media_type }))
        });
    };
    let schema = media.get("schema").cloned().unwrap_or(Value::Bool(true));
    let files = form_fields(doc, &schema)
        .into_iter()
        .filter(|(_, prop)| {
            prop.get("format").and_then(Value::as_str) == Some("binary")
                || prop.get("contentMediaType").is_some()
        })
        .map(|(name, prop)| {
            let declared = media
                .pointer(&format!("/encoding/{}/contentType", escape_pointer(&name)))
                .and_then(Value::as_str)
                .or_else(|| prop.get("contentMediaType").and_then(Value::as_str));
            let media_type = declared
                .and_then(|d| d.split(',').map(str::trim).find(|m| !m.contains('*')))
                .unwrap_or("application/octet-stream")
                .to_string();
            (name, media_type)
        })
        .collect();
    Some((mt, media, BodyEncoding::Multipart { files }))
}

/// The boundary of the `multipart/form-data` bodies the runner sends.
const MULTIPART_BOUNDARY: &str = "agentplane-conform-boundary";

/// A boundary a broken multipart request names in its Content-Type, which its body does
/// not use (and which is no prefix of [`MULTIPART_BOUNDARY`]).
const WRONG_MULTIPART_BOUNDARY: &str = "conform-wrong-boundary";

/// A file name for a file part of `media_type`, with the extension servers read it by.
fn file_name(media_type: &str) -> String {
    let ext = match media_type {
        "text/plain" => "txt",
        "text/markdown" => "md",
        "text/html" => "html",
        "application/json" => "json",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "application/pdf" => "pdf",
        _ => "bin",
    };
    format!("file.{ext}")
}

/// A form field's text: a scalar as itself, an object or array as JSON.
fn field_text(value: &Value) -> String {
    match value {
        Value::Object(_) | Value::Array(_) => value.to_string(),
        other => scalar_text(other).unwrap_or_default(),
    }
}

/// A body value serialized for its media type: the Content-Type and the bytes.
fn encode_body(body: &Body, value: &Value) -> (String, Vec<u8>) {
    let fields: Vec<(&String, &Value)> = match value {
        Value::Object(map) => map.iter().collect(),
        _ => Vec::new(),
    };
    // An array field is repeated, once per item.
    let pairs = || {
        fields.iter().flat_map(|(name, v)| match v {
            Value::Array(items) => items.iter().map(|i| (*name, i)).collect::<Vec<_>>(),
            other => vec![(*name, *other)],
        })
    };
    match &body.encoding {
        BodyEncoding::Json => (body.media_type.clone(), value.to_string().into_bytes()),
        BodyEncoding::Form => {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            for (name, v) in pairs() {
                form.append_pair(name, &field_text(v));
            }
            (body.media_type.clone(), form.finish().into_bytes())
        }
        BodyEncoding::Multipart { files } => (
            format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
            multipart_bytes(value, files),
        ),
        BodyEncoding::Raw { media_type } => {
            let bytes = match value {
                Value::String(text) => text.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
            (media_type.clone(), bytes)
        }
    }
}

/// A body value as a `multipart/form-data` body under [`MULTIPART_BOUNDARY`]: a part per
/// field (an array field once per item), the `files` as file parts of their media type.
fn multipart_bytes(value: &Value, files: &[(String, String)]) -> Vec<u8> {
    let fields: Vec<(&String, &Value)> = match value {
        Value::Object(map) => map.iter().collect(),
        _ => Vec::new(),
    };
    let pairs = fields.iter().flat_map(|(name, v)| match v {
        Value::Array(items) => items.iter().map(|i| (*name, i)).collect::<Vec<_>>(),
        other => vec![(*name, *other)],
    });
    let mut out = Vec::new();
    for (name, v) in pairs {
        out.extend_from_slice(format!("--{MULTIPART_BOUNDARY}\r\n").as_bytes());
        let disposition = format!("Content-Disposition: form-data; name=\"{name}\"");
        match files.iter().find(|(f, _)| f == name) {
            Some((_, media_type)) => out.extend_from_slice(
                format!(
                    "{disposition}; filename=\"{}\"\r\nContent-Type: {media_type}\r\n\r\n",
                    file_name(media_type)
                )
                .as_bytes(),
            ),
            None => out.extend_from_slice(format!("{disposition}\r\n\r\n").as_bytes()),
        }
        out.extend_from_slice(field_text(v).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{MULTIPART_BOUNDARY}--\r\n").as_bytes());
    out
}

/// Whether the server, reading a body value back from its serialization, sees something
/// the schema rejects: JSON as it is; a form's fields as text, read back by their types.
///
/// A raw body is never counted as rejected: its bytes are read as nothing but bytes, and
/// servers rightly take any (its negative requests would be false alarms).
fn body_rejected(body: &Body, value: &Value) -> bool {
    match body.encoding {
        BodyEncoding::Raw { .. } => false,
        BodyEncoding::Json => !body.validator.is_valid(value),
        _ => !body.validator.is_valid(value) && !body.validator.is_valid(&form_view(body, value)),
    }
}

/// Whether a body value is one the server must accept, serialized as it is sent.
fn body_valid(body: &Body, value: &Value) -> bool {
    if !body.validator.is_valid(value) {
        return false;
    }
    match body.encoding {
        BodyEncoding::Json => true,
        // No bytes is no body: a required one is then missing.
        BodyEncoding::Raw { .. } => match value {
            Value::String(text) => !(body.required && text.is_empty()),
            _ => true,
        },
        _ => body.validator.is_valid(&form_view(body, value)),
    }
}

/// A form body value as the server reads it back ([`form_value`]).
fn form_view(body: &Body, value: &Value) -> Value {
    let pairs = match value {
        Value::Object(map) => map
            .iter()
            .flat_map(|(name, v)| match v {
                Value::Array(items) => items
                    .iter()
                    .map(|i| (name.clone(), field_text(i)))
                    .collect::<Vec<_>>(),
                other => vec![(name.clone(), field_text(other))],
            })
            .collect(),
        _ => Vec::new(),
    };
    form_value(&body.fields, pairs)
}

/// The body a case sends: its Content-Type and bytes.
fn payload(op: &Op, case: &Case) -> Option<(String, Vec<u8>)> {
    if let Some(raw) = &case.raw {
        return Some(raw.clone());
    }
    Some(encode_body(op.body.as_ref()?, case.body.as_ref()?))
}

/// The bytes of [`payload`].
fn body_bytes(op: &Op, case: &Case) -> Option<Vec<u8>> {
    payload(op, case).map(|(_, bytes)| bytes)
}

/// A proptest runner whose RNG is a function of the run seed, a position and a phase tag,
/// so that generated data is reproducible.
pub fn seeded_runner(seed: u64, index: usize, phase: u8) -> TestRunner {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&(index as u64).to_le_bytes());
    bytes[16] = phase;
    TestRunner::new_with_rng(
        ProptestConfig::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

/// Serializes a parameter value as it appears in a path, header or non-exploded query
/// (`5`, `true`, `a,b`); `None` for nested arrays and objects.
pub fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Array(_) | Value::Object(_) => None,
                other => scalar_text(other),
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(",")),
        Value::Object(map) => Some(
            map.iter()
                .filter_map(|(k, v)| Some(format!("{k},{}", scalar_text(v)?)))
                .collect::<Vec<_>>()
                .join(","),
        ),
    }
}

/// Whether a value survives the trip through its location and still means what it meant.
fn representable(param: &Param, value: &Value) -> bool {
    let Some(text) = scalar_text(value) else {
        return false;
    };
    match param.loc {
        Loc::Path => !text.is_empty() && text != "." && text != "..",
        Loc::Header | Loc::Cookie => {
            text.bytes().all(|b| (0x20..0x7f).contains(&b))
                && text.trim() == text
                && !(param.loc == Loc::Cookie && text.contains([';', '=']))
        }
        // An empty array sends no `name=` (or an empty one): a required parameter would be
        // missing, which the server rightly refuses.
        Loc::Query => {
            (!param.deep || value.is_object())
                && !(param.required && value.as_array().is_some_and(Vec::is_empty))
        }
    }
}

/// What the server will see for a value, re-read from its text as the validator would.
fn round_trip(param: &Param, value: &Value) -> Option<Value> {
    if is_array_schema(&param.flat) && !value.is_array() && !value.is_object() {
        // A lone value of an array parameter is a one-item array to the server (or, not
        // exploded, the items between its commas).
        let text = scalar_text(value)?;
        let items: Vec<Value> = if param.explode {
            vec![Value::String(text)]
        } else {
            text.split(',')
                .map(|t| Value::String(t.to_string()))
                .collect()
        };
        return round_trip(param, &Value::Array(items));
    }
    if let Value::Array(items) = value {
        let item_schema = param
            .flat
            .get("items")
            .cloned()
            .unwrap_or(Value::Bool(true));
        let flat_items = match item_schema.get("$ref") {
            Some(_) => item_schema.clone(),
            None => item_schema,
        };
        return Some(Value::Array(
            items
                .iter()
                .map(|i| scalar_text(i).map(|t| coerce_scalar(&t, &flat_items)))
                .collect::<Option<Vec<_>>>()?,
        ));
    }
    if let (true, Value::Object(map)) = (param.deep, value) {
        let mut out = Map::new();
        for (k, v) in map {
            let schema = param
                .flat
                .get("properties")
                .and_then(|p| p.get(k))
                .cloned()
                .unwrap_or(Value::Bool(true));
            let text = match v {
                Value::Array(_) | Value::Object(_) => return None,
                other => scalar_text(other)?,
            };
            out.insert(k.clone(), coerce_scalar(&text, &schema));
        }
        return Some(Value::Object(out));
    }
    if value.is_object() {
        return Some(value.clone());
    }
    Some(coerce_scalar(&scalar_text(value)?, &param.flat))
}

/// Whether a (flattened) schema describes arrays: `type: array` or a type list with it.
fn is_array_schema(schema: &Value) -> bool {
    match schema.get("type") {
        Some(Value::String(t)) => t == "array",
        Some(Value::Array(types)) => types.iter().any(|t| t == "array"),
        _ => false,
    }
}

/// Whether the server, reading `value` back, sees something the schema accepts.
fn valid_after_round_trip(param: &Param, value: &Value) -> bool {
    representable(param, value)
        && round_trip(param, value).is_some_and(|v| param.validator.is_valid(&v))
}

struct CaseFactory<'a> {
    op: &'a Op,
    param_strategies: Vec<SBoxedStrategy<Value>>,
    body_strategy: Option<SBoxedStrategy<Value>>,
}

impl<'a> CaseFactory<'a> {
    fn new(shared: &'a Shared, op: &'a Op) -> Self {
        let generator = Generator::new(&shared.request_doc, Direction::Request);
        Self {
            op,
            param_strategies: op
                .params
                .iter()
                .map(|p| generator.strategy(&p.schema))
                .collect(),
            body_strategy: op.body.as_ref().map(|b| generator.strategy(&b.schema)),
        }
    }

    fn param_value(&self, i: usize, runner: &mut TestRunner) -> Option<Value> {
        let param = &self.op.params[i];
        (0..10).find_map(|_| {
            let v = sample(&self.param_strategies[i], runner)?;
            valid_after_round_trip(param, &v).then_some(v)
        })
    }

    /// Like [`CaseFactory::param_value`], keeping the value tree (same draws).
    fn param_tree(&self, i: usize, runner: &mut TestRunner) -> Option<Tree> {
        let param = &self.op.params[i];
        (0..10).find_map(|_| {
            let tree = self.param_strategies[i].new_tree(runner).ok()?;
            valid_after_round_trip(param, &tree.current()).then_some(tree)
        })
    }

    /// A schema-valid case; `None` when generation keeps failing.
    fn positive(&self, runner: &mut TestRunner, skip: &[String]) -> Option<Case> {
        self.positive_drawn(runner, skip).map(|d| d.current())
    }

    /// A schema-valid case as value trees, for shrinking; draws exactly what
    /// [`CaseFactory::positive`] draws.
    fn positive_drawn(&self, runner: &mut TestRunner, skip: &[String]) -> Option<Drawn> {
        let mut case = Drawn::default();
        for (i, param) in self.op.params.iter().enumerate() {
            if skip.iter().any(|s| s.eq_ignore_ascii_case(&param.name)) && param.loc == Loc::Header
            {
                continue;
            }
            let include = param.required || sample(&coin(), runner) == Some(Value::Bool(true));
            if !include {
                continue;
            }
            match self.param_tree(i, runner) {
                Some(v) => case.values.push((i, v)),
                None if param.required => return None,
                None => {}
            }
        }
        if let (Some(body), Some(strategy)) = (&self.op.body, &self.body_strategy) {
            let value = (0..10).find_map(|_| {
                let tree = strategy.new_tree(runner).ok()?;
                body_valid(body, &tree.current()).then_some(tree)
            });
            match value {
                Some(v) => case.body = Some(v),
                None if body.required => return None,
                None => {}
            }
        }
        Some(case)
    }
}

/// The value tree of one drawn parameter or body.
type Tree = <SBoxedStrategy<Value> as Strategy>::Tree;

/// A positive case as proptest value trees, so that a failing case can be shrunk.
#[derive(Default)]
struct Drawn {
    values: Vec<(usize, Tree)>,
    body: Option<Tree>,
}

impl Drawn {
    fn current(&self) -> Case {
        Case {
            values: self.values.iter().map(|(i, t)| (*i, t.current())).collect(),
            body: self.body.as_ref().map(|t| t.current()),
            raw: None,
        }
    }

    /// The trees in shrinking order: parameters, then the body.
    fn trees(&self) -> usize {
        self.values.len() + usize::from(self.body.is_some())
    }

    fn tree_mut(&mut self, k: usize) -> Option<&mut Tree> {
        let params = self.values.len();
        match self.values.get_mut(k) {
            Some((_, t)) => Some(t),
            None if k == params => self.body.as_mut(),
            None => None,
        }
    }

    /// `simplify()` (or `complicate()`) tree `k`; whether it moved.
    fn step(&mut self, k: usize, simplify: bool) -> bool {
        self.tree_mut(k).is_some_and(|t| {
            if simplify {
                t.simplify()
            } else {
                t.complicate()
            }
        })
    }
}

/// Checks the fuzzing phase shrinks: each a pure function of one request and its response.
const SHRINKABLE_CHECKS: &[&str] = &[
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "positive_data_acceptance",
];
/// Requests sent at most to shrink one failure of an operation that does not create
/// (GET, HEAD, OPTIONS, PUT, DELETE, PATCH: idempotent or updating one resource).
pub const SHRINK_MAX_REQUESTS: usize = 64;
/// Requests sent at most to shrink one failure of a POST: each may create a resource, so
/// POSTs shrink too, but with a smaller bound.
pub const SHRINK_MAX_REQUESTS_POST: usize = 16;
/// `simplify`/`complicate` moves at most per failure (moves that need no request included).
const SHRINK_MAX_MOVES: usize = 1024;

fn shrink_budget(op: &Op) -> usize {
    match op.method.as_str() {
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "PATCH" => SHRINK_MAX_REQUESTS,
        "POST" => SHRINK_MAX_REQUESTS_POST,
        _ => 0,
    }
}

/// A rough size of a value: numbers by magnitude, strings by length, containers by their
/// members. A shrink step never keeps a case larger than the smallest failing one so far
/// (a `oneOf`-style union may otherwise switch to a bigger alternative).
fn complexity(value: &Value) -> f64 {
    match value {
        Value::Null => 0.0,
        Value::Bool(b) => f64::from(u8::from(*b)),
        Value::Number(n) => n.as_f64().map_or(0.0, f64::abs),
        #[expect(clippy::cast_precision_loss, reason = "a size estimate")]
        Value::String(s) => s.chars().count() as f64,
        Value::Array(items) => items.iter().map(|v| 1.0 + complexity(v)).sum(),
        Value::Object(map) => map.values().map(|v| 1.0 + complexity(v)).sum(),
    }
}

fn case_complexity(case: &Case) -> f64 {
    case.values
        .iter()
        .map(|(_, v)| 1.0 + complexity(v))
        .sum::<f64>()
        + case.body.as_ref().map_or(0.0, complexity)
}

/// Whether a shrunk case is still one the spec accepts (a shrunk value can leave a filter).
fn case_is_valid(op: &Op, case: &Case) -> bool {
    case.values.iter().all(|(i, v)| {
        op.params
            .get(*i)
            .is_some_and(|p| valid_after_round_trip(p, v))
    }) && match (&case.body, &op.body) {
        (Some(v), Some(b)) => body_valid(b, v),
        (None, _) => true,
        (Some(_), None) => false,
    }
}

/// Redraws the case from the RNG state it was drawn with, replays `moves` on its trees,
/// then makes one more move; the case after it, when the tree moved. Value trees are not
/// `Send`, so they are rebuilt from the seed instead of being kept across requests.
fn replay(
    factory: &CaseFactory<'_>, rng: &TestRng, skip: &[String], moves: &[(usize, bool)],
    next: Option<(usize, bool)>,
) -> Option<(Case, usize)> {
    let mut runner = TestRunner::new_with_rng(ProptestConfig::default(), rng.clone());
    let mut drawn = factory.positive_drawn(&mut runner, skip)?;
    for (k, simplify) in moves {
        drawn.step(*k, *simplify);
    }
    if let Some((k, simplify)) = next
        && !drawn.step(k, simplify)
    {
        return None;
    }
    Some((drawn.current(), drawn.trees()))
}

/// What shrinking one failing case found.
struct Shrunk {
    /// The smallest failing request: its message, curl and status; `None` when nothing
    /// simpler failed.
    best: Option<(String, String, u16)>,
    /// Its [`case_complexity`].
    size: f64,
    /// Requests sent.
    steps: usize,
}

/// Shrinking attempts per distinct failure (same check and message) of an operation: a
/// case drawn from an alternative that cannot shrink (an edge value, say) is retried on
/// the next occurrence.
const SHRINK_ATTEMPTS: usize = 3;

/// The shrunk form of a distinct failure, applied to each of its occurrences.
struct ShrinkEntry {
    message: String,
    curl: String,
    status: Option<u16>,
    size: f64,
    attempts: usize,
    /// Whether some attempt found a simpler failing case.
    improved: bool,
}

/// Sends a shrunk case and runs `check` on its exchange: the exchange and message when it
/// still fails (a network error counts as not failing).
async fn still_fails(
    shared: &Shared, op: &Op, check: &Check, case: &Case,
) -> Option<(Exchange, String)> {
    let (url, headers) = build_request(shared, op, case, true);
    let ex = exchange(shared, &op.method, url, headers, body_bytes(op, case))
        .await
        .ok()?;
    let ctx = CheckContext {
        operation: &op.label,
        responses: &op.responses,
        kind: CaseKind::Positive,
        exchange: &ex,
        follow_up: None,
        positive_statuses: &op.positive_statuses,
        before: None,
        pages: &[],
        path_methods: &op.path_methods,
        without_credentials: without_credentials(shared, op, &ex),
        max_response_time: shared.config.max_response_time,
    };
    match (check.run)(&ctx) {
        Verdict::Fail(message) => Some((ex, message)),
        Verdict::Pass | Verdict::NotApplicable => None,
    }
}

/// Shrinks a fuzzing case that failed `check`, proptest-style: simplify one tree at a
/// time; a simpler case that still fails is kept, else the tree is complicated back; stop
/// when no tree moves or after the request budget. The message says how many requests
/// (steps) shrinking sent.
async fn shrink(
    shared: &Shared, op: &Op, factory: &CaseFactory<'_>, rng: &TestRng, check: &Check,
    failed: &Case, outcome: &mut OpOutcome,
) -> Option<Shrunk> {
    let skip = &shared.auth_headers;
    let budget = shrink_budget(op);
    let (_, trees) = replay(factory, rng, skip, &[], None)?;
    let mut moves: Vec<(usize, bool)> = Vec::new();
    let mut seen: BTreeMap<String, bool> = BTreeMap::new();
    let key = |case: &Case| format!("{:?}|{:?}", case.values, case.body);
    seen.insert(key(failed), true);
    let mut best: Option<(Exchange, String)> = None;
    let mut best_size = case_complexity(failed);
    let mut steps = 0usize;
    'trees: for k in 0..trees {
        let mut simplify = true;
        loop {
            if steps >= budget || moves.len() >= SHRINK_MAX_MOVES {
                break 'trees;
            }
            let Some((candidate, _)) = replay(factory, rng, skip, &moves, Some((k, simplify)))
            else {
                break;
            };
            moves.push((k, simplify));
            let size = case_complexity(&candidate);
            let fails = if size > best_size || !case_is_valid(op, &candidate) {
                false
            } else if let Some(known) = seen.get(&key(&candidate)) {
                *known
            } else {
                steps += 1;
                outcome.cases += 1;
                let verdict = still_fails(shared, op, check, &candidate).await;
                seen.insert(key(&candidate), verdict.is_some());
                match verdict {
                    Some((ex, message)) => {
                        best = Some((ex, message));
                        true
                    }
                    None => false,
                }
            };
            if fails {
                best_size = size;
            }
            simplify = fails;
        }
    }
    Some(Shrunk {
        best: best.map(|(ex, message)| (message, ex.curl(), ex.status)),
        size: best_size,
        steps,
    })
}

/// Sends a fuzzing case and shrinks the failures of [`SHRINKABLE_CHECKS`] it shows. The
/// failures are patched at the end of the phase ([`apply_shrinks`]), so that every
/// occurrence of a distinct failure reports the same smallest case.
#[allow(clippy::too_many_arguments)]
async fn send_fuzzed(
    shared: &Shared, op: &Op, factory: &CaseFactory<'_>, case: &Case, rng: &TestRng,
    shrunk: &mut BTreeMap<(String, String), ShrinkEntry>,
    patches: &mut Vec<(usize, (String, String))>, outcome: &mut OpOutcome,
) {
    let before = outcome.failures.len();
    send_and_check(shared, op, case, CaseKind::Positive, true, outcome).await;
    if shrink_budget(op) == 0 {
        return;
    }
    for n in before..outcome.failures.len() {
        let (key, curl, status) = match outcome.failures.get(n) {
            Some(f) if SHRINKABLE_CHECKS.contains(&f.check.as_str()) => (
                (f.check.clone(), f.message.clone()),
                f.curl.clone(),
                f.status,
            ),
            _ => continue,
        };
        patches.push((n, key.clone()));
        if shrunk
            .get(&key)
            .is_some_and(|e| e.improved || e.attempts >= SHRINK_ATTEMPTS)
        {
            continue;
        }
        let Some(check) = shared.checks.iter().find(|c| c.name == key.0) else {
            continue;
        };
        let Some(result) = shrink(shared, op, factory, rng, check, case, outcome).await else {
            continue;
        };
        let (message, curl, status, improved) = match result.best {
            Some((message, curl, status)) => (message, curl, Some(status), true),
            None => (key.1.clone(), curl, status, false),
        };
        let attempts = shrunk.get(&key).map_or(0, |e| e.attempts) + 1;
        let entry = ShrinkEntry {
            message: format!("{message} (shrunk in {} steps)", result.steps),
            curl,
            status,
            size: result.size,
            attempts,
            improved,
        };
        match shrunk.get_mut(&key) {
            Some(old) if old.size <= entry.size => old.attempts = attempts,
            Some(old) => *old = entry,
            None => {
                shrunk.insert(key, entry);
            }
        }
    }
}

/// Gives every shrunk failure the smallest case found for its distinct failure.
fn apply_shrinks(
    shrunk: &BTreeMap<(String, String), ShrinkEntry>, patches: &[(usize, (String, String))],
    outcome: &mut OpOutcome,
) {
    for (n, key) in patches {
        if let (Some(entry), Some(f)) = (shrunk.get(key), outcome.failures.get_mut(*n)) {
            f.message = entry.message.clone();
            f.curl = entry.curl.clone();
            f.status = entry.status;
        }
    }
}

fn coin() -> SBoxedStrategy<Value> {
    use proptest::prelude::*;
    any::<bool>().prop_map(Value::Bool).sboxed()
}

/// Picks `n` items spread evenly over `items`.
fn spread<T: Clone>(items: &[T], n: usize) -> Vec<T> {
    if items.len() <= n {
        return items.to_vec();
    }
    (0..n).map(|i| items[i * items.len() / n].clone()).collect()
}

async fn run_phase(shared: &Shared, index: usize, phase: Phase) -> Vec<(usize, OpOutcome)> {
    let op = &shared.ops[index];
    let phase_no = match phase {
        Phase::Examples => 1,
        Phase::Coverage => 5,
        Phase::Fuzzing => 2,
        Phase::Negative => 3,
        Phase::Stateful => 4,
    };
    let mut runner = seeded_runner(shared.config.seed, index, phase_no);
    let factory = CaseFactory::new(shared, op);
    let max = shared.config.max_examples.max(1);
    let mut cases: Vec<(Case, CaseKind)> = Vec::new();
    // For fuzzing cases: the RNG state each was drawn with, to shrink it when it fails.
    let mut snapshots: Vec<Option<TestRng>> = Vec::new();
    match phase {
        Phase::Examples => {
            let body_examples: Vec<Value> = op
                .body
                .as_ref()
                .map(|b| {
                    b.examples
                        .iter()
                        .filter(|e| body_valid(b, e))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            let has_param_examples = op.params.iter().any(|p| !p.examples.is_empty());
            if !body_examples.is_empty() || has_param_examples {
                let n = body_examples.len().max(1).min(max);
                for k in 0..n {
                    let Some(mut case) = factory.positive(&mut runner, &shared.auth_headers) else {
                        continue;
                    };
                    for (i, param) in op.params.iter().enumerate() {
                        let usable: Vec<&Value> = param
                            .examples
                            .iter()
                            .filter(|e| valid_after_round_trip(param, e))
                            .collect();
                        if let Some(e) = usable.get(k % usable.len().max(1)) {
                            case.values.retain(|(j, _)| *j != i);
                            case.values.push((i, (*e).clone()));
                        }
                    }
                    if let Some(b) = body_examples.get(k) {
                        case.body = Some(b.clone());
                    }
                    cases.push((case, CaseKind::Positive));
                }
            }
        }
        Phase::Coverage => cases = coverage_cases(shared, op, &factory, &mut runner),
        Phase::Fuzzing => {
            for _ in 0..max {
                let rng = runner.rng().clone();
                if let Some(case) = factory.positive(&mut runner, &shared.auth_headers) {
                    cases.push((case, CaseKind::Positive));
                    snapshots.push(Some(rng));
                }
            }
        }
        Phase::Negative => {
            if let Some(base) = factory.positive(&mut runner, &shared.auth_headers) {
                let (missing, negatives): (Vec<_>, Vec<_>) =
                    negative_cases(shared, op, &base, &mut runner)
                        .into_iter()
                        .partition(|(_, k)| *k == CaseKind::MissingHeader);
                let malformed = malformed_cases(shared, op, &base);
                let room = max.saturating_sub(missing.len() + malformed.len()).max(1);
                cases.extend(missing);
                cases.extend(malformed);
                cases.extend(spread(&negatives, room));
            }
        }
        Phase::Stateful => {}
    }
    let mut outcome = OpOutcome::default();
    let mut first_positive: Option<Case> = None;
    let mut shrunk = BTreeMap::new();
    let mut patches = Vec::new();
    for (n, (case, kind)) in cases.iter().enumerate() {
        if *kind == CaseKind::Positive && first_positive.is_none() {
            first_positive = Some(case.clone());
        }
        match snapshots.get(n).and_then(Option::as_ref) {
            Some(rng) => {
                let (shrunk, patches) = (&mut shrunk, &mut patches);
                send_fuzzed(
                    shared,
                    op,
                    &factory,
                    case,
                    rng,
                    shrunk,
                    patches,
                    &mut outcome,
                )
                .await;
            }
            None => {
                send_and_check(shared, op, case, *kind, true, &mut outcome).await;
            }
        }
    }
    apply_shrinks(&shrunk, &patches, &mut outcome);
    if op.secured
        && shared.checks.iter().any(|c| c.name == "ignored_auth")
        && let Some(case) = first_positive
        && !op.auth_probed.swap(true, Ordering::SeqCst)
    {
        send_and_check(
            shared,
            op,
            &case,
            CaseKind::Unauthenticated,
            false,
            &mut outcome,
        )
        .await;
    }
    if !shared.config.progress_per_operation {
        progress(shared, &op_line(phase.as_str(), &op.label, &outcome));
    }
    vec![(index, outcome)]
}

/// Methods `unsupported_method` tries on a path that does not document them.
const PROBED_METHODS: &[&str] = &["GET", "PUT", "POST", "DELETE", "PATCH"];

/// The index of each path's first operation the run tests.
fn path_firsts(ops: &[Op]) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    ops.iter()
        .filter(|o| o.skipped.is_none() && seen.insert(o.template.as_str()))
        .map(|o| o.index)
        .collect()
}

/// Sends every method of [`PROBED_METHODS`] that the path of operation `index` does not
/// document, with the path parameters of a valid case of that operation and no body.
async fn probe_unsupported_methods(shared: &Shared, index: usize) -> OpOutcome {
    let mut outcome = OpOutcome::default();
    let op = &shared.ops[index];
    if !shared.checks.iter().any(|c| c.name == "unsupported_method") {
        return outcome;
    }
    let mut runner = seeded_runner(shared.config.seed, index, 7);
    let factory = CaseFactory::new(shared, op);
    let Some(mut case) = factory.positive(&mut runner, &shared.auth_headers) else {
        return outcome;
    };
    // Only the path parameters: the other operations' parameters mean nothing here.
    case.values.retain(|(i, _)| op.params[*i].loc == Loc::Path);
    case.body = None;
    case.raw = None;
    for method in PROBED_METHODS {
        if op.path_methods.iter().any(|m| m == method) {
            continue;
        }
        outcome.cases += 1;
        let (url, headers) = build_request(shared, op, &case, true);
        match exchange(shared, method, url, headers, None).await {
            Ok(ex) => {
                judge(
                    shared,
                    op,
                    CaseKind::UnsupportedMethod,
                    &ex,
                    None,
                    &mut outcome,
                );
            }
            Err(e) => outcome.failures.push(network_failure(op, e)),
        }
    }
    outcome
}

/// Pages a list walk fetches at most.
const MAX_WALKED_PAGES: u64 = 5;
/// The page sizes a walk and a whole-list read try at most.
const MAX_PAGE_SIZE: u64 = 100;

/// Query parameters that set a page's size, in the order they are looked for.
const SIZE_PARAMS: &[&str] = &[
    "per_page",
    "page_size",
    "limit",
    "size",
    "pageSize",
    "perPage",
];
/// Query parameters that take the previous page's cursor.
const CURSOR_PARAMS: &[&str] = &[
    "cursor",
    "after",
    "page_token",
    "pageToken",
    "starting_after",
];

/// How a walk moves from one page to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paging {
    /// `page=1, 2, …`.
    Numbers,
    /// `offset=0, size, 2·size, …`.
    Offsets,
    /// The previous page's cursor, or its `Link: <…>; rel="next"`.
    Next,
}

/// A list operation's paging parameters (indices into its parameters).
struct ListParams {
    size: Option<usize>,
    page: Option<usize>,
    offset: Option<usize>,
    cursor: Option<usize>,
}

impl ListParams {
    fn of(op: &Op) -> Self {
        let find = |names: &[&str]| {
            names.iter().find_map(|name| {
                op.params
                    .iter()
                    .position(|p| p.loc == Loc::Query && p.name == *name)
            })
        };
        ListParams {
            size: find(SIZE_PARAMS),
            page: find(&["page"]),
            offset: find(&["offset"]),
            cursor: find(CURSOR_PARAMS),
        }
    }

    fn all(&self) -> impl Iterator<Item = usize> {
        [self.size, self.page, self.offset, self.cursor]
            .into_iter()
            .flatten()
    }
}

/// Walks a list GET's pages (`pagination_totals`) in every way it pages: page numbers
/// (`page` and a size), offsets (`offset` and `limit`), and cursors or `Link` headers
/// when its first page carries one. A first page read with the smallest size judges the
/// per-page invariants and gives the total; each walk then reads up to
/// [`MAX_WALKED_PAGES`] pages with a size that covers the total in that many, and is judged
/// as a whole (no item twice, none lost, the total held) when it reached the last page, or
/// for repeats only when the budget ran out. The whole list read as one page, when one
/// page can hold it, is what no walk may lose an item of.
async fn walk_pages(
    shared: &Shared, op: &Op, factory: &CaseFactory<'_>, runner: &mut TestRunner,
    outcome: &mut OpOutcome,
) {
    if op.method != "GET" || !shared.checks.iter().any(|c| c.name == "pagination_totals") {
        return;
    }
    let params = ListParams::of(op);
    if params.page.is_none() && params.offset.is_none() && params.cursor.is_none() {
        return;
    }
    let Some(mut base) = factory.positive(runner, &shared.auth_headers) else {
        return;
    };
    let paging: Vec<usize> = params.all().collect();
    base.values
        .retain(|(i, _)| op.params[*i].required && !paging.contains(i));
    let accepts = |i: usize, n: u64| valid_after_round_trip(&op.params[i], &Value::from(n));
    let size_from = |from: u64| match params.size {
        Some(i) => (from..=MAX_PAGE_SIZE.max(from)).find(|n| accepts(i, *n)),
        None => Some(0),
    };
    let Some(first_size) = size_from(1) else {
        return;
    };
    let with = |case: &Case, i: Option<usize>, value: Value| {
        let mut case = case.clone();
        if let Some(i) = i {
            case.values.retain(|(j, _)| *j != i);
            case.values.push((i, value));
        }
        case
    };
    let sized = |size: u64| {
        if size == 0 {
            base.clone()
        } else {
            with(&base, params.size, Value::from(size))
        }
    };
    let Some(first) = get_page(shared, op, &sized(first_size), outcome).await else {
        return;
    };
    let Some(page) = checks::list_page(&first) else {
        return;
    };
    let seen = Seen {
        pages: std::slice::from_ref(&first),
        ..Seen::new(CaseKind::ListPage, &first)
    };
    judge_with(shared, op, &seen, outcome);
    let wanted = match page.total {
        Some(total) => total.div_ceil(MAX_WALKED_PAGES).max(first_size).max(1),
        None => first_size.max(2),
    };
    let Some(size) = size_from(wanted) else {
        return;
    };
    // The whole list as one page, when one can hold it.
    let whole = match (params.size, page.total) {
        (Some(_), Some(total)) if total > size => match size_from(total) {
            Some(all) => get_page(shared, op, &sized(all), outcome)
                .await
                .filter(|ex| checks::list_page(ex).is_some_and(|p| p.items.len() as u64 == total)),
            None => None,
        },
        _ => None,
    };
    let mut ways = Vec::new();
    if params.page.is_some() && params.size.is_some() {
        ways.push(Paging::Numbers);
    }
    if params.offset.is_some() && params.size.is_some() {
        ways.push(Paging::Offsets);
    }
    if page.next_link.is_some() || (page.next_cursor.is_some() && params.cursor.is_some()) {
        ways.push(Paging::Next);
    }
    for way in ways {
        let mut pages: Vec<Exchange> = Vec::new();
        let mut complete = false;
        let mut next: Option<(Option<String>, Option<String>)> = None;
        for n in 0..MAX_WALKED_PAGES {
            let fetched = match (way, &next) {
                (Paging::Next, Some((Some(link), _))) => {
                    let url = resolve_location(pages.last().map_or("", |p| p.url.as_str()), link);
                    outcome.cases += 1;
                    match exchange(shared, "GET", url, auth_headers(shared), None).await {
                        Ok(ex) if ex.status == 200 => Some(ex),
                        Ok(_) => None,
                        Err(e) => {
                            outcome.failures.push(network_failure(op, e));
                            None
                        }
                    }
                }
                (Paging::Next, Some((None, Some(cursor)))) => {
                    let case = with(&sized(size), params.cursor, Value::from(cursor.clone()));
                    get_page(shared, op, &case, outcome).await
                }
                (Paging::Next, _) => get_page(shared, op, &sized(size), outcome).await,
                (Paging::Numbers, _) => {
                    if !params.page.is_some_and(|i| accepts(i, n + 1)) {
                        break;
                    }
                    get_page(
                        shared,
                        op,
                        &with(&sized(size), params.page, Value::from(n + 1)),
                        outcome,
                    )
                    .await
                }
                (Paging::Offsets, _) => {
                    if !params.offset.is_some_and(|i| accepts(i, n * size)) {
                        break;
                    }
                    get_page(
                        shared,
                        op,
                        &with(&sized(size), params.offset, Value::from(n * size)),
                        outcome,
                    )
                    .await
                }
            };
            let Some(ex) = fetched else {
                break;
            };
            let Some(this) = checks::list_page(&ex) else {
                break;
            };
            pages.push(ex);
            let held = this.items.len() as u64;
            let last = match way {
                Paging::Next => {
                    next = Some((this.next_link.clone(), this.next_cursor.clone()));
                    !this.has_next()
                }
                _ => match this.total {
                    Some(total) => (n + 1) * size >= total,
                    None => held < size || held == 0,
                },
            };
            if last {
                complete = true;
                break;
            }
        }
        let Some(last) = pages.last() else {
            continue;
        };
        let seen = Seen {
            pages: &pages,
            follow_up: whole.as_ref().filter(|_| complete),
            ..Seen::new(
                if complete {
                    CaseKind::PageWalk
                } else {
                    CaseKind::PartialWalk
                },
                last,
            )
        };
        judge_with(shared, op, &seen, outcome);
    }
}

/// Reads one page of a list; the exchange when it answered 200.
async fn get_page(
    shared: &Shared, op: &Op, case: &Case, outcome: &mut OpOutcome,
) -> Option<Exchange> {
    outcome.cases += 1;
    let (url, headers) = build_request(shared, op, case, true);
    match exchange(shared, "GET", url, headers, None).await {
        Ok(ex) if ex.status == 200 => Some(ex),
        Ok(_) => None,
        Err(e) => {
            outcome.failures.push(network_failure(op, e));
            None
        }
    }
}

/// A progress line for one operation: `phase  METHOD /path (N requests, M failures)`.
fn op_line(phase: &str, label: &str, outcome: &OpOutcome) -> String {
    let failures = if outcome.failures.is_empty() {
        String::new()
    } else {
        format!(", {} failures", outcome.failures.len())
    };
    if phase.is_empty() {
        format!("{label} ({} requests{failures})", outcome.cases)
    } else {
        format!("{phase:<9} {label} ({} requests{failures})", outcome.cases)
    }
}

fn progress(shared: &Shared, line: &str) {
    let n = shared.done.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(p) = &shared.config.progress {
        p(&format!(
            "{} {n}/{} {line}",
            progress_bar(n, shared.total),
            shared.total
        ));
    }
}

/// A 20-cell text bar: `[#####...............]` at a quarter.
fn progress_bar(done: usize, total: usize) -> String {
    const WIDTH: usize = 20;
    let filled = (done * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH)
        .min(WIDTH);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(WIDTH - filled))
}

/// Requests per operation the coverage phase sends at most.
pub const COVERAGE_MAX_CASES: usize = 60;
/// Of those, at most this many are positive.
const COVERAGE_MAX_POSITIVE: usize = 40;

/// The coverage phase's requests: one schema-valid base case, then one variation per
/// boundary of each parameter and of the body (positive), each optional parameter present
/// and absent, then the value just outside each constraint (negative). Deterministic for
/// a seed, and at most [`COVERAGE_MAX_CASES`].
fn coverage_cases(
    shared: &Shared, op: &Op, factory: &CaseFactory<'_>, runner: &mut TestRunner,
) -> Vec<(Case, CaseKind)> {
    let Some(base) = factory.positive(runner, &shared.auth_headers) else {
        return Vec::new();
    };
    let generator = Generator::new(&shared.request_doc, Direction::Request);
    let mut positives = vec![base.clone()];
    for (i, param) in op.params.iter().enumerate() {
        if param.loc == Loc::Header
            && shared
                .auth_headers
                .contains(&param.name.to_ascii_lowercase())
        {
            continue;
        }
        if !param.required {
            let mut case = base.clone();
            case.values.retain(|(j, _)| *j != i);
            if case.values.len() != base.values.len() {
                positives.push(case);
            } else if let Some(v) = factory.param_value(i, runner) {
                case.values.push((i, v));
                positives.push(case);
            }
        }
        for b in generator.boundaries(&param.schema, runner) {
            if valid_after_round_trip(param, &b.value) {
                let mut case = base.clone();
                case.values.retain(|(j, _)| *j != i);
                case.values.push((i, b.value));
                positives.push(case);
            }
        }
    }
    if let Some(body) = &op.body {
        for b in generator.boundaries(&body.schema, runner) {
            if body_valid(body, &b.value) && base.body.as_ref() != Some(&b.value) {
                let mut case = base.clone();
                case.body = Some(b.value);
                positives.push(case);
            }
        }
        if !body.required && base.body.is_some() {
            let mut case = base.clone();
            case.body = None;
            positives.push(case);
        }
    }
    let negatives = negative_cases(shared, op, &base, runner);
    let mut positives = spread(&positives, COVERAGE_MAX_POSITIVE);
    if let Some(body) = &op.body
        && let (Some((media_type, schema)), Some(value)) = (&body.xml, &base.body)
    {
        let mut case = base.clone();
        let xml = crate::xml::to_xml(&shared.request_doc, schema, value);
        case.raw = Some((media_type.clone(), xml.into_bytes()));
        positives.push(case);
    }
    let room = COVERAGE_MAX_CASES.saturating_sub(positives.len());
    positives
        .into_iter()
        .map(|c| (c, CaseKind::Positive))
        .chain(spread(&negatives, room))
        .collect()
}

/// Requests whose body is syntactically broken, in the operation's own media type: for
/// JSON a lone NUL and the valid body cut in half; for `multipart/form-data` the valid body
/// without a boundary in its Content-Type, under a wrong boundary, cut in half (its last
/// part never closed), and a part without a `Content-Disposition` (Prism 5's process dies
/// on one); and for any body, the valid body under a Content-Type the
/// operation does not take: `text/plain`, and as a multipart form (a server whose
/// multipart parser reads what it should refuse, or crashes on it, as Prism 5 does). Each must be answered 4xx, with a documented status and error
/// body. A URL-encoded form gets invalid percent-escapes (`%zz`, a cut `%A`, bytes that are
/// not UTF-8), which a reader may keep as they are ([`CaseKind::LenientBody`]): any answer
/// but a server error, and a documented one.
fn malformed_cases(shared: &Shared, op: &Op, base: &Case) -> Vec<(Case, CaseKind)> {
    let Some(body) = op.body.as_ref() else {
        return Vec::new();
    };
    let valid = base.body.clone().unwrap_or_else(|| {
        Generator::new(&shared.request_doc, Direction::Request).plain(&body.schema)
    });
    let (content_type, bytes) = encode_body(body, &valid);
    let mut raws = match &body.encoding {
        BodyEncoding::Json => {
            let text = valid.to_string();
            let mut cut = text.len() / 2;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            let truncated = match &text[..cut] {
                t if !t.is_empty() && serde_json::from_str::<Value>(t).is_err() => t.to_string(),
                _ => "{\"".to_string(),
            };
            vec![
                (
                    body.media_type.clone(),
                    b"\0".to_vec(),
                    CaseKind::MalformedBody,
                ),
                (
                    body.media_type.clone(),
                    truncated.into_bytes(),
                    CaseKind::MalformedBody,
                ),
            ]
        }
        BodyEncoding::Form => {
            let name = body.fields.keys().next().map_or("field", String::as_str);
            let mut broken = bytes.clone();
            if !broken.is_empty() {
                broken.push(b'&');
            }
            broken.extend_from_slice(format!("{name}=%zz%FF%FE%A").as_bytes());
            vec![(content_type, broken, CaseKind::LenientBody)]
        }
        // Raw bytes have no syntax to break; only the media types below apply.
        BodyEncoding::Raw { .. } => Vec::new(),
        BodyEncoding::Multipart { .. } => {
            let truncated = bytes[..bytes.len() / 2].to_vec();
            vec![
                (
                    "multipart/form-data".to_string(),
                    bytes.clone(),
                    CaseKind::MalformedBody,
                ),
                (
                    format!("multipart/form-data; boundary={WRONG_MULTIPART_BOUNDARY}"),
                    bytes.clone(),
                    CaseKind::MalformedBody,
                ),
                (content_type.clone(), truncated, CaseKind::MalformedBody),
                (
                    content_type,
                    format!(
                        "--{MULTIPART_BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nno name\r\n--{MULTIPART_BOUNDARY}--\r\n"
                    )
                    .into_bytes(),
                    CaseKind::MalformedBody,
                ),
            ]
        }
    };
    if body.foreign_multipart {
        raws.push((
            format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
            multipart_bytes(&valid, &[]),
            CaseKind::MalformedBody,
        ));
    }
    if let Some(wrong) = &body.wrong_media {
        raws.push((wrong.clone(), bytes, CaseKind::MalformedBody));
    }
    raws.into_iter()
        .map(|(media, bytes, kind)| {
            let case = Case {
                values: base.values.clone(),
                body: None,
                raw: Some((media, bytes)),
            };
            (case, kind)
        })
        .collect()
}

fn negative_cases(
    shared: &Shared, op: &Op, base: &Case, runner: &mut TestRunner,
) -> Vec<(Case, CaseKind)> {
    let generator = Generator::new(&shared.request_doc, Direction::Request);
    let mut out = Vec::new();
    if let Some(body) = &op.body {
        for n in generator.negatives(&body.schema, runner) {
            if body_rejected(body, &n.value) {
                let mut case = base.clone();
                case.body = Some(n.value);
                out.push((case, CaseKind::Negative));
            }
        }
        if body.required {
            let mut case = base.clone();
            case.body = None;
            out.push((case, CaseKind::Negative));
        }
    }
    for (i, param) in op.params.iter().enumerate() {
        if param.loc == Loc::Header
            && shared
                .auth_headers
                .contains(&param.name.to_ascii_lowercase())
        {
            continue;
        }
        if param.required && param.loc != Loc::Path {
            let mut case = base.clone();
            case.values.retain(|(j, _)| *j != i);
            let kind = if param.loc == Loc::Header {
                CaseKind::MissingHeader
            } else {
                CaseKind::Negative
            };
            out.push((case, kind));
        }
        // An empty query value (`limit=`), which a server may take for an absent one.
        let scalar = !param.deep
            && !is_array_schema(&param.flat)
            && param.flat.get("type").is_none_or(|t| t != "object");
        let empty = (param.loc == Loc::Query && scalar && !param.allow_empty)
            .then(|| Value::String(String::new()));
        let values = generator.negatives(&param.schema, runner).into_iter();
        for value in values.map(|n| n.value).chain(empty) {
            let rejected = representable(param, &value)
                && round_trip(param, &value).is_some_and(|v| !param.validator.is_valid(&v));
            if rejected {
                let mut case = base.clone();
                case.values.retain(|(j, _)| *j != i);
                case.values.push((i, value));
                out.push((case, CaseKind::Negative));
            }
        }
    }
    out
}

/// Percent-encodes a path segment.
pub fn encode_segment(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL and headers of a case.
fn build_request(
    shared: &Shared, op: &Op, case: &Case, with_auth: bool,
) -> (String, Vec<(String, String)>) {
    let mut path = op.template.clone();
    let mut query = url::form_urlencoded::Serializer::new(String::new());
    let mut has_query = false;
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut cookies: Vec<String> = Vec::new();
    for (i, value) in &case.values {
        let param = &op.params[*i];
        match param.loc {
            Loc::Path => {
                let text = scalar_text(value).unwrap_or_default();
                path = path.replace(&format!("{{{}}}", param.name), &encode_segment(&text));
            }
            Loc::Query => {
                has_query = true;
                match value {
                    Value::Object(map) if param.deep => {
                        for (k, v) in map {
                            query.append_pair(
                                &format!("{}[{k}]", param.name),
                                &scalar_text(v).unwrap_or_default(),
                            );
                        }
                    }
                    Value::Array(items) if param.explode => {
                        for item in items {
                            query.append_pair(&param.name, &scalar_text(item).unwrap_or_default());
                        }
                    }
                    Value::Object(map) if param.explode => {
                        for (k, v) in map {
                            query.append_pair(k, &scalar_text(v).unwrap_or_default());
                        }
                    }
                    other => {
                        query.append_pair(&param.name, &scalar_text(other).unwrap_or_default());
                    }
                }
            }
            Loc::Header => {
                headers.push((param.name.clone(), scalar_text(value).unwrap_or_default()))
            }
            Loc::Cookie => cookies.push(format!(
                "{}={}",
                param.name,
                scalar_text(value).unwrap_or_default()
            )),
        }
    }
    let mut url = format!("{}{path}", shared.config.base_url.trim_end_matches('/'));
    if has_query {
        url.push('?');
        url.push_str(&query.finish());
    }
    for (name, value) in &shared.config.headers {
        let secret = shared.auth_headers.contains(&name.to_ascii_lowercase());
        if with_auth || !secret {
            headers.push((name.clone(), value.clone()));
        }
    }
    if !cookies.is_empty() {
        headers.push(("Cookie".into(), cookies.join("; ")));
    }
    if let Some((content_type, _)) = payload(op, case) {
        headers.push(("Content-Type".into(), content_type));
    }
    (url, headers)
}

/// Sends one request and records it for the cassette (without checks).
async fn exchange(
    shared: &Shared, method: &str, url: String, headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
) -> Result<Exchange, String> {
    exchange_recorded(shared, method, url, headers, body)
        .await
        .0
}

/// Sends one request; when a cassette is being written, records the interaction and
/// returns its position so that check results can be attached to it.
async fn exchange_recorded(
    shared: &Shared, method: &str, url: String, headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
) -> (Result<Exchange, String>, Option<usize>) {
    let Some(recorder) = &shared.recorder else {
        return (
            send_raw(shared, method, url, headers, body)
                .await
                .map(|(ex, _)| ex),
            None,
        );
    };
    let recorded_at = SystemTime::now();
    let started = Instant::now();
    let result = send_raw(shared, method, url.clone(), headers.clone(), body.clone()).await;
    let n = shared.recorded.fetch_add(1, Ordering::SeqCst);
    let phase = Phase::ALL
        .get(shared.phase.load(Ordering::SeqCst))
        .map_or("", |p| p.as_str());
    let interaction = Interaction {
        id: format!("{:016x}{:016x}", shared.config.seed, n),
        phase: phase.to_string(),
        seed: shared.config.seed,
        recorded_at,
        elapsed: started.elapsed(),
        checks: Vec::new(),
        method: method.to_string(),
        uri: url,
        request_headers: headers,
        request_body: body.map(|b| String::from_utf8_lossy(&b).into_owned()),
        response: result.as_ref().ok().map(|(ex, version)| RecordedResponse {
            status: ex.status,
            headers: ex.headers.clone(),
            body: ex.body.clone(),
            http_version: version.clone(),
        }),
    };
    let mut interactions = recorder.lock().unwrap_or_else(PoisonError::into_inner);
    interactions.push(interaction);
    let slot = interactions.len() - 1;
    (result.map(|(ex, _)| ex), Some(slot))
}

/// Sends one request; the exchange and the response's HTTP version (`1.1`, `2`).
async fn send_raw(
    shared: &Shared, method: &str, url: String, headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
) -> Result<(Exchange, String), String> {
    let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
    let mut sent = tokio::time::Instant::now();
    let build = || {
        let mut request = shared.client.request(m.clone(), &url);
        for (name, value) in &headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(b) = &body {
            request = request.body(b.clone());
        }
        request
    };
    let partial = Exchange {
        method: method.to_string(),
        url: url.clone(),
        request_headers: headers.clone(),
        request_body: body.clone(),
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        elapsed: Duration::ZERO,
    };
    let mut retries = 0;
    let response = loop {
        let response = build()
            .send()
            .await
            .map_err(|e| format!("{e} ({})", partial.curl()))?;
        // A 429 with a Retry-After the run can wait: back off and send it again.
        match retry_after(&response).filter(|_| retries < MAX_RETRIES) {
            Some(wait) => {
                retries += 1;
                tokio::time::sleep(wait).await;
                sent = tokio::time::Instant::now();
            }
            None => break response,
        }
    };
    let status = response.status().as_u16();
    let version = match response.version() {
        reqwest::Version::HTTP_09 => "0.9",
        reqwest::Version::HTTP_10 => "1.0",
        reqwest::Version::HTTP_2 => "2",
        reqwest::Version::HTTP_3 => "3",
        _ => "1.1",
    }
    .to_string();
    let response_headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let streamed = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::response::is_event_stream);
    let (body, elapsed) = if streamed {
        let elapsed = sent.elapsed();
        // Most of the request timeout: the client's own timeout would fail the read.
        let body =
            read_event_stream(response, sent + shared.config.request_timeout.mul_f64(0.8)).await?;
        (body, elapsed)
    } else {
        let body = response.bytes().await.map_err(|e| e.to_string())?.to_vec();
        (body, sent.elapsed())
    };
    Ok((
        Exchange {
            status,
            headers: response_headers,
            body,
            elapsed,
            ..partial
        },
        version,
    ))
}

/// Times one request is sent again after a 429 with `Retry-After`.
pub const MAX_RETRIES: usize = 3;
/// The longest `Retry-After` the run waits; a longer one leaves the 429 as the answer.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(5);

/// How long a 429 asks to wait (`Retry-After` in seconds or as an HTTP date), when the
/// run waits that long.
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    if response.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let value = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate_in(value)?,
    };
    (wait <= MAX_RETRY_WAIT).then_some(wait)
}

/// The time until an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`); zero when it is past.
fn httpdate_in(value: &str) -> Option<Duration> {
    let parts: Vec<&str> = value.split_ascii_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|t| t.parse().ok())
        .collect::<Option<_>>()?;
    let [h, mi, se] = hms.as_slice() else {
        return None;
    };
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let at = u64::try_from(days * 86_400 + h * 3600 + mi * 60 + se).ok()?;
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?
        .as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// Events of a stream read before it counts as seen (as Schemathesis does).
const MAX_STREAM_EVENTS: usize = 20;
/// Silence after which an event stream counts as seen.
const STREAM_IDLE: Duration = Duration::from_secs(1);

/// An event stream's body. A stream may never end (a followed log), so reading stops at its
/// end, after [`MAX_STREAM_EVENTS`] events, after [`STREAM_IDLE`] of silence or at
/// `deadline`, keeping the complete events: they are what the checks judge.
async fn read_event_stream(
    mut response: reqwest::Response, deadline: tokio::time::Instant,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let wait = deadline.min(tokio::time::Instant::now() + STREAM_IDLE);
        match tokio::time::timeout_at(wait, response.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                body.extend_from_slice(&chunk);
                let (end, events) = complete_events(&body);
                if events >= MAX_STREAM_EVENTS {
                    body.truncate(end);
                    return Ok(body);
                }
            }
            Ok(Ok(None)) => return Ok(body),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                body.truncate(complete_events(&body).0);
                return Ok(body);
            }
        }
    }
}

/// Where the last complete event of an SSE body ends, and how many complete events carry
/// data (comments such as keep-alives are not events).
fn complete_events(body: &[u8]) -> (usize, usize) {
    let mut parser = crate::sse::SseParser::default();
    let events = parser.feed(body).len();
    (parser.complete_len(), events)
}

fn network_failure(op: &Op, message: String) -> Failure {
    let request = Exchange {
        method: op.method.clone(),
        url: String::new(),
        request_headers: Vec::new(),
        request_body: None,
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        elapsed: Duration::ZERO,
    };
    Failure {
        operation: op.label.clone(),
        check: "network_error".into(),
        message: message.lines().next().unwrap_or_default().to_string(),
        severity: Severity::Error,
        curl: String::new(),
        status: None,
        occurrences: 1,
        id: checks::failure_id("network_error", &op.label, None, &request),
    }
}

async fn send_and_check(
    shared: &Shared, op: &Op, case: &Case, kind: CaseKind, with_auth: bool, outcome: &mut OpOutcome,
) -> Option<Exchange> {
    outcome.cases += 1;
    let (url, headers) = build_request(shared, op, case, with_auth);
    let (result, slot) =
        exchange_recorded(shared, &op.method, url, headers, body_bytes(op, case)).await;
    match result {
        Ok(ex) => {
            let records = judge(shared, op, kind, &ex, None, outcome);
            if let (Some(slot), Some(recorder)) = (slot, &shared.recorder)
                && let Some(i) = recorder
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_mut(slot)
            {
                i.checks = records;
            }
            Some(ex)
        }
        Err(e) => {
            outcome.failures.push(network_failure(op, e));
            None
        }
    }
}

/// Whether a request to a secured operation went without any credentials (no header the
/// run counts as one: `Authorization`, `Cookie`, an API key's).
fn without_credentials(shared: &Shared, op: &Op, exchange: &Exchange) -> bool {
    op.secured
        && !exchange
            .request_headers
            .iter()
            .any(|(name, _)| shared.auth_headers.contains(&name.to_ascii_lowercase()))
}

fn judge(
    shared: &Shared, op: &Op, kind: CaseKind, exchange: &Exchange, follow_up: Option<&Exchange>,
    outcome: &mut OpOutcome,
) -> Vec<CheckRecord> {
    let seen = Seen {
        follow_up,
        ..Seen::new(kind, exchange)
    };
    judge_with(shared, op, &seen, outcome)
}

/// What a check judges: the request's kind, its exchange, and the exchanges around it.
struct Seen<'a> {
    kind: CaseKind,
    exchange: &'a Exchange,
    follow_up: Option<&'a Exchange>,
    before: Option<&'a Exchange>,
    pages: &'a [Exchange],
    /// The request that made what this one works on (a stateful chain's create), for a
    /// replay.
    setup: Option<&'a Exchange>,
}

impl<'a> Seen<'a> {
    fn new(kind: CaseKind, exchange: &'a Exchange) -> Self {
        Seen {
            kind,
            exchange,
            follow_up: None,
            before: None,
            pages: &[],
            setup: None,
        }
    }

    /// The requests that showed a failure, in the order they were sent, with their roles.
    fn steps(&self) -> Vec<(&'static str, &'a Exchange)> {
        let mut steps = Vec::new();
        if let Some(setup) = self.setup {
            steps.push(("setup", setup));
        }
        if let Some(before) = self.before {
            steps.push(("before", before));
        }
        if self.pages.is_empty() {
            steps.push(("request", self.exchange));
        } else {
            steps.extend(self.pages.iter().map(|p| ("page", p)));
        }
        if let Some(follow_up) = self.follow_up {
            steps.push(("follow_up", follow_up));
        }
        steps
    }
}

/// Keeps the replay script of a failure for the cassette, once per id.
fn keep_script(shared: &Shared, op: &Op, check: &str, id: &str, seen: &Seen<'_>) {
    let Some(scripts) = &shared.scripts else {
        return;
    };
    let mut scripts = scripts.lock().unwrap_or_else(PoisonError::into_inner);
    if scripts.iter().any(|s| s.id == id) {
        return;
    }
    let steps = seen
        .steps()
        .into_iter()
        .map(|(role, ex)| ReplayStep {
            role: role.to_string(),
            method: ex.method.clone(),
            uri: ex.url.clone(),
            headers: ex.request_headers.clone(),
            body: ex
                .request_body
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            response_body: Some(String::from_utf8_lossy(&ex.body).into_owned()),
        })
        .collect();
    scripts.push(ReplayScript {
        id: id.to_string(),
        check: check.to_string(),
        operation: op.label.clone(),
        kind: seen.kind.as_str().to_string(),
        steps,
    });
}

/// Runs the enabled checks on what was seen; counts and keeps the failures.
fn judge_with(
    shared: &Shared, op: &Op, seen: &Seen<'_>, outcome: &mut OpOutcome,
) -> Vec<CheckRecord> {
    let exchange = seen.exchange;
    if let Some(observe) = &shared.config.observer {
        observe(&op.label, exchange);
    }
    let mut records = Vec::new();
    let ctx = CheckContext {
        operation: &op.label,
        responses: &op.responses,
        kind: seen.kind,
        exchange,
        follow_up: seen.follow_up,
        positive_statuses: &op.positive_statuses,
        before: seen.before,
        pages: seen.pages,
        path_methods: &op.path_methods,
        without_credentials: without_credentials(shared, op, exchange),
        max_response_time: shared.config.max_response_time,
    };
    for check in &shared.checks {
        match (check.run)(&ctx) {
            Verdict::NotApplicable => {}
            Verdict::Pass => {
                outcome.checks.entry(check.name.into()).or_default().passed += 1;
                records.push(CheckRecord {
                    name: check.name.into(),
                    passed: true,
                    message: None,
                });
            }
            Verdict::Fail(message) => {
                outcome.checks.entry(check.name.into()).or_default().failed += 1;
                records.push(CheckRecord {
                    name: check.name.into(),
                    passed: false,
                    message: Some(message.clone()),
                });
                let status = Some(exchange.status);
                let id = checks::failure_id(check.name, &op.label, status, exchange);
                keep_script(shared, op, check.name, &id, seen);
                outcome.failures.push(Failure {
                    operation: op.label.clone(),
                    check: check.name.into(),
                    message,
                    severity: check.severity,
                    curl: seen.follow_up.map_or_else(
                        || exchange.curl(),
                        |f| format!("{}\n{}", exchange.curl(), f.curl()),
                    ),
                    status,
                    occurrences: 1,
                    id,
                });
            }
        }
    }
    records
}

/// A create operation and the operations on what it creates.
#[derive(Debug, Clone)]
struct Chain {
    create: usize,
    /// Target operation and its parameters filled from the create response:
    /// (param name → JSON pointer into the response body).
    targets: Vec<(usize, Vec<(String, String)>)>,
}

fn find_chains(ops: &[Op]) -> Vec<Chain> {
    let mut chains = Vec::new();
    for create in ops
        .iter()
        .filter(|o| o.method == "POST" && o.skipped.is_none())
    {
        let mut targets: Vec<(usize, Vec<(String, String)>)> = Vec::new();
        for response in create
            .responses
            .entries
            .iter()
            .filter(|r| r.status.starts_with('2'))
        {
            for link in &response.links {
                // A linked operation the runner cannot build requests for (a body that is not
                // JSON, say) is skipped here too, never sent without its body.
                let Some(target) = link
                    .operation_id
                    .as_deref()
                    .and_then(|id| ops.iter().find(|o| o.id == id))
                    .filter(|o| o.skipped.is_none())
                else {
                    continue;
                };
                let params: Vec<(String, String)> = link
                    .parameters
                    .iter()
                    .filter_map(|(name, expr)| {
                        let name = name.rsplit('.').next().unwrap_or(name).to_string();
                        Some((name, expr.strip_prefix("$response.body#")?.to_string()))
                    })
                    .collect();
                if !params.is_empty() && !targets.iter().any(|(t, _)| *t == target.index) {
                    targets.push((target.index, params));
                }
            }
        }
        if targets.is_empty() {
            // Convention: `{collection}/{param}` with the created body's `id`.
            // A create answers 201, or (many APIs) 200.
            let has_id = create
                .responses
                .entries
                .iter()
                .any(|r| r.status == "201" || r.status == "200");
            let prefix = format!("{}/{{", create.template.trim_end_matches('/'));
            for target in ops.iter().filter(|o| o.skipped.is_none()) {
                let Some(rest) = target.template.strip_prefix(&prefix) else {
                    continue;
                };
                let Some(param) = rest.strip_suffix('}') else {
                    continue;
                };
                if has_id && !param.contains(['/', '{', '}']) {
                    targets.push((target.index, vec![(param.to_string(), "/id".to_string())]));
                }
            }
        }
        if !targets.is_empty() {
            // Reads first, then updates, then deletes.
            targets.sort_by_key(|(t, _)| match ops[*t].method.as_str() {
                "GET" => 0,
                "DELETE" => 2,
                _ => 1,
            });
            chains.push(Chain {
                create: create.index,
                targets,
            });
        }
    }
    chains
}

fn with_links(op: &Op, base: Case, created: &Value, params: &[(String, String)]) -> Option<Case> {
    let mut case = base;
    for (name, pointer) in params {
        let value = created.pointer(pointer)?.clone();
        let i = op.params.iter().position(|p| p.name == *name)?;
        case.values.retain(|(j, _)| *j != i);
        case.values.push((i, value));
    }
    // Conditional headers would only turn reads into 304s and writes into 412s.
    case.values.retain(|(j, _)| {
        let name = op.params[*j].name.to_ascii_lowercase();
        !name.starts_with("if-")
    });
    Some(case)
}

async fn run_chain(shared: &Shared, chain: &Chain) -> Vec<(usize, OpOutcome)> {
    let create = &shared.ops[chain.create];
    let mut runner = seeded_runner(shared.config.seed, chain.create, 4);
    let factories: BTreeMap<usize, CaseFactory<'_>> = std::iter::once(chain.create)
        .chain(chain.targets.iter().map(|(t, _)| *t))
        .map(|i| (i, CaseFactory::new(shared, &shared.ops[i])))
        .collect();
    let mut outcomes: BTreeMap<usize, OpOutcome> = BTreeMap::new();
    let rounds = shared.config.max_examples.clamp(1, 3);
    let read = chain
        .targets
        .iter()
        .find(|(t, _)| shared.ops[*t].method == "GET")
        .cloned();
    for _ in 0..rounds {
        let Some(case) = factories
            .get(&chain.create)
            .and_then(|f| f.positive(&mut runner, &shared.auth_headers))
        else {
            continue;
        };
        let out = outcomes.entry(chain.create).or_default();
        let Some(created) =
            send_and_check(shared, create, &case, CaseKind::Positive, true, out).await
        else {
            continue;
        };
        if !(200..300).contains(&created.status) {
            continue;
        }
        // location_on_created
        if created.status == 201
            && shared
                .checks
                .iter()
                .any(|c| c.name == "location_on_created")
            && create.responses.find(201).is_some_and(|r| {
                r.headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case("location"))
            })
        {
            let followed = match created.header("location") {
                Some(location) => {
                    let url = resolve_location(&created.url, location);
                    exchange(shared, "GET", url, auth_headers(shared), None)
                        .await
                        .ok()
                }
                None => None,
            };
            judge(
                shared,
                create,
                CaseKind::LocationFollowed,
                &created,
                followed.as_ref(),
                out,
            );
        }
        let Some(body) = created.json() else {
            continue;
        };
        // ensure_resource_availability, plus the read's own checks.
        let read_case = |runner: &mut TestRunner, target: usize, params: &[(String, String)]| {
            let op = &shared.ops[target];
            factories
                .get(&target)
                .and_then(|f| f.positive(runner, &shared.auth_headers))
                .and_then(|base| with_links(op, base, &body, params))
        };
        let mut first_read: Option<(Case, Exchange)> = None;
        if matches!(created.status, 200 | 201)
            && let Some((target, params)) = &read
            && let Some(case) = read_case(&mut runner, *target, params)
        {
            let op = &shared.ops[*target];
            let out = outcomes.entry(*target).or_default();
            if let Some(ex) = send_and_check(shared, op, &case, CaseKind::Positive, true, out).await
            {
                first_read = Some((case.clone(), ex.clone()));
                judge(
                    shared,
                    create,
                    CaseKind::Created,
                    &created,
                    Some(&ex),
                    outcomes.entry(chain.create).or_default(),
                );
            }
        }
        if let (Some((read_target, _)), Some((read_case_fixed, read_ex))) = (&read, &first_read)
            && (200..300).contains(&read_ex.status)
        {
            let reader = Reader {
                op: &shared.ops[*read_target],
                case: read_case_fixed,
                before: read_ex,
                created: &created,
            };
            let mut cases = Vec::new();
            for (target, params) in &chain.targets {
                if let Some(case) = read_case(&mut runner, *target, params) {
                    cases.push((*target, case));
                }
            }
            conditional_requests(shared, &reader, &cases, &mut outcomes).await;
            cross_tenant(shared, &reader, &cases, &mut outcomes).await;
        }
        for (target, params) in &chain.targets {
            let op = &shared.ops[*target];
            if op.method == "GET" {
                continue;
            }
            let Some(case) = read_case(&mut runner, *target, params) else {
                continue;
            };
            let out = outcomes.entry(*target).or_default();
            // read_after_write: what the resource is just before the update.
            let reader = match (&read, &first_read) {
                (Some((read_target, _)), Some((read_case_fixed, read_ex)))
                    if matches!(op.method.as_str(), "PUT" | "PATCH")
                        && shared.ops[*read_target].template == op.template
                        && (200..300).contains(&read_ex.status)
                        && shared.checks.iter().any(|c| c.name == "read_after_write") =>
                {
                    Some(Reader {
                        op: &shared.ops[*read_target],
                        case: read_case_fixed,
                        before: read_ex,
                        created: &created,
                    })
                }
                _ => None,
            };
            let before = match &reader {
                Some(reader) => reader.read(shared, out).await,
                None => None,
            };
            let Some(ex) = send_and_check(shared, op, &case, CaseKind::Positive, true, out).await
            else {
                continue;
            };
            if let (Some(reader), Some(before)) = (&reader, &before)
                && (200..300).contains(&ex.status)
                && let Some(after) = reader.read(shared, out).await
            {
                let seen = Seen {
                    follow_up: Some(&after),
                    before: Some(before),
                    setup: Some(&created),
                    ..Seen::new(CaseKind::Updated, &ex)
                };
                judge_with(shared, op, &seen, out);
            }
            if op.method == "DELETE"
                && (200..300).contains(&ex.status)
                && let Some((read_target, read_params)) = &read
                && let Some(case) = read_case(&mut runner, *read_target, read_params)
            {
                let read_op = &shared.ops[*read_target];
                let read_out = outcomes.entry(*read_target).or_default();
                if let Some(after) =
                    send_and_check(shared, read_op, &case, CaseKind::Positive, true, read_out).await
                {
                    judge(
                        shared,
                        op,
                        CaseKind::Deleted,
                        &ex,
                        Some(&after),
                        outcomes.entry(*target).or_default(),
                    );
                }
            }
        }
    }
    let total: usize = outcomes.values().map(|o| o.cases).sum();
    let failures: usize = outcomes.values().map(|o| o.failures.len()).sum();
    progress(
        shared,
        &format!(
            "stateful  {} → {} linked operations ({total} requests{})",
            create.label,
            chain.targets.len(),
            if failures == 0 {
                String::new()
            } else {
                format!(", {failures} failures")
            }
        ),
    );
    outcomes.into_iter().collect()
}

/// How a stateful chain reads the resource it created.
struct Reader<'a> {
    op: &'a Op,
    case: &'a Case,
    /// The first successful read.
    before: &'a Exchange,
    /// The create that made the resource.
    created: &'a Exchange,
}

impl Reader<'_> {
    /// Reads the resource again with the main identity.
    async fn read(&self, shared: &Shared, outcome: &mut OpOutcome) -> Option<Exchange> {
        outcome.cases += 1;
        let (url, headers) = build_request(shared, self.op, self.case, true);
        match exchange(shared, "GET", url, headers, None).await {
            Ok(ex) => Some(ex),
            Err(e) => {
                outcome.failures.push(network_failure(self.op, e));
                None
            }
        }
    }
}

/// Sends a case with some headers replaced; `None` (and a network failure) when it fails.
async fn send_with_headers(
    shared: &Shared, op: &Op, case: &Case, with_auth: bool, replace: &[(String, String)],
    outcome: &mut OpOutcome,
) -> Option<Exchange> {
    outcome.cases += 1;
    let (url, mut headers) = build_request(shared, op, case, with_auth);
    headers.retain(|(n, _)| !replace.iter().any(|(r, _)| r.eq_ignore_ascii_case(n)));
    headers.extend(replace.iter().cloned());
    match exchange(shared, &op.method, url, headers, body_bytes(op, case)).await {
        Ok(ex) => Some(ex),
        Err(e) => {
            outcome.failures.push(network_failure(op, e));
            None
        }
    }
}

fn has_header_param(op: &Op, name: &str) -> bool {
    op.params
        .iter()
        .any(|p| p.loc == Loc::Header && p.name.eq_ignore_ascii_case(name))
}

fn documents(op: &Op, status: &str) -> bool {
    op.responses.entries.iter().any(|r| r.status == status)
}

/// The made-up ETag `conditional_requests` sends in `If-Match`.
const STALE_ETAG: &str = "\"stale-etag-0\"";

/// `conditional_requests`: a re-read with `If-None-Match: <ETag>` must answer 304, and a
/// PUT, PATCH or DELETE of the resource with `If-Match: <stale ETag>` must answer 412 and
/// leave it as it was, wherever the operation documents 412 and takes `If-Match` (a declared
/// header parameter, or the resource came with an `ETag`).
async fn conditional_requests(
    shared: &Shared, reader: &Reader<'_>, cases: &[(usize, Case)],
    outcomes: &mut BTreeMap<usize, OpOutcome>,
) {
    if !shared
        .checks
        .iter()
        .any(|c| c.name == "conditional_requests")
    {
        return;
    }
    let etag = reader.before.header("etag").map(str::to_string);
    let read_op = reader.op;
    if let Some(etag) = etag.clone()
        && (documents(read_op, "304") || has_header_param(read_op, "If-None-Match"))
    {
        let out = outcomes.entry(read_op.index).or_default();
        let replace = [("If-None-Match".to_string(), etag)];
        if let Some(ex) = send_with_headers(shared, read_op, reader.case, true, &replace, out).await
        {
            judge(shared, read_op, CaseKind::ConditionalRead, &ex, None, out);
        }
    }
    // Deletes last: a server that ignores If-Match on one deletes the resource.
    let mut writes: Vec<&(usize, Case)> = cases
        .iter()
        .filter(|(t, _)| {
            let op = &shared.ops[*t];
            matches!(op.method.as_str(), "PUT" | "PATCH" | "DELETE")
                && op.template == read_op.template
                && documents(op, "412")
                && (has_header_param(op, "If-Match") || etag.is_some())
        })
        .collect();
    writes.sort_by_key(|(t, _)| shared.ops[*t].method == "DELETE");
    for (target, case) in writes {
        let op = &shared.ops[*target];
        let out = outcomes.entry(*target).or_default();
        let Some(before) = reader.read(shared, out).await else {
            continue;
        };
        let replace = [("If-Match".to_string(), STALE_ETAG.to_string())];
        let Some(ex) = send_with_headers(shared, op, case, true, &replace, out).await else {
            continue;
        };
        let after = reader.read(shared, out).await;
        let seen = Seen {
            follow_up: after.as_ref(),
            before: Some(&before),
            setup: Some(reader.created),
            ..Seen::new(CaseKind::ConditionalUpdate, &ex)
        };
        judge_with(shared, op, &seen, out);
        if after.is_some_and(|a| !(200..300).contains(&a.status)) {
            return;
        }
    }
}

/// `cross_tenant_isolation`: every operation on the created resource, sent with the other
/// identity's credentials, must answer 404, and the owner must still read the resource.
async fn cross_tenant(
    shared: &Shared, reader: &Reader<'_>, cases: &[(usize, Case)],
    outcomes: &mut BTreeMap<usize, OpOutcome>,
) {
    if shared.config.other_headers.is_empty()
        || !shared
            .checks
            .iter()
            .any(|c| c.name == "cross_tenant_isolation")
    {
        return;
    }
    for (target, case) in cases {
        let op = &shared.ops[*target];
        let out = outcomes.entry(*target).or_default();
        let Some(ex) =
            send_with_headers(shared, op, case, false, &shared.config.other_headers, out).await
        else {
            continue;
        };
        let after = reader.read(shared, out).await;
        judge(shared, op, CaseKind::CrossTenant, &ex, after.as_ref(), out);
    }
}

fn auth_headers(shared: &Shared) -> Vec<(String, String)> {
    shared.config.headers.clone()
}

/// Resolves a `Location` header against the URL of the request that got it.
fn resolve_location(request_url: &str, location: &str) -> String {
    match url::Url::parse(request_url).and_then(|base| base.join(location)) {
        Ok(u) => u.to_string(),
        Err(_) => location.to_string(),
    }
}

/// Exposes the documented operations of a spec as `METHOD /template` labels (for listings).
pub fn operation_labels(doc: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(paths) = doc.get("paths").and_then(Value::as_object) {
        for (template, item) in paths {
            let item = deref(doc, item);
            for method in crate::METHODS {
                if item.get(*method).is_some() {
                    out.push(format!("{} {template}", method.to_ascii_uppercase()));
                }
            }
        }
    }
    out
}

/// What re-sending one failure's requests showed.
#[derive(Debug, Clone)]
pub struct Replayed {
    /// The failure's id, as the run that found it printed it.
    pub id: String,
    pub check: String,
    pub operation: String,
    /// The failure's own check now: passed (fixed), failed (with why), or not applicable
    /// (the requests no longer reach what it judges: a resource gone, a non-200 page).
    pub verdict: Verdict,
    /// The re-sent requests as `curl` lines.
    pub curl: String,
}

impl Replayed {
    /// Whether the failure is gone.
    pub fn fixed(&self) -> bool {
        !matches!(self.verdict, Verdict::Fail(_))
    }
}

/// Re-sends each script's requests (`agentplane conform --replay`) to
/// [`Config::base_url`]'s origin, with the credentials of [`Config::headers`] (and for
/// `cross_tenant_isolation`, [`Config::other_headers`]) in place of the cassette's filtered
/// ones, a value a re-sent request answers differently (a new resource's `id`) replaced in
/// the requests after it, and re-runs the checks on them. The report holds what failed
/// now; one [`Replayed`] per script says whether its own failure is fixed.
pub async fn replay_failures(
    doc: &Value, config: Config, scripts: &[ReplayScript],
) -> Result<(Report, Vec<Replayed>), SpecError> {
    let started = Instant::now();
    let (checks, request_doc, ops, client) = prepare(doc, &config)?;
    let shared = Shared {
        request_doc,
        ops,
        checks,
        auth_headers: auth_header_names(doc),
        config,
        client,
        done: AtomicUsize::new(0),
        total: scripts.len(),
        phase: AtomicUsize::new(0),
        recorder: None,
        recorded: AtomicUsize::new(0),
        scripts: None,
    };
    let mut outcomes: BTreeMap<usize, OpOutcome> = BTreeMap::new();
    let mut replayed = Vec::new();
    for script in scripts {
        let Some(op) = shared.ops.iter().find(|o| o.label == script.operation) else {
            return Err(SpecError::invalid(
                "",
                "",
                format!(
                    "the failure {} is on {}, which the spec does not document",
                    script.id, script.operation
                ),
            ));
        };
        let mut kind = CaseKind::parse(&script.kind).unwrap_or(CaseKind::Positive);
        let out = outcomes.entry(op.index).or_default();
        let mut sent = resend(&shared, script, kind, out).await;
        let mut pages: Vec<Exchange> = sent
            .iter()
            .filter(|(r, _)| r == "page")
            .map(|(_, e)| e.clone())
            .collect();
        if matches!(kind, CaseKind::PageWalk | CaseKind::PartialWalk)
            && let Some((walked, complete)) = rewalk(&shared, op, &pages, out).await
        {
            sent.retain(|(r, _)| r != "page");
            sent.extend(walked.iter().map(|p| ("page".to_string(), p.clone())));
            pages = walked;
            kind = if complete {
                CaseKind::PageWalk
            } else {
                CaseKind::PartialWalk
            };
        }
        let by_role = |role: &str| sent.iter().find(|(r, _)| r == role).map(|(_, e)| e);
        let Some(exchange) = by_role("request").or(pages.last()) else {
            replayed.push(Replayed {
                id: script.id.clone(),
                check: script.check.clone(),
                operation: script.operation.clone(),
                verdict: Verdict::Fail("the request could not be sent".into()),
                curl: String::new(),
            });
            continue;
        };
        let seen = Seen {
            follow_up: by_role("follow_up"),
            before: by_role("before"),
            pages: &pages,
            setup: by_role("setup"),
            ..Seen::new(kind, exchange)
        };
        let records = judge_with(&shared, op, &seen, out);
        let verdict =
            records
                .iter()
                .find(|r| r.name == script.check)
                .map_or(Verdict::NotApplicable, |r| match &r.message {
                    Some(m) if !r.passed => Verdict::Fail(m.clone()),
                    _ => Verdict::Pass,
                });
        replayed.push(Replayed {
            id: script.id.clone(),
            check: script.check.clone(),
            operation: script.operation.clone(),
            verdict,
            curl: sent
                .iter()
                .map(|(_, e)| e.curl())
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    let mut report = Report {
        seed: shared.config.seed,
        ..Report::default()
    };
    for (index, outcome) in outcomes {
        let op = &shared.ops[index];
        report.cases += outcome.cases;
        for f in outcome.failures {
            group_failure(&mut report.failures, f);
        }
        report.operations.push(OperationReport {
            operation: op.label.clone(),
            operation_id: op.id.clone(),
            cases: outcome.cases,
            skipped: None,
            checks: outcome.checks,
        });
    }
    report.elapsed = started.elapsed();
    Ok((report, replayed))
}

/// `agentplane conform --replay <id|cassette>`: `wanted` is a cassette's path (every
/// failure in it) or a failure id (read from `cassette`). Prints one line per failure
/// (`fixed` or `still fails`) and the summary of what was re-sent; exits 0 when every
/// replayed failure is fixed, 1 when one is not, 2 when nothing can be replayed.
pub async fn replay_command(
    doc: &Value, config: Config, wanted: &str, cassette: Option<&std::path::Path>,
) -> u8 {
    use crate::conform::{EXIT_FAILED, EXIT_PASSED, EXIT_USAGE};
    let usage = |message: String| {
        eprintln!("agentplane conform: {message}");
        EXIT_USAGE
    };
    let as_path = std::path::Path::new(wanted);
    let (path, id) = if as_path.is_file() {
        (as_path, None)
    } else {
        match cassette {
            Some(path) => (path, Some(wanted)),
            None => {
                return usage(format!(
                    "--replay {wanted}: not a file, so a failure id; give the run's --cassette to read it from"
                ));
            }
        }
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return usage(format!("cannot read {}: {e}", path.display())),
    };
    let mut scripts = match crate::cassette::parse_replay(&text) {
        Ok(s) => s,
        Err(e) => return usage(format!("{}: {e}", path.display())),
    };
    if let Some(id) = id {
        scripts.retain(|s| s.id == id);
        if scripts.is_empty() {
            return usage(format!(
                "no failure {id} in {} (ids are printed beside each failure)",
                path.display()
            ));
        }
    } else if scripts.is_empty() {
        eprintln!(
            "agentplane conform: {} records no failures to replay",
            path.display()
        );
        return EXIT_PASSED;
    }
    let (report, replayed) = match replay_failures(doc, config, &scripts).await {
        Ok(r) => r,
        Err(e) => return usage(e.to_string()),
    };
    for r in &replayed {
        let state = match &r.verdict {
            Verdict::Pass => "fixed".to_string(),
            Verdict::NotApplicable => "fixed (the check no longer applies)".to_string(),
            Verdict::Fail(why) => format!("still fails: {why}"),
        };
        println!(
            "{} {} [{}] {state}\n   {}",
            r.id,
            r.operation,
            r.check,
            r.curl.replace('\n', "\n   ")
        );
    }
    println!("\n{}", crate::report::summary(&report));
    if replayed.iter().all(Replayed::fixed) {
        EXIT_PASSED
    } else {
        EXIT_FAILED
    }
}

/// A replayed walk that went by cursor or `Link` goes by what the server answers now, not
/// by the recorded cursors: from the first page, it follows each page's `Link` or cursor
/// (put in the cursor parameter the recorded walk used) to the end, or for at most
/// [`MAX_WALKED_PAGES`] pages. `None` for a walk by page numbers or offsets, which is
/// re-sent as recorded; else the pages and whether the walk reached the end.
async fn rewalk(
    shared: &Shared, op: &Op, recorded: &[Exchange], outcome: &mut OpOutcome,
) -> Option<(Vec<Exchange>, bool)> {
    let first = recorded.first()?.clone();
    let cursor_param = recorded.get(1).and_then(|p| {
        url::Url::parse(&p.url)
            .ok()?
            .query_pairs()
            .find_map(|(k, _)| CURSOR_PARAMS.contains(&k.as_ref()).then(|| k.into_owned()))
    });
    let page = checks::list_page(&first)?;
    if page.next_link.is_none() && cursor_param.is_none() {
        return None;
    }
    let mut pages = vec![first];
    let mut complete = false;
    while (pages.len() as u64) < MAX_WALKED_PAGES {
        let Some(last) = pages.last().and_then(|p| Some((p, checks::list_page(p)?))) else {
            break;
        };
        let (last, this) = last;
        if !this.has_next() {
            complete = true;
            break;
        }
        let url = match (&this.next_link, &this.next_cursor, &cursor_param) {
            (Some(link), _, _) => resolve_location(&last.url, link),
            (None, Some(cursor), Some(name)) => {
                let Ok(mut url) = url::Url::parse(&pages[0].url) else {
                    break;
                };
                let pairs: Vec<(String, String)> = url
                    .query_pairs()
                    .filter(|(k, _)| k != name.as_str())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                url.query_pairs_mut()
                    .clear()
                    .extend_pairs(pairs)
                    .append_pair(name, cursor);
                url.to_string()
            }
            _ => break,
        };
        outcome.cases += 1;
        let headers = pages[0].request_headers.clone();
        match exchange(shared, "GET", url, headers, None).await {
            Ok(ex) if ex.status == 200 => pages.push(ex),
            Ok(_) => break,
            Err(e) => {
                outcome.failures.push(network_failure(op, e));
                break;
            }
        }
    }
    if !complete
        && pages
            .last()
            .and_then(checks::list_page)
            .is_some_and(|p| !p.has_next())
    {
        complete = true;
    }
    Some((pages, complete))
}

/// Re-sends a script's steps in order; each sent one with its role.
async fn resend(
    shared: &Shared, script: &ReplayScript, kind: CaseKind, outcome: &mut OpOutcome,
) -> Vec<(String, Exchange)> {
    let base = url::Url::parse(&shared.config.base_url).ok();
    let mut renamed: Vec<(String, String)> = Vec::new();
    let mut sent = Vec::new();
    for step in &script.steps {
        let credentials = if kind == CaseKind::CrossTenant && step.role == "request" {
            &shared.config.other_headers
        } else {
            &shared.config.headers
        };
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in &step.headers {
            if value != crate::cassette::REDACTED {
                headers.push((name.clone(), value.clone()));
            } else if let Some((_, v)) = credentials
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                headers.push((name.clone(), v.clone()));
            }
        }
        for (name, value) in credentials {
            if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name))
                && shared.auth_headers.contains(&name.to_ascii_lowercase())
                && step
                    .headers
                    .iter()
                    .any(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                headers.push((name.clone(), value.clone()));
            }
        }
        let rename = |text: &str| {
            renamed
                .iter()
                .fold(text.to_string(), |t, (old, new)| t.replace(old, new))
        };
        let mut uri = rename(&step.uri);
        if let (Some(base), Ok(mut parsed)) = (&base, url::Url::parse(&uri)) {
            let _ = parsed.set_scheme(base.scheme());
            let _ = parsed.set_host(base.host_str());
            let _ = parsed.set_port(base.port());
            uri = parsed.to_string();
        }
        let body = step.body.as_deref().map(|b| rename(b).into_bytes());
        outcome.cases += 1;
        let (result, _) = exchange_recorded(shared, &step.method, uri, headers, body).await;
        let Ok(ex) = result else {
            break;
        };
        if let (Some(Value::Object(old)), Some(Value::Object(new))) = (
            step.response_body
                .as_deref()
                .and_then(|b| serde_json::from_str::<Value>(b).ok()),
            ex.json(),
        ) {
            for (key, was) in &old {
                let text = |v: &Value| match v {
                    Value::String(_) | Value::Number(_) => scalar_text(v),
                    _ => None,
                };
                let (Some(was), Some(now)) = (
                    text(was).filter(|t| t.len() >= 4),
                    new.get(key).and_then(text),
                ) else {
                    continue;
                };
                if was != now && !renamed.iter().any(|(o, _)| *o == was) {
                    renamed.push((was, now));
                }
            }
        }
        sent.push((step.role.clone(), ex));
    }
    sent
}

#[cfg(test)]
mod progress_tests {
    #[test]
    fn the_bar_fills_with_the_work_done() {
        assert_eq!(super::progress_bar(0, 4), "[....................]");
        assert_eq!(super::progress_bar(1, 4), "[#####...............]");
        assert_eq!(super::progress_bar(4, 4), "[####################]");
        assert_eq!(super::progress_bar(3, 0), "[####################]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_retry_after_date_is_read_as_the_time_until_it() {
        assert_eq!(
            httpdate_in("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let later = crate::cassette::timestamp(SystemTime::now() + Duration::from_secs(3600));
        // 2026-12-04T15:00:00.000000+00:00 → Fri, 04 Dec 2026 15:00:00 GMT
        let (date, time) = later.split_once('T').expect("a timestamp");
        let ymd: Vec<&str> = date.split('-').collect();
        let months = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = months[ymd[1].parse::<usize>().expect("month") - 1];
        let imf = format!("Xxx, {} {month} {} {} GMT", ymd[2], ymd[0], &time[..8]);
        let wait = httpdate_in(&imf).expect("parses");
        assert!(
            wait > Duration::from_secs(3590) && wait <= Duration::from_secs(3600),
            "{wait:?}"
        );
        assert_eq!(httpdate_in("soon"), None);
    }

    #[test]
    fn an_endless_event_stream_is_cut_after_its_complete_events() {
        let body = b": keep-alive\n\nevent: log\ndata: {\"n\": 1}\n\ndata: 2\r\n\r\ndata: {\"par";
        let (end, events) = complete_events(body);
        assert_eq!(events, 2, "comments are not events");
        assert!(body[..end].ends_with(b"data: 2\r\n\r\n"));
        assert_eq!(complete_events(b"data: half"), (0, 0));
    }
    #[test]
    fn status_patterns_and_spread() {
        assert!(checks::status_matches("2xx", 204));
        assert!(checks::status_matches("404", 404));
        assert!(!checks::status_matches("4XX", 500));
        assert_eq!(spread(&[1, 2, 3, 4, 5, 6], 3), vec![1, 3, 5]);
        assert_eq!(
            resolve_location("http://127.0.0.1:1/v1/a", "/v1/a/x"),
            "http://127.0.0.1:1/v1/a/x"
        );
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn complexity_orders_simpler_values_first() {
        use serde_json::json;
        assert!(complexity(&json!(50)) < complexity(&json!(1000)));
        assert!(complexity(&json!(-3)) > complexity(&json!(0)));
        assert!(complexity(&json!("abc")) < complexity(&json!("abcd")));
        assert!(complexity(&json!({"a": [1]})) < complexity(&json!({"a": [1, 2]})));
        let case = |n: i64| Case {
            values: vec![(0, json!(n))],
            body: Some(json!({"text": "x"})),
            raw: None,
        };
        assert!(case_complexity(&case(50)) < case_complexity(&case(51)));
    }

    #[test]
    fn a_body_of_another_media_type_is_raw_when_its_schema_is_a_string() {
        let doc = json!({});
        let raw = |content: Value| {
            let content = content.as_object().cloned().expect("a content map");
            body_media(&doc, &content).map(|(_, _, encoding)| encoding)
        };
        let octets = |t: &str| BodyEncoding::Raw {
            media_type: t.to_string(),
        };
        assert_eq!(
            raw(
                json!({"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}})
            ),
            Some(octets("application/octet-stream"))
        );
        assert_eq!(
            raw(json!({"*/*": {}})),
            Some(octets("application/octet-stream"))
        );
        assert_eq!(
            raw(json!({"text/*": {"schema": {"type": ["string", "null"]}}})),
            Some(octets("text/plain"))
        );
        assert_eq!(
            raw(json!({"application/xml": {"schema": {"type": "object"}}})),
            None
        );
        assert_eq!(raw(json!({"image/*": {}})), None);
        // JSON, a form and multipart come first.
        assert_eq!(
            raw(json!({"text/plain": {}, "application/json": {}})),
            Some(BodyEncoding::Json)
        );
    }

    #[test]
    fn broken_bodies_are_broken_in_the_operations_own_media_type() {
        let multipart = multipart_bytes(&json!({"title": "a", "tags": ["x", "y"]}), &[]);
        let parts = crate::validate::multipart_parts(
            &format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
            &multipart,
        )
        .expect("the valid form parses");
        assert_eq!(parts.len(), 3);
        // Cut in half, under a wrong boundary or none, it does not.
        for (content_type, body) in [
            (
                format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
                &multipart[..multipart.len() / 2],
            ),
            (
                format!("multipart/form-data; boundary={WRONG_MULTIPART_BOUNDARY}"),
                &multipart[..],
            ),
            ("multipart/form-data".to_string(), &multipart[..]),
            (
                format!("multipart/form-data; boundary={MULTIPART_BOUNDARY}"),
                format!("--{MULTIPART_BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{MULTIPART_BOUNDARY}--\r\n")
                    .as_bytes(),
            ),
        ] {
            assert!(
                crate::validate::multipart_parts(&content_type, body).is_err(),
                "{content_type}: {}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(!MULTIPART_BOUNDARY.starts_with(WRONG_MULTIPART_BOUNDARY));
    }
}
