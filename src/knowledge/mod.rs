//! Knowledge: ingest (extraction, chunking, metadata) and retrieval by the database's own
//! full-text engine.
//!
//! Retrieval ranks with SQLite FTS5's `bm25()` or PostgreSQL's `ts_rank_cd()` over a GIN-indexed
//! `tsvector`. The engine's raw relevance `r` (−bm25 on SQLite, ts_rank_cd on PostgreSQL, both
//! "higher is better") is reported as `score = r / (1 + r)`, in `[0, 1)`: monotonic, so the
//! order is the engine's, and comparable between hits of one query (not across queries or
//! backends). [`search`] is the seam the execution engine retrieves passages through.

pub mod sync;
pub mod text;

use diesel::prelude::*;
use diesel::sql_types::{Double, Text};
use serde_json::{Map, Value};

use crate::db::crud::Child;
use crate::db::knowledge::{self as store, ChunkRow, DocumentRow};
use crate::db::{DbConnection, StoreError};

/// How to search.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    /// At most this many hits.
    pub top_k: usize,
    /// Only hits scoring at least this.
    pub min_score: Option<f64>,
    /// Only chunks whose metadata has each of these keys with exactly this (JSON) value.
    pub filters: Map<String, Value>,
}

/// One retrieved chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub chunk_id: String,
    pub knowledge_base_id: String,
    pub document_id: String,
    pub text: String,
    /// In `[0, 1)`; higher is better; comparable within one query.
    pub score: f64,
    /// The chunk's metadata: title, source, source_type, position, document metadata.
    pub metadata: Value,
}

/// Most terms a query uses; the rest are ignored.
const MAX_TERMS: usize = 32;

/// The search terms of a free-text query: lower-cased runs of letters and digits, deduplicated.
pub fn terms(query: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        let w = word.to_lowercase();
        if !out.contains(&w) {
            out.push(w);
        }
        if out.len() == MAX_TERMS {
            break;
        }
    }
    out
}

/// Whether a metadata filter key is one [`search`] accepts (it becomes part of a JSON path).
pub fn valid_filter_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(QueryableByName)]
struct HitRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    kb_id: String,
    #[diesel(sql_type = Text)]
    document_id: String,
    #[diesel(sql_type = Text)]
    text: String,
    #[diesel(sql_type = Text)]
    metadata: String,
    #[diesel(sql_type = Double)]
    raw: f64,
}

/// Best chunks of these knowledge bases (all of the org's when `kb_ids` is empty is NOT
/// wanted: empty means none) for `query`, best first.
pub fn search(
    conn: &mut DbConnection, org_id: &str, kb_ids: &[String], query: &str, options: &SearchOptions,
) -> Result<Vec<Hit>, StoreError> {
    let words = terms(query);
    if kb_ids.is_empty() || words.is_empty() || options.top_k == 0 {
        return Ok(Vec::new());
    }
    let Some(filters) = metadata_filters(&options.filters) else {
        // A key no chunk can have matches nothing.
        return Ok(Vec::new());
    };
    let ranked = Ranked {
        org_id,
        kb_ids,
        words: &words,
        filters: &filters,
        limit: i64::try_from(options.top_k.min(1000)).unwrap_or(1000),
    };
    let rows = match conn {
        DbConnection::Sqlite(c) => ranked.sqlite(c)?,
        DbConnection::Postgres(c) => ranked.postgres(c)?,
    };
    Ok(scored(rows, options.min_score))
}

/// The metadata filters as keys and JSON texts, or `None` when a key is not one a chunk can
/// have ([`valid_filter_key`]).
fn metadata_filters(filters: &Map<String, Value>) -> Option<Vec<(String, String)>> {
    filters
        .iter()
        .map(|(k, v)| valid_filter_key(k).then(|| (k.clone(), v.to_string())))
        .collect()
}

/// One ranked full-text query: the best `limit` chunks of the organization's knowledge bases
/// `kb_ids` matching any of `words` and each of `filters`.
struct Ranked<'a> {
    org_id: &'a str,
    kb_ids: &'a [String],
    words: &'a [String],
    filters: &'a [(String, String)],
    limit: i64,
}

