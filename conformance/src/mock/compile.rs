//! A spec compiled for serving: per operation, its documented responses with their bodies
//! and headers worked out once, at load, so that a static answer is a lookup and a copy.
//!
//! Bodies come from the spec's own examples when they are valid against their schema
//! (`examples` of the media type, then its `example`, then the schema's `examples`/`example`)
//! and are otherwise built from the schema by the conformance generator: its plain value
//! ([`Generator::plain`]) when valid, else a draw seeded by the operation's position, so
//! that a restart serves the same bytes. Every body is checked
//! against the compiled response schema before it is kept: the mock never answers anything
//! the spec does not allow.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use jsonschema::Validator;
use serde_json::{Map, Value};

use crate::generate::{Direction, Generator, prepare_doc, sample};
use crate::response::{MediaSpec, Responses, is_json, media_matches};
use crate::runner::{named_examples, scalar_text, seeded_runner};
use crate::spec::{SpecError, deref, escape_pointer};
use crate::validate::RequestValidator;

/// Generation attempts before a schema is given up on (its answer then has no body).
const ATTEMPTS: usize = 16;

/// A whole spec, ready to serve.
pub struct MockSpec {
    /// The bundled, 3.1-normalized document.
    pub doc: Value,
    /// `doc` prepared for the response direction (`writeOnly` properties never required).
    pub response_doc: Value,
    pub validator: RequestValidator,
    /// Operations by their JSON pointer in `doc`.
    operations: HashMap<String, MockOperation>,
    /// Every operation, in spec order, for the start-up listing.
    pub listing: Vec<(String, String)>,
    /// The files the spec was read from (the root first).
    pub files: Vec<PathBuf>,
    /// How long loading and compiling took.
    pub load_time: std::time::Duration,
}

/// Where a credential must be present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    Header(String),
    Query(String),
    Cookie(String),
}

/// One media type of a documented response.
pub struct MockMedia {
    pub media_type: String,
    /// The schema, when the media type has one.
    pub schema: Option<Value>,
    /// The static body: an example valid against `schema`, or generated from it.
    pub value: Option<Value>,
    /// The static body, serialized.
    pub body: Bytes,
    /// Named examples that are valid against `schema`, for `Prefer: example=name`.
    pub examples: Vec<(String, Value)>,
}

/// One documented response.
pub struct MockResponse {
    /// The key as the spec wrote it, upper-cased (`200`, `4XX`, `DEFAULT`).
    pub key: String,
    /// The status served for it (`4XX` → 400, `default` → 200 as a success).
    pub status: u16,
    /// Every documented header with a value valid against its schema.
    pub headers: Vec<(String, String)>,
    pub media: Vec<MockMedia>,
}

impl MockResponse {
    /// The media type to answer with for an `Accept` header: the first documented one the
    /// header accepts, else the first JSON one, else the first.
    pub fn negotiate(&self, accept: Option<&str>) -> Option<&MockMedia> {
        if let Some(accept) = accept {
            for wanted in accept.split(',') {
                let wanted = wanted.split(';').next().unwrap_or("").trim();
                if wanted.is_empty() || wanted == "*/*" {
                    continue;
                }
                if let Some(m) = self
                    .media
                    .iter()
                    .find(|m| media_matches(wanted, &m.media_type))
                {
                    return Some(m);
                }
            }
        }
        self.media
            .iter()
            .find(|m| is_json(&m.media_type))
            .or_else(|| self.media.first())
    }
}

/// What an operation is in stateful mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// `POST /things`.
    Create,
    /// `GET /things`.
    List,
    /// `GET /things/{id}`.
    Read,
    /// `PUT /things/{id}`.
    Replace,
    /// `PATCH /things/{id}`.
    Patch,
    /// `DELETE /things/{id}`.
    Delete,
    /// Anything under `/things/{id}/…`: needs the thing to exist.
    Nested,
}

/// An operation's place in an inferred collection.
#[derive(Debug, Clone)]
pub struct Resource {
    /// The collection's path template, e.g. `/v1/agents`: the key of its store.
    pub collection: String,
    /// The item path parameter, e.g. `agent_id`.
    pub param: String,
    /// The property of a stored item that holds its id, e.g. `id`.
    pub id_field: String,
    pub role: Role,
    /// The pointer of the POST whose answers are the stored items (the collection's own,
    /// or the free-standing POST that fills a collection without one).
    pub creator: String,
}

