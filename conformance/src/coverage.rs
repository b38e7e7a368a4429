//! How much of a spec a conformance run exercised: per operation, the documented statuses
//! observed (and never observed), the parameters and body properties sent, the response
//! properties seen and the links followed; totals per tag and overall.
//!
//! Checks say whether what was sent was answered correctly; coverage says what was never
//! sent or never answered, which no check can see. The runner hands every judged exchange
//! to [`Coverage::observe`] (through [`crate::runner::Config::observer`]); the collector
//! keeps sets, not exchanges, and only the paths the spec documents, and reads a response
//! body for properties only for the first few (16) responses of each status (a
//! request body until every documented property was sent), so its cost stays within a
//! run's noise. [`Coverage::finish`] aggregates them into a
//! [`CoverageReport`], rendered as JSON ([`CoverageReport::to_json`]) or as a static HTML
//! page that needs no network and no JavaScript ([`CoverageReport::to_html`]).
//!
//! The number `--min-coverage` judges is [`Totals::status_percent`]: documented
//! (operation, status) pairs observed over all documented pairs. A status key `4XX` is
//! observed by any 4xx the spec does not list exactly, `default` by any status it does not
//! list at all, as [`crate::response::Responses::find`] matches them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};

use serde_json::{Value, json};

use crate::report::xml_escape;
use crate::response::Exchange;
use crate::router::{parse_query, percent_decode};
use crate::runner::Report;
use crate::spec::deref;

/// How deep (in properties) body and response property paths are listed.
const MAX_DEPTH: usize = 4;
/// Documented property paths kept per operation and direction (a guard on huge schemas).
const MAX_PATHS: usize = 2_000;
/// Responses of one status of one operation whose bodies are read for properties.
const RESPONSE_SAMPLES: usize = 16;
/// Link values waiting for their target request; beyond this, new ones are dropped.
const MAX_PENDING_LINK_VALUES: usize = 50_000;

/// A documented link of a response: where it leads and where its parameters come from.
#[derive(Debug, Clone)]
struct LinkDoc {
    /// The documented status key (`201`).
    status: String,
    name: String,
    /// The target's operationId.
    target: Option<String>,
    /// Target parameter name → runtime expression (`$response.body#/id`).
    parameters: Vec<(String, String)>,
}

/// What the spec documents for one operation.
#[derive(Debug)]
struct OpDoc {
    label: String,
    operation_id: String,
    method: String,
    tags: Vec<String>,
    /// The template's path segments.
    segments: Vec<String>,
    /// Documented status keys, upper case (`200`, `4XX`, `DEFAULT`), in spec order.
    statuses: Vec<String>,
    /// Parameters as (`in`, name).
    params: Vec<(String, String)>,
    /// The query parameter whose object's properties are sent as query keys of their own
    /// (`style: form`, `explode: true`).
    exploded_object: Option<usize>,
    body_properties: BTreeSet<String>,
    response_properties: BTreeSet<String>,
    links: Vec<LinkDoc>,
}

/// What a run showed of one operation.
#[derive(Debug, Default)]
struct OpSeen {
    observed: bool,
    statuses: BTreeMap<u16, usize>,
    params: BTreeSet<usize>,
    body_properties: BTreeSet<String>,
    response_properties: BTreeSet<String>,
    links_followed: BTreeSet<usize>,
}

#[derive(Default)]
struct State {
    seen: Vec<OpSeen>,
    /// (target operationId, parameter, value) → (source operation, link index).
    pending: HashMap<(String, String, String), (usize, usize)>,
}

/// The collector: built from the spec before a run, fed every judged exchange.
pub struct Coverage {
    ops: Vec<OpDoc>,
    by_label: HashMap<String, usize>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Coverage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coverage")
            .field("operations", &self.ops.len())
            .finish_non_exhaustive()
    }
}

impl Coverage {
    /// Reads what `doc` (bundled, 3.1-normalized) documents, operation by operation.
    pub fn new(doc: &Value) -> Self {
        let mut ops = Vec::new();
        let paths = doc.get("paths").and_then(Value::as_object);
        for (template, item) in paths.into_iter().flatten() {
            let item = deref(doc, item);
            for method in crate::METHODS {
                let Some(op) = item.get(*method) else {
                    continue;
                };
                ops.push(op_doc(doc, template, item, method, op));
            }
        }
        let by_label = ops
            .iter()
            .enumerate()
            .map(|(i, o)| (o.label.clone(), i))
            .collect();
        let seen = ops.iter().map(|_| OpSeen::default()).collect();
        Self {
            ops,
            by_label,
            state: Mutex::new(State {
                seen,
                pending: HashMap::new(),
            }),
        }
    }

