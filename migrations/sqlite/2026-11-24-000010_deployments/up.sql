-- Agent deployments in the runtime (Agent Launchpad status, scale, restart) and agent logs.
CREATE TABLE agent_deployments (
    -- No foreign key to agents: a delete cascading here raced (deadlocked on PostgreSQL)
    -- with a concurrent status read creating the row. Rows of a deleted agent are unreachable.
    agent_id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    target_replicas BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    -- While restarting: executions started before this instant belong to the old revision.
    drain_before TEXT,
    deployed_at TEXT NOT NULL,
    last_updated TEXT NOT NULL
);
CREATE INDEX agent_deployments_by_state ON agent_deployments (state);

CREATE TABLE agent_logs (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    agent_id TEXT NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    revision BIGINT NOT NULL,
    execution_id TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX agent_logs_by_agent ON agent_logs (agent_id, created_at, id);
CREATE INDEX executions_by_agent_finished ON executions (agent_id, status, finished_at);
