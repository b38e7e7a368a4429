//! JSON values from JSON Schemas, as proptest strategies, and deliberately invalid variants.
//!
//! The conformance runner needs two kinds of data for every operation: values a correct
//! server must accept (positive) and values it must reject (negative). Positive values come
//! from [`Generator::strategy`], a proptest [`SBoxedStrategy`] built from the schema, so that a
//! seed reproduces a run and failing inputs shrink. Negative values come from
//! [`Generator::negatives`]: one mutation of a valid value per constraint the schema states
//! (wrong type, out of range, too short, not in the enum, missing required property, ...).
//!
//! OpenAPI's `readOnly` and `writeOnly` depend on the direction of the message: a `readOnly`
//! property never appears in a request and a `writeOnly` one never in a response, even when
//! the schema lists it as required. [`prepare_doc`] rewrites a document's schemas for one
//! direction so that a plain JSON Schema validator judges them the way OpenAPI means them.

use proptest::prelude::*;
use proptest::strategy::{SBoxedStrategy, Strategy, ValueTree};
use proptest::test_runner::TestRunner;
use serde_json::{Map, Number, Value};

use crate::spec::{deref, walk_schemas_mut};
use crate::validate::integer_format_range;

/// Which way a message travels; decides whether `readOnly` or `writeOnly` properties drop out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to server: `readOnly` properties are omitted.
    Request,
    /// Server to client: `writeOnly` properties are omitted.
    Response,
}

/// A value its schema rejects, with what was broken.
#[derive(Debug, Clone, PartialEq)]
pub struct Negative {
    /// What the mutation breaks, e.g. `name: longer than maxLength 200`.
    pub description: String,
    pub value: Value,
}

/// A value its schema accepts, chosen at the edge of one constraint (the coverage phase).
#[derive(Debug, Clone, PartialEq)]
pub struct Boundary {
    /// Which edge it sits on, e.g. `name: maxLength 200`.
    pub description: String,
    pub value: Value,
}

/// How long a string or array boundary may get before it is left out.
const BOUNDARY_CAP: usize = 4096;
/// Boundaries kept per property of an object.
const BOUNDARIES_PER_PROPERTY: usize = 12;

/// How deep generation descends into nested objects and arrays before it keeps to the
/// required minimum.
const MAX_DEPTH: usize = 6;
/// How many items or characters beyond the minimum generation goes, at most.
const SPAN: usize = 24;

/// Builds strategies and negative variants for schemas of one bundled document.
#[derive(Debug, Clone, Copy)]
pub struct Generator<'d> {
    doc: &'d Value,
    direction: Direction,
}

/// Draws one value from a strategy; `None` when the strategy gives up (too many rejections).
pub fn sample(strategy: &SBoxedStrategy<Value>, runner: &mut TestRunner) -> Option<Value> {
    strategy.new_tree(runner).ok().map(|tree| tree.current())
}

/// A copy of `doc` whose schemas no longer require the properties that `direction` leaves
/// out (`readOnly` ones in requests, `writeOnly` ones in responses).
pub fn prepare_doc(doc: &Value, direction: Direction) -> Value {
    let flag = match direction {
        Direction::Request => "readOnly",
        Direction::Response => "writeOnly",
    };
    let original = doc.clone();
    let mut out = doc.clone();
    walk_schemas_mut(&mut out, &mut |schema: &mut Map<String, Value>| {
        let Some(props) = schema.get("properties").and_then(Value::as_object) else {
            return;
        };
        let hidden: Vec<String> = props
            .iter()
            .filter(|(_, p)| has_flag(&original, p, flag))
            .map(|(k, _)| k.clone())
            .collect();
        if hidden.is_empty() {
            return;
        }
        if let Some(Value::Array(required)) = schema.get_mut("required") {
            required.retain(|r| !r.as_str().is_some_and(|r| hidden.iter().any(|h| h == r)));
        }
    });
    // A `required` list in an allOf branch can name a property another branch declares.
    let mut hidden_everywhere = Vec::new();
    collect_flagged(&original, &original, flag, &mut hidden_everywhere);
    walk_schemas_mut(&mut out, &mut |schema: &mut Map<String, Value>| {
        if schema.contains_key("properties") {
            return;
        }
        if let Some(Value::Array(required)) = schema.get_mut("required") {
            required.retain(|r| {
                !r.as_str()
                    .is_some_and(|r| hidden_everywhere.iter().any(|h| h == r))
            });
        }
    });
    out
}

fn collect_flagged(doc: &Value, value: &Value, flag: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for (name, p) in props {
                    if has_flag(doc, p, flag) && !out.contains(name) {
                        out.push(name.clone());
                    }
                }
            }
            for v in map.values() {
                collect_flagged(doc, v, flag, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                collect_flagged(doc, v, flag, out);
            }
        }
        _ => {}
    }
}

fn has_flag(doc: &Value, schema: &Value, flag: &str) -> bool {
    schema.get(flag).and_then(Value::as_bool) == Some(true)
        || deref(doc, schema).get(flag).and_then(Value::as_bool) == Some(true)
}

