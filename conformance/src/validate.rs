//! Validating HTTP requests against an OpenAPI document.
//!
//! Framework-agnostic: the caller hands over method, path, query, headers and body; the
//! validator answers which operation matched, or why the request breaks the spec, one
//! [`Violation`] per offending field. Every schema is compiled once, when the validator is
//! built, never per request. The server runs it in front of its handlers and the mock in
//! front of its responses.

use std::collections::BTreeMap;

use jsonschema::paths::LocationSegment;
use jsonschema::{Draft, Validator, error::ValidationErrorKind};
use serde_json::{Map, Value};

use crate::router::{PathRouter, parse_query};
use crate::spec::{SpecError, deref, escape_pointer, unescape_pointer, walk_schema_mut};

/// Where a parameter lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Path,
    Query,
    Header,
    Cookie,
    Body,
}

impl Location {
    pub fn as_str(self) -> &'static str {
        match self {
            Location::Path => "path",
            Location::Query => "query",
            Location::Header => "header",
            Location::Cookie => "cookie",
            Location::Body => "body",
        }
    }
}

/// One way a request breaks the spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    pub location: Location,
    /// The parameter name, or the body field as a dotted path (`configuration.temperature`,
    /// `tags[2]`); `body` for the body as a whole.
    pub field: String,
    /// The JSON Schema keyword that failed (`required`, `maximum`, `type`, ...), or
    /// `invalid_json`, `unknown_field`, `content_type`.
    pub code: String,
    /// A human-readable explanation that never echoes the offending value.
    pub message: String,
}

/// What the validator made of a request.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// No path template matches.
    NoRoute,
    /// The path matches but the method is not documented; `allow` lists the documented ones.
    MethodNotAllowed { allow: Vec<String> },
    /// The request matches `operation` and breaks the spec.
    Invalid {
        operation: &'a Operation,
        /// 400 for malformed parameters or syntax, 422 for a well-formed body that breaks its schema.
        status: u16,
        violations: Vec<Violation>,
    },
    /// The request is valid for `operation`.
    Valid {
        operation: &'a Operation,
        /// The parsed JSON body, when there is one.
        body: Option<Value>,
    },
}

#[derive(Debug)]
struct Param {
    name: String,
    location: Location,
    required: bool,
    explode: bool,
    /// `allowEmptyValue`: `name=` in the query counts as absent.
    allow_empty: bool,
    style: String,
    schema: Value,
    validator: Validator,
}

#[derive(Debug)]
struct Body {
    required: bool,
    /// Media type → schema validator (None: anything goes) and, for form bodies, the
    /// fields' schemas ([`form_fields`]).
    media: Vec<(String, Option<Validator>, Map<String, Value>)>,
}

/// A compiled operation.
#[derive(Debug)]
pub struct Operation {
    /// `operationId`, or `METHOD template` when the spec gives none.
    pub id: String,
    pub method: String,
    pub template: String,
    /// JSON pointer of the operation in the bundled document.
    pub pointer: String,
    params: Vec<Param>,
    body: Option<Body>,
}

/// A request, as the validator needs to see it.
pub struct Request<'r> {
    pub method: &'r str,
    pub path: &'r str,
    pub query: &'r str,
    /// Header lookup by lower-case name.
    pub header: &'r dyn Fn(&str) -> Option<String>,
    pub body: &'r [u8],
}

/// All operations of a document, compiled.
pub struct RequestValidator {
    router: PathRouter,
    /// Per template index: method (lower case) → operation.
    operations: Vec<BTreeMap<String, Operation>>,
}

impl std::fmt::Debug for RequestValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestValidator")
            .field("templates", &self.router.templates().len())
            .finish()
    }
}

/// Compiles a schema that may `$ref` into the document's components.
pub fn compile_schema(doc: &Value, schema: &Value, pointer: &str) -> Result<Validator, SpecError> {
    let mut root = Map::new();
    root.insert("$ref".into(), Value::String("#/x-agentplane-target".into()));
    let mut target = schema.clone();
    walk_schema_mut(&mut target, &mut bound_integer_format);
    root.insert("x-agentplane-target".into(), target);
    let mut components = referenced_components(doc, schema);
    if let Some(Value::Object(schemas)) = components.get_mut("schemas") {
        for s in schemas.values_mut() {
            walk_schema_mut(s, &mut bound_integer_format);
        }
    }
    if !components.is_empty() {
        root.insert("components".into(), Value::Object(components));
    }
    jsonschema::options()
        .with_draft(Draft::Draft202012)
        .should_validate_formats(true)
        .build(&Value::Object(root))
        .map_err(|e| SpecError::invalid("", pointer, format!("invalid schema: {e}")))
}

/// The range an integer `format` allows: `int32` and `int64` (OpenAPI's data types).
pub fn integer_format_range(format: &str) -> Option<(i64, i64)> {
    match format {
        "int32" => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        "int64" => Some((i64::MIN, i64::MAX)),
        _ => None,
    }
}

