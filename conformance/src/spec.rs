//! Loading OpenAPI documents: YAML or JSON, one file or many.
//!
//! Few tools follow `$ref`s across files reliably, so everything downstream (codegen, the
//! validator, the mock) works on one *bundled* document: external references are either
//! hoisted into `components` (when the root document names them there) or inlined.
//! OpenAPI 3.0 documents are normalized to 3.1 forms so that one JSON Schema 2020-12
//! validator serves both; [`downconvert_to_30`] goes the other way for 3.0-only consumers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Why a document could not be loaded. Every variant names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML or JSON: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{file}#{pointer}: {message}")]
    Invalid {
        file: String,
        pointer: String,
        message: String,
    },
}

impl SpecError {
    pub fn invalid(
        file: impl Into<String>, pointer: impl Into<String>, msg: impl Into<String>,
    ) -> Self {
        SpecError::Invalid {
            file: file.into(),
            pointer: pointer.into(),
            message: msg.into(),
        }
    }
}

/// Reads one YAML or JSON file into a JSON value.
pub fn read_document(path: &Path) -> Result<Value, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|source| SpecError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_document(&text).map_err(|message| SpecError::Parse {
        path: path.to_path_buf(),
        message,
    })
}

/// Parses YAML or JSON text (JSON is YAML, but a JSON parser gives better errors for it).
pub fn parse_document(text: &str) -> Result<Value, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        serde_json::from_str(text).map_err(|e| e.to_string())
    } else {
        yaml_serde::from_str::<Value>(text).map_err(|e| e.to_string())
    }
}

/// Loads a document from `path`, bundles its external references and normalizes it to 3.1.
pub fn load(path: &Path) -> Result<Value, SpecError> {
    load_with_sources(path).map(|(doc, _)| doc)
}

/// [`load`], and every file the document was read from (the root first), so that a caller
/// can watch them for changes.
pub fn load_with_sources(path: &Path) -> Result<(Value, Vec<PathBuf>), SpecError> {
    let (mut doc, files) = bundle_with_sources(path)?;
    normalize_to_31(&mut doc);
    Ok((doc, files))
}

/// Escapes one JSON pointer segment.
pub fn escape_pointer(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

/// Unescapes one JSON pointer segment.
pub fn unescape_pointer(segment: &str) -> String {
    segment.replace("~1", "/").replace("~0", "~")
}

/// Resolves a local `#/...` reference inside `doc`.
pub fn resolve_local<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    doc.pointer(pointer)
}

