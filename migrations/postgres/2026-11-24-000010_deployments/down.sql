DROP INDEX executions_by_agent;
DROP TABLE agent_logs;
DROP TABLE agent_deployments;