fn types_of(s: &Map<String, Value>) -> Vec<String> {
    match s.get("type") {
        Some(Value::String(t)) => vec![t.clone()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn inferred_types(s: &Map<String, Value>) -> Vec<String> {
    let declared = types_of(s);
    if !declared.is_empty() {
        return declared;
    }
    let has = |keys: &[&str]| keys.iter().any(|k| s.contains_key(*k));
    if has(&[
        "properties",
        "required",
        "additionalProperties",
        "propertyNames",
    ]) {
        vec!["object".into()]
    } else if has(&["items", "minItems", "maxItems", "prefixItems"]) {
        vec!["array".into()]
    } else if has(&["minLength", "maxLength", "pattern", "format"]) {
        vec!["string".into()]
    } else if has(&["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"]) {
        vec!["number".into()]
    } else {
        Vec::new()
    }
}

fn usize_of(s: &Map<String, Value>, key: &str) -> Option<usize> {
    s.get(key)
        .and_then(Value::as_u64)
        .and_then(|n| usize::try_from(n).ok())
}

fn f64_of(s: &Map<String, Value>, key: &str) -> Option<f64> {
    s.get(key).and_then(Value::as_f64)
}

/// Strips the `^`/`$` anchors that proptest's regex generator does not accept.
fn strip_anchors(pattern: &str) -> &str {
    let p = pattern.strip_prefix('^').unwrap_or(pattern);
    match p.strip_suffix('$') {
        Some(rest) if !rest.ends_with('\\') => rest,
        _ => p,
    }
}

fn json_number(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        #[expect(clippy::cast_possible_truncation, reason = "integral and in range")]
        return Value::from(n as i64);
    }
    Number::from_f64(n).map_or(Value::Null, Value::Number)
}

fn char_len(v: &str) -> usize {
    v.chars().count()
}

impl<'d> Generator<'d> {
    /// A generator for schemas of `doc` (a bundled document; `$ref`s are local).
    pub fn new(doc: &'d Value, direction: Direction) -> Self {
        Self { doc, direction }
    }

    /// Resolves `$ref`s and merges `allOf` branches into one schema object.
    pub fn flatten(&self, schema: &Value) -> Map<String, Value> {
        self.flatten_depth(schema, 0)
    }

    fn flatten_depth(&self, schema: &Value, depth: usize) -> Map<String, Value> {
        let mut out = Map::new();
        let Some(map) = schema.as_object() else {
            return out;
        };
        if let Some(r) = map.get("$ref").and_then(Value::as_str)
            && depth < 32
        {
            let target = crate::spec::resolve_local(self.doc, r).unwrap_or(&Value::Null);
            out = self.flatten_depth(target, depth + 1);
        }
        for (k, v) in map {
            if k == "$ref" || k == "allOf" {
                continue;
            }
            merge_keyword(&mut out, k, v);
        }
        if let Some(Value::Array(branches)) = map.get("allOf")
            && depth < 32
        {
            for branch in branches {
                let flat = self.flatten_depth(branch, depth + 1);
                for (k, v) in &flat {
                    merge_keyword(&mut out, k, v);
                }
            }
        }
        out
    }

    fn hidden(&self, property: &Value) -> bool {
        let flag = match self.direction {
            Direction::Request => "readOnly",
            Direction::Response => "writeOnly",
        };
        has_flag(self.doc, property, flag)
    }

    /// A strategy producing values `schema` accepts.
    pub fn strategy(&self, schema: &Value) -> SBoxedStrategy<Value> {
        self.build(schema, 0)
    }

    fn build(&self, schema: &Value, depth: usize) -> SBoxedStrategy<Value> {
        match schema {
            Value::Bool(true) => return any_simple(),
            Value::Bool(false) => return Just(Value::Null).sboxed(),
            _ => {}
        }
        let s = self.flatten(schema);
        if let Some(c) = s.get("const") {
            return Just(c.clone()).sboxed();
        }
        if let Some(Value::Array(values)) = s.get("enum")
            && !values.is_empty()
        {
            return proptest::sample::select(values.clone()).sboxed();
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(Value::Array(branches)) = s.get(key)
                && !branches.is_empty()
            {
                let mut rest = s.clone();
                rest.remove(key);
                let options: Vec<SBoxedStrategy<Value>> = branches
                    .iter()
                    .map(|b| {
                        let mut merged = rest.clone();
                        for (k, v) in self.flatten(b) {
                            merge_keyword(&mut merged, &k, &v);
                        }
                        self.build(&Value::Object(merged), depth + 1)
                    })
                    .collect();
                return proptest::strategy::Union::new(options).sboxed();
            }
        }
        let types = inferred_types(&s);
        if types.is_empty() {
            return any_simple();
        }
        let options: Vec<SBoxedStrategy<Value>> = types
            .iter()
            .map(|t| self.build_type(t, &s, depth))
            .collect();
        if options.len() == 1 {
            options.into_iter().next().unwrap_or_else(any_simple)
        } else {
            proptest::strategy::Union::new(options).sboxed()
        }
    }

    fn build_type(&self, t: &str, s: &Map<String, Value>, depth: usize) -> SBoxedStrategy<Value> {
        match t {
            "null" => Just(Value::Null).sboxed(),
            "boolean" => any::<bool>().prop_map(Value::Bool).sboxed(),
            "integer" => integer_strategy(s, self.direction == Direction::Request),
            "number" => number_strategy(s),
            "string" => string_strategy(s),
            "array" => self.array_strategy(s, depth),
            "object" => self.object_strategy(s, depth),
            _ => any_simple(),
        }
    }

    fn array_strategy(&self, s: &Map<String, Value>, depth: usize) -> SBoxedStrategy<Value> {
        let min = usize_of(s, "minItems").unwrap_or(0);
        let cap = if depth >= MAX_DEPTH { 0 } else { 3 };
        let max = usize_of(s, "maxItems")
            .unwrap_or(usize::MAX)
            .min(min + cap)
            .max(min);
        let items = s.get("items").cloned().unwrap_or(Value::Bool(true));
        let item = self.build(&items, depth + 1);
        let unique = s.get("uniqueItems").and_then(Value::as_bool) == Some(true);
        proptest::collection::vec(item, min..=max)
            .prop_map(move |mut v| {
                if unique {
                    let mut seen: Vec<Value> = Vec::new();
                    v.retain(|x| {
                        if seen.contains(x) {
                            false
                        } else {
                            seen.push(x.clone());
                            true
                        }
                    });
                }
                v
            })
            .prop_filter("uniqueItems left too few items", move |v| v.len() >= min)
            .prop_map(Value::Array)
            .sboxed()
    }

    fn object_strategy(&self, s: &Map<String, Value>, depth: usize) -> SBoxedStrategy<Value> {
        let required: Vec<String> = required_names(s).into_iter().map(str::to_string).collect();
        let props = properties(s);
        let mut fields: Vec<SBoxedStrategy<Option<(String, Value)>>> = Vec::new();
        for (name, schema) in props {
            if self.hidden(schema) {
                continue;
            }
            let value = self.build(schema, depth + 1);
            let name = name.clone();
            if required.contains(&name) {
                fields.push(value.prop_map(move |v| Some((name.clone(), v))).sboxed());
            } else if depth < MAX_DEPTH {
                fields.push(
                    proptest::option::of(value.prop_map(move |v| (name.clone(), v))).sboxed(),
                );
            }
        }
        // Required names without a declared schema still need a value.
        for name in &required {
            if !props.contains_key(name) {
                let name = name.clone();
                fields.push(
                    any_simple()
                        .prop_map(move |v| Some((name.clone(), v)))
                        .sboxed(),
                );
            }
        }
        let max_props = usize_of(s, "maxProperties").unwrap_or(usize::MAX);
        let additional = match s.get("additionalProperties") {
            Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(Value::Bool(true)),
            Some(schema @ Value::Object(_)) => Some(schema.clone()),
            _ if props.is_empty() && !s.contains_key("patternProperties") => {
                Some(Value::Bool(true))
            }
            _ => None,
        };
        let extras: SBoxedStrategy<Vec<(String, Value)>> = match additional {
            Some(schema) if depth < MAX_DEPTH => {
                let key = match s.get("propertyNames") {
                    Some(names) => self.build(names, depth + 1),
                    None => "[a-z][a-z0-9_]{0,8}".prop_map(Value::String).sboxed(),
                };
                let value = match schema {
                    Value::Bool(true) => any_simple(),
                    other => self.build(&other, depth + 1),
                };
                let key = key.prop_filter_map("a property name is a string", |k| match k {
                    Value::String(k) => Some(k),
                    _ => None,
                });
                proptest::collection::vec((key, value), 0..=2).sboxed()
            }
            _ => Just(Vec::new()).sboxed(),
        };
        // `minProperties` over optional properties: values to top the object up with when
        // the optional ones left out leave it too small.
        let min_props = usize_of(s, "minProperties").unwrap_or(0);
        let backup: Vec<SBoxedStrategy<(String, Value)>> = if min_props > 0 {
            props
                .iter()
                .filter(|(name, schema)| !required.contains(*name) && !self.hidden(schema))
                .map(|(name, schema)| {
                    let name = name.clone();
                    self.build(schema, depth + 1)
                        .prop_map(move |v| (name.clone(), v))
                        .sboxed()
                })
                .collect()
        } else {
            Vec::new()
        };
        let declared: Vec<String> = props.keys().cloned().collect();
        (fields, extras, backup)
            .prop_map(move |(fields, extras, backup)| {
                let mut map = Map::new();
                for (k, v) in fields.into_iter().flatten() {
                    map.insert(k, v);
                }
                for (k, v) in extras {
                    if map.len() >= max_props {
                        break;
                    }
                    if !declared.contains(&k) && !map.contains_key(&k) {
                        map.insert(k, v);
                    }
                }
                for (k, v) in backup {
                    if map.len() >= min_props.min(max_props) {
                        break;
                    }
                    map.entry(k).or_insert(v);
                }
                Value::Object(map)
            })
            .sboxed()
    }

    /// One plain, human-looking value for `schema`, the same on every call (what a mock
    /// serves when the spec has no example): the schema's own `const`, `default`,
    /// `examples`/`example` or first `enum` member where it has one, otherwise a value built
    /// from its type and format (`"2026-01-01T00:00:00Z"` for a date-time, the lower bound
    /// for a number, one item per array, every property of an object). Not guaranteed valid
    /// (a pattern may rule it out): callers check, and fall back to [`Generator::strategy`].
    pub fn plain(&self, schema: &Value) -> Value {
        self.plain_at(schema, 0, "")
    }

    fn plain_at(&self, schema: &Value, depth: usize, name: &str) -> Value {
        if let Value::Bool(_) = schema {
            return Value::String("string".into());
        }
        let s = self.flatten(schema);
        if let Some(c) = s.get("const") {
            return c.clone();
        }
        if let Some(v) = s
            .get("examples")
            .and_then(Value::as_array)
            .and_then(|e| e.first())
            .or_else(|| s.get("example"))
            .or_else(|| s.get("default"))
            .or_else(|| {
                s.get("enum")
                    .and_then(Value::as_array)
                    .and_then(|e| e.first())
            })
        {
            return v.clone();
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(Value::Array(branches)) = s.get(key)
                && let Some(first) = branches
                    .iter()
                    .find(|b| self.flatten(b).get("type") != Some(&Value::from("null")))
                    .or_else(|| branches.first())
            {
                let mut merged = s.clone();
                merged.remove(key);
                for (k, v) in self.flatten(first) {
                    merge_keyword(&mut merged, &k, &v);
                }
                return self.plain_at(&Value::Object(merged), depth + 1, name);
            }
        }
        let types = inferred_types(&s);
        let t = types
            .iter()
            .find(|t| *t != "null")
            .or_else(|| types.first())
            .map_or("string", String::as_str);
        match t {
            "null" => Value::Null,
            "boolean" => Value::Bool(true),
            "integer" => {
                let (lo, hi) = integer_bounds(&s);
                let v = if lo <= 1 && hi >= 1 { 1 } else { lo };
                match f64_of(&s, "multipleOf").filter(|m| *m >= 1.0 && m.fract() == 0.0) {
                    #[expect(clippy::cast_possible_truncation, reason = "small integer")]
                    Some(m) => Value::from(v.div_euclid(m as i64).saturating_add(1) * m as i64),
                    None => Value::from(v),
                }
            }
            "number" => {
                let lo = f64_of(&s, "minimum")
                    .or_else(|| f64_of(&s, "exclusiveMinimum").map(|m| m + 1.0));
                let hi = f64_of(&s, "maximum")
                    .or_else(|| f64_of(&s, "exclusiveMaximum").map(|m| m - 1.0));
                let v = match (lo, hi) {
                    (Some(lo), Some(hi)) => (lo + hi) / 2.0,
                    (Some(lo), None) => lo.max(1.5),
                    (None, Some(hi)) => hi.min(1.5),
                    (None, None) => 1.5,
                };
                json_number(v)
            }
            "string" => {
                let min = usize_of(&s, "minLength").unwrap_or(0);
                let max = usize_of(&s, "maxLength").unwrap_or(usize::MAX);
                let format = s.get("format").and_then(Value::as_str).unwrap_or("");
                let mut text = match format {
                    "date-time" => "2026-01-01T00:00:00Z".to_string(),
                    "date" => "2026-01-01".to_string(),
                    "time" => "12:00:00Z".to_string(),
                    "uuid" => "3fa85f64-5717-4562-b3fc-2c963f66afa6".to_string(),
                    "email" | "idn-email" => "user@example.com".to_string(),
                    "uri" | "url" | "iri" => "https://example.com/".to_string(),
                    "uri-reference" | "iri-reference" => "/example".to_string(),
                    "hostname" | "idn-hostname" => "example.com".to_string(),
                    "ipv4" => "192.0.2.1".to_string(),
                    "ipv6" => "2001:db8::1".to_string(),
                    "byte" => "c3RyaW5n".to_string(),
                    _ if s.contains_key("pattern") => {
                        let mut runner = TestRunner::deterministic();
                        match string_strategy(&s).new_tree(&mut runner) {
                            Ok(mut tree) => {
                                while tree.simplify() {}
                                return tree.current();
                            }
                            Err(_) => "string".to_string(),
                        }
                    }
                    _ if name.is_empty() => "string".to_string(),
                    _ => name.to_string(),
                };
                while char_len(&text) < min {
                    text.push('x');
                }
                if char_len(&text) > max {
                    text = text.chars().take(max).collect();
                }
                Value::String(text)
            }
            "array" => {
                let min = usize_of(&s, "minItems").unwrap_or(0);
                let max = usize_of(&s, "maxItems").unwrap_or(usize::MAX);
                let n = if depth >= MAX_DEPTH {
                    min
                } else {
                    min.max(1).min(max)
                };
                let items = s.get("items").cloned().unwrap_or(Value::Bool(true));
                let item = self.plain_at(&items, depth + 1, name);
                Value::Array(vec![item; n])
            }
            "object" => {
                let required = required_names(&s);
                let mut map = Map::new();
                for (key, schema) in properties(&s) {
                    if self.hidden(schema)
                        || (depth >= MAX_DEPTH && !required.contains(&key.as_str()))
                    {
                        continue;
                    }
                    map.insert(key.clone(), self.plain_at(schema, depth + 1, key));
                }
                for key in required {
                    if !map.contains_key(key) {
                        map.insert(key.to_string(), Value::String("string".into()));
                    }
                }
                Value::Object(map)
            }
            _ => Value::String("string".into()),
        }
    }

    /// Values `schema` accepts at the edges of its constraints, as Schemathesis's coverage
    /// phase picks them: every enum member, `minimum`/`maximum` (just inside exclusive
    /// bounds), the shortest and longest strings and arrays, each optional property present
    /// and absent, `null` where allowed, recursively into properties and items. Every value
    /// returned validates against `schema` (candidates that do not, because a pattern or a
    /// format rules them out, are dropped) and none repeats. `runner` draws the valid values
    /// the variations start from, so the result is deterministic for its seed.
    pub fn boundaries(&self, schema: &Value, runner: &mut TestRunner) -> Vec<Boundary> {
        let mut out = Vec::new();
        self.boundaries_at(schema, runner, "", 0, &mut out);
        let Ok(validator) = crate::validate::compile_schema(self.doc, schema, "") else {
            return Vec::new();
        };
        let mut seen: Vec<Value> = Vec::new();
        out.retain(|b| {
            if seen.contains(&b.value) || !validator.is_valid(&b.value) {
                return false;
            }
            seen.push(b.value.clone());
            true
        });
        out
    }

    fn boundaries_at(
        &self, schema: &Value, runner: &mut TestRunner, at: &str, depth: usize,
        out: &mut Vec<Boundary>,
    ) {
        if depth > 4 {
            return;
        }
        let s = self.flatten(schema);
        let label = |what: &str| {
            if at.is_empty() {
                what.to_string()
            } else {
                format!("{at}: {what}")
            }
        };
        let mut push = |what: &str, value: Value| {
            out.push(Boundary {
                description: label(what),
                value,
            });
        };
        if let Some(c) = s.get("const") {
            push("the const value", c.clone());
            return;
        }
        if let Some(Value::Array(values)) = s.get("enum") {
            for v in values {
                push(&format!("enum member {v}"), v.clone());
            }
            return;
        }
        if s.contains_key("oneOf") || s.contains_key("anyOf") || s.contains_key("not") {
            return;
        }
        let types = inferred_types(&s);
        let has = |t: &str| types.iter().any(|x| x == t);
        if has("null") {
            push("null", Value::Null);
        }
        if has("boolean") {
            push("true", Value::Bool(true));
            push("false", Value::Bool(false));
        }
        if has("integer") || has("number") {
            let integer = !has("number");
            let min = f64_of(&s, "minimum");
            let max = f64_of(&s, "maximum");
            let ex_min = f64_of(&s, "exclusiveMinimum");
            let ex_max = f64_of(&s, "exclusiveMaximum");
            let inside = |from: f64, toward: Option<f64>, up: bool| {
                if integer {
                    if up {
                        from.floor() + 1.0
                    } else {
                        from.ceil() - 1.0
                    }
                } else {
                    let step = toward.map_or(1.0, |t| ((t - from).abs() / 2.0).min(1.0));
                    if up { from + step } else { from - step }
                }
            };
            if let Some(m) = min {
                push(
                    &format!("minimum {m}"),
                    json_number(if integer { m.ceil() } else { m }),
                );
            }
            if let Some(m) = ex_min {
                push(
                    &format!("just above exclusiveMinimum {m}"),
                    json_number(inside(m, max.or(ex_max), true)),
                );
            }
            if let Some(m) = max {
                push(
                    &format!("maximum {m}"),
                    json_number(if integer { m.floor() } else { m }),
                );
            }
            if let Some(m) = ex_max {
                push(
                    &format!("just below exclusiveMaximum {m}"),
                    json_number(inside(m, min.or(ex_min), false)),
                );
            }
            if integer {
                // The edges of the integer's width; those outside the schema's own bounds
                // are dropped with every other invalid candidate.
                for (what, edge) in integer_edges(s.get("format").and_then(Value::as_str)) {
                    push(what, Value::from(edge));
                }
            }
        }
        if has("string") {
            if (s.contains_key("format") || s.contains_key("pattern"))
                && let Some(v) = sample(&string_strategy(&s), runner)
            {
                push("a value of its format or pattern", v);
            }
            let min = usize_of(&s, "minLength").unwrap_or(0);
            if min == 0 {
                push("empty string", Value::String(String::new()));
            } else if min <= BOUNDARY_CAP {
                push(&format!("minLength {min}"), Value::String("a".repeat(min)));
            }
            if let Some(max) = usize_of(&s, "maxLength")
                && max > min
                && max <= BOUNDARY_CAP
            {
                push(&format!("maxLength {max}"), Value::String("a".repeat(max)));
            }
        }
        if has("array") {
            let items = s.get("items").cloned().unwrap_or(Value::Bool(true));
            let item = self.build(&items, depth + 1);
            let unique = s.get("uniqueItems").and_then(Value::as_bool) == Some(true);
            let draw = |n: usize, runner: &mut TestRunner| -> Option<Vec<Value>> {
                let mut v: Vec<Value> = Vec::new();
                for _ in 0..n.saturating_mul(4).max(4) {
                    if v.len() >= n {
                        break;
                    }
                    let x = sample(&item, runner)?;
                    if !unique || !v.contains(&x) {
                        v.push(x);
                    }
                }
                (v.len() >= n).then_some(v)
            };
            let min = usize_of(&s, "minItems").unwrap_or(0);
            if min <= BOUNDARY_CAP
                && let Some(v) = draw(min, runner)
            {
                push(
                    &if min == 0 {
                        "empty array".to_string()
                    } else {
                        format!("minItems {min}")
                    },
                    Value::Array(v),
                );
            }
            if let Some(max) = usize_of(&s, "maxItems")
                && max > min
                && max <= 100
                && let Some(v) = draw(max, runner)
            {
                push(&format!("maxItems {max}"), Value::Array(v));
            }
            if let Some(base) = draw(min.max(1), runner) {
                let mut inner = Vec::new();
                self.boundaries_at(&items, runner, &format!("{at}[0]"), depth + 1, &mut inner);
                for b in inner.into_iter().take(BOUNDARIES_PER_PROPERTY) {
                    let mut v = base.clone();
                    v[0] = b.value;
                    out.push(Boundary {
                        description: b.description,
                        value: Value::Array(v),
                    });
                }
            }
        }
        if has("object") {
            let Some(Value::Object(base)) =
                sample(&self.build(&Value::Object(s.clone()), depth), runner)
            else {
                return;
            };
            let required = required_names(&s);
            let props = properties(&s);
            let join = |name: &str| join_path(at, name);
            for (name, prop) in props {
                if self.hidden(prop) {
                    continue;
                }
                if !required.contains(&name.as_str()) {
                    let mut v = base.clone();
                    if v.remove(name).is_some() {
                        out.push(Boundary {
                            description: format!("{} absent", join(name)),
                            value: Value::Object(v),
                        });
                    } else if let Some(x) = sample(&self.build(prop, depth + 1), runner) {
                        v.insert(name.clone(), x);
                        out.push(Boundary {
                            description: format!("{} present", join(name)),
                            value: Value::Object(v),
                        });
                    }
                }
                let mut inner = Vec::new();
                self.boundaries_at(prop, runner, &join(name), depth + 1, &mut inner);
                for b in inner.into_iter().take(BOUNDARIES_PER_PROPERTY) {
                    let mut v = base.clone();
                    v.insert(name.clone(), b.value);
                    out.push(Boundary {
                        description: b.description,
                        value: Value::Object(v),
                    });
                }
            }
        }
    }

    /// Values `schema` rejects: one per constraint it states, each a small change to a valid
    /// value. `runner` draws the valid values the mutations start from.
    pub fn negatives(&self, schema: &Value, runner: &mut TestRunner) -> Vec<Negative> {
        let mut out = Vec::new();
        self.negatives_at(schema, runner, "", 0, &mut out);
        out
    }

    fn negatives_at(
        &self, schema: &Value, runner: &mut TestRunner, at: &str, depth: usize,
        out: &mut Vec<Negative>,
    ) {
        if depth > 4 {
            return;
        }
        let s = self.flatten(schema);
        let label = |what: String| {
            if at.is_empty() {
                what
            } else {
                format!("{at}: {what}")
            }
        };
        let mut push = |what: String, value: Value| {
            out.push(Negative {
                description: label(what),
                value,
            });
        };
        let combinator =
            s.contains_key("oneOf") || s.contains_key("anyOf") || s.contains_key("not");
        let types = types_of(&s);
        if !types.is_empty() && !combinator {
            let allowed = |t: &str| {
                types.iter().any(|x| x == t)
                    || (t == "integer" && types.iter().any(|x| x == "number"))
            };
            let wrong = [
                ("string", Value::String("not-a-valid-value".into())),
                ("integer", Value::from(12345)),
                ("boolean", Value::Bool(true)),
                ("object", Value::Object(Map::new())),
                ("array", Value::Array(Vec::new())),
                ("null", Value::Null),
            ]
            .into_iter()
            .find(|(t, _)| !allowed(t));
            if let Some((t, v)) = wrong {
                push(format!("a {t} where {} is expected", types.join(" or ")), v);
            }
        }
        if combinator {
            return;
        }
        if let Some(Value::Array(values)) = s.get("enum") {
            if values.iter().all(Value::is_string) {
                let mut candidate = String::from("not_in_enum");
                while values
                    .iter()
                    .any(|v| v.as_str() == Some(candidate.as_str()))
                {
                    candidate.push('_');
                }
                push(
                    "not one of the enum values".into(),
                    Value::String(candidate),
                );
            } else if values.iter().all(Value::is_i64) {
                let max = values.iter().filter_map(Value::as_i64).max().unwrap_or(0);
                push(
                    "not one of the enum values".into(),
                    Value::from(max.saturating_add(1)),
                );
            }
            return;
        }
        if let Some(c) = s.get("const") {
            let other = match c {
                Value::String(x) => Value::String(format!("{x}_not_const")),
                Value::Number(_) => Value::from(c.as_f64().unwrap_or(0.0) + 1.0),
                _ => Value::String("not_const".into()),
            };
            push("not the const value".into(), other);
            return;
        }
        let numeric = types.iter().any(|t| t == "integer" || t == "number");
        if numeric {
            let integer = !types.iter().any(|t| t == "number");
            let step = if integer { 1.0 } else { 0.5 };
            if let Some(min) = f64_of(&s, "minimum") {
                push(
                    format!("below minimum {min}"),
                    json_number(min.floor() - step),
                );
            }
            if let Some(min) = f64_of(&s, "exclusiveMinimum") {
                push(format!("at exclusiveMinimum {min}"), json_number(min));
            }
            if let Some(max) = f64_of(&s, "maximum") {
                push(
                    format!("above maximum {max}"),
                    json_number(max.ceil() + step),
                );
            }
            if let Some(max) = f64_of(&s, "exclusiveMaximum") {
                push(format!("at exclusiveMaximum {max}"), json_number(max));
            }
            let range = s
                .get("format")
                .and_then(Value::as_str)
                .and_then(|f| integer_format_range(f).map(|r| (f, r)));
            if let (true, Some((format, (lo, hi)))) = (integer, range) {
                // Just outside the format, unless the schema's own bounds already are.
                #[expect(clippy::cast_precision_loss, reason = "a comparison with a bound")]
                let (lo_f, hi_f) = (lo as f64, hi as f64);
                if f64_of(&s, "maximum").is_none_or(|m| m >= hi_f)
                    && let Ok(hi) = u64::try_from(hi)
                {
                    push(format!("above the {format} range"), Value::from(hi + 1));
                }
                if lo > i64::MIN && f64_of(&s, "minimum").is_none_or(|m| m <= lo_f) {
                    push(format!("below the {format} range"), Value::from(lo - 1));
                }
            }
            if let Some(m) = f64_of(&s, "multipleOf")
                && m > 0.0
            {
                let base = f64_of(&s, "minimum").unwrap_or(0.0).max(0.0);
                let v = (base / m).ceil() * m + m / 2.0;
                if integer && v.fract() != 0.0 {
                    // Half a step of an integer multiple is not an integer; a wrong-type
                    // variant already covers that.
                } else {
                    push(format!("not a multiple of {m}"), json_number(v));
                }
            }
        }
        if types.iter().any(|t| t == "string") {
            if let Some(min) = usize_of(&s, "minLength")
                && min > 0
            {
                push(
                    format!("shorter than minLength {min}"),
                    Value::String("a".repeat(min - 1)),
                );
            }
            if let Some(max) = usize_of(&s, "maxLength")
                && max < 100_000
            {
                push(
                    format!("longer than maxLength {max}"),
                    Value::String("a".repeat(max + 1)),
                );
            }
            if let Some(pattern) = s.get("pattern").and_then(Value::as_str)
                && let Ok(re) = regex::Regex::new(pattern)
            {
                let candidates = ["\u{0}", "", "!", " ", "-", "0", "a", "A", "invalid value!"];
                if let Some(c) = candidates.iter().find(|c| !re.is_match(c)) {
                    push(
                        format!("does not match pattern {pattern}"),
                        Value::String((*c).to_string()),
                    );
                }
            }
            if let Some(format) = s.get("format").and_then(Value::as_str) {
                let bad = match format {
                    "date-time" => Some("2021-13-45T25:61:00"),
                    "date" => Some("2021-13-45"),
                    "time" => Some("25:61:00"),
                    "uuid" => Some("not-a-uuid"),
                    "email" => Some("no-at-sign"),
                    "uri" => Some("not a uri"),
                    "ipv4" => Some("999.1.1.1"),
                    _ => None,
                };
                if let Some(bad) = bad {
                    push(
                        format!("not a valid {format}"),
                        Value::String(bad.to_string()),
                    );
                }
            }
        }
        let is_array = types.iter().any(|t| t == "array");
        if is_array {
            let items = s.get("items").cloned().unwrap_or(Value::Bool(true));
            let item = sample(&self.build(&items, depth + 1), runner).unwrap_or(Value::Null);
            if let Some(min) = usize_of(&s, "minItems")
                && min > 0
            {
                push(
                    format!("fewer than minItems {min}"),
                    Value::Array(vec![item.clone(); min - 1]),
                );
            }
            if let Some(max) = usize_of(&s, "maxItems")
                && max < 10_000
            {
                push(
                    format!("more than maxItems {max}"),
                    Value::Array(vec![item.clone(); max + 1]),
                );
            }
            if s.get("uniqueItems").and_then(Value::as_bool) == Some(true) {
                push(
                    "duplicate items where uniqueItems".into(),
                    Value::Array(vec![item.clone(), item]),
                );
            }
            let mut inner = Vec::new();
            self.negatives_at(&items, runner, &format!("{at}[0]"), depth + 1, &mut inner);
            for n in inner.into_iter().take(4) {
                out.push(Negative {
                    description: n.description,
                    value: Value::Array(vec![n.value]),
                });
            }
        }
        let is_object = types.iter().any(|t| t == "object");
        if is_object {
            let Some(Value::Object(valid)) =
                sample(&self.build(&Value::Object(s.clone()), depth), runner)
            else {
                return;
            };
            let required = required_names(&s);
            let props = properties(&s);
            let join = |name: &str| join_path(at, name);
            for name in &required {
                if props.get(*name).is_some_and(|p| self.hidden(p)) {
                    continue;
                }
                let mut v = valid.clone();
                v.remove(*name);
                out.push(Negative {
                    description: format!("missing required property {}", join(name)),
                    value: Value::Object(v),
                });
            }
            if s.get("additionalProperties") == Some(&Value::Bool(false))
                && !s.contains_key("patternProperties")
            {
                let mut key = String::from("x_unknown_property");
                while props.contains_key(&key) {
                    key.push('_');
                }
                let mut v = valid.clone();
                v.insert(key, Value::from(1));
                out.push(Negative {
                    description: format!(
                        "unknown property where additionalProperties is false{}",
                        if at.is_empty() {
                            String::new()
                        } else {
                            format!(" ({at})")
                        }
                    ),
                    value: Value::Object(v),
                });
            }
            for (name, prop) in props {
                if self.hidden(prop) {
                    continue;
                }
                let mut inner = Vec::new();
                self.negatives_at(prop, runner, &join(name), depth + 1, &mut inner);
                for n in inner.into_iter().take(6) {
                    let mut v = valid.clone();
                    v.insert(name.clone(), n.value);
                    out.push(Negative {
                        description: n.description,
                        value: Value::Object(v),
                    });
                }
            }
        }
    }
}

fn merge_keyword(out: &mut Map<String, Value>, key: &str, value: &Value) {
    match (key, out.get_mut(key)) {
        (_, None) => {
            out.insert(key.to_string(), value.clone());
        }
        ("required", Some(Value::Array(existing))) => {
            if let Value::Array(more) = value {
                for r in more {
                    if !existing.contains(r) {
                        existing.push(r.clone());
                    }
                }
            }
        }
        ("properties", Some(Value::Object(existing))) => {
            if let Value::Object(more) = value {
                for (name, schema) in more {
                    match existing.get_mut(name) {
                        Some(current) if current != schema => {
                            let both = Value::Array(vec![current.clone(), schema.clone()]);
                            let mut m = Map::new();
                            m.insert("allOf".into(), both);
                            *current = Value::Object(m);
                        }
                        Some(_) => {}
                        None => {
                            existing.insert(name.clone(), schema.clone());
                        }
                    }
                }
            }
        }
        ("type", Some(existing)) => {
            // The intersection of two type sets; keep the first when they do not meet.
            let a = type_list(existing);
            let b = type_list(value);
            let both: Vec<Value> = a
                .iter()
                .filter(|t| {
                    b.contains(t) || (t.as_str() == "integer" && b.iter().any(|x| x == "number"))
                })
                .map(|t| Value::String(t.clone()))
                .collect();
            if !both.is_empty() {
                *existing = if both.len() == 1 {
                    both[0].clone()
                } else {
                    Value::Array(both)
                };
            }
        }
        ("minimum" | "minLength" | "minItems" | "minProperties" | "exclusiveMinimum", Some(e)) => {
            if value.as_f64() > e.as_f64() {
                *e = value.clone();
            }
        }
        ("maximum" | "maxLength" | "maxItems" | "maxProperties" | "exclusiveMaximum", Some(e)) => {
            if value.as_f64() < e.as_f64() {
                *e = value.clone();
            }
        }
        ("additionalProperties", Some(e)) => {
            if value == &Value::Bool(false) {
                *e = value.clone();
            }
        }
        (_, Some(_)) => {}
    }
}

fn type_list(v: &Value) -> Vec<String> {
    match v {
        Value::String(t) => vec![t.clone()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn any_simple() -> SBoxedStrategy<Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-1000i64..1000).prop_map(Value::from),
        "[a-zA-Z0-9 ]{0,12}".prop_map(Value::String),
    ]
    .sboxed()
}

/// The edges of an integer's width the coverage phase sends (and fuzzing draws now and
/// then): ±(2^31−1) for an `int32`; otherwise ±2^53, ±(2^53+1) (the first integer a
/// double cannot hold: a server that parses JSON numbers as doubles changes or refuses it)
/// and ±(2^63−1).
fn integer_edges(format: Option<&str>) -> Vec<(&'static str, i64)> {
    const TWO_53: i64 = 1 << 53;
    let int32 = i64::from(i32::MAX);
    if format == Some("int32") {
        return vec![("int32 maximum", int32), ("int32 minimum", -int32)];
    }
    vec![
        ("2^53", TWO_53),
        ("-2^53", -TWO_53),
        ("2^53+1", TWO_53 + 1),
        ("-(2^53+1)", -(TWO_53 + 1)),
        ("int64 maximum", i64::MAX),
        ("int64 minimum", -i64::MAX),
    ]
}

/// [`integer_edges`] of a schema's `format: int32`/`int64` that its own bounds allow, for
/// fuzzing. A schema without a format gets none: fuzzing keeps to ±1,000,000 around its
/// bounds, and the coverage phase sends the wide edges.
fn fuzz_integer_edges(s: &Map<String, Value>) -> Vec<i64> {
    let format = s.get("format").and_then(Value::as_str);
    if !matches!(format, Some("int32" | "int64")) {
        return Vec::new();
    }
    // Compared exactly: as doubles, 2^53+1 would pass a `maximum: 9007199254740992`.
    let cmp = |v: i64, key: &str| -> Option<std::cmp::Ordering> {
        let bound = s.get(key)?;
        let exact = bound
            .as_i64()
            .map(i128::from)
            .or_else(|| bound.as_u64().map(i128::from));
        #[expect(clippy::cast_precision_loss, reason = "a fractional or huge bound")]
        let ordering = match exact {
            Some(b) => i128::from(v).cmp(&b),
            None => (v as f64).partial_cmp(&bound.as_f64()?)?,
        };
        Some(ordering)
    };
    let allowed = |v: i64| {
        use std::cmp::Ordering::{Greater, Less};
        cmp(v, "minimum").is_none_or(|o| o != Less)
            && cmp(v, "exclusiveMinimum").is_none_or(|o| o == Greater)
            && cmp(v, "maximum").is_none_or(|o| o != Greater)
            && cmp(v, "exclusiveMaximum").is_none_or(|o| o == Less)
    };
    integer_edges(format)
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| allowed(*v))
        .collect()
}

fn integer_bounds(s: &Map<String, Value>) -> (i64, i64) {
    #[expect(clippy::cast_possible_truncation, reason = "clamped into i64 range")]
    let to_i64 = |f: f64| f.clamp(i64::MIN as f64, i64::MAX as f64) as i64;
    let lo = match (f64_of(s, "minimum"), f64_of(s, "exclusiveMinimum")) {
        (Some(a), Some(b)) => Some(to_i64(a.ceil()).max(to_i64(b.floor()).saturating_add(1))),
        (Some(a), None) => Some(to_i64(a.ceil())),
        (None, Some(b)) => Some(to_i64(b.floor()).saturating_add(1)),
        (None, None) => None,
    };
    let hi = match (f64_of(s, "maximum"), f64_of(s, "exclusiveMaximum")) {
        (Some(a), Some(b)) => Some(to_i64(a.floor()).min(to_i64(b.ceil()).saturating_sub(1))),
        (Some(a), None) => Some(to_i64(a.floor())),
        (None, Some(b)) => Some(to_i64(b.ceil()).saturating_sub(1)),
        (None, None) => None,
    };
    match (lo, hi) {
        (Some(lo), Some(hi)) => (lo, hi.max(lo)),
        (Some(lo), None) => (lo, lo.saturating_add(1_000_000)),
        (None, Some(hi)) => (hi.saturating_sub(1_000_000), hi),
        (None, None) => (-1_000_000, 1_000_000),
    }
}

/// `edges`: also draw [`fuzz_integer_edges`] now and then (requests only: a mock's answers
/// keep to small numbers, which every client reads exactly).
fn integer_strategy(s: &Map<String, Value>, edges: bool) -> SBoxedStrategy<Value> {
    let (lo, hi) = integer_bounds(s);
    #[expect(
        clippy::cast_possible_truncation,
        reason = "multipleOf is a small integer here"
    )]
    let multiple = f64_of(s, "multipleOf")
        .filter(|m| *m >= 1.0 && m.fract() == 0.0)
        .map(|m| m as i64);
    if let Some(m) = multiple {
        let k_lo = lo.div_euclid(m) + i64::from(lo.rem_euclid(m) != 0);
        let k_hi = hi.div_euclid(m).max(k_lo);
        return (k_lo..=k_hi)
            .prop_map(move |k| Value::from(k.saturating_mul(m)))
            .sboxed();
    }
    let edges = if edges {
        fuzz_integer_edges(s)
    } else {
        Vec::new()
    };
    let within = prop_oneof![
        1 => Just(lo),
        1 => Just(hi),
        6 => lo..=hi,
    ];
    if edges.is_empty() {
        return within.prop_map(Value::from).sboxed();
    }
    prop_oneof![
        8 => within,
        1 => proptest::sample::select(edges),
    ]
    .prop_map(Value::from)
    .sboxed()
}

