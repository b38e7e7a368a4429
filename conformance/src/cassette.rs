//! Recorded interactions as a Schemathesis-compatible VCR cassette (YAML).
//!
//! The layout follows Schemathesis v4's `--report vcr` writer: a header (`command`,
//! `recorded_with`, `seed`) and `http_interactions`, each with `id`, `status`, `seed`,
//! `elapsed`, `phase`, `recorded_at`, `checks`, `request` {uri, method, headers, body} and
//! `response` {status {code, message}, elapsed, headers, body {encoding, string},
//! http_version}. Tools that replay or inspect Schemathesis cassettes read ours as well.
//!
//! Credentials never reach a cassette: the values of `Authorization`, `X-API-Key`, cookies
//! and every API-key header the spec declares are replaced by `[Filtered]`, as Schemathesis
//! does. Strings are written double-quoted with every character a YAML reader could refuse
//! escaped, so any body (binary ones included, decoded lossily) yields a parseable file.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What replaces a secret header's value.
pub const REDACTED: &str = "[Filtered]";

/// Header names always redacted (lower case), beside the spec's API-key headers.
const ALWAYS_SECRET: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
];

/// The outcome of one check on one interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckRecord {
    /// The check's name.
    pub name: String,
    /// True when it passed.
    pub passed: bool,
    /// Why it failed.
    pub message: Option<String>,
}

/// A response as received.
#[derive(Debug, Clone)]
pub struct RecordedResponse {
    pub status: u16,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// `1.1` or `2`.
    pub http_version: String,
}

/// One request and what came back.
#[derive(Debug, Clone)]
pub struct Interaction {
    /// 32 hex digits, unique within a run.
    pub id: String,
    /// The phase that sent it (`coverage`, `fuzzing`, ...).
    pub phase: String,
    /// The run seed.
    pub seed: u64,
    /// When the request was sent.
    pub recorded_at: SystemTime,
    /// Time until the whole response had arrived.
    pub elapsed: Duration,
    pub checks: Vec<CheckRecord>,
    pub method: String,
    pub uri: String,
    pub request_headers: Vec<(String, String)>,
    pub request_body: Option<String>,
    /// `None` when the request failed on the network.
    pub response: Option<RecordedResponse>,
}

impl Interaction {
    /// `SUCCESS`, `FAILURE` (some check failed), `SKIP` (no check applied) or `ERROR` (no
    /// response), as Schemathesis names them.
    pub fn status(&self) -> &'static str {
        if self.response.is_none() {
            "ERROR"
        } else if self.checks.iter().any(|c| !c.passed) {
            "FAILURE"
        } else if self.checks.is_empty() {
            "SKIP"
        } else {
            "SUCCESS"
        }
    }
}

/// One request of a failure's replay script, as sent, with the body its response had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayStep {
    /// What the request was to the check: `setup`, `before`, `request`, `follow_up` or
    /// `page`.
    pub role: String,
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    /// The response body then: values it held (a created resource's `id`) are replaced in
    /// later steps by what the re-sent request answers now.
    pub response_body: Option<String>,
}

/// What `agentplane conform --replay` needs to re-check one failure: the check, the
/// operation, what kind of request it was and the requests that showed it, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayScript {
    /// The failure's id ([`crate::checks::failure_id`]).
    pub id: String,
    pub check: String,
    /// `METHOD /path/template`.
    pub operation: String,
    /// [`crate::checks::CaseKind::as_str`].
    pub kind: String,
    pub steps: Vec<ReplayStep>,
}

/// The top-level key of a cassette's replay scripts. VCR readers ignore keys they do not
/// know; Schemathesis's own reader reads only `http_interactions`.
pub const REPLAY_KEY: &str = "x-agentplane-replay";

fn write_replay(out: &mut String, scripts: &[ReplayScript], secret: &[String]) {
    if scripts.is_empty() {
        return;
    }
    let _ = writeln!(out, "{REPLAY_KEY}:");
    for script in scripts {
        let _ = writeln!(out, "- id: {}", quote(&script.id));
        let _ = writeln!(out, "  check: {}", quote(&script.check));
        let _ = writeln!(out, "  operation: {}", quote(&script.operation));
        let _ = writeln!(out, "  kind: {}", quote(&script.kind));
        out.push_str("  steps:\n");
        for step in &script.steps {
            let _ = writeln!(out, "  - role: {}", quote(&step.role));
            let _ = writeln!(out, "    method: {}", quote(&step.method));
            let _ = writeln!(out, "    uri: {}", quote(&step.uri));
            out.push_str("    headers:");
            write_headers(out, &step.headers, secret);
            if let Some(body) = &step.body {
                let _ = writeln!(out, "    body: {}", quote(body));
            }
            if let Some(body) = &step.response_body {
                let _ = writeln!(out, "    response_body: {}", quote(body));
            }
        }
    }
}

