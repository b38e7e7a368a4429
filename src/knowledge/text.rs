//! Turning what a source holds into plain text, a title, and overlapping chunks.
//!
//! Extraction is deliberately small and dependency-free: HTML loses its tags, scripts and
//! styles (entities decoded); JSON becomes `path: value` lines of its strings, numbers and
//! booleans; text and Markdown pass through. Chunks are windows of `chunk_size` characters
//! that overlap by `overlap` characters and end at whitespace when one is near.

use serde_json::Value;

/// The kinds of content ingest understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Text,
    Markdown,
    Html,
    Json,
}

impl ContentKind {
    /// The MIME type stored for a document of this kind.
    pub fn mime(self) -> &'static str {
        match self {
            ContentKind::Text => "text/plain",
            ContentKind::Markdown => "text/markdown",
            ContentKind::Html => "text/html",
            ContentKind::Json => "application/json",
        }
    }

    /// The kind of a MIME type (parameters ignored), if it is one ingest reads.
    pub fn from_mime(mime: &str) -> Option<Self> {
        let essence = mime
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/plain" => Some(ContentKind::Text),
            "text/markdown" | "text/x-markdown" => Some(ContentKind::Markdown),
            "text/html" | "application/xhtml+xml" => Some(ContentKind::Html),
            "application/json" => Some(ContentKind::Json),
            e if e.ends_with("+json") => Some(ContentKind::Json),
            _ => None,
        }
    }

    /// The kind of a file name's extension, if it is one ingest reads.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let ext = name.rsplit_once('.')?.1.to_ascii_lowercase();
        match ext.as_str() {
            "txt" | "text" | "rst" | "csv" | "log" => Some(ContentKind::Text),
            "md" | "markdown" | "mdx" => Some(ContentKind::Markdown),
            "html" | "htm" | "xhtml" => Some(ContentKind::Html),
            "json" => Some(ContentKind::Json),
            _ => None,
        }
    }
}

/// Why content could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("the content is not valid JSON: {0}")]
    Json(String),
}

/// The plain text of `raw` and the title it declares, if any.
pub fn extract(raw: &str, kind: ContentKind) -> Result<(String, Option<String>), ExtractError> {
    match kind {
        ContentKind::Text => Ok((raw.to_string(), None)),
        ContentKind::Markdown => Ok((raw.to_string(), markdown_title(raw))),
        ContentKind::Html => Ok(html_to_text(raw)),
        ContentKind::Json => {
            let value: Value =
                serde_json::from_str(raw).map_err(|e| ExtractError::Json(e.to_string()))?;
            let title = ["title", "name"]
                .iter()
                .find_map(|k| value.get(*k).and_then(Value::as_str))
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty());
            let mut lines = Vec::new();
            flatten_json("", &value, &mut lines);
            Ok((lines.join("\n"), title))
        }
    }
}

fn flatten_json(path: &str, value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                flatten_json(&p, v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten_json(&format!("{path}[{i}]"), v, out);
            }
        }
        Value::String(s) => out.push(format!("{path}: {s}")),
        Value::Number(n) => out.push(format!("{path}: {n}")),
        Value::Bool(b) => out.push(format!("{path}: {b}")),
        Value::Null => {}
    }
}

