//! The static security review of an agent (`POST /v1/security/scan/{agent_id}`).
//!
//! Pure domain code: the API layer loads the agent as stored and the resources it references
//! (prompt template, model, knowledge bases, tools) into a [`Subject`]; [`scan`] walks every
//! string in them with the secret detectors and checks the agent's settings. A [`Finding`]
//! names where (a JSON pointer, prefixed with the referenced resource when it is not the agent
//! itself) and never contains the secret: at most a [`redact`]ed hint.

use std::sync::LazyLock;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Severity;
use crate::secrets::{API_KEY_PREFIX, SECRET_BODY_LEN, VAULT_TOKEN_PREFIX};

/// The rule a finding broke (the spec's `SecurityScanRule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    SecretExposed,
    PlatformCredentialExposed,
    HighEntropyString,
    UnrestrictedNetworkTool,
    UnboundedTokens,
    MissingResourceLimits,
    MissingReference,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::SecretExposed => "secret_exposed",
            Rule::PlatformCredentialExposed => "platform_credential_exposed",
            Rule::HighEntropyString => "high_entropy_string",
            Rule::UnrestrictedNetworkTool => "unrestricted_network_tool",
            Rule::UnboundedTokens => "unbounded_tokens",
            Rule::MissingResourceLimits => "missing_resource_limits",
            Rule::MissingReference => "missing_reference",
        }
    }
}

/// One problem found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub rule: Rule,
    pub severity: Severity,
    pub location: String,
    pub message: String,
    pub recommendation: String,
}

/// A resource the agent references, as found in its organization (`None`: it does not exist).
#[derive(Debug, Clone)]
pub struct Reference {
    pub kind: ReferenceKind,
    pub id: String,
    /// Where the agent names it (`/model_id`, `/knowledge_bases/1`).
    pub location: String,
    /// The resource as JSON (secret columns left out), when it exists.
    pub found: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    Model,
    PromptTemplate,
    KnowledgeBase,
    Tool,
}

impl ReferenceKind {
    pub fn label(self) -> &'static str {
        match self {
            ReferenceKind::Model => "model",
            ReferenceKind::PromptTemplate => "prompt_template",
            ReferenceKind::KnowledgeBase => "knowledge_base",
            ReferenceKind::Tool => "tool",
        }
    }

    /// The prefix of locations inside the referenced resource: the agent has one model and
    /// one template, but many knowledge bases and tools, so those name the id too.
    fn scope(self, id: &str) -> String {
        match self {
            ReferenceKind::Model | ReferenceKind::PromptTemplate => format!("{}:", self.label()),
            ReferenceKind::KnowledgeBase | ReferenceKind::Tool => {
                format!("{}:{}:", self.label(), safe_segment(id))
            }
        }
    }
}

/// What a scan looks at.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The agent as the spec's JSON.
    pub agent: Value,
    pub references: Vec<Reference>,
}

/// Most findings one scan reports (an agent with thousands of pasted keys is one problem).
const MAX_FINDINGS: usize = 200;
/// An answer longer than this many tokens counts as unbounded.
pub const MAX_TOKENS_LIMIT: i64 = 32_768;

/// Reviews `subject`; findings most serious first, then by location.
pub fn scan(subject: &Subject) -> Vec<Finding> {
    let mut findings = Vec::new();
    walk(&subject.agent, "", "", &mut findings);
    check_tokens(&subject.agent, &mut findings);
    check_resources(&subject.agent, &mut findings);
    for r in &subject.references {
        match &r.found {
            None => findings.push(Finding {
                rule: Rule::MissingReference,
                severity: Severity::Medium,
                location: r.location.clone(),
                message: format!(
                    "The agent references {} {} which does not exist in the organization.",
                    r.kind.label().replace('_', " "),
                    safe_segment(&r.id)
                ),
                recommendation: format!(
                    "Create the {} or remove the reference from the agent.",
                    r.kind.label().replace('_', " ")
                ),
            }),
            Some(doc) => {
                walk(doc, &r.kind.scope(&r.id), "", &mut findings);
                if r.kind == ReferenceKind::Tool {
                    check_tool(doc, &r.kind.scope(&r.id), &mut findings);
                }
            }
        }
    }
    findings.sort_by(|a, b| {
        b.severity
            .cmp(&a.severity)
            .then_with(|| a.location.cmp(&b.location))
    });
    findings.dedup();
    findings.truncate(MAX_FINDINGS);
    findings
}

