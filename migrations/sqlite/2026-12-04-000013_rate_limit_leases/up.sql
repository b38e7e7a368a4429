-- Each API key's hourly budget, leased to replicas in blocks: the window the key is in, the
-- permits leased in it so far, the size of the last grant and the refused leases. A replica
-- takes the next permits in one upsert and serves requests from them in memory, so requests do
-- not write the database one by one (src/db/ratelimit.rs).
--
-- rate_limit_counters (one upsert per request, earlier versions) stays as it is, so that
-- replicas of the previous version keep counting during a rolling upgrade; nothing reads it now.
CREATE TABLE rate_limit_leases (
    key_id TEXT PRIMARY KEY NOT NULL,
    window_start BIGINT NOT NULL,
    leased BIGINT NOT NULL,
    granted BIGINT NOT NULL,
    denials BIGINT NOT NULL
);