/// `schema` and, through `$ref`s, every branch of its `allOf`, `anyOf` and `oneOf`, nested
/// ones too (up to a depth that recursive schemas cannot pass).
pub fn composed<'a>(doc: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
    fn walk<'a>(doc: &'a Value, schema: &'a Value, depth: usize, out: &mut Vec<&'a Value>) {
        let schema = deref(doc, schema);
        if depth > 12 || !schema.is_object() {
            return;
        }
        out.push(schema);
        for key in ["allOf", "anyOf", "oneOf"] {
            for branch in schema
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                walk(doc, branch, depth + 1, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(doc, schema, 0, &mut out);
    out
}

/// Follows `$ref` chains (local only) until a non-reference value.
pub fn deref<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    for _ in 0..64 {
        match value.get("$ref").and_then(Value::as_str) {
            Some(r) => match resolve_local(doc, r) {
                Some(target) => value = target,
                None => return value,
            },
            None => return value,
        }
    }
    value
}

struct Bundler {
    root: PathBuf,
    files: BTreeMap<PathBuf, Value>,
    /// (file, pointer) of an external target → the local component reference that replaces it.
    hoisted: BTreeMap<(PathBuf, String), String>,
}

/// Reads `root` and every file it references, and returns one self-contained document.
pub fn bundle(root: &Path) -> Result<Value, SpecError> {
    bundle_with_sources(root).map(|(doc, _)| doc)
}

/// [`bundle`], and the files it read (the root first).
pub fn bundle_with_sources(root: &Path) -> Result<(Value, Vec<PathBuf>), SpecError> {
    let root = root.canonicalize().map_err(|source| SpecError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut bundler = Bundler {
        root: root.clone(),
        files: BTreeMap::new(),
        hoisted: BTreeMap::new(),
    };
    let mut doc = bundler.file(&root)?.clone();
    // Components of the root that are themselves external references get hoisted: other
    // references to the same target then point at the component instead of a copy.
    if let Some(components) = doc.get("components").and_then(Value::as_object) {
        for (kind, entries) in components {
            let Some(entries) = entries.as_object() else {
                continue;
            };
            for (name, entry) in entries {
                if let Some(r) = entry.get("$ref").and_then(Value::as_str)
                    && !r.starts_with('#')
                {
                    let key = bundler.target(&root, r)?;
                    let local = format!(
                        "#/components/{}/{}",
                        escape_pointer(kind),
                        escape_pointer(name)
                    );
                    bundler.hoisted.insert(key, local);
                }
            }
        }
    }
    let mut stack = Vec::new();
    bundler.rewrite(&root, &mut doc, "", &mut stack, true)?;
    apply_secured_operation_defaults(&mut doc);
    let mut files = vec![root.clone()];
    files.extend(bundler.files.into_keys().filter(|f| *f != root));
    Ok((doc, files))
}

impl Bundler {
    fn file(&mut self, path: &Path) -> Result<&Value, SpecError> {
        if !self.files.contains_key(path) {
            let doc = read_document(path)?;
            self.files.insert(path.to_path_buf(), doc);
        }
        self.files
            .get(path)
            .ok_or_else(|| SpecError::invalid(path.display().to_string(), "", "unreadable"))
    }

    /// Splits a reference made in `from` into (absolute file, pointer).
    fn target(&self, from: &Path, reference: &str) -> Result<(PathBuf, String), SpecError> {
        let (file, pointer) = match reference.split_once('#') {
            Some((f, p)) => (f, p.to_string()),
            None => (reference, String::new()),
        };
        if file.starts_with("http://") || file.starts_with("https://") {
            return Err(SpecError::invalid(
                from.display().to_string(),
                "",
                format!(
                    "remote reference {reference} is not supported; download it next to the spec"
                ),
            ));
        }
        let path = if file.is_empty() {
            from.to_path_buf()
        } else {
            let base = from.parent().unwrap_or(Path::new("."));
            let joined = base.join(file);
            joined.canonicalize().map_err(|source| SpecError::Io {
                path: joined,
                source,
            })?
        };
        Ok((path, pointer))
    }

    /// Rewrites every `$ref` under `value` (which lives in `file`) so that it is local to the
    /// bundled root document.
    fn rewrite(
        &mut self, file: &Path, value: &mut Value, pointer: &str,
        stack: &mut Vec<(PathBuf, String)>, in_root: bool,
    ) -> Result<(), SpecError> {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    let r = r.clone();
                    let key = self.target(file, &r)?;
                    if let Some(local) = self.hoisted.get(&key) {
                        // Keep a hoisted component's own entry as the inlined content.
                        let own = format!("#{pointer}");
                        if in_root && own == *local {
                            return self.inline(file, value, &key, pointer, stack);
                        }
                        map.insert("$ref".into(), Value::String(local.clone()));
                        return Ok(());
                    }
                    if key.0 == self.root {
                        // A reference into the root document stays a local reference.
                        map.insert("$ref".into(), Value::String(format!("#{}", key.1)));
                        return Ok(());
                    }
                    return self.inline(file, value, &key, pointer, stack);
                }
                for (k, v) in map.iter_mut() {
                    let child = format!("{pointer}/{}", escape_pointer(k));
                    self.rewrite(file, v, &child, stack, in_root)?;
                }
                Ok(())
            }
            Value::Array(items) => {
                for (i, v) in items.iter_mut().enumerate() {
                    let child = format!("{pointer}/{i}");
                    self.rewrite(file, v, &child, stack, in_root)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn inline(
        &mut self, file: &Path, value: &mut Value, key: &(PathBuf, String), pointer: &str,
        stack: &mut Vec<(PathBuf, String)>,
    ) -> Result<(), SpecError> {
        if stack.contains(key) {
            return Err(SpecError::invalid(
                file.display().to_string(),
                pointer,
                format!(
                    "circular reference to {}#{} across files; name it in the root's components",
                    key.0.display(),
                    key.1
                ),
            ));
        }
        let target_doc = self.file(&key.0)?;
        let mut target = target_doc.pointer(&key.1).cloned().ok_or_else(|| {
            SpecError::invalid(
                file.display().to_string(),
                pointer,
                format!(
                    "reference target {}#{} does not exist",
                    key.0.display(),
                    key.1
                ),
            )
        })?;
        stack.push(key.clone());
        let target_file = key.0.clone();
        self.rewrite(&target_file, &mut target, &key.1, stack, false)?;
        stack.pop();
        // Sibling keywords next to `$ref` (3.1 allows description/summary) override the target's.
        if let (Value::Object(orig), Value::Object(t)) = (&*value, &mut target) {
            for (k, v) in orig {
                if k != "$ref" {
                    t.insert(k.clone(), v.clone());
                }
            }
        }
        *value = target;
        Ok(())
    }
}

/// The root extension that lists what every operation needing credentials shares.
pub const SECURED_DEFAULTS: &str = "x-secured-operation-defaults";

/// Applies (and removes) the root's `x-secured-operation-defaults`: `{response-headers: {name:
/// header}, responses: {status: response}}`. Every operation whose effective `security` asks
/// for credentials gets each listed response it lacks, and each of its responses gets each
/// listed header it lacks; a response that references a shared component gets the headers in
/// that component (so they show once in `components`). Middleware-level behavior (rate
/// limits, say) is documented this way once instead of in every operation by hand.
pub fn apply_secured_operation_defaults(doc: &mut Value) {
    let Some(defaults) = doc
        .as_object_mut()
        .and_then(|root| root.shift_remove(SECURED_DEFAULTS))
    else {
        return;
    };
    let headers = defaults
        .get("response-headers")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let responses = defaults
        .get("responses")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let secured_by_default = doc
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| !s.is_empty());
    let mut shared: Vec<String> = Vec::new();
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, op) in item.iter_mut() {
                if !HTTP_METHODS.contains(&method.as_str()) {
                    continue;
                }
                let secured = match op.get("security").and_then(Value::as_array) {
                    Some(s) => {
                        !s.is_empty()
                            && !s
                                .iter()
                                .any(|r| r.as_object().is_some_and(|r| r.is_empty()))
                    }
                    None => secured_by_default,
                };
                if !secured {
                    continue;
                }
                let Some(rs) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                    continue;
                };
                for (status, response) in &responses {
                    if !rs.contains_key(status) {
                        rs.insert(status.clone(), response.clone());
                    }
                }
                for response in rs.values_mut() {
                    match response.get("$ref").and_then(Value::as_str) {
                        Some(r) => shared.push(r.to_string()),
                        None => add_headers(response, &headers),
                    }
                }
            }
        }
    }
    shared.sort();
    shared.dedup();
    for reference in shared {
        if let Some(pointer) = reference.strip_prefix('#')
            && let Some(response) = doc.pointer_mut(pointer)
        {
            add_headers(response, &headers);
        }
    }
}

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn add_headers(response: &mut Value, headers: &Map<String, Value>) {
    let Some(response) = response.as_object_mut() else {
        return;
    };
    let entry = response
        .entry("headers")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(existing) = entry.as_object_mut() {
        for (name, header) in headers {
            if !existing.keys().any(|k| k.eq_ignore_ascii_case(name)) {
                existing.insert(name.clone(), header.clone());
            }
        }
    }
}

