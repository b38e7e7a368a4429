//! What an operation documents about its responses, compiled, and one recorded exchange.
//!
//! The checks judge a response against its operation's `responses` object: which status
//! codes exist, which media types and headers each carries, which schema its body follows.
//! Compiling that once per operation (schemas into validators, `$ref`s resolved) keeps the
//! per-request cost of a conformance run to a lookup and a validation. Response schemas are
//! compiled from a document prepared for [`Direction::Response`](crate::generate::Direction),
//! so `writeOnly` properties are never required in a response.

use std::collections::{BTreeMap, BTreeSet};

use jsonschema::Validator;
use serde_json::Value;

use crate::SpecError;
use crate::spec::{composed, deref, escape_pointer};
use crate::validate::{coerce_scalar, compile_schema};

/// A header a response documents.
#[derive(Debug)]
pub struct HeaderSpec {
    pub name: String,
    pub required: bool,
    pub schema: Value,
    pub validator: Option<Validator>,
}

/// A media type a response documents.
#[derive(Debug)]
pub struct MediaSpec {
    pub media_type: String,
    pub validator: Option<Validator>,
    /// The `writeOnly` properties of its schema, which no answer may carry.
    pub write_only: Option<WriteOnly>,
    /// For `text/event-stream`: how each event of the stream is judged.
    pub events: Option<EventValidators>,
}

/// The schemas one server-sent event is held to; either may be absent.
#[derive(Debug)]
pub struct EventValidators {
    /// The parsed event `{event, data, id, retry}` (OAS 3.2's `itemSchema`; on 3.0/3.1
    /// the media type's `schema`, as Schemathesis reads it).
    pub item: Option<Validator>,
    /// The event's `data:` parsed as JSON: `x-event-schema`, else the item schema's
    /// `data.contentSchema` when its `contentMediaType` is JSON.
    pub data: Option<Validator>,
}

/// The raw item and data schemas of an event-stream media object (see [`EventValidators`]).
///
/// A `schema` of `type: string` describes the body as text, the honest 3.0 way to say
/// "a stream", and is not taken as the per-event schema.
pub fn event_schemas<'a>(
    doc: &'a Value, media: &'a Value,
) -> (Option<&'a Value>, Option<&'a Value>) {
    let item = media.get("itemSchema").or_else(|| {
        media
            .get("schema")
            .filter(|s| deref(doc, s).get("type").and_then(Value::as_str) != Some("string"))
    });
    let data = media.get("x-event-schema").or_else(|| {
        let data = deref(doc, item?)
            .pointer("/properties/data")
            .map(|d| deref(doc, d))?;
        let json = data
            .get("contentMediaType")
            .and_then(Value::as_str)
            .is_some_and(is_json);
        if json {
            data.get("contentSchema")
        } else {
            None
        }
    });
    (item, data)
}

/// An OpenAPI link: a follow-up operation and where its parameters come from.
#[derive(Debug, Clone)]
pub struct LinkSpec {
    pub name: String,
    pub operation_id: Option<String>,
    /// Parameter name → runtime expression, e.g. `agent_id` → `$response.body#/id`.
    pub parameters: Vec<(String, String)>,
}

/// One documented response (`200`, `4XX` or `default`).
#[derive(Debug)]
pub struct ResponseSpec {
    /// The key as the spec wrote it, upper-cased (`200`, `4XX`, `DEFAULT`).
    pub status: String,
    pub headers: Vec<HeaderSpec>,
    pub content: Vec<MediaSpec>,
    pub links: Vec<LinkSpec>,
}

/// All documented responses of one operation.
#[derive(Debug, Default)]
pub struct Responses {
    pub entries: Vec<ResponseSpec>,
}

