-- The vault (credentials sealed under the master key, vault tokens stored hashed), digital
-- twins (data-source connection strings sealed) and their simulations.
CREATE TABLE vault_credentials (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    cred_type TEXT NOT NULL,
    environment TEXT,
    description TEXT,
    body TEXT NOT NULL,
    value_sealed TEXT NOT NULL,
    last_accessed_at TEXT,
    version BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX vault_credentials_by_org ON vault_credentials (org_id, id);

CREATE TABLE vault_tokens (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    expires_at TEXT,
    last_used_at TEXT,
    revoked_at TEXT
);
CREATE INDEX vault_tokens_by_org ON vault_tokens (org_id, id);

CREATE TABLE twins (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    twin_type TEXT NOT NULL,
    description TEXT,
    body TEXT NOT NULL,
    secrets TEXT NOT NULL,
    version BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX twins_by_org ON twins (org_id, id);

CREATE TABLE simulations (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    twin_id TEXT NOT NULL REFERENCES twins (id) ON DELETE CASCADE,
    scenario TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    parameters TEXT NOT NULL,
    seed BIGINT NOT NULL,
    runs BIGINT NOT NULL,
    run_async BIGINT NOT NULL,
    notification_webhook TEXT,
    results TEXT,
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX simulations_by_twin ON simulations (twin_id, id);
CREATE INDEX simulations_by_status ON simulations (status, id);