/// The document's OpenAPI version, e.g. `3.0.3`.
pub fn openapi_version(doc: &Value) -> &str {
    doc.get("openapi").and_then(Value::as_str).unwrap_or("")
}

/// Rewrites OpenAPI 3.0 schema forms into their 3.1 (JSON Schema 2020-12) equivalents:
/// `nullable: true` → a `"null"` type, boolean `exclusiveMinimum`/`exclusiveMaximum` → numeric,
/// `example` kept as-is. 3.1 documents are left untouched.
pub fn normalize_to_31(doc: &mut Value) {
    if !openapi_version(doc).starts_with("3.0") {
        return;
    }
    walk_schemas_mut(doc, &mut normalize_schema_30);
}

fn normalize_schema_30(schema: &mut Map<String, Value>) {
    if schema.remove("nullable") == Some(Value::Bool(true)) {
        match schema.get_mut("type") {
            Some(Value::String(t)) => {
                let t = t.clone();
                schema.insert(
                    "type".into(),
                    Value::Array(vec![Value::String(t), "null".into()]),
                );
            }
            Some(Value::Array(types)) => {
                if !types.iter().any(|t| t == "null") {
                    types.push("null".into());
                }
            }
            _ => {
                if schema.contains_key("$ref") || schema.contains_key("allOf") {
                    let inner = std::mem::take(schema);
                    schema.insert(
                        "anyOf".into(),
                        Value::Array(vec![
                            Value::Object(inner),
                            serde_json::json!({"type": "null"}),
                        ]),
                    );
                }
            }
        }
        if let Some(Value::Array(values)) = schema.get_mut("enum")
            && !values.contains(&Value::Null)
        {
            values.push(Value::Null);
        }
    }
    for (flag, bound) in [
        ("exclusiveMinimum", "minimum"),
        ("exclusiveMaximum", "maximum"),
    ] {
        match schema.get(flag) {
            Some(Value::Bool(true)) => {
                if let Some(b) = schema.remove(bound) {
                    schema.insert(flag.into(), b);
                } else {
                    schema.remove(flag);
                }
            }
            Some(Value::Bool(false)) => {
                schema.remove(flag);
            }
            _ => {}
        }
    }
}