/// Turns an integer schema's `format: int32`/`int64` into the `minimum`/`maximum` it
/// implies (keeping a tighter bound the schema states): JSON Schema validators treat these
/// formats as annotations, so a value above 2^31−1 would otherwise pass as an `int32`.
fn bound_integer_format(schema: &mut Map<String, Value>) {
    let Some((lo, hi)) = schema
        .get("format")
        .and_then(Value::as_str)
        .and_then(integer_format_range)
    else {
        return;
    };
    let numeric = match schema.get("type") {
        Some(Value::String(t)) => t == "integer" || t == "number",
        Some(Value::Array(ts)) => ts.iter().any(|t| t == "integer" || t == "number"),
        _ => false,
    };
    if !numeric {
        return;
    }
    let exact = |v: &Value| -> Option<i128> {
        v.as_i64()
            .map(i128::from)
            .or_else(|| v.as_u64().map(i128::from))
    };
    // A stated bound is kept when it is at least as tight as the format's.
    let tighter = |v: &Value, bound: i64, low: bool| match (exact(v), v.as_f64()) {
        (Some(n), _) => (n >= i128::from(bound)) == low,
        #[expect(
            clippy::cast_precision_loss,
            reason = "a comparison with a float bound"
        )]
        (None, Some(f)) => (f >= bound as f64) == low,
        (None, None) => false,
    };
    if !schema.get("minimum").is_some_and(|v| tighter(v, lo, true)) {
        schema.insert("minimum".into(), Value::from(lo));
    }
    if !schema.get("maximum").is_some_and(|v| tighter(v, hi, false)) {
        schema.insert("maximum".into(), Value::from(hi));
    }
}

/// The components `schema` reaches through `#/components/...` references, transitively, in
/// the document's shape: each validator carries only what it can use rather than a copy of
/// every component (on a large spec that is most of the memory and the start-up time).
fn referenced_components(doc: &Value, schema: &Value) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![schema];
    while let Some(value) = stack.pop() {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref")
                    && let Some(rest) = r.strip_prefix("#/components/")
                {
                    let mut parts = rest.splitn(3, '/');
                    if let (Some(kind), Some(name)) = (parts.next(), parts.next()) {
                        let (kind, name) = (unescape_pointer(kind), unescape_pointer(name));
                        if seen.insert((kind.clone(), name.clone()))
                            && let Some(target) = doc
                                .get("components")
                                .and_then(|c| c.get(&kind))
                                .and_then(|k| k.get(&name))
                        {
                            if let Value::Object(entries) =
                                out.entry(kind).or_insert_with(|| Value::Object(Map::new()))
                            {
                                entries.insert(name, target.clone());
                            }
                            stack.push(target);
                        }
                    }
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out
}

impl RequestValidator {
    /// Compiles every operation of a bundled, 3.1-normalized document.
    pub fn new(doc: &Value) -> Result<Self, SpecError> {
        let mut router = PathRouter::new();
        let mut operations: Vec<BTreeMap<String, Operation>> = Vec::new();
        let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
            return Ok(Self { router, operations });
        };
        for (template, item) in paths {
            let item_ptr = format!("/paths/{}", escape_pointer(template));
            let item = deref(doc, item);
            let index = router.insert(template);
            if operations.len() <= index {
                operations.resize_with(index + 1, BTreeMap::new);
            }
            let shared = item
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for method in crate::METHODS {
                let Some(op) = item.get(*method) else {
                    continue;
                };
                let pointer = format!("{item_ptr}/{method}");
                let compiled = compile_operation(doc, template, method, op, &shared, &pointer)?;
                operations[index].insert((*method).to_string(), compiled);
            }
        }
        Ok(Self { router, operations })
    }

    /// Every compiled operation.
    pub fn operations(&self) -> impl Iterator<Item = &Operation> {
        self.operations.iter().flat_map(|m| m.values())
    }

    /// Finds the operation for a method and path, without validating.
    pub fn route(&self, method: &str, path: &str) -> Result<&Operation, Option<Vec<String>>> {
        let Some(m) = self.router.find(path) else {
            return Err(None);
        };
        let by_method = &self.operations[m.index];
        by_method
            .get(&method.to_ascii_lowercase())
            .ok_or_else(|| Some(by_method.keys().map(|k| k.to_ascii_uppercase()).collect()))
    }

    /// Validates a request.
    pub fn validate(&self, req: &Request<'_>) -> Outcome<'_> {
        let Some(m) = self.router.find(req.path) else {
            return Outcome::NoRoute;
        };
        let by_method = &self.operations[m.index];
        let method = req.method.to_ascii_lowercase();
        let Some(operation) = by_method.get(&method) else {
            if method == "head"
                && let Some(get) = by_method.get("get")
            {
                return self.check(get, &m.params, req);
            }
            return Outcome::MethodNotAllowed {
                allow: by_method.keys().map(|k| k.to_ascii_uppercase()).collect(),
            };
        };
        self.check(operation, &m.params, req)
    }

    fn check<'a>(
        &'a self, operation: &'a Operation, path_params: &[(&str, String)], req: &Request<'_>,
    ) -> Outcome<'a> {
        let mut violations = Vec::new();
        let query = parse_query(req.query);
        for param in &operation.params {
            let raw: Option<Value> = match param.location {
                Location::Path => path_params
                    .iter()
                    .find(|(n, _)| *n == param.name)
                    .map(|(_, v)| coerce_scalar_or_array(v, &param.schema, false)),
                Location::Query => query_value(param, &query),
                Location::Header => (req.header)(&param.name.to_ascii_lowercase())
                    .map(|v| coerce_scalar_or_array(&v, &param.schema, false)),
                Location::Cookie => (req.header)("cookie").and_then(|c| {
                    c.split(';').find_map(|kv| {
                        let (k, v) = kv.trim().split_once('=')?;
                        (k == param.name).then(|| coerce_scalar_or_array(v, &param.schema, false))
                    })
                }),
                Location::Body => None,
            };
            match raw {
                None if param.required => violations.push(Violation {
                    location: param.location,
                    field: param.name.clone(),
                    code: "required".into(),
                    message: format!(
                        "the {} parameter `{}` is required",
                        param.location.as_str(),
                        param.name
                    ),
                }),
                None => {}
                Some(value) => {
                    for error in param.validator.iter_errors(&value) {
                        push_violations(param.location, &param.name, &error, &mut violations);
                    }
                }
            }
        }
        if !violations.is_empty() {
            return Outcome::Invalid {
                operation,
                status: 400,
                violations,
            };
        }
        let mut parsed = None;
        if let Some(body) = &operation.body {
            match check_body(body, req) {
                Ok(value) => parsed = value,
                Err((status, v)) => {
                    return Outcome::Invalid {
                        operation,
                        status,
                        violations: v,
                    };
                }
            }
        }
        Outcome::Valid {
            operation,
            body: parsed,
        }
    }
}

