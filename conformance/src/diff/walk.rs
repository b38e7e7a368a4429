//! The walk over everything but schemas: paths, operations, security, parameters, request
//! bodies, responses and their headers. Schemas are compared in [`super::schema`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde_json::Value;

use super::Change;
use super::rules::{self, Rule};
use super::schema::Side;
use crate::spec::resolve_local;

/// Escapes one JSON pointer segment (allocating once, and only to copy).
pub(super) fn escape_pointer(segment: &str) -> std::borrow::Cow<'_, str> {
    if segment.contains(['~', '/']) {
        crate::spec::escape_pointer(segment).into()
    } else {
        segment.into()
    }
}

/// A value in one of the documents, with its JSON pointer, `$ref`s followed.
#[derive(Debug, Clone)]
pub(super) struct At<'a> {
    pub value: &'a Value,
    pub pointer: String,
    /// The component schema name when the value was reached through a reference to
    /// `#/components/schemas/<name>`.
    pub component: Option<String>,
}

impl<'a> At<'a> {
    /// `value` found at `pointer` in `doc`, with its `$ref` chain followed.
    pub fn resolve(doc: &Document<'a>, value: &'a Value, pointer: String) -> At<'a> {
        match value
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| doc.targets.get(r))
        {
            Some(target) => target.clone(),
            None => At {
                value,
                pointer,
                component: None,
            },
        }
    }

    /// The member `key` of this object, resolved.
    pub fn child(&self, doc: &Document<'a>, key: &str) -> Option<At<'a>> {
        let value = self.value.get(key)?;
        Some(At::resolve(doc, value, self.at(key)))
    }

    /// The pointer of member `key`.
    pub fn at(&self, key: &str) -> String {
        format!("{}/{}", self.pointer, escape_pointer(key))
    }

    /// The members of the object member `key`, resolved, in document order.
    pub fn entries(&self, doc: &Document<'a>, key: &str) -> Vec<(&'a str, At<'a>)> {
        let Some(map) = self.value.get(key).and_then(Value::as_object) else {
            return Vec::new();
        };
        let base = self.at(key);
        map.iter()
            .map(|(k, v)| {
                let pointer = format!("{base}/{}", escape_pointer(k));
                (k.as_str(), At::resolve(doc, v, pointer))
            })
            .collect()
    }

    pub fn flag(&self, key: &str) -> bool {
        self.value
            .get(key)
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// One of the two documents, each `$ref` it holds resolved once (a spec like ours refers to
/// a few hundred components from thousands of places).
pub(super) struct Document<'a> {
    pub root: &'a Value,
    /// Reference → where its chain ends.
    targets: HashMap<&'a str, At<'a>>,
}

/// What re-attributing a compared pair to a later operation reaches: the changes under it.
type Reach = Vec<usize>;

impl<'a> Document<'a> {
    fn new(root: &'a Value) -> Self {
        fn collect<'a>(value: &'a Value, out: &mut HashSet<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        out.insert(r);
                    }
                    map.values().for_each(|v| collect(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
                _ => {}
            }
        }
        let mut references = HashSet::new();
        collect(root, &mut references);
        let targets = references
            .into_iter()
            .filter_map(|r| Some((r, follow(root, r)?)))
            .collect();
        Document { root, targets }
    }
}

/// Follows a local reference (and the references it leads to) to a value.
fn follow<'a>(root: &'a Value, reference: &str) -> Option<At<'a>> {
    let mut reference = reference.to_string();
    for _ in 0..64 {
        let target = resolve_local(root, &reference)?;
        let pointer = reference.trim_start_matches('#').to_string();
        match target.get("$ref").and_then(Value::as_str) {
            Some(next) => reference = next.to_string(),
            None => {
                let component = pointer
                    .strip_prefix("/components/schemas/")
                    .filter(|name| !name.contains('/'))
                    .map(crate::spec::unescape_pointer);
                return Some(At {
                    value: target,
                    pointer,
                    component,
                });
            }
        }
    }
    None
}

