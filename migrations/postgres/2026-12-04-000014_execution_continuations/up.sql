-- Where a paused execution goes on from (src/engine/runner.rs `Continuation`, JSON): the model ⇄
-- tools loop waiting for the outputs of its `function` tool calls, or, once they are posted,
-- the loop to resume. One row per execution that paused; its pending calls are also its
-- `requires_action` steps, which is what the API shows.
CREATE TABLE execution_continuations (
    execution_id TEXT PRIMARY KEY NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