impl Responses {
    /// Compiles `operation.responses`; `doc` should be prepared for the response direction.
    pub fn compile(doc: &Value, operation: &Value, pointer: &str) -> Result<Self, SpecError> {
        let mut entries = Vec::new();
        let Some(map) = operation.get("responses").and_then(Value::as_object) else {
            return Ok(Self { entries });
        };
        for (status, response) in map {
            let rptr = format!("{pointer}/responses/{}", escape_pointer(status));
            let response = deref(doc, response);
            let mut headers = Vec::new();
            if let Some(hs) = response.get("headers").and_then(Value::as_object) {
                for (name, h) in hs {
                    let h = deref(doc, h);
                    let schema = h.get("schema").cloned().unwrap_or(Value::Bool(true));
                    let validator = compile_schema(doc, &schema, &rptr).ok();
                    headers.push(HeaderSpec {
                        name: name.clone(),
                        required: h.get("required").and_then(Value::as_bool) == Some(true),
                        schema: deref(doc, &schema).clone(),
                        validator,
                    });
                }
            }
            let mut content = Vec::new();
            if let Some(cs) = response.get("content").and_then(Value::as_object) {
                for (media_type, media) in cs {
                    let mptr = format!("{rptr}/content/{}", escape_pointer(media_type));
                    let compile = |schema: Option<&Value>| {
                        schema.map(|s| compile_schema(doc, s, &mptr)).transpose()
                    };
                    let validator = compile(media.get("schema"))?;
                    let events = if is_event_stream(media_type) {
                        let (item, data) = event_schemas(doc, media);
                        Some(EventValidators {
                            item: compile(item)?,
                            data: compile(data)?,
                        })
                    } else {
                        None
                    };
                    content.push(MediaSpec {
                        media_type: media_type.to_ascii_lowercase(),
                        validator,
                        write_only: media.get("schema").and_then(|s| WriteOnly::of(doc, s, 0)),
                        events,
                    });
                }
            }
            let mut links = Vec::new();
            if let Some(ls) = response.get("links").and_then(Value::as_object) {
                for (name, link) in ls {
                    let link = deref(doc, link);
                    let parameters = link
                        .get("parameters")
                        .and_then(Value::as_object)
                        .map(|ps| {
                            ps.iter()
                                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                                .collect()
                        })
                        .unwrap_or_default();
                    links.push(LinkSpec {
                        name: name.clone(),
                        operation_id: link
                            .get("operationId")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        parameters,
                    });
                }
            }
            entries.push(ResponseSpec {
                status: status.to_ascii_uppercase(),
                headers,
                content,
                links,
            });
        }
        Ok(Self { entries })
    }

    /// The documented response for `status`: exact code first, then `4XX`-style ranges,
    /// then `default`.
    pub fn find(&self, status: u16) -> Option<&ResponseSpec> {
        let exact = status.to_string();
        let range = format!("{}XX", status / 100);
        self.entries
            .iter()
            .find(|r| r.status == exact)
            .or_else(|| self.entries.iter().find(|r| r.status == range))
            .or_else(|| self.entries.iter().find(|r| r.status == "DEFAULT"))
    }

    /// The documented status keys, for messages.
    pub fn documented(&self) -> Vec<&str> {
        self.entries.iter().map(|r| r.status.as_str()).collect()
    }
}

/// Where a schema marks properties `writeOnly` (values "never present when the instance is
/// retrieved", in JSON Schema's words): only the parts of the schema that lead to one.
#[derive(Debug, Default)]
pub struct WriteOnly {
    /// Properties that every schema declaring them marks `writeOnly`.
    hidden: BTreeSet<String>,
    /// Below the other properties.
    below: BTreeMap<String, WriteOnly>,
    /// Below array items, and below properties no schema declares (`additionalProperties`).
    items: Option<Box<WriteOnly>>,
    extra: Option<Box<WriteOnly>>,
}

/// How deep [`WriteOnly::of`] follows a schema (recursive schemas end somewhere).
const WRITE_ONLY_DEPTH: usize = 12;

