//! Answers before they become HTTP: documented error bodies filled in with what went wrong,
//! RFC 7807 problems when the spec documents none, and the `Prefer` header.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::compile::{MockOperation, MockResponse};
use crate::validate::Violation;

/// A response, before CORS and conversion to poem.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Media type of `body`, when there is one.
    pub content_type: Option<String>,
    pub body: Bytes,
}

impl Answer {
    /// An empty answer.
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            content_type: None,
            body: Bytes::new(),
        }
    }

    /// A JSON answer.
    pub fn json(status: u16, content_type: &str, value: &Value) -> Self {
        Self {
            status,
            headers: Vec::new(),
            content_type: Some(content_type.to_string()),
            body: Bytes::from(serde_json::to_vec(value).unwrap_or_default()),
        }
    }

    /// Replaces (or adds) a header.
    pub fn set_header(&mut self, name: &str, value: String) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value));
    }

    /// The documented response `entry` answered with `status`, its headers, and `body` in
    /// `media_type` (`None`: no body).
    pub fn documented(
        entry: &MockResponse, status: u16, media_type: Option<&str>, body: Bytes,
    ) -> Self {
        Self {
            status,
            headers: entry.headers.clone(),
            content_type: media_type.map(str::to_string),
            body,
        }
    }
}

/// An RFC 7807 problem listing each violation.
pub fn problem(status: u16, title: &str, detail: &str, violations: &[Violation]) -> Answer {
    let mut body = Map::new();
    body.insert("type".into(), json!("about:blank"));
    body.insert("title".into(), json!(title));
    body.insert("status".into(), json!(status));
    body.insert("detail".into(), json!(detail));
    if !violations.is_empty() {
        body.insert(
            "violations".into(),
            Value::Array(
                violations
                    .iter()
                    .map(|v| {
                        json!({
                            "location": v.location.as_str(),
                            "field": v.field,
                            "code": v.code,
                            "message": v.message,
                        })
                    })
                    .collect(),
            ),
        );
    }
    Answer::json(status, "application/problem+json", &Value::Object(body))
}

/// The answer to a request that went wrong in a way `status` describes: the operation's own
/// documented response for it (400 and 422 stand in for each other, then the status range,
/// then `default`), its body filled in with `detail` and the violations where the schema
/// allows, else an RFC 7807 problem.
pub fn error(
    op: Option<&MockOperation>, status: u16, title: &str, detail: &str, violations: &[Violation],
) -> Answer {
    let Some(op) = op else {
        return problem(status, title, detail, violations);
    };
    let alternatives: &[u16] = match status {
        400 => &[400, 422],
        422 => &[422, 400],
        _ => &[],
    };
    let status = alternatives
        .iter()
        .copied()
        .find(|s| op.documents(*s))
        .unwrap_or(status);
    let Some(entry) = op.entry(status) else {
        return problem(status, title, detail, violations);
    };
    let Some(media) = entry.negotiate(Some("application/json")) else {
        let mut answer = Answer::documented(entry, status, None, Bytes::new());
        answer.set_header("X-Mock-Detail", ascii(detail));
        return answer;
    };
    let Some(base) = &media.value else {
        return problem(status, title, detail, violations);
    };
    let key = entry.key.as_str();
    let mut body = base.clone();
    for with_list in [true, false] {
        let mut candidate = base.clone();
        inject(&mut candidate, status, title, detail, violations, with_list);
        if op.body_is_valid(key, &media.media_type, &candidate) {
            body = candidate;
            break;
        }
    }
    let bytes = super::compile::render(&media.media_type, &body);
    Answer::documented(entry, status, Some(&media.media_type), bytes)
}

fn ascii(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii() && !c.is_control() {
                c
            } else {
                '?'
            }
        })
        .collect()
}