fn number_strategy(s: &Map<String, Value>) -> SBoxedStrategy<Value> {
    if let Some(m) = f64_of(s, "multipleOf")
        && m > 0.0
    {
        let lo = f64_of(s, "minimum")
            .or(f64_of(s, "exclusiveMinimum"))
            .unwrap_or(-1000.0 * m);
        let hi = f64_of(s, "maximum")
            .or(f64_of(s, "exclusiveMaximum"))
            .unwrap_or(lo + 1000.0 * m);
        #[expect(clippy::cast_possible_truncation, reason = "bounded multiples")]
        let (k_lo, k_hi) = (
            ((lo / m).ceil() + 1.0) as i64,
            ((hi / m).floor() - 1.0) as i64,
        );
        return (k_lo..=k_hi.max(k_lo))
            .prop_map(move |k| {
                #[expect(clippy::cast_precision_loss, reason = "small multiples")]
                let v = k as f64 * m;
                json_number(v)
            })
            .sboxed();
    }
    let min = f64_of(s, "minimum");
    let xmin = f64_of(s, "exclusiveMinimum");
    let max = f64_of(s, "maximum");
    let xmax = f64_of(s, "exclusiveMaximum");
    let lo = min.or(xmin).unwrap_or(-1.0e6);
    let hi = max.or(xmax).unwrap_or(lo.max(0.0) + 1.0e6);
    let hi = if hi < lo { lo } else { hi };
    let mut edges = Vec::new();
    if let Some(m) = min {
        edges.push(m);
    }
    if let Some(m) = max {
        edges.push(m);
    }
    let (xlo, xhi) = (xmin, xmax);
    let inner = (0.0f64..=1.0).prop_map(move |t| lo + (hi - lo) * t);
    let values: SBoxedStrategy<f64> = if edges.is_empty() {
        inner.sboxed()
    } else {
        prop_oneof![1 => proptest::sample::select(edges), 4 => inner].sboxed()
    };
    values
        .prop_filter("outside the exclusive bounds", move |v| {
            xlo.is_none_or(|x| *v > x) && xhi.is_none_or(|x| *v < x)
        })
        .prop_map(json_number)
        .sboxed()
}

