//! The knowledge resource: knowledge bases, sources, documents, chunks, ingest, syncs,
//! query and search.
//!
//! Extraction and chunking happen before a transaction opens; everything an operation writes
//! (a knowledge base and its first sources, an ingest's documents and chunks) is written in one
//! transaction, so a failure leaves nothing half-written. Retrieval goes through
//! [`crate::knowledge::search`], the same function the execution engine uses.

use agentplane_api::Json;
use agentplane_api::models::{
    DocumentInput, IngestResult, KnowledgeBase, KnowledgeBaseInput, KnowledgeBaseList,
    KnowledgeBasePatch, KnowledgeChunk, KnowledgeChunkList, KnowledgeDocument,
    KnowledgeDocumentList, KnowledgeQuery, KnowledgeResult, KnowledgeResults, KnowledgeSource,
    KnowledgeSourceList, KnowledgeSourceStatus, KnowledgeSourceType, ProcessingOptions, SyncJob,
    SyncStatus,
};
use agentplane_api::*;
use poem_openapi::types::MaybeUndefined;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::Handlers;
use super::idem;
use super::paging::PageRequest;
use super::resource::{Resource, created};
use crate::auth::Caller;
use crate::db::crud::{Child, Stored};
use crate::db::knowledge::{
    self as store, ChunkRow, CountedKb, DocumentRow, KbBody, KbChanges, KbFilter, KbRow,
    ProcessingBody, SourceBody, SourceRow, SourceStatus, SyncRow,
};
use crate::db::types::same_variants;
use crate::db::{DbConnection, Found, StoreError};
use crate::error::{Failure, Kind, detail};
use crate::knowledge::sync::{self, chunk_options_of};
use crate::knowledge::text::ContentKind;
use crate::knowledge::{ChunkOptions, SearchOptions};

const SOURCE_NOT_FOUND: &str = "KNOWLEDGE_SOURCE_NOT_FOUND";
const DOCUMENT_NOT_FOUND: &str = "KNOWLEDGE_DOCUMENT_NOT_FOUND";
const SYNC_NOT_FOUND: &str = "KNOWLEDGE_SYNC_NOT_FOUND";
/// Results a query returns unless told otherwise.
const DEFAULT_TOP_K: i64 = 5;

