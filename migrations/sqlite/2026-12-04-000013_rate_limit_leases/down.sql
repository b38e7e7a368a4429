DROP TABLE rate_limit_leases;
