-- Knowledge bases (= RAG collections), their sources, documents and chunks; sync jobs; tools.
-- Chunks carry a generated tsvector (English configuration) under a GIN index, ranked with
-- ts_rank_cd().
CREATE TABLE knowledge_bases (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kb_type TEXT NOT NULL,
    description TEXT,
    body TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX knowledge_bases_org_created ON knowledge_bases (org_id, created_at, id);

CREATE TABLE knowledge_sources (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    kb_id TEXT NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    source_type TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL,
    last_sync_at TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX knowledge_sources_kb ON knowledge_sources (org_id, kb_id, created_at, id);

CREATE TABLE knowledge_documents (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    kb_id TEXT NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    source_id TEXT,
    title TEXT NOT NULL,
    content_type TEXT NOT NULL,
    metadata TEXT NOT NULL,
    chunk_count BIGINT NOT NULL,
    char_count BIGINT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX knowledge_documents_kb ON knowledge_documents (org_id, kb_id, created_at, id);
CREATE INDEX knowledge_documents_source ON knowledge_documents (source_id);

CREATE TABLE knowledge_chunks (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    kb_id TEXT NOT NULL,
    document_id TEXT NOT NULL REFERENCES knowledge_documents (id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED
);
CREATE INDEX knowledge_chunks_document ON knowledge_chunks (document_id, position);
CREATE INDEX knowledge_chunks_kb ON knowledge_chunks (kb_id);

CREATE INDEX knowledge_chunks_tsv ON knowledge_chunks USING GIN (tsv);

CREATE TABLE knowledge_syncs (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    kb_id TEXT NOT NULL REFERENCES knowledge_bases (id) ON DELETE CASCADE,
    source_id TEXT NOT NULL,
    status TEXT NOT NULL,
    error TEXT,
    documents BIGINT NOT NULL,
    chunks BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX knowledge_syncs_status ON knowledge_syncs (status);

CREATE TABLE tools (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    tool_type TEXT NOT NULL,
    description TEXT,
    body TEXT NOT NULL,
    secrets TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX tools_org_created ON tools (org_id, created_at, id);
