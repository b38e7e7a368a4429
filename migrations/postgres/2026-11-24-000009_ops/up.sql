-- Operations: per-key rate limits and their counters, and security events.

-- A key's own limits; NULL takes the server-wide default.
ALTER TABLE api_keys ADD COLUMN rate_limit_per_hour BIGINT;
ALTER TABLE api_keys ADD COLUMN rate_limit_burst BIGINT;

-- Fixed-window counters, one row per key: the hourly window and the one-second burst window,
-- each with the Unix second it started. One upsert per request increments both, so every
-- replica sharing the database sees the same counts.
CREATE TABLE rate_limit_counters (
    key_id TEXT PRIMARY KEY NOT NULL,
    window_start BIGINT NOT NULL,
    window_count BIGINT NOT NULL,
    burst_start BIGINT NOT NULL,
    burst_count BIGINT NOT NULL
);

-- Security-relevant things as they happen. `org_id` is NULL when nothing identified an
-- organization (an unknown API key). Never holds a secret.
CREATE TABLE security_events (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT,
    event_type TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    key_id TEXT,
    user_id TEXT,
    resource_type TEXT,
    resource_id TEXT,
    details TEXT NOT NULL,
    request_id TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX security_events_by_org ON security_events (org_id, id);
