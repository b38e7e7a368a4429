//! Model providers behind one trait: the built-in **local** provider (deterministic,
//! offline) and an **openai-compatible** HTTP client (`POST {endpoint}/chat/completions`,
//! with `stream: true` parsed as SSE).

pub(crate) mod sse;

use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The provider name of the built-in model.
pub const LOCAL_MODEL_NAME: &str = "local-extractive-1";

/// One chat message.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// A passage retrieved for the question, which the answer may cite.
#[derive(Debug, Clone, PartialEq)]
pub struct Passage {
    pub id: String,
    pub source: String,
    pub text: String,
    pub score: f64,
}

/// What a provider is asked.
#[derive(Debug, Clone)]
pub struct CompletionRequest {
    /// The provider's model name.
    pub model: String,
    /// The conversation: system prompt, history, and the question last.
    pub messages: Vec<ChatMessage>,
    /// Retrieved passages (already placed in the system prompt for HTTP providers).
    pub passages: Vec<Passage>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<i64>,
}

/// A finished answer and the tokens it took.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    pub text: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

/// Why a provider gave no answer.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum ProviderError {
    #[error("the model provider answered HTTP {status}: {message}")]
    Upstream { status: u16, message: String },
    #[error("the model provider did not answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the model provider: {0}")]
    Transport(String),
    #[error("the model provider's answer is not understood: {0}")]
    BadResponse(String),
}

/// A model provider: a whole answer, or the answer as token deltas sent to `deltas` (the
/// returned completion holds the whole text and the token counts either way).
pub trait Provider: Send + Sync {
    fn complete(
        &self, req: &CompletionRequest,
    ) -> impl std::future::Future<Output = Result<Completion, ProviderError>> + Send;

    fn stream(
        &self, req: &CompletionRequest, deltas: mpsc::Sender<String>,
    ) -> impl std::future::Future<Output = Result<Completion, ProviderError>> + Send;
}

/// Counts tokens the way the local provider does: every maximal run of letters and digits is
/// one token, and every other non-space character is one token. Deterministic, and within a
/// small factor of BPE tokenizers for English text.
pub fn count_tokens(text: &str) -> i64 {
    let mut count = 0i64;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if !in_word {
                count += 1;
                in_word = true;
            }
        } else {
            in_word = false;
            if !c.is_whitespace() {
                count += 1;
            }
        }
    }
    count
}

/// Input tokens of a request: every message's content, plus 4 per message for its framing.
pub fn count_input_tokens(messages: &[ChatMessage]) -> i64 {
    messages.iter().map(|m| count_tokens(&m.content) + 4).sum()
}

const STOPWORDS: &[&str] = &[
    "the", "and", "for", "are", "but", "not", "you", "your", "with", "what", "how", "who", "why",
    "when", "where", "which", "this", "that", "from", "have", "has", "was", "were", "does", "did",
    "can", "could", "would", "should", "about", "into", "tell", "please", "there", "their",
];

/// The words of `text`: runs of 3+ letters or digits, lower-cased, without [`STOPWORDS`].
pub(crate) fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.chars().count() >= 3)
        .map(str::to_lowercase)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        current.push(c);
        if matches!(c, '.' | '!' | '?' | '\n') {
            let s = current.trim().to_string();
            if !s.is_empty() {
                out.push(s);
            }
            current.clear();
        }
    }
    let s = current.trim().to_string();
    if !s.is_empty() {
        out.push(s);
    }
    out
}

/// The built-in provider. Its answer: the (at most three) sentences of the retrieved passages
/// that share the most words with the question, in passage order, each cited as `[n]` (the
/// passage's rank); without passages, or without overlap, it says so and restates what it was
/// asked and under which instructions. Same input, same output.
#[derive(Debug, Clone, Default)]
pub struct LocalProvider;