pub(super) fn object(value: Option<Value>) -> Map<String, Value> {
    match value {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

pub(super) fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// Rows → API types.

same_variants!(SourceStatus <=> KnowledgeSourceStatus {
    Pending, Syncing, Active, Failed
});
same_variants!(store::SyncStatus <=> SyncStatus {
    Queued, Running, Succeeded, Failed
});

impl Resource for KnowledgeBase {
    type Row = CountedKb;
    const NOT_FOUND: &'static str = "KNOWLEDGE_BASE_NOT_FOUND";

    fn from_row(kb: &CountedKb) -> Result<KnowledgeBase, StoreError> {
        Ok(kb_model(&kb.row, kb.counts))
    }
}

/// A knowledge base with its counts of documents, chunks and sources.
fn kb_model(row: &KbRow, counts: (i64, i64, i64)) -> KnowledgeBase {
    let body = row.body();
    let options = chunk_options_of(&row.content.body);
    KnowledgeBase {
        id: row.id.clone(),
        name: row.content.name.clone(),
        type_: row.content.kb_type.clone(),
        description: row.content.description.clone(),
        embedding_model: body.embedding_model,
        processing_options: ProcessingOptions {
            chunk_size: Some(to_i64(options.chunk_size)),
            overlap: Some(to_i64(options.overlap)),
            extract_metadata: Some(body.processing_options.extract_metadata.unwrap_or(true)),
        },
        metadata: Value::Object(body.metadata),
        document_count: counts.0,
        chunk_count: counts.1,
        source_count: counts.2,
        version: row.version,
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
    }
}

/// What a new source answers: the source and its `Location`.
fn created_source(row: &SourceRow) -> (Json<KnowledgeSource>, String) {
    let location = format!("/v1/knowledge/{}/sources/{}", row.kb_id, row.id);
    (Json(source_model(row)), location)
}

fn source_model(row: &SourceRow) -> KnowledgeSource {
    let body = row.body();
    KnowledgeSource {
        id: row.id.clone(),
        knowledge_base_id: row.kb_id.clone(),
        name: row.name.clone(),
        type_: KnowledgeSourceType::from_wire(&row.source_type)
            .unwrap_or(KnowledgeSourceType::Text),
        status: row.status.into(),
        url: body.url,
        repository: body.repository,
        branch: body.branch,
        paths: body.paths,
        file_name: body.file_name,
        metadata: Value::Object(body.metadata),
        last_sync_at: row.last_sync_at.clone(),
        created_at: row.created_at.clone(),
        updated_at: row.updated_at.clone(),
    }
}

fn document_model(row: &DocumentRow) -> KnowledgeDocument {
    KnowledgeDocument {
        id: row.id.clone(),
        knowledge_base_id: row.kb_id.clone(),
        source_id: row.source_id.clone(),
        title: row.title.clone(),
        content_type: row.content_type.clone(),
        metadata: Value::Object(object(serde_json::from_str(&row.metadata).ok())),
        chunk_count: row.chunk_count,
        char_count: row.char_count,
        created_at: row.created_at.clone(),
    }
}

fn chunk_model(row: &ChunkRow) -> KnowledgeChunk {
    KnowledgeChunk {
        id: row.id.clone(),
        document_id: row.document_id.clone(),
        knowledge_base_id: row.kb_id.clone(),
        position: row.position,
        text: row.text.clone(),
        metadata: Value::Object(object(serde_json::from_str(&row.metadata).ok())),
    }
}

fn sync_model(row: &SyncRow) -> SyncJob {
    SyncJob {
        id: row.id.clone(),
        knowledge_base_id: row.kb_id.clone(),
        source_id: row.source_id.clone(),
        status: row.status.into(),
        error: row.error.clone(),
        documents: row.documents,
        chunks: row.chunks,
        created_at: row.created_at.clone(),
        started_at: row.started_at.clone(),
        finished_at: row.finished_at.clone(),
    }
}

/// The organization's knowledge bases among `ids`, by id (ids it does not have are left out).
pub(crate) fn knowledge_bases_among(
    conn: &mut DbConnection, org_id: &str, ids: &[String],
) -> Result<std::collections::BTreeMap<String, KnowledgeBase>, StoreError> {
    let mut found = std::collections::BTreeMap::new();
    for id in ids {
        if let Some(kb) = CountedKb::get(conn, org_id, id).found()? {
            found.insert(id.clone(), KnowledgeBase::from_row(&kb)?);
        }
    }
    Ok(found)
}

// Source specs.

/// A source as a request describes it (the spec's `KnowledgeSourceInput`).
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum SourceSpec {
    Text {
        name: Option<String>,
        title: Option<String>,
        text: String,
        content_type: Option<String>,
        metadata: Option<Map<String, Value>>,
    },
    Url {
        name: Option<String>,
        url: String,
        metadata: Option<Map<String, Value>>,
    },
    Github {
        name: Option<String>,
        repository: String,
        branch: Option<String>,
        paths: Option<Vec<String>>,
        metadata: Option<Map<String, Value>>,
    },
}

fn parse_source(value: &Value, field: &str, rid: &str) -> Result<SourceSpec, Failure> {
    serde_json::from_value(value.clone()).map_err(|e| {
        let message = format!("not a text, url or github source: {e}");
        Failure::with_details(
            Kind::Unprocessable,
            "VALIDATION_ERROR",
            "the body does not match its schema",
            vec![detail(field, "oneOf", message)],
            rid,
        )
    })
}

/// What adding one source writes: the source, the documents of inline text, and a sync to
/// queue for fetched sources when asked.
struct PlannedSource {
    source: SourceRow,
    documents: Vec<(DocumentRow, Vec<ChunkRow>)>,
    sync: Option<SyncRow>,
}

fn plan_source(
    org_id: &str, kb_id: &str, spec: SourceSpec, options: ChunkOptions, queue_sync: bool,
) -> PlannedSource {
    let id = crate::ids::new_id("src");
    plan_source_as(org_id, kb_id, spec, options, queue_sync, id)
}

/// [`plan_source`] for the source `id` (a new one, or one being replaced).
fn plan_source_as(
    org_id: &str, kb_id: &str, spec: SourceSpec, options: ChunkOptions, queue_sync: bool,
    id: String,
) -> PlannedSource {
    let now = crate::ids::now();
    let PlannedBody {
        body,
        name,
        source_type,
        metadata,
    } = source_body(&spec);
    let is_text = source_type == "text";
    let source = SourceRow {
        id: id.clone(),
        org_id: org_id.to_string(),
        kb_id: kb_id.to_string(),
        name,
        source_type: source_type.to_string(),
        status: if is_text {
            SourceStatus::Active
        } else {
            SourceStatus::Pending
        },
        body: body_text(&body),
        last_sync_at: is_text.then(|| now.clone()),
        created_at: now.clone(),
        updated_at: now.clone(),
    };
    let documents = text_documents(spec, &source, metadata, options);
    let sync = (queue_sync && !is_text).then(|| SyncRow {
        id: crate::ids::new_id("sync"),
        org_id: org_id.to_string(),
        kb_id: kb_id.to_string(),
        source_id: id,
        status: store::SyncStatus::Queued,
        error: None,
        documents: 0,
        chunks: 0,
        created_at: now,
        started_at: None,
        finished_at: None,
    });
    PlannedSource {
        source,
        documents,
        sync,
    }
}

/// What a source stores of its spec.
struct PlannedBody {
    body: SourceBody,
    name: String,
    source_type: &'static str,
    metadata: Option<Map<String, Value>>,
}

/// A JSON document as stored (serializing a map or a serde struct cannot fail).
fn body_text(body: &impl serde::Serialize) -> String {
    serde_json::to_string(body).unwrap_or_default()
}

fn source_body(spec: &SourceSpec) -> PlannedBody {
    let mut body = SourceBody::default();
    let (name, source_type, metadata) = match spec {
        SourceSpec::Text {
            name,
            title,
            text,
            content_type,
            metadata,
        } => {
            body.text = Some(text.clone());
            body.title = title.clone();
            body.content_type = Some(content_type.clone().unwrap_or_else(|| "text/plain".into()));
            (
                name.clone().unwrap_or_else(|| "inline text".into()),
                "text",
                metadata.clone(),
            )
        }
        SourceSpec::Url {
            name,
            url,
            metadata,
        } => {
            body.url = Some(url.clone());
            (
                name.clone().unwrap_or_else(|| url.clone()),
                "url",
                metadata.clone(),
            )
        }
        SourceSpec::Github {
            name,
            repository,
            branch,
            paths,
            metadata,
        } => {
            let repo = repository
                .trim_start_matches("https://github.com/")
                .trim_end_matches('/')
                .to_string();
            body.repository = Some(repo.clone());
            body.branch = branch.clone();
            body.paths = paths.clone();
            (name.clone().unwrap_or(repo), "github", metadata.clone())
        }
    };
    body.metadata = metadata.clone().unwrap_or_default();
    PlannedBody {
        body,
        name,
        source_type,
        metadata,
    }
}

/// The document (and its chunks) of an inline text source; none for fetched sources.
fn text_documents(
    spec: SourceSpec, source: &SourceRow, metadata: Option<Map<String, Value>>,
    options: ChunkOptions,
) -> Vec<(DocumentRow, Vec<ChunkRow>)> {
    let SourceSpec::Text {
        title,
        text,
        content_type,
        ..
    } = spec
    else {
        return Vec::new();
    };
    let kind = content_type
        .as_deref()
        .and_then(ContentKind::from_mime)
        .unwrap_or(ContentKind::Text);
    let doc = sync::document(
        &text,
        kind,
        title,
        "inline",
        "text",
        source,
        metadata.unwrap_or_default(),
    );
    vec![crate::knowledge::prepare(
        &source.org_id,
        &source.kb_id,
        doc,
        options,
    )]
}

/// Whether `new` fetches what `old` fetched: both `url` sources of one page, or both `github`
/// sources of one repository, branch and paths. Inline text is always new.
fn same_fetch(old: &SourceRow, new: &SourceRow) -> bool {
    let fetched = |row: &SourceRow| {
        let b = row.body();
        (b.url, b.repository, b.branch, b.paths)
    };
    old.source_type == new.source_type
        && matches!(new.source_type.as_str(), "url" | "github")
        && fetched(old) == fetched(new)
}

/// Writes planned sources (inside a transaction).
fn write_sources(conn: &mut DbConnection, planned: &[PlannedSource]) -> Result<(), StoreError> {
    for p in planned {
        SourceRow::insert(conn, &p.source)?;
        crate::knowledge::write(conn, &p.documents)?;
        if let Some(s) = &p.sync {
            SyncRow::insert(conn, s)?;
            crate::knowledge::sync::enqueue(conn, s)?;
        }
    }
    Ok(())
}

/// What a new knowledge base holds once `planned` is written: documents, chunks, sources.
fn planned_counts(planned: &[PlannedSource]) -> (i64, i64, i64) {
    let documents = || planned.iter().flat_map(|p| p.documents.iter());
    (
        to_i64(documents().count()),
        to_i64(documents().map(|(_, chunks)| chunks.len()).sum()),
        to_i64(planned.len()),
    )
}

// Knowledge-base bodies.

fn processing_body(options: Option<&ProcessingOptions>) -> ProcessingBody {
    let o = options.cloned().unwrap_or_default();
    let size = o.chunk_size.unwrap_or(1000);
    ProcessingBody {
        chunk_size: Some(size),
        // An overlap of a whole chunk would never advance.
        overlap: Some(o.overlap.unwrap_or(200).min(size - 1)),
        extract_metadata: Some(o.extract_metadata.unwrap_or(true)),
    }
}

fn kb_changes(input: &KnowledgeBaseInput) -> KbChanges {
    let body = KbBody {
        processing_options: processing_body(input.processing_options.as_ref()),
        metadata: object(input.metadata.clone()),
        embedding_model: input.embedding_model.clone(),
    };
    KbChanges {
        name: input.name.clone(),
        kb_type: input.type_.clone().unwrap_or_else(|| "general".into()),
        description: input.description.clone(),
        body: body_text(&body),
    }
}

/// Plans the sources of a request body (`sources[i]`), refusing the first one that is not a
/// source.
fn plan_sources<'a>(
    kb: &KbRow, values: impl Iterator<Item = &'a Value>, options: ChunkOptions, queue_sync: bool,
    rid: &str,
) -> Result<Vec<PlannedSource>, Failure> {
    values
        .enumerate()
        .map(|(i, value)| {
            parse_source(value, &format!("sources[{i}]"), rid)
                .map(|spec| plan_source(&kb.org_id, &kb.id, spec, options, queue_sync))
        })
        .collect()
}

/// A new knowledge base of `org_id` as sent.
fn new_kb_row(org_id: &str, input: &KnowledgeBaseInput) -> KbRow {
    KbRow::new(org_id, crate::ids::new_id("kb"), kb_changes(input))
}

/// The columns of `current` with a PATCH applied: fields not sent keep their value, and
/// processing options not sent keep theirs.
fn patched_kb(patch: &KnowledgeBasePatch, current: &KbRow) -> KbChanges {
    let mut body = current.body();
    if let Some(o) = &patch.processing_options {
        let old = chunk_options_of(&current.content.body);
        let merged = ProcessingOptions {
            chunk_size: o.chunk_size.or(Some(to_i64(old.chunk_size))),
            overlap: o.overlap.or(Some(to_i64(old.overlap))),
            extract_metadata: o.extract_metadata,
        };
        body.processing_options = processing_body(Some(&merged));
    }
    if let Some(m) = &patch.metadata {
        body.metadata = object(Some(m.clone()));
    }
    if let Some(m) = &patch.embedding_model {
        body.embedding_model = Some(m.clone());
    }
    KbChanges {
        name: patch
            .name
            .clone()
            .unwrap_or_else(|| current.content.name.clone()),
        kb_type: patch
            .type_
            .clone()
            .unwrap_or_else(|| current.content.kb_type.clone()),
        description: match &patch.description {
            MaybeUndefined::Undefined => current.content.description.clone(),
            MaybeUndefined::Null => None,
            MaybeUndefined::Value(d) => Some(d.clone()),
        },
        body: body_text(&body),
    }
}

/// The search a query asks for, and whether its results carry metadata.
fn query_options(q: &mut KnowledgeQuery) -> (SearchOptions, bool) {
    let opts = q.options.clone().unwrap_or_default();
    let top_k = q
        .top_k
        .or(q.max_results)
        .or(opts.max_results)
        .unwrap_or(DEFAULT_TOP_K);
    let options = SearchOptions {
        top_k: usize::try_from(top_k).unwrap_or(5),
        min_score: q.min_score.or(opts.min_score),
        filters: q.filters.take().unwrap_or_default().into_iter().collect(),
    };
    let include = q.include_metadata.or(opts.include_metadata).unwrap_or(true);
    (options, include)
}

/// The knowledge base's chunking, with an ingest's own size and overlap.
fn ingest_options(kb: &KbRow, chunk_size: Option<i64>, overlap: Option<i64>) -> ChunkOptions {
    let mut options = chunk_options_of(&kb.content.body);
    if let Some(size) = chunk_size {
        options.chunk_size = usize::try_from(size).unwrap_or(options.chunk_size);
    }
    if let Some(overlap) = overlap {
        options.overlap = usize::try_from(overlap).unwrap_or(options.overlap);
    }
    options.overlap = options.overlap.min(options.chunk_size.saturating_sub(1));
    options
}

/// An ingested document, extracted and chunked.
fn inline_document(
    kb: &KbRow, d: DocumentInput, options: ChunkOptions,
) -> (DocumentRow, Vec<ChunkRow>) {
    let kind = d
        .content_type
        .map(|c| c.as_str())
        .and_then(ContentKind::from_mime)
        .unwrap_or(ContentKind::Text);
    let (text, found_title, kind) = match crate::knowledge::text::extract(&d.text, kind) {
        Ok((t, found)) => (t, found, kind),
        Err(_) => (d.text.clone(), None, ContentKind::Text),
    };
    let source = d.source.unwrap_or_else(|| "inline".into());
    let title = d
        .title
        .or(found_title)
        .or_else(|| crate::knowledge::text::first_line_title(&text))
        .unwrap_or_else(|| source.clone());
    let doc = crate::knowledge::NewDocument {
        title,
        text,
        content_type: kind.mime().to_string(),
        source,
        source_type: "inline".into(),
        source_id: None,
        metadata: object(d.metadata),
    };
    crate::knowledge::prepare(&kb.org_id, &kb.id, doc, options)
}

/// What an ingest answers: its documents (inline ones first), sources and queued syncs.
fn ingest_result(
    documents: &[(DocumentRow, Vec<ChunkRow>)], planned: &[PlannedSource],
) -> IngestResult {
    let source_documents = || planned.iter().flat_map(|p| p.documents.iter());
    IngestResult {
        documents: documents
            .iter()
            .chain(source_documents())
            .map(|(d, _)| document_model(d))
            .collect(),
        sources: planned.iter().map(|p| source_model(&p.source)).collect(),
        syncs: planned
            .iter()
            .filter_map(|p| p.sync.as_ref().map(sync_model))
            .collect(),
        chunks_created: documents
            .iter()
            .chain(source_documents())
            .map(|(d, _)| d.chunk_count)
            .sum(),
    }
}

/// An uploaded file's name, kind and text. The extension decides, then the part's
/// Content-Type; text without either is text; anything else is a 415.
fn uploaded_text(file: UploadedFile, rid: &str) -> Result<(String, ContentKind, String), Failure> {
    let file_name = file
        .file_name
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "upload".into());
    let kind = ContentKind::from_file_name(&file_name).or_else(|| {
        file.content_type
            .as_deref()
            .and_then(ContentKind::from_mime)
    });
    let text = match (kind, String::from_utf8(file.bytes)) {
        (Some(k), Ok(t)) => Some((k, t)),
        (None, Ok(t))
            if !file_name.contains('.')
                && file
                    .content_type
                    .as_deref()
                    .is_none_or(|c| c.starts_with("application/octet-stream")) =>
        {
            Some((ContentKind::Text, t))
        }
        _ => None,
    };
    let Some((kind, text)) = text else {
        let message = format!(
            "{file_name} is not UTF-8 text, Markdown, HTML or JSON; upload .txt, .md, .html or .json files"
        );
        return Err(Failure::with_details(
            Kind::UnsupportedMediaType,
            "UNSUPPORTED_FILE_TYPE",
            message.clone(),
            vec![detail("file", "content_type", message)],
            rid,
        ));
    };
    Ok((file_name, kind, text))
}

