//! The intermediate representation: what the spec says, in the terms the emitter needs.
//!
//! Building the IR is where the spec is checked; every error names the JSON pointer of the
//! offending part of the bundled document, so a bad spec never turns into a panic or into
//! code that does not compile.

use anyhow::{Result, anyhow, bail};
use heck::{ToSnakeCase, ToUpperCamelCase};
use serde_json::{Map, Value};

use conformance::spec::{deref, escape_pointer};

/// A Rust type a schema maps to.
#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    String,
    I32,
    I64,
    F64,
    Bool,
    /// Free-form JSON (objects without declared properties).
    Json,
    Vec(Box<Ty>),
    Map(Box<Ty>),
    /// A generated model.
    Named(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wrap {
    /// Required and not nullable.
    Plain,
    /// Required and nullable: serialized as `null` when absent.
    Nullable,
    /// Optional and not nullable: skipped when absent.
    Optional,
    /// Optional and nullable: absent, `null` and a value are three different things.
    Tristate,
}

#[derive(Debug)]
pub struct Field {
    pub wire: String,
    pub rust: String,
    pub doc: Option<String>,
    pub ty: Ty,
    pub wrap: Wrap,
}

#[derive(Debug)]
pub enum ModelKind {
    Struct {
        fields: Vec<Field>,
        deny_unknown: bool,
    },
    Enum {
        variants: Vec<(String, String)>,
    },
    Alias(Ty),
}

#[derive(Debug)]
pub struct Model {
    pub name: String,
    pub doc: Option<String>,
    pub kind: ModelKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamIn {
    Path,
    Query,
    Header,
}

#[derive(Debug)]
pub struct Param {
    pub wire: String,
    pub rust: String,
    pub doc: Option<String>,
    pub location: ParamIn,
    pub ty: Ty,
    pub required: bool,
    pub default: Option<Value>,
    pub explode: bool,
}

#[derive(Debug)]
pub struct Header {
    pub wire: String,
    pub required: bool,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub variant: String,
    pub doc: String,
    pub body: Option<Ty>,
    /// The payload of each event when the status may also answer `text/event-stream`.
    pub events: Option<Ty>,
    pub headers: Vec<Header>,
}

/// What a `multipart/form-data` part carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PartKind {
    /// A file (`type: string, format: binary`): read whole into an `UploadedFile`.
    File,
    /// A text field (`type: string`).
    Text,
}

/// One part of a `multipart/form-data` body.
#[derive(Debug)]
pub struct Part {
    pub wire: String,
    pub rust: String,
    pub doc: Option<String>,
    pub kind: PartKind,
    pub required: bool,
}

/// A `multipart/form-data` request body.
#[derive(Debug)]
pub struct Form {
    /// The generated poem-openapi `Multipart` type, `<Operation>Form`.
    pub name: String,
    pub parts: Vec<Part>,
    pub required: bool,
}

#[derive(Debug)]
pub struct Operation {
    pub id: String,
    pub fn_name: String,
    pub type_prefix: String,
    pub method: String,
    pub path: String,
    pub poem_path: String,
    pub tag: String,
    pub summary: Option<String>,
    pub description: Option<String>,
    /// `None` for public operations; the required scopes otherwise.
    pub scopes: Option<Vec<String>>,
    pub params: Vec<Param>,
    pub body: Option<(Ty, bool)>,
    /// A `multipart/form-data` body (instead of a JSON one).
    pub form: Option<Form>,
    pub responses: Vec<Response>,
    /// `x-websocket: true`: a GET that upgrades to a WebSocket. Its documented 101 is the
    /// upgrade itself (not a variant of the response enum); the other statuses answer requests
    /// that are refused or did not ask for an upgrade.
    pub websocket: bool,
}

#[derive(Debug)]
pub struct Tag {
    pub name: String,
    pub doc: Option<String>,
    pub module: String,
    pub trait_name: String,
    pub routes_name: String,
}

#[derive(Debug)]
pub struct Ir {
    pub title: String,
    pub version: String,
    pub models: Vec<Model>,
    pub operations: Vec<Operation>,
    pub tags: Vec<Tag>,
    /// The model of the error body used by 401/403/503 answers of secured operations.
    pub error_model: Option<String>,
}

const RUST_KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern",
    "false", "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
    "ref", "return", "self", "Self", "static", "struct", "super", "trait", "true", "type",
    "unsafe", "use", "where", "while", "abstract", "become", "box", "do", "final", "macro",
    "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

/// A snake_case Rust identifier for a wire name (`filter[created_at][gte]` → `filter_created_at_gte`).
pub fn field_ident(wire: &str) -> String {
    let cleaned: String = wire
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut s = cleaned.to_snake_case();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s = format!("f_{s}");
    }
    if RUST_KEYWORDS.contains(&s.as_str()) {
        s.push('_');
    }
    s
}