    /// Records one exchange the runner judged for `operation` (`METHOD /template`). An
    /// exchange with another method (a probe of an undocumented method) is not the
    /// operation's and is ignored.
    pub fn observe(&self, operation: &str, exchange: &Exchange) {
        let Some(&index) = self.by_label.get(operation) else {
            return;
        };
        let op = &self.ops[index];
        if !exchange.method.eq_ignore_ascii_case(&op.method) {
            return;
        }
        let status_key = status_key(&op.statuses, exchange.status);
        let links_here = op
            .links
            .iter()
            .any(|l| Some(l.status.as_str()) == status_key);
        // Bodies are parsed only while they can still show something new: a request body
        // until every documented property was sent, a response body for the first
        // responses of each status (and always where a link takes a value from it).
        let (body_done, response_samples) = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let seen = &state.seen[index];
            (
                seen.body_properties.len() == op.body_properties.len(),
                seen.statuses.get(&exchange.status).copied().unwrap_or(0),
            )
        };
        // Everything parsed before the lock is taken again.
        let values = sent_values(op, exchange);
        let mut body_sent = BTreeSet::new();
        if let Some(body) = exchange.request_body.as_deref().filter(|_| !body_done) {
            let content_type = request_header(exchange, "content-type").unwrap_or_default();
            body_paths(content_type, body, &op.body_properties, &mut body_sent);
        }
        let mut response_seen = BTreeSet::new();
        let sample = !op.response_properties.is_empty() && response_samples < RESPONSE_SAMPLES;
        let response_json = if sample || links_here {
            serde_json::from_slice::<Value>(&exchange.body).ok()
        } else {
            None
        };
        if let Some(json) = response_json.as_ref().filter(|_| sample) {
            json_paths(json, "", 0, &op.response_properties, &mut response_seen);
        }
        let mut links: Vec<(usize, String, String, String)> = Vec::new();
        for (i, link) in op.links.iter().enumerate() {
            if Some(link.status.as_str()) != status_key {
                continue;
            }
            let target = link.target.clone().unwrap_or_default();
            for (name, expr) in &link.parameters {
                if let Some(value) = link_value(expr, response_json.as_ref(), exchange) {
                    links.push((i, target.clone(), name.clone(), value));
                }
            }
        }

        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State { seen, pending } = &mut *state;
        let own = &mut seen[index];
        own.observed = true;
        *own.statuses.entry(exchange.status).or_default() += 1;
        own.params.extend(values.iter().map(|(p, _)| *p));
        own.body_properties.extend(body_sent);
        own.response_properties.extend(response_seen);
        let mut followed = Vec::new();
        for (p, value) in &values {
            let key = (
                op.operation_id.clone(),
                op.params[*p].1.clone(),
                value.clone(),
            );
            if let Some(source) = pending.get(&key) {
                followed.push(*source);
            }
        }
        for (source, link) in followed {
            seen[source].links_followed.insert(link);
        }
        for (link, target, name, value) in links {
            if pending.len() < MAX_PENDING_LINK_VALUES {
                pending
                    .entry((target, name, value))
                    .or_insert((index, link));
            }
        }
    }

    /// The coverage of the run: `report` adds each operation's request count and why it
    /// was skipped, when it was.
    pub fn finish(&self, report: &Report) -> CoverageReport {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let mut operations = Vec::new();
        for (op, seen) in self.ops.iter().zip(&state.seen) {
            let ran = report.operations.iter().find(|o| o.operation == op.label);
            let mut statuses = Vec::new();
            for key in &op.statuses {
                let count: usize = seen
                    .statuses
                    .iter()
                    .filter(|(s, _)| status_key(&op.statuses, **s) == Some(key.as_str()))
                    .map(|(_, n)| *n)
                    .sum();
                statuses.push((key.clone(), count));
            }
            let undocumented = seen
                .statuses
                .keys()
                .filter(|s| status_key(&op.statuses, **s).is_none())
                .copied()
                .collect();
            let params = op
                .params
                .iter()
                .enumerate()
                .map(|(i, (loc, name))| (format!("{loc}:{name}"), seen.params.contains(&i)))
                .collect();
            let links = op
                .links
                .iter()
                .enumerate()
                .map(|(i, l)| LinkCoverage {
                    status: l.status.clone(),
                    name: l.name.clone(),
                    target: l.target.clone().unwrap_or_default(),
                    followed: seen.links_followed.contains(&i),
                })
                .collect();
            operations.push(OperationCoverage {
                operation: op.label.clone(),
                operation_id: op.operation_id.clone(),
                tags: op.tags.clone(),
                requests: ran.map_or(0, |r| r.cases),
                skipped: ran.and_then(|r| r.skipped.clone()),
                exercised: seen.observed,
                statuses,
                undocumented_statuses: undocumented,
                params,
                body_properties: marks(&op.body_properties, &seen.body_properties),
                response_properties: marks(&op.response_properties, &seen.response_properties),
                links,
            });
        }
        CoverageReport::new(operations)
    }
}

fn marks(documented: &BTreeSet<String>, seen: &BTreeSet<String>) -> Vec<(String, bool)> {
    documented
        .iter()
        .map(|p| (p.clone(), seen.contains(p)))
        .collect()
}