pub(super) struct Differ<'a> {
    pub old: Document<'a>,
    pub new: Document<'a>,
    /// The operation being walked, as `GET /path`.
    operation: String,
    changes: Vec<Change>,
    /// (rule id, old pointer, new pointer, message) → index in `changes`.
    index: HashMap<(&'static str, String, String, String), usize>,
    /// Schema pairs being compared, innermost last (the recursion guard).
    stack: Vec<Frame>,
    /// Schema pairs already compared: what each emitted and which pairs it reached. A pair
    /// met again (a shared component, in this operation or another) is not walked again:
    /// its changes gain the operation.
    done: HashMap<SchemaKey, Frame>,
    /// Every change below a compared pair, once known (see [`Differ::enter`]).
    reach: HashMap<SchemaKey, Reach>,
}

/// A pair of schema locations compared on one side.
pub(super) type SchemaKey = (Side, String, String);

/// What comparing one schema pair found: its own changes and the pairs below it.
#[derive(Debug)]
struct Frame {
    key: SchemaKey,
    changes: Vec<usize>,
    children: Vec<SchemaKey>,
}

impl<'a> Differ<'a> {
    pub fn new(old: &'a Value, new: &'a Value) -> Self {
        Differ {
            old: Document::new(old),
            new: Document::new(new),
            operation: String::new(),
            changes: Vec::new(),
            index: HashMap::new(),
            stack: Vec::new(),
            done: HashMap::new(),
            reach: HashMap::new(),
        }
    }

    /// Records a change for the current operation; the same change reached again (a shared
    /// component) only gains the operation.
    pub fn emit(&mut self, rule: Rule, old_pointer: &str, new_pointer: &str, message: String) {
        let key = (
            rule.id,
            old_pointer.to_string(),
            new_pointer.to_string(),
            message,
        );
        let index = match self.index.get(&key) {
            Some(&i) => i,
            None => {
                self.changes.push(Change {
                    rule,
                    message: key.3.clone(),
                    old_pointer: key.1.clone(),
                    new_pointer: key.2.clone(),
                    operations: Vec::new(),
                });
                let i = self.changes.len() - 1;
                self.index.insert(key, i);
                i
            }
        };
        if let Some(frame) = self.stack.last_mut()
            && !frame.changes.contains(&index)
        {
            frame.changes.push(index);
        }
        self.reaches(index);
    }

    /// Adds the current operation to change `index`.
    fn reaches(&mut self, index: usize) {
        let operations = &mut self.changes[index].operations;
        if !self.operation.is_empty() && !operations.contains(&self.operation) {
            operations.push(self.operation.clone());
        }
    }

    /// Starts comparing the schema pair `key`; false when it needs no walk: it is being
    /// compared further up (a recursive schema), or was compared before (its changes, and
    /// those of every pair below it, now also reach the current operation).
    pub fn enter(&mut self, key: SchemaKey) -> bool {
        if let Some(parent) = self.stack.last_mut() {
            parent.children.push(key.clone());
        }
        if self.stack.iter().any(|f| f.key == key) {
            return false;
        }
        if self.done.contains_key(&key) {
            // Nothing found anywhere yet: nothing below it to attribute either.
            if self.changes.is_empty() {
                return false;
            }
            let reach = match self.reach.get(&key) {
                Some(reach) => reach.clone(),
                None => {
                    let (reach, complete) = self.reach_of(&key);
                    if complete {
                        self.reach.insert(key, reach.clone());
                    }
                    reach
                }
            };
            reach.into_iter().for_each(|i| self.reaches(i));
            return false;
        }
        self.stack.push(Frame {
            key,
            changes: Vec::new(),
            children: Vec::new(),
        });
        true
    }