fn markdown_title(raw: &str) -> Option<String> {
    raw.lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("# "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// A first line, as a fallback title: at most 120 characters.
pub fn first_line_title(text: &str) -> Option<String> {
    let line = text.lines().map(str::trim).find(|l| !l.is_empty())?;
    let line = line.trim_start_matches('#').trim();
    Some(line.chars().take(120).collect())
}

fn decode_entities(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let end = rest.find(';').filter(|e| *e <= 10);
        let Some(end) = end else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some(' '),
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32),
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Elements that start a new line of text.
const BLOCK_ELEMENTS: &[&str] = &[
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "table",
    "section",
    "article",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "header",
    "footer",
    "nav",
];

/// Elements whose content is not visible text.
const HIDDEN_ELEMENTS: &[&str] = &["script", "style", "title", "noscript"];

/// The visible text of an HTML page (block elements become line breaks) and its `<title>`.
pub fn html_to_text(html: &str) -> (String, Option<String>) {
    let lower = html.to_ascii_lowercase();
    let mut out = String::with_capacity(html.len() / 2);
    let mut i = 0;
    let len = html.len();
    let mut text_start = 0;
    while i < len {
        if html.as_bytes()[i] != b'<' {
            i += 1;
            continue;
        }
        out.push_str(&decode_entities(&html[text_start..i]));
        i = if lower[i..].starts_with("<!--") {
            lower[i..].find("-->").map_or(len, |e| i + e + 3)
        } else {
            past_tag(&lower, i, &mut out)
        };
        text_start = i;
    }
    if text_start < len {
        out.push_str(&decode_entities(&html[text_start..]));
    }
    (collapse_blank_space(&out), html_title(html, &lower))
}

/// The decoded, trimmed `<title>` of an HTML page (`lower` is the page lower-cased), if any.
fn html_title(html: &str, lower: &str) -> Option<String> {
    let start = lower.find("<title")?;
    let open_end = start + lower[start..].find('>')? + 1;
    let close = open_end + lower[open_end..].find("</title")?;
    let t = decode_entities(html.get(open_end..close)?)
        .trim()
        .to_string();
    (!t.is_empty()).then_some(t)
}

/// Where the text goes on after the tag at `i` of the lower-cased page: after the tag, or
/// after the whole element when its content is hidden. A block element breaks the line in
/// `out`.
fn past_tag(lower: &str, i: usize, out: &mut String) -> usize {
    let len = lower.len();
    let tag_end = lower[i..].find('>').map_or(len, |e| i + e + 1);
    let name: String = lower[i + 1..tag_end.min(len)]
        .trim_start_matches('/')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let closing = lower[i + 1..].starts_with('/');
    if !closing && HIDDEN_ELEMENTS.contains(&name.as_str()) {
        let close = format!("</{name}");
        return lower[tag_end..]
            .find(&close)
            .and_then(|e| {
                let c = tag_end + e;
                lower[c..].find('>').map(|g| c + g + 1)
            })
            .unwrap_or(len);
    }
    if BLOCK_ELEMENTS.contains(&name.as_str()) {
        out.push('\n');
    }
    tag_end
}

/// `text` with runs of blank space collapsed and blank lines dropped; lines kept.
fn collapse_blank_space(text: &str) -> String {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// One chunk: its text and where it sits in the document (character offsets).
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// Splits `text` into windows of at most `size` characters, each starting `overlap`
/// characters before the previous one ended. A window ends at the last whitespace in its
/// final fifth when there is one, so words are rarely cut. Blank windows are dropped.
pub fn chunk(text: &str, size: usize, overlap: usize) -> Vec<Chunk> {
    let size = size.max(1);
    let overlap = overlap.min(size.saturating_sub(1));
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let n = chars.len();
    let byte_at = |ci: usize| chars.get(ci).map_or(text.len(), |(b, _)| *b);
    let mut out = Vec::new();
    let mut start = 0usize;
    while start < n {
        let mut end = (start + size).min(n);
        if end < n {
            let floor = end - size / 5;
            if let Some(ws) = (floor.max(start + 1)..end)
                .rev()
                .find(|&ci| chars[ci].1.is_whitespace())
            {
                end = ws + 1;
            }
        }
        let piece = text[byte_at(start)..byte_at(end)].trim();
        if !piece.is_empty() {
            out.push(Chunk {
                text: piece.to_string(),
                start,
                end,
            });
        }
        if end >= n {
            break;
        }
        let next = end.saturating_sub(overlap);
        start = if next > start { next } else { end };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_overlap_and_cover_the_text() {
        let text = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu";
        let chunks = chunk(text, 20, 5);
        assert!(chunks.len() > 3);
        assert!(chunks.iter().all(|c| c.text.chars().count() <= 20));
        assert_eq!(chunks[0].start, 0);
        assert_eq!(chunks.last().map(|c| c.end), Some(text.chars().count()));
        for pair in chunks.windows(2) {
            assert!(pair[1].start < pair[0].end, "windows overlap: {pair:?}");
            assert!(pair[1].start > pair[0].start, "windows advance: {pair:?}");
        }
        // Words are not cut where whitespace is near.
        assert!(chunks.iter().all(|c| text.contains(&c.text)));
    }

    #[test]
    fn chunking_handles_multibyte_text_and_degenerate_sizes() {
        let text = "é".repeat(50);
        let chunks = chunk(&text, 7, 100);
        assert!(chunks.iter().all(|c| c.text.chars().count() <= 7));
        assert_eq!(chunk("", 10, 2), Vec::new());
        assert_eq!(chunk("   ", 10, 2), Vec::new());
        assert_eq!(chunk("abc", 1, 0).len(), 3);
    }

    #[test]
    fn html_loses_tags_scripts_and_keeps_its_title() {
        let (text, title) = html_to_text(
            "<html><head><title>Install &amp; run</title><style>p{}</style></head>\
             <body><h1>Guide</h1><p>Run <b>cargo</b>&nbsp;build</p><script>alert(1)</script>\
             <!-- note --><p>Done &#33;</p></body></html>",
        );
        assert_eq!(title.as_deref(), Some("Install & run"));
        assert_eq!(text, "Guide\nRun cargo build\nDone !");
    }

    #[test]
    fn json_flattens_and_markdown_titles() {
        let (text, title) = extract(
            r#"{"title":"FAQ","items":[{"q":"why","n":2}]}"#,
            ContentKind::Json,
        )
        .expect("json");
        assert_eq!(title.as_deref(), Some("FAQ"));
        assert_eq!(text, "title: FAQ\nitems[0].q: why\nitems[0].n: 2");
        assert!(extract("{", ContentKind::Json).is_err());
        let (_, title) = extract("intro\n# Setup guide\ntext", ContentKind::Markdown).expect("md");
        assert_eq!(title.as_deref(), Some("Setup guide"));
        assert_eq!(
            ContentKind::from_file_name("a/B.MD"),
            Some(ContentKind::Markdown)
        );
        assert_eq!(
            ContentKind::from_mime("text/html; charset=utf-8"),
            Some(ContentKind::Html)
        );
        assert_eq!(ContentKind::from_file_name("x.pdf"), None);
    }
}