/// Visits every string (and every object key) under `value`.
fn walk(value: &Value, scope: &str, pointer: &str, out: &mut Vec<Finding>) {
    match value {
        Value::String(s) => inspect(s, &format!("{scope}{}", or_root(pointer)), out),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                walk(item, scope, &format!("{pointer}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                let segment = safe_segment(key);
                let here = format!("{pointer}/{segment}");
                if segment != escape(key) {
                    inspect(key, &format!("{scope}{here}"), out);
                }
                walk(item, scope, &here, out);
            }
        }
        _ => {}
    }
}

fn or_root(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}

/// A JSON-pointer segment (`~` and `/` escaped).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `key` as a pointer segment, or `<redacted>` when the key itself holds a secret.
fn safe_segment(key: &str) -> String {
    if detect(key).is_empty() {
        escape(key)
    } else {
        "<redacted>".to_string()
    }
}

/// One secret found in a string: its kind and where it sits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    pub rule: Rule,
    pub severity: Severity,
    /// What it is, for people (`an OpenAI API key`).
    pub what: &'static str,
    /// A hint that identifies it without revealing it.
    pub hint: String,
    pub start: usize,
    pub end: usize,
}

struct Pattern {
    regex: Regex,
    rule: Rule,
    severity: Severity,
    what: &'static str,
    /// How many leading characters the hint may show (a well-known prefix, never random).
    shown_prefix: usize,
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    let p = |re: &str, rule, severity, what, shown_prefix| Pattern {
        regex: Regex::new(re).unwrap_or_else(|e| panic!("secret pattern {re}: {e}")),
        rule,
        severity,
        what,
        shown_prefix,
    };
    vec![
        p(
            &format!(r"\b{API_KEY_PREFIX}[A-Za-z0-9]{{{SECRET_BODY_LEN}}}\b"),
            Rule::PlatformCredentialExposed,
            Severity::Critical,
            "an agentplane API key",
            API_KEY_PREFIX.len(),
        ),
        p(
            &format!(r"\b{VAULT_TOKEN_PREFIX}[A-Za-z0-9]{{{SECRET_BODY_LEN}}}\b"),
            Rule::PlatformCredentialExposed,
            Severity::Critical,
            "an agentplane vault token",
            VAULT_TOKEN_PREFIX.len(),
        ),
        p(
            r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
            Rule::SecretExposed,
            Severity::Critical,
            "a private key",
            0,
        ),
        p(
            r"\bsk-(?:proj-|svcacct-|admin-|ant-)?[A-Za-z0-9_-]{20,}",
            Rule::SecretExposed,
            Severity::High,
            "an OpenAI-style API key",
            3,
        ),
        p(
            r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
            Rule::SecretExposed,
            Severity::High,
            "a GitHub token",
            4,
        ),
        p(
            r"\bgithub_pat_[A-Za-z0-9_]{22,}\b",
            Rule::SecretExposed,
            Severity::High,
            "a GitHub fine-grained token",
            11,
        ),
        p(
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
            Rule::SecretExposed,
            Severity::High,
            "an AWS access key id",
            4,
        ),
        p(
            r"\bxox[abprs]-[A-Za-z0-9-]{10,}",
            Rule::SecretExposed,
            Severity::High,
            "a Slack token",
            5,
        ),
        p(
            r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",
            Rule::SecretExposed,
            Severity::High,
            "a JSON Web Token",
            3,
        ),
        p(
            r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{20,}=*",
            Rule::SecretExposed,
            Severity::High,
            "a bearer token",
            0,
        ),
    ]
});

/// Runs of characters a key or token is written with.
static TOKEN_RUN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"[A-Za-z0-9+/=_-]{20,}").unwrap_or_else(|e| panic!("token run: {e}"))
});
/// Our own ids (`agent_01jh8k2m3n4p5q6r7s8t9v0w1x`), UUIDs and similar ids are not secrets.
static KNOWN_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(?:[a-z]+_[0-9a-z]{26}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$",
    )
    .unwrap_or_else(|e| panic!("known id: {e}"))
});