/// Makes a planned text source a file source: labelled by its file name, re-ingested from the
/// stored text on sync.
fn label_as_file(planned: &mut PlannedSource, file_name: &str) {
    planned.source.source_type = "file".into();
    let mut body = planned.source.body();
    body.file_name = Some(file_name.to_string());
    planned.source.body = body_text(&body);
    let relabel = |meta: &str| {
        let mut m: Map<String, Value> = serde_json::from_str(meta).unwrap_or_default();
        m.insert("source".into(), file_name.into());
        m.insert("source_type".into(), "file".into());
        body_text(&m)
    };
    for (doc, chunks) in &mut planned.documents {
        doc.metadata = relabel(&doc.metadata);
        for c in chunks.iter_mut() {
            c.metadata = relabel(&c.metadata);
        }
    }
}

/// Replaces a source in place (inside a transaction); `None` while it is being synced.
fn replace_source_row(
    conn: &mut DbConnection, org: &str, kb_id: &str, source_id: &str, spec: SourceSpec,
    options: ChunkOptions,
) -> Result<Option<SourceRow>, StoreError> {
    // Serializes with a sync being queued (which reads the row, then marks it).
    crate::db::lock_row(conn, "knowledge_sources", org, source_id)?;
    let old = SourceRow::get(conn, org, kb_id, source_id)?;
    if old.status == SourceStatus::Syncing {
        return Ok(None);
    }
    let mut planned = plan_source_as(org, kb_id, spec, options, false, old.id.clone());
    let source = &mut planned.source;
    source.created_at = old.created_at.clone();
    if same_fetch(&old, source) {
        // The same page or repository: what it fetched still stands.
        source.status = old.status;
        source.last_sync_at = old.last_sync_at.clone();
    } else {
        store::delete_source_documents(conn, &old.id)?;
        crate::knowledge::write(conn, &planned.documents)?;
    }
    store::replace_source(conn, &planned.source)?;
    Ok(Some(planned.source))
}