/// One operation, compiled for answering.
pub struct MockOperation {
    pub id: String,
    /// Upper case.
    pub method: String,
    pub template: String,
    /// Validators of every documented response (shared with the conformance checks).
    pub responses: Responses,
    pub entries: Vec<MockResponse>,
    /// Index into `entries` of the documented success (lowest 2xx, else 3xx, else default).
    pub success: Option<usize>,
    /// Alternatives, any one of which is enough; each lists credentials all needed.
    /// Empty: no security.
    pub security: Vec<Vec<Credential>>,
    pub resource: Option<Resource>,
}

impl MockOperation {
    /// The documented response for `status`: exact, then its range (`4XX`), then `default`.
    pub fn entry(&self, status: u16) -> Option<&MockResponse> {
        let exact = status.to_string();
        let range = format!("{}XX", status / 100);
        self.entries
            .iter()
            .find(|r| r.key == exact)
            .or_else(|| self.entries.iter().find(|r| r.key == range))
            .or_else(|| self.entries.iter().find(|r| r.key == "DEFAULT"))
    }

    /// Whether `status` is documented exactly or by its range (not only by `default`).
    pub fn documents(&self, status: u16) -> bool {
        self.entry(status).is_some_and(|r| r.key != "DEFAULT")
    }

    /// The compiled media type `media_type` of the response `key` (as documented).
    fn media(&self, key: &str, media_type: &str) -> Option<&MediaSpec> {
        self.responses
            .entries
            .iter()
            .find(|r| r.status == key)?
            .content
            .iter()
            .find(|m| m.media_type == media_type.to_ascii_lowercase())
    }

    /// The compiled validator of a response body, by documented key and media type.
    pub fn body_validator(&self, key: &str, media_type: &str) -> Option<&Validator> {
        self.media(key, media_type)?.validator.as_ref()
    }

    /// `value` without the `writeOnly` properties the response `key` in `media_type` never
    /// shows.
    pub fn without_write_only(&self, key: &str, media_type: &str, value: &Value) -> Value {
        let mut shown = value.clone();
        if let Some(w) = self
            .media(key, media_type)
            .and_then(|m| m.write_only.as_ref())
        {
            w.strip(&mut shown);
        }
        shown
    }

    /// Whether `value` is a valid body for the response `key` in `media_type`.
    pub fn body_is_valid(&self, key: &str, media_type: &str, value: &Value) -> bool {
        self.body_validator(key, media_type)
            .is_none_or(|v| v.is_valid(value))
    }