/// Shannon entropy of `s` in bits per character.
pub fn shannon_entropy(s: &str) -> f64 {
    let mut counts = [0usize; 256];
    let mut n = 0usize;
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    let len = n as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / len;
            -p * p.log2()
        })
        .sum()
}

/// Whether a run of token characters looks random enough to be a secret. The bar is relative
/// to the most a string of its length can reach (`log2(len)`), so that short and long runs
/// are judged alike: random base-62 clears 85% of it, prose and identifiers do not. A
/// base64-ish run must also mix upper case, lower case and digits; a hex run must be 32
/// characters or more.
pub fn looks_random(run: &str) -> bool {
    if KNOWN_ID.is_match(run) {
        return false;
    }
    let len = run.len();
    let entropy = shannon_entropy(run);
    let is_hex = run.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        let has_letter = run.bytes().any(|b| b.is_ascii_alphabetic());
        let has_digit = run.bytes().any(|b| b.is_ascii_digit());
        return len >= 32 && has_letter && has_digit && entropy >= 3.0;
    }
    let upper = run.bytes().filter(u8::is_ascii_uppercase).count();
    let lower = run.bytes().filter(u8::is_ascii_lowercase).count();
    let digits = run.bytes().filter(u8::is_ascii_digit).count();
    if len < 24 || upper < 2 || lower < 2 || digits < 2 {
        return false;
    }
    let ceiling = (len.min(64) as f64).log2();
    entropy >= 0.85 * ceiling
}

/// A hint that identifies `secret` without revealing it: a well-known prefix of at most
/// `shown_prefix` characters and the last four, only when the secret is long enough that four
/// characters are a small part of it (`sk-…9f2a`).
pub fn redact(secret: &str, shown_prefix: usize) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let prefix: String = chars.iter().take(shown_prefix.min(12)).collect();
    if chars.len() >= 20 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("{prefix}…{tail}")
    } else {
        format!("{prefix}…")
    }
}

/// Every secret in `text`, patterns first, then random-looking runs no pattern covered.
pub fn detect(text: &str) -> Vec<Detection> {
    let mut found: Vec<Detection> = Vec::new();
    for p in PATTERNS.iter() {
        for m in p.regex.find_iter(text) {
            if found.iter().any(|d| d.start < m.end() && m.start() < d.end) {
                continue;
            }
            let hint = if p.shown_prefix == 0 {
                String::new()
            } else {
                redact(m.as_str(), p.shown_prefix)
            };
            found.push(Detection {
                rule: p.rule,
                severity: p.severity,
                what: p.what,
                hint,
                start: m.start(),
                end: m.end(),
            });
        }
    }
    for m in TOKEN_RUN.find_iter(text) {
        if found.iter().any(|d| d.start < m.end() && m.start() < d.end) {
            continue;
        }
        // Identifiers join words with `_` and `-` (`report_2024_Q3_final`, `key=value`: base64
        // has `=` only as trailing padding), and their entropy
        // is as high as a short random string's: each part is judged on its own, so a random
        // part must be long enough by itself.
        if KNOWN_ID.is_match(m.as_str()) {
            continue;
        }
        let mut offset = m.start();
        for part in m.as_str().split(['_', '-', '=']) {
            let (start, end) = (offset, offset + part.len());
            offset = end + 1;
            if looks_random(part) {
                found.push(Detection {
                    rule: Rule::HighEntropyString,
                    severity: Severity::Medium,
                    what: "a random-looking string (a key or token?)",
                    hint: redact(part, 0),
                    start,
                    end,
                });
            }
        }
    }
    found.sort_by_key(|d| d.start);
    found
}

