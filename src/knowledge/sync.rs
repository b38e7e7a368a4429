//! Source syncs: fetch what a source points at, ingest it, record how it went.
//!
//! A sync is a row in `knowledge_syncs` (`queued` → `running` → `succeeded`/`failed`) and a
//! job of the same id on the shared jobs queue ([`KIND`]), so any replica's worker pool runs
//! it, at most [`CONCURRENT_SYNCS`] at once per process. A sync whose server died is failed
//! ("interrupted") when its lease runs out, by whichever replica finds it.
//! URL sources are fetched with one HTTP GET (HTML becomes text); GitHub sources walk the
//! GitHub REST contents API (`GET {api}/repos/{owner}/{repo}/contents/{path}?ref=…`) and ingest
//! the txt/md/html/json files found. A successful sync replaces the source's documents in one
//! transaction.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value};

use super::text::{self, ContentKind};
use super::{ChunkOptions, NewDocument};
use crate::db::crud::Child;
use crate::db::knowledge::{self as store, SourceRow, SourceStatus, SyncRow};
use crate::db::{Store, StoreError};

/// The job kind that runs a sync; the job's id is the sync's.
pub const KIND: &str = "knowledge_sync";
/// Syncs running at once per process.
pub const CONCURRENT_SYNCS: usize = 4;
/// The largest response a fetch reads.
const MAX_FETCH: usize = 5 * 1024 * 1024;
/// The most files a GitHub sync ingests.
const MAX_GITHUB_FILES: usize = 200;
/// How deep a GitHub sync descends into directories.
const MAX_GITHUB_DEPTH: usize = 6;

/// How long one fetch may take (the operator's egress policy may cap it lower).
const FETCH_TIME: Duration = Duration::from_secs(30);

/// The default GitHub REST API.
pub const GITHUB_API: &str = "https://api.github.com";

/// Runs syncs in the background.
#[derive(Debug, Clone)]
pub struct SyncRunner {
    store: Store,
    /// Fetches go out through the operator's egress policy.
    egress: crate::egress::Egress,
    github_api: String,
    permits: Arc<tokio::sync::Semaphore>,
    /// Woken after a sync's end is recorded (`knowledge.sync.completed`).
    events: crate::events::EventBus,
}

/// Queues `sync` (inside the transaction that writes its row).
pub fn enqueue(conn: &mut crate::db::DbConnection, sync: &SyncRow) -> crate::db::StoreResult<()> {
    crate::jobs::enqueue_row::<SyncRunner>(conn, &sync.org_id, &sync.id)
}

impl crate::jobs::RowJob for SyncRunner {
    const KIND: &'static str = KIND;

    async fn run_row(self, id: String) -> Result<(), String> {
        let loaded = self.load(id.clone()).await;
        let sync = loaded.map_err(|e| format!("cannot load sync {id}: {e}"))?;
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        // How the sync went is on its row; the job itself is done either way.
        self.run(sync).await;
        Ok(())
    }

    async fn abandon_row(self, id: String) {
        match self.load(id.clone()).await {
            Ok(sync) if !sync.status.is_finished() => {
                let interrupted = "interrupted: the server running it stopped".to_string();
                self.record_end(sync, Err(interrupted)).await;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(sync = %id, error = %e, "cannot fail an abandoned sync")
            }
        }
    }
}

/// What a source body stores besides its columns.
pub fn body_text(source: &SourceRow, key: &str) -> Option<String> {
    serde_json::from_str::<Value>(&source.body)
        .ok()?
        .get(key)?
        .as_str()
        .map(str::to_string)
}

impl SyncRunner {
    pub fn new(
        store: Store, github_api: &str, events: crate::events::EventBus,
        egress: crate::egress::Egress,
    ) -> Self {
        Self {
            store,
            egress,
            github_api: github_api.trim_end_matches('/').to_string(),
            permits: Arc::new(tokio::sync::Semaphore::new(CONCURRENT_SYNCS)),
            events,
        }
    }

    /// Sync `id`, whichever organization's (what its job names).
    async fn load(&self, id: String) -> crate::db::StoreResult<SyncRow> {
        self.store.run(move |conn| SyncRow::by_id(conn, &id)).await
    }

