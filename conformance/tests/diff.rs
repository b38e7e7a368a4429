//! `agentplane diff` against a table of small spec pairs, one per rule of its catalog, and on
//! real specs: every fixture compared with itself finds nothing, and hand-edited copies of two
//! fixtures (under `tests/fixtures/diff/`) find exactly the edits.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use conformance::diff::{self, Change, Severity, rules};
use conformance::spec;
use serde_json::{Value, json};

use Severity::{Breaking, Potential, Safe};

fn doc(paths: Value) -> Value {
    json!({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": paths})
}

fn ok() -> Value {
    json!({"200": {"description": "ok"}})
}

/// `POST /things` taking `schema` as its JSON body.
fn body(schema: Value) -> Value {
    doc(json!({"/things": {"post": {
        "requestBody": {"required": true, "content": {"application/json": {"schema": schema}}},
        "responses": ok()
    }}}))
}

/// `GET /things` answering `schema` as its JSON body.
fn reply(schema: Value) -> Value {
    doc(json!({"/things": {"get": {
        "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": schema}}}}
    }}}))
}

/// `GET /things` with these parameters.
fn params(list: Value) -> Value {
    doc(json!({"/things": {"get": {"parameters": list, "responses": ok()}}}))
}

/// `GET /things` with these responses.
fn responses(map: Value) -> Value {
    doc(json!({"/things": {"get": {"responses": map}}}))
}

/// `GET /things` with this operation-level `security`.
fn secured(security: Value) -> Value {
    doc(json!({"/things": {"get": {"security": security, "responses": ok()}}}))
}

/// An object with properties `a` (and `b` when `with_b`) as a request body property `p`.
fn object(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required})
}

/// The schema as the value of body property `p` (request) or response property `p`.
fn in_body(schema: Value) -> Value {
    body(object(json!({"p": schema}), &[]))
}

fn in_reply(schema: Value) -> Value {
    reply(object(json!({"p": schema}), &[]))
}

fn header(required: bool) -> Value {
    json!({"required": required, "schema": {"type": "string"}})
}

fn with_header(h: Option<Value>) -> Value {
    let mut response = json!({"description": "ok"});
    if let Some(h) = h {
        response["headers"] = json!({"X-Rate": h});
    }
    responses(json!({"200": response}))
}

fn parameter(name: &str, required: bool) -> Value {
    json!({"name": name, "in": "query", "required": required, "schema": {"type": "string"}})
}

fn with_components(mut document: Value, schemas: Value) -> Value {
    document["components"] = json!({"schemas": schemas});
    document
}

fn pets() -> Value {
    json!({
        "Cat": {"type": "object", "properties": {"meow": {"type": "boolean"}}},
        "Dog": {"type": "object", "properties": {"bark": {"type": "boolean"}}}
    })
}

fn one_of(refs: &[&str]) -> Value {
    let branches: Vec<Value> = refs
        .iter()
        .map(|r| json!({"$ref": format!("#/components/schemas/{r}")}))
        .collect();
    json!({"oneOf": branches})
}

/// Normalizes (as the loader does) and compares.
fn compare(old: &Value, new: &Value) -> Vec<Change> {
    let (mut old, mut new) = (old.clone(), new.clone());
    spec::normalize_to_31(&mut old);
    spec::normalize_to_31(&mut new);
    diff::diff(&old, &new)
}

struct Case {
    id: &'static str,
    severity: Severity,
    old: Value,
    new: Value,
}

fn case(id: &'static str, severity: Severity, old: Value, new: Value) -> Case {
    Case {
        id,
        severity,
        old,
        new,
    }
}

/// The bound rules, generated: every bound keyword on both sides, tightened and loosened.
fn bound_cases() -> Vec<Case> {
    // (id stem, keyword, base schema, loose value, tight value)
    let bounds: [(&str, &str, Value, Value, Value); 6] = [
        (
            "maximum",
            "maximum",
            json!({"type": "integer"}),
            json!(100),
            json!(50),
        ),
        (
            "minimum",
            "minimum",
            json!({"type": "integer"}),
            json!(1),
            json!(5),
        ),
        (
            "max-length",
            "maxLength",
            json!({"type": "string"}),
            json!(100),
            json!(50),
        ),
        (
            "min-length",
            "minLength",
            json!({"type": "string"}),
            json!(1),
            json!(5),
        ),
        (
            "max-items",
            "maxItems",
            json!({"type": "array"}),
            json!(10),
            json!(5),
        ),
        (
            "min-items",
            "minItems",
            json!({"type": "array"}),
            json!(1),
            json!(2),
        ),
    ];
    let mut cases = Vec::new();
    for (stem, keyword, base, loose, tight) in bounds {
        let with = |v: &Value| {
            let mut s = base.clone();
            s[keyword] = v.clone();
            s
        };
        let upper = stem.starts_with("max");
        let (tighter, looser) = if upper {
            ("decreased", "increased")
        } else {
            ("increased", "decreased")
        };
        let id = |side: &str, change: &str| -> &'static str {
            let id = format!("{side}-{stem}-{change}");
            rules::find(&id).map(|r| r.id).unwrap_or("missing rule")
        };
        cases.push(case(
            id("request", tighter),
            Breaking,
            in_body(with(&loose)),
            in_body(with(&tight)),
        ));
        cases.push(case(
            id("request", looser),
            Safe,
            in_body(with(&tight)),
            in_body(with(&loose)),
        ));
        cases.push(case(
            id("response", tighter),
            Safe,
            in_reply(with(&loose)),
            in_reply(with(&tight)),
        ));
        cases.push(case(
            id("response", looser),
            Potential,
            in_reply(with(&tight)),
            in_reply(with(&loose)),
        ));
    }
    cases
}