    pub fn label(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

impl MockSpec {
    /// Loads, bundles and compiles the spec at `path`.
    pub fn load(path: &Path) -> Result<Self, SpecError> {
        let started = std::time::Instant::now();
        let (doc, files) = crate::spec::load_with_sources(path)?;
        let mut spec = Self::compile(doc)?;
        spec.files = files;
        spec.load_time = started.elapsed();
        Ok(spec)
    }

    /// Compiles a bundled, 3.1-normalized document.
    pub fn compile(doc: Value) -> Result<Self, SpecError> {
        let request_doc = prepare_doc(&doc, Direction::Request);
        let response_doc = prepare_doc(&doc, Direction::Response);
        let validator = RequestValidator::new(&request_doc)?;
        let mut operations = HashMap::new();
        let mut listing = Vec::new();
        let empty = Map::new();
        let paths = doc
            .get("paths")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let templates: Vec<&str> = paths.keys().map(String::as_str).collect();
        let mut index = 0;
        for (template, item) in paths {
            let item = deref(&doc, item);
            for method in crate::METHODS {
                let Some(op) = item.get(*method) else {
                    continue;
                };
                let pointer = format!("/paths/{}/{method}", escape_pointer(template));
                let compiled = compile_operation(
                    &doc,
                    &response_doc,
                    template,
                    method,
                    op,
                    &pointer,
                    index,
                    &templates,
                    paths,
                )?;
                listing.push((compiled.method.clone(), template.clone()));
                operations.insert(pointer, compiled);
                index += 1;
            }
        }
        Ok(Self {
            doc,
            response_doc,
            validator,
            operations,
            listing,
            files: Vec::new(),
            load_time: std::time::Duration::ZERO,
        })
    }

    /// The compiled operation at a JSON pointer (as [`crate::validate::Operation::pointer`]).
    pub fn operation(&self, pointer: &str) -> Option<&MockOperation> {
        self.operations.get(pointer)
    }

    /// The number of operations.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// A fresh value for a response body schema (`Prefer: dynamic=true`), drawn from the
    /// `(seed, counter)` RNG and checked against the compiled schema; `None` when no draw
    /// validates.
    pub fn generate(
        &self, op: &MockOperation, key: &str, media: &MockMedia, seed: u64, counter: usize,
    ) -> Option<Value> {
        let schema = media.schema.as_ref()?;
        let generator = Generator::new(&self.response_doc, Direction::Response);
        let strategy = generator.strategy(schema);
        let mut runner = seeded_runner(seed, counter, 0xd1);
        (0..ATTEMPTS)
            .filter_map(|_| sample(&strategy, &mut runner))
            .find(|v| op.body_is_valid(key, &media.media_type, v))
    }
}

#[expect(clippy::too_many_arguments, reason = "one call site, all context")]
fn compile_operation(
    doc: &Value, response_doc: &Value, template: &str, method: &str, op: &Value, pointer: &str,
    index: usize, templates: &[&str], paths: &Map<String, Value>,
) -> Result<MockOperation, SpecError> {
    let id = op.get("operationId").and_then(Value::as_str).map_or_else(
        || format!("{} {template}", method.to_ascii_uppercase()),
        str::to_string,
    );
    let responses = Responses::compile(response_doc, op, pointer)?;
    let generator = Generator::new(response_doc, Direction::Response);
    let mut entries = Vec::new();
    if let Some(map) = op.get("responses").and_then(Value::as_object) {
        for (position, (key, response)) in map.iter().enumerate() {
            let key = key.to_ascii_uppercase();
            let response = deref(doc, response);
            let status = match key.as_str() {
                "DEFAULT" => 200,
                k if k.ends_with("XX") => k[..1].parse::<u16>().map_or(500, |c| c * 100),
                k => k.parse().unwrap_or(500),
            };
            let Some(spec) = responses.entries.iter().find(|r| r.status == key) else {
                continue;
            };
            let mut runner = seeded_runner(0, index * 64 + position, 0x3c);
            let mut headers = Vec::new();
            if let Some(hs) = response.get("headers").and_then(Value::as_object) {
                for (name, h) in hs {
                    if name.eq_ignore_ascii_case("content-type") {
                        continue;
                    }
                    let h = deref(doc, h);
                    let Some(hspec) = spec.headers.iter().find(|s| s.name == *name) else {
                        continue;
                    };
                    let schema = h.get("schema").cloned().unwrap_or(Value::Bool(true));
                    let fits = |text: &String| {
                        !text.is_empty()
                            && text.bytes().all(|b| (0x20..0x7f).contains(&b))
                            && crate::response::header_violation(hspec, text).is_none()
                    };
                    let mut candidates: Vec<Value> =
                        named_examples(h, doc).into_iter().map(|(_, v)| v).collect();
                    candidates.extend(schema_examples(doc, &schema));
                    candidates.push(generator.plain(&schema));
                    let mut value = candidates.iter().filter_map(scalar_text).find(fits);
                    if value.is_none() {
                        let strategy = generator.strategy(&schema);
                        value = (0..ATTEMPTS)
                            .filter_map(|_| sample(&strategy, &mut runner))
                            .filter_map(|v| scalar_text(&v))
                            .find(fits);
                    }
                    if let Some(value) = value {
                        headers.push((name.clone(), value));
                    }
                }
            }
            let mut media = Vec::new();
            if let Some(content) = response.get("content").and_then(Value::as_object) {
                for (media_type, m) in content {
                    let media_type = media_type.to_ascii_lowercase();
                    let schema = m.get("schema").cloned();
                    let compiled = spec.content.iter().find(|c| c.media_type == media_type);
                    let validator = compiled.and_then(|c| c.validator.as_ref());
                    let valid = |v: &Value| validator.is_none_or(|val| val.is_valid(v));
                    // An example may show what a response never holds (a card's CVC).
                    let write_only = compiled.and_then(|c| c.write_only.as_ref());
                    let shown = |mut v: Value| {
                        if let Some(w) = write_only {
                            w.strip(&mut v);
                        }
                        v
                    };
                    let named: Vec<(Option<String>, Value)> = named_examples(m, doc)
                        .into_iter()
                        .map(|(n, v)| (n, shown(v)))
                        .collect();
                    let examples: Vec<(String, Value)> = named
                        .iter()
                        .filter_map(|(n, v)| Some((n.clone()?, v.clone())))
                        .filter(|(_, v)| valid(v))
                        .collect();
                    // `examples` > `example` > the schema's own > generated.
                    let mut candidates: Vec<Value> =
                        examples.iter().map(|(_, v)| v.clone()).collect();
                    candidates.extend(
                        named
                            .iter()
                            .filter(|(n, _)| n.is_none())
                            .map(|(_, v)| v.clone()),
                    );
                    if let Some(schema) = &schema {
                        candidates.extend(schema_examples(doc, schema).into_iter().map(shown));
                        candidates.push(generator.plain(schema));
                    }
                    let mut value = candidates.into_iter().find(|v| valid(v));
                    if value.is_none()
                        && let Some(schema) = &schema
                    {
                        let strategy = generator.strategy(schema);
                        value = (0..ATTEMPTS)
                            .filter_map(|_| sample(&strategy, &mut runner))
                            .find(|v| valid(v));
                    }
                    let mut body = match &value {
                        Some(v) => render(&media_type, v),
                        None => Bytes::new(),
                    };
                    if crate::response::is_event_stream(&media_type)
                        && let Some(events) = spec
                            .content
                            .iter()
                            .find(|c| c.media_type == media_type)
                            .and_then(|c| c.events.as_ref())
                    {
                        // A short stream whose every event is valid: the spec's example when
                        // it is one, else one generated event.
                        let fine = !crate::response::sse_events(&body).is_empty()
                            && crate::response::event_stream_violation(events, &body).is_none();
                        if !fine {
                            let (item_schema, data_schema) = crate::response::event_schemas(doc, m);
                            let data_fits =
                                |d: &Value| events.data.as_ref().is_none_or(|v| v.is_valid(d));
                            let mut data = data_schema.map(|s| generator.plain(s));
                            if data.as_ref().is_none_or(|d| !data_fits(d))
                                && let Some(schema) = data_schema
                            {
                                let strategy = generator.strategy(schema);
                                data = (0..ATTEMPTS)
                                    .filter_map(|_| sample(&strategy, &mut runner))
                                    .find(|d| data_fits(d));
                            }
                            let data = data.map(|d| Value::String(d.to_string()));
                            let dress = |mut frame: Value| {
                                if let (Some(f), Some(d)) = (frame.as_object_mut(), &data) {
                                    f.insert("data".into(), d.clone());
                                }
                                frame
                            };
                            let fits =
                                |f: &Value| events.item.as_ref().is_none_or(|v| v.is_valid(f));
                            let frame = match item_schema {
                                None => data
                                    .clone()
                                    .map(|d| Value::Object(Map::from_iter([("data".into(), d)]))),
                                Some(schema) => {
                                    let first = dress(generator.plain(schema));
                                    if fits(&first) {
                                        Some(first)
                                    } else {
                                        let strategy = generator.strategy(schema);
                                        (0..ATTEMPTS)
                                            .filter_map(|_| sample(&strategy, &mut runner))
                                            .map(dress)
                                            .find(|f| fits(f))
                                    }
                                }
                            };
                            body = frame.map(|f| render_event(&f)).unwrap_or_default();
                            value = Some(Value::String(String::from_utf8_lossy(&body).into()));
                        }
                    }
                    media.push(MockMedia {
                        media_type,
                        schema,
                        value,
                        body,
                        examples,
                    });
                }
            }
            entries.push(MockResponse {
                key,
                status,
                headers,
                media,
            });
        }
    }
    let success = ["2", "3"]
        .iter()
        .find_map(|class| {
            entries
                .iter()
                .enumerate()
                .filter(|(_, r)| r.key.starts_with(class))
                .min_by_key(|(_, r)| r.status)
                .map(|(i, _)| i)
        })
        .or_else(|| entries.iter().position(|r| r.key == "DEFAULT"))
        // A WebSocket operation's success is the 101 upgrade, which a mock cannot perform:
        // it answers what the operation documents for a request without one.
        .or_else(|| entries.iter().position(|r| r.status == 426));
    let security = compile_security(doc, op);
    let resource = infer_resource(doc, response_doc, template, method, templates, paths);
    Ok(MockOperation {
        id,
        method: method.to_ascii_uppercase(),
        template: template.to_string(),
        responses,
        entries,
        success,
        security,
        resource,
    })
}

/// The `examples` (3.1) and `example` of a schema, `$ref`s followed.
fn schema_examples(doc: &Value, schema: &Value) -> Vec<Value> {
    let schema = deref(doc, schema);
    let mut out = Vec::new();
    if let Some(Value::Array(list)) = schema.get("examples") {
        out.extend(list.iter().cloned());
    }
    if let Some(e) = schema.get("example") {
        out.push(e.clone());
    }
    out
}

/// A body value as bytes: JSON for JSON media types, the text itself for a string.
/// One server-sent event from its parsed form `{event, data, id, retry}`.
fn render_event(frame: &Value) -> Bytes {
    let mut out = String::new();
    for field in ["event", "id"] {
        if let Some(v) = frame.get(field).and_then(Value::as_str) {
            out.push_str(&format!("{field}: {}\n", v.replace(['\r', '\n'], " ")));
        }
    }
    if let Some(r) = frame.get("retry").and_then(Value::as_u64) {
        out.push_str(&format!("retry: {r}\n"));
    }
    let data = match frame.get("data") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => String::new(),
    };
    for line in data.split('\n') {
        out.push_str(&format!("data: {line}\n"));
    }
    out.push('\n');
    Bytes::from(out)
}

pub fn render(media_type: &str, value: &Value) -> Bytes {
    match value {
        Value::String(s) if !is_json(media_type) => Bytes::from(s.clone()),
        v => Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    }
}

fn compile_security(doc: &Value, op: &Value) -> Vec<Vec<Credential>> {
    let Some(requirements) = op
        .get("security")
        .or_else(|| doc.get("security"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let schemes = doc.pointer("/components/securitySchemes");
    let mut out = Vec::new();
    for requirement in requirements {
        let Some(names) = requirement.as_object() else {
            continue;
        };
        if names.is_empty() {
            return Vec::new(); // `{}`: anonymous access is allowed
        }
        let mut needed = Vec::new();
        for name in names.keys() {
            let Some(scheme) = schemes.and_then(|s| s.get(name)).map(|s| deref(doc, s)) else {
                continue;
            };
            let credential = match scheme.get("type").and_then(Value::as_str) {
                Some("apiKey") => {
                    let key = scheme
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    match scheme.get("in").and_then(Value::as_str) {
                        Some("query") => Credential::Query(key),
                        Some("cookie") => Credential::Cookie(key),
                        _ => Credential::Header(key.to_ascii_lowercase()),
                    }
                }
                Some("http" | "oauth2" | "openIdConnect") => {
                    Credential::Header("authorization".into())
                }
                _ => continue, // mutualTLS: nothing to see in the request
            };
            needed.push(credential);
        }
        out.push(needed);
    }
    out
}

/// The JSON object schema of an operation's first 2xx JSON response, flattened.
fn success_object(
    response_doc: &Value, op: &Value, generator: &Generator<'_>,
) -> Option<Map<String, Value>> {
    let responses = op.get("responses")?.as_object()?;
    let (_, response) = responses
        .iter()
        .filter(|(k, _)| k.starts_with('2'))
        .min_by_key(|(k, _)| k.as_str())?;
    let response = deref(response_doc, response);
    let content = response.get("content")?.as_object()?;
    let (_, media) = content.iter().find(|(mt, _)| is_json(mt))?;
    let flat = generator.flatten(media.get("schema")?);
    flat.get("properties")?.as_object()?;
    Some(flat)
}

/// The item parameter and id property of `collection`, when it is one: a path with one more
/// templated segment below it, and either a POST whose success answer is an object with an id
/// property, or (a collection filled from elsewhere, like scans made by
/// `POST /security/scan/{agent_id}` and listed at `/security/scans`) an item GET answering the
/// schema that a free-standing POST's 201 answers.
fn collection_item(
    doc: &Value, response_doc: &Value, collection: &str, templates: &[&str],
    paths: &Map<String, Value>, generator: &Generator<'_>,
) -> Option<Collection> {
    let item = templates.iter().find(|t| {
        t.strip_prefix(collection)
            .and_then(|rest| rest.strip_prefix("/{"))
            .is_some_and(|rest| rest.ends_with('}') && !rest.contains('/'))
    })?;
    let param = item[collection.len() + 2..item.len() - 1].to_string();
    let create = paths
        .get(collection)
        .and_then(|c| deref(doc, c).get("post"));
    let (flat, creator, stored_ref) = match create {
        Some(create) => (
            success_object(response_doc, create, generator)?,
            collection.to_string(),
            created_ref(doc, create),
        ),
        None => {
            let read = deref(doc, paths.get(*item)?).get("get")?;
            let read_ref = success_ref(doc, read, "200")?;
            let creator = created_elsewhere(doc, templates, paths, &read_ref)?;
            (
                success_object(response_doc, read, generator)?,
                creator.to_string(),
                Some(read_ref),
            )
        }
    };
    let props = flat.get("properties").and_then(Value::as_object)?;
    let id_field = ["id", param.as_str()]
        .into_iter()
        .find(|k| props.contains_key(*k))
        .map(str::to_string)?;
    Some(Collection {
        item: item.to_string(),
        param,
        id_field,
        creator: format!("/paths/{}/post", escape_pointer(&creator)),
        stored_ref,
    })
}

/// What [`collection_item`] finds out about a collection.
struct Collection {
    /// The item path template.
    item: String,
    param: String,
    id_field: String,
    /// [`Resource::creator`].
    creator: String,
    /// The `$ref` of the stored items' schema, when the spec names one.
    stored_ref: Option<String>,
}

/// The `$ref` of the JSON schema an operation's 201 answers with.
fn created_ref(doc: &Value, op: &Value) -> Option<String> {
    success_ref(doc, op, "201")
}

/// A free-standing POST (no prefix of its path is a path with a POST of its own, so it creates
/// nothing nested) whose 201 answers the schema `$ref`, if there is one.
fn created_elsewhere<'t>(
    doc: &Value, templates: &[&'t str], paths: &Map<String, Value>, schema_ref: &str,
) -> Option<&'t str> {
    let has_post = |template: &str| {
        paths
            .get(template)
            .is_some_and(|p| deref(doc, p).get("post").is_some())
    };
    templates.iter().copied().find(|template| {
        let free = template
            .match_indices('/')
            .skip(1)
            .all(|(cut, _)| !has_post(&template[..cut]));
        free && paths
            .get(*template)
            .and_then(|p| deref(doc, p).get("post"))
            .and_then(|post| created_ref(doc, post))
            .is_some_and(|created| created == schema_ref)
    })
}

/// The `$ref` of the JSON schema an operation's `status` answers with.
fn success_ref(doc: &Value, op: &Value, status: &str) -> Option<String> {
    let created = deref(doc, op.get("responses")?.get(status)?);
    let content = created.get("content")?.as_object()?;
    let (_, media) = content.iter().find(|(mt, _)| is_json(mt))?;
    media
        .get("schema")?
        .get("$ref")?
        .as_str()
        .map(str::to_string)
}

/// Infers the stateful role of `method template`: a collection is a path with a POST whose
/// success answer is an object with an id property, and one more templated segment below it.
/// A POST elsewhere whose 201 answers the very schema a collection's create answers
/// (installing a marketplace template creates an agent), or the schema a create-less
/// collection's items are (a scan of a thing listed among the scans), creates into that
/// collection.
fn infer_resource(
    doc: &Value, response_doc: &Value, template: &str, method: &str, templates: &[&str],
    paths: &Map<String, Value>,
) -> Option<Resource> {
    let generator = Generator::new(response_doc, Direction::Response);
    // Candidate collections: every prefix of the template that is a path of its own.
    let segments: Vec<&str> = template.trim_start_matches('/').split('/').collect();
    for cut in (1..=segments.len()).rev() {
        let collection = format!("/{}", segments[..cut].join("/"));
        if !templates.contains(&collection.as_str()) {
            continue;
        }
        let Some(found) =
            collection_item(doc, response_doc, &collection, templates, paths, &generator)
        else {
            continue;
        };
        let item = found.item.as_str();
        let role = if template == collection {
            match method {
                "post" => Role::Create,
                "get" => Role::List,
                _ => return None,
            }
        } else if template == item {
            match method {
                "get" => Role::Read,
                "put" => Role::Replace,
                "patch" => Role::Patch,
                "delete" => Role::Delete,
                _ => Role::Nested,
            }
        } else if template.starts_with(&format!("{item}/")) {
            Role::Nested
        } else {
            continue;
        };
        return Some(Resource {
            collection,
            param: found.param,
            id_field: found.id_field,
            role,
            creator: found.creator,
        });
    }
    if method != "post" {
        return None;
    }
    let op = deref(doc, paths.get(template)?).get("post")?;
    let created = created_ref(doc, op)?;
    templates
        .iter()
        .filter(|c| **c != template && !c.contains('{'))
        .find_map(|collection| {
            let found =
                collection_item(doc, response_doc, collection, templates, paths, &generator)?;
            (found.stored_ref.as_ref() == Some(&created)).then(|| Resource {
                collection: collection.to_string(),
                param: found.param,
                id_field: found.id_field,
                role: Role::Create,
                creator: found.creator,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({
            "openapi": "3.1.0",
            "paths": {
                "/things": {
                    "post": {"responses": {"201": {"description": "made", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Thing"},
                        "examples": {
                            "broken": {"value": {"id": 1}},
                            "good": {"value": {"id": 2, "name": "two"}}
                        }
                    }}}}},
                    "get": {"responses": {"200": {"description": "list", "content": {"application/json": {
                        "schema": {"type": "array", "items": {"$ref": "#/components/schemas/Thing"}}
                    }}}}}
                },
                "/things/{thing_id}": {
                    "get": {"responses": {
                        "200": {"description": "one", "headers": {"ETag": {"required": true, "schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Thing"}}}},
                        "4XX": {"description": "bad"}
                    }},
                    "delete": {"responses": {"204": {"description": "gone"}}}
                },
                "/things/{thing_id}/parts": {"get": {"responses": {"default": {"description": "parts"}}}}
            },
            "components": {"schemas": {"Thing": {
                "type": "object", "required": ["id", "name"],
                "properties": {"id": {"type": "integer", "minimum": 1}, "name": {"type": "string", "minLength": 2}}
            }}}
        })
    }

    #[test]
    fn picks_valid_examples_then_plain_values() {
        let spec = MockSpec::compile(doc()).expect("compiles");
        let create = spec.operation("/paths/~1things/post").expect("post");
        let media = &create.entries[0].media[0];
        // The invalid example is skipped, for the static answer and for Prefer.
        assert_eq!(media.value, Some(json!({"id": 2, "name": "two"})));
        assert_eq!(media.examples.len(), 1);
        let read = spec
            .operation("/paths/~1things~1{thing_id}/get")
            .expect("get");
        assert_eq!(
            read.entries[0].media[0].value,
            Some(json!({"id": 1, "name": "name"}))
        );
        assert_eq!(
            read.entries[0].headers,
            vec![("ETag".to_string(), "string".to_string())]
        );
        assert_eq!(read.entry(404).map(|e| e.key.as_str()), Some("4XX"));
        assert_eq!(read.entry(404).map(|e| e.status), Some(400));
        assert!(read.documents(404) && !read.documents(500));
    }

    #[test]
    fn event_streams_answer_a_short_stream_of_valid_events() {
        let doc = json!({
            "openapi": "3.1.0",
            "paths": {"/runs/{run_id}/events": {"get": {"responses": {"200": {"description": "events",
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Event"}},
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "example": "data: {\"broken\": true}\n\n",
                        "x-event-schema": {"$ref": "#/components/schemas/Event"}
                    }
                }}}}}},
            "components": {"schemas": {"Event": {
                "type": "object", "required": ["type", "n"], "additionalProperties": false,
                "properties": {"type": {"type": "string", "enum": ["tick"]}, "n": {"type": "integer", "minimum": 3}}
            }}}
        });
        let spec = MockSpec::compile(doc).expect("compiles");
        let op = spec
            .operation("/paths/~1runs~1{run_id}~1events/get")
            .expect("op");
        let entry = &op.entries[0];
        let json_media = entry.negotiate(None).expect("json by default");
        assert_eq!(json_media.media_type, "application/json");
        let sse = entry
            .negotiate(Some("text/event-stream"))
            .expect("asked for events");
        assert_eq!(sse.media_type, "text/event-stream");
        // The invalid example is replaced by a generated valid event.
        let events = crate::response::sse_events(&sse.body);
        assert_eq!(events.len(), 1, "{:?}", sse.body);
        let event: Value = serde_json::from_str(&events[0].data).expect("json data");
        assert_eq!(event["type"], "tick");
        assert!(event["n"].as_i64().is_some_and(|n| n >= 3));
    }

