//! Comparing two schemas on the side they sit on.
//!
//! A request schema describes what a client sends: the new document narrowing it (a type, an
//! enum, a bound, a required property) breaks clients. A response schema describes what a
//! client reads: widening it breaks them. `allOf` is merged into the schema it composes (so
//! moving properties into a shared base is no change), a `oneOf`/`anyOf` with one non-null
//! branch is read as that branch (the usual nullable-reference idiom), and 3.0 `nullable` has
//! been normalized to a `"null"` type by the loader. Every (old, new) pair of schema locations
//! is compared once per operation and side, which also stops recursive schemas.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use super::rules::{self, Rule};
use super::walk::{At, Differ, Document};

/// Which way data flows through a schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Side {
    /// The client sends it (parameters, request bodies).
    Request,
    /// The client reads it (response bodies and headers).
    Response,
}

impl Side {
    fn word(self) -> &'static str {
        match self {
            Side::Request => "request",
            Side::Response => "response",
        }
    }

    /// Picks the request or the response rule.
    fn pick(self, request: Rule, response: Rule) -> Rule {
        match self {
            Side::Request => request,
            Side::Response => response,
        }
    }
}

/// How a schema position is named in sentences: a root (`the 200 application/json response
/// body`, `schema `Pet``) and a path below it (`tags[].name`).
#[derive(Debug, Clone)]
struct Label {
    root: String,
    path: String,
}

impl Label {
    fn component(name: &str) -> Label {
        Label {
            root: format!("schema `{name}`"),
            path: String::new(),
        }
    }

    fn child(&self, segment: &str) -> Label {
        let path = if self.path.is_empty() {
            segment.to_string()
        } else {
            format!("{}.{segment}", self.path)
        };
        Label {
            root: self.root.clone(),
            path,
        }
    }

    fn items(&self) -> Label {
        Label {
            root: self.root.clone(),
            path: format!("{}[]", self.path),
        }
    }

    /// `the query parameter `limit``, or `` `tags[].name` of schema `Pet` ``.
    fn describe(&self) -> String {
        if self.path.is_empty() {
            self.root.clone()
        } else {
            format!("`{}` of {}", self.path, self.root)
        }
    }

    /// [`Self::describe`] starting a sentence.
    fn sentence(&self) -> String {
        let text = self.describe();
        let mut chars = text.chars();
        match chars.next() {
            Some(first) => first.to_uppercase().chain(chars).collect(),
            None => text,
        }
    }
}

/// A schema with its `allOf` parts (and a lone non-null `oneOf`/`anyOf` branch) merged: a
/// keyword is read from the first part that has it, properties and `required` from all.
struct View<'a> {
    parts: Vec<At<'a>>,
}

