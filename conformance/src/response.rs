//! What an operation documents about its responses, compiled, and one recorded exchange.
//!
//! The checks judge a response against its operation's `responses` object: which status
//! codes exist, which media types and headers each carries, which schema its body follows.
//! Compiling that once per operation (schemas into validators, `$ref`s resolved) keeps the
//! per-request cost of a conformance run to a lookup and a validation. Response schemas are
//! compiled from a document prepared for [`Direction::Response`](crate::generate::Direction),
//! so `writeOnly` properties are never required in a response.

use jsonschema::Validator;
use serde_json::Value;

use crate::SpecError;
use crate::spec::{deref, escape_pointer};
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
    /// For `text/event-stream`: the schema of each event's `data:` JSON, given as
    /// `x-event-schema` or as OAS 3.2's `itemSchema`.
    pub event_validator: Option<Validator>,
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
                    let validator = match media.get("schema") {
                        Some(schema) => Some(compile_schema(
                            doc,
                            schema,
                            &format!("{rptr}/content/{}", escape_pointer(media_type)),
                        )?),
                        None => None,
                    };
                    let event_schema = media.get("x-event-schema").or(media.get("itemSchema"));
                    let event_validator = match event_schema {
                        Some(schema) => Some(compile_schema(
                            doc,
                            schema,
                            &format!("{rptr}/content/{}", escape_pointer(media_type)),
                        )?),
                        None => None,
                    };
                    content.push(MediaSpec {
                        media_type: media_type.to_ascii_lowercase(),
                        validator,
                        event_validator,
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

/// Whether a declared media type (maybe with wildcards) covers an actual one (essence only).
pub fn media_matches(declared: &str, actual: &str) -> bool {
    let declared = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let actual = actual
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
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
    let essence = media_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.to_ascii_lowercase().ends_with("+json")
}

/// Whether a media type is a server-sent event stream.
pub fn is_event_stream(media_type: &str) -> bool {
    let essence = media_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("text/event-stream")
}

/// One server-sent event: its `event:` name (if any) and its `data:` lines joined by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
}

/// Splits a `text/event-stream` body into its events (blank-line separated; comments and
/// events without `data:` are skipped), as the WHATWG parser dispatches them.
pub fn sse_events(body: &[u8]) -> Vec<SseEvent> {
    let text = String::from_utf8_lossy(body);
    let mut out = Vec::new();
    let (mut event, mut data): (Option<String>, Option<String>) = (None, None);
    for line in text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)) {
        if line.is_empty() {
            if let Some(d) = data.take() {
                out.push(SseEvent {
                    event: event.take(),
                    data: d,
                });
            }
            event = None;
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = Some(value.to_string()),
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            },
            _ => {}
        }
    }
    // A last event without its blank line is not dispatched by browsers: neither here.
    out
}

/// Checks every event of a stream against `validator`: the reason of the first failure.
pub fn event_stream_violation(validator: &Validator, body: &[u8]) -> Option<String> {
    for (i, e) in sse_events(body).iter().enumerate() {
        let Ok(value) = serde_json::from_str::<Value>(&e.data) else {
            return Some(format!("event {i}: its data is not JSON"));
        };
        if let Some(err) = validator.iter_errors(&value).next() {
            let at = err.instance_path().to_string();
            return Some(format!(
                "event {i} does not match the event schema at {}: {err}",
                if at.is_empty() { "/" } else { &at }
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
    pub request_body: Option<Value>,
    pub status: u16,
    /// Response headers, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
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
            out.push_str(&format!(" -d {}", quote(&body.to_string())));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_bodies_split_into_events_and_validate_each_data_line() {
        let body = b": comment\nevent: token\ndata: {\"n\": 1}\n\nretry: 10\ndata: {\"n\":\r\ndata: 2}\r\n\nevent: dangling\ndata: 3";
        let events = sse_events(body);
        assert_eq!(
            events,
            vec![
                SseEvent {
                    event: Some("token".into()),
                    data: "{\"n\": 1}".into()
                },
                SseEvent {
                    event: None,
                    data: "{\"n\":\n2}".into()
                },
            ]
        );
        let schema = serde_json::json!({"type": "object", "required": ["n"],
            "properties": {"n": {"type": "integer", "maximum": 1}}});
        let validator = jsonschema::validator_for(&schema).expect("schema");
        let reason = event_stream_violation(&validator, body).expect("the second is too big");
        assert!(reason.starts_with("event 1"), "{reason}");
        assert_eq!(
            event_stream_violation(&validator, b"data: {\"n\": 0}\n\n"),
            None
        );
        assert!(
            event_stream_violation(&validator, b"data: nope\n\n")
                .is_some_and(|r| r.contains("not JSON"))
        );
        assert!(is_event_stream("text/event-stream; charset=utf-8"));
        assert!(!is_event_stream("application/json"));
    }
}
