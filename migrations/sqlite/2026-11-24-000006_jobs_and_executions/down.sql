DROP INDEX executions_by_agent;
DROP TABLE jobs;
