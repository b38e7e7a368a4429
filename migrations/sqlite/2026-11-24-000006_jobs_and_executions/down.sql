DROP INDEX executions_by_agent;
ALTER TABLE executions DROP COLUMN updated_at;
ALTER TABLE executions DROP COLUMN conversation_id;
DROP TABLE jobs;
