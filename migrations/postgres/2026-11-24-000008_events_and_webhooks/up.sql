-- The event log, webhook subscriptions and their durable delivery outbox.
--
-- An event and the deliveries it fans out to are inserted in the caller's transaction, so
-- both commit or neither does. A delivery row is the outbox: workers on any replica claim
-- due rows with a lease (status 'delivering', lease_expires_at), and a lease that expires
-- (its holder died) is claimed again, so nothing accepted is lost across a restart.
-- `target` is for ad-hoc deliveries without a subscription (a simulation's notification
-- webhook): JSON `{"url", "secret_encrypted"}`.
CREATE TABLE events (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    subject_id TEXT,
    data TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX events_by_org ON events (org_id, id);
CREATE INDEX events_by_org_time ON events (org_id, created_at);

CREATE TABLE webhooks (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secret_encrypted TEXT NOT NULL,
    active BIGINT NOT NULL,
    description TEXT,
    version BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX webhooks_by_org ON webhooks (org_id, id);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    webhook_id TEXT REFERENCES webhooks (id) ON DELETE CASCADE,
    target TEXT,
    event_id TEXT NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    event_type TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at TEXT,
    lease_owner TEXT,
    lease_expires_at TEXT,
    last_attempt_at TEXT,
    response_status BIGINT,
    error TEXT,
    created_at TEXT NOT NULL,
    completed_at TEXT
);
CREATE INDEX webhook_deliveries_by_webhook ON webhook_deliveries (webhook_id, id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
