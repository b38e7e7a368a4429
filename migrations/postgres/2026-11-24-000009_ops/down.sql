DROP TABLE security_events;
DROP TABLE rate_limit_counters;
ALTER TABLE api_keys DROP COLUMN rate_limit_burst;
ALTER TABLE api_keys DROP COLUMN rate_limit_per_hour;