/// An UpperCamelCase Rust type or variant name for a wire value (`-created_at` → `MinusCreatedAt`).
pub fn type_ident(wire: &str) -> String {
    let mut prefix = String::new();
    let rest = if let Some(r) = wire.strip_prefix('-') {
        prefix.push_str("Minus");
        r
    } else if let Some(r) = wire.strip_prefix('+') {
        prefix.push_str("Plus");
        r
    } else {
        wire
    };
    let cleaned: String = rest
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut s = format!("{prefix}{}", cleaned.to_upper_camel_case());
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s = format!("V{s}");
    }
    if s == "Self" {
        s.push('_');
    }
    s
}

fn variant_for_status(status: u16) -> String {
    match status {
        200 => "Ok",
        201 => "Created",
        202 => "Accepted",
        204 => "NoContent",
        301 => "MovedPermanently",
        302 => "Found",
        304 => "NotModified",
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "PreconditionFailed",
        413 => "PayloadTooLarge",
        415 => "UnsupportedMediaType",
        422 => "UnprocessableEntity",
        426 => "UpgradeRequired",
        428 => "PreconditionRequired",
        429 => "TooManyRequests",
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        other => return format!("Status{other}"),
    }
    .to_string()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(|s| s.trim().to_string())
}

struct Builder<'a> {
    doc: &'a Value,
    models: Vec<Model>,
}

/// Builds the IR from a bundled, 3.1 document.
pub fn build(doc: &Value) -> Result<Ir> {
    if !conformance::spec::openapi_version(doc).starts_with("3.1") {
        bail!(
            "#/openapi: codegen reads OpenAPI 3.1 documents (found {:?})",
            doc.get("openapi")
        );
    }
    let mut b = Builder {
        doc,
        models: Vec::new(),
    };
    if let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
    {
        for (name, schema) in schemas {
            let ptr = format!("/components/schemas/{}", escape_pointer(name));
            b.component(name, schema, &ptr)?;
        }
    }
    let tag_docs: Vec<(String, Option<String>)> = doc
        .get("tags")
        .and_then(Value::as_array)
        .map(|tags| {
            tags.iter()
                .filter_map(|t| Some((text(t, "name")?, text(t, "description"))))
                .collect()
        })
        .unwrap_or_default();
    let mut operations = Vec::new();
    let empty = Map::new();
    let paths = doc
        .get("paths")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    for (path, item) in paths {
        let item_ptr = format!("/paths/{}", escape_pointer(path));
        for method in conformance::METHODS {
            let Some(op) = item.get(*method) else {
                continue;
            };
            let ptr = format!("{item_ptr}/{method}");
            operations.push(b.operation(path, method, item, op, &ptr)?);
        }
    }
    let mut tags: Vec<Tag> = Vec::new();
    let mut add_tag = |name: &str| {
        if !tags.iter().any(|t| t.name == name) {
            let camel = type_ident(name);
            tags.push(Tag {
                name: name.to_string(),
                doc: tag_docs
                    .iter()
                    .find(|(n, _)| n == name)
                    .and_then(|(_, d)| d.clone()),
                module: field_ident(name),
                trait_name: format!("{camel}Api"),
                routes_name: format!("{camel}Routes"),
            });
        }
    };
    for (name, _) in &tag_docs {
        if operations.iter().any(|o| &o.tag == name) {
            add_tag(name);
        }
    }
    for op in &operations {
        add_tag(&op.tag);
    }
    let error_model = error_model(&operations)?;
    Ok(Ir {
        title: doc
            .pointer("/info/title")
            .and_then(Value::as_str)
            .unwrap_or("API")
            .to_string(),
        version: doc
            .pointer("/info/version")
            .and_then(Value::as_str)
            .unwrap_or("0")
            .to_string(),
        models: b.models,
        operations,
        tags,
        error_model,
    })
}

