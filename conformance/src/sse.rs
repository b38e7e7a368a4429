//! Server-sent events: the one `text/event-stream` parser of the workspace.
//!
//! Parsed as the WHATWG HTML standard's "event stream interpretation" says: lines end with
//! CRLF, LF or CR alone; `:` starts a comment; `data:` lines of one event join with `\n`; an
//! event is dispatched at a blank line, and only when it has data; `id:` persists across
//! events (one holding NUL is ignored); `retry:` counts when it is a number. The parser is
//! incremental, so one type serves a whole body (the conformance checks, [`sse_events`]), a
//! body read so far (the runner cuts an endless stream after its last complete event,
//! [`SseParser::complete_len`]) and bytes as they arrive (agentplane's OpenAI-compatible
//! model provider).

use serde_json::Value;

/// One server-sent event: its `event:` name (if any), its `data:` lines joined by `\n`, the
/// last event id seen so far and its `retry:` when that is a number.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
    pub retry: Option<u64>,
}

impl SseEvent {
    /// The event as an SSE client parses it, the value an `itemSchema` describes: `event`
    /// defaults to `message`.
    pub fn to_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("data".into(), Value::String(self.data.clone()));
        m.insert(
            "event".into(),
            Value::String(self.event.clone().unwrap_or_else(|| "message".into())),
        );
        if let Some(id) = &self.id {
            m.insert("id".into(), Value::String(id.clone()));
        }
        if let Some(r) = self.retry {
            m.insert("retry".into(), Value::from(r));
        }
        Value::Object(m)
    }
}

/// Splits a `text/event-stream` body into its events. A last event without its blank line is
/// not dispatched (browsers drop it too).
pub fn sse_events(body: &[u8]) -> Vec<SseEvent> {
    SseParser::default().feed(body)
}

/// An event stream read piece by piece: [`SseParser::feed`] the bytes as they come and get
/// the events they complete.
#[derive(Debug, Clone, Default)]
pub struct SseParser {
    /// The bytes of a line not yet ended.
    line: Vec<u8>,
    /// The last byte fed ended a line with CR: an LF right after it belongs to that line end.
    after_cr: bool,
    /// Bytes fed so far.
    fed: usize,
    /// Bytes fed through the end of the last blank line.
    complete: usize,
    event: Option<String>,
    data: Option<String>,
    id: Option<String>,
    retry: Option<u64>,
}

impl SseParser {
    /// Reads `bytes`, the stream's next piece; the events they complete, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        let mut out = Vec::new();
        for &b in bytes {
            self.fed += 1;
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                if self.complete == self.fed - 1 {
                    self.complete = self.fed; // the CRLF of a blank line ends it
                }
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if line.is_empty() {
                        self.complete = self.fed;
                        out.extend(self.dispatch());
                    } else {
                        self.field(&String::from_utf8_lossy(&line));
                    }
                }
                _ => self.line.push(b),
            }
        }
        out
    }

    /// Bytes fed up to the end of the last blank line: a body cut there holds only whole
    /// events (and comments).
    pub fn complete_len(&self) -> usize {
        self.complete
    }

    /// The event under way when the stream ended without its blank line, for a lenient
    /// reader (a model provider that closes right after its last event); browsers drop it.
    pub fn finish(mut self) -> Option<SseEvent> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.field(&String::from_utf8_lossy(&line));
        }
        self.dispatch()
    }

    /// The event the fields so far make, if it has data; the event's fields start over.
    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        let retry = self.retry.take();
        let data = self.data.take()?;
        Some(SseEvent {
            event,
            data,
            id: self.id.clone(),
            retry,
        })
    }

    fn field(&mut self, line: &str) {
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_string()),
            "id" if !value.contains('\0') => {
                self.id = (!value.is_empty()).then(|| value.to_string());
            }
            "retry" => self.retry = value.parse().ok(),
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_split_into_events_with_comments_multi_line_data_and_crlf() {
        let body = b": comment\nevent: token\ndata: {\"n\": 1}\n\nretry: 10\ndata: {\"n\":\r\ndata: 2}\r\n\nevent: dangling\ndata: 3";
        assert_eq!(
            sse_events(body),
            vec![
                SseEvent {
                    event: Some("token".into()),
                    data: "{\"n\": 1}".into(),
                    ..SseEvent::default()
                },
                SseEvent {
                    data: "{\"n\":\n2}".into(),
                    retry: Some(10),
                    ..SseEvent::default()
                },
            ]
        );
    }

    #[test]
    fn lone_carriage_returns_end_lines_and_ids_persist() {
        let body = b"id: 7\rdata: a\r\rdata: b\r\rid\ndata: c\n\n";
        let events = sse_events(body);
        let seen: Vec<_> = events
            .iter()
            .map(|e| (e.data.as_str(), e.id.as_deref()))
            .collect();
        assert_eq!(seen, [("a", Some("7")), ("b", Some("7")), ("c", None)]);
    }

    #[test]
    fn events_come_whole_whatever_the_pieces() {
        let body = b"data: one\r\n\r\n: keep-alive\n\nevent: x\ndata: two\n\ndata: three";
        let whole = sse_events(body);
        for size in 1..body.len() {
            let mut parser = SseParser::default();
            let pieces: Vec<SseEvent> = body.chunks(size).flat_map(|c| parser.feed(c)).collect();
            assert_eq!(pieces, whole, "pieces of {size}");
            assert!(body[..parser.complete_len()].ends_with(b"data: two\n\n"));
            assert_eq!(parser.finish().map(|e| e.data).as_deref(), Some("three"));
        }
    }

    #[test]
    fn events_without_data_are_not_dispatched() {
        assert!(sse_events(b"event: ping\n\n: only a comment\n\n").is_empty());
        assert_eq!(sse_events(b"data\n\n")[0].data, "");
    }
}