    /// The changes under the compared pair `key`, and whether that is all of them (a pair
    /// still being compared further up the stack may add more).
    fn reach_of(&self, key: &SchemaKey) -> (Reach, bool) {
        let mut pending = vec![key];
        let mut visited = HashSet::new();
        let mut reach = Reach::new();
        let mut complete = true;
        while let Some(key) = pending.pop() {
            if !visited.insert(key) {
                continue;
            }
            let Some(frame) = self.done.get(key) else {
                complete = false;
                continue;
            };
            reach.extend(&frame.changes);
            pending.extend(&frame.children);
        }
        reach.sort_unstable();
        reach.dedup();
        (reach, complete)
    }

    /// Ends the pair [`Self::enter`] started.
    pub fn leave(&mut self) {
        if let Some(frame) = self.stack.pop() {
            self.done.insert(frame.key.clone(), frame);
        }
    }

    pub fn run(mut self) -> Vec<Change> {
        let old_paths = paths(&self.old);
        let new_paths = paths(&self.new);
        for (key, (old_raw, old_item)) in &old_paths {
            match new_paths.get(key) {
                None => self.path_removed(old_raw, old_item),
                Some((new_raw, new_item)) => {
                    self.path_item(old_raw, old_item, new_raw, new_item);
                }
            }
        }
        for (key, (new_raw, new_item)) in &new_paths {
            if !old_paths.contains_key(key) {
                self.operation.clear();
                for (method, _) in operations(new_item) {
                    self.operation = op_label(method, new_raw);
                    self.emit(
                        rules::API_PATH_ADDED,
                        "/paths",
                        &new_item.pointer,
                        format!("The path {new_raw} was added."),
                    );
                }
            }
        }
        self.changes
    }

    fn path_removed(&mut self, raw: &str, item: &At<'a>) {
        let ops = operations(item);
        let deprecated = !ops.is_empty() && ops.iter().all(|(_, op)| op.flag("deprecated"));
        let (rule, message) = if deprecated {
            (
                rules::API_REMOVED_AFTER_DEPRECATION,
                format!("The path {raw}, whose operations were all deprecated, was removed."),
            )
        } else {
            (
                rules::API_PATH_REMOVED,
                format!("The path {raw} was removed, with all its operations."),
            )
        };
        self.operation.clear();
        if ops.is_empty() {
            self.emit(rule, &item.pointer, "/paths", message.clone());
        }
        for (method, _) in ops {
            self.operation = op_label(method, raw);
            self.emit(rule, &item.pointer, "/paths", message.clone());
        }
    }

    fn path_item(&mut self, old_raw: &str, old_item: &At<'a>, new_raw: &str, new_item: &At<'a>) {
        let old_ops: BTreeMap<_, _> = operations(old_item).into_iter().collect();
        let new_ops = operations(new_item);
        for (method, old_op) in &old_ops {
            if new_ops.iter().any(|(m, _)| m == method) {
                continue;
            }
            self.operation = op_label(method, old_raw);
            let label = self.operation.clone();
            if old_op.flag("deprecated") {
                self.emit(
                    rules::API_REMOVED_AFTER_DEPRECATION,
                    &old_op.pointer,
                    &new_item.pointer,
                    format!("{label}, which was deprecated, was removed."),
                );
            } else {
                self.emit(
                    rules::API_REMOVED,
                    &old_op.pointer,
                    &new_item.pointer,
                    format!("{label} was removed."),
                );
            }
        }
        for (method, new_op) in &new_ops {
            self.operation = op_label(method, new_raw);
            match old_ops.get(method) {
                None => {
                    let label = self.operation.clone();
                    self.emit(
                        rules::API_ADDED,
                        &old_item.pointer,
                        &new_op.pointer,
                        format!("{label} was added."),
                    );
                }
                Some(old_op) => {
                    let pair = OperationPair {
                        old_item,
                        new_item,
                        old_op,
                        new_op,
                        old_template: old_raw,
                        new_template: new_raw,
                    };
                    self.operation_pair(&pair);
                }
            }
        }
    }