fn format_strategy(format: &str) -> Option<SBoxedStrategy<String>> {
    let dt = (
        2000u32..2035,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        0u32..60,
    );
    Some(match format {
        "date-time" => dt
            .prop_map(|(y, mo, d, h, mi, s)| {
                format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
            })
            .sboxed(),
        "date" => (2000u32..2035, 1u32..=12, 1u32..=28)
            .prop_map(|(y, mo, d)| format!("{y:04}-{mo:02}-{d:02}"))
            .sboxed(),
        "time" => (0u32..24, 0u32..60, 0u32..60)
            .prop_map(|(h, mi, s)| format!("{h:02}:{mi:02}:{s:02}Z"))
            .sboxed(),
        "uuid" => any::<u128>()
            .prop_map(|n| {
                let n = (n & !(0xf << 76)) | (0x4 << 76);
                let n = (n & !(0x3 << 62)) | (0x2 << 62);
                let h = format!("{n:032x}");
                format!(
                    "{}-{}-{}-{}-{}",
                    &h[0..8],
                    &h[8..12],
                    &h[12..16],
                    &h[16..20],
                    &h[20..32]
                )
            })
            .sboxed(),
        "email" => "[a-z][a-z0-9]{0,8}@[a-z]{1,8}\\.(com|org|net)".sboxed(),
        "uri" | "url" | "iri" => "https://[a-z]{1,8}\\.example/[a-z0-9]{0,8}".sboxed(),
        "uri-reference" | "iri-reference" => "/[a-z0-9]{0,8}".sboxed(),
        "hostname" | "idn-hostname" => "[a-z]{1,8}\\.example".sboxed(),
        "ipv4" => any::<[u8; 4]>()
            .prop_map(|[a, b, c, d]| format!("{a}.{b}.{c}.{d}"))
            .sboxed(),
        _ => return None,
    })
}

