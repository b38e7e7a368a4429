-- Stored security scans of agents. No foreign key to agents: a scan outlives the agent it
-- reviewed (and deleting an agent must not race with a scan being stored). `findings` is a
-- JSON array that never holds a secret; `max_severity` (0 none, 1 low … 4 critical) is what
-- `min_severity` filters on.
CREATE TABLE security_scans (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    agent_version BIGINT NOT NULL,
    findings TEXT NOT NULL,
    critical_count BIGINT NOT NULL,
    high_count BIGINT NOT NULL,
    medium_count BIGINT NOT NULL,
    low_count BIGINT NOT NULL,
    max_severity BIGINT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX security_scans_by_org ON security_scans (org_id, id);
CREATE INDEX security_scans_by_agent ON security_scans (org_id, agent_id, id);