/// The replay scripts of a cassette written by [`render`] (none in a cassette without
/// failures or from another tool).
pub fn parse_replay(text: &str) -> Result<Vec<ReplayScript>, String> {
    let doc: serde_json::Value =
        yaml_serde::from_str(text).map_err(|e| format!("not a cassette: {e}"))?;
    if !doc.is_object() {
        return Err("not a cassette: no mapping at the top".into());
    }
    let text_of = |v: &serde_json::Value, key: &str| {
        v.get(key)
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
    };
    let mut scripts = Vec::new();
    for entry in doc
        .get(REPLAY_KEY)
        .and_then(serde_json::Value::as_array)
        .into_iter()
        .flatten()
    {
        let field =
            |key: &str| text_of(entry, key).ok_or_else(|| format!("a replay entry without {key}"));
        let mut steps = Vec::new();
        for step in entry
            .get("steps")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            let mut headers = Vec::new();
            if let Some(map) = step.get("headers").and_then(serde_json::Value::as_object) {
                for (name, values) in map {
                    for value in values.as_array().into_iter().flatten() {
                        if let Some(value) = value.as_str() {
                            headers.push((name.clone(), value.to_string()));
                        }
                    }
                }
            }
            steps.push(ReplayStep {
                role: text_of(step, "role").unwrap_or_else(|| "request".into()),
                method: text_of(step, "method").ok_or("a replay step without method")?,
                uri: text_of(step, "uri").ok_or("a replay step without uri")?,
                headers,
                body: text_of(step, "body"),
                response_body: text_of(step, "response_body"),
            });
        }
        scripts.push(ReplayScript {
            id: field("id")?,
            check: field("check")?,
            operation: field("operation")?,
            kind: field("kind")?,
            steps,
        });
    }
    Ok(scripts)
}

/// Writes `text` as a YAML double-quoted scalar: `"`, `\` and every character outside
/// YAML's printable set (plus the ones readers treat as line breaks or a BOM) escaped.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            ' '..='~' => out.push(c),
            '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fefe}' | '\u{ff00}'..='\u{fffd}'
                if !matches!(c, '\u{2028}' | '\u{2029}') =>
            {
                out.push(c);
            }
            c if u32::from(c) <= 0xff => {
                let _ = write!(out, "\\x{:02X}", u32::from(c));
            }
            c if u32::from(c) <= 0xffff => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c if u32::from(c) >= 0x10000 => out.push(c),
            c => {
                let _ = write!(out, "\\U{:08X}", u32::from(c));
            }
        }
    }
    out.push('"');
    out
}

/// An RFC 3339 UTC timestamp with microseconds, e.g. `2026-11-23T21:15:47.123456+00:00`.
pub fn timestamp(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}+00:00",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

fn reason(status: u16) -> &'static str {
    reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("")
}

fn write_headers(out: &mut String, headers: &[(String, String)], secret: &[String]) {
    if headers.is_empty() {
        out.push_str(" {}\n");
        return;
    }
    out.push('\n');
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in headers {
        if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
            names.push(name);
        }
    }
    for name in names {
        let lower = name.to_ascii_lowercase();
        let hidden = ALWAYS_SECRET.contains(&lower.as_str()) || secret.contains(&lower);
        let _ = writeln!(out, "      {}:", quote(name));
        for (_, value) in headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
            let value = if hidden { REDACTED } else { value.as_str() };
            let _ = writeln!(out, "      - {}", quote(value));
        }
    }
}