type BodyCheck = Result<Option<Value>, (u16, Vec<Violation>)>;

fn check_body(body: &Body, req: &Request<'_>) -> BodyCheck {
    let whole = |code: &str, message: String| Violation {
        location: Location::Body,
        field: "body".into(),
        code: code.into(),
        message,
    };
    if req.body.is_empty() {
        if body.required {
            return Err((
                400,
                vec![whole("required", "a request body is required".into())],
            ));
        }
        return Ok(None);
    }
    let content_type = (req.header)("content-type").unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let matched = body
        .media
        .iter()
        .find(|(mt, _, _)| media_matches(mt, &essence));
    let Some((media, validator, fields)) = matched else {
        let expected: Vec<&str> = body.media.iter().map(|(m, _, _)| m.as_str()).collect();
        return Err((
            400,
            vec![Violation {
                location: Location::Header,
                field: "Content-Type".into(),
                code: "content_type".into(),
                message: format!("the body must be sent as {}", expected.join(" or ")),
            }],
        ));
    };
    if media.eq_ignore_ascii_case("multipart/form-data") {
        return check_multipart(&content_type, req.body, validator.as_ref(), fields);
    }
    if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        let pairs = url::form_urlencoded::parse(req.body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        return check_form(form_value(fields, pairs), validator.as_ref());
    }
    let is_json = media.contains("json") || media == "*/*" && essence.contains("json");
    if !is_json {
        return Ok(None);
    }
    let value: Value = match serde_json::from_slice(req.body) {
        Ok(v) => v,
        Err(e) => {
            return Err((
                400,
                vec![whole(
                    "invalid_json",
                    format!("the body is not valid JSON: {e}"),
                )],
            ));
        }
    };
    let Some(validator) = validator.as_ref() else {
        return Ok(Some(value));
    };
    let mut violations = Vec::new();
    for error in validator.iter_errors(&value) {
        push_violations(Location::Body, "", &error, &mut violations);
    }
    if violations.is_empty() {
        Ok(Some(value))
    } else {
        Err((422, violations))
    }
}