impl WriteOnly {
    /// The `writeOnly` properties of `schema`, through `$ref`s, compositions, items and
    /// `additionalProperties`; `None` when it has none.
    pub fn of(doc: &Value, schema: &Value, depth: usize) -> Option<WriteOnly> {
        if depth > WRITE_ONLY_DEPTH {
            return None;
        }
        let branches = composed(doc, schema);
        let mut declared: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        let mut flagged: BTreeSet<&str> = BTreeSet::new();
        let (mut items, mut extra) = (Vec::new(), Vec::new());
        for branch in &branches {
            if let Some(props) = branch.get("properties").and_then(Value::as_object) {
                for (name, p) in props {
                    if is_write_only(doc, p) {
                        flagged.insert(name);
                    } else {
                        declared.entry(name).or_default().push(p);
                    }
                }
            }
            items.extend(branch.get("items").filter(|i| i.is_object()));
            extra.extend(branch.get("additionalProperties").filter(|i| i.is_object()));
        }
        let any_of = |schemas: Vec<&Value>| {
            if schemas.is_empty() {
                return None;
            }
            let schemas: Vec<Value> = schemas.into_iter().cloned().collect();
            WriteOnly::of(doc, &serde_json::json!({ "anyOf": schemas }), depth + 1)
        };
        let out = WriteOnly {
            hidden: flagged
                .into_iter()
                .filter(|name| !declared.contains_key(name))
                .map(str::to_string)
                .collect(),
            below: declared
                .into_iter()
                .filter_map(|(name, schemas)| Some((name.to_string(), any_of(schemas)?)))
                .collect(),
            items: any_of(items).map(Box::new),
            extra: any_of(extra).map(Box::new),
        };
        let empty = out.hidden.is_empty()
            && out.below.is_empty()
            && out.items.is_none()
            && out.extra.is_none();
        (!empty).then_some(out)
    }

    /// Removes the `writeOnly` properties `instance` carries.
    pub fn strip(&self, instance: &mut Value) {
        match instance {
            Value::Object(map) => {
                map.retain(|key, _| !self.hidden.contains(key));
                for (key, value) in map.iter_mut() {
                    if let Some(below) = self.below.get(key) {
                        below.strip(value);
                    } else if let Some(extra) = &self.extra {
                        extra.strip(value);
                    }
                }
            }
            Value::Array(values) => {
                if let Some(items) = &self.items {
                    values.iter_mut().for_each(|v| items.strip(v));
                }
            }
            _ => {}
        }
    }

    /// The JSON pointers of the `writeOnly` properties `instance` carries.
    pub fn carried(&self, instance: &Value, at: &str, out: &mut Vec<String>) {
        match instance {
            Value::Object(map) => {
                for (key, value) in map {
                    let here = format!("{at}/{}", escape_pointer(key));
                    if self.hidden.contains(key) {
                        out.push(here);
                    } else if let Some(below) = self.below.get(key) {
                        below.carried(value, &here, out);
                    } else if let Some(extra) = &self.extra {
                        extra.carried(value, &here, out);
                    }
                }
            }
            Value::Array(values) => {
                if let Some(items) = &self.items {
                    for (i, value) in values.iter().enumerate() {
                        items.carried(value, &format!("{at}/{i}"), out);
                    }
                }
            }
            _ => {}
        }
    }
}

fn is_write_only(doc: &Value, schema: &Value) -> bool {
    let flagged = |s: &Value| s.get("writeOnly").and_then(Value::as_bool) == Some(true);
    flagged(schema) || flagged(deref(doc, schema))
}