/// Queues a sync of a source (inside a transaction) and marks the source as syncing.
fn queue_sync(
    conn: &mut DbConnection, org: &str, kb_id: &str, source_id: &str,
) -> Result<SyncRow, StoreError> {
    // Serializes with a replace (which reads the row's status, then writes it).
    crate::db::lock_row(conn, "knowledge_sources", org, source_id)?;
    let source = SourceRow::get(conn, org, kb_id, source_id)?;
    let row = SyncRow {
        id: crate::ids::new_id("sync"),
        org_id: org.to_string(),
        kb_id: source.kb_id.clone(),
        source_id: source.id.clone(),
        status: store::SyncStatus::Queued,
        error: None,
        documents: 0,
        chunks: 0,
        created_at: crate::ids::now(),
        started_at: None,
        finished_at: None,
    };
    SyncRow::insert(conn, &row)?;
    crate::knowledge::sync::enqueue(conn, &row)?;
    store::set_source_status(conn, &source.id, SourceStatus::Syncing, None)?;
    Ok(row)
}

impl Handlers {
    /// The knowledge base `kb_id` of the caller (404 otherwise), without its counts.
    async fn require_kb(&self, caller: &Caller, kb_id: &str) -> Result<KbRow, Failure> {
        let id = kb_id.to_string();
        self.run_for(caller, KnowledgeBase::NOT_FOUND, move |conn, org| {
            store::get(conn, org, &id)
        })
        .await
    }