    #[test]
    fn item_schema_streams_answer_named_events_with_json_data() {
        let doc = json!({
            "openapi": "3.2.0",
            "paths": {"/runs/{run_id}/events": {"get": {"responses": {"200": {"description": "events",
                "content": {"text/event-stream": {"itemSchema": {
                    "type": "object", "required": ["event", "data"],
                    "properties": {
                        "event": {"type": "string", "enum": ["tick"]},
                        "data": {"type": "string", "contentMediaType": "application/json",
                            "contentSchema": {"$ref": "#/components/schemas/Tick"}}
                    }
                }}}}}}}},
            "components": {"schemas": {"Tick": {
                "type": "object", "required": ["n"], "additionalProperties": false,
                "properties": {"n": {"type": "integer", "minimum": 3}}
            }}}
        });
        let spec = MockSpec::compile(doc).expect("compiles");
        let op = spec
            .operation("/paths/~1runs~1{run_id}~1events/get")
            .expect("op");
        let sse = op.entries[0]
            .negotiate(Some("text/event-stream"))
            .expect("events");
        let events = crate::response::sse_events(&sse.body);
        assert_eq!(events.len(), 1, "{:?}", sse.body);
        assert_eq!(events[0].event.as_deref(), Some("tick"));
        let tick: Value = serde_json::from_str(&events[0].data).expect("json data");
        assert!(tick["n"].as_i64().is_some_and(|n| n >= 3), "{tick}");
    }