    fn operation_pair(&mut self, pair: &OperationPair<'_, 'a>) {
        let (old_op, new_op) = (pair.old_op, pair.new_op);
        let label = self.operation.clone();
        match (old_op.flag("deprecated"), new_op.flag("deprecated")) {
            (false, true) => self.emit(
                rules::API_DEPRECATED,
                &old_op.pointer,
                &new_op.at("deprecated"),
                format!("{label} was deprecated."),
            ),
            (true, false) => self.emit(
                rules::API_REACTIVATED,
                &old_op.at("deprecated"),
                &new_op.pointer,
                format!("{label} is no longer deprecated."),
            ),
            _ => {}
        }
        let id = |op: &At<'_>| {
            op.value
                .get("operationId")
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        if let (Some(old_id), Some(new_id)) = (id(old_op), id(new_op))
            && old_id != new_id
        {
            self.emit(
                rules::API_OPERATION_ID_CHANGED,
                &old_op.at("operationId"),
                &new_op.at("operationId"),
                format!("The operationId of {label} changed from {old_id} to {new_id}."),
            );
        }
        self.security(old_op, new_op);
        self.parameters(pair);
        self.request_body(old_op, new_op);
        self.responses(old_op, new_op);
    }

    // ---- security ------------------------------------------------------------------------

    fn security(&mut self, old_op: &At<'a>, new_op: &At<'a>) {
        let (old_reqs, old_ptr) = requirements(&self.old, old_op);
        let (new_reqs, new_ptr) = requirements(&self.new, new_op);
        let label = self.operation.clone();
        let alternatives = |reqs: &[Requirement]| {
            reqs.iter()
                .map(describe_requirement)
                .collect::<Vec<_>>()
                .join(" or ")
        };
        for old in &old_reqs {
            if !new_reqs.iter().any(|new| requirement_within(new, old)) {
                let message = if old.is_empty() {
                    format!(
                        "{label} now requires credentials: {}.",
                        alternatives(&new_reqs)
                    )
                } else {
                    format!(
                        "{label} no longer accepts {}: it now requires {}.",
                        describe_requirement(old),
                        alternatives(&new_reqs)
                    )
                };
                self.emit(
                    rules::SECURITY_REQUIREMENT_ADDED,
                    &old_ptr,
                    &new_ptr,
                    message,
                );
            }
        }
        for new in &new_reqs {
            if old_reqs.iter().any(|old| requirement_within(old, new)) {
                continue;
            }
            if old_reqs.iter().any(|old| requirement_within(new, old)) {
                self.emit(
                    rules::SECURITY_REQUIREMENT_REMOVED,
                    &old_ptr,
                    &new_ptr,
                    format!(
                        "{label} now accepts {} (it required {}).",
                        describe_requirement(new),
                        alternatives(&old_reqs)
                    ),
                );
            } else {
                self.emit(
                    rules::SECURITY_ALTERNATIVE_ADDED,
                    &old_ptr,
                    &new_ptr,
                    format!("{label} now also accepts {}.", describe_requirement(new)),
                );
            }
        }
    }

    // ---- parameters ----------------------------------------------------------------------

