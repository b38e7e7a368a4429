//! Knowledge bases, sources, documents, chunks and sync jobs: rows and queries.
//!
//! A knowledge base's filterable columns are columns; the rest (processing options, metadata)
//! is one JSON document in `body` ([`KbBody`]), as a source's configuration is in its `body`
//! ([`SourceBody`]). Every query is scoped by `org_id`. Full-text search lives in
//! [`crate::knowledge`], which needs raw SQL per backend.

use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::crud::Child;
use super::schema::{
    knowledge_bases, knowledge_chunks, knowledge_documents, knowledge_sources, knowledge_syncs,
};
use super::sql::{FilterIf, Page, folded, like_pattern};
use super::types::text_enum;
use super::{DbConnection, StoreResult};

text_enum! {
    /// Where a source is: `pending` until first synced, `syncing` while a sync runs, then
    /// `active` or `failed` as the last sync went (inline text is `active` at once).
    pub enum SourceStatus {
        Pending = "pending",
        Syncing = "syncing",
        Active = "active",
        Failed = "failed",
    }
}

text_enum! {
    /// Where a sync is: `queued → running → succeeded | failed`.
    pub enum SyncStatus {
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

impl SyncStatus {
    /// Whether it has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, SyncStatus::Succeeded | SyncStatus::Failed)
    }
}

/// A knowledge base's `body`: what it stores besides its columns.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct KbBody {
    #[serde(default)]
    pub processing_options: ProcessingBody,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
}

/// How a knowledge base chunks what it ingests (every field is written; a missing one reads
/// as the default).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProcessingBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlap: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract_metadata: Option<bool>,
}

/// A source's `body`: its configuration as sent (`text` sources: text, title, content type;
/// `url`: the URL; `github`: repository, branch, paths; `file`: a text source with its file
/// name), and its metadata.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SourceBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
}

/// Reads a JSON document leniently: a body that does not parse reads as empty (as every
/// reader of these bodies always has).
fn lenient<T: serde::de::DeserializeOwned + Default>(stored: &str) -> T {
    serde_json::from_str(stored).unwrap_or_default()
}

impl KbRow {
    /// Its `body`, typed.
    pub fn body(&self) -> KbBody {
        lenient(&self.content.body)
    }
}

impl SourceRow {
    /// Its `body`, typed.
    pub fn body(&self) -> SourceBody {
        lenient(&self.body)
    }
}

/// One row of `knowledge_bases`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = knowledge_bases)]
pub struct KbRow {
    pub id: String,
    pub org_id: String,
    /// The columns an update writes.
    #[diesel(embed)]
    pub content: KbChanges,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
}