    async fn run(&self, sync: SyncRow) {
        let id = sync.id.clone();
        let (org, kb, src) = (
            sync.org_id.clone(),
            sync.kb_id.clone(),
            sync.source_id.clone(),
        );
        let loaded = self
            .store
            .run(move |conn| {
                store::start_sync(conn, &id)?;
                let source = SourceRow::get(conn, &org, &kb, &src)?;
                let kb = store::get(conn, &org, &kb)?;
                Ok((source, kb))
            })
            .await;
        let outcome = match loaded {
            Ok((source, kb)) => {
                let options = chunk_options_of(&kb.content.body);
                match self.fetch(&source).await {
                    Ok(docs) => self.ingest(&source, docs, options).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(format!("cannot load the source: {e}")),
        };
        self.record_end(sync, outcome).await;
    }

    /// Records how `sync` ended (documents and chunks, or why it failed) with the source's
    /// status and a `knowledge.sync.completed` event, in one transaction.
    async fn record_end(&self, sync: SyncRow, outcome: Result<(i64, i64), String>) {
        let done = sync.clone();
        let result = self
            .store
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    let now = crate::ids::now();
                    let (docs, chunks, error) = match &outcome {
                        Ok((docs, chunks)) => (*docs, *chunks, None),
                        Err(message) => (0, 0, Some(message.as_str())),
                    };
                    store::finish_sync(conn, &done.id, error, docs, chunks)?;
                    let status = if error.is_none() {
                        SourceStatus::Active
                    } else {
                        SourceStatus::Failed
                    };
                    store::set_source_status(conn, &done.source_id, status, Some(&now))?;
                    crate::events::publish(
                        conn,
                        &done.org_id,
                        "knowledge.sync.completed",
                        Some(&done.id),
                        serde_json::json!({
                            "sync_id": done.id,
                            "knowledge_base_id": done.kb_id,
                            "source_id": done.source_id,
                            "status": if error.is_none() { "completed" } else { "failed" },
                            "documents": docs,
                            "chunks": chunks,
                            "error": error,
                        }),
                    )
                })
            })
            .await;
        match result {
            Ok(_) => self.events.wake(),
            Err(e) => {
                tracing::warn!(sync = %sync.id, error = %e, "cannot record the end of a sync")
            }
        }
    }

    async fn ingest(
        &self, source: &SourceRow, docs: Vec<NewDocument>, options: ChunkOptions,
    ) -> Result<(i64, i64), String> {
        let (org, kb, source_id) = (
            source.org_id.clone(),
            source.kb_id.clone(),
            source.id.clone(),
        );
        let prepared: Vec<_> = docs
            .into_iter()
            .map(|d| super::prepare(&org, &kb, d, options))
            .collect();
        let counts = (
            i64::try_from(prepared.len()).unwrap_or(i64::MAX),
            prepared.iter().map(|(d, _)| d.chunk_count).sum::<i64>(),
        );
        self.store
            .run(move |conn| {
                crate::db::write_transaction(conn, |conn| {
                    // The knowledge base or source may be gone by now: then nothing is written.
                    SourceRow::get(conn, &org, &kb, &source_id)?;
                    store::delete_source_documents(conn, &source_id)?;
                    super::write(conn, &prepared)
                })
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound => "the source was deleted during the sync".to_string(),
                other => format!("cannot store the documents: {other}"),
            })?;
        Ok(counts)
    }

    /// The documents a source holds now.
    pub async fn fetch(&self, source: &SourceRow) -> Result<Vec<NewDocument>, String> {
        let body: Value = serde_json::from_str(&source.body).unwrap_or(Value::Null);
        let metadata = body
            .get("metadata")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        match source.source_type.as_str() {
            "text" | "file" => {
                let raw = body_text(source, "text").unwrap_or_default();
                let kind = body_text(source, "content_type")
                    .and_then(|m| ContentKind::from_mime(&m))
                    .unwrap_or(ContentKind::Text);
                let label = body_text(source, "file_name").unwrap_or_else(|| "inline".into());
                let title = body_text(source, "title");
                Ok(vec![document(
                    &raw,
                    kind,
                    title,
                    &label,
                    &source.source_type,
                    source,
                    metadata,
                )])
            }
            "url" => {
                let url = body_text(source, "url").ok_or("the source has no URL")?;
                let (bytes, mime) = self.get(&url, &[]).await?;
                let kind = mime
                    .as_deref()
                    .and_then(ContentKind::from_mime)
                    .or_else(|| ContentKind::from_file_name(&url))
                    .unwrap_or(ContentKind::Html);
                let raw = String::from_utf8_lossy(&bytes);
                Ok(vec![document(
                    &raw, kind, None, &url, "url", source, metadata,
                )])
            }
            "github" => self.fetch_github(source, &body, metadata).await,
            other => Err(format!("cannot sync a {other} source")),
        }
    }

    async fn get(
        &self, url: &str, headers: &[(&str, &str)],
    ) -> Result<(Vec<u8>, Option<String>), String> {
        let target = url::Url::parse(url).map_err(|e| format!("{url} is not a URL: {e}"))?;
        let mut req = self.egress.request(reqwest::Method::GET, target);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = self
            .egress
            .send(req, FETCH_TIME, &[])
            .await
            .map_err(|e| format!("GET {url} failed: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}"));
        }
        let mime = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = crate::egress::read_capped(resp, MAX_FETCH, false)
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        Ok((bytes, mime))
    }

    async fn github_json(&self, url: &str) -> Result<Value, String> {
        let (bytes, _) = self
            .get(
                url,
                &[
                    ("accept", "application/vnd.github+json"),
                    ("x-github-api-version", "2022-11-28"),
                ],
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{url}: not JSON: {e}"))
    }

    async fn fetch_github(
        &self, source: &SourceRow, body: &Value, metadata: Map<String, Value>,
    ) -> Result<Vec<NewDocument>, String> {
        let repository = body
            .get("repository")
            .and_then(Value::as_str)
            .ok_or("the source has no repository")?;
        let (owner, repo) = repository
            .split_once('/')
            .ok_or("the repository is not owner/repo")?;
        let branch = body.get("branch").and_then(Value::as_str);
        let mut pending: Vec<(String, usize)> = match body.get("paths").and_then(Value::as_array) {
            Some(paths) if !paths.is_empty() => paths
                .iter()
                .filter_map(Value::as_str)
                .map(|p| (p.trim_matches('/').to_string(), 0))
                .collect(),
            _ => vec![(String::new(), 0)],
        };
        let mut docs = Vec::new();
        while let Some((path, depth)) = pending.pop() {
            let mut url = format!(
                "{}/repos/{}/{}/contents/{}",
                self.github_api,
                encode_path(owner),
                encode_path(repo),
                encode_path(&path)
            );
            if let Some(b) = branch {
                url.push_str("?ref=");
                url.push_str(&encode_path(b));
            }
            let value = self.github_json(&url).await?;
            match value {
                Value::Array(entries) => {
                    for entry in entries {
                        let kind = entry.get("type").and_then(Value::as_str).unwrap_or("");
                        let Some(p) = entry.get("path").and_then(Value::as_str) else {
                            continue;
                        };
                        if kind == "dir" && depth < MAX_GITHUB_DEPTH {
                            pending.push((p.to_string(), depth + 1));
                        } else if kind == "file" && ContentKind::from_file_name(p).is_some() {
                            pending.push((p.to_string(), depth));
                        }
                    }
                }
                Value::Object(file) => {
                    let Some(kind) = ContentKind::from_file_name(&path) else {
                        continue;
                    };
                    let content = file.get("content").and_then(Value::as_str).unwrap_or("");
                    let cleaned: String = content.chars().filter(|c| !c.is_whitespace()).collect();
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(cleaned)
                        .map_err(|e| format!("{path}: content is not base64: {e}"))?;
                    let raw = String::from_utf8_lossy(&bytes);
                    let label = format!("github:{owner}/{repo}/{path}");
                    let mut meta = metadata.clone();
                    meta.insert("path".into(), path.clone().into());
                    docs.push(document(&raw, kind, None, &label, "github", source, meta));
                    if docs.len() >= MAX_GITHUB_FILES {
                        break;
                    }
                }
                _ => return Err(format!("{url}: unexpected answer")),
            }
        }
        Ok(docs)
    }
}