    async fn retrieve(
        &self, caller: &Caller, kb_ids: Vec<String>, query: String, options: SearchOptions,
        include_metadata: bool,
    ) -> Result<KnowledgeResults, Failure> {
        let q = query.clone();
        let hits = self
            .run_for(caller, KnowledgeBase::NOT_FOUND, move |conn, org| {
                crate::knowledge::search(conn, org, &kb_ids, &q, &options)
            })
            .await?;
        let results: Vec<KnowledgeResult> = hits
            .into_iter()
            .map(|h| KnowledgeResult {
                chunk_id: h.chunk_id,
                document_id: h.document_id,
                knowledge_base_id: h.knowledge_base_id,
                content: h.text,
                score: h.score,
                metadata: include_metadata.then_some(h.metadata),
            })
            .collect();
        Ok(KnowledgeResults {
            query,
            total: to_i64(results.len()),
            results,
        })
    }

    /// Creates a knowledge base with its first sources, once per `Idempotency-Key`: the
    /// knowledge base, its `Location` and its ETag.
    async fn create_kb(
        &self, caller: &Caller, params: &CreateKnowledgeBaseParams,
    ) -> Result<(KnowledgeBase, String, String), Failure> {
        let rid = caller.request_id.as_str();
        let input = &params.body;
        let row = new_kb_row(&caller.org_id, input);
        let options = chunk_options_of(&row.content.body);
        let planned = plan_sources(&row, input.sources.iter().flatten(), options, false, rid)?;
        let kb = CountedKb {
            counts: planned_counts(&planned),
            row,
        };
        let insert = move |conn: &mut DbConnection, kb: &CountedKb| {
            CountedKb::insert(conn, kb)?;
            write_sources(conn, &planned)
        };
        let kb = self
            .create_row::<KnowledgeBase>(caller, params, kb, insert)
            .await?;
        created(params, &kb, rid)
    }

    /// Writes `documents` and `planned` sources into the knowledge base `kb_id` in one
    /// transaction (nothing when it is gone by then).
    async fn write_into(
        &self, caller: &Caller, kb_id: String, documents: Vec<(DocumentRow, Vec<ChunkRow>)>,
        planned: Vec<PlannedSource>,
    ) -> Result<(), Failure> {
        self.run_for(caller, KnowledgeBase::NOT_FOUND, move |conn, org| {
            crate::db::write_transaction(conn, |conn| {
                store::get(conn, org, &kb_id)?;
                crate::knowledge::write(conn, &documents)?;
                write_sources(conn, &planned)
            })
        })
        .await
    }

