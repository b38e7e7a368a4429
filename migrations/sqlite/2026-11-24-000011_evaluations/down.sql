DROP TABLE evaluation_runs;
DROP TABLE evaluations;