fn inspect(text: &str, location: &str, out: &mut Vec<Finding>) {
    for d in detect(text) {
        let shown = if d.hint.is_empty() {
            String::new()
        } else {
            format!(" ({})", d.hint)
        };
        let recommendation = match d.rule {
            Rule::PlatformCredentialExposed => {
                "Revoke it now (API keys: DELETE /v1/auth/keys/{key_id}; vault tokens: DELETE /v1/vault/tokens/{token_id}) and never put platform credentials in an agent."
            }
            Rule::HighEntropyString => {
                "If this is a credential, revoke it and keep it in the vault; if it is not, ignore this finding."
            }
            _ => {
                "Revoke the credential, remove it from the agent and keep it in the vault (or as a model's provider key, or a tool's secret header)."
            }
        };
        out.push(Finding {
            rule: d.rule,
            severity: d.severity,
            location: location.to_string(),
            message: format!("{}{shown} is written in plain text.", capitalized(d.what)),
            recommendation: recommendation.to_string(),
        });
    }
}

fn capitalized(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn check_tokens(agent: &Value, out: &mut Vec<Finding>) {
    let max = agent.pointer("/configuration/max_tokens");
    match max.and_then(Value::as_i64) {
        None => out.push(Finding {
            rule: Rule::UnboundedTokens,
            severity: Severity::Medium,
            location: "/configuration/max_tokens".into(),
            message: "The agent sets no max_tokens, so an answer's length and cost have no bound."
                .into(),
            recommendation: "Set configuration.max_tokens to what an answer needs (4096 or less)."
                .into(),
        }),
        Some(n) if n > MAX_TOKENS_LIMIT => out.push(Finding {
            rule: Rule::UnboundedTokens,
            severity: Severity::Low,
            location: "/configuration/max_tokens".into(),
            message: format!(
                "max_tokens is {n}, more than {MAX_TOKENS_LIMIT}: one answer can run up a large bill."
            ),
            recommendation: "Lower configuration.max_tokens to what an answer needs (4096 or less)."
                .into(),
        }),
        Some(_) => {}
    }
}

fn check_resources(agent: &Value, out: &mut Vec<Finding>) {
    let resources = agent.get("resources");
    let missing: Vec<&str> = ["memory", "cpu"]
        .into_iter()
        .filter(|k| resources.and_then(|r| r.get(k)).is_none())
        .collect();
    if !missing.is_empty() {
        out.push(Finding {
            rule: Rule::MissingResourceLimits,
            severity: Severity::Low,
            location: "/resources".into(),
            message: format!(
                "The agent sets no {} limit for its deployment.",
                missing.join(" or ")
            ),
            recommendation: "Set resources.memory and resources.cpu.".into(),
        });
    }
}

/// An `api` tool has network access; it is held to its one endpoint, which must be a TLS host
/// on the public network (a cleartext endpoint can be read and changed on the way, an
/// internal one lets the agent reach what the network does not expose).
fn check_tool(tool: &Value, scope: &str, out: &mut Vec<Finding>) {
    if tool.get("type").and_then(Value::as_str) != Some("api") {
        return;
    }
    let location = format!("{scope}/url");
    let Some(url) = tool.get("url").and_then(Value::as_str) else {
        return;
    };
    let Ok(parsed) = reqwest::Url::parse(url) else {
        out.push(Finding {
            rule: Rule::UnrestrictedNetworkTool,
            severity: Severity::Medium,
            location,
            message: "The tool's endpoint is not a valid URL, so what it reaches is not pinned."
                .into(),
            recommendation: "Give the tool one https endpoint.".into(),
        });
        return;
    };
    let internal = match parsed.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal")
        }
        Some(url::Host::Ipv4(ip)) => {
            ip.is_loopback() || ip.is_private() || ip.is_link_local() || ip.is_unspecified()
        }
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        None => true,
    };
    if internal {
        out.push(Finding {
            rule: Rule::UnrestrictedNetworkTool,
            severity: Severity::High,
            location,
            message: "The tool calls an internal or loopback address: the agent can reach services the network does not expose (cloud metadata, admin ports).".into(),
            recommendation: "Point the tool at a public https endpoint, or put it behind a gateway that allows only the calls the agent needs.".into(),
        });
    } else if parsed.scheme() != "https" {
        out.push(Finding {
            rule: Rule::UnrestrictedNetworkTool,
            severity: Severity::Medium,
            location,
            message: "The tool calls its endpoint over cleartext http: requests, answers and headers can be read and changed on the way.".into(),
            recommendation: "Use an https endpoint.".into(),
        });
    }
}