    fn parameters(&mut self, pair: &OperationPair<'_, 'a>) {
        let old = parameters(&self.old, pair.old_item, pair.old_op, pair.old_template);
        let new = parameters(&self.new, pair.new_item, pair.new_op, pair.new_template);
        for (key, o) in &old {
            let Some(n) = new.get(key) else {
                self.emit(
                    rules::REQUEST_PARAMETER_REMOVED,
                    &o.at.pointer,
                    &pair.new_op.pointer,
                    format!("The {} parameter `{}` was removed.", o.location, o.name),
                );
                continue;
            };
            match (o.required, n.required) {
                (false, true) => self.emit(
                    rules::REQUEST_PARAMETER_BECAME_REQUIRED,
                    &o.at.pointer,
                    &n.at.pointer,
                    format!("The {} parameter `{}` became required.", n.location, n.name),
                ),
                (true, false) => self.emit(
                    rules::REQUEST_PARAMETER_BECAME_OPTIONAL,
                    &o.at.pointer,
                    &n.at.pointer,
                    format!("The {} parameter `{}` became optional.", n.location, n.name),
                ),
                _ => {}
            }
            if let (Some(os), Some(ns)) = (
                parameter_schema(&self.old, &o.at),
                parameter_schema(&self.new, &n.at),
            ) {
                let root = format!("the {} parameter `{}`", n.location, n.name);
                self.schema(Side::Request, &root, os, ns);
            }
        }
        for (key, n) in &new {
            if old.contains_key(key) {
                continue;
            }
            let (rule, kind) = if n.required {
                (rules::NEW_REQUIRED_REQUEST_PARAMETER, "required")
            } else {
                (rules::NEW_OPTIONAL_REQUEST_PARAMETER, "optional")
            };
            self.emit(
                rule,
                &pair.old_op.pointer,
                &n.at.pointer,
                format!(
                    "A new {kind} {} parameter `{}` was added.",
                    n.location, n.name
                ),
            );
        }
    }

    // ---- request bodies ------------------------------------------------------------------

    fn request_body(&mut self, old_op: &At<'a>, new_op: &At<'a>) {
        let old = old_op.child(&self.old, "requestBody");
        let new = new_op.child(&self.new, "requestBody");
        let label = self.operation.clone();
        let (old, new) = match (old, new) {
            (None, None) => return,
            (Some(o), None) => {
                self.emit(
                    rules::REQUEST_BODY_REMOVED,
                    &o.pointer,
                    &new_op.pointer,
                    format!("The request body of {label} was removed."),
                );
                return;
            }
            (None, Some(n)) => {
                let rule = if n.flag("required") {
                    rules::REQUEST_BODY_ADDED_REQUIRED
                } else {
                    rules::REQUEST_BODY_ADDED_OPTIONAL
                };
                let kind = if n.flag("required") {
                    "required"
                } else {
                    "optional"
                };
                self.emit(
                    rule,
                    &old_op.pointer,
                    &n.pointer,
                    format!("{label} now takes an {kind} request body."),
                );
                return;
            }
            (Some(o), Some(n)) => (o, n),
        };
        match (old.flag("required"), new.flag("required")) {
            (false, true) => self.emit(
                rules::REQUEST_BODY_BECAME_REQUIRED,
                &old.pointer,
                &new.at("required"),
                format!("The request body of {label} became required."),
            ),
            (true, false) => self.emit(
                rules::REQUEST_BODY_BECAME_OPTIONAL,
                &old.at("required"),
                &new.pointer,
                format!("The request body of {label} became optional."),
            ),
            _ => {}
        }
        let old_media = media_types(&self.old, &old);
        let new_media = media_types(&self.new, &new);
        for (name, o) in &old_media {
            match new_media.get(name) {
                None => self.emit(
                    rules::REQUEST_MEDIA_TYPE_REMOVED,
                    &o.pointer,
                    &new.at("content"),
                    format!("{label} no longer accepts a {name} request body."),
                ),
                Some(n) => {
                    if let Some((os, ns)) = media_schemas(&self.old, o, &self.new, n) {
                        let root = format!("the {name} request body");
                        self.schema(Side::Request, &root, os, ns);
                    }
                }
            }
        }
        for (name, n) in &new_media {
            if !old_media.contains_key(name) {
                self.emit(
                    rules::REQUEST_MEDIA_TYPE_ADDED,
                    &old.at("content"),
                    &n.pointer,
                    format!("{label} now also accepts a {name} request body."),
                );
            }
        }
    }

    // ---- responses -----------------------------------------------------------------------