/// The parts of a `multipart/form-data` body: (name, content) in order, or why it is malformed.
pub fn multipart_parts(content_type: &str, body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let boundary = content_type
        .split(';')
        .skip(1)
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .filter(|b| !b.is_empty())
        .ok_or("the Content-Type has no boundary")?;
    let delimiter = format!("--{boundary}").into_bytes();
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|i| i + from)
    };
    let mut pos = find(body, &delimiter, 0).ok_or("the body has no part")?;
    let mut parts = Vec::new();
    loop {
        let after = pos + delimiter.len();
        if body.get(after..after + 2) == Some(b"--") {
            return Ok(parts);
        }
        let start = after
            + if body.get(after..after + 2) == Some(b"\r\n") {
                2
            } else {
                0
            };
        let next = find(body, &delimiter, start).ok_or("a part is not closed by the boundary")?;
        let part = &body[start..next];
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let split = find(part, b"\r\n\r\n", 0).ok_or("a part has no header block")?;
        let headers = String::from_utf8_lossy(&part[..split]);
        let name = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .and_then(|l| {
                l.split(';').map(str::trim).find_map(|p| {
                    p.strip_prefix("name=")
                        .map(|v| v.trim_matches('"').to_string())
                })
            })
            .ok_or("a part has no Content-Disposition name")?;
        parts.push((name, part[split + 4..].to_vec()));
        pos = next;
    }
}

/// Checks a `multipart/form-data` body: well-formed, and its parts (as strings) against the
/// schema, so a missing required part names itself. Nothing is handed on: the typed decoder
/// reads the form.
fn check_multipart(
    content_type: &str, body: &[u8], validator: Option<&Validator>, fields: &Map<String, Value>,
) -> BodyCheck {
    let parts = multipart_parts(content_type, body).map_err(|message| {
        (
            400,
            vec![Violation {
                location: Location::Body,
                field: "body".into(),
                code: "invalid_multipart".into(),
                message: format!("the body is not valid multipart/form-data: {message}"),
            }],
        )
    })?;
    let pairs = parts
        .into_iter()
        .map(|(name, content)| (name, String::from_utf8_lossy(&content).into_owned()))
        .collect();
    check_form(form_value(fields, pairs), validator)
}

/// Judges a form body, read back as [`form_value`], against its schema. Nothing is handed
/// on: the typed decoder reads the form.
fn check_form(value: Value, validator: Option<&Validator>) -> BodyCheck {
    let Some(validator) = validator else {
        return Ok(None);
    };
    let mut violations = Vec::new();
    for error in validator.iter_errors(&value) {
        push_violations(Location::Body, "", &error, &mut violations);
    }
    if violations.is_empty() {
        Ok(None)
    } else {
        Err((422, violations))
    }
}

/// The top-level property schemas of a form body's schema, by name (`$ref`s and one level of
/// `allOf` resolved): a form's fields arrive as text, and each is read back as its
/// property's type.
pub fn form_fields(doc: &Value, schema: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    let schema = deref(doc, schema);
    let parts = schema.get("allOf").and_then(Value::as_array);
    for s in std::iter::once(schema).chain(parts.into_iter().flatten().map(|s| deref(doc, s))) {
        if let Some(Value::Object(props)) = s.get("properties") {
            for (name, prop) in props {
                let mut prop = deref(doc, prop).clone();
                if let Some(items) = prop.get("items").map(|i| deref(doc, i).clone()) {
                    prop["items"] = items;
                }
                out.entry(name.clone()).or_insert(prop);
            }
        }
    }
    out
}

/// A form's fields (`application/x-www-form-urlencoded` pairs or `multipart/form-data` parts,
/// as text) as the JSON value its schema judges: each field read as its property's type
/// (an object from its JSON text), the values of an array property (a repeated field)
/// gathered; of another repeated field the first counts.
pub fn form_value(fields: &Map<String, Value>, pairs: Vec<(String, String)>) -> Value {
    let mut out = Map::new();
    let any = Value::Bool(true);
    for (name, text) in pairs {
        let schema = fields.get(&name).unwrap_or(&any);
        let types = schema_types(schema);
        let read = |schema: &Value, text: &str| {
            if schema_types(schema)
                .iter()
                .any(|t| t == "object" || t == "array")
                && let Ok(v) = serde_json::from_str::<Value>(text)
                && (v.is_object() || v.is_array())
            {
                return v;
            }
            coerce_scalar(text, schema)
        };
        if types.iter().any(|t| t == "array") {
            let items = schema.get("items").unwrap_or(&any);
            if let Value::Array(list) = out.entry(name).or_insert_with(|| Value::Array(Vec::new()))
            {
                list.push(read(items, &text));
            }
        } else if !out.contains_key(&name) {
            let v = read(schema, &text);
            out.insert(name, v);
        }
    }
    Value::Object(out)
}

/// Rewrites numbers with a zero fraction (`26.0`) as integers, in place; true when any
/// changed. JSON Schema counts `26.0` as an integer, typed decoders often do not.
pub fn integral_floats_to_integers(value: &mut Value) -> bool {
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                *value = Value::from(f as i64);
                true
            }
            _ => false,
        },
        Value::Array(items) => {
            let mut changed = false;
            for v in items {
                changed |= integral_floats_to_integers(v);
            }
            changed
        }
        Value::Object(map) => {
            let mut changed = false;
            for v in map.values_mut() {
                changed |= integral_floats_to_integers(v);
            }
            changed
        }
        _ => false,
    }
}

