//! The reading of a streamed chat completion: server-sent events whose data are JSON chunks,
//! ending with `data: [DONE]`. The plain provider and the tool model both read their streams
//! here; each keeps what the chunks say in its own [`Chunks`].

use conformance::sse::SseParser;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{ProviderError, storable, usage_of};

/// What a stream's chunks have said so far.
pub(crate) trait Chunks {
    /// Where the usage a chunk reports goes (the last one reported stands).
    fn usage(&mut self) -> &mut Option<(i64, i64)>;

    /// Takes one chunk's JSON, passing any text it adds on to `deltas`.
    async fn chunk(&mut self, v: &Value, deltas: &mpsc::Sender<String>);
}

/// Reads the stream of `resp` into `chunks` up to its `[DONE]`; `read_failed` is what a
/// failed read of the body answers.
pub(crate) async fn read(
    resp: reqwest::Response, chunks: &mut impl Chunks, deltas: &mpsc::Sender<String>,
    read_failed: impl Fn(reqwest::Error) -> ProviderError,
) -> Result<(), ProviderError> {
    let mut body = resp.bytes_stream();
    let mut events = SseParser::default();
    let mut finished = false;
    while !finished && let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(&read_failed)?;
        for event in events.feed(&chunk) {
            if read_event(&event.data, chunks, deltas).await? {
                finished = true;
                break;
            }
        }
    }
    // A server that closes right after `data: [DONE]` without its blank line has finished.
    if !finished && let Some(last) = events.finish() {
        finished = read_event(&last.data, chunks, deltas).await?;
    }
    if !finished {
        let why = "the stream ended before [DONE]";
        return Err(ProviderError::BadResponse(why.into()));
    }
    Ok(())
}

/// Reads one event's data (a chunk of JSON, or `[DONE]`) into `chunks`; `true` once the
/// stream says it is done.
async fn read_event(
    data: &str, chunks: &mut impl Chunks, deltas: &mpsc::Sender<String>,
) -> Result<bool, ProviderError> {
    if data.trim() == "[DONE]" {
        return Ok(true);
    }
    let v: Value = serde_json::from_str(data)
        .map_err(|e| ProviderError::BadResponse(format!("a stream event is not JSON: {e}")))?;
    if let Some(u) = usage_of(&v) {
        *chunks.usage() = Some(u);
    }
    chunks.chunk(&v, deltas).await;
    Ok(false)
}

/// Adds a delta's text (when it is a non-empty string) to `text` and passes it on.
pub(crate) async fn pass_on(
    delta: Option<&Value>, text: &mut String, deltas: &mpsc::Sender<String>,
) {
    if let Some(delta) = delta.and_then(Value::as_str)
        && !delta.is_empty()
    {
        let delta = storable(delta);
        text.push_str(&delta);
        let _ = deltas.send(delta).await;
    }
}