fn cases() -> Vec<Case> {
    let get = json!({"responses": ok()});
    let s = |t: &str| json!({"type": t});
    let mut cases = vec![
        // ---- paths and operations
        case(
            "api-path-removed",
            Breaking,
            doc(json!({"/a": {"get": get}, "/b": {"get": get}})),
            doc(json!({"/a": {"get": get}})),
        ),
        case(
            "api-path-added",
            Safe,
            doc(json!({"/a": {"get": get}})),
            doc(json!({"/a": {"get": get}, "/b": {"get": get}})),
        ),
        case(
            "api-removed",
            Breaking,
            doc(json!({"/a": {"get": get, "post": get}})),
            doc(json!({"/a": {"get": get}})),
        ),
        case(
            "api-added",
            Safe,
            doc(json!({"/a": {"get": get}})),
            doc(json!({"/a": {"get": get, "post": get}})),
        ),
        case(
            "api-removed-after-deprecation",
            Potential,
            doc(json!({"/a": {"get": get, "post": {"deprecated": true, "responses": ok()}}})),
            doc(json!({"/a": {"get": get}})),
        ),
        case(
            "api-deprecated",
            Safe,
            doc(json!({"/a": {"get": get}})),
            doc(json!({"/a": {"get": {"deprecated": true, "responses": ok()}}})),
        ),
        case(
            "api-reactivated",
            Safe,
            doc(json!({"/a": {"get": {"deprecated": true, "responses": ok()}}})),
            doc(json!({"/a": {"get": get}})),
        ),
        case(
            "api-operation-id-changed",
            Potential,
            doc(json!({"/a": {"get": {"operationId": "listA", "responses": ok()}}})),
            doc(json!({"/a": {"get": {"operationId": "getAll", "responses": ok()}}})),
        ),
        // ---- security
        case(
            "security-requirement-added",
            Breaking,
            secured(json!([])),
            secured(json!([{"key": []}])),
        ),
        case(
            "security-requirement-removed",
            Safe,
            secured(json!([{"key": [], "token": []}])),
            secured(json!([{"key": []}])),
        ),
        case(
            "security-alternative-added",
            Safe,
            secured(json!([{"key": []}])),
            secured(json!([{"key": []}, {"bearer": []}])),
        ),
        // ---- parameters
        case(
            "new-required-request-parameter",
            Breaking,
            params(json!([])),
            params(json!([parameter("q", true)])),
        ),
        case(
            "new-optional-request-parameter",
            Safe,
            params(json!([])),
            params(json!([parameter("q", false)])),
        ),
        case(
            "request-parameter-removed",
            Potential,
            params(json!([parameter("q", false)])),
            params(json!([])),
        ),
        case(
            "request-parameter-became-required",
            Breaking,
            params(json!([parameter("q", false)])),
            params(json!([parameter("q", true)])),
        ),
        case(
            "request-parameter-became-optional",
            Safe,
            params(json!([parameter("q", true)])),
            params(json!([parameter("q", false)])),
        ),
        // ---- request bodies
        case(
            "request-body-added-required",
            Breaking,
            doc(json!({"/things": {"post": {"responses": ok()}}})),
            body(s("string")),
        ),
        case(
            "request-body-added-optional",
            Safe,
            doc(json!({"/things": {"post": {"responses": ok()}}})),
            doc(json!({"/things": {"post": {
                "requestBody": {"content": {"application/json": {"schema": s("string")}}},
                "responses": ok()
            }}})),
        ),
        case(
            "request-body-removed",
            Breaking,
            body(s("string")),
            doc(json!({"/things": {"post": {"responses": ok()}}})),
        ),
        case(
            "request-body-became-required",
            Breaking,
            doc(json!({"/things": {"post": {
                "requestBody": {"content": {"application/json": {"schema": s("string")}}},
                "responses": ok()
            }}})),
            body(s("string")),
        ),
        case(
            "request-body-became-optional",
            Safe,
            body(s("string")),
            doc(json!({"/things": {"post": {
                "requestBody": {"required": false, "content": {"application/json": {"schema": s("string")}}},
                "responses": ok()
            }}})),
        ),
        case(
            "request-media-type-removed",
            Breaking,
            doc(json!({"/things": {"post": {
                "requestBody": {"content": {"application/json": {"schema": s("string")}, "text/plain": {"schema": s("string")}}},
                "responses": ok()
            }}})),
            doc(json!({"/things": {"post": {
                "requestBody": {"content": {"application/json": {"schema": s("string")}}},
                "responses": ok()
            }}})),
        ),
        case(
            "request-media-type-added",
            Safe,
            doc(json!({"/things": {"post": {
                "requestBody": {"content": {"application/json": {"schema": s("string")}}},
                "responses": ok()
            }}})),
            doc(json!({"/things": {"post": {
                "requestBody": {"content": {"application/json": {"schema": s("string")}, "Text/Plain": {"schema": s("string")}}},
                "responses": ok()
            }}})),
        ),
        // ---- responses
        case(
            "response-status-removed",
            Breaking,
            responses(json!({"200": {"description": "ok"}, "201": {"description": "made"}})),
            responses(json!({"200": {"description": "ok"}})),
        ),
        case(
            "response-status-added",
            Potential,
            responses(json!({"200": {"description": "ok"}})),
            responses(json!({"200": {"description": "ok"}, "202": {"description": "later"}})),
        ),
        case(
            "response-error-status-removed",
            Potential,
            responses(json!({"200": {"description": "ok"}, "404": {"description": "gone"}})),
            responses(json!({"200": {"description": "ok"}})),
        ),
        case(
            "response-error-status-added",
            Safe,
            responses(json!({"200": {"description": "ok"}})),
            responses(json!({"200": {"description": "ok"}, "default": {"description": "error"}})),
        ),
        case(
            "response-media-type-removed",
            Breaking,
            responses(
                json!({"200": {"description": "ok", "content": {"application/json": {}, "application/xml": {}}}}),
            ),
            responses(json!({"200": {"description": "ok", "content": {"application/json": {}}}})),
        ),
        case(
            "response-media-type-added",
            Safe,
            responses(json!({"200": {"description": "ok", "content": {"application/json": {}}}})),
            responses(
                json!({"200": {"description": "ok", "content": {"application/json": {}, "text/csv": {}}}}),
            ),
        ),
        case(
            "response-required-header-removed",
            Breaking,
            with_header(Some(header(true))),
            with_header(None),
        ),
        case(
            "response-optional-header-removed",
            Potential,
            with_header(Some(header(false))),
            with_header(None),
        ),
        case(
            "response-header-added",
            Safe,
            with_header(None),
            with_header(Some(header(false))),
        ),
        case(
            "response-header-became-optional",
            Breaking,
            with_header(Some(header(true))),
            with_header(Some(header(false))),
        ),
        case(
            "response-header-became-required",
            Safe,
            with_header(Some(header(false))),
            with_header(Some(header(true))),
        ),
        // ---- request object properties
        case(
            "new-required-request-property",
            Breaking,
            body(object(json!({"a": s("string")}), &[])),
            body(object(json!({"a": s("string"), "b": s("string")}), &["b"])),
        ),
        case(
            "new-optional-request-property",
            Safe,
            body(object(json!({"a": s("string")}), &[])),
            body(object(json!({"a": s("string"), "b": s("string")}), &[])),
        ),
        case(
            "request-property-removed",
            Potential,
            body(object(json!({"a": s("string"), "b": s("string")}), &[])),
            body(object(json!({"a": s("string")}), &[])),
        ),
        case(
            "request-property-removed-from-closed-object",
            Breaking,
            body(
                json!({"type": "object", "additionalProperties": false, "properties": {"a": s("string"), "b": s("string")}}),
            ),
            body(
                json!({"type": "object", "additionalProperties": false, "properties": {"a": s("string")}}),
            ),
        ),
        case(
            "request-property-became-required",
            Breaking,
            body(object(json!({"a": s("string")}), &[])),
            body(object(json!({"a": s("string")}), &["a"])),
        ),
        case(
            "request-property-became-optional",
            Safe,
            body(object(json!({"a": s("string")}), &["a"])),
            body(object(json!({"a": s("string")}), &[])),
        ),
        case(
            "request-additional-properties-forbidden",
            Breaking,
            body(json!({"type": "object", "properties": {"a": s("string")}})),
            body(
                json!({"type": "object", "additionalProperties": false, "properties": {"a": s("string")}}),
            ),
        ),
        case(
            "request-additional-properties-allowed",
            Safe,
            body(
                json!({"type": "object", "unevaluatedProperties": false, "properties": {"a": s("string")}}),
            ),
            body(json!({"type": "object", "properties": {"a": s("string")}})),
        ),
        // ---- response object properties
        case(
            "response-property-removed",
            Breaking,
            reply(object(json!({"a": s("string"), "b": s("string")}), &[])),
            reply(object(json!({"a": s("string")}), &[])),
        ),
        case(
            "response-property-added",
            Safe,
            reply(object(json!({"a": s("string")}), &[])),
            reply(object(json!({"a": s("string"), "b": s("string")}), &[])),
        ),
        case(
            "response-property-became-optional",
            Breaking,
            reply(object(json!({"a": s("string")}), &["a"])),
            reply(object(json!({"a": s("string")}), &[])),
        ),
        case(
            "response-property-became-required",
            Safe,
            reply(object(json!({"a": s("string")}), &[])),
            reply(object(json!({"a": s("string")}), &["a"])),
        ),
        // ---- nullability (3.1 type arrays, 3.0 nullable, a oneOf with a null branch)
        case(
            "request-property-became-nullable",
            Safe,
            in_body(s("string")),
            in_body(json!({"type": ["string", "null"]})),
        ),
        case(
            "request-property-became-not-nullable",
            Breaking,
            with_components(
                in_body(json!({"oneOf": [{"$ref": "#/components/schemas/Cat"}, {"type": "null"}]})),
                pets(),
            ),
            with_components(in_body(json!({"$ref": "#/components/schemas/Cat"})), pets()),
        ),
        case(
            "response-property-became-nullable",
            Breaking,
            {
                let mut d = in_reply(s("string"));
                d["openapi"] = json!("3.0.3");
                d
            },
            {
                let mut d = in_reply(json!({"type": "string", "nullable": true}));
                d["openapi"] = json!("3.0.3");
                d
            },
        ),
        case(
            "response-property-became-not-nullable",
            Safe,
            in_reply(json!({"type": ["integer", "null"]})),
            in_reply(s("integer")),
        ),
        // ---- types
        case(
            "request-property-type-narrowed",
            Breaking,
            in_body(json!({"type": ["string", "integer"]})),
            in_body(s("string")),
        ),
        case(
            "request-property-type-widened",
            Safe,
            in_body(s("integer")),
            in_body(s("number")),
        ),
        case(
            "request-property-type-changed",
            Breaking,
            in_body(s("string")),
            in_body(s("integer")),
        ),
        case(
            "response-property-type-narrowed",
            Safe,
            in_reply(s("number")),
            in_reply(s("integer")),
        ),
        case(
            "response-property-type-widened",
            Breaking,
            in_reply(s("string")),
            in_reply(json!({"type": ["string", "boolean"]})),
        ),
        case(
            "response-property-type-changed",
            Breaking,
            in_reply(s("object")),
            in_reply(s("array")),
        ),
        // ---- formats
        case(
            "request-format-narrowed",
            Breaking,
            in_body(s("string")),
            in_body(json!({"type": "string", "format": "uuid"})),
        ),
        case(
            "request-format-widened",
            Safe,
            in_body(json!({"type": "integer", "format": "int32"})),
            in_body(json!({"type": "integer", "format": "int64"})),
        ),
        case(
            "request-format-changed",
            Breaking,
            in_body(json!({"type": "string", "format": "date-time"})),
            in_body(json!({"type": "string", "format": "date"})),
        ),
        case(
            "response-format-narrowed",
            Safe,
            in_reply(json!({"type": "number", "format": "double"})),
            in_reply(json!({"type": "number", "format": "float"})),
        ),
        case(
            "response-format-widened",
            Breaking,
            in_reply(json!({"type": "string", "format": "date"})),
            in_reply(s("string")),
        ),
        case(
            "response-format-changed",
            Breaking,
            in_reply(json!({"type": "string", "format": "email"})),
            in_reply(json!({"type": "string", "format": "uri"})),
        ),
        // ---- enums and const
        case(
            "request-enum-value-removed",
            Breaking,
            in_body(json!({"type": "string", "enum": ["a", "b"]})),
            in_body(json!({"type": "string", "enum": ["a"]})),
        ),
        case(
            "request-enum-value-added",
            Safe,
            in_body(json!({"type": "string", "const": "a"})),
            in_body(json!({"type": "string", "enum": ["a", "b"]})),
        ),
        case(
            "request-became-enum",
            Breaking,
            in_body(s("string")),
            in_body(json!({"type": "string", "enum": ["a", "b"]})),
        ),
        case(
            "request-no-longer-enum",
            Safe,
            in_body(json!({"type": "string", "enum": ["a", "b"]})),
            in_body(s("string")),
        ),
        case(
            "response-enum-value-added",
            Breaking,
            in_reply(json!({"type": "string", "enum": ["open", "done"]})),
            in_reply(json!({"type": "string", "enum": ["open", "done", "archived"]})),
        ),
        case(
            "response-enum-value-removed",
            Safe,
            in_reply(json!({"type": "string", "enum": ["open", "done"]})),
            in_reply(json!({"type": "string", "enum": ["open"]})),
        ),
        case(
            "response-became-enum",
            Safe,
            in_reply(s("string")),
            in_reply(json!({"type": "string", "const": "task"})),
        ),
        case(
            "response-no-longer-enum",
            Breaking,
            in_reply(json!({"type": "string", "enum": ["open", "done"]})),
            in_reply(s("string")),
        ),
        // ---- patterns
        case(
            "request-pattern-added",
            Breaking,
            in_body(s("string")),
            in_body(json!({"type": "string", "pattern": "^[a-z]+$"})),
        ),
        case(
            "request-pattern-changed",
            Potential,
            in_body(json!({"type": "string", "pattern": "^[a-z]+$"})),
            in_body(json!({"type": "string", "pattern": "^[a-z0-9]+$"})),
        ),
        case(
            "request-pattern-removed",
            Safe,
            in_body(json!({"type": "string", "pattern": "^[a-z]+$"})),
            in_body(s("string")),
        ),
        case(
            "response-pattern-added",
            Safe,
            in_reply(s("string")),
            in_reply(json!({"type": "string", "pattern": "^[a-z]+$"})),
        ),
        case(
            "response-pattern-changed",
            Potential,
            in_reply(json!({"type": "string", "pattern": "^[a-z]+$"})),
            in_reply(json!({"type": "string", "pattern": "^[A-Z]+$"})),
        ),
        case(
            "response-pattern-removed",
            Potential,
            in_reply(json!({"type": "string", "pattern": "^[a-z]+$"})),
            in_reply(s("string")),
        ),
        // ---- oneOf / anyOf branches (by $ref, and inline)
        case(
            "request-one-of-branch-removed",
            Breaking,
            with_components(in_body(one_of(&["Cat", "Dog"])), pets()),
            with_components(in_body(one_of(&["Cat"])), pets()),
        ),
        case(
            "request-one-of-branch-added",
            Safe,
            with_components(in_body(one_of(&["Cat"])), pets()),
            with_components(in_body(one_of(&["Cat", "Dog"])), pets()),
        ),
        case(
            "response-one-of-branch-removed",
            Safe,
            with_components(in_reply(one_of(&["Cat", "Dog"])), pets()),
            with_components(in_reply(one_of(&["Dog"])), pets()),
        ),
        case(
            "response-one-of-branch-added",
            Breaking,
            with_components(in_reply(one_of(&["Dog"])), pets()),
            with_components(in_reply(one_of(&["Cat", "Dog"])), pets()),
        ),
        case(
            "request-any-of-branch-removed",
            Breaking,
            in_body(json!({"anyOf": [s("string"), s("integer"), s("boolean")]})),
            in_body(json!({"anyOf": [s("string"), s("integer")]})),
        ),
        case(
            "request-any-of-branch-added",
            Safe,
            in_body(json!({"anyOf": [s("string"), s("integer")]})),
            in_body(json!({"anyOf": [s("string"), s("integer"), s("boolean")]})),
        ),
        case(
            "response-any-of-branch-removed",
            Safe,
            in_reply(json!({"anyOf": [s("string"), s("integer"), s("boolean")]})),
            in_reply(json!({"anyOf": [s("string"), s("boolean")]})),
        ),
        case(
            "response-any-of-branch-added",
            Breaking,
            in_reply(json!({"anyOf": [s("string"), s("integer")]})),
            in_reply(
                json!({"anyOf": [s("string"), s("integer"), {"type": "object", "title": "Thing"}]}),
            ),
        ),
    ];
    cases.extend(bound_cases());
    cases
}