/// Down-converts a 3.1 document to 3.0.3 for consumers that read only 3.0.
pub fn downconvert_to_30(doc: &Value) -> Value {
    let mut out = doc.clone();
    if let Some(map) = out.as_object_mut() {
        map.insert("openapi".into(), Value::String("3.0.3".into()));
        if let Some(info) = map.get_mut("info").and_then(Value::as_object_mut) {
            info.remove("summary");
            if let Some(license) = info.get_mut("license").and_then(Value::as_object_mut) {
                license.remove("identifier");
            }
        }
        map.remove("webhooks");
        map.remove("jsonSchemaDialect");
    }
    walk_schemas_mut(&mut out, &mut downconvert_schema);
    out
}

fn downconvert_schema(schema: &mut Map<String, Value>) {
    // type: [X, "null"] → type: X, nullable: true
    if let Some(Value::Array(types)) = schema.get("type").cloned() {
        let non_null: Vec<Value> = types.iter().filter(|t| *t != "null").cloned().collect();
        let nullable = non_null.len() != types.len();
        if non_null.len() == 1 {
            schema.insert("type".into(), non_null[0].clone());
        } else if non_null.is_empty() {
            schema.remove("type");
        } else {
            schema.remove("type");
            let any: Vec<Value> = non_null
                .into_iter()
                .map(|t| serde_json::json!({ "type": t }))
                .collect();
            schema.insert("anyOf".into(), Value::Array(any));
        }
        if nullable {
            schema.insert("nullable".into(), Value::Bool(true));
        }
    }
    // oneOf/anyOf: [X, {type: null}] → allOf: [X], nullable: true
    for key in ["oneOf", "anyOf"] {
        if let Some(Value::Array(alts)) = schema.get(key).cloned() {
            let is_null = |v: &Value| v.get("type").and_then(Value::as_str) == Some("null");
            if alts.iter().any(is_null) {
                let rest: Vec<Value> = alts.into_iter().filter(|v| !is_null(v)).collect();
                schema.remove(key);
                if rest.len() == 1 {
                    schema.insert("allOf".into(), Value::Array(rest));
                } else {
                    schema.insert(key.into(), Value::Array(rest));
                }
                schema.insert("nullable".into(), Value::Bool(true));
            }
        }
    }
    if schema.get("type").and_then(Value::as_str) == Some("null") {
        schema.remove("type");
        schema.insert("nullable".into(), Value::Bool(true));
        schema.insert("enum".into(), Value::Array(vec![Value::Null]));
    }
    // const → single enum; examples → example
    if let Some(c) = schema.remove("const") {
        schema.insert("enum".into(), Value::Array(vec![c]));
    }
    if let Some(Value::Array(examples)) = schema.remove("examples")
        && let Some(first) = examples.into_iter().next()
    {
        schema.insert("example".into(), first);
    }
    for flag in ["exclusiveMinimum", "exclusiveMaximum"] {
        if let Some(n @ Value::Number(_)) = schema.get(flag).cloned() {
            let bound = if flag == "exclusiveMinimum" {
                "minimum"
            } else {
                "maximum"
            };
            schema.insert(bound.into(), n);
            schema.insert(flag.into(), Value::Bool(true));
        }
    }
    // 2020-12 keywords 3.0 does not know.
    for key in [
        "propertyNames",
        "$schema",
        "$id",
        "unevaluatedProperties",
        "contentMediaType",
        "contentEncoding",
        "contentSchema",
        "prefixItems",
        "dependentRequired",
        "dependentSchemas",
        "$comment",
    ] {
        schema.remove(key);
    }
    // 3.0 forbids siblings next to $ref.
    if schema.contains_key("$ref") && schema.len() > 1 {
        let r = schema.remove("$ref").unwrap_or(Value::Null);
        let description = schema.remove("description");
        schema.clear();
        schema.insert(
            "allOf".into(),
            Value::Array(vec![serde_json::json!({ "$ref": r })]),
        );
        if let Some(d) = description {
            schema.insert("description".into(), d);
        }
    }
}