fn media_matches(declared: &str, actual: &str) -> bool {
    let declared = declared.to_ascii_lowercase();
    if declared == actual || declared == "*/*" {
        return true;
    }
    if let Some(prefix) = declared.strip_suffix("/*") {
        return actual.starts_with(prefix) && actual[prefix.len()..].starts_with('/');
    }
    // application/json also accepts application/*+json
    declared == "application/json"
        && actual.starts_with("application/")
        && actual.ends_with("+json")
}

/// Adds the violations of one schema error. A failed `oneOf`/`anyOf` reports what names the
/// real field: when only one branch could have been meant (the others fail on the type alone,
/// like the `null` branch of a nullable object, or on the `const` of a tag property such as a
/// node's `type`), that branch's errors; else the errors every candidate branch shares (a
/// missing or unknown tag: `nodes[0].type`); else the `oneOf` itself.
fn push_violations(
    location: Location, base: &str, error: &jsonschema::ValidationError<'_>,
    out: &mut Vec<Violation>,
) {
    if let ValidationErrorKind::AnyOf { context } | ValidationErrorKind::OneOfNotValid { context } =
        error.kind()
    {
        let parent = error.instance_path().as_str();
        let plausible: Vec<&Vec<jsonschema::ValidationError<'static>>> = context
            .iter()
            .filter(|branch| {
                let wrong_type = branch.iter().all(|e| {
                    matches!(e.kind(), ValidationErrorKind::Type { .. })
                        && e.instance_path().as_str() == parent
                });
                !wrong_type && !branch.iter().any(|e| wrong_tag(parent, e))
            })
            .collect();
        if let [branch] = plausible.as_slice() {
            for e in branch.iter() {
                push_violations(location, base, e, out);
            }
            return;
        }
        let candidates: Vec<&Vec<jsonschema::ValidationError<'static>>> = if plausible.is_empty() {
            context.iter().collect()
        } else {
            plausible
        };
        if let Some((first, rest)) = candidates.split_first() {
            let shared: Vec<&jsonschema::ValidationError<'static>> = first
                .iter()
                .filter(|e| rest.iter().all(|b| b.iter().any(|o| same_error(e, o))))
                .collect();
            if !shared.is_empty() {
                for e in shared {
                    out.push(to_violation(location, base, e));
                }
                return;
            }
        }
    }
    out.push(to_violation(location, base, error));
}

/// Whether `e` is a `const`/`enum` failure of a direct property of the object at `parent`: the
/// branch is for another value of a tag (a node of another `type`).
fn wrong_tag(parent: &str, e: &jsonschema::ValidationError<'_>) -> bool {
    let path = e.instance_path().as_str();
    let is_child = path
        .strip_prefix(parent)
        .and_then(|rest| rest.strip_prefix('/'))
        .is_some_and(|name| !name.is_empty() && !name.contains('/'));
    is_child && matches!(e.kind().keyword(), "const" | "enum")
}

/// Whether two errors say the same thing of the same place.
fn same_error(a: &jsonschema::ValidationError<'_>, b: &jsonschema::ValidationError<'_>) -> bool {
    if a.instance_path().as_str() != b.instance_path().as_str()
        || a.kind().keyword() != b.kind().keyword()
    {
        return false;
    }
    match (a.kind(), b.kind()) {
        (
            ValidationErrorKind::Required { property: p },
            ValidationErrorKind::Required { property: q },
        ) => p == q,
        _ => true,
    }
}

/// Turns a schema error into a violation whose field is a dotted path under `base`.
fn to_violation(
    location: Location, base: &str, error: &jsonschema::ValidationError<'_>,
) -> Violation {
    let mut field = base.to_string();
    for segment in error.instance_path().iter() {
        match segment {
            LocationSegment::Property(p) => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(&p);
            }
            LocationSegment::Index(i) => field.push_str(&format!("[{i}]")),
        }
    }
    let join = |field: &str, name: &str| {
        if field.is_empty() {
            name.to_string()
        } else {
            format!("{field}.{name}")
        }
    };
    let (field, code) = match error.kind() {
        ValidationErrorKind::Required { property } => (
            join(&field, property.as_str().unwrap_or_default()),
            "required".to_string(),
        ),
        ValidationErrorKind::AdditionalProperties { unexpected } if unexpected.len() == 1 => {
            (join(&field, &unexpected[0]), "unknown_field".to_string())
        }
        ValidationErrorKind::AdditionalProperties { .. } => (field, "unknown_field".to_string()),
        kind => (field, kind.keyword().to_string()),
    };
    let field = if field.is_empty() {
        "body".to_string()
    } else {
        field
    };
    let mut message = error.masked().to_string();
    if message.len() > 300 {
        let mut cut = 300;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    Violation {
        location,
        field,
        code,
        message,
    }
}

