-- The durable queue for background work (executions first; syncs, simulations, evaluation
-- runs and webhook deliveries later), and the index executions are listed by per agent.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    -- The agent the job serves, when it serves one: the key of per-agent concurrency limits.
    agent_id TEXT,
    payload TEXT NOT NULL,
    -- queued, running, succeeded, failed
    status TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until TEXT,
    run_after TEXT NOT NULL,
    last_error TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX jobs_claimable ON jobs (status, run_after, id);
CREATE INDEX jobs_by_agent ON jobs (agent_id, status);

CREATE INDEX executions_by_agent ON executions (org_id, agent_id, id);