impl LocalProvider {
    pub fn answer(req: &CompletionRequest) -> String {
        let question = req
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
            .unwrap_or("");
        let asked: std::collections::BTreeSet<String> = words(question).into_iter().collect();
        let mut scored: Vec<(usize, usize, usize, String)> = Vec::new(); // (overlap, passage, position, sentence)
        for (p, passage) in req.passages.iter().enumerate() {
            for (i, s) in sentences(&passage.text).into_iter().enumerate() {
                let overlap = words(&s)
                    .into_iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .intersection(&asked)
                    .count();
                if overlap > 0 {
                    scored.push((overlap, p, i, s));
                }
            }
        }
        scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        scored.truncate(3);
        scored.sort_by(|a, b| a.1.cmp(&b.1).then(a.2.cmp(&b.2)));
        let mut text = if scored.is_empty() {
            let system = req
                .messages
                .iter()
                .find(|m| m.role == "system")
                .map(|m| m.content.trim())
                .filter(|s| !s.is_empty());
            let mut t = if req.passages.is_empty() {
                "I have no knowledge passages for this question.".to_string()
            } else {
                "None of the retrieved passages answers this question.".to_string()
            };
            t.push_str(&format!(" You asked: \"{}\"", question.trim()));
            if let Some(system) = system {
                t.push_str(&format!(" (instructions: \"{system}\")"));
            }
            t
        } else {
            let parts: Vec<String> = scored
                .iter()
                .map(|(_, p, _, s)| format!("{s} [{}]", p + 1))
                .collect();
            format!("Based on the knowledge base: {}", parts.join(" "))
        };
        if let Some(max) = req.max_tokens {
            text = truncate_tokens(&text, max);
        }
        text
    }
}

/// `text` cut after `max` tokens (by [`count_tokens`]).
fn truncate_tokens(text: &str, max: i64) -> String {
    let mut out = String::new();
    for piece in split_deltas(text) {
        if count_tokens(&format!("{out}{piece}")) > max {
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// The text as the deltas a stream sends: each word with the space before it.
pub fn split_deltas(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c.is_whitespace() && !current.trim().is_empty() {
            out.push(std::mem::take(&mut current));
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

impl Provider for LocalProvider {
    async fn complete(&self, req: &CompletionRequest) -> Result<Completion, ProviderError> {
        let text = Self::answer(req);
        Ok(Completion {
            input_tokens: count_input_tokens(&req.messages),
            output_tokens: count_tokens(&text),
            text,
        })
    }

    async fn stream(
        &self, req: &CompletionRequest, deltas: mpsc::Sender<String>,
    ) -> Result<Completion, ProviderError> {
        let done = self.complete(req).await?;
        for piece in split_deltas(&done.text) {
            // A receiver that went away (client disconnected) stops nothing: the execution
            // still finishes and is stored.
            let _ = deltas.send(piece).await;
        }
        Ok(done)
    }
}

/// An OpenAI-compatible chat-completions endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    pub endpoint: String,
    pub api_key: Option<String>,
    pub timeout: Duration,
    egress: crate::egress::Egress,
}

impl OpenAiCompatible {
    /// A client of `endpoint`, calling it through `egress` (whose policy may refuse it).
    pub fn new(
        endpoint: &str, api_key: Option<String>, timeout: Duration, egress: crate::egress::Egress,
    ) -> Self {
        Self {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            api_key,
            timeout,
            egress,
        }
    }

    fn body(req: &CompletionRequest, stream: bool) -> Value {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| json!({"role": m.role, "content": m.content}))
            .collect();
        let mut body = json!({"model": req.model, "messages": messages, "stream": stream});
        if let Some(t) = req.temperature {
            body["temperature"] = json!(t);
        }
        if let Some(m) = req.max_tokens {
            body["max_tokens"] = json!(m);
        }
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        body
    }

    /// POSTs `body` to `{endpoint}/chat/completions`: the answer when it is a success, else
    /// the upstream's error (its `error.message` when it sends one).
    pub(crate) async fn send(&self, body: &Value) -> Result<reqwest::Response, ProviderError> {
        let url = url::Url::parse(&format!("{}/chat/completions", self.endpoint))
            .map_err(|e| ProviderError::Transport(format!("the endpoint is not a URL: {e}")))?;
        let mut request = self.egress.request(reqwest::Method::POST, url).json(body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let resp = self
            .egress
            .send(request, self.timeout, &[])
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            let message = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v.pointer("/error/message")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| text.chars().take(300).collect());
            return Err(ProviderError::Upstream {
                status: status.as_u16(),
                message,
            });
        }
        Ok(resp)
    }

    fn transport(&self, e: crate::egress::EgressError) -> ProviderError {
        match e {
            crate::egress::EgressError::TimedOut(limit) => ProviderError::Timeout(limit),
            // The egress errors never name the URL: it is ours, and may hold query strings.
            other => ProviderError::Transport(other.to_string()),
        }
    }

    /// A failure reading a streamed answer, without the URL.
    fn read_failed(&self, e: reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::Timeout(self.timeout)
        } else {
            ProviderError::Transport(e.without_url().to_string())
        }
    }
}

pub(crate) fn usage_of(v: &Value) -> Option<(i64, i64)> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some((
        u.get("prompt_tokens").and_then(Value::as_i64)?,
        u.get("completion_tokens").and_then(Value::as_i64)?,
    ))
}