/// Secured operations answer 401/403/503 from the authentication step with one error model.
fn error_model(operations: &[Operation]) -> Result<Option<String>> {
    let mut found: Option<String> = None;
    for op in operations.iter().filter(|o| o.scopes.is_some()) {
        for status in [401u16, 403, 503] {
            let Some(resp) = op.responses.iter().find(|r| r.status == status) else {
                let needed = status == 401
                    || status == 503
                    || (status == 403 && op.scopes.as_ref().is_some_and(|s| !s.is_empty()));
                if needed {
                    bail!(
                        "#/paths/{}/{}/responses: a secured operation must document {status}",
                        escape_pointer(&op.path),
                        op.method
                    );
                }
                continue;
            };
            let Some(Ty::Named(name)) = &resp.body else {
                bail!(
                    "#/paths/{}/{}/responses/{status}: must have an application/json body of a named schema",
                    escape_pointer(&op.path),
                    op.method
                );
            };
            match &found {
                None => found = Some(name.clone()),
                Some(f) if f == name => {}
                Some(f) => bail!(
                    "#/paths/{}/{}/responses/{status}: uses {name} but other operations use {f}",
                    escape_pointer(&op.path),
                    op.method
                ),
            }
        }
    }
    Ok(found)
}

impl Builder<'_> {
    fn component(&mut self, name: &str, schema: &Value, ptr: &str) -> Result<()> {
        let rust = type_ident(name);
        let doc = text(schema, "description").or_else(|| text(schema, "title"));
        if schema.get("enum").is_some() {
            return self.enum_model(&rust, doc, schema, ptr);
        }
        if is_object_like(self.doc, schema) {
            return self.struct_model(&rust, doc, schema, ptr);
        }
        let (ty, _) = self.ty(schema, &rust, ptr)?;
        self.models.push(Model {
            name: rust,
            doc,
            kind: ModelKind::Alias(ty),
        });
        Ok(())
    }

    fn enum_model(
        &mut self, name: &str, doc: Option<String>, schema: &Value, ptr: &str,
    ) -> Result<()> {
        let values = schema
            .get("enum")
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("#{ptr}/enum: must be an array"))?;
        let mut variants = Vec::new();
        for (i, v) in values.iter().enumerate() {
            match v {
                Value::String(s) => {
                    let ident = type_ident(s);
                    if variants.iter().any(|(r, _): &(String, String)| *r == ident) {
                        bail!("#{ptr}/enum/{i}: {s:?} maps to the Rust name {ident} twice");
                    }
                    variants.push((ident, s.clone()));
                }
                Value::Null => {}
                other => bail!("#{ptr}/enum/{i}: only string enums are supported (found {other})"),
            }
        }
        self.models.push(Model {
            name: name.to_string(),
            doc,
            kind: ModelKind::Enum { variants },
        });
        Ok(())
    }

    /// Merges `allOf` members (and the schema's own properties) into one property list.
    fn object_parts(
        &self, schema: &Value, ptr: &str, props: &mut Vec<(String, Value)>,
        required: &mut Vec<String>, deny: &mut Option<bool>,
    ) -> Result<()> {
        let schema = deref(self.doc, schema);
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            for (i, member) in all.iter().enumerate() {
                self.object_parts(member, &format!("{ptr}/allOf/{i}"), props, required, deny)?;
            }
        }
        if let Some(p) = schema.get("properties").and_then(Value::as_object) {
            for (k, v) in p {
                if let Some(existing) = props.iter_mut().find(|(n, _)| n == k) {
                    existing.1 = v.clone();
                } else {
                    props.push((k.clone(), v.clone()));
                }
            }
        }
        if let Some(r) = schema.get("required").and_then(Value::as_array) {
            for name in r.iter().filter_map(Value::as_str) {
                if !required.iter().any(|x| x == name) {
                    required.push(name.to_string());
                }
            }
        }
        if schema.get("additionalProperties") == Some(&Value::Bool(false)) {
            *deny = Some(deny.unwrap_or(true));
        }
        Ok(())
    }

    fn struct_model(
        &mut self, name: &str, doc: Option<String>, schema: &Value, ptr: &str,
    ) -> Result<()> {
        let mut props = Vec::new();
        let mut required = Vec::new();
        let mut deny = None;
        self.object_parts(schema, ptr, &mut props, &mut required, &mut deny)?;
        for r in &required {
            if !props.iter().any(|(n, _)| n == r) {
                bail!("#{ptr}/required: {r:?} is required but not among the properties");
            }
        }
        let mut fields = Vec::new();
        for (wire, prop) in &props {
            let fptr = format!("{ptr}/properties/{}", escape_pointer(wire));
            let ctx = format!("{name}{}", type_ident(wire));
            let (ty, nullable) = self.ty(prop, &ctx, &fptr)?;
            let is_required = required.iter().any(|r| r == wire);
            let wrap = match (is_required, nullable) {
                (true, false) => Wrap::Plain,
                (true, true) => Wrap::Nullable,
                (false, false) => Wrap::Optional,
                (false, true) => Wrap::Tristate,
            };
            let rust = field_ident(wire);
            if fields.iter().any(|f: &Field| f.rust == rust) {
                bail!("#{fptr}: {wire:?} maps to the Rust field {rust} twice");
            }
            let doc =
                text(prop, "description").or_else(|| text(deref(self.doc, prop), "description"));
            fields.push(Field {
                wire: wire.clone(),
                rust,
                doc,
                ty,
                wrap,
            });
        }
        // A schema whose only additional properties are a typed map is a map, not a struct.
        self.models.push(Model {
            name: name.to_string(),
            doc,
            kind: ModelKind::Struct {
                fields,
                deny_unknown: deny.unwrap_or(false),
            },
        });
        Ok(())
    }

    /// The Rust type of a schema, and whether it admits `null`.
    fn ty(&mut self, schema: &Value, ctx: &str, ptr: &str) -> Result<(Ty, bool)> {
        if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
            let name = r.strip_prefix("#/components/schemas/").ok_or_else(|| {
                anyhow!(
                    "#{ptr}/$ref: only references to #/components/schemas are supported (found {r})"
                )
            })?;
            if self.doc.pointer(&r[1..]).is_none() {
                bail!("#{ptr}/$ref: {r} does not exist");
            }
            let target = deref(self.doc, schema);
            let nullable = type_list(target).iter().any(|t| t == "null");
            return Ok((
                Ty::Named(type_ident(&conformance::spec::unescape_pointer(name))),
                nullable,
            ));
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = schema.get(key).and_then(Value::as_array) {
                let non_null: Vec<&Value> = alts
                    .iter()
                    .filter(|a| a.get("type").and_then(Value::as_str) != Some("null"))
                    .collect();
                let nullable = non_null.len() != alts.len();
                if non_null.len() == 1 {
                    let (ty, inner_null) = self.ty(non_null[0], ctx, &format!("{ptr}/{key}/0"))?;
                    return Ok((ty, nullable || inner_null));
                }
                // Alternatives that are all plain strings (a duration or a timestamp, say)
                // are a `String`; the request validator holds it to the alternatives.
                let parent_string = type_list(schema).iter().any(|t| t == "string");
                let all_strings = non_null.iter().all(|alt| {
                    let types = type_list(alt);
                    alt.get("enum").is_none()
                        && alt.get("$ref").is_none()
                        && (types.iter().any(|t| t == "string")
                            || (types.is_empty() && parent_string))
                        && types.iter().all(|t| t == "string" || t == "null")
                });
                if all_strings {
                    return Ok((Ty::String, nullable));
                }
                return Ok((Ty::Json, nullable));
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            if all.len() == 1 && schema.get("properties").is_none() {
                return self.ty(&all[0], ctx, &format!("{ptr}/allOf/0"));
            }
            self.struct_model(ctx, text(schema, "description"), schema, ptr)?;
            return Ok((Ty::Named(ctx.to_string()), false));
        }
        let types = type_list(schema);
        let nullable = types.iter().any(|t| t == "null");
        let non_null: Vec<&String> = types.iter().filter(|t| *t != "null").collect();
        if schema.get("enum").is_some() && non_null.iter().all(|t| *t == "string") {
            self.enum_model(ctx, text(schema, "description"), schema, ptr)?;
            return Ok((Ty::Named(ctx.to_string()), nullable));
        }
        let ty = match non_null.as_slice() {
            [] => Ty::Json,
            [t] => match t.as_str() {
                "string" => Ty::String,
                "integer" => match schema.get("format").and_then(Value::as_str) {
                    Some("int32") => Ty::I32,
                    _ => Ty::I64,
                },
                "number" => Ty::F64,
                "boolean" => Ty::Bool,
                "array" => {
                    let items = schema
                        .get("items")
                        .ok_or_else(|| anyhow!("#{ptr}: an array needs `items`"))?;
                    let (item, _) =
                        self.ty(items, &format!("{ctx}Item"), &format!("{ptr}/items"))?;
                    Ty::Vec(Box::new(item))
                }
                "object" => {
                    if schema.get("properties").is_some() {
                        self.struct_model(ctx, text(schema, "description"), schema, ptr)?;
                        Ty::Named(ctx.to_string())
                    } else {
                        match schema.get("additionalProperties") {
                            Some(ap @ Value::Object(_))
                                if !ap.as_object().is_some_and(Map::is_empty) =>
                            {
                                let (v, _) = self.ty(
                                    ap,
                                    &format!("{ctx}Value"),
                                    &format!("{ptr}/additionalProperties"),
                                )?;
                                Ty::Map(Box::new(v))
                            }
                            _ => Ty::Json,
                        }
                    }
                }
                other => bail!("#{ptr}/type: unsupported type {other:?}"),
            },
            _ => Ty::Json,
        };
        Ok((ty, nullable))
    }

    fn operation(
        &mut self, path: &str, method: &str, item: &Value, op: &Value, ptr: &str,
    ) -> Result<Operation> {
        let id = text(op, "operationId")
            .ok_or_else(|| anyhow!("#{ptr}: every operation needs an operationId"))?;
        let type_prefix = type_ident(&id);
        let tag = op
            .get("tags")
            .and_then(Value::as_array)
            .and_then(|t| t.first())
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        let security = op.get("security").or_else(|| self.doc.get("security"));
        // Security schemes other than OAuth2 cannot list scopes without upsetting linters, so
        // the scopes an operation needs are in `x-required-scopes`.
        let public = match security.and_then(Value::as_array) {
            None => true,
            Some(reqs) => {
                reqs.is_empty()
                    || reqs
                        .iter()
                        .any(|r| r.as_object().is_some_and(Map::is_empty))
            }
        };
        let scopes = if public {
            if op.get("x-required-scopes").is_some() {
                bail!(
                    "#{ptr}/x-required-scopes: a public operation (no security) cannot require scopes"
                );
            }
            None
        } else {
            let listed = match op.get("x-required-scopes") {
                None => Vec::new(),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| anyhow!("#{ptr}/x-required-scopes: scopes are strings"))
                    })
                    .collect::<Result<Vec<_>>>()?,
                Some(_) => bail!("#{ptr}/x-required-scopes: must be an array of scope names"),
            };
            Some(listed)
        };
        let mut raw: Vec<(String, Value)> = Vec::new();
        for (source, list) in [("", item.get("parameters")), ("op", op.get("parameters"))] {
            let Some(list) = list.and_then(Value::as_array) else {
                continue;
            };
            for (i, p) in list.iter().enumerate() {
                let pptr = if source.is_empty() {
                    format!("/paths/{}/parameters/{i}", escape_pointer(path))
                } else {
                    format!("{ptr}/parameters/{i}")
                };
                let resolved = deref(self.doc, p).clone();
                raw.retain(|(_, q)| {
                    (q.get("name"), q.get("in")) != (resolved.get("name"), resolved.get("in"))
                });
                raw.push((pptr, resolved));
            }
        }
        let mut params = Vec::new();
        for (pptr, p) in &raw {
            let wire =
                text(p, "name").ok_or_else(|| anyhow!("#{pptr}: a parameter needs a name"))?;
            let location = match p.get("in").and_then(Value::as_str) {
                Some("path") => ParamIn::Path,
                Some("query") => ParamIn::Query,
                Some("header") => ParamIn::Header,
                other => bail!("#{pptr}/in: {other:?} parameters are not supported by codegen yet"),
            };
            let schema = p
                .get("schema")
                .ok_or_else(|| anyhow!("#{pptr}: a parameter needs a schema"))?;
            let ctx = format!("{type_prefix}{}", type_ident(&wire));
            let (ty, _) = self.ty(schema, &ctx, &format!("{pptr}/schema"))?;
            match &ty {
                Ty::Json | Ty::Map(_) => {
                    bail!("#{pptr}/schema: object parameters are not supported by codegen yet")
                }
                Ty::Named(n)
                    if self
                        .models
                        .iter()
                        .any(|m| m.name == *n && matches!(m.kind, ModelKind::Struct { .. })) =>
                {
                    bail!("#{pptr}/schema: object parameters are not supported by codegen yet");
                }
                _ => {}
            }
            let required = location == ParamIn::Path
                || p.get("required").and_then(Value::as_bool).unwrap_or(false);
            let default = deref(self.doc, schema).get("default").cloned();
            let style = p.get("style").and_then(Value::as_str).unwrap_or("form");
            let explode = p
                .get("explode")
                .and_then(Value::as_bool)
                .unwrap_or(style == "form");
            params.push(Param {
                rust: field_ident(&wire),
                wire,
                doc: text(p, "description"),
                location,
                ty,
                required,
                default,
                explode,
            });
        }
        let mut form = None;
        let body = match op.get("requestBody") {
            None => None,
            Some(b)
                if deref(self.doc, b)
                    .pointer("/content/application~1json")
                    .is_none()
                    && deref(self.doc, b)
                        .pointer("/content/multipart~1form-data")
                        .is_some() =>
            {
                form = Some(self.form(deref(self.doc, b), &type_prefix, ptr)?);
                None
            }
            Some(b) => {
                let b = deref(self.doc, b);
                let schema = b
                    .pointer("/content/application~1json/schema")
                    .ok_or_else(|| anyhow!("#{ptr}/requestBody: only application/json and multipart/form-data bodies are supported by codegen yet"))?;
                let (ty, _) = self.ty(
                    schema,
                    &format!("{type_prefix}Body"),
                    &format!("{ptr}/requestBody/content/application~1json/schema"),
                )?;
                Some((
                    ty,
                    b.get("required").and_then(Value::as_bool).unwrap_or(false),
                ))
            }
        };
        let websocket = op.get("x-websocket").and_then(Value::as_bool) == Some(true);
        if websocket && method != "get" {
            bail!("#{ptr}/x-websocket: only a GET can upgrade to a WebSocket");
        }
        let mut responses = Vec::new();
        let rs = op
            .get("responses")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("#{ptr}/responses: missing"))?;
        for (code, r) in rs {
            let rptr = format!("{ptr}/responses/{code}");
            let status: u16 = code.parse().map_err(|_| {
                anyhow!("#{rptr}: status {code:?} is not supported; list each status code")
            })?;
            let r = deref(self.doc, r);
            // A response only middleware gives (429 from the rate limiter) is documented for
            // clients but is no handler's to return.
            if r.get("x-set-by").and_then(Value::as_str) == Some("middleware") {
                continue;
            }
            if status == 101 {
                if !websocket {
                    bail!("#{rptr}: only an `x-websocket: true` operation can answer 101");
                }
                if r.get("content")
                    .and_then(Value::as_object)
                    .is_some_and(|c| !c.is_empty())
                {
                    bail!("#{rptr}/content: a WebSocket upgrade (101) has no body");
                }
                // The upgrade is the handler's `Upgraded::Switching`, not an enum variant.
                continue;
            }
            let content = r.get("content").and_then(Value::as_object);
            let mut body = None;
            let mut events = None;
            for (media, m) in content.into_iter().flatten() {
                let mptr = format!("{rptr}/content/{}", escape_pointer(media));
                match media.as_str() {
                    "application/json" => {
                        let schema = m
                            .get("schema")
                            .ok_or_else(|| anyhow!("#{mptr}: a JSON response needs a schema"))?;
                        let (ty, _) = self.ty(
                            schema,
                            &format!("{type_prefix}{}", variant_for_status(status)),
                            &format!("{mptr}/schema"),
                        )?;
                        body = Some(ty);
                    }
                    "text/event-stream" => {
                        // Each event's `data:` is one JSON value of `x-event-schema`.
                        let schema = m.get("x-event-schema").ok_or_else(|| {
                            anyhow!("#{mptr}: an event stream needs `x-event-schema`, the schema of each event's `data:` JSON")
                        })?;
                        let (ty, _) = self.ty(
                            schema,
                            &format!("{type_prefix}{}Event", variant_for_status(status)),
                            &format!("{mptr}/x-event-schema"),
                        )?;
                        if !matches!(ty, Ty::Named(_)) {
                            bail!("#{mptr}/x-event-schema: must name a component schema (`$ref`)");
                        }
                        events = Some(ty);
                    }
                    other => bail!(
                        "#{mptr}: {other} responses are not supported by codegen yet (application/json and text/event-stream are)"
                    ),
                }
            }
            let mut headers = Vec::new();
            for (name, h) in r
                .get("headers")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let h = deref(self.doc, h);
                if h.get("x-set-by").and_then(Value::as_str) == Some("middleware") {
                    continue;
                }
                headers.push(Header {
                    wire: name.clone(),
                    required: h.get("required").and_then(Value::as_bool).unwrap_or(false),
                });
            }
            responses.push(Response {
                status,
                variant: variant_for_status(status),
                doc: text(r, "description").unwrap_or_default(),
                body,
                events,
                headers,
            });
        }
        if websocket && !rs.contains_key("101") {
            bail!("#{ptr}/responses: an `x-websocket: true` operation must document its 101");
        }
        Ok(Operation {
            fn_name: field_ident(&id),
            type_prefix,
            id,
            method: method.to_string(),
            path: path.to_string(),
            poem_path: poem_path(path),
            tag,
            summary: text(op, "summary"),
            description: text(op, "description"),
            scopes,
            params,
            body,
            form,
            websocket,
            responses,
        })
    }

    /// The parts of a `multipart/form-data` body: string properties, files when
    /// `format: binary` (or with a `contentMediaType`).
    fn form(&self, body: &Value, type_prefix: &str, ptr: &str) -> Result<Form> {
        let sptr = format!("{ptr}/requestBody/content/multipart~1form-data/schema");
        let schema = body
            .pointer("/content/multipart~1form-data/schema")
            .map(|s| deref(self.doc, s))
            .ok_or_else(|| anyhow!("#{sptr}: a multipart body needs a schema"))?;
        let props = schema
            .get("properties")
            .and_then(Value::as_object)
            .ok_or_else(|| anyhow!("#{sptr}: a multipart body needs `properties`, one per part"))?;
        let required: Vec<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut parts = Vec::new();
        for (wire, prop) in props {
            let pptr = format!("{sptr}/properties/{}", escape_pointer(wire));
            let prop = deref(self.doc, prop);
            if !type_list(prop).iter().any(|t| t == "string") {
                bail!(
                    "#{pptr}: multipart parts must be strings or files (`type: string`, `format: binary`)"
                );
            }
            let file = prop.get("format").and_then(Value::as_str) == Some("binary")
                || prop.get("contentMediaType").is_some();
            parts.push(Part {
                wire: wire.clone(),
                rust: field_ident(wire),
                doc: text(prop, "description"),
                kind: if file { PartKind::File } else { PartKind::Text },
                required: required.contains(&wire.as_str()),
            });
        }
        Ok(Form {
            name: format!("{type_prefix}Form"),
            parts,
            required: body
                .get("required")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }
}

fn poem_path(path: &str) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => format!(":{name}"),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

fn type_list(schema: &Value) -> Vec<String> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn is_object_like(doc: &Value, schema: &Value) -> bool {
    let schema = deref(doc, schema);
    schema.get("properties").is_some()
        || schema
            .get("allOf")
            .and_then(Value::as_array)
            .is_some_and(|all| all.iter().any(|m| is_object_like(doc, m)))
        || (type_list(schema).iter().any(|t| t == "object")
            && schema
                .get("additionalProperties")
                .is_none_or(|a| !a.is_object()))
            && schema.get("properties").is_some()
}