impl<'a> View<'a> {
    /// `merge_lone`: read a lone non-null `oneOf`/`anyOf` branch as part of the schema (only
    /// when the other side has at most one too, else the branches are compared as branches).
    fn new(doc: &Document<'a>, at: At<'a>, merge_lone: bool) -> View<'a> {
        let mut parts = Vec::new();
        collect_parts(doc, at, merge_lone, &mut parts);
        View { parts }
    }

    fn pointer(&self) -> &str {
        self.parts.first().map(|p| p.pointer.as_str()).unwrap_or("")
    }

    /// The keyword's value, from the first part that has it.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.parts.iter().find_map(|p| p.value.get(key))
    }

    /// The pointer of `key` where [`Self::get`] finds it, else of the schema.
    fn pointer_of(&self, key: &str) -> String {
        self.parts
            .iter()
            .find(|p| p.value.get(key).is_some())
            .map(|p| p.at(key))
            .unwrap_or_else(|| self.pointer().to_string())
    }

    fn child(&self, doc: &Document<'a>, key: &str) -> Option<At<'a>> {
        self.parts.iter().find_map(|p| p.child(doc, key))
    }

    /// Properties of every part (the first definition of a name wins), in document order.
    fn properties(&self, doc: &Document<'a>) -> Vec<Property<'a>> {
        let mut out: Vec<Property<'a>> = Vec::new();
        for part in &self.parts {
            let Some(map) = part.value.get("properties").and_then(Value::as_object) else {
                continue;
            };
            let base = part.at("properties");
            for (name, raw) in map {
                if out.iter().any(|p| p.name == *name) {
                    continue;
                }
                let pointer = format!("{base}/{}", super::walk::escape_pointer(name));
                let at = At::resolve(doc, raw, pointer.clone());
                let flag = |key: &str| {
                    raw.get(key).and_then(Value::as_bool).unwrap_or(false) || at.flag(key)
                };
                out.push(Property {
                    name: name.clone(),
                    pointer,
                    read_only: flag("readOnly"),
                    write_only: flag("writeOnly"),
                    at,
                });
            }
        }
        out
    }

    fn required(&self) -> BTreeSet<&'a str> {
        self.parts
            .iter()
            .filter_map(|p| p.value.get("required").and_then(Value::as_array))
            .flatten()
            .filter_map(Value::as_str)
            .collect()
    }

    /// Whether unknown properties are rejected.
    fn closed(&self) -> bool {
        self.parts.iter().any(|p| {
            p.value.get("additionalProperties") == Some(&Value::Bool(false))
                || p.value.get("unevaluatedProperties") == Some(&Value::Bool(false))
        })
    }

    /// The declared types without `"null"`; `None` when any type goes. Without a `type`, a
    /// `oneOf`/`anyOf` whose branches all declare one has the union of theirs (the 3.0 form
    /// of `type: [a, b]`).
    fn types(&self, doc: &Document<'a>) -> Option<BTreeSet<&'a str>> {
        let Some(value) = self.get("type") else {
            let own = self.parts.first()?;
            let key = ["oneOf", "anyOf"]
                .into_iter()
                .find(|k| own.value.get(*k).is_some())?;
            let mut union = BTreeSet::new();
            for branch in branches(doc, own.value, &own.pointer, key) {
                union.extend(declared_types(branch.at.value)?);
            }
            return Some(union);
        };
        declared_types(value)
    }

    fn nullable(&self, doc: &Document<'a>) -> bool {
        let names_null = |t: &Value| {
            t == "null"
                || t.as_array()
                    .is_some_and(|ts| ts.iter().any(|t| t == "null"))
        };
        let null_branch = |b: &'a Value| {
            At::resolve(doc, b, String::new())
                .value
                .get("type")
                .is_some_and(names_null)
        };
        self.get("type").is_some_and(names_null)
            || self.parts.iter().any(|p| {
                ["oneOf", "anyOf"].iter().any(|key| {
                    p.value
                        .get(*key)
                        .and_then(Value::as_array)
                        .is_some_and(|branches| branches.iter().any(null_branch))
                })
            })
            || self
                .get("enum")
                .and_then(Value::as_array)
                .is_some_and(|values| values.iter().any(Value::is_null))
    }

    /// `enum` without null, or a 3.1 `const` as a one-value enum; and the keyword.
    fn enumeration(&self) -> Option<(Vec<&'a Value>, &'static str)> {
        if let Some(Value::Array(values)) = self.get("enum") {
            return Some((values.iter().filter(|v| !v.is_null()).collect(), "enum"));
        }
        match self.get("const") {
            Some(value) if !value.is_null() => Some((vec![value], "const")),
            _ => None,
        }
    }

    fn is_object(&self, doc: &Document<'a>) -> bool {
        self.types(doc).is_some_and(|t| t.contains("object"))
            || self.get("properties").is_some()
            || self.get("additionalProperties").is_some()
    }
}

/// The types a `type` keyword (or a schema's `type`) names, without `"null"`.
fn declared_types(value: &Value) -> Option<BTreeSet<&str>> {
    let value = match value {
        Value::Object(schema) => schema.get("type")?,
        other => other,
    };
    let types = match value {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => return None,
    };
    Some(types.into_iter().filter(|t| *t != "null").collect())
}

fn collect_parts<'a>(doc: &Document<'a>, at: At<'a>, merge_lone: bool, parts: &mut Vec<At<'a>>) {
    if parts.len() >= 32 || parts.iter().any(|p| p.pointer == at.pointer) {
        return;
    }
    let value = at.value;
    let pointer = at.pointer.clone();
    parts.push(at);
    if let Some(list) = value.get("allOf").and_then(Value::as_array) {
        for (i, branch) in list.iter().enumerate() {
            let child = At::resolve(doc, branch, format!("{pointer}/allOf/{i}"));
            collect_parts(doc, child, merge_lone, parts);
        }
    }
    if !merge_lone {
        return;
    }
    for key in ["oneOf", "anyOf"] {
        let branches = branches(doc, value, &pointer, key);
        if let [only] = branches.as_slice() {
            collect_parts(doc, only.at.clone(), merge_lone, parts);
        }
    }
}

struct Property<'a> {
    name: String,
    /// Where the property is written (`at` is where its `$ref` leads).
    pointer: String,
    read_only: bool,
    write_only: bool,
    at: At<'a>,
}

impl Property<'_> {
    /// Whether the property never travels on this side (read-only ones are not sent,
    /// write-only ones not returned).
    fn hidden(&self, side: Side) -> bool {
        match side {
            Side::Request => self.read_only,
            Side::Response => self.write_only,
        }
    }
}

/// One non-null branch of a `oneOf`/`anyOf`.
struct Branch<'a> {
    index: usize,
    at: At<'a>,
    /// What identifies it across documents: its `$ref` or its `title`.
    identity: Option<String>,
    name: String,
}