    /// Adds a source to a knowledge base, once per `Idempotency-Key`.
    async fn create_source(
        &self, caller: &Caller, params: CreateKnowledgeSourceParams,
    ) -> Result<SourceRow, Failure> {
        let rid = caller.request_id.as_str();
        let kb = self.require_kb(caller, &params.kb_id).await?;
        let spec = parse_source(&params.body, "body", rid)?;
        self.outbound("url", params.body["url"].as_str(), rid)?;
        let planned = plan_source(
            &kb.org_id,
            &kb.id,
            spec,
            chunk_options_of(&kb.content.body),
            false,
        );
        let keyed = idem::NewKeyed::of(&params, &kb.org_id, &planned.source.id);
        let (org, kb_id) = (kb.org_id.clone(), kb.id.clone());
        let insert = move |conn: &mut DbConnection| {
            store::get(conn, &org, &kb_id)?;
            write_sources(conn, std::slice::from_ref(&planned))?;
            Ok(planned.source.clone())
        };
        let fetch =
            move |conn: &mut DbConnection, id: &str| SourceRow::get(conn, &kb.org_id, &kb.id, id);
        idem::create_resource(
            &self.store,
            keyed,
            insert,
            fetch,
            KnowledgeBase::NOT_FOUND,
            rid,
        )
        .await
    }

    /// Adds an uploaded file as a source of its own.
    async fn upload_file(
        &self, caller: &Caller, params: UploadKnowledgeFileParams,
    ) -> Result<SourceRow, Failure> {
        let rid = caller.request_id.as_str();
        let kb = self.require_kb(caller, &params.kb_id).await?;
        let (file_name, kind, text) = uploaded_text(params.file, rid)?;
        let spec = SourceSpec::Text {
            name: Some(params.name.unwrap_or_else(|| file_name.clone())),
            title: params.title,
            text,
            content_type: Some(kind.mime().to_string()),
            metadata: None,
        };
        let mut planned = plan_source(
            &kb.org_id,
            &kb.id,
            spec,
            chunk_options_of(&kb.content.body),
            false,
        );
        label_as_file(&mut planned, &file_name);
        let source = planned.source.clone();
        self.write_into(caller, kb.id, Vec::new(), vec![planned])
            .await?;
        Ok(source)
    }

    async fn replace_source(
        &self, caller: &Caller, params: ReplaceKnowledgeSourceParams,
    ) -> Result<SourceRow, Failure> {
        let rid = caller.request_id.as_str();
        let kb = self.require_kb(caller, &params.kb_id).await?;
        let spec = parse_source(&params.body, "body", rid)?;
        self.outbound("url", params.body["url"].as_str(), rid)?;
        let options = chunk_options_of(&kb.content.body);
        let (kb_id, source_id) = (kb.id, params.source_id);
        let replaced = self
            .run_for(caller, SOURCE_NOT_FOUND, move |conn, org| {
                crate::db::write_transaction(conn, |conn| {
                    replace_source_row(conn, org, &kb_id, &source_id, spec, options)
                })
            })
            .await?;
        replaced.ok_or_else(|| {
            Failure::new(
                Kind::Conflict,
                "SOURCE_SYNCING",
                "the source is being synced; replace it once the sync has ended",
                rid,
            )
        })
    }

    /// A page of a document's chunks, in order (by page number only).
    async fn list_chunks(
        &self, caller: &Caller, params: ListKnowledgeChunksParams,
    ) -> Result<KnowledgeChunkList, Failure> {
        let rid = caller.request_id.as_str();
        let page = PageRequest::new(params.page, params.per_page, None, None, rid)?;
        let (kb_id, document_id) = (params.kb_id, params.document_id);
        let (rows, total) = self
            .rows_on(caller, &page, DOCUMENT_NOT_FOUND, move |conn, org, q| {
                let doc = DocumentRow::get(conn, org, &kb_id, &document_id)?;
                store::list_chunks(conn, &doc.id, q)
            })
            .await?;
        Ok(KnowledgeChunkList {
            pagination: page.pagination(rows.len(), None, total),
            data: rows.iter().map(chunk_model).collect(),
        })
    }
}

impl KnowledgeApi for Handlers {
    async fn list_knowledge_bases(
        &self, caller: Caller, params: ListKnowledgeBasesParams,
    ) -> Reply<ListKnowledgeBasesResponse> {
        let filter = KbFilter {
            kb_type: params.type_.clone(),
            search: params.search.clone(),
        };
        let (data, pagination) = self
            .list_page::<KnowledgeBase>(&caller, &params, move |conn, org, page| {
                let (rows, total) = store::list_kbs(conn, org, &filter, page)?;
                let counted = rows.into_iter().map(|row| CountedKb::of(conn, row));
                Ok((counted.collect::<Result<_, _>>()?, total))
            })
            .await?;
        let list = KnowledgeBaseList { data, pagination };
        Ok(ListKnowledgeBasesResponse::Ok(Json(list)))
    }

    async fn create_knowledge_base(
        &self, caller: Caller, params: CreateKnowledgeBaseParams,
    ) -> Reply<CreateKnowledgeBaseResponse> {
        let (kb, location, tag) = self.create_kb(&caller, &params).await?;
        Ok(CreateKnowledgeBaseResponse::Created(
            Json(kb),
            location,
            tag,
        ))
    }