fn op_doc(doc: &Value, template: &str, item: &Value, method: &str, op: &Value) -> OpDoc {
    let label = format!("{} {template}", method.to_ascii_uppercase());
    let operation_id = op
        .get("operationId")
        .and_then(Value::as_str)
        .map_or_else(|| label.clone(), str::to_string);
    let tags: Vec<String> = op
        .get("tags")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let mut params: Vec<(String, String)> = Vec::new();
    let mut exploded_object = None;
    let own = op.get("parameters").and_then(Value::as_array);
    let shared = item.get("parameters").and_then(Value::as_array);
    for raw in own
        .into_iter()
        .flatten()
        .chain(shared.into_iter().flatten())
    {
        let p = deref(doc, raw);
        let (Some(name), Some(loc)) = (
            p.get("name").and_then(Value::as_str),
            p.get("in").and_then(Value::as_str),
        ) else {
            continue;
        };
        let key = (loc.to_string(), name.to_string());
        if params.contains(&key) {
            continue;
        }
        let schema = p.get("schema").map_or(&Value::Null, |s| deref(doc, s));
        let style = p.get("style").and_then(Value::as_str).unwrap_or("form");
        let explode = p
            .get("explode")
            .and_then(Value::as_bool)
            .unwrap_or(style == "form");
        let object = schema.get("type").and_then(Value::as_str) == Some("object")
            || schema.get("properties").is_some();
        if loc == "query" && style == "form" && explode && object {
            exploded_object.get_or_insert(params.len());
        }
        params.push(key);
    }
    let mut body_properties = BTreeSet::new();
    if let Some(content) = op
        .get("requestBody")
        .map(|rb| deref(doc, rb))
        .and_then(|rb| rb.get("content"))
        .and_then(Value::as_object)
    {
        for media in content.values() {
            if let Some(schema) = media.get("schema") {
                schema_paths(doc, schema, "", 0, "readOnly", &mut body_properties);
            }
        }
    }
    let mut statuses = Vec::new();
    let mut response_properties = BTreeSet::new();
    let mut links = Vec::new();
    for (status, response) in op
        .get("responses")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let status = status.to_ascii_uppercase();
        let response = deref(doc, response);
        for media in response
            .get("content")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(mt, _)| crate::response::is_json(mt))
            .map(|(_, m)| m)
        {
            if let Some(schema) = media.get("schema") {
                schema_paths(doc, schema, "", 0, "writeOnly", &mut response_properties);
            }
        }
        for (name, link) in response
            .get("links")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let link = deref(doc, link);
            let parameters = link
                .get("parameters")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| {
                    let name = k.rsplit('.').next().unwrap_or(k);
                    Some((name.to_string(), v.as_str()?.to_string()))
                })
                .collect();
            links.push(LinkDoc {
                status: status.clone(),
                name: name.clone(),
                target: link
                    .get("operationId")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                parameters,
            });
        }
        statuses.push(status);
    }
    OpDoc {
        label,
        operation_id,
        method: method.to_ascii_uppercase(),
        tags,
        segments: template
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        statuses,
        params,
        exploded_object,
        body_properties,
        response_properties,
        links,
    }
}

/// Adds the property paths a schema documents under `prefix` (`a.b`, `items[].id`),
/// leaving out properties flagged `skip` (`readOnly` in requests, `writeOnly` in responses).
fn schema_paths(
    doc: &Value, schema: &Value, prefix: &str, depth: usize, skip: &str, out: &mut BTreeSet<String>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    let schema = deref(doc, schema);
    for key in ["allOf", "oneOf", "anyOf"] {
        for branch in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            schema_paths(doc, branch, prefix, depth, skip, out);
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let flagged = |s: &Value| s.get(skip).and_then(Value::as_bool) == Some(true);
            if flagged(prop) || flagged(deref(doc, prop)) {
                continue;
            }
            if out.len() >= MAX_PATHS {
                return;
            }
            let path = join(prefix, name);
            out.insert(path.clone());
            schema_paths(doc, prop, &path, depth + 1, skip, out);
        }
    }
    if let Some(items) = schema.get("items").filter(|i| i.is_object()) {
        schema_paths(doc, items, &format!("{prefix}[]"), depth, skip, out);
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Adds the documented paths `value` holds under `prefix`.
fn json_paths(
    value: &Value, prefix: &str, depth: usize, documented: &BTreeSet<String>,
    out: &mut BTreeSet<String>,
) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        Value::Object(map) => {
            for (name, v) in map {
                let path = join(prefix, name);
                if documented.contains(&path) {
                    json_paths(v, &path, depth + 1, documented, out);
                    out.insert(path);
                }
            }
        }
        Value::Array(items) => {
            let path = format!("{prefix}[]");
            for item in items {
                json_paths(item, &path, depth, documented, out);
            }
        }
        _ => {}
    }
}

/// The documented body properties a request body holds (JSON or a form).
fn body_paths(
    content_type: &str, body: &[u8], documented: &BTreeSet<String>, out: &mut BTreeSet<String>,
) {
    if documented.is_empty() {
        return;
    }
    let essence = content_type.to_ascii_lowercase();
    if essence.starts_with("application/x-www-form-urlencoded") {
        for (name, _) in parse_query(&String::from_utf8_lossy(body)) {
            if documented.contains(&name) {
                out.insert(name);
            }
        }
    } else if essence.starts_with("multipart/form-data") {
        let text = String::from_utf8_lossy(body);
        for part in text.split("name=\"").skip(1) {
            if let Some((name, _)) = part.split_once('"')
                && documented.contains(name)
            {
                out.insert(name.to_string());
            }
        }
    } else if let Ok(json) = serde_json::from_slice::<Value>(body) {
        json_paths(&json, "", 0, documented, out);
    }
}