fn describe(changes: &[Change]) -> String {
    changes
        .iter()
        .map(|c| {
            format!(
                "\n  {} [{}] {} (old {}, new {})",
                c.id(),
                c.severity(),
                c.message,
                c.old_pointer,
                c.new_pointer
            )
        })
        .collect()
}

#[test]
fn every_rule_has_a_case_that_finds_exactly_it() {
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        let found = compare(&case.old, &case.new);
        let ids: BTreeSet<&str> = found.iter().map(Change::id).collect();
        if ids != BTreeSet::from([case.id]) {
            failures.push(format!(
                "{}: expected only it, found:{}",
                case.id,
                describe(&found)
            ));
            continue;
        }
        if found[0].severity() != case.severity {
            failures.push(format!(
                "{}: expected {}, the catalog says {}",
                case.id,
                case.severity,
                found[0].severity()
            ));
        }
        let message = &found[0].message;
        if !message.ends_with('.') || message.contains('\n') {
            failures.push(format!("{}: not one sentence: {message:?}", case.id));
        }
        // The way back is a change too: no rule is blind in one direction.
        if compare(&case.new, &case.old).is_empty() {
            failures.push(format!("{}: the reverse edit finds nothing", case.id));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let covered: BTreeSet<&str> = cases.iter().map(|c| c.id).collect();
    let missing: Vec<&str> = rules::ALL
        .iter()
        .map(|r| r.id)
        .filter(|id| !covered.contains(id))
        .collect();
    assert!(missing.is_empty(), "rules without a case: {missing:?}");
    assert_eq!(cases.len(), rules::ALL.len(), "one case per rule");
}

#[test]
fn a_change_in_a_shared_component_is_reported_once_with_every_operation() {
    let spec = |max: u64| {
        json!({
            "openapi": "3.1.0",
            "info": {"title": "t", "version": "1"},
            "paths": {
                "/a": {"post": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Input"}}}}, "responses": ok()}},
                "/b/{id}": {"put": {"requestBody": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Input"}}}}, "responses": ok()}}
            },
            "components": {"schemas": {"Input": {"type": "object", "properties": {"name": {"type": "string", "maxLength": max}}}}}
        })
    };
    let found = compare(&spec(100), &spec(10));
    assert_eq!(found.len(), 1, "{}", describe(&found));
    let change = &found[0];
    assert_eq!(change.id(), "request-max-length-decreased");
    assert_eq!(change.operations, vec!["POST /a", "PUT /b/{id}"]);
    assert_eq!(
        change.old_pointer,
        "/components/schemas/Input/properties/name/maxLength"
    );
    assert_eq!(change.new_pointer, change.old_pointer);
    assert_eq!(
        change.message,
        "The request maxLength of `name` of schema `Input` was lowered from 100 to 10."
    );
}

#[test]
fn recursive_schemas_terminate_and_changes_deep_inside_are_found() {
    let spec = |leaf: &str| {
        let mut d = reply(json!({"$ref": "#/components/schemas/Node"}));
        d["components"] = json!({"schemas": {"Node": {"type": "object", "properties": {
            "name": {"type": leaf},
            "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
            "parent": {"oneOf": [{"$ref": "#/components/schemas/Node"}, {"type": "null"}]}
        }}}});
        d
    };
    assert!(compare(&spec("string"), &spec("string")).is_empty());
    let found = compare(&spec("string"), &spec("integer"));
    assert_eq!(found.len(), 1, "{}", describe(&found));
    assert_eq!(found[0].id(), "response-property-type-changed");
}

#[test]
fn renamed_path_parameters_and_30_nullable_against_31_null_type_are_no_change() {
    let old = json!({
        "openapi": "3.0.3", "info": {"title": "t", "version": "1"},
        "paths": {"/pets/{id}": {"get": {
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"tag": {"type": "string", "nullable": true, "enum": ["a"]}}
            }}}}}
        }}}
    });
    let new = json!({
        "openapi": "3.1.0", "info": {"title": "t", "version": "1"},
        "paths": {"/pets/{petId}": {"get": {
            "parameters": [{"name": "petId", "in": "path", "required": true, "schema": {"type": "integer"}}],
            "responses": {"200": {"description": "ok", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"tag": {"type": ["string", "null"], "enum": ["a", null]}}
            }}}}}
        }}}
    });
    let found = compare(&old, &new);
    assert!(found.is_empty(), "{}", describe(&found));
}