    fn responses(&mut self, old_op: &At<'a>, new_op: &At<'a>) {
        let old = statuses(&self.old, old_op);
        let new = statuses(&self.new, new_op);
        let label = self.operation.clone();
        let old_container = old_op.at("responses");
        let new_container = new_op.at("responses");
        for (status, o) in &old {
            let Some(n) = new.get(status) else {
                let rule = if is_success(status) {
                    rules::RESPONSE_STATUS_REMOVED
                } else {
                    rules::RESPONSE_ERROR_STATUS_REMOVED
                };
                self.emit(
                    rule,
                    &o.pointer,
                    &new_container,
                    format!("{label} no longer documents the {status} response."),
                );
                continue;
            };
            self.response(status, o, n);
        }
        for (status, n) in &new {
            if old.contains_key(status) {
                continue;
            }
            let rule = if is_success(status) {
                rules::RESPONSE_STATUS_ADDED
            } else {
                rules::RESPONSE_ERROR_STATUS_ADDED
            };
            self.emit(
                rule,
                &old_container,
                &n.pointer,
                format!("{label} now documents a {status} response."),
            );
        }
    }

    fn response(&mut self, status: &str, old: &At<'a>, new: &At<'a>) {
        let label = self.operation.clone();
        let old_media = media_types(&self.old, old);
        let new_media = media_types(&self.new, new);
        for (name, o) in &old_media {
            match new_media.get(name) {
                None => self.emit(
                    rules::RESPONSE_MEDIA_TYPE_REMOVED,
                    &o.pointer,
                    &new.pointer,
                    format!("The {status} response of {label} no longer has a {name} body."),
                ),
                Some(n) => {
                    if let Some((os, ns)) = media_schemas(&self.old, o, &self.new, n) {
                        let root = format!("the {status} {name} response body");
                        self.schema(Side::Response, &root, os, ns);
                    }
                }
            }
        }
        for (name, n) in &new_media {
            if !old_media.contains_key(name) {
                self.emit(
                    rules::RESPONSE_MEDIA_TYPE_ADDED,
                    &old.pointer,
                    &n.pointer,
                    format!("The {status} response of {label} may now have a {name} body."),
                );
            }
        }
        let old_headers = headers(&self.old, old);
        let new_headers = headers(&self.new, new);
        for (key, (name, o)) in &old_headers {
            let Some((_, n)) = new_headers.get(key) else {
                let (rule, kind) = if o.flag("required") {
                    (rules::RESPONSE_REQUIRED_HEADER_REMOVED, "required")
                } else {
                    (rules::RESPONSE_OPTIONAL_HEADER_REMOVED, "optional")
                };
                self.emit(
                    rule,
                    &o.pointer,
                    &new.pointer,
                    format!("The {kind} header `{name}` of the {status} response was removed."),
                );
                continue;
            };
            match (o.flag("required"), n.flag("required")) {
                (true, false) => self.emit(
                    rules::RESPONSE_HEADER_BECAME_OPTIONAL,
                    &o.at("required"),
                    &n.pointer,
                    format!("The header `{name}` of the {status} response became optional."),
                ),
                (false, true) => self.emit(
                    rules::RESPONSE_HEADER_BECAME_REQUIRED,
                    &o.pointer,
                    &n.at("required"),
                    format!("The header `{name}` of the {status} response became required."),
                ),
                _ => {}
            }
            if let (Some(os), Some(ns)) = (
                parameter_schema(&self.old, o),
                parameter_schema(&self.new, n),
            ) {
                let root = format!("the `{name}` header of the {status} response");
                self.schema(Side::Response, &root, os, ns);
            }
        }
        for (key, (name, n)) in &new_headers {
            if !old_headers.contains_key(key) {
                self.emit(
                    rules::RESPONSE_HEADER_ADDED,
                    &old.pointer,
                    &n.pointer,
                    format!("The {status} response now has a `{name}` header."),
                );
            }
        }
    }
}

/// Both sides of one operation that exists in both documents.
struct OperationPair<'p, 'a> {
    old_item: &'p At<'a>,
    new_item: &'p At<'a>,
    old_op: &'p At<'a>,
    new_op: &'p At<'a>,
    old_template: &'p str,
    new_template: &'p str,
}