/// Writes what went wrong into the places of an error body that usually say it: message-like
/// strings, a numeric status, and (with `with_list`) a details array, one item per violation
/// shaped like the body's own first item.
fn inject(
    value: &mut Value, status: u16, title: &str, detail: &str, violations: &[Violation],
    with_list: bool,
) {
    let Value::Object(map) = value else { return };
    // An RFC 7807 body: its `type` and `title` say what kind of problem this is.
    let problem = map.contains_key("title") && map.contains_key("status");
    for (key, v) in map.iter_mut() {
        match (key.as_str(), &*v) {
            ("type", Value::String(_)) if problem => *v = Value::String("about:blank".into()),
            ("title", Value::String(_)) if problem => *v = Value::String(title.to_string()),
            ("message" | "detail" | "error_description", Value::String(_) | Value::Null) => {
                *v = Value::String(detail.to_string());
            }
            ("status" | "code" | "status_code", Value::Number(_)) => *v = Value::from(status),
            ("details" | "errors" | "violations" | "validation", Value::Array(_))
                if with_list && violations.is_empty() =>
            {
                *v = Value::Array(Vec::new());
            }
            ("details" | "errors" | "violations" | "validation", Value::Array(items))
                if with_list =>
            {
                let template = items
                    .first()
                    .cloned()
                    .unwrap_or_else(|| json!({"field": "", "code": "", "message": ""}));
                let list = violations
                    .iter()
                    .map(|violation| {
                        let mut item = template.clone();
                        if let Value::Object(fields) = &mut item {
                            for (name, field) in fields.iter_mut() {
                                let text = match name.as_str() {
                                    "field" | "name" | "path" | "parameter" | "pointer" => {
                                        &violation.field
                                    }
                                    "code" | "keyword" | "type" => &violation.code,
                                    "message" | "detail" | "description" => &violation.message,
                                    "location" | "in" => violation.location.as_str(),
                                    _ => continue,
                                };
                                if field.is_string() {
                                    *field = Value::String(text.to_string());
                                }
                            }
                        }
                        item
                    })
                    .collect();
                *v = Value::Array(list);
            }
            (_, Value::Object(_)) => inject(v, status, title, detail, violations, with_list),
            _ => {}
        }
    }
}

/// What a `Prefer` header asks for (Prism's syntax: `code=404, example=name, dynamic=true`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prefer {
    pub code: Option<u16>,
    pub example: Option<String>,
    pub dynamic: Option<bool>,
}

impl Prefer {
    /// Parses the header; unknown preferences are ignored, as RFC 7240 asks.
    pub fn parse(header: Option<&str>) -> Result<Self, String> {
        let mut out = Prefer::default();
        let Some(header) = header else {
            return Ok(out);
        };
        for part in header.split([',', ';']) {
            let Some((key, value)) = part.split_once('=') else {
                continue;
            };
            let value = value.trim().trim_matches('"');
            match key.trim().to_ascii_lowercase().as_str() {
                "code" => {
                    out.code = Some(
                        value
                            .parse()
                            .ok()
                            .filter(|c| (100..600).contains(c))
                            .ok_or_else(|| format!("Prefer: code={value} is not a status code"))?,
                    );
                }
                "example" => out.example = Some(value.to_string()),
                "dynamic" => match value {
                    "true" => out.dynamic = Some(true),
                    "false" => out.dynamic = Some(false),
                    _ => return Err(format!("Prefer: dynamic={value} is not true or false")),
                },
                _ => {}
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Location;

    #[test]
    fn parses_prefer() {
        assert_eq!(
            Prefer::parse(Some("code=404, example=\"missing\"; dynamic=true")),
            Ok(Prefer {
                code: Some(404),
                example: Some("missing".into()),
                dynamic: Some(true)
            })
        );
        assert_eq!(Prefer::parse(Some("respond-async")), Ok(Prefer::default()));
        assert!(Prefer::parse(Some("code=abc")).is_err());
        assert!(Prefer::parse(Some("dynamic=maybe")).is_err());
    }

    #[test]
    fn injects_into_envelopes() {
        let mut body = json!({"error": {"code": "validation_failed", "message": "x",
            "details": [{"field": "a", "code": "b", "message": "c"}]}});
        let violations = vec![Violation {
            location: Location::Query,
            field: "per_page".into(),
            code: "maximum".into(),
            message: "too big".into(),
        }];
        inject(
            &mut body,
            400,
            "Bad Request",
            "bad request",
            &violations,
            true,
        );
        assert_eq!(
            body,
            json!({"error": {"code": "validation_failed", "message": "bad request",
                "details": [{"field": "per_page", "code": "maximum", "message": "too big"}]}})
        );
        let mut petstore = json!({"code": 0, "message": ""});
        inject(
            &mut petstore,
            422,
            "Unprocessable",
            "broken",
            &violations,
            true,
        );
        assert_eq!(petstore, json!({"code": 422, "message": "broken"}));
    }
}