#[test]
fn read_only_properties_do_not_count_in_requests_nor_write_only_ones_in_responses() {
    let old =
        body(json!({"type": "object", "properties": {"id": {"type": "string", "readOnly": true}}}));
    let new = body(json!({"type": "object", "properties": {}}));
    assert!(compare(&old, &new).is_empty());
    let old = reply(
        json!({"type": "object", "properties": {"secret": {"type": "string", "writeOnly": true}}}),
    );
    let new = reply(json!({"type": "object", "properties": {}}));
    assert!(compare(&old, &new).is_empty());
}

#[test]
fn a_body_schema_that_appears_or_disappears_compares_with_anything() {
    let bare =
        responses(json!({"200": {"description": "ok", "content": {"application/json": {}}}}));
    let typed = reply(json!({"type": "object"}));
    let found = compare(&typed, &bare);
    assert_eq!(
        found.iter().map(Change::id).collect::<Vec<_>>(),
        vec!["response-property-type-widened"],
        "{}",
        describe(&found)
    );
    let found = compare(&bare, &typed);
    assert_eq!(
        found.iter().map(Change::id).collect::<Vec<_>>(),
        vec!["response-property-type-narrowed"],
        "{}",
        describe(&found)
    );
}

#[test]
fn header_parameters_openapi_ignores_are_ignored() {
    let accept =
        json!({"name": "Accept", "in": "header", "required": true, "schema": {"type": "string"}});
    assert!(compare(&params(json!([])), &params(json!([accept]))).is_empty());
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn load(path: &Path) -> Value {
    spec::load(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_spec_compared_with_itself_finds_nothing() {
    let specs = [
        root().join("generated/openapi.json"),
        root().join("generated/openapi-3.0.json"),
        root().join("openapi/openapi.yaml"),
        root().join("openapi/baseline.json"),
        fixtures().join("petstore-expanded.yaml"),
        fixtures().join("tasks-3.1/openapi.yaml"),
        fixtures().join("diff/petstore-expanded.yaml"),
        fixtures().join("diff/tasks-3.1/openapi.yaml"),
    ];
    for path in specs {
        let doc = load(&path);
        let started = std::time::Instant::now();
        let found = diff::diff(&doc, &doc);
        assert!(found.is_empty(), "{}:{}", path.display(), describe(&found));
        // Generous even for a debug build: our spec takes a few milliseconds in release.
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{}: {:?}",
            path.display(),
            started.elapsed()
        );
    }
}

#[test]
fn our_bundle_and_its_30_down_conversion_are_the_same_contract() {
    let v31 = load(&root().join("generated/openapi.json"));
    let v30 = load(&root().join("generated/openapi-3.0.json"));
    let found = diff::diff(&v31, &v30);
    assert!(found.is_empty(), "{}", describe(&found));
}

#[test]
fn the_baseline_has_no_breaking_change_against_todays_bundle() {
    let baseline = load(&root().join("openapi/baseline.json"));
    let bundle = load(&root().join("generated/openapi.json"));
    let breaking: Vec<Change> = diff::diff(&baseline, &bundle)
        .into_iter()
        .filter(|c| c.severity() == Breaking)
        .collect();
    assert!(
        breaking.is_empty(),
        "the bundle breaks /v1 against openapi/baseline.json; if that is deliberate, \
         move the baseline (see README, \"Changing the API\"):{}",
        describe(&breaking)
    );
}

/// (rule id, old pointer, new pointer, operations) of every change, for exact comparison.
fn summarize(changes: &[Change]) -> Vec<(&str, &str, &str, Vec<&str>)> {
    changes
        .iter()
        .map(|c| {
            (
                c.id(),
                c.old_pointer.as_str(),
                c.new_pointer.as_str(),
                c.operations.iter().map(String::as_str).collect(),
            )
        })
        .collect()
}

#[test]
fn hand_edited_petstore_finds_exactly_its_edits() {
    let old = load(&fixtures().join("petstore-expanded.yaml"));
    let new = load(&fixtures().join("diff/petstore-expanded.yaml"));
    let found = diff::diff(&old, &new);
    assert_eq!(
        summarize(&found),
        vec![
            (
                "api-removed",
                "/paths/~1pets~1{id}/delete",
                "/paths/~1pets~1{petId}",
                vec!["DELETE /pets/{id}"]
            ),
            (
                "request-max-length-decreased",
                "/components/schemas/NewPet/properties/name",
                "/components/schemas/NewPet/properties/name/maxLength",
                vec!["POST /pets"]
            ),
            (
                "request-parameter-became-required",
                "/paths/~1pets/get/parameters/1",
                "/paths/~1pets/get/parameters/1",
                vec!["GET /pets"]
            ),
            (
                "response-max-length-decreased",
                "/components/schemas/NewPet/properties/name",
                "/components/schemas/NewPet/properties/name/maxLength",
                vec!["GET /pets", "POST /pets", "GET /pets/{petId}"]
            ),
            (
                "response-property-added",
                "/components/schemas/Pet",
                "/components/schemas/Pet/allOf/1/properties/birthday",
                vec!["GET /pets", "POST /pets", "GET /pets/{petId}"]
            ),
        ],
        "{}",
        describe(&found)
    );
}

#[test]
fn hand_edited_tasks_finds_exactly_its_edits() {
    let old = load(&fixtures().join("tasks-3.1/openapi.yaml"));
    let new = load(&fixtures().join("diff/tasks-3.1/openapi.yaml"));
    let found = diff::diff(&old, &new);
    let ids: Vec<(&str, Severity)> = found.iter().map(|c| (c.id(), c.severity())).collect();
    assert_eq!(
        ids,
        vec![
            ("request-max-length-decreased", Breaking),
            ("response-enum-value-added", Breaking),
            ("security-requirement-added", Breaking),
            // TaskStatus is inlined by the bundler (the root does not name it in its
            // components), so its two request positions are two changes.
            ("request-enum-value-added", Safe),
            ("request-enum-value-added", Safe),
            ("response-property-added", Safe),
        ],
        "{}",
        describe(&found)
    );
    let enum_added = &found[1];
    assert_eq!(
        enum_added.old_pointer,
        "/components/schemas/Task/properties/status/enum"
    );
    assert_eq!(
        enum_added.operations,
        vec![
            "GET /tasks",
            "POST /tasks",
            "GET /tasks/{task_id}",
            "PATCH /tasks/{task_id}"
        ]
    );
    assert!(
        found[2].message.contains("GET /health"),
        "{}",
        found[2].message
    );
}

#[test]
fn outputs_render_every_change() {
    let old = load(&fixtures().join("petstore-expanded.yaml"));
    let new = load(&fixtures().join("diff/petstore-expanded.yaml"));
    let found = diff::diff(&old, &new);
    let text = diff::render::text("old.yaml", "new.yaml", &found);
    assert!(
        text.contains("3 breaking, 0 potentially breaking, 2 safe"),
        "{text}"
    );
    assert!(
        text.contains("[api-removed] DELETE /pets/{id} was removed."),
        "{text}"
    );
    let json: Value = serde_json::from_str(&diff::render::json("old.yaml", "new.yaml", &found))
        .expect("valid JSON");
    assert_eq!(json["summary"]["breaking"], 3);
    assert_eq!(json["changes"].as_array().map(Vec::len), Some(5));
    assert_eq!(json["changes"][0]["id"], "api-removed");
    assert_eq!(json["changes"][0]["severity"], "breaking");
    let markdown = diff::render::markdown("old.yaml", "new.yaml", &found);
    assert!(markdown.contains("#### Breaking (3)"), "{markdown}");
    assert!(markdown.contains("#### Safe (2)"), "{markdown}");
    assert!(
        !markdown.contains("#### Potentially breaking"),
        "{markdown}"
    );
    // Every table row has its five cells, whatever the message holds.
    for line in markdown.lines().filter(|l| l.starts_with("| `")) {
        let cells = line.replace("\\|", "").matches('|').count();
        assert_eq!(cells, 6, "{line}");
    }
    assert_eq!(
        diff::render::markdown("a", "b", &[]),
        "### API changes: `a` → `b`\n\nNo changes.\n"
    );
}

/// The CI step (`scripts/test.sh`: `agentplane diff openapi/baseline.json
/// generated/openapi.json --fail-on breaking`) passes on today's bundle and fails, exit 1, on
/// a pull request that removes a `/v1` operation; a bad `--fail-on` is a usage error; a
/// `git:<rev>:<path>` source reads the committed file.
#[tokio::test]
async fn the_ci_step_fails_a_bundle_that_breaks_the_baseline() {
    let baseline = root().join("openapi/baseline.json");
    let bundle = root().join("generated/openapi.json");
    let run = |old: &Path, new: &Path, fail_on: &str| diff::CommandOptions {
        old: old.display().to_string(),
        new: new.display().to_string(),
        format: Some("markdown".into()),
        fail_on: Some(fail_on.into()),
    };
    assert_eq!(
        diff::run_command(run(&baseline, &bundle, "breaking")).await,
        diff::EXIT_PASSED
    );
    let mut broken = load(&bundle);
    let paths = broken["paths"].as_object_mut().expect("paths");
    let (template, item) = paths
        .iter_mut()
        .find(|(_, item)| item.get("delete").is_some())
        .expect("an operation to remove");
    let template = template.clone();
    item.as_object_mut().expect("a path item").remove("delete");
    let file = std::env::temp_dir().join(format!("agentplane-diff-ci-{}.json", std::process::id()));
    std::fs::write(&file, broken.to_string()).expect("writes");
    let code = diff::run_command(run(&baseline, &file, "breaking")).await;
    let changes = diff::diff(&load(&baseline), &broken);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, diff::EXIT_FAILED, "DELETE {template} removed");
    assert!(
        changes
            .iter()
            .any(|c| c.id() == "api-removed" && c.severity() == Breaking),
        "{}",
        describe(&changes)
    );
    assert_eq!(
        diff::run_command(run(&baseline, &bundle, "sometimes")).await,
        diff::EXIT_USAGE
    );
    // A checkout without git history (a source archive) cannot read git: sources.
    let in_git = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .is_ok_and(|o| o.status.success());
    if in_git {
        let fixture = "conformance/tests/fixtures/petstore-expanded.yaml";
        let options = diff::CommandOptions {
            old: format!("git:HEAD:{fixture}"),
            new: root().join(fixture).display().to_string(),
            format: Some("json".into()),
            fail_on: Some("potential".into()),
        };
        assert_eq!(diff::run_command(options).await, diff::EXIT_PASSED);
    }
}