/// Renders a whole cassette. `secret_headers` are header names (lower case) whose values are
/// redacted on top of the usual credential headers; `replay` holds one script per failure
/// (written under [`REPLAY_KEY`]).
pub fn render(
    command: &str, seed: u64, interactions: &[Interaction], replay: &[ReplayScript],
    secret_headers: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "command: {}", quote(command));
    let _ = writeln!(
        out,
        "recorded_with: {}",
        quote(&format!("agentplane {}", env!("CARGO_PKG_VERSION")))
    );
    let _ = writeln!(out, "seed: {seed}");
    write_replay(&mut out, replay, secret_headers);
    if interactions.is_empty() {
        out.push_str("http_interactions: []\n");
        return out;
    }
    out.push_str("http_interactions:\n");
    for i in interactions {
        let _ = writeln!(out, "- id: {}", quote(&i.id));
        let _ = writeln!(out, "  status: {}", quote(i.status()));
        let _ = writeln!(out, "  seed: {}", i.seed);
        let _ = writeln!(out, "  elapsed: '{:.6}'", i.elapsed.as_secs_f64());
        let _ = writeln!(
            out,
            "  phase:\n    name: {}\n    data: {{}}",
            quote(&i.phase)
        );
        let _ = writeln!(out, "  recorded_at: '{}'", timestamp(i.recorded_at));
        if i.checks.is_empty() {
            out.push_str("  checks: []\n");
        } else {
            out.push_str("  checks:\n");
            for c in &i.checks {
                let _ = writeln!(out, "    - name: {}", quote(&c.name));
                let _ = writeln!(
                    out,
                    "      status: '{}'",
                    if c.passed { "SUCCESS" } else { "FAILURE" }
                );
                match &c.message {
                    Some(m) => {
                        let _ = writeln!(out, "      message: {}", quote(m));
                    }
                    None => out.push_str("      message: ~\n"),
                }
            }
        }
        out.push_str("  request:\n");
        let _ = writeln!(out, "    uri: {}", quote(&i.uri));
        let _ = writeln!(out, "    method: {}", quote(&i.method));
        out.push_str("    headers:");
        write_headers(&mut out, &i.request_headers, secret_headers);
        if let Some(body) = &i.request_body {
            let _ = writeln!(
                out,
                "    body:\n      encoding: 'utf-8'\n      string: {}",
                quote(body)
            );
        }
        match &i.response {
            None => out.push_str("  response: null\n"),
            Some(r) => {
                out.push_str("  response:\n    status:\n");
                let _ = writeln!(out, "      code: '{}'", r.status);
                let _ = writeln!(out, "      message: {}", quote(reason(r.status)));
                let _ = writeln!(out, "    elapsed: '{:.6}'", i.elapsed.as_secs_f64());
                out.push_str("    headers:");
                write_headers(&mut out, &r.headers, secret_headers);
                let _ = writeln!(
                    out,
                    "    body:\n      encoding: 'utf-8'\n      string: {}",
                    quote(&String::from_utf8_lossy(&r.body))
                );
                let _ = writeln!(out, "    http_version: {}", quote(&r.http_version));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = UNIX_EPOCH + Duration::from_micros(1_795_468_547_123_456);
        assert_eq!(timestamp(t), "2026-11-23T21:15:47.123456+00:00");
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000000+00:00");
    }

    #[test]
    fn every_string_survives_a_yaml_round_trip() {
        let nasty = "a\"b\\c\n\r\t\0\u{7f}\u{85}\u{9f}\u{2028}\u{feff}\u{fffe}é😀 'x' # y: z";
        let interaction = Interaction {
            id: "0".repeat(32),
            phase: "coverage".into(),
            seed: 7,
            recorded_at: UNIX_EPOCH,
            elapsed: Duration::from_millis(3),
            checks: vec![CheckRecord {
                name: "not_a_server_error".into(),
                passed: false,
                message: Some(nasty.into()),
            }],
            method: "POST".into(),
            uri: "http://127.0.0.1:1/x?q='a'".into(),
            request_headers: vec![
                ("Authorization".into(), "Bearer secret".into()),
                ("X-Token".into(), "t0k".into()),
                ("X-Other".into(), nasty.into()),
            ],
            request_body: Some(nasty.into()),
            response: Some(RecordedResponse {
                status: 500,
                headers: vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
                body: vec![0xff, b'a', 0],
                http_version: "1.1".into(),
            }),
        };
        let script = ReplayScript {
            id: "0123456789ab".into(),
            check: "not_a_server_error".into(),
            operation: "POST /x".into(),
            kind: "positive".into(),
            steps: vec![ReplayStep {
                role: "request".into(),
                method: "POST".into(),
                uri: "http://127.0.0.1:1/x".into(),
                headers: vec![("Authorization".into(), "Bearer secret".into())],
                body: Some(nasty.into()),
                response_body: Some(nasty.into()),
            }],
        };
        let text = render(
            "agentplane conform",
            7,
            &[interaction],
            std::slice::from_ref(&script),
            &["x-token".into()],
        );
        let replay = parse_replay(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].steps[0].body.as_deref(), Some(nasty));
        assert_eq!(replay[0].steps[0].headers[0].1, REDACTED);
        assert_eq!(replay[0].id, script.id);
        assert!(!text.contains("secret") && !text.contains("t0k"), "{text}");
        let doc: Value = yaml_serde::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let i = &doc["http_interactions"][0];
        assert_eq!(i["status"], "FAILURE");
        assert_eq!(i["checks"][0]["message"], nasty);
        assert_eq!(i["request"]["body"]["string"], nasty);
        assert_eq!(i["request"]["headers"]["X-Other"][0], nasty);
        assert_eq!(i["request"]["headers"]["Authorization"][0], REDACTED);
        assert_eq!(i["response"]["status"]["code"], "500");
        assert_eq!(i["response"]["status"]["message"], "Internal Server Error");
        assert_eq!(i["response"]["headers"]["x-a"][1], "2");
        assert_eq!(i["response"]["body"]["string"], "\u{fffd}a\0");
    }
}