fn branches<'a>(
    doc: &Document<'a>, schema: &'a Value, pointer: &str, key: &str,
) -> Vec<Branch<'a>> {
    let Some(list) = schema.get(key).and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .enumerate()
        .filter_map(|(index, raw)| {
            let at = At::resolve(doc, raw, format!("{pointer}/{key}/{index}"));
            if at.value.get("type").and_then(Value::as_str) == Some("null") {
                return None;
            }
            let reference = raw.get("$ref").and_then(Value::as_str);
            let title = at.value.get("title").and_then(Value::as_str);
            let identity = reference
                .map(|r| format!("ref:{r}"))
                .or_else(|| title.map(|t| format!("title:{t}")));
            let name = match (reference, title) {
                (Some(r), _) => format!("`{}`", r.rsplit('/').next().unwrap_or(r)),
                (None, Some(t)) => format!("`{t}`"),
                (None, None) => format!("#{index}"),
            };
            Some(Branch {
                index,
                at,
                identity,
                name,
            })
        })
        .collect()
}

/// Pairs old and new branches: same `$ref` or title first, then equal inline schemas, then
/// the remaining inline ones in order. Returns the pairs and the unpaired on each side.
fn pair_branches<'b, 'a>(
    old: &'b [Branch<'a>], new: &'b [Branch<'a>],
) -> (
    Vec<(&'b Branch<'a>, &'b Branch<'a>)>,
    Vec<&'b Branch<'a>>,
    Vec<&'b Branch<'a>>,
) {
    let mut taken = HashSet::new();
    let mut pairs = Vec::new();
    let mut unpaired_old = Vec::new();
    for o in old.iter().filter(|b| b.identity.is_some()) {
        match new
            .iter()
            .find(|n| n.identity == o.identity && !taken.contains(&n.index))
        {
            Some(n) => {
                taken.insert(n.index);
                pairs.push((o, n));
            }
            None => unpaired_old.push(o),
        }
    }
    let mut inline_old: Vec<&Branch<'a>> = old.iter().filter(|b| b.identity.is_none()).collect();
    inline_old.retain(|o| {
        match new
            .iter()
            .find(|n| n.identity.is_none() && !taken.contains(&n.index) && n.at.value == o.at.value)
        {
            Some(n) => {
                taken.insert(n.index);
                pairs.push((o, n));
                false
            }
            None => true,
        }
    });
    for o in inline_old {
        match new
            .iter()
            .find(|n| n.identity.is_none() && !taken.contains(&n.index))
        {
            Some(n) => {
                taken.insert(n.index);
                pairs.push((o, n));
            }
            None => unpaired_old.push(o),
        }
    }
    let unpaired_new = new.iter().filter(|n| !taken.contains(&n.index)).collect();
    (pairs, unpaired_old, unpaired_new)
}

/// The numeric bounds compared, each as one effective bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BoundKind {
    Maximum,
    Minimum,
    MaxLength,
    MinLength,
    MaxItems,
    MinItems,
}

impl BoundKind {
    const ALL: [BoundKind; 6] = [
        BoundKind::Maximum,
        BoundKind::Minimum,
        BoundKind::MaxLength,
        BoundKind::MinLength,
        BoundKind::MaxItems,
        BoundKind::MinItems,
    ];

    fn is_upper(self) -> bool {
        matches!(
            self,
            BoundKind::Maximum | BoundKind::MaxLength | BoundKind::MaxItems
        )
    }