/// One row of `knowledge_sources`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = knowledge_sources)]
pub struct SourceRow {
    pub id: String,
    pub org_id: String,
    pub kb_id: String,
    pub name: String,
    pub source_type: String,
    pub status: SourceStatus,
    /// JSON: [`SourceBody`].
    pub body: String,
    pub last_sync_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// One row of `knowledge_documents`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = knowledge_documents)]
pub struct DocumentRow {
    pub id: String,
    pub org_id: String,
    pub kb_id: String,
    pub source_id: Option<String>,
    pub title: String,
    pub content_type: String,
    pub metadata: String,
    pub chunk_count: i64,
    pub char_count: i64,
    pub created_at: String,
}

/// One row of `knowledge_chunks`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = knowledge_chunks)]
pub struct ChunkRow {
    pub id: String,
    pub org_id: String,
    pub kb_id: String,
    pub document_id: String,
    pub position: i64,
    pub text: String,
    pub metadata: String,
}

/// One row of `knowledge_syncs`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = knowledge_syncs)]
pub struct SyncRow {
    pub id: String,
    pub org_id: String,
    pub kb_id: String,
    pub source_id: String,
    pub status: SyncStatus,
    pub error: Option<String>,
    pub documents: i64,
    pub chunks: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// Knowledge-base list filters.
#[derive(Debug, Clone, Default)]
pub struct KbFilter {
    pub kb_type: Option<String>,
    pub search: Option<String>,
}

// Deleting a knowledge base deletes its sources, documents (and their chunks) and syncs
// (`ON DELETE CASCADE`).
super::crud::resource_table!(knowledge_bases, KbRow, versioned KbChanges);
super::crud::child_table!(knowledge_sources, kb_id, SourceRow);
super::crud::child_table!(knowledge_documents, kb_id, DocumentRow);
super::crud::child_table!(knowledge_syncs, kb_id, SyncRow);

/// The organization's knowledge base `id` (what other areas name it by).
pub use self::get as get_kb;

/// A page of knowledge bases, newest first, and the number matching.
pub fn list_kbs(
    conn: &mut DbConnection, org_id: &str, filter: &KbFilter, page: &Page,
) -> StoreResult<(Vec<KbRow>, i64)> {
    use knowledge_bases as kb;
    let named = |s: &String| folded(kb::name).like(like_pattern(s)).escape('\\');
    let filtered = || {
        kb::table
            .filter(kb::org_id.eq(org_id))
            .into_boxed()
            .filter_if(filter.kb_type.as_ref().map(|t| kb::kb_type.eq(t)))
            .filter_if(filter.search.as_ref().map(named))
    };
    super::crud::newest_first!(conn, kb, KbRow, filtered, page, by created_at)
}

/// The ids of the organization's knowledge bases, optionally of one type.
pub fn kb_ids(
    conn: &mut DbConnection, org_id: &str, kb_type: Option<&str>,
) -> StoreResult<Vec<String>> {
    let q = knowledge_bases::table
        .filter(knowledge_bases::org_id.eq(org_id))
        .select(knowledge_bases::id)
        .into_boxed();
    let q = q.filter_if(kb_type.map(|t| knowledge_bases::kb_type.eq(t)));
    Ok(q.load(conn)?)
}

/// The columns a knowledge-base update writes.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = knowledge_bases, treat_none_as_null = true)]
pub struct KbChanges {
    pub name: String,
    pub kb_type: String,
    pub description: Option<String>,
    /// JSON: [`KbBody`].
    pub body: String,
}

/// A knowledge base as the API shows it: its row and how much it holds.
#[derive(Debug, Clone)]
pub struct CountedKb {
    pub row: KbRow,
    /// Documents, chunks and sources.
    pub counts: (i64, i64, i64),
}

impl CountedKb {
    /// `row` with its counts as stored.
    pub fn of(conn: &mut DbConnection, row: KbRow) -> StoreResult<Self> {
        let counts = kb_counts(conn, &row.id)?;
        Ok(CountedKb { row, counts })
    }
}

impl super::crud::Identified for CountedKb {
    fn id(&self) -> &str {
        &self.row.id
    }
}

impl super::crud::Stored for CountedKb {
    fn insert(conn: &mut DbConnection, kb: &Self) -> StoreResult<()> {
        insert(conn, &kb.row)
    }
    fn get(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<Self> {
        let row = get(conn, org_id, id)?;
        Self::of(conn, row)
    }
    fn delete(conn: &mut DbConnection, org_id: &str, id: &str) -> StoreResult<()> {
        delete(conn, org_id, id)
    }
}

impl super::crud::Versioned for CountedKb {
    type Changes = KbChanges;
    fn version(&self) -> i64 {
        self.row.version
    }
    fn update<E>(
        conn: &mut DbConnection, org_id: &str, id: &str,
        change: impl FnOnce(&mut DbConnection, &Self) -> StoreResult<Result<KbChanges, E>>,
    ) -> StoreResult<Result<Self, E>> {
        let updated = update(conn, org_id, id, |conn, row| {
            let current = Self::of(conn, row.clone())?;
            change(conn, &current)
        })?;
        match updated {
            Ok(row) => Self::of(conn, row).map(Ok),
            Err(refused) => Ok(Err(refused)),
        }
    }
}

/// Chunk and document counts of a knowledge base.
pub fn kb_counts(conn: &mut DbConnection, kb_id: &str) -> StoreResult<(i64, i64, i64)> {
    let documents: i64 = knowledge_documents::table
        .filter(knowledge_documents::kb_id.eq(kb_id))
        .count()
        .get_result(conn)?;
    let chunks: i64 = knowledge_chunks::table
        .filter(knowledge_chunks::kb_id.eq(kb_id))
        .count()
        .get_result(conn)?;
    let sources: i64 = knowledge_sources::table
        .filter(knowledge_sources::kb_id.eq(kb_id))
        .count()
        .get_result(conn)?;
    Ok((documents, chunks, sources))
}

// Sources.

/// Writes `row` over the source of its id: configuration, status, last sync.
pub fn replace_source(conn: &mut DbConnection, row: &SourceRow) -> StoreResult<()> {
    diesel::update(knowledge_sources::table.filter(knowledge_sources::id.eq(&row.id)))
        .set((
            knowledge_sources::name.eq(&row.name),
            knowledge_sources::source_type.eq(&row.source_type),
            knowledge_sources::status.eq(&row.status),
            knowledge_sources::body.eq(&row.body),
            knowledge_sources::last_sync_at.eq(&row.last_sync_at),
            knowledge_sources::updated_at.eq(&row.updated_at),
        ))
        .execute(conn)?;
    Ok(())
}

/// A page of a knowledge base's sources, newest first, and how many it has.
pub fn list_sources(
    conn: &mut DbConnection, org_id: &str, kb_id: &str, page: &Page,
) -> StoreResult<(Vec<SourceRow>, i64)> {
    let filtered = || SourceRow::under(org_id, kb_id);
    super::crud::newest_first!(conn, knowledge_sources, SourceRow, filtered, page, by created_at)
}

/// Records a source's state after a sync (or a change of its status).
pub fn set_source_status(
    conn: &mut DbConnection, id: &str, status: SourceStatus, last_sync_at: Option<&str>,
) -> StoreResult<()> {
    let now = crate::ids::now();
    match last_sync_at {
        Some(at) => diesel::update(knowledge_sources::table.filter(knowledge_sources::id.eq(id)))
            .set((
                knowledge_sources::status.eq(status),
                knowledge_sources::last_sync_at.eq(at),
                knowledge_sources::updated_at.eq(&now),
            ))
            .execute(conn),
        None => diesel::update(knowledge_sources::table.filter(knowledge_sources::id.eq(id)))
            .set((
                knowledge_sources::status.eq(status),
                knowledge_sources::updated_at.eq(&now),
            ))
            .execute(conn),
    }?;
    Ok(())
}

/// Deletes the documents (and their chunks) a source produced.
pub fn delete_source_documents(conn: &mut DbConnection, source_id: &str) -> StoreResult<()> {
    let docs: Vec<String> = knowledge_documents::table
        .filter(knowledge_documents::source_id.eq(source_id))
        .select(knowledge_documents::id)
        .load(conn)?;
    diesel::delete(knowledge_chunks::table.filter(knowledge_chunks::document_id.eq_any(docs)))
        .execute(conn)?;
    diesel::delete(knowledge_documents::table.filter(knowledge_documents::source_id.eq(source_id)))
        .execute(conn)?;
    Ok(())
}

/// Deletes a source with its documents, chunks and sync jobs.
pub fn delete_source(
    conn: &mut DbConnection, org_id: &str, kb_id: &str, id: &str,
) -> StoreResult<()> {
    super::write_transaction(conn, |conn| {
        SourceRow::get(conn, org_id, kb_id, id)?;
        delete_source_documents(conn, id)?;
        diesel::delete(knowledge_syncs::table.filter(knowledge_syncs::source_id.eq(id)))
            .execute(conn)?;
        SourceRow::delete(conn, org_id, kb_id, id)
    })
}

// Documents and chunks.

/// Rows per multi-row INSERT: 7 columns each stays far below both engines' bind limits.
const CHUNK_BATCH: usize = 500;

pub fn insert_chunks(conn: &mut DbConnection, rows: &[ChunkRow]) -> StoreResult<()> {
    for batch in rows.chunks(CHUNK_BATCH) {
        match conn {
            // diesel emulates SQLite batch inserts row by row inside a transaction of its own,
            // which cannot nest in ours: one multi-row INSERT instead.
            DbConnection::Sqlite(c) => {
                use diesel::sql_types::{BigInt, Text};
                let mut sql = String::from(
                    "INSERT INTO knowledge_chunks (id, org_id, kb_id, document_id, position, text, metadata) VALUES ",
                );
                sql.push_str(&vec!["(?, ?, ?, ?, ?, ?, ?)"; batch.len()].join(", "));
                let mut q = diesel::sql_query(sql).into_boxed::<diesel::sqlite::Sqlite>();
                for r in batch {
                    q = q
                        .bind::<Text, _>(r.id.clone())
                        .bind::<Text, _>(r.org_id.clone())
                        .bind::<Text, _>(r.kb_id.clone())
                        .bind::<Text, _>(r.document_id.clone())
                        .bind::<BigInt, _>(r.position)
                        .bind::<Text, _>(r.text.clone())
                        .bind::<Text, _>(r.metadata.clone());
                }
                q.execute(c)
            }
            DbConnection::Postgres(c) => diesel::insert_into(knowledge_chunks::table)
                .values(batch)
                .execute(c),
        }?;
    }
    Ok(())
}

/// A page of a knowledge base's documents (of one source, if given), newest first, and how
/// many there are.
pub fn list_documents(
    conn: &mut DbConnection, org_id: &str, kb_id: &str, source_id: Option<&str>, page: &Page,
) -> StoreResult<(Vec<DocumentRow>, i64)> {
    use knowledge_documents as d;
    let filtered =
        || DocumentRow::under(org_id, kb_id).filter_if(source_id.map(|s| d::source_id.eq(s)));
    super::crud::newest_first!(conn, d, DocumentRow, filtered, page, by created_at)
}

/// A document's chunks in order, the page at `page`'s offset, and how many it has.
pub fn list_chunks(
    conn: &mut DbConnection, document_id: &str, page: &Page,
) -> StoreResult<(Vec<ChunkRow>, i64)> {
    let rows: Vec<ChunkRow> = knowledge_chunks::table
        .filter(knowledge_chunks::document_id.eq(document_id))
        .order(knowledge_chunks::position.asc())
        .offset(page.offset)
        .limit(page.limit)
        .select(ChunkRow::as_select())
        .load(conn)?;
    let total = page.total(rows.len(), || {
        knowledge_chunks::table
            .filter(knowledge_chunks::document_id.eq(document_id))
            .count()
            .get_result::<i64>(conn)
    })?;
    Ok((rows, total))
}

// Sync jobs.

/// Marks a sync running.
pub fn start_sync(conn: &mut DbConnection, id: &str) -> StoreResult<()> {
    diesel::update(knowledge_syncs::table.filter(knowledge_syncs::id.eq(id)))
        .set((
            knowledge_syncs::status.eq(SyncStatus::Running),
            knowledge_syncs::started_at.eq(crate::ids::now()),
        ))
        .execute(conn)?;
    Ok(())
}

/// Records how a sync ended.
pub fn finish_sync(
    conn: &mut DbConnection, id: &str, error: Option<&str>, documents: i64, chunks: i64,
) -> StoreResult<()> {
    let status = if error.is_some() {
        SyncStatus::Failed
    } else {
        SyncStatus::Succeeded
    };
    diesel::update(knowledge_syncs::table.filter(knowledge_syncs::id.eq(id)))
        .set((
            knowledge_syncs::status.eq(status),
            knowledge_syncs::error.eq(error),
            knowledge_syncs::documents.eq(documents),
            knowledge_syncs::chunks.eq(chunks),
            knowledge_syncs::finished_at.eq(crate::ids::now()),
        ))
        .execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The typed bodies write the bytes the maps they replace wrote.
    #[test]
    fn typed_bodies_write_what_the_untyped_ones_wrote() {
        let kb = KbBody {
            processing_options: ProcessingBody {
                chunk_size: Some(1000),
                overlap: Some(200),
                extract_metadata: Some(true),
            },
            metadata: Map::new(),
            embedding_model: Some("e5".into()),
        };
        let before = json!({"processing_options": {"chunk_size": 1000, "overlap": 200,
            "extract_metadata": true}, "metadata": {}, "embedding_model": "e5"});
        assert_eq!(serde_json::to_string(&kb).ok(), Some(before.to_string()));

        let file = SourceBody {
            text: Some("x".into()),
            content_type: Some("text/plain".into()),
            file_name: Some("a.txt".into()),
            ..SourceBody::default()
        };
        let before = json!({"text": "x", "content_type": "text/plain", "metadata": {},
            "file_name": "a.txt"});
        assert_eq!(serde_json::to_string(&file).ok(), Some(before.to_string()));
        let github = SourceBody {
            repository: Some("o/r".into()),
            paths: Some(vec!["docs".into()]),
            ..SourceBody::default()
        };
        let before = json!({"repository": "o/r", "paths": ["docs"], "metadata": {}});
        assert_eq!(
            serde_json::to_string(&github).ok(),
            Some(before.to_string())
        );
    }

    #[test]
    fn bodies_that_do_not_parse_read_as_empty() {
        assert_eq!(lenient::<KbBody>("not json"), KbBody::default());
        let partial: KbBody = lenient(r#"{"processing_options": {"chunk_size": 300}}"#);
        assert_eq!(partial.processing_options.chunk_size, Some(300));
        assert_eq!(partial.processing_options.overlap, None);
    }
}