fn op_label(method: &str, path: &str) -> String {
    format!("{} {path}", method.to_ascii_uppercase())
}

/// The document's paths by their template with parameter names blanked (`/pets/{}`), so a
/// renamed path parameter is the same path.
fn paths<'a>(doc: &Document<'a>) -> BTreeMap<String, (String, At<'a>)> {
    let mut out = BTreeMap::new();
    let Some(paths) = doc.root.get("paths").and_then(Value::as_object) else {
        return out;
    };
    for (raw, item) in paths {
        let pointer = format!("/paths/{}", escape_pointer(raw));
        out.entry(template_key(raw))
            .or_insert_with(|| (raw.clone(), At::resolve(doc, item, pointer)));
    }
    out
}

fn template_key(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_param = false;
    for c in path.trim_end_matches('/').chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// The path template's parameter names, in order.
fn template_names(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(name, _)| name))
        .collect()
}

fn operations<'a>(item: &At<'a>) -> Vec<(&'static str, At<'a>)> {
    crate::METHODS
        .iter()
        .filter_map(|m| {
            let op = item.value.get(*m)?;
            op.is_object().then(|| {
                (
                    *m,
                    At {
                        value: op,
                        pointer: item.at(m),
                        component: None,
                    },
                )
            })
        })
        .collect()
}

/// One scheme name → its scopes; an empty requirement asks for nothing.
type Requirement = BTreeMap<String, BTreeSet<String>>;