fn encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A document from raw content: extracted, titled, labelled with its source.
pub fn document(
    raw: &str, kind: ContentKind, title: Option<String>, label: &str, source_type: &str,
    source: &SourceRow, metadata: Map<String, Value>,
) -> NewDocument {
    // Content that does not parse as its kind (JSON, say) is indexed as plain text.
    let (plain, found_title, kind) = match text::extract(raw, kind) {
        Ok((t, found)) => (t, found, kind),
        Err(_) => (raw.to_string(), None, ContentKind::Text),
    };
    let title = title
        .or(found_title)
        .or_else(|| text::first_line_title(&plain))
        .unwrap_or_else(|| label.to_string());
    NewDocument {
        title,
        text: plain,
        content_type: kind.mime().to_string(),
        source: label.to_string(),
        source_type: source_type.to_string(),
        source_id: Some(source.id.clone()),
        metadata,
    }
}

/// The chunk options of a knowledge base's stored body.
pub fn chunk_options_of(kb_body: &str) -> ChunkOptions {
    let body: Value = serde_json::from_str(kb_body).unwrap_or(Value::Null);
    let defaults = ChunkOptions::default();
    let get = |k: &str, d: usize| {
        body.pointer(&format!("/processing_options/{k}"))
            .and_then(Value::as_u64)
            .and_then(|v| usize::try_from(v).ok())
            .unwrap_or(d)
    };
    ChunkOptions {
        chunk_size: get("chunk_size", defaults.chunk_size),
        overlap: get("overlap", defaults.overlap),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_percent_encoded_but_keep_slashes() {
        assert_eq!(encode_path("docs/a b#.md"), "docs/a%20b%23.md");
    }

    #[test]
    fn chunk_options_fall_back_to_defaults() {
        let o = chunk_options_of(r#"{"processing_options":{"chunk_size":300}}"#);
        assert_eq!((o.chunk_size, o.overlap), (300, 200));
        let o = chunk_options_of("not json");
        assert_eq!((o.chunk_size, o.overlap), (1000, 200));
    }
}