impl Ranked<'_> {
    /// On SQLite: FTS5 ranked by `bm25()`.
    fn sqlite(&self, c: &mut diesel::SqliteConnection) -> QueryResult<Vec<HitRow>> {
        let fts = self
            .words
            .iter()
            .map(|w| format!("\"{w}\""))
            .collect::<Vec<_>>()
            .join(" OR ");
        let mut sql = String::from(
            "SELECT c.id AS id, c.kb_id AS kb_id, c.document_id AS document_id, c.text AS text, \
             c.metadata AS metadata, -bm25(knowledge_chunks_fts) AS raw \
             FROM knowledge_chunks_fts JOIN knowledge_chunks c ON c.seq = knowledge_chunks_fts.rowid \
             WHERE knowledge_chunks_fts MATCH ? AND c.org_id = ? AND c.kb_id IN (",
        );
        sql.push_str(&vec!["?"; self.kb_ids.len()].join(", "));
        sql.push(')');
        for _ in self.filters {
            sql.push_str(" AND json_extract(c.metadata, ?) IS json_extract(?, '$')");
        }
        sql.push_str(" ORDER BY bm25(knowledge_chunks_fts), c.id LIMIT ?");
        let mut q = diesel::sql_query(sql)
            .into_boxed::<diesel::sqlite::Sqlite>()
            .bind::<Text, _>(fts)
            .bind::<Text, _>(self.org_id.to_string());
        for id in self.kb_ids {
            q = q.bind::<Text, _>(id.clone());
        }
        for (k, v) in self.filters {
            q = q
                .bind::<Text, _>(format!("$.\"{k}\""))
                .bind::<Text, _>(v.clone());
        }
        q.bind::<diesel::sql_types::BigInt, _>(self.limit).load(c)
    }

    /// On PostgreSQL: the chunks' `tsvector` ranked by `ts_rank_cd()`.
    fn postgres(&self, c: &mut diesel::PgConnection) -> QueryResult<Vec<HitRow>> {
        let tsquery = self.words.join(" | ");
        let mut sql = String::from(
            "SELECT c.id AS id, c.kb_id AS kb_id, c.document_id AS document_id, c.text AS text, \
             c.metadata AS metadata, ts_rank_cd(c.tsv, q)::float8 AS raw \
             FROM knowledge_chunks c, to_tsquery('english', $1) q \
             WHERE c.tsv @@ q AND c.org_id = $2 AND c.kb_id = ANY($3)",
        );
        let mut n = 4;
        // `jsonb` refuses the escape `\u0000`, which JSON (and a document's metadata) may
        // hold: both sides swap it for a private-use character before the cast, so a
        // filter on such metadata compares instead of failing the query.
        for _ in self.filters {
            sql.push_str(&format!(
                " AND (replace(c.metadata, E'\\\\u0000', E'\\\\uf8ff')::jsonb -> ${}) \
                 = replace(${}, E'\\\\u0000', E'\\\\uf8ff')::jsonb",
                n,
                n + 1
            ));
            n += 2;
        }
        sql.push_str(&format!(" ORDER BY raw DESC, c.id LIMIT ${n}"));
        let mut q = diesel::sql_query(sql)
            .into_boxed::<diesel::pg::Pg>()
            .bind::<Text, _>(tsquery)
            .bind::<Text, _>(self.org_id.to_string())
            .bind::<diesel::sql_types::Array<Text>, _>(self.kb_ids.to_vec());
        for (k, v) in self.filters {
            q = q.bind::<Text, _>(k.clone()).bind::<Text, _>(v.clone());
        }
        q.bind::<diesel::sql_types::BigInt, _>(self.limit).load(c)
    }
}

/// The hits of ranked rows, scored `r / (1 + r)`, those under `min_score` left out.
fn scored(rows: Vec<HitRow>, min_score: Option<f64>) -> Vec<Hit> {
    let min = min_score.unwrap_or(f64::NEG_INFINITY);
    rows.into_iter()
        .map(|r| {
            let raw = r.raw.max(0.0);
            Hit {
                chunk_id: r.id,
                knowledge_base_id: r.kb_id,
                document_id: r.document_id,
                text: r.text,
                score: raw / (1.0 + raw),
                metadata: serde_json::from_str(&r.metadata).unwrap_or(Value::Null),
            }
        })
        .filter(|h| h.score >= min)
        .collect()
}

/// How documents are cut.
#[derive(Debug, Clone, Copy)]
pub struct ChunkOptions {
    /// Characters per chunk.
    pub chunk_size: usize,
    /// Characters each chunk repeats from the end of the previous one.
    pub overlap: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self {
            chunk_size: 1000,
            overlap: 200,
        }
    }
}

/// A document to ingest, already extracted to plain text.
#[derive(Debug, Clone)]
pub struct NewDocument {
    pub title: String,
    pub text: String,
    pub content_type: String,
    /// Where it came from: a file name, URL, repository path or `inline`.
    pub source: String,
    pub source_type: String,
    pub source_id: Option<String>,
    /// Caller-given metadata, copied onto every chunk.
    pub metadata: Map<String, Value>,
}

