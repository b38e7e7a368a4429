DROP TABLE tools;
DROP TABLE knowledge_syncs;
DROP TABLE knowledge_chunks;
DROP TABLE knowledge_documents;
DROP TABLE knowledge_sources;
DROP TABLE knowledge_bases;