    /// The keywords that set it: (keyword, exclusive).
    fn keywords(self) -> &'static [(&'static str, bool)] {
        match self {
            BoundKind::Maximum => &[("maximum", false), ("exclusiveMaximum", true)],
            BoundKind::Minimum => &[("minimum", false), ("exclusiveMinimum", true)],
            BoundKind::MaxLength => &[("maxLength", false)],
            BoundKind::MinLength => &[("minLength", false)],
            BoundKind::MaxItems => &[("maxItems", false)],
            BoundKind::MinItems => &[("minItems", false)],
        }
    }

    fn name(self) -> &'static str {
        match self {
            BoundKind::Maximum => "maximum",
            BoundKind::Minimum => "minimum",
            BoundKind::MaxLength => "maxLength",
            BoundKind::MinLength => "minLength",
            BoundKind::MaxItems => "maxItems",
            BoundKind::MinItems => "minItems",
        }
    }

    /// The rule for a tightened (or set) or loosened (or removed) bound on `side`.
    fn rule(self, side: Side, tighter: bool) -> Rule {
        use BoundKind::*;
        match (side, self, tighter) {
            (Side::Request, Maximum, true) => rules::REQUEST_MAXIMUM_DECREASED,
            (Side::Request, Maximum, false) => rules::REQUEST_MAXIMUM_INCREASED,
            (Side::Request, Minimum, true) => rules::REQUEST_MINIMUM_INCREASED,
            (Side::Request, Minimum, false) => rules::REQUEST_MINIMUM_DECREASED,
            (Side::Request, MaxLength, true) => rules::REQUEST_MAX_LENGTH_DECREASED,
            (Side::Request, MaxLength, false) => rules::REQUEST_MAX_LENGTH_INCREASED,
            (Side::Request, MinLength, true) => rules::REQUEST_MIN_LENGTH_INCREASED,
            (Side::Request, MinLength, false) => rules::REQUEST_MIN_LENGTH_DECREASED,
            (Side::Request, MaxItems, true) => rules::REQUEST_MAX_ITEMS_DECREASED,
            (Side::Request, MaxItems, false) => rules::REQUEST_MAX_ITEMS_INCREASED,
            (Side::Request, MinItems, true) => rules::REQUEST_MIN_ITEMS_INCREASED,
            (Side::Request, MinItems, false) => rules::REQUEST_MIN_ITEMS_DECREASED,
            (Side::Response, Maximum, true) => rules::RESPONSE_MAXIMUM_DECREASED,
            (Side::Response, Maximum, false) => rules::RESPONSE_MAXIMUM_INCREASED,
            (Side::Response, Minimum, true) => rules::RESPONSE_MINIMUM_INCREASED,
            (Side::Response, Minimum, false) => rules::RESPONSE_MINIMUM_DECREASED,
            (Side::Response, MaxLength, true) => rules::RESPONSE_MAX_LENGTH_DECREASED,
            (Side::Response, MaxLength, false) => rules::RESPONSE_MAX_LENGTH_INCREASED,
            (Side::Response, MinLength, true) => rules::RESPONSE_MIN_LENGTH_INCREASED,
            (Side::Response, MinLength, false) => rules::RESPONSE_MIN_LENGTH_DECREASED,
            (Side::Response, MaxItems, true) => rules::RESPONSE_MAX_ITEMS_DECREASED,
            (Side::Response, MaxItems, false) => rules::RESPONSE_MAX_ITEMS_INCREASED,
            (Side::Response, MinItems, true) => rules::RESPONSE_MIN_ITEMS_INCREASED,
            (Side::Response, MinItems, false) => rules::RESPONSE_MIN_ITEMS_DECREASED,
        }
    }
}

/// One effective bound: its value, whether it is exclusive, and the keyword that sets it.
struct Bound<'a> {
    value: f64,
    exclusive: bool,
    raw: &'a Value,
    keyword: &'static str,
}

impl Bound<'_> {
    fn text(&self) -> String {
        if self.exclusive {
            format!("{} (exclusive)", self.raw)
        } else {
            self.raw.to_string()
        }
    }
}

fn bound<'a>(view: &View<'a>, kind: BoundKind) -> Option<Bound<'a>> {
    let mut best: Option<Bound<'a>> = None;
    for (keyword, exclusive) in kind.keywords() {
        let Some(raw) = view.get(keyword) else {
            continue;
        };
        let Some(number) = raw.as_f64() else {
            continue;
        };
        let candidate = Bound {
            value: number,
            exclusive: *exclusive,
            raw,
            keyword,
        };
        best = match best {
            Some(b) if !tighter(kind, &candidate, &b) => Some(b),
            _ => Some(candidate),
        };
    }
    best
}

/// Whether bound `a` admits strictly fewer values than bound `b`.
fn tighter(kind: BoundKind, a: &Bound<'_>, b: &Bound<'_>) -> bool {
    if a.value == b.value {
        return a.exclusive && !b.exclusive;
    }
    if kind.is_upper() {
        a.value < b.value
    } else {
        a.value > b.value
    }
}

/// How a new type set or format relates to the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relation {
    Same,
    Widened,
    Narrowed,
    Changed,
}

fn type_relation(old: &Option<BTreeSet<&str>>, new: &Option<BTreeSet<&str>>) -> Relation {
    // Every type in `a` is allowed by `b` (an integer is a number).
    let within = |a: &BTreeSet<&str>, b: &BTreeSet<&str>| {
        a.iter()
            .all(|t| b.contains(t) || (*t == "integer" && b.contains("number")))
    };
    match (old, new) {
        (None, None) => Relation::Same,
        (Some(_), None) => Relation::Widened,
        (None, Some(_)) => Relation::Narrowed,
        (Some(o), Some(n)) if o == n => Relation::Same,
        (Some(o), Some(n)) if within(o, n) => Relation::Widened,
        (Some(o), Some(n)) if within(n, o) => Relation::Narrowed,
        _ => Relation::Changed,
    }
}