fn string_strategy(s: &Map<String, Value>) -> SBoxedStrategy<Value> {
    let min = usize_of(s, "minLength").unwrap_or(0);
    let max = usize_of(s, "maxLength").unwrap_or(usize::MAX);
    let cap = max.min(min + SPAN).max(min);
    let fits = move |v: &String| {
        let n = char_len(v);
        n >= min && n <= max
    };
    if let Some(strategy) = s
        .get("format")
        .and_then(Value::as_str)
        .and_then(format_strategy)
    {
        return strategy
            .prop_filter("format value outside the length bounds", fits)
            .prop_map(Value::String)
            .sboxed();
    }
    if let Some(pattern) = s.get("pattern").and_then(Value::as_str) {
        let stripped = strip_anchors(pattern);
        // `[class]*` or `[class]+` over the whole string: give it the length bounds directly,
        // so that long minimums do not rely on luck.
        let bounded = whole_string_class(stripped).map(|atom| format!("{atom}{{{min},{cap}}}"));
        let checker = regex::Regex::new(pattern).ok();
        let accept = move |v: &String| fits(v) && checker.as_ref().is_none_or(|re| re.is_match(v));
        if let Some(generator) = bounded
            .as_deref()
            .or(Some(stripped))
            .and_then(|p| proptest::string::string_regex(p).ok())
        {
            return generator
                .prop_filter("pattern value outside the length bounds", accept)
                .prop_map(Value::String)
                .sboxed();
        }
        return plain_string(min, cap)
            .prop_filter("does not match the pattern", accept)
            .prop_map(Value::String)
            .sboxed();
    }
    plain_string(min, cap).prop_map(Value::String).sboxed()
}