fn schema_types(schema: &Value) -> Vec<String> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(|t| t.as_str().map(str::to_string))
            .collect(),
        _ => {
            if let Some(Value::Array(values)) = schema.get("enum") {
                let mut types: Vec<String> = values
                    .iter()
                    .map(|v| match v {
                        Value::Number(n) if n.is_i64() || n.is_u64() => "integer".to_string(),
                        Value::Number(_) => "number".to_string(),
                        Value::Bool(_) => "boolean".to_string(),
                        _ => "string".to_string(),
                    })
                    .collect();
                types.dedup();
                types
            } else {
                vec!["string".into()]
            }
        }
    }
}

/// Turns a raw string into the JSON value its schema most likely means, so that the schema
/// validator can judge it (`"5"` → `5` for an integer parameter; a non-number stays a string
/// and fails the type check).
pub fn coerce_scalar(raw: &str, schema: &Value) -> Value {
    let types = schema_types(schema);
    let has = |t: &str| types.iter().any(|x| x == t);
    if has("integer")
        && let Ok(n) = raw.parse::<i64>()
    {
        return Value::from(n);
    }
    if has("number")
        && let Ok(n) = raw.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(n)
    {
        return Value::Number(n);
    }
    if has("boolean") && (raw == "true" || raw == "false") {
        return Value::Bool(raw == "true");
    }
    if has("null") && raw.is_empty() && !has("string") {
        return Value::Null;
    }
    Value::String(raw.to_string())
}

fn coerce_scalar_or_array(raw: &str, schema: &Value, _explode: bool) -> Value {
    if schema_types(schema).iter().any(|t| t == "array") {
        let items = schema.get("items").cloned().unwrap_or(Value::Null);
        if raw.is_empty() {
            return Value::Array(vec![]);
        }
        Value::Array(raw.split(',').map(|p| coerce_scalar(p, &items)).collect())
    } else {
        coerce_scalar(raw, schema)
    }
}

fn query_value(param: &Param, query: &[(String, String)]) -> Option<Value> {
    let types = schema_types(&param.schema);
    if param.style == "deepObject" || (types.iter().any(|t| t == "object") && param.explode) {
        let props = param.schema.get("properties");
        let mut obj = Map::new();
        for (k, v) in query {
            let key = if param.style == "deepObject" {
                k.strip_prefix(param.name.as_str())
                    .and_then(|r| r.strip_prefix('['))
                    .and_then(|r| r.strip_suffix(']'))
            } else {
                props.and_then(|p| p.get(k)).map(|_| k.as_str())
            };
            if let Some(key) = key {
                let sub = props
                    .and_then(|p| p.get(key))
                    .cloned()
                    .unwrap_or(Value::Null);
                obj.insert(key.to_string(), coerce_scalar(v, &sub));
            }
        }
        return (!obj.is_empty()).then_some(Value::Object(obj));
    }
    let values: Vec<&str> = query
        .iter()
        .filter(|(k, _)| *k == param.name)
        .map(|(_, v)| v.as_str())
        .collect();
    if values.is_empty() {
        return None;
    }
    if types.iter().any(|t| t == "array") {
        let items = param.schema.get("items").cloned().unwrap_or(Value::Null);
        let parts: Vec<Value> = if param.explode && values.len() > 1 {
            values.iter().map(|v| coerce_scalar(v, &items)).collect()
        } else if param.explode {
            if values[0].is_empty() {
                vec![]
            } else {
                vec![coerce_scalar(values[0], &items)]
            }
        } else {
            return Some(coerce_scalar_or_array(values[0], &param.schema, false));
        };
        return Some(Value::Array(parts));
    }
    if param.allow_empty && values[0].is_empty() {
        return None;
    }
    Some(coerce_scalar(values[0], &param.schema))
}