fn request_header<'a>(exchange: &'a Exchange, name: &str) -> Option<&'a str> {
    exchange
        .request_headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The documented parameters a request carried, with their values (as text).
fn sent_values(op: &OpDoc, exchange: &Exchange) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let (path, query) = match url::Url::parse(&exchange.url) {
        Ok(u) => (u.path().to_string(), u.query().unwrap_or("").to_string()),
        Err(_) => return out,
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let skip = segments.len().saturating_sub(op.segments.len());
    for (template, actual) in op.segments.iter().zip(segments.iter().skip(skip)) {
        if let Some(name) = template.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            push_param(op, "path", name, percent_decode(actual), &mut out);
        }
    }
    // Keys no parameter is named after belong to an exploded object parameter.
    for (key, value) in parse_query(&query) {
        let name = key.split_once('[').map_or(key.as_str(), |(n, _)| n);
        if op.params.iter().any(|(l, n)| l == "query" && n == name) {
            push_param(op, "query", name, value, &mut out);
        } else if let Some(i) = op.exploded_object {
            out.push((i, value));
        }
    }
    for (name, value) in &exchange.request_headers {
        if name.eq_ignore_ascii_case("cookie") {
            for pair in value.split(';') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                push_param(op, "cookie", k.trim(), v.trim().to_string(), &mut out);
            }
        } else if let Some(i) = op
            .params
            .iter()
            .position(|(l, n)| l == "header" && n.eq_ignore_ascii_case(name))
        {
            out.push((i, value.clone()));
        }
    }
    out
}

fn push_param(op: &OpDoc, loc: &str, name: &str, value: String, out: &mut Vec<(usize, String)>) {
    if let Some(i) = op.params.iter().position(|(l, n)| l == loc && n == name) {
        out.push((i, value));
    }
}

/// The value a link's runtime expression takes from a response, as text.
fn link_value(expr: &str, body: Option<&Value>, exchange: &Exchange) -> Option<String> {
    if let Some(pointer) = expr.strip_prefix("$response.body#") {
        return match body?.pointer(pointer)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        };
    }
    let header = expr.strip_prefix("$response.header.")?;
    exchange.header(header).map(str::to_string)
}

/// The documented status key a status falls under: exact, then `4XX`, then `DEFAULT`.
fn status_key(documented: &[String], status: u16) -> Option<&str> {
    let exact = status.to_string();
    let range = format!("{}XX", status / 100);
    [exact.as_str(), range.as_str(), "DEFAULT"]
        .into_iter()
        .find_map(|k| documented.iter().find(|d| *d == k))
        .map(String::as_str)
}

/// Whether each documented link was followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkCoverage {
    pub status: String,
    pub name: String,
    /// The target operationId.
    pub target: String,
    pub followed: bool,
}

/// The coverage of one operation.
#[derive(Debug, Clone)]
pub struct OperationCoverage {
    /// `METHOD /path/template`.
    pub operation: String,
    pub operation_id: String,
    pub tags: Vec<String>,
    /// Requests the run sent for it.
    pub requests: usize,
    /// Why the run did not test it, when it did not.
    pub skipped: Option<String>,
    /// At least one of its requests was answered.
    pub exercised: bool,
    /// Each documented status key and how many responses fell under it.
    pub statuses: Vec<(String, usize)>,
    /// Statuses answered that the operation does not document.
    pub undocumented_statuses: Vec<u16>,
    /// Each parameter (`query:page`) and whether it was sent.
    pub params: Vec<(String, bool)>,
    /// Each documented request body property path and whether it was sent.
    pub body_properties: Vec<(String, bool)>,
    /// Each documented response property path and whether a response held it.
    pub response_properties: Vec<(String, bool)>,
    pub links: Vec<LinkCoverage>,
}

/// Covered out of documented, for each kind of thing counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub operations: usize,
    pub operations_exercised: usize,
    pub statuses: usize,
    pub statuses_observed: usize,
    pub params: usize,
    pub params_sent: usize,
    pub body_properties: usize,
    pub body_properties_sent: usize,
    pub response_properties: usize,
    pub response_properties_seen: usize,
    pub links: usize,
    pub links_followed: usize,
}

fn count(marks: &[(String, bool)]) -> (usize, usize) {
    (marks.len(), marks.iter().filter(|(_, b)| *b).count())
}