/// A media type's essence: type and subtype, lower-cased, without parameters.
pub fn essence(media_type: &str) -> String {
    media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a declared media type (maybe with wildcards) covers an actual one (essence only).
pub fn media_matches(declared: &str, actual: &str) -> bool {
    let (declared, actual) = (essence(declared), essence(actual));
    if declared == actual || declared == "*/*" {
        return true;
    }
    if let Some(prefix) = declared.strip_suffix("/*") {
        return actual.starts_with(prefix) && actual[prefix.len()..].starts_with('/');
    }
    false
}

/// Whether a media type is JSON (`application/json`, `application/problem+json`, ...).
pub fn is_json(media_type: &str) -> bool {
    let essence = essence(media_type);
    essence == "application/json" || essence.ends_with("+json")
}

/// Whether a media type is XML (`application/xml`, `text/xml`, `application/atom+xml`, ...).
pub fn is_xml(media_type: &str) -> bool {
    let essence = essence(media_type);
    essence == "application/xml" || essence == "text/xml" || essence.ends_with("+xml")
}

/// Whether a media type is a server-sent event stream.
pub fn is_event_stream(media_type: &str) -> bool {
    essence(media_type) == "text/event-stream"
}

pub use crate::sse::{SseEvent, sse_events};

/// Checks every event of a stream against its schemas: the reason of the first failure.
pub fn event_stream_violation(schemas: &EventValidators, body: &[u8]) -> Option<String> {
    let at = |err: &jsonschema::ValidationError| {
        let at = err.instance_path().to_string();
        if at.is_empty() { "/".to_string() } else { at }
    };
    for (i, e) in sse_events(body).iter().enumerate() {
        if let Some(item) = &schemas.item
            && let Some(err) = item.iter_errors(&e.to_value()).next()
        {
            return Some(format!(
                "event {i} does not match the event schema at {}: {err}",
                at(&err)
            ));
        }
        let Some(data) = &schemas.data else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<Value>(&e.data) else {
            return Some(format!("event {i}: its data is not JSON"));
        };
        if let Some(err) = data.iter_errors(&value).next() {
            return Some(format!(
                "event {i}'s data does not match its schema at {}: {err}",
                at(&err)
            ));
        }
    }
    None
}

/// Checks one header value against its documented schema; the reason when it fails.
pub fn header_violation(spec: &HeaderSpec, value: &str) -> Option<String> {
    let validator = spec.validator.as_ref()?;
    let coerced = coerce_scalar(value, &spec.schema);
    validator
        .iter_errors(&coerced)
        .next()
        .map(|e| format!("header {} does not match its schema: {e}", spec.name))
}

/// One request sent and the response it got.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    pub url: String,
    pub request_headers: Vec<(String, String)>,
    /// The request body as sent.
    pub request_body: Option<Vec<u8>>,
    pub status: u16,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long the answer took: from sending the request (again, after a 429's wait) to
    /// its whole body, or to its headers for an event stream; zero when not measured.
    pub elapsed: std::time::Duration,
}

/// Header names whose values never appear in a report.
const SECRET_HEADERS: &[&str] = &[
    "authorization",
    "x-api-key",
    "cookie",
    "proxy-authorization",
];

impl Exchange {
    /// A response header by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The response body as JSON, when it parses.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The request as a `curl` command; secrets are shown as `[Filtered]`.
    pub fn curl(&self) -> String {
        let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
        let mut out = format!("curl -X {} {}", self.method, quote(&self.url));
        for (name, value) in &self.request_headers {
            let shown = if SECRET_HEADERS.iter().any(|s| name.eq_ignore_ascii_case(s)) {
                "[Filtered]"
            } else {
                value.as_str()
            };
            out.push_str(&format!(" -H {}", quote(&format!("{name}: {shown}"))));
        }
        if let Some(body) = &self.request_body {
            out.push_str(&format!(" -d {}", quote(&String::from_utf8_lossy(body))));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_only_properties_are_found_through_refs_compositions_and_items() {
        let doc = serde_json::json!({"components": {"schemas": {
            "Card": {"properties": {"cvc": {"type": "integer", "writeOnly": true}, "name": {"type": "string"}}},
            "Bank": {"properties": {"number": {"type": "string"}, "pin": {"writeOnly": true}}},
            "Payment": {"properties": {
                "source": {"anyOf": [{"$ref": "#/components/schemas/Card"}, {"$ref": "#/components/schemas/Bank"}]},
                "history": {"type": "array", "items": {"$ref": "#/components/schemas/Card"}},
                "token": {"type": "string"}
            }}
        }}});
        let schema = serde_json::json!({"allOf": [{"$ref": "#/components/schemas/Payment"}]});
        let write_only = WriteOnly::of(&doc, &schema, 0).expect("it has writeOnly properties");
        let body = serde_json::json!({
            "source": {"cvc": 123, "name": "x"},
            "history": [{"name": "a"}, {"cvc": 1}],
            "token": "t"
        });
        let mut carried = Vec::new();
        write_only.carried(&body, "", &mut carried);
        assert_eq!(carried, ["/source/cvc", "/history/1/cvc"]);
        // A property one branch marks writeOnly and another does not is left alone.
        let both = serde_json::json!({"anyOf": [
            {"properties": {"pin": {"writeOnly": true}}},
            {"properties": {"pin": {"type": "string"}}}
        ]});
        let mut carried = Vec::new();
        if let Some(w) = WriteOnly::of(&doc, &both, 0) {
            w.carried(&serde_json::json!({"pin": "1"}), "", &mut carried);
        }
        assert!(carried.is_empty());
        assert!(WriteOnly::of(&doc, &serde_json::json!({"type": "string"}), 0).is_none());
        let mut stripped = body.clone();
        write_only.strip(&mut stripped);
        assert_eq!(
            stripped,
            serde_json::json!({"source": {"name": "x"}, "history": [{"name": "a"}, {}], "token": "t"})
        );
    }

    #[test]
    fn sse_bodies_split_into_events_and_validate_each_data_line() {
        // How bodies split into events is `sse`'s (and tested there).
        let body = b": comment\nevent: token\ndata: {\"n\": 1}\n\nretry: 10\ndata: {\"n\":\r\ndata: 2}\r\n\nevent: dangling\ndata: 3";
        let schema = serde_json::json!({"type": "object", "required": ["n"],
            "properties": {"n": {"type": "integer", "maximum": 1}}});
        let validators = EventValidators {
            item: None,
            data: Some(jsonschema::validator_for(&schema).expect("schema")),
        };
        let reason = event_stream_violation(&validators, body).expect("the second is too big");
        assert!(reason.starts_with("event 1"), "{reason}");
        assert_eq!(
            event_stream_violation(&validators, b"data: {\"n\": 0}\n\n"),
            None
        );
        assert!(
            event_stream_violation(&validators, b"data: nope\n\n")
                .is_some_and(|r| r.contains("not JSON"))
        );
        assert!(is_event_stream("text/event-stream; charset=utf-8"));
        assert!(!is_event_stream("application/json"));
    }

    #[test]
    fn item_schemas_judge_the_parsed_event_and_its_json_data() {
        let doc = serde_json::json!({"openapi": "3.2.0", "components": {"schemas": {"Tick": {
            "type": "object", "required": ["n"],
            "properties": {"n": {"type": "integer", "maximum": 1}}}}}});
        let stream = |media: Value| {
            serde_json::json!({"responses": {"200": {"description": "events",
                "content": {"text/event-stream": media}}}})
        };
        let op = stream(serde_json::json!({"itemSchema": {
            "type": "object", "required": ["event", "data"],
            "properties": {
                "event": {"enum": ["tick"]},
                "id": {"type": "string"},
                "data": {"type": "string", "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/Tick"}}}}}));
        let compiled = Responses::compile(&doc, &op, "/paths/~1t/get").expect("compiles");
        let events = compiled.entries[0].content[0]
            .events
            .as_ref()
            .expect("a stream");
        assert_eq!(
            event_stream_violation(events, b"event: tick\nid: 7\ndata: {\"n\": 1}\n\n"),
            None
        );
        // Without `event:` the event is a `message`, which the item schema does not allow.
        assert!(
            event_stream_violation(events, b"data: {\"n\": 1}\n\n")
                .is_some_and(|r| r.contains("event schema")),
        );
        assert!(
            event_stream_violation(events, b"event: tick\ndata: {\"n\": 2}\n\n")
                .is_some_and(|r| r.contains("data does not match")),
        );
        // A string `schema` is the 3.0 way to say "text", not a per-event schema.
        let op = stream(serde_json::json!({"schema": {"type": "string"}}));
        let compiled = Responses::compile(&doc, &op, "/paths/~1t/get").expect("compiles");
        let events = compiled.entries[0].content[0]
            .events
            .as_ref()
            .expect("a stream");
        assert!(events.item.is_none() && events.data.is_none());
    }
}