    /// Searches every knowledge base of the caller's organization (of one type, if asked).
    async fn search_knowledge(
        &self, caller: Caller, params: SearchKnowledgeParams,
    ) -> Reply<SearchKnowledgeResponse> {
        let kb_type = params.type_;
        let ids = self
            .run_for(&caller, KnowledgeBase::NOT_FOUND, move |conn, org| {
                store::kb_ids(conn, org, kb_type.as_deref())
            })
            .await?;
        let options = SearchOptions {
            top_k: usize::try_from(params.max_results).unwrap_or(10),
            min_score: params.min_score,
            filters: Map::new(),
        };
        let results = self.retrieve(&caller, ids, params.q, options, true).await?;
        Ok(SearchKnowledgeResponse::Ok(Json(results)))
    }

    async fn get_knowledge_base(
        &self, caller: Caller, params: GetKnowledgeBaseParams,
    ) -> Reply<GetKnowledgeBaseResponse> {
        let (id, if_none_match) = (params.kb_id, params.if_none_match);
        let answer = self.item_if_changed::<KnowledgeBase>(&caller, id, if_none_match);
        Ok(answer.await?.into())
    }

    async fn replace_knowledge_base(
        &self, caller: Caller, params: ReplaceKnowledgeBaseParams,
    ) -> Reply<ReplaceKnowledgeBaseResponse> {
        let changes = kb_changes(&params.body);
        let (id, if_match) = (params.kb_id, params.if_match);
        let (kb, tag) = self
            .replace::<KnowledgeBase>(&caller, id, if_match, |_, _| Ok(Ok(changes)))
            .await?;
        Ok(ReplaceKnowledgeBaseResponse::Ok(Json(kb), tag))
    }

    async fn update_knowledge_base(
        &self, caller: Caller, params: UpdateKnowledgeBaseParams,
    ) -> Reply<UpdateKnowledgeBaseResponse> {
        let (id, if_match, patch) = (params.kb_id, params.if_match, params.body);
        let (kb, tag) = self
            .replace::<KnowledgeBase>(&caller, id, if_match, move |_, current| {
                Ok(Ok(patched_kb(&patch, &current.row)))
            })
            .await?;
        Ok(UpdateKnowledgeBaseResponse::Ok(Json(kb), tag))
    }

    async fn delete_knowledge_base(
        &self, caller: Caller, params: DeleteKnowledgeBaseParams,
    ) -> Reply<DeleteKnowledgeBaseResponse> {
        self.remove::<KnowledgeBase>(&caller, params.kb_id).await?;
        Ok(DeleteKnowledgeBaseResponse::NoContent)
    }

    async fn query_knowledge_base(
        &self, caller: Caller, params: QueryKnowledgeBaseParams,
    ) -> Reply<QueryKnowledgeBaseResponse> {
        let kb = self.require_kb(&caller, &params.kb_id).await?;
        let mut q = params.body;
        let (options, include) = query_options(&mut q);
        let results = self
            .retrieve(&caller, vec![kb.id], q.query, options, include)
            .await?;
        Ok(QueryKnowledgeBaseResponse::Ok(Json(results)))
    }

    /// Writes an ingest's documents and sources in one transaction.
    async fn ingest_knowledge(
        &self, caller: Caller, params: IngestKnowledgeParams,
    ) -> Reply<IngestKnowledgeResponse> {
        let rid = caller.request_id.as_str();
        let kb = self.require_kb(&caller, &params.kb_id).await?;
        let body = params.body;
        let options = ingest_options(&kb, body.chunk_size, body.overlap);
        let planned = plan_sources(&kb, body.sources.iter().flatten(), options, true, rid)?;
        let documents: Vec<(DocumentRow, Vec<ChunkRow>)> = body
            .documents
            .into_iter()
            .flatten()
            .map(|d| inline_document(&kb, d, options))
            .collect();
        let result = ingest_result(&documents, &planned);
        let syncs_queued = planned.iter().any(|p| p.sync.is_some());
        self.write_into(&caller, kb.id, documents, planned).await?;
        if syncs_queued {
            self.pool.wake();
        }
        Ok(IngestKnowledgeResponse::Ok(Json(result)))
    }

    async fn list_knowledge_sources(
        &self, caller: Caller, params: ListKnowledgeSourcesParams,
    ) -> Reply<ListKnowledgeSourcesResponse> {
        let kb_id = params.kb_id.clone();
        let list = move |conn: &mut DbConnection, org: &str, page: &_| {
            store::get(conn, org, &kb_id)?;
            store::list_sources(conn, org, &kb_id, page)
        };
        let not_found = KnowledgeBase::NOT_FOUND;
        let (data, pagination) = self
            .page_of(&caller, &params, not_found, list, |r| Ok(source_model(r)))
            .await?;
        let list = KnowledgeSourceList { data, pagination };
        Ok(ListKnowledgeSourcesResponse::Ok(Json(list)))
    }

    async fn create_knowledge_source(
        &self, caller: Caller, params: CreateKnowledgeSourceParams,
    ) -> Reply<CreateKnowledgeSourceResponse> {
        let row = self.create_source(&caller, params).await?;
        let (source, location) = created_source(&row);
        Ok(CreateKnowledgeSourceResponse::Created(source, location))
    }

    async fn upload_knowledge_file(
        &self, caller: Caller, params: UploadKnowledgeFileParams,
    ) -> Reply<UploadKnowledgeFileResponse> {
        let row = self.upload_file(&caller, params).await?;
        let (source, location) = created_source(&row);
        Ok(UploadKnowledgeFileResponse::Created(source, location))
    }