/// Findings by severity: critical, high, medium, low.
pub fn counts(findings: &[Finding]) -> [i64; 4] {
    let mut c = [0i64; 4];
    for f in findings {
        let i = match f.severity {
            Severity::Critical => 0,
            Severity::High => 1,
            Severity::Medium => 2,
            Severity::Low => 3,
        };
        c[i] += 1;
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OPENAI: &str = "sk-proj-4fQ8xZ2LmN7pR1sT9vW3yB6dH0kJ5cE9f2a";
    const PLATFORM: &str = "ap_Q2w3E4r5T6y7U8i9O0pA1sD2f3G4h5J6k7L8z9X0";

    fn subject(agent: Value) -> Subject {
        Subject {
            agent,
            references: vec![],
        }
    }

    #[test]
    fn known_patterns_are_detected_with_their_kind() {
        let cases = [
            (OPENAI, Rule::SecretExposed, Severity::High),
            (
                PLATFORM,
                Rule::PlatformCredentialExposed,
                Severity::Critical,
            ),
            (
                "vt_abcdefghijABCDEFGHIJ0123456789abcdefghij",
                Rule::PlatformCredentialExposed,
                Severity::Critical,
            ),
            (
                "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789",
                Rule::SecretExposed,
                Severity::High,
            ),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
                Rule::SecretExposed,
                Severity::High,
            ),
            ("AKIAIOSFODNN7EXAMPLE", Rule::SecretExposed, Severity::High),
            (
                "xoxb-123456789012-abcdefABCDEF",
                Rule::SecretExposed,
                Severity::High,
            ),
            (
                "-----BEGIN RSA PRIVATE KEY-----",
                Rule::SecretExposed,
                Severity::Critical,
            ),
            (
                "-----BEGIN PRIVATE KEY-----",
                Rule::SecretExposed,
                Severity::Critical,
            ),
            (
                "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
                Rule::SecretExposed,
                Severity::High,
            ),
            (
                "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
                Rule::SecretExposed,
                Severity::High,
            ),
        ];
        for (text, rule, severity) in cases {
            let found = detect(&format!("use this: {text} please"));
            assert_eq!(found.len(), 1, "{text}: {found:?}");
            assert_eq!(
                (found[0].rule, found[0].severity),
                (rule, severity),
                "{text}"
            );
        }
    }

    #[test]
    fn prose_ids_and_uuids_do_not_fire() {
        for text in [
            "You are a helpful customer support agent. Answer politely and concisely.",
            "See https://docs.example.com/guides/getting-started/installation for details.",
            "agent_01jh8k2m3n4p5q6r7s8t9v0w1x and kb_01jh8k2m3n4p5q6r7s8t9v0w1y",
            "550e8400-e29b-41d4-a716-446655440000",
            "ThisIsAVeryLongCamelCaseIdentifierName2024v2",
            "internationalization_and_localization_settings",
            "sk-short",
            "The task-identifier is report_2024_Q3_final_v2_APPROVED.",
            "deadbeefdeadbeefdeadbeefdeadbeef",
            "MyCompany_Prod_Database_Backup_2024_01_15",
            "User-Agent-Mozilla50-Windows-NT100-Win64",
        ] {
            assert!(detect(text).is_empty(), "{text}: {:?}", detect(text));
        }
    }

    #[test]
    fn random_strings_fire_on_entropy() {
        assert!(looks_random("Zx8Qp2Lm9Rt4Vb7Nc1Kd6Fg3Hj5Ws0Ye"));
        assert!(looks_random("9f2ab47c01de83f6a5b2c9e07d4f18a3"));
        let found = detect("token=Zx8Qp2Lm9Rt4Vb7Nc1Kd6Fg3Hj5Ws0Ye");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].rule, Rule::HighEntropyString);
        assert_eq!((found[0].start, found[0].end), (6, 38));
        // A random part of a longer run is found by itself.
        let found = detect("prod_Zx8Qp2Lm9Rt4Vb7Nc1Kd6Fg3Hj5Ws0Ye_v2");
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].start, found[0].end), (5, 37));
        // Entropy thresholds: uniform text has none, distinct characters the most.
        assert_eq!(shannon_entropy("aaaaaaaa"), 0.0);
        assert!((shannon_entropy("abcdefgh") - 3.0).abs() < 1e-9);
        assert!(!looks_random("AAbb11AAbb11AAbb11AAbb11AAbb11"));
    }

    #[test]
    fn redaction_shows_prefix_and_last_four_only() {
        assert_eq!(redact(OPENAI, 3), "sk-…9f2a");
        assert_eq!(redact("short-secret", 0), "…");
        let found = detect(OPENAI);
        assert_eq!(found[0].hint, "sk-…9f2a");
        assert!(!found[0].hint.contains(&OPENAI[3..OPENAI.len() - 4]));
    }

    #[test]
    fn findings_name_locations_and_never_hold_the_secret() {
        let agent = json!({
            "name": "support",
            "system_prompt": format!("You are support. Key: {OPENAI}"),
            "metadata": {"api_key": PLATFORM, "nested": [{"x": "fine"}], OPENAI: "key as a key"},
            "configuration": {"max_tokens": 1024},
            "resources": {"memory": "512Mi", "cpu": "500m"},
        });
        let findings = scan(&subject(agent));
        let text = serde_json::to_string(&findings).expect("json");
        assert!(!text.contains(OPENAI) && !text.contains(PLATFORM), "{text}");
        let at = |loc: &str| findings.iter().find(|f| f.location == loc);
        assert_eq!(
            at("/metadata/api_key").map(|f| f.rule),
            Some(Rule::PlatformCredentialExposed)
        );
        assert_eq!(
            at("/system_prompt").map(|f| f.severity),
            Some(Severity::High)
        );
        assert!(at("/metadata/<redacted>").is_some(), "{findings:?}");
        assert_eq!(findings[0].severity, Severity::Critical);
    }

    #[test]
    fn settings_and_references_are_checked() {
        let clean = json!({"name": "ok", "configuration": {"max_tokens": 1024},
            "resources": {"memory": "1Gi", "cpu": "1"}});
        assert!(scan(&subject(clean)).is_empty());
        let loose = json!({"name": "loose", "configuration": {"max_tokens": 500000}});
        let rules: Vec<Rule> = scan(&subject(loose)).iter().map(|f| f.rule).collect();
        assert_eq!(
            rules,
            vec![Rule::UnboundedTokens, Rule::MissingResourceLimits]
        );
        let with_refs = Subject {
            agent: json!({"configuration": {"max_tokens": 10}, "resources": {"memory": "1Gi", "cpu": "1"}}),
            references: vec![
                Reference {
                    kind: ReferenceKind::Model,
                    id: "model_x".into(),
                    location: "/model_id".into(),
                    found: None,
                },
                Reference {
                    kind: ReferenceKind::Tool,
                    id: "tool_1".into(),
                    location: "/tools/0".into(),
                    found: Some(json!({"type": "api", "url": "http://169.254.169.254/latest"})),
                },
                Reference {
                    kind: ReferenceKind::Tool,
                    id: "tool_2".into(),
                    location: "/tools/1".into(),
                    found: Some(json!({"type": "api", "url": "http://api.example.com/x"})),
                },
                Reference {
                    kind: ReferenceKind::PromptTemplate,
                    id: "tpl_1".into(),
                    location: "/prompt_template_id".into(),
                    found: Some(json!({"template": format!("key {OPENAI}")})),
                },
            ],
        };
        let found: Vec<(Rule, Severity, String)> = scan(&with_refs)
            .into_iter()
            .map(|f| (f.rule, f.severity, f.location))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    Rule::SecretExposed,
                    Severity::High,
                    "prompt_template:/template".into()
                ),
                (
                    Rule::UnrestrictedNetworkTool,
                    Severity::High,
                    "tool:tool_1:/url".into()
                ),
                (Rule::MissingReference, Severity::Medium, "/model_id".into()),
                (
                    Rule::UnrestrictedNetworkTool,
                    Severity::Medium,
                    "tool:tool_2:/url".into()
                ),
            ]
        );
        assert_eq!(counts(&scan(&with_refs)), [0, 2, 2, 0]);
    }
}