/// The operation's effective security (its own, else the document's), and where it is.
fn requirements(doc: &Document<'_>, op: &At<'_>) -> (Vec<Requirement>, String) {
    let (list, pointer) = match op.value.get("security") {
        Some(list) => (list, op.at("security")),
        None => match doc.root.get("security") {
            Some(list) => (list, "/security".to_string()),
            None => return (vec![Requirement::new()], op.pointer.clone()),
        },
    };
    let mut out: Vec<Requirement> = list
        .as_array()
        .map(|alternatives| {
            alternatives
                .iter()
                .filter_map(Value::as_object)
                .map(|req| {
                    req.iter()
                        .map(|(scheme, scopes)| {
                            let scopes = scopes
                                .as_array()
                                .map(|s| {
                                    s.iter()
                                        .filter_map(Value::as_str)
                                        .map(str::to_string)
                                        .collect()
                                })
                                .unwrap_or_default();
                            (scheme.clone(), scopes)
                        })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    if out.is_empty() {
        out.push(Requirement::new());
    }
    (out, pointer)
}

/// Whether a client holding the credentials of `outer` satisfies `inner`.
fn requirement_within(inner: &Requirement, outer: &Requirement) -> bool {
    inner
        .iter()
        .all(|(scheme, scopes)| outer.get(scheme).is_some_and(|held| scopes.is_subset(held)))
}

fn describe_requirement(req: &Requirement) -> String {
    if req.is_empty() {
        return "no credentials".into();
    }
    req.iter()
        .map(|(scheme, scopes)| {
            if scopes.is_empty() {
                format!("`{scheme}`")
            } else {
                let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
                format!("`{scheme}` [{}]", scopes.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join(" + ")
}

/// One parameter of an operation, path-level ones included.
struct Parameter<'a> {
    name: String,
    location: String,
    required: bool,
    at: At<'a>,
}

/// The operation's parameters (the path item's, overridden by the operation's) keyed by
/// location and name; path parameters by their position in the template, so renaming one
/// changes nothing; header names case-insensitively.
fn parameters<'a>(
    doc: &Document<'a>, item: &At<'a>, op: &At<'a>, template: &str,
) -> BTreeMap<(String, String), Parameter<'a>> {
    let names = template_names(template);
    let mut out = BTreeMap::new();
    for owner in [item, op] {
        let Some(list) = owner.value.get("parameters").and_then(Value::as_array) else {
            continue;
        };
        for (i, p) in list.iter().enumerate() {
            let at = At::resolve(doc, p, format!("{}/{i}", owner.at("parameters")));
            let (Some(name), Some(location)) = (
                at.value.get("name").and_then(Value::as_str),
                at.value.get("in").and_then(Value::as_str),
            ) else {
                continue;
            };
            // OpenAPI ignores these header parameters (content negotiation and credentials
            // are described elsewhere).
            if location == "header"
                && ["accept", "content-type", "authorization"]
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h))
            {
                continue;
            }
            let key = match location {
                "path" => names
                    .iter()
                    .position(|n| *n == name)
                    .map(|i| format!("#{i}"))
                    .unwrap_or_else(|| name.to_string()),
                "header" => name.to_ascii_lowercase(),
                _ => name.to_string(),
            };
            let required = location == "path" || at.flag("required");
            out.insert(
                (location.to_string(), key),
                Parameter {
                    name: name.to_string(),
                    location: location.to_string(),
                    required,
                    at,
                },
            );
        }
    }
    out
}

/// A parameter's or header's schema: `schema`, else the one of its single `content` entry.
fn parameter_schema<'a>(doc: &Document<'a>, at: &At<'a>) -> Option<At<'a>> {
    at.child(doc, "schema").or_else(|| {
        at.entries(doc, "content")
            .into_iter()
            .next()
            .and_then(|(_, media)| media.child(doc, "schema"))
    })
}

/// The schemas of a media type on both sides; a side without one has the empty schema
/// (anything goes), so a schema that appears or disappears compares as one.
fn media_schemas<'a>(
    old_doc: &Document<'a>, old: &At<'a>, new_doc: &Document<'a>, new: &At<'a>,
) -> Option<(At<'a>, At<'a>)> {
    static ANYTHING: std::sync::LazyLock<Value> =
        std::sync::LazyLock::new(|| Value::Object(serde_json::Map::new()));
    let or_anything = |media: &At<'a>, schema: Option<At<'a>>| {
        schema.unwrap_or_else(|| At {
            value: &ANYTHING,
            pointer: media.pointer.clone(),
            component: None,
        })
    };
    match (old.child(old_doc, "schema"), new.child(new_doc, "schema")) {
        (None, None) => None,
        (o, n) => Some((or_anything(old, o), or_anything(new, n))),
    }
}

/// The `content` entries by lower-cased media type.
fn media_types<'a>(doc: &Document<'a>, owner: &At<'a>) -> BTreeMap<String, At<'a>> {
    owner
        .entries(doc, "content")
        .into_iter()
        .map(|(name, at)| (name.to_ascii_lowercase(), at))
        .collect()
}

/// The responses by upper-cased status (`200`, `4XX`, `DEFAULT`).
fn statuses<'a>(doc: &Document<'a>, op: &At<'a>) -> BTreeMap<String, At<'a>> {
    op.entries(doc, "responses")
        .into_iter()
        .filter(|(status, _)| !status.starts_with("x-"))
        .map(|(status, at)| (status.to_ascii_uppercase(), at))
        .collect()
}

fn is_success(status: &str) -> bool {
    matches!(status.as_bytes().first(), Some(b'1' | b'2' | b'3'))
}

/// A response's headers by lower-cased name (`Content-Type` is ignored, as the spec says).
fn headers<'a>(doc: &Document<'a>, response: &At<'a>) -> BTreeMap<String, (String, At<'a>)> {
    response
        .entries(doc, "headers")
        .into_iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("content-type"))
        .map(|(name, at)| (name.to_ascii_lowercase(), (name.to_string(), at)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_match_whatever_the_parameter_names() {
        assert_eq!(template_key("/pets/{id}/toys/{toy}"), "/pets/{}/toys/{}");
        assert_eq!(template_key("/pets/{petId}/"), "/pets/{}");
        assert_eq!(template_names("/pets/{id}/toys/{toy}"), vec!["id", "toy"]);
    }
}
