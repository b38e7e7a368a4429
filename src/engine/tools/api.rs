//! An `api` tool's HTTP call, the one both its test (`POST /v1/tools/{id}/test`) and an
//! execution's tool call make: the tool's method and URL, its plain headers and its sealed
//! secret headers (opened only here, and dropped by the egress client on a redirect that leaves
//! the tool's origin), a query or JSON body, within the tool's timeout, through the egress
//! policy, its answer read up to [`MAX_ANSWER_BYTES`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::header::HeaderName;
use serde_json::Value;

use crate::crypto::Crypto;
use crate::egress::{Egress, read_capped};

/// Bytes of an endpoint's answer read; the rest is cut.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long a call may take when the tool says nothing.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;

/// The secret headers sealed in a tool's `secrets` column, by name.
pub fn open_secrets(crypto: &Crypto, sealed: &str) -> Result<BTreeMap<String, String>, String> {
    if sealed.is_empty() {
        return Ok(BTreeMap::new());
    }
    let bytes = crypto
        .decrypt(sealed)
        .map_err(|e| format!("the secret headers cannot be opened: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|_| "the secret headers are corrupt".to_string())
}

/// What one call sends beyond the tool's own configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// Values of the URL's `{name}` placeholders.
    pub path: BTreeMap<String, String>,
    /// Query parameters appended to the URL.
    pub query: Vec<(String, String)>,
    /// A JSON body (never sent with a GET).
    pub body: Option<Value>,
}

impl Request {
    /// The request a model's `arguments` (an object) make for a tool whose URL is `url` and
    /// method `method`: each argument fills the URL's `{name}` placeholder of the same name;
    /// the others become the query of a GET or DELETE (strings as they are, anything else as
    /// JSON) and the JSON body of any other method.
    pub fn from_arguments(url: &str, method: &str, arguments: &Value) -> Request {
        let mut request = Request::default();
        let mut rest = serde_json::Map::new();
        for (name, value) in arguments.as_object().into_iter().flatten() {
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if url.contains(&format!("{{{name}}}")) {
                request.path.insert(name.clone(), text);
            } else if matches!(method, "GET" | "DELETE") {
                request.query.push((name.clone(), text));
            } else {
                rest.insert(name.clone(), value.clone());
            }
        }
        if !rest.is_empty() {
            request.body = Some(Value::Object(rest));
        }
        request
    }
}

/// An endpoint's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub content_type: Option<String>,
    /// At most [`MAX_ANSWER_BYTES`].
    pub body: Vec<u8>,
    /// Milliseconds from sending to the whole answer read.
    pub latency_ms: f64,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A call that got no answer: why, and how long it took to fail.
#[derive(Debug, Clone, PartialEq)]
pub struct CallFailed {
    pub error: String,
    pub latency_ms: f64,
}

/// Calls the `api` tool whose `body` column is `tool` and `secrets` column `sealed` once.
pub async fn call(
    egress: &Egress, crypto: &Crypto, (tool, sealed): (&Value, &str), request: Request,
) -> Result<Answer, CallFailed> {
    let started = Instant::now();
    let failed = |error: String, started: Instant| CallFailed {
        error,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    };
    let (req, timeout, secret) =
        build(egress, crypto, (tool, sealed), request).map_err(|e| failed(e, started))?;
    let started = Instant::now();
    // Secret headers stay with the tool's origin: a redirect elsewhere drops them.
    let resp = match egress.send(req, timeout, &secret).await {
        Ok(resp) => resp,
        // Egress errors name neither the URL nor the headers.
        Err(e) => return Err(failed(format!("the call failed: {e}"), started)),
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_capped(resp, MAX_ANSWER_BYTES, true)
        .await
        .map_err(|e| failed(e.to_string(), started))?;
    Ok(Answer {
        status,
        content_type,
        body,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    })
}

/// The request to send, the time it may take and the names of its secret headers.
fn build(
    egress: &Egress, crypto: &Crypto, (tool, sealed): (&Value, &str), request: Request,
) -> Result<(reqwest::RequestBuilder, Duration, Vec<HeaderName>), String> {
    let (Some(url), method) = (
        tool.get("url").and_then(Value::as_str),
        tool.get("method").and_then(Value::as_str).unwrap_or("GET"),
    ) else {
        return Err("the tool has no URL".into());
    };
    let Ok(method) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return Err(format!("unsupported method {method}"));
    };
    let secrets = open_secrets(crypto, sealed)?;
    let timeout = tool
        .get("timeout_ms")
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_TIMEOUT_MS);
    let mut url = url.to_string();
    for (name, value) in &request.path {
        // Form encoding writes a space as `+` (and a `+` as `%2B`): a path wants `%20`.
        let encoded: String = url::form_urlencoded::byte_serialize(value.as_bytes()).collect();
        let encoded = encoded.replace('+', "%20");
        url = url.replace(&format!("{{{name}}}"), &encoded);
    }
    let mut target =
        reqwest::Url::parse(&url).map_err(|e| format!("the tool's URL is not valid: {e}"))?;
    if !request.query.is_empty() {
        let mut pairs = target.query_pairs_mut();
        for (k, v) in &request.query {
            pairs.append_pair(k, v);
        }
    }
    let mut req = egress.request(method.clone(), target);
    let plain: BTreeMap<String, String> = tool
        .get("headers")
        .and_then(|h| serde_json::from_value(h.clone()).ok())
        .unwrap_or_default();
    for (k, v) in plain.iter().chain(secrets.iter()) {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(b) = request.body
        && method != reqwest::Method::GET
    {
        req = req.json(&b);
    }
    let secret = secrets
        .keys()
        .filter_map(|k| HeaderName::from_bytes(k.as_bytes()).ok())
        .collect();
    Ok((req, Duration::from_millis(timeout), secret))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn arguments_fill_placeholders_then_the_query_or_the_body() {
        let args = json!({"city": "Rio de Janeiro", "days": 3, "units": "metric"});
        let get = Request::from_arguments("http://x/weather/{city}", "GET", &args);
        assert_eq!(
            get.path.get("city").map(String::as_str),
            Some("Rio de Janeiro")
        );
        assert_eq!(
            get.query,
            [
                ("days".to_string(), "3".to_string()),
                ("units".to_string(), "metric".to_string())
            ]
        );
        assert_eq!(get.body, None);
        let post = Request::from_arguments("http://x/orders", "POST", &args);
        assert!(post.path.is_empty() && post.query.is_empty());
        assert_eq!(post.body, Some(args));
    }
}