fn format_relation(old: Option<&str>, new: Option<&str>) -> Relation {
    match (old, new) {
        (None, None) => Relation::Same,
        (Some(o), Some(n)) if o == n => Relation::Same,
        (Some(_), None) => Relation::Widened,
        (None, Some(_)) => Relation::Narrowed,
        (Some("int32"), Some("int64")) | (Some("float"), Some("double")) => Relation::Widened,
        (Some("int64"), Some("int32")) | (Some("double"), Some("float")) => Relation::Narrowed,
        _ => Relation::Changed,
    }
}

fn show_types(types: &Option<BTreeSet<&str>>) -> String {
    match types {
        None => "any type".into(),
        Some(t) if t.is_empty() => "`null`".into(),
        Some(t) => format!("`{}`", t.iter().copied().collect::<Vec<_>>().join(" | ")),
    }
}

fn show_values(values: &[&Value]) -> String {
    const SHOWN: usize = 6;
    let mut out: Vec<String> = values
        .iter()
        .take(SHOWN)
        .map(|v| format!("`{v}`"))
        .collect();
    if values.len() > SHOWN {
        out.push(format!("… ({} in all)", values.len()));
    }
    out.join(", ")
}

impl<'a> Differ<'a> {
    /// Compares the schemas at `old` and `new` on `side`; `root` names the position in
    /// sentences (`the query parameter `limit``).
    pub(super) fn schema(&mut self, side: Side, root: &str, old: At<'a>, new: At<'a>) {
        let label = Label {
            root: root.to_string(),
            path: String::new(),
        };
        self.compare(side, &label, old, new);
    }

    fn compare(&mut self, side: Side, label: &Label, old: At<'a>, new: At<'a>) {
        if !self.enter((side, old.pointer.clone(), new.pointer.clone())) {
            return;
        }
        self.compare_views(side, label, old, new);
        self.leave();
    }

    fn compare_views(&mut self, side: Side, label: &Label, old: At<'a>, new: At<'a>) {
        let label = match new.component.as_deref().or(old.component.as_deref()) {
            Some(name) => Label::component(name),
            None => label.clone(),
        };
        let lone = |doc: &Document<'a>, at: &At<'a>| {
            ["oneOf", "anyOf"]
                .iter()
                .all(|key| branches(doc, at.value, &at.pointer, key).len() <= 1)
        };
        let merge_lone = lone(&self.old, &old) && lone(&self.new, &new);
        let old = View::new(&self.old, old, merge_lone);
        let new = View::new(&self.new, new, merge_lone);
        self.nullability(side, &label, &old, &new);
        if !self.types(side, &label, &old, &new) {
            return;
        }
        self.format(side, &label, &old, &new);
        self.enumeration(side, &label, &old, &new);
        self.pattern(side, &label, &old, &new);
        for kind in BoundKind::ALL {
            self.bound(side, &label, &old, &new, kind);
        }
        if old.is_object(&self.old) || new.is_object(&self.new) {
            self.properties(side, &label, &old, &new);
        }
        if let (Some(o), Some(n)) = (old.child(&self.old, "items"), new.child(&self.new, "items")) {
            self.compare(side, &label.items(), o, n);
        }
        if let (Some(o), Some(n)) = (
            old.child(&self.old, "additionalProperties")
                .filter(|a| a.value.is_object()),
            new.child(&self.new, "additionalProperties")
                .filter(|a| a.value.is_object()),
        ) {
            self.compare(side, &label.child("*"), o, n);
        }
        for key in ["oneOf", "anyOf"] {
            self.branches(side, &label, &old, &new, key);
        }
    }

    fn nullability(&mut self, side: Side, label: &Label, old: &View<'a>, new: &View<'a>) {
        let (was, is) = (old.nullable(&self.old), new.nullable(&self.new));
        if was == is {
            return;
        }
        let (rule, text) = match (side, is) {
            (Side::Request, true) => (rules::REQUEST_PROPERTY_BECAME_NULLABLE, "may now be null"),
            (Side::Request, false) => (
                rules::REQUEST_PROPERTY_BECAME_NOT_NULLABLE,
                "may no longer be null",
            ),
            (Side::Response, true) => (rules::RESPONSE_PROPERTY_BECAME_NULLABLE, "may now be null"),
            (Side::Response, false) => (
                rules::RESPONSE_PROPERTY_BECAME_NOT_NULLABLE,
                "is no longer null",
            ),
        };
        self.emit(
            rule,
            &old.pointer_of("type"),
            &new.pointer_of("type"),
            format!("{} {text} in the {}.", label.sentence(), side.word()),
        );
    }

