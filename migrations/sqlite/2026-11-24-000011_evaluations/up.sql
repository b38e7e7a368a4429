-- Evaluations of agents on datasets of cases (Magnet AI), and their runs.
CREATE TABLE evaluations (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    target_id TEXT NOT NULL,
    -- JSON: description, type, test_cases, pass_criteria.
    body TEXT NOT NULL,
    latest_run_id TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX evaluations_by_org ON evaluations (org_id, id);

CREATE TABLE evaluation_runs (
    id TEXT PRIMARY KEY NOT NULL,
    org_id TEXT NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    evaluation_id TEXT NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    -- JSON: the aggregates, and every case's result.
    summary TEXT,
    results TEXT NOT NULL,
    error TEXT,
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX evaluation_runs_by_evaluation ON evaluation_runs (evaluation_id, id);
CREATE INDEX evaluation_runs_by_status ON evaluation_runs (status);