    async fn get_knowledge_source(
        &self, caller: Caller, params: GetKnowledgeSourceParams,
    ) -> Reply<GetKnowledgeSourceResponse> {
        let (kb_id, id) = (params.kb_id, params.source_id);
        let row: SourceRow = self.child(&caller, kb_id, id, SOURCE_NOT_FOUND).await?;
        Ok(GetKnowledgeSourceResponse::Ok(Json(source_model(&row))))
    }

    async fn replace_knowledge_source(
        &self, caller: Caller, params: ReplaceKnowledgeSourceParams,
    ) -> Reply<ReplaceKnowledgeSourceResponse> {
        let row = self.replace_source(&caller, params).await?;
        Ok(ReplaceKnowledgeSourceResponse::Ok(Json(source_model(&row))))
    }

    async fn delete_knowledge_source(
        &self, caller: Caller, params: DeleteKnowledgeSourceParams,
    ) -> Reply<DeleteKnowledgeSourceResponse> {
        let (kb_id, id) = (params.kb_id, params.source_id);
        self.run_for(&caller, SOURCE_NOT_FOUND, move |conn, org| {
            store::delete_source(conn, org, &kb_id, &id)
        })
        .await?;
        Ok(DeleteKnowledgeSourceResponse::NoContent)
    }

    async fn sync_knowledge_source(
        &self, caller: Caller, params: SyncKnowledgeSourceParams,
    ) -> Reply<SyncKnowledgeSourceResponse> {
        let (kb_id, id) = (params.kb_id, params.source_id);
        let row = self
            .run_for(&caller, SOURCE_NOT_FOUND, move |conn, org| {
                crate::db::write_transaction(conn, |conn| queue_sync(conn, org, &kb_id, &id))
            })
            .await?;
        self.pool.wake();
        let location = format!("/v1/knowledge/{}/syncs/{}", row.kb_id, row.id);
        Ok(SyncKnowledgeSourceResponse::Accepted(
            Json(sync_model(&row)),
            location,
        ))
    }

    async fn get_knowledge_sync(
        &self, caller: Caller, params: GetKnowledgeSyncParams,
    ) -> Reply<GetKnowledgeSyncResponse> {
        let (kb_id, id) = (params.kb_id, params.sync_id);
        let row: SyncRow = self.child(&caller, kb_id, id, SYNC_NOT_FOUND).await?;
        Ok(GetKnowledgeSyncResponse::Ok(Json(sync_model(&row))))
    }

    async fn list_knowledge_documents(
        &self, caller: Caller, params: ListKnowledgeDocumentsParams,
    ) -> Reply<ListKnowledgeDocumentsResponse> {
        let (kb_id, source) = (params.kb_id.clone(), params.source_id.clone());
        let list = move |conn: &mut DbConnection, org: &str, page: &_| {
            store::get(conn, org, &kb_id)?;
            store::list_documents(conn, org, &kb_id, source.as_deref(), page)
        };
        let not_found = KnowledgeBase::NOT_FOUND;
        let (data, pagination) = self
            .page_of(&caller, &params, not_found, list, |r| Ok(document_model(r)))
            .await?;
        let list = KnowledgeDocumentList { data, pagination };
        Ok(ListKnowledgeDocumentsResponse::Ok(Json(list)))
    }

    async fn get_knowledge_document(
        &self, caller: Caller, params: GetKnowledgeDocumentParams,
    ) -> Reply<GetKnowledgeDocumentResponse> {
        let (kb_id, id) = (params.kb_id, params.document_id);
        let row: DocumentRow = self.child(&caller, kb_id, id, DOCUMENT_NOT_FOUND).await?;
        Ok(GetKnowledgeDocumentResponse::Ok(Json(document_model(&row))))
    }

    async fn delete_knowledge_document(
        &self, caller: Caller, params: DeleteKnowledgeDocumentParams,
    ) -> Reply<DeleteKnowledgeDocumentResponse> {
        let (kb_id, id) = (params.kb_id, params.document_id);
        self.run_for(&caller, DOCUMENT_NOT_FOUND, move |conn, org| {
            DocumentRow::delete(conn, org, &kb_id, &id)
        })
        .await?;
        Ok(DeleteKnowledgeDocumentResponse::NoContent)
    }

    async fn list_knowledge_chunks(
        &self, caller: Caller, params: ListKnowledgeChunksParams,
    ) -> Reply<ListKnowledgeChunksResponse> {
        let list = self.list_chunks(&caller, params).await?;
        Ok(ListKnowledgeChunksResponse::Ok(Json(list)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_never_reaches_the_chunk_size() {
        let body = processing_body(Some(&ProcessingOptions {
            chunk_size: Some(100),
            overlap: Some(400),
            extract_metadata: None,
        }));
        assert_eq!(body.overlap, Some(99));
    }

    #[test]
    fn sources_parse_by_type_and_reject_strays() {
        let spec = parse_source(
            &serde_json::json!({"type": "github", "repository": "https://github.com/o/r/"}),
            "body",
            "rid",
        )
        .expect("parses");
        let planned = plan_source("org", "kb", spec, ChunkOptions::default(), true);
        assert_eq!(planned.source.source_type, "github");
        assert_eq!(planned.source.status, SourceStatus::Pending);
        assert!(planned.source.body.contains("\"repository\":\"o/r\""));
        assert!(planned.sync.is_some() && planned.documents.is_empty());
        assert!(parse_source(&serde_json::json!({"type": "ftp"}), "body", "rid").is_err());
    }
}