    /// Reports a type change; false when the types are unrelated (nothing below compares).
    fn types(&mut self, side: Side, label: &Label, old: &View<'a>, new: &View<'a>) -> bool {
        // Two untyped compositions: their branches are compared as branches.
        let composed = |v: &View<'a>| {
            v.get("type").is_none()
                && v.parts.first().is_some_and(|own| {
                    own.value.get("oneOf").is_some() || own.value.get("anyOf").is_some()
                })
        };
        if composed(old) && composed(new) {
            return true;
        }
        let (was, is) = (old.types(&self.old), new.types(&self.new));
        let relation = type_relation(&was, &is);
        let (rule, verb) = match relation {
            Relation::Same => return true,
            Relation::Widened => (
                side.pick(
                    rules::REQUEST_PROPERTY_TYPE_WIDENED,
                    rules::RESPONSE_PROPERTY_TYPE_WIDENED,
                ),
                "widened",
            ),
            Relation::Narrowed => (
                side.pick(
                    rules::REQUEST_PROPERTY_TYPE_NARROWED,
                    rules::RESPONSE_PROPERTY_TYPE_NARROWED,
                ),
                "narrowed",
            ),
            Relation::Changed => (
                side.pick(
                    rules::REQUEST_PROPERTY_TYPE_CHANGED,
                    rules::RESPONSE_PROPERTY_TYPE_CHANGED,
                ),
                "changed",
            ),
        };
        self.emit(
            rule,
            &old.pointer_of("type"),
            &new.pointer_of("type"),
            format!(
                "The type of {} in the {} {verb} from {} to {}.",
                label.describe(),
                side.word(),
                show_types(&was),
                show_types(&is)
            ),
        );
        relation != Relation::Changed
    }

    fn format(&mut self, side: Side, label: &Label, old: &View<'a>, new: &View<'a>) {
        let get = |v: &View<'a>| v.get("format").and_then(Value::as_str);
        let (was, is) = (get(old), get(new));
        let what = match (was, is) {
            (Some(o), Some(n)) => format!("changed from `{o}` to `{n}`"),
            (None, Some(n)) => format!("gained the format `{n}`"),
            (Some(o), None) => format!("lost its format `{o}`"),
            (None, None) => return,
        };
        let rule = match format_relation(was, is) {
            Relation::Same => return,
            Relation::Widened => side.pick(
                rules::REQUEST_FORMAT_WIDENED,
                rules::RESPONSE_FORMAT_WIDENED,
            ),
            Relation::Narrowed => side.pick(
                rules::REQUEST_FORMAT_NARROWED,
                rules::RESPONSE_FORMAT_NARROWED,
            ),
            Relation::Changed => side.pick(
                rules::REQUEST_FORMAT_CHANGED,
                rules::RESPONSE_FORMAT_CHANGED,
            ),
        };
        let message = match (was, is) {
            (Some(_), Some(_)) => format!(
                "The format of {} in the {} {what}.",
                label.describe(),
                side.word()
            ),
            _ => format!("{} {what} in the {}.", label.sentence(), side.word()),
        };
        self.emit(
            rule,
            &old.pointer_of("format"),
            &new.pointer_of("format"),
            message,
        );
    }

    fn enumeration(&mut self, side: Side, label: &Label, old: &View<'a>, new: &View<'a>) {
        let s = side.word();
        match (old.enumeration(), new.enumeration()) {
            (None, None) => {}
            (None, Some((values, keyword))) => self.emit(
                side.pick(rules::REQUEST_BECAME_ENUM, rules::RESPONSE_BECAME_ENUM),
                old.pointer(),
                &new.pointer_of(keyword),
                format!(
                    "{} is now restricted to {} in the {s}.",
                    label.sentence(),
                    show_values(&values)
                ),
            ),
            (Some((values, keyword)), None) => self.emit(
                side.pick(
                    rules::REQUEST_NO_LONGER_ENUM,
                    rules::RESPONSE_NO_LONGER_ENUM,
                ),
                &old.pointer_of(keyword),
                new.pointer(),
                format!(
                    "{} is no longer restricted to {} in the {s}.",
                    label.sentence(),
                    show_values(&values)
                ),
            ),
            (Some((was, old_keyword)), Some((is, new_keyword))) => {
                if was == is {
                    return;
                }
                let old_ptr = old.pointer_of(old_keyword);
                let new_ptr = new.pointer_of(new_keyword);
                for value in was.iter().filter(|v| !is.contains(v)) {
                    let message = match side {
                        Side::Request => {
                            format!("{} no longer accepts `{value}`.", label.sentence())
                        }
                        Side::Response => format!(
                            "{} no longer takes the value `{value}` in the response.",
                            label.sentence()
                        ),
                    };
                    self.emit(
                        side.pick(
                            rules::REQUEST_ENUM_VALUE_REMOVED,
                            rules::RESPONSE_ENUM_VALUE_REMOVED,
                        ),
                        &old_ptr,
                        &new_ptr,
                        message,
                    );
                }
                for value in is.iter().filter(|v| !was.contains(v)) {
                    let message = match side {
                        Side::Request => {
                            format!("{} now also accepts `{value}`.", label.sentence())
                        }
                        Side::Response => {
                            format!("{} may now be `{value}` in the response.", label.sentence())
                        }
                    };
                    self.emit(
                        side.pick(
                            rules::REQUEST_ENUM_VALUE_ADDED,
                            rules::RESPONSE_ENUM_VALUE_ADDED,
                        ),
                        &old_ptr,
                        &new_ptr,
                        message,
                    );
                }
            }
        }
    }

    fn pattern(&mut self, side: Side, label: &Label, old: &View<'a>, new: &View<'a>) {
        let get = |v: &View<'a>| v.get("pattern").and_then(Value::as_str);
        let s = side.word();
        let (rule, message) = match (get(old), get(new)) {
            (None, Some(n)) => (
                side.pick(rules::REQUEST_PATTERN_ADDED, rules::RESPONSE_PATTERN_ADDED),
                format!("{} must now match `{n}` in the {s}.", label.sentence()),
            ),
            (Some(o), None) => (
                side.pick(
                    rules::REQUEST_PATTERN_REMOVED,
                    rules::RESPONSE_PATTERN_REMOVED,
                ),
                format!(
                    "{} no longer has the pattern `{o}` in the {s}.",
                    label.sentence()
                ),
            ),
            (Some(o), Some(n)) if o != n => (
                side.pick(
                    rules::REQUEST_PATTERN_CHANGED,
                    rules::RESPONSE_PATTERN_CHANGED,
                ),
                format!(
                    "The pattern of {} in the {s} changed from `{o}` to `{n}`.",
                    label.describe()
                ),
            ),
            _ => return,
        };
        self.emit(
            rule,
            &old.pointer_of("pattern"),
            &new.pointer_of("pattern"),
            message,
        );
    }

    fn bound(
        &mut self, side: Side, label: &Label, old: &View<'a>, new: &View<'a>, kind: BoundKind,
    ) {
        let name = kind.name();
        let s = side.word();
        let (tightened, old_ptr, new_ptr, message) = match (bound(old, kind), bound(new, kind)) {
            (None, None) => return,
            (None, Some(n)) => (
                true,
                old.pointer().to_string(),
                new.pointer_of(n.keyword),
                format!(
                    "The {s} {name} of {} is now {} (there was none).",
                    label.describe(),
                    n.text()
                ),
            ),
            (Some(o), None) => (
                false,
                old.pointer_of(o.keyword),
                new.pointer().to_string(),
                format!(
                    "The {s} {name} of {} was removed (it was {}).",
                    label.describe(),
                    o.text()
                ),
            ),
            (Some(o), Some(n)) => {
                let tightened = if tighter(kind, &n, &o) {
                    true
                } else if tighter(kind, &o, &n) {
                    false
                } else {
                    return;
                };
                let verb = if tightened == kind.is_upper() {
                    "lowered"
                } else {
                    "raised"
                };
                (
                    tightened,
                    old.pointer_of(o.keyword),
                    new.pointer_of(n.keyword),
                    format!(
                        "The {s} {name} of {} was {verb} from {} to {}.",
                        label.describe(),
                        o.text(),
                        n.text()
                    ),
                )
            }
        };
        self.emit(kind.rule(side, tightened), &old_ptr, &new_ptr, message);
    }

    fn properties(&mut self, side: Side, label: &Label, old: &View<'a>, new: &View<'a>) {
        let old_props = old.properties(&self.old);
        let new_props = new.properties(&self.new);
        let old_required = old.required();
        let new_required = new.required();
        let s = side.word();
        for o in &old_props {
            let child = label.child(&o.name);
            let Some(n) = new_props.iter().find(|n| n.name == o.name) else {
                if o.hidden(side) {
                    continue;
                }
                let rule = match side {
                    Side::Request if new.closed() => {
                        rules::REQUEST_PROPERTY_REMOVED_FROM_CLOSED_OBJECT
                    }
                    Side::Request => rules::REQUEST_PROPERTY_REMOVED,
                    Side::Response => rules::RESPONSE_PROPERTY_REMOVED,
                };
                self.emit(
                    rule,
                    &o.pointer,
                    new.pointer(),
                    format!("{} was removed from the {s}.", child.sentence()),
                );
                continue;
            };
            if !o.hidden(side) && !n.hidden(side) {
                let was = old_required.contains(o.name.as_str());
                let is = new_required.contains(n.name.as_str());
                let rule = match (side, was, is) {
                    (Side::Request, false, true) => Some(rules::REQUEST_PROPERTY_BECAME_REQUIRED),
                    (Side::Request, true, false) => Some(rules::REQUEST_PROPERTY_BECAME_OPTIONAL),
                    (Side::Response, true, false) => Some(rules::RESPONSE_PROPERTY_BECAME_OPTIONAL),
                    (Side::Response, false, true) => Some(rules::RESPONSE_PROPERTY_BECAME_REQUIRED),
                    _ => None,
                };
                if let Some(rule) = rule {
                    let now = if is { "required" } else { "optional" };
                    self.emit(
                        rule,
                        &old.pointer_of("required"),
                        &new.pointer_of("required"),
                        format!("{} became {now} in the {s}.", child.sentence()),
                    );
                }
            }
            if !n.hidden(side) {
                self.compare(side, &child, o.at.clone(), n.at.clone());
            }
        }
        for n in &new_props {
            if n.hidden(side) || old_props.iter().any(|o| o.name == n.name) {
                continue;
            }
            let child = label.child(&n.name);
            let (rule, message) = match side {
                Side::Request if new_required.contains(n.name.as_str()) => (
                    rules::NEW_REQUIRED_REQUEST_PROPERTY,
                    format!("The request now requires {}.", child.describe()),
                ),
                Side::Request => (
                    rules::NEW_OPTIONAL_REQUEST_PROPERTY,
                    format!("The request may now carry {}.", child.describe()),
                ),
                Side::Response => (
                    rules::RESPONSE_PROPERTY_ADDED,
                    format!("The response now has {}.", child.describe()),
                ),
            };
            self.emit(rule, old.pointer(), &n.pointer, message);
        }
        if side == Side::Request {
            match (old.closed(), new.closed()) {
                (false, true) => self.emit(
                    rules::REQUEST_ADDITIONAL_PROPERTIES_FORBIDDEN,
                    old.pointer(),
                    &new.pointer_of("additionalProperties"),
                    format!(
                        "{} no longer accepts unknown properties in the request.",
                        label.sentence()
                    ),
                ),
                (true, false) => self.emit(
                    rules::REQUEST_ADDITIONAL_PROPERTIES_ALLOWED,
                    &old.pointer_of("additionalProperties"),
                    new.pointer(),
                    format!(
                        "{} now accepts unknown properties in the request.",
                        label.sentence()
                    ),
                ),
                _ => {}
            }
        }
    }

    fn branches(&mut self, side: Side, label: &Label, old: &View<'a>, new: &View<'a>, key: &str) {
        let list = |view: &View<'a>, doc: &Document<'a>| {
            view.parts
                .iter()
                .find(|p| p.value.get(key).is_some())
                .map(|p| branches(doc, p.value, &p.pointer, key))
                .unwrap_or_default()
        };
        let was = list(old, &self.old);
        let is = list(new, &self.new);
        // A schema that gained or lost the keyword is a type change; one non-null branch on
        // both sides was merged into the view.
        if was.is_empty() || is.is_empty() || (was.len() == 1 && is.len() == 1) {
            return;
        }
        let (pairs, removed, added) = pair_branches(&was, &is);
        let s = side.word();
        let (removed_rule, added_rule) = match key {
            "oneOf" => (
                side.pick(
                    rules::REQUEST_ONE_OF_BRANCH_REMOVED,
                    rules::RESPONSE_ONE_OF_BRANCH_REMOVED,
                ),
                side.pick(
                    rules::REQUEST_ONE_OF_BRANCH_ADDED,
                    rules::RESPONSE_ONE_OF_BRANCH_ADDED,
                ),
            ),
            _ => (
                side.pick(
                    rules::REQUEST_ANY_OF_BRANCH_REMOVED,
                    rules::RESPONSE_ANY_OF_BRANCH_REMOVED,
                ),
                side.pick(
                    rules::REQUEST_ANY_OF_BRANCH_ADDED,
                    rules::RESPONSE_ANY_OF_BRANCH_ADDED,
                ),
            ),
        };
        let new_list = new.pointer_of(key);
        let old_list = old.pointer_of(key);
        for b in removed {
            self.emit(
                removed_rule,
                &format!("{old_list}/{}", b.index),
                &new_list,
                format!(
                    "{} lost its {key} branch {} in the {s}.",
                    label.sentence(),
                    b.name
                ),
            );
        }
        for b in added {
            self.emit(
                added_rule,
                &old_list,
                &format!("{new_list}/{}", b.index),
                format!(
                    "{} gained the {key} branch {} in the {s}.",
                    label.sentence(),
                    b.name
                ),
            );
        }
        for (o, n) in pairs {
            let child = label.child(&format!("{key}[{}]", n.index));
            self.compare(side, &child, o.at.clone(), n.at.clone());
        }
    }
}