/// A model's text as every backend can store it: PostgreSQL's `text` refuses NUL, so a
/// remote model answering one gets U+FFFD in its place instead of failing the execution.
pub(crate) fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// What a streamed completion has said so far.
#[derive(Debug, Default)]
struct Streamed {
    text: String,
    usage: Option<(i64, i64)>,
}

impl sse::Chunks for Streamed {
    fn usage(&mut self) -> &mut Option<(i64, i64)> {
        &mut self.usage
    }

    async fn chunk(&mut self, v: &Value, deltas: &mpsc::Sender<String>) {
        let delta = v.pointer("/choices/0/delta/content");
        sse::pass_on(delta, &mut self.text, deltas).await;
    }
}

impl Provider for OpenAiCompatible {
    async fn complete(&self, req: &CompletionRequest) -> Result<Completion, ProviderError> {
        let resp = self.send(&Self::body(req, false)).await?;
        let v: Value = resp.json().await.map_err(|e| {
            if e.is_timeout() {
                ProviderError::Timeout(self.timeout)
            } else {
                ProviderError::BadResponse(e.to_string())
            }
        })?;
        let text = v
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .map(storable)
            .ok_or_else(|| ProviderError::BadResponse("no choices[0].message.content".into()))?;
        let (input_tokens, output_tokens) = usage_of(&v)
            .unwrap_or_else(|| (count_input_tokens(&req.messages), count_tokens(&text)));
        Ok(Completion {
            text,
            input_tokens,
            output_tokens,
        })
    }

    async fn stream(
        &self, req: &CompletionRequest, deltas: mpsc::Sender<String>,
    ) -> Result<Completion, ProviderError> {
        let resp = self.send(&Self::body(req, true)).await?;
        let mut streamed = Streamed::default();
        sse::read(resp, &mut streamed, &deltas, |e| self.read_failed(e)).await?;
        let Streamed { text, usage } = streamed;
        let (input_tokens, output_tokens) =
            usage.unwrap_or_else(|| (count_input_tokens(&req.messages), count_tokens(&text)));
        Ok(Completion {
            text,
            input_tokens,
            output_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_models_nul_is_replaced_not_stored() {
        assert_eq!(storable("a\0b"), "a\u{FFFD}b");
        assert_eq!(storable("plain"), "plain");
    }

    fn request(question: &str, passages: &[&str]) -> CompletionRequest {
        CompletionRequest {
            model: LOCAL_MODEL_NAME.into(),
            messages: vec![
                ChatMessage {
                    role: "system".into(),
                    content: "You are helpful.".into(),
                },
                ChatMessage {
                    role: "user".into(),
                    content: question.into(),
                },
            ],
            passages: passages
                .iter()
                .enumerate()
                .map(|(i, t)| Passage {
                    id: format!("chunk_{i}"),
                    source: "doc".into(),
                    text: (*t).into(),
                    score: 1.0,
                })
                .collect(),
            temperature: None,
            max_tokens: None,
        }
    }

    #[test]
    fn tokens_are_words_and_symbols() {
        assert_eq!(count_tokens("Hello, world!"), 4);
        assert_eq!(count_tokens("  "), 0);
        assert_eq!(count_tokens("refund-policy v2.1"), 6);
    }

    #[test]
    fn local_answers_from_the_best_overlapping_sentences_and_cites_them() {
        let req = request(
            "How long is the refund window?",
            &[
                "Our office is in Berlin. Shipping takes five days.",
                "The refund window is 30 days from delivery. Refunds go to the original card.",
            ],
        );
        let a = LocalProvider::answer(&req);
        assert!(
            a.contains("The refund window is 30 days from delivery. [2]"),
            "{a}"
        );
        assert!(!a.contains("Berlin"), "{a}");
        assert_eq!(a, LocalProvider::answer(&req), "deterministic");
        let none = LocalProvider::answer(&request("What is the refund window?", &[]));
        assert!(none.starts_with("I have no knowledge passages"), "{none}");
        assert!(none.contains("You are helpful."));
    }

    #[test]
    fn max_tokens_truncates_and_streams_rebuild_the_text() {
        let mut req = request(
            "refund window",
            &["The refund window is 30 days. Refund window rules apply."],
        );
        let full = LocalProvider::answer(&req);
        assert_eq!(split_deltas(&full).concat(), full);
        req.max_tokens = Some(5);
        let cut = LocalProvider::answer(&req);
        assert!(count_tokens(&cut) <= 5 && !cut.is_empty(), "{cut}");
    }
}