fn compile_operation(
    doc: &Value, template: &str, method: &str, op: &Value, shared: &[Value], pointer: &str,
) -> Result<Operation, SpecError> {
    let id = op
        .get("operationId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{} {template}", method.to_ascii_uppercase()));
    // Operation-level parameters override path-level ones with the same name and location.
    let mut raw: Vec<(String, &Value)> = Vec::new();
    for (i, p) in shared.iter().enumerate() {
        raw.push((
            format!("/paths/{}/parameters/{i}", escape_pointer(template)),
            p,
        ));
    }
    if let Some(ps) = op.get("parameters").and_then(Value::as_array) {
        for (i, p) in ps.iter().enumerate() {
            let resolved = deref(doc, p);
            let key = (resolved.get("name"), resolved.get("in"));
            raw.retain(|(_, q)| {
                let q = deref(doc, q);
                (q.get("name"), q.get("in")) != key
            });
            raw.push((format!("{pointer}/parameters/{i}"), p));
        }
    }
    let mut params = Vec::new();
    for (ptr, p) in raw {
        let p = deref(doc, p);
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| SpecError::invalid("", ptr.as_str(), "parameter without a name"))?;
        let location = match p.get("in").and_then(Value::as_str) {
            Some("path") => Location::Path,
            Some("query") => Location::Query,
            Some("header") => Location::Header,
            Some("cookie") => Location::Cookie,
            other => {
                return Err(SpecError::invalid(
                    "",
                    ptr.as_str(),
                    format!("parameter `in` is {other:?}"),
                ));
            }
        };
        if location == Location::Header
            && ["accept", "content-type", "authorization"]
                .contains(&name.to_ascii_lowercase().as_str())
        {
            continue; // OpenAPI says these are ignored as parameters
        }
        let schema = p
            .get("schema")
            .or_else(|| {
                p.get("content")
                    .and_then(Value::as_object)
                    .and_then(|c| c.values().next())
                    .and_then(|m| m.get("schema"))
            })
            .cloned()
            .unwrap_or(Value::Bool(true));
        let resolved_schema = deref(doc, &schema).clone();
        let style = p
            .get("style")
            .and_then(Value::as_str)
            .unwrap_or(match location {
                Location::Query | Location::Cookie => "form",
                _ => "simple",
            });
        let explode = p
            .get("explode")
            .and_then(Value::as_bool)
            .unwrap_or(style == "form");
        params.push(Param {
            name: name.to_string(),
            location,
            required: location == Location::Path
                || p.get("required").and_then(Value::as_bool).unwrap_or(false),
            explode,
            allow_empty: p.get("allowEmptyValue").and_then(Value::as_bool) == Some(true),
            style: style.to_string(),
            validator: compile_schema(doc, &schema, &format!("{ptr}/schema"))?,
            schema: resolved_schema,
        });
    }
    let body = match op.get("requestBody") {
        None => None,
        Some(b) => {
            let b = deref(doc, b);
            let mut media = Vec::new();
            if let Some(content) = b.get("content").and_then(Value::as_object) {
                for (mt, m) in content {
                    let v = match m.get("schema") {
                        Some(s) => Some(compile_schema(
                            doc,
                            s,
                            &format!(
                                "{pointer}/requestBody/content/{}/schema",
                                escape_pointer(mt)
                            ),
                        )?),
                        None => None,
                    };
                    let fields = m
                        .get("schema")
                        .map(|s| form_fields(doc, s))
                        .unwrap_or_default();
                    media.push((mt.clone(), v, fields));
                }
            }
            Some(Body {
                required: b.get("required").and_then(Value::as_bool).unwrap_or(false),
                media,
            })
        }
    };
    Ok(Operation {
        id,
        method: method.to_string(),
        template: template.to_string(),
        pointer: pointer.to_string(),
        params,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> Value {
        json!({
            "openapi": "3.1.0",
            "paths": {
                "/items": {
                    "get": {
                        "operationId": "listItems",
                        "parameters": [
                            {"name": "per_page", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
                            {"name": "fields", "in": "query", "style": "form", "explode": false,
                             "schema": {"type": "array", "items": {"type": "string", "enum": ["id", "name"]}}},
                            {"name": "filter[created_at][gte]", "in": "query", "schema": {"type": "string", "format": "date-time"}}
                        ]
                    },
                    "post": {
                        "operationId": "createItem",
                        "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Item"}}}}
                    }
                },
                "/items/{id}": {"get": {"operationId": "getItem", "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "maxLength": 5}}]}}
            },
            "components": {"schemas": {"Item": {
                "type": "object", "required": ["name"], "additionalProperties": false,
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "config": {"type": "object", "additionalProperties": false, "properties": {"temperature": {"type": "number", "maximum": 2}}},
                    "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}}
                }
            }}}
        })
    }

    fn run(
        v: &RequestValidator, method: &str, path: &str, query: &str, body: &str,
    ) -> Result<String, (u16, Vec<(String, String)>)> {
        let header = |name: &str| (name == "content-type").then(|| "application/json".to_string());
        let req = Request {
            method,
            path,
            query,
            header: &header,
            body: body.as_bytes(),
        };
        match v.validate(&req) {
            Outcome::Valid { operation, .. } => Ok(operation.id.clone()),
            Outcome::Invalid {
                status, violations, ..
            } => Err((
                status,
                violations.into_iter().map(|v| (v.field, v.code)).collect(),
            )),
            Outcome::NoRoute => Err((404, vec![])),
            Outcome::MethodNotAllowed { allow } => {
                Err((405, allow.into_iter().map(|a| (a, String::new())).collect()))
            }
        }
    }

    #[test]
    fn accepts_valid_requests() {
        let v = RequestValidator::new(&spec()).expect("compiles");
        assert_eq!(
            run(
                &v,
                "GET",
                "/items",
                "per_page=5&fields=id,name&filter%5Bcreated_at%5D%5Bgte%5D=2024-01-01T00:00:00Z",
                ""
            ),
            Ok("listItems".into())
        );
        assert_eq!(
            run(
                &v,
                "POST",
                "/items",
                "",
                r#"{"name":"a","config":{"temperature":1.5}}"#
            ),
            Ok("createItem".into())
        );
        assert_eq!(run(&v, "GET", "/items/abc", "", ""), Ok("getItem".into()));
    }

    #[test]
    fn names_each_bad_field() {
        let v = RequestValidator::new(&spec()).expect("compiles");
        assert_eq!(
            run(&v, "GET", "/items", "per_page=500", ""),
            Err((400, vec![("per_page".into(), "maximum".into())]))
        );
        assert_eq!(
            run(&v, "GET", "/items", "per_page=x", ""),
            Err((400, vec![("per_page".into(), "type".into())]))
        );
        assert_eq!(
            run(&v, "GET", "/items", "fields=id,nope", ""),
            Err((400, vec![("fields[1]".into(), "enum".into())]))
        );
        assert_eq!(
            run(&v, "GET", "/items", "filter[created_at][gte]=yesterday", ""),
            Err((
                400,
                vec![("filter[created_at][gte]".into(), "format".into())]
            ))
        );
        assert_eq!(
            run(&v, "GET", "/items/abcdef", "", ""),
            Err((400, vec![("id".into(), "maxLength".into())]))
        );
        let Err((status, fields)) = run(
            &v,
            "POST",
            "/items",
            "",
            r#"{"config":{"temperature":3,"x":1},"tags":["ok","toolong"],"extra":true}"#,
        ) else {
            panic!("must fail")
        };
        assert_eq!(status, 422);
        for expected in ["name", "config.temperature", "config.x", "tags[1]", "extra"] {
            assert!(
                fields.iter().any(|(f, _)| f == expected),
                "{expected} missing from {fields:?}"
            );
        }
        assert_eq!(
            run(&v, "POST", "/items", "", "{nope"),
            Err((400, vec![("body".into(), "invalid_json".into())]))
        );
        assert_eq!(
            run(&v, "POST", "/items", "", ""),
            Err((400, vec![("body".into(), "required".into())]))
        );
    }

    #[test]
    fn integer_formats_bound_their_values() {
        let doc = json!({"openapi": "3.1.0", "components": {"schemas": {
            "Count": {"type": "integer", "format": "int32", "minimum": 0}
        }}});
        let v = compile_schema(&doc, &json!({"$ref": "#/components/schemas/Count"}), "")
            .expect("compiles");
        assert!(v.is_valid(&json!(2_147_483_647)));
        assert!(!v.is_valid(&json!(2_147_483_648_i64)));
        assert!(
            !v.is_valid(&json!(-1)),
            "the schema's tighter minimum stays"
        );
        let v = compile_schema(
            &doc,
            &json!({"type": ["integer", "null"], "format": "int64"}),
            "",
        )
        .expect("compiles");
        assert!(
            v.is_valid(&json!(i64::MAX))
                && v.is_valid(&json!(i64::MIN))
                && v.is_valid(&Value::Null)
        );
        assert!(!v.is_valid(&json!(1_u64 << 63)));
        let v = compile_schema(&doc, &json!({"type": "string", "format": "int32"}), "")
            .expect("compiles");
        assert!(
            v.is_valid(&json!("99999999999")),
            "only integers are bounded"
        );
    }

    #[test]
    fn multipart_parts_are_split_and_named() {
        let body = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.md\"\r\nContent-Type: text/markdown\r\n\r\n# Hi\r\nthere\r\n--XyZ\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nT\r\n--XyZ--\r\n";
        let parts = multipart_parts("multipart/form-data; boundary=\"XyZ\"", body).expect("parses");
        assert_eq!(
            parts,
            vec![
                ("file".to_string(), b"# Hi\r\nthere".to_vec()),
                ("title".to_string(), b"T".to_vec())
            ]
        );
        assert!(multipart_parts("multipart/form-data", body).is_err());
        assert!(
            multipart_parts("multipart/form-data; boundary=XyZ", b"--XyZ\r\nno headers").is_err()
        );
    }

    #[test]
    fn integral_floats_become_integers() {
        let mut v = json!({"a": 26.0, "b": [1.5, 2.0], "c": 3});
        assert!(integral_floats_to_integers(&mut v));
        assert_eq!(v, json!({"a": 26, "b": [1.5, 2], "c": 3}));
        assert!(!integral_floats_to_integers(&mut v));
    }

    #[test]
    fn reports_unknown_routes_and_methods() {
        let v = RequestValidator::new(&spec()).expect("compiles");
        assert_eq!(run(&v, "GET", "/nope", "", ""), Err((404, vec![])));
        assert_eq!(
            run(&v, "DELETE", "/items", "", ""),
            Err((
                405,
                vec![
                    ("GET".into(), String::new()),
                    ("POST".into(), String::new())
                ]
            ))
        );
    }
}