/// Calls `f` on one schema object and every schema nested inside it, depth-first, children
/// after their parent.
pub fn walk_schema_mut(value: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
    let Value::Object(map) = value else { return };
    f(map);
    for key in [
        "properties",
        "patternProperties",
        "$defs",
        "definitions",
        "dependentSchemas",
    ] {
        if let Some(Value::Object(children)) = map.get_mut(key) {
            for child in children.values_mut() {
                walk_schema_mut(child, f);
            }
        }
    }
    for key in [
        "items",
        "additionalProperties",
        "not",
        "propertyNames",
        "contains",
        "if",
        "then",
        "else",
        "unevaluatedProperties",
        "additionalItems",
    ] {
        if let Some(child) = map.get_mut(key) {
            match child {
                Value::Array(list) => list.iter_mut().for_each(|c| walk_schema_mut(c, f)),
                other => walk_schema_mut(other, f),
            }
        }
    }
    for key in ["allOf", "anyOf", "oneOf", "prefixItems"] {
        if let Some(Value::Array(list)) = map.get_mut(key) {
            list.iter_mut().for_each(|c| walk_schema_mut(c, f));
        }
    }
}

/// Calls `f` on every schema object of the document (components, parameters, bodies,
/// responses, headers, and everything nested inside those schemas), depth-first, children
/// after their parent.
pub fn walk_schemas_mut(doc: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
    fn media(content: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
        if let Some(Value::Object(types)) = content.get_mut("content") {
            for mt in types.values_mut() {
                if let Some(s) = mt.get_mut("schema") {
                    walk_schema_mut(s, f);
                }
            }
        }
    }
    fn parameter(p: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
        if let Some(s) = p.get_mut("schema") {
            walk_schema_mut(s, f);
        }
        media(p, f);
    }
    fn response(r: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
        media(r, f);
        if let Some(Value::Object(headers)) = r.get_mut("headers") {
            headers.values_mut().for_each(|h| parameter(h, f));
        }
    }
    fn operation(op: &mut Value, f: &mut dyn FnMut(&mut Map<String, Value>)) {
        if let Some(Value::Array(ps)) = op.get_mut("parameters") {
            ps.iter_mut().for_each(|p| parameter(p, f));
        }
        if let Some(body) = op.get_mut("requestBody") {
            media(body, f);
        }
        if let Some(Value::Object(rs)) = op.get_mut("responses") {
            rs.values_mut().for_each(|r| response(r, f));
        }
    }
    if let Some(Value::Object(paths)) = doc.get_mut("paths") {
        for item in paths.values_mut() {
            let Value::Object(item) = item else { continue };
            for (k, v) in item.iter_mut() {
                if k == "parameters" {
                    if let Value::Array(ps) = v {
                        ps.iter_mut().for_each(|p| parameter(p, f));
                    }
                } else if crate::METHODS.contains(&k.as_str()) {
                    operation(v, f);
                }
            }
        }
    }
    if let Some(Value::Object(components)) = doc.get_mut("components") {
        if let Some(Value::Object(s)) = components.get_mut("schemas") {
            s.values_mut().for_each(|v| walk_schema_mut(v, f));
        }
        if let Some(Value::Object(ps)) = components.get_mut("parameters") {
            ps.values_mut().for_each(|p| parameter(p, f));
        }
        if let Some(Value::Object(hs)) = components.get_mut("headers") {
            hs.values_mut().for_each(|h| parameter(h, f));
        }
        if let Some(Value::Object(bs)) = components.get_mut("requestBodies") {
            bs.values_mut().for_each(|b| media(b, f));
        }
        if let Some(Value::Object(rs)) = components.get_mut("responses") {
            rs.values_mut().for_each(|r| response(r, f));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tmpdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("conformance-spec-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("schemas")).expect("tmpdir");
        dir
    }

    #[test]
    fn bundles_cross_file_refs_into_components_and_inlines_the_rest() {
        let dir = tmpdir("bundle");
        std::fs::write(
            dir.join("root.yaml"),
            "openapi: 3.1.0\ninfo: {title: t, version: '1'}\npaths:\n  /pets:\n    $ref: paths.yaml#/pets\ncomponents:\n  schemas:\n    Pet:\n      $ref: schemas/pet.yaml#/Pet\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("paths.yaml"),
            "pets:\n  get:\n    responses:\n      '200':\n        description: ok\n        content:\n          application/json:\n            schema:\n              $ref: schemas/pet.yaml#/Pet\n",
        )
        .expect("write");
        std::fs::write(
            dir.join("schemas/pet.yaml"),
            "Pet:\n  type: object\n  properties:\n    tag:\n      $ref: '#/Tag'\nTag:\n  type: string\n",
        )
        .expect("write");
        let doc = bundle(&dir.join("root.yaml")).expect("bundles");
        assert_eq!(
            doc.pointer("/paths/~1pets/get/responses/200/content/application~1json/schema"),
            Some(&json!({"$ref": "#/components/schemas/Pet"}))
        );
        assert_eq!(
            doc.pointer("/components/schemas/Pet"),
            Some(&json!({"type": "object", "properties": {"tag": {"type": "string"}}}))
        );
    }

    #[test]
    fn secured_operation_defaults_reach_every_secured_operation_only() {
        let dir = tmpdir("secured");
        std::fs::write(
            dir.join("root.yaml"),
            r##"openapi: 3.1.0
info: {title: t, version: '1'}
x-secured-operation-defaults:
  response-headers:
    X-Limit: {$ref: '#/components/headers/Limit'}
  responses:
    '429': {$ref: '#/components/responses/Slow'}
paths:
  /open:
    get:
      security: []
      responses:
        '200': {description: ok}
  /closed:
    get:
      security: [{key: []}]
      responses:
        '200': {description: ok}
        '404': {$ref: '#/components/responses/Missing'}
components:
  headers:
    Limit: {schema: {type: integer}}
  responses:
    Missing: {description: gone}
    Slow: {description: slow down}
"##,
        )
        .expect("write");
        let doc = bundle(&dir.join("root.yaml")).expect("bundles");
        assert!(doc.get(SECURED_DEFAULTS).is_none());
        assert!(doc.pointer("/paths/~1open/get/responses/429").is_none());
        assert!(
            doc.pointer("/paths/~1open/get/responses/200/headers")
                .is_none()
        );
        assert_eq!(
            doc.pointer("/paths/~1closed/get/responses/429"),
            Some(&json!({"$ref": "#/components/responses/Slow"}))
        );
        let limit = json!({"$ref": "#/components/headers/Limit"});
        assert_eq!(
            doc.pointer("/paths/~1closed/get/responses/200/headers/X-Limit"),
            Some(&limit)
        );
        assert_eq!(
            doc.pointer("/components/responses/Missing/headers/X-Limit"),
            Some(&limit)
        );
        assert_eq!(
            doc.pointer("/components/responses/Slow/headers/X-Limit"),
            Some(&limit)
        );
    }

    #[test]
    fn a_missing_target_names_the_pointer() {
        let dir = tmpdir("missing");
        std::fs::write(
            dir.join("root.yaml"),
            "openapi: 3.1.0\npaths:\n  /a:\n    $ref: other.yaml#/nope\n",
        )
        .expect("write");
        std::fs::write(dir.join("other.yaml"), "yes: 1\n").expect("write");
        let err = bundle(&dir.join("root.yaml"))
            .expect_err("fails")
            .to_string();
        assert!(
            err.contains("/paths/~1a") && err.contains("#/nope"),
            "{err}"
        );
    }

    #[test]
    fn normalizes_30_nullable_and_boolean_exclusive_bounds() {
        let mut doc = json!({
            "openapi": "3.0.3",
            "components": {"schemas": {"A": {"type": "object", "properties": {
                "n": {"type": "integer", "nullable": true, "minimum": 0, "exclusiveMinimum": true},
                "e": {"type": "string", "enum": ["x"], "nullable": true}
            }}}}
        });
        normalize_to_31(&mut doc);
        assert_eq!(
            doc.pointer("/components/schemas/A/properties/n"),
            Some(&json!({"type": ["integer", "null"], "exclusiveMinimum": 0}))
        );
        assert_eq!(
            doc.pointer("/components/schemas/A/properties/e"),
            Some(&json!({"type": ["string", "null"], "enum": ["x", null]}))
        );
    }

    #[test]
    fn downconverts_31_forms() {
        let doc = json!({
            "openapi": "3.1.0",
            "components": {"schemas": {"A": {"type": "object", "properties": {
                "s": {"type": ["string", "null"]},
                "r": {"oneOf": [{"$ref": "#/components/schemas/B"}, {"type": "null"}]},
                "c": {"const": 1, "examples": [1]},
                "j": {"type": "string", "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/B"}}
            }}}}
        });
        let out = downconvert_to_30(&doc);
        assert_eq!(out["openapi"], "3.0.3");
        assert_eq!(
            out.pointer("/components/schemas/A/properties/s"),
            Some(&json!({"type": "string", "nullable": true}))
        );
        assert_eq!(
            out.pointer("/components/schemas/A/properties/r"),
            Some(&json!({"allOf": [{"$ref": "#/components/schemas/B"}], "nullable": true}))
        );
        assert_eq!(
            out.pointer("/components/schemas/A/properties/c"),
            Some(&json!({"enum": [1], "example": 1}))
        );
        assert_eq!(
            out.pointer("/components/schemas/A/properties/j"),
            Some(&json!({"type": "string"}))
        );
    }
}
