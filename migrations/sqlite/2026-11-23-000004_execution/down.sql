DROP TABLE usage_records;
DROP TABLE messages;
DROP TABLE conversations;
DROP TABLE executions;
DROP TABLE models;
DROP TABLE prompt_templates;