fn percent(part: usize, whole: usize) -> f64 {
    if whole == 0 {
        100.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

impl Totals {
    fn add(&mut self, op: &OperationCoverage) {
        self.operations += 1;
        self.operations_exercised += usize::from(op.exercised);
        self.statuses += op.statuses.len();
        self.statuses_observed += op.statuses.iter().filter(|(_, n)| *n > 0).count();
        let (d, s) = count(&op.params);
        self.params += d;
        self.params_sent += s;
        let (d, s) = count(&op.body_properties);
        self.body_properties += d;
        self.body_properties_sent += s;
        let (d, s) = count(&op.response_properties);
        self.response_properties += d;
        self.response_properties_seen += s;
        self.links += op.links.len();
        self.links_followed += op.links.iter().filter(|l| l.followed).count();
    }

    /// Documented (operation, status) pairs observed, in percent: what `--min-coverage`
    /// judges. 100 when nothing is documented.
    pub fn status_percent(&self) -> f64 {
        percent(self.statuses_observed, self.statuses)
    }

    /// Operations exercised, in percent.
    pub fn operation_percent(&self) -> f64 {
        percent(self.operations_exercised, self.operations)
    }

    fn to_json(self) -> Value {
        let pair = |covered: usize, documented: usize| {
            json!({
                "documented": documented,
                "covered": covered,
                "percent": round(percent(covered, documented)),
            })
        };
        json!({
            "operations": pair(self.operations_exercised, self.operations),
            "statuses": pair(self.statuses_observed, self.statuses),
            "parameters": pair(self.params_sent, self.params),
            "body_properties": pair(self.body_properties_sent, self.body_properties),
            "response_properties": pair(self.response_properties_seen, self.response_properties),
            "links": pair(self.links_followed, self.links),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The coverage of a run: every operation, totals per tag and overall.
#[derive(Debug, Clone)]
pub struct CoverageReport {
    pub operations: Vec<OperationCoverage>,
    /// Per tag, in name order (`untagged` for operations without one); an operation with
    /// several tags counts in each.
    pub tags: Vec<(String, Totals)>,
    pub totals: Totals,
}

impl CoverageReport {
    /// Aggregates operations into tag and overall totals.
    pub fn new(operations: Vec<OperationCoverage>) -> Self {
        let mut totals = Totals::default();
        let mut tags: BTreeMap<String, Totals> = BTreeMap::new();
        for op in &operations {
            totals.add(op);
            if op.tags.is_empty() {
                tags.entry("untagged".into()).or_default().add(op);
            }
            for tag in &op.tags {
                tags.entry(tag.clone()).or_default().add(op);
            }
        }
        Self {
            operations,
            tags: tags.into_iter().collect(),
            totals,
        }
    }

    /// `Err` with a message for people when the status coverage is under `min` percent.
    pub fn check_min(&self, min: f64) -> Result<(), String> {
        let got = self.totals.status_percent();
        if got + 1e-9 >= min {
            return Ok(());
        }
        Err(format!(
            "coverage {:.1}% is under --min-coverage {min}%: {} of {} documented \
             (operation, status) pairs observed",
            got, self.totals.statuses_observed, self.totals.statuses
        ))
    }

    /// One line for the run's summary.
    pub fn summary_line(&self) -> String {
        let t = &self.totals;
        format!(
            "coverage: {}/{} operations exercised, {}/{} documented statuses observed ({:.1}%), \
             {}/{} parameters sent, {}/{} links followed",
            t.operations_exercised,
            t.operations,
            t.statuses_observed,
            t.statuses,
            t.status_percent(),
            t.params_sent,
            t.params,
            t.links_followed,
            t.links
        )
    }

    /// The report as JSON.
    pub fn to_json(&self) -> Value {
        fn split(marks: &[(String, bool)]) -> (Vec<&str>, Vec<&str>) {
            let pick = |want: bool| -> Vec<&str> {
                marks
                    .iter()
                    .filter(|(_, b)| *b == want)
                    .map(|(p, _)| p.as_str())
                    .collect()
            };
            (pick(true), pick(false))
        }
        let operations: Vec<Value> = self
            .operations
            .iter()
            .map(|op| {
                let observed: Vec<&str> = op
                    .statuses
                    .iter()
                    .filter(|(_, n)| *n > 0)
                    .map(|(s, _)| s.as_str())
                    .collect();
                let missing: Vec<&str> = op
                    .statuses
                    .iter()
                    .filter(|(_, n)| *n == 0)
                    .map(|(s, _)| s.as_str())
                    .collect();
                let (params_sent, params_never) = split(&op.params);
                let (body_sent, body_never) = split(&op.body_properties);
                let (resp_seen, resp_never) = split(&op.response_properties);
                json!({
                    "operation": op.operation,
                    "operation_id": op.operation_id,
                    "tags": op.tags,
                    "requests": op.requests,
                    "skipped": op.skipped,
                    "exercised": op.exercised,
                    "statuses": {
                        "documented": op.statuses.iter().map(|(s, _)| s).collect::<Vec<_>>(),
                        "observed": observed,
                        "never_observed": missing,
                        "responses": op.statuses.iter().map(|(s, n)| (s.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
                        "undocumented": op.undocumented_statuses,
                    },
                    "parameters": {"sent": params_sent, "never_sent": params_never},
                    "body_properties": {"sent": body_sent, "never_sent": body_never},
                    "response_properties": {"seen": resp_seen, "never_seen": resp_never},
                    "links": op.links.iter().map(|l| json!({
                        "status": l.status,
                        "name": l.name,
                        "target": l.target,
                        "followed": l.followed,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "totals": self.totals.to_json(),
            "tags": self.tags.iter().map(|(name, t)| {
                let mut v = t.to_json();
                v["tag"] = json!(name);
                v
            }).collect::<Vec<_>>(),
            "operations": operations,
        })
    }

    /// The report as one static HTML page: inline CSS, no script, no external resource.
    pub fn to_html(&self, title: &str) -> String {
        let mut out = String::new();
        let t = &self.totals;
        let _ = write!(
            out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>Conformance coverage: {}</title>\n<style>{CSS}</style>\n</head>\n<body>\n\
             <h1>Conformance coverage</h1>\n<p class=\"sub\">{}</p>\n",
            xml_escape(title),
            xml_escape(title)
        );
        out.push_str("<section class=\"cards\">\n");
        for (label, covered, documented) in [
            ("operations exercised", t.operations_exercised, t.operations),
            ("statuses observed", t.statuses_observed, t.statuses),
            ("parameters sent", t.params_sent, t.params),
            (
                "body properties sent",
                t.body_properties_sent,
                t.body_properties,
            ),
            (
                "response properties seen",
                t.response_properties_seen,
                t.response_properties,
            ),
            ("links followed", t.links_followed, t.links),
        ] {
            let _ = writeln!(
                out,
                "<div class=\"card\"><div class=\"big\">{:.1}%</div><div>{label}</div>\
                 <div class=\"n\">{covered} of {documented}</div>{}</div>",
                percent(covered, documented),
                bar(covered, documented, 180)
            );
        }
        out.push_str("</section>\n<h2>Per tag</h2>\n<table>\n<thead><tr><th>tag</th>\
            <th>operations</th><th>statuses observed</th><th></th><th>parameters</th>\
            <th>body properties</th><th>response properties</th><th>links</th></tr></thead>\n<tbody>\n");
        for (name, t) in &self.tags {
            let _ = writeln!(
                out,
                "<tr><td><a href=\"#tag-{}\">{}</a></td><td>{}/{}</td><td>{}/{} ({:.1}%)</td>\
                 <td>{}</td><td>{}/{}</td><td>{}/{}</td><td>{}/{}</td><td>{}/{}</td></tr>",
                anchor(name),
                xml_escape(name),
                t.operations_exercised,
                t.operations,
                t.statuses_observed,
                t.statuses,
                t.status_percent(),
                bar(t.statuses_observed, t.statuses, 160),
                t.params_sent,
                t.params,
                t.body_properties_sent,
                t.body_properties,
                t.response_properties_seen,
                t.response_properties,
                t.links_followed,
                t.links
            );
        }
        out.push_str(
            "</tbody>\n</table>\n<h2>Operations</h2>\n<p class=\"legend\">\
            <span class=\"st ok\">200</span> observed <span class=\"st miss\">503</span> \
            documented, never observed <span class=\"st undoc\">418</span> observed, \
            undocumented</p>\n",
        );
        for (name, _) in &self.tags {
            let _ = writeln!(
                out,
                "<h3 id=\"tag-{}\">{}</h3>\n<table class=\"ops\">\n<thead><tr><th>operation</th>\
                 <th>requests</th><th>statuses</th><th>parameters</th><th>body properties</th>\
                 <th>response properties</th><th>links</th></tr></thead>\n<tbody>",
                anchor(name),
                xml_escape(name)
            );
            let in_tag = self.operations.iter().filter(|o| {
                o.tags.iter().any(|t| t == name) || (o.tags.is_empty() && name == "untagged")
            });
            for op in in_tag {
                op_row(&mut out, op);
            }
            out.push_str("</tbody>\n</table>\n");
        }
        out.push_str("</body>\n</html>\n");
        out
    }
}

fn op_row(out: &mut String, op: &OperationCoverage) {
    let class = if op.exercised { "" } else { " class=\"unex\"" };
    let note = match (&op.skipped, op.exercised) {
        (Some(why), _) => format!("<div class=\"why\">skipped: {}</div>", xml_escape(why)),
        (None, false) => "<div class=\"why\">not exercised</div>".to_string(),
        _ => String::new(),
    };
    let mut statuses = String::new();
    for (status, n) in &op.statuses {
        let (class, tip) = if *n > 0 {
            ("ok", format!("{n} responses"))
        } else {
            ("miss", "never observed".to_string())
        };
        let _ = write!(
            statuses,
            "<span class=\"st {class}\" title=\"{tip}\">{}</span> ",
            xml_escape(status)
        );
    }
    for status in &op.undocumented_statuses {
        let _ = write!(
            statuses,
            "<span class=\"st undoc\" title=\"undocumented\">{status}</span> "
        );
    }
    let links = if op.links.is_empty() {
        "–".to_string()
    } else {
        op.links
            .iter()
            .map(|l| {
                format!(
                    "<span class=\"{}\">{} → {} ({})</span>",
                    if l.followed { "hit" } else { "never" },
                    xml_escape(&l.name),
                    xml_escape(&l.target),
                    xml_escape(&l.status)
                )
            })
            .collect::<Vec<_>>()
            .join("<br>")
    };
    let _ = writeln!(
        out,
        "<tr{class}><td><code>{}</code><div class=\"id\">{}</div>{note}</td><td>{}</td>\
         <td>{statuses}</td><td>{}</td><td>{}</td><td>{}</td><td>{links}</td></tr>",
        xml_escape(&op.operation),
        xml_escape(&op.operation_id),
        op.requests,
        mark_list(&op.params, "sent", "never sent"),
        mark_list(&op.body_properties, "sent", "never sent"),
        mark_list(&op.response_properties, "seen", "never seen"),
    );
}

/// `covered/documented`, and the names never covered in a `<details>` (opens without
/// script).
fn mark_list(marks: &[(String, bool)], yes: &str, no: &str) -> String {
    if marks.is_empty() {
        return "–".to_string();
    }
    let (total, covered) = count(marks);
    let list = |want: bool| -> String {
        marks
            .iter()
            .filter(|(_, b)| *b == want)
            .map(|(p, _)| format!("<code>{}</code>", xml_escape(p)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut cell = format!("{covered}/{total}");
    if covered < total {
        let _ = write!(
            cell,
            "<details><summary>{} {no}</summary><div class=\"never\">{}</div></details>",
            total - covered,
            list(false)
        );
    }
    if covered > 0 {
        let _ = write!(
            cell,
            "<details><summary>{covered} {yes}</summary><div>{}</div></details>",
            list(true)
        );
    }
    cell
}

/// A horizontal bar, `width` pixels, the covered part filled.
fn bar(covered: usize, documented: usize, width: u32) -> String {
    let filled = (percent(covered, documented) / 100.0 * f64::from(width)).round();
    format!(
        "<svg class=\"bar\" width=\"{width}\" height=\"10\" role=\"img\" \
         aria-label=\"{covered} of {documented}\"><rect width=\"{width}\" height=\"10\" \
         rx=\"2\" fill=\"#e4e7eb\"/><rect width=\"{filled}\" height=\"10\" rx=\"2\" \
         fill=\"#2f855a\"/></svg>"
    )
}

fn anchor(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

const CSS: &str = "body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;\
margin:24px;color:#1a202c;background:#fff}h1{margin:0 0 4px}h2{margin-top:32px}\
.sub{color:#4a5568;margin-top:0}.cards{display:flex;flex-wrap:wrap;gap:12px}\
.card{border:1px solid #e2e8f0;border-radius:6px;padding:10px 14px;min-width:190px}\
.big{font-size:24px;font-weight:600}.n{color:#4a5568;margin-bottom:4px}\
table{border-collapse:collapse;width:100%;margin:8px 0 16px}\
th,td{border-bottom:1px solid #e2e8f0;padding:5px 8px;text-align:left;vertical-align:top}\
th{background:#f7fafc;font-weight:600}tr.unex td{background:#fff5f5}\
code{font:12px ui-monospace,Menlo,Consolas,monospace}.id{color:#718096;font-size:12px}\
.why{color:#c53030;font-size:12px}.st{display:inline-block;padding:0 5px;margin:1px;\
border-radius:3px;font:12px ui-monospace,monospace}.ok{background:#c6f6d5;color:#22543d}\
.miss{background:#edf2f7;color:#718096;text-decoration:line-through}\
.undoc{background:#fed7d7;color:#822727}.hit{color:#22543d}.never{color:#718096}\
details summary{cursor:pointer;color:#2b6cb0;font-size:12px}.legend{color:#4a5568}\
svg.bar{vertical-align:middle}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::OperationReport;

    fn spec() -> Value {
        json!({
            "openapi": "3.1.0",
            "paths": {
                "/items": {
                    "post": {
                        "operationId": "createItem",
                        "tags": ["items"],
                        "requestBody": {"content": {"application/json": {"schema": {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string", "readOnly": true},
                                "name": {"type": "string"},
                                "meta": {"type": "object", "properties": {"color": {"type": "string"}}}
                            }
                        }}}},
                        "responses": {
                            "201": {
                                "description": "created",
                                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}},
                                "links": {"get": {"operationId": "getItem", "parameters": {"item_id": "$response.body#/id"}}}
                            },
                            "4XX": {"description": "bad"}
                        }
                    },
                    "get": {
                        "operationId": "listItems",
                        "tags": ["items", "lists"],
                        "parameters": [{"name": "page", "in": "query", "schema": {"type": "integer"}}],
                        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {
                            "type": "object",
                            "properties": {"data": {"type": "array", "items": {"$ref": "#/components/schemas/Item"}}}
                        }}}}}
                    }
                },
                "/items/{item_id}": {
                    "parameters": [{"name": "item_id", "in": "path", "required": true, "schema": {"type": "string"}}],
                    "get": {
                        "operationId": "getItem",
                        "parameters": [{"name": "X-Trace", "in": "header", "schema": {"type": "string"}}],
                        "responses": {"200": {"description": "ok"}, "404": {"description": "missing"}, "default": {"description": "error"}}
                    }
                }
            },
            "components": {"schemas": {"Item": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "secret": {"type": "string", "writeOnly": true}}
            }}}
        })
    }

    fn exchange(
        method: &str, url: &str, body: Option<&str>, status: u16, response: &str,
    ) -> Exchange {
        Exchange {
            method: method.into(),
            url: url.into(),
            request_headers: vec![("Content-Type".into(), "application/json".into())],
            request_body: body.map(|b| b.as_bytes().to_vec()),
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: response.as_bytes().to_vec(),
            elapsed: std::time::Duration::ZERO,
        }
    }

    #[test]
    fn documented_paths_leave_out_read_only_in_requests_and_write_only_in_responses() {
        let coverage = Coverage::new(&spec());
        let create = &coverage.ops[coverage.by_label["POST /items"]];
        assert_eq!(
            create.body_properties.iter().collect::<Vec<_>>(),
            ["meta", "meta.color", "name"]
        );
        assert_eq!(
            create.response_properties.iter().collect::<Vec<_>>(),
            ["id", "name"]
        );
        let list = &coverage.ops[coverage.by_label["GET /items"]];
        assert_eq!(
            list.response_properties.iter().collect::<Vec<_>>(),
            ["data", "data[].id", "data[].name"]
        );
        let get = &coverage.ops[coverage.by_label["GET /items/{item_id}"]];
        assert_eq!(get.params.len(), 2, "operation and path-level parameters");
    }

    #[test]
    fn observations_aggregate_per_operation_tag_and_overall() {
        let coverage = Coverage::new(&spec());
        let base = "http://127.0.0.1:1/api";
        coverage.observe(
            "POST /items",
            &exchange(
                "POST",
                &format!("{base}/items"),
                Some(r#"{"name":"a"}"#),
                201,
                r#"{"id":"it_1","name":"a"}"#,
            ),
        );
        coverage.observe(
            "POST /items",
            &exchange("POST", &format!("{base}/items"), Some("{"), 400, "{}"),
        );
        // A probe of an undocumented method is not the operation's.
        coverage.observe(
            "POST /items",
            &exchange("PATCH", &format!("{base}/items"), None, 405, ""),
        );
        let mut read = exchange("GET", &format!("{base}/items/it_1"), None, 200, "{}");
        read.request_headers.push(("x-trace".into(), "t".into()));
        coverage.observe("GET /items/{item_id}", &read);
        coverage.observe(
            "GET /items/{item_id}",
            &exchange("GET", &format!("{base}/items/nope"), None, 500, "{}"),
        );
        let report = Report {
            operations: vec![OperationReport {
                operation: "POST /items".into(),
                cases: 2,
                ..OperationReport::default()
            }],
            ..Report::default()
        };
        let cov = coverage.finish(&report);
        let t = cov.totals;
        assert_eq!((t.operations, t.operations_exercised), (3, 2));
        // createItem: 201, 4XX; listItems: 200; getItem: 200, 404, default.
        assert_eq!((t.statuses, t.statuses_observed), (6, 4));
        assert!((t.status_percent() - 66.666).abs() < 0.01);
        assert_eq!((t.params, t.params_sent), (3, 2));
        assert_eq!((t.body_properties, t.body_properties_sent), (3, 1));
        assert_eq!((t.links, t.links_followed), (1, 1));
        let find = |id: &str| cov.operations.iter().find(|o| o.operation_id == id);
        let create = find("createItem").expect("createItem");
        assert_eq!(create.requests, 2);
        assert_eq!(create.statuses, vec![("201".into(), 1), ("4XX".into(), 1)]);
        let get = find("getItem").expect("getItem");
        assert_eq!(
            get.statuses,
            vec![("200".into(), 1), ("404".into(), 0), ("DEFAULT".into(), 1)]
        );
        assert!(get.undocumented_statuses.is_empty());
        // Tags: items holds createItem and listItems; lists holds listItems; getItem is
        // untagged.
        let names: Vec<&str> = cov.tags.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["items", "lists", "untagged"]);
        assert_eq!(cov.tags[0].1.operations, 2);
        assert_eq!(cov.tags[1].1.operations_exercised, 0);
        let json = cov.to_json();
        assert_eq!(json["totals"]["statuses"]["covered"], 4);
        // Operations in spec order: path by path, methods in METHODS order.
        assert_eq!(json["operations"][0]["operation_id"], "listItems");
        assert_eq!(
            json["operations"][0]["statuses"]["never_observed"],
            json!(["200"])
        );
        assert_eq!(json["operations"][1]["links"][0]["followed"], true);
    }

    #[test]
    fn a_link_counts_as_followed_only_with_the_value_the_response_gave() {
        let coverage = Coverage::new(&spec());
        coverage.observe(
            "POST /items",
            &exchange("POST", "http://h/items", None, 201, r#"{"id":"it_1"}"#),
        );
        coverage.observe(
            "GET /items/{item_id}",
            &exchange("GET", "http://h/items/other", None, 404, ""),
        );
        let cov = coverage.finish(&Report::default());
        assert!(!cov.operations[1].links[0].followed);
    }

    #[test]
    fn min_coverage_fails_below_the_threshold_with_a_clear_message() {
        let coverage = Coverage::new(&spec());
        coverage.observe(
            "GET /items",
            &exchange("GET", "http://h/items?page=2", None, 200, "{}"),
        );
        let cov = coverage.finish(&Report::default());
        assert!(cov.check_min(0.0).is_ok());
        let message = cov.check_min(50.0).expect_err("1 of 6 is under 50%");
        assert!(
            message.contains("16.7%") && message.contains("1 of 6"),
            "{message}"
        );
        assert!(
            Coverage::new(&json!({"paths": {}}))
                .finish(&Report::default())
                .check_min(100.0)
                .is_ok()
        );
    }

    #[test]
    fn the_page_is_static_and_escapes_names() {
        let mut doc = spec();
        doc["paths"]["/items"]["get"]["tags"] = json!(["<b>&"]);
        let cov = Coverage::new(&doc).finish(&Report::default());
        let html = cov.to_html("spec <x>");
        assert!(html.contains("&lt;b&gt;&amp;") && !html.contains("<b>&"));
        assert!(!html.contains("<script") && !html.contains("http"));
        assert!(html.contains("<svg class=\"bar\""));
    }
}
