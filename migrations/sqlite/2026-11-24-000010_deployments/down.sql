DROP INDEX executions_by_agent_finished;
DROP TABLE agent_logs;
DROP TABLE agent_deployments;