fn plain_string(min: usize, cap: usize) -> SBoxedStrategy<String> {
    let ascii = proptest::string::string_regex(&format!("[a-zA-Z0-9_ -]{{{min},{cap}}}"));
    let any_chars = proptest::collection::vec(any::<char>(), min..=cap)
        .prop_map(|cs| cs.into_iter().collect::<String>());
    match ascii {
        Ok(ascii) => prop_oneof![3 => ascii, 1 => any_chars].sboxed(),
        Err(_) => any_chars.sboxed(),
    }
}

/// `[...]*`, `[...]+`, `.*` or `\w+` patterns: the atom, when the pattern is one atom repeated.
fn whole_string_class(pattern: &str) -> Option<&str> {
    let body = pattern
        .strip_suffix('*')
        .or_else(|| pattern.strip_suffix('+'))?;
    let is_class = body.starts_with('[')
        && body.ends_with(']')
        && !body[1..body.len() - 1].contains(['[', ']']);
    let is_escape = body.len() == 2 && body.starts_with('\\');
    (is_class || is_escape || body == ".").then_some(body)
}

/// The names a schema lists in `required`.
fn required_names(s: &Map<String, Value>) -> Vec<&str> {
    s.get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

static NO_PROPERTIES: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

/// A schema's `properties`, empty when it declares none.
fn properties(s: &Map<String, Value>) -> &Map<String, Value> {
    s.get("properties")
        .and_then(Value::as_object)
        .unwrap_or(&NO_PROPERTIES)
}

/// `at.name`, or `name` at the top level.
fn join_path(at: &str, name: &str) -> String {
    if at.is_empty() {
        name.to_string()
    } else {
        format!("{at}.{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng};
    use serde_json::json;

    fn runner(seed: u8) -> TestRunner {
        TestRunner::new_with_rng(
            Config {
                cases: 64,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]),
        )
    }

    fn spec() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../generated/openapi.json");
        let text = std::fs::read_to_string(path).expect("generated/openapi.json");
        serde_json::from_str(&text).expect("JSON")
    }

    #[test]
    fn every_component_schema_round_trips_through_the_validator() {
        let doc = spec();
        let names: Vec<String> = doc["components"]["schemas"]
            .as_object()
            .expect("schemas")
            .keys()
            .cloned()
            .collect();
        for direction in [Direction::Request, Direction::Response] {
            let prepared = prepare_doc(&doc, direction);
            let generator = Generator::new(&prepared, direction);
            for name in &names {
                let schema = json!({"$ref": format!("#/components/schemas/{name}")});
                let validator =
                    crate::validate::compile_schema(&prepared, &schema, name).expect("compiles");
                let strategy = generator.strategy(&schema);
                let mut r = runner(7);
                r.run(&strategy, |value| {
                    let errors: Vec<String> = validator
                        .iter_errors(&value)
                        .map(|e| e.to_string())
                        .collect();
                    prop_assert!(
                        errors.is_empty(),
                        "{name} ({direction:?}): {value} → {errors:?}"
                    );
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("{e}"));
                let mut r = runner(9);
                for negative in generator.negatives(&schema, &mut r) {
                    assert!(
                        !validator.is_valid(&negative.value),
                        "{name} ({direction:?}): negative `{}` is valid: {}",
                        negative.description,
                        negative.value
                    );
                }
            }
        }
    }

    #[test]
    fn keywords_are_honoured() {
        let schemas = [
            json!({"type": ["integer", "null"], "minimum": 3, "exclusiveMaximum": 9, "multipleOf": 2}),
            json!({"type": "number", "exclusiveMinimum": 0, "maximum": 1}),
            json!({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"}),
            json!({"type": "string", "format": "uuid"}),
            json!({"type": "string", "format": "date"}),
            json!({"type": "string", "format": "email", "maxLength": 30}),
            json!({"type": "string", "minLength": 40, "pattern": "^[a-f]*$"}),
            json!({"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 2, "uniqueItems": true}),
            json!({"type": "object", "required": ["id", "name"], "additionalProperties": false,
                   "properties": {"id": {"type": "string", "readOnly": true}, "name": {"const": "x"},
                                  "n": {"type": "integer"}}}),
            json!({"oneOf": [{"type": "string", "maxLength": 2}, {"type": "boolean"}]}),
            json!({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}}, {"required": ["a"]}]}),
            json!({"type": "object", "propertyNames": {"pattern": "^[a-z]{3}$"}, "additionalProperties": {"type": "integer"}, "maxProperties": 1}),
            json!({"type": "object", "minProperties": 2, "additionalProperties": false, "properties": {"a": {"type": "integer"}, "b": {"type": "string"}, "c": {"type": "boolean"}}}),
        ];
        let mut components = Map::new();
        for (i, schema) in schemas.iter().enumerate() {
            components.insert(format!("T{i}"), schema.clone());
        }
        let doc = json!({"openapi": "3.1.0", "components": {"schemas": components}});
        let prepared = prepare_doc(&doc, Direction::Request);
        let g = Generator::new(&prepared, Direction::Request);
        for i in 0..schemas.len() {
            let schema = json!({"$ref": format!("#/components/schemas/T{i}")});
            let validator =
                crate::validate::compile_schema(&prepared, &schema, "").expect("compiles");
            let mut r = runner(1);
            r.run(&g.strategy(&schema), |v| {
                prop_assert!(validator.is_valid(&v), "{schema} ← {v}");
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{e}"));
            for n in g.negatives(&schema, &mut r) {
                assert!(
                    !validator.is_valid(&n.value),
                    "{schema}: {} {}",
                    n.description,
                    n.value
                );
            }
        }
    }

    #[test]
    fn fuzzing_draws_the_format_edges_its_bounds_allow() {
        let doc = json!({"openapi": "3.1.0"});
        let g = Generator::new(&doc, Direction::Request);
        let draws = |schema: &Value| {
            let strategy = g.strategy(schema);
            let mut r = runner(7);
            (0..400)
                .filter_map(|_| sample(&strategy, &mut r).and_then(|v| v.as_i64()))
                .collect::<Vec<i64>>()
        };
        let two_53 = 1_i64 << 53;
        let v = draws(&json!({"type": "integer", "format": "int64"}));
        for edge in [two_53 + 1, -(two_53 + 1), i64::MAX, -i64::MAX] {
            assert!(v.contains(&edge), "{edge} never drawn");
        }
        let v =
            draws(&json!({"type": "integer", "format": "int64", "minimum": 0, "maximum": two_53}));
        assert!(
            v.iter().all(|v| (0..=two_53).contains(v)),
            "exact bounds: {v:?}"
        );
        assert!(v.contains(&two_53), "the edge at its maximum is drawn");
        let v = draws(&json!({"type": "integer", "format": "int32"}));
        assert!(v.contains(&i64::from(i32::MAX)), "int32 edge never drawn");
        assert!(v.iter().all(|v| i32::try_from(*v).is_ok()), "{v:?}");
        let v = draws(&json!({"type": "integer"}));
        assert!(
            v.iter().all(|v| v.abs() <= 1_000_000),
            "no format: within ±1,000,000"
        );
        let answers = Generator::new(&doc, Direction::Response);
        let strategy = answers.strategy(&json!({"type": "integer", "format": "int64"}));
        let mut r = runner(7);
        assert!(
            (0..400)
                .filter_map(|_| sample(&strategy, &mut r).and_then(|v| v.as_i64()))
                .all(|v| v.abs() <= 1_000_000),
            "a mock's answers keep to small numbers"
        );
    }

    #[test]
    fn integer_widths_have_edges_and_negatives_outside_the_format() {
        let doc = json!({"openapi": "3.1.0"});
        let g = Generator::new(&doc, Direction::Request);
        let values = |schema: &Value| {
            let mut r = runner(5);
            let b: Vec<Value> = g
                .boundaries(schema, &mut r)
                .into_iter()
                .map(|b| b.value)
                .collect();
            let n: Vec<Value> = g
                .negatives(schema, &mut r)
                .into_iter()
                .map(|n| n.value)
                .collect();
            (b, n)
        };
        let (b, n) = values(&json!({"type": "integer", "format": "int32"}));
        assert!(
            b.contains(&json!(2_147_483_647)) && b.contains(&json!(-2_147_483_647)),
            "{b:?}"
        );
        assert!(
            n.contains(&json!(2_147_483_648_i64)) && n.contains(&json!(-2_147_483_649_i64)),
            "{n:?}"
        );
        let (b, n) = values(&json!({"type": "integer", "format": "int64", "minimum": 0}));
        assert!(
            b.contains(&json!(1_i64 << 53))
                && b.contains(&json!((1_i64 << 53) + 1))
                && b.contains(&json!(i64::MAX)),
            "{b:?}"
        );
        assert!(
            !b.iter().any(|v| v.as_i64().is_some_and(|v| v < 0)),
            "within the schema's bounds: {b:?}"
        );
        assert!(n.contains(&json!(1_u64 << 63)), "{n:?}");
        let (b, n) = values(&json!({"type": "integer"}));
        assert!(
            b.contains(&json!(-(1_i64 << 53))) && b.contains(&json!(-i64::MAX)),
            "{b:?}"
        );
        assert!(
            !n.iter().any(|v| v.as_u64().is_some_and(|v| v > 1 << 53)),
            "no format, no range to leave: {n:?}"
        );
        let (b, n) =
            values(&json!({"type": "integer", "format": "int32", "minimum": 1, "maximum": 100}));
        assert!(
            b.iter()
                .all(|v| v.as_i64().is_some_and(|v| (1..=100).contains(&v))),
            "{b:?}"
        );
        assert!(
            n.iter().filter_map(Value::as_i64).all(|v| v < 1_000),
            "its own bounds are tighter: {n:?}"
        );
    }

    #[test]
    fn boundaries_validate_and_their_negatives_do_not() {
        let schemas = [
            json!({"type": "integer", "minimum": 1, "maximum": 100}),
            json!({"type": ["integer", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 10}),
            json!({"type": "number", "minimum": -1.5, "exclusiveMaximum": 2.5}),
            json!({"enum": ["asc", "desc"]}),
            json!({"type": "string", "minLength": 2, "maxLength": 12}),
            json!({"type": "string", "maxLength": 5}),
            json!({"type": ["string", "null"], "pattern": "^[a-z]+$", "maxLength": 8}),
            json!({"type": "string", "format": "date-time"}),
            json!({"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 4, "uniqueItems": true}),
            json!({"type": "object", "required": ["name"], "additionalProperties": false, "properties": {
                "id": {"type": "string", "readOnly": true},
                "name": {"type": "string", "minLength": 1, "maxLength": 10},
                "count": {"type": "integer", "minimum": 0, "maximum": 100},
                "kind": {"enum": ["a", "b", "c"]},
                "note": {"type": ["string", "null"]},
                "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2}
            }}),
        ];
        let mut components = Map::new();
        for (i, schema) in schemas.iter().enumerate() {
            components.insert(format!("T{i}"), schema.clone());
        }
        let doc = json!({"openapi": "3.1.0", "components": {"schemas": components}});
        let prepared = prepare_doc(&doc, Direction::Request);
        let g = Generator::new(&prepared, Direction::Request);
        let mut all = Vec::new();
        for i in 0..schemas.len() {
            let schema = json!({"$ref": format!("#/components/schemas/T{i}")});
            let validator =
                crate::validate::compile_schema(&prepared, &schema, "").expect("compiles");
            let mut r = runner(3);
            let boundaries = g.boundaries(&schema, &mut r);
            assert!(!boundaries.is_empty(), "T{i} has boundaries");
            for b in &boundaries {
                assert!(
                    validator.is_valid(&b.value),
                    "T{i}: {} {}",
                    b.description,
                    b.value
                );
            }
            let mut r2 = runner(3);
            assert_eq!(boundaries, g.boundaries(&schema, &mut r2), "deterministic");
            for n in g.negatives(&schema, &mut r) {
                assert!(
                    !validator.is_valid(&n.value),
                    "T{i}: {} {}",
                    n.description,
                    n.value
                );
            }
            all.extend(boundaries.into_iter().map(|b| (i, b.value)));
        }
        let has = |i: usize, v: Value| all.contains(&(i, v));
        assert!(has(0, json!(1)) && has(0, json!(100)));
        assert!(has(1, json!(1)) && has(1, json!(9)) && has(1, Value::Null));
        assert!(has(2, json!(-1.5)) && has(2, json!(1.5)));
        assert!(has(3, json!("asc")) && has(3, json!("desc")));
        assert!(has(4, json!("aa")) && has(4, json!("a".repeat(12))));
        assert!(has(5, json!("")) && has(5, json!("aaaaa")));
        assert!(has(6, Value::Null) && has(6, json!("aaaaaaaa")));
        let objects: Vec<&Value> = all
            .iter()
            .filter(|(i, _)| *i == 9)
            .map(|(_, v)| v)
            .collect();
        for (key, value) in [
            ("count", json!(0)),
            ("count", json!(100)),
            ("kind", json!("c")),
            ("note", Value::Null),
            ("name", json!("a".repeat(10))),
        ] {
            assert!(
                objects.iter().any(|o| o[key] == value),
                "{key} = {value} in {objects:?}"
            );
        }
        assert!(
            objects.iter().any(|o| o.get("count").is_none()),
            "count absent"
        );
        assert!(
            objects.iter().any(|o| o.get("count").is_some()),
            "count present"
        );
        assert!(
            objects.iter().all(|o| o.get("id").is_none()),
            "readOnly never sent"
        );
    }
}