    #[test]
    fn infers_collections_from_paths() {
        let spec = MockSpec::compile(doc()).expect("compiles");
        let role = |ptr: &str| {
            spec.operation(ptr)
                .and_then(|o| o.resource.clone())
                .map(|r| (r.collection, r.param, r.id_field, r.role))
        };
        let things = |role: Role| {
            Some((
                "/things".to_string(),
                "thing_id".to_string(),
                "id".to_string(),
                role,
            ))
        };
        assert_eq!(role("/paths/~1things/post"), things(Role::Create));
        assert_eq!(role("/paths/~1things/get"), things(Role::List));
        assert_eq!(role("/paths/~1things~1{thing_id}/get"), things(Role::Read));
        assert_eq!(
            role("/paths/~1things~1{thing_id}/delete"),
            things(Role::Delete)
        );
        assert_eq!(
            role("/paths/~1things~1{thing_id}~1parts/get"),
            things(Role::Nested)
        );
    }

    #[test]
    fn a_collection_without_a_create_is_filled_by_a_free_standing_post() {
        let mut doc = doc();
        let answers = |status: &str, schema: &str| {
            json!({"responses": {status: {"description": "it", "headers": {"Location": {"schema": {"type": "string"}}},
                "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}}})
        };
        let paths = doc["paths"].as_object_mut().expect("paths");
        paths.insert(
            "/scan/{thing_id}".into(),
            json!({"post": answers("201", "Scan")}),
        );
        paths.insert(
            "/scans".into(),
            json!({"get": {"responses": {"200": {"description": "list"}}}}),
        );
        paths.insert(
            "/scans/{scan_id}".into(),
            json!({"get": answers("200", "Scan")}),
        );
        // A read-only collection whose items only a nested action makes stays static.
        paths.insert(
            "/things/{thing_id}/run".into(),
            json!({"post": answers("201", "Run")}),
        );
        paths.insert(
            "/runs".into(),
            json!({"get": {"responses": {"200": {"description": "list"}}}}),
        );
        paths.insert(
            "/runs/{run_id}".into(),
            json!({"get": answers("200", "Run")}),
        );
        let object =
            json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}});
        doc["components"]["schemas"]["Scan"] = object.clone();
        doc["components"]["schemas"]["Run"] = object;
        let spec = MockSpec::compile(doc).expect("compiles");
        let role = |ptr: &str| {
            spec.operation(ptr)
                .and_then(|o| o.resource.clone())
                .map(|r| (r.collection, r.param, r.role))
        };
        let scans = |role: Role| Some(("/scans".to_string(), "scan_id".to_string(), role));
        assert_eq!(role("/paths/~1scan~1{thing_id}/post"), scans(Role::Create));
        assert_eq!(role("/paths/~1scans/get"), scans(Role::List));
        assert_eq!(role("/paths/~1scans~1{scan_id}/get"), scans(Role::Read));
        assert_eq!(role("/paths/~1runs/get"), None);
        assert_eq!(role("/paths/~1runs~1{run_id}/get"), None);
        assert_eq!(
            role("/paths/~1things~1{thing_id}~1run/post").map(|r| r.2),
            Some(Role::Nested)
        );
    }
}