/// Rows for one document and its chunks, built outside any transaction.
pub fn prepare(
    org_id: &str, kb_id: &str, doc: NewDocument, options: ChunkOptions,
) -> (DocumentRow, Vec<ChunkRow>) {
    let document_id = crate::ids::new_id("doc");
    let pieces = text::chunk(&doc.text, options.chunk_size, options.overlap);
    let total = pieces.len();
    let mut base = doc.metadata.clone();
    base.insert("title".into(), doc.title.clone().into());
    base.insert("source".into(), doc.source.clone().into());
    base.insert("source_type".into(), doc.source_type.clone().into());
    if let Some(s) = &doc.source_id {
        base.insert("source_id".into(), s.clone().into());
    }
    let chunks: Vec<ChunkRow> = pieces
        .into_iter()
        .enumerate()
        .map(|(i, piece)| {
            let mut meta = base.clone();
            meta.insert("position".into(), i.into());
            meta.insert("chunks".into(), total.into());
            meta.insert("start".into(), piece.start.into());
            meta.insert("end".into(), piece.end.into());
            ChunkRow {
                id: crate::ids::new_id("chunk"),
                org_id: org_id.to_string(),
                kb_id: kb_id.to_string(),
                document_id: document_id.clone(),
                position: i64::try_from(i).unwrap_or(i64::MAX),
                text: piece.text,
                metadata: Value::Object(meta).to_string(),
            }
        })
        .collect();
    let mut doc_meta = doc.metadata;
    doc_meta.insert("source".into(), doc.source.into());
    doc_meta.insert("source_type".into(), doc.source_type.into());
    let row = DocumentRow {
        id: document_id,
        org_id: org_id.to_string(),
        kb_id: kb_id.to_string(),
        source_id: doc.source_id,
        title: doc.title,
        content_type: doc.content_type,
        metadata: Value::Object(doc_meta).to_string(),
        chunk_count: i64::try_from(chunks.len()).unwrap_or(i64::MAX),
        char_count: i64::try_from(doc.text.chars().count()).unwrap_or(i64::MAX),
        created_at: crate::ids::now(),
    };
    (row, chunks)
}

/// Writes prepared documents and their chunks (call inside a transaction).
pub fn write(
    conn: &mut DbConnection, prepared: &[(DocumentRow, Vec<ChunkRow>)],
) -> Result<(), StoreError> {
    for (doc, _) in prepared {
        DocumentRow::insert(conn, doc)?;
    }
    let chunks: Vec<ChunkRow> = prepared
        .iter()
        .flat_map(|(_, c)| c.iter().cloned())
        .collect();
    store::insert_chunks(conn, &chunks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terms_are_words_only() {
        assert_eq!(
            terms("How do I install the SDK?  \"x\" OR NEAR(a) sdk"),
            vec![
                "how", "do", "i", "install", "the", "sdk", "x", "or", "near", "a"
            ]
        );
        assert!(terms("?!* -- '").is_empty());
        assert!(
            valid_filter_key("source_type") && !valid_filter_key("a'b") && !valid_filter_key("")
        );
    }

    #[test]
    fn prepare_puts_title_source_and_position_on_every_chunk() {
        let (doc, chunks) = prepare(
            "org",
            "kb",
            NewDocument {
                title: "Guide".into(),
                text: "one two three four five six seven eight nine ten".into(),
                content_type: "text/plain".into(),
                source: "guide.txt".into(),
                source_type: "file".into(),
                source_id: None,
                metadata: serde_json::json!({"team": "docs"})
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            },
            ChunkOptions {
                chunk_size: 20,
                overlap: 4,
            },
        );
        assert_eq!(doc.chunk_count as usize, chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            let meta: Value = serde_json::from_str(&c.metadata).expect("json");
            assert_eq!(meta["title"], "Guide");
            assert_eq!(meta["source"], "guide.txt");
            assert_eq!(meta["team"], "docs");
            assert_eq!(meta["position"], i);
            assert_eq!(c.document_id, doc.id);
        }
    }
}

/// The execution engine's retrieval: [`search`] over the agent's knowledge bases, which must
/// all exist in the organization (an unknown one fails the retrieval step, naming it).
#[derive(Debug, Clone, Copy, Default)]
pub struct KnowledgeRetriever;

impl crate::engine::pipeline::Retriever for KnowledgeRetriever {
    fn search(
        &self, conn: &mut DbConnection, org_id: &str, kb_ids: &[String], query: &str,
        options: &crate::engine::pipeline::KnowledgeQuery,
    ) -> crate::db::StoreResult<Vec<crate::engine::provider::Passage>> {
        let known = store::kb_ids(conn, org_id, None)?;
        let missing: Vec<&str> = kb_ids
            .iter()
            .filter(|id| !known.contains(id))
            .map(String::as_str)
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::Conflict(format!(
                "the agent's knowledge bases {} do not exist",
                missing.join(", ")
            )));
        }
        let options = SearchOptions {
            top_k: options.top_k,
            min_score: options.min_score,
            filters: options.filters.clone(),
        };
        Ok(search(conn, org_id, kb_ids, query, &options)?
            .into_iter()
            .map(|hit| crate::engine::provider::Passage {
                source: hit
                    .metadata
                    .get("title")
                    .and_then(Value::as_str)
                    .unwrap_or(&hit.document_id)
                    .to_string(),
                id: hit.chunk_id,
                text: hit.text,
                score: hit.score,
            })
            .collect())
    }
}
