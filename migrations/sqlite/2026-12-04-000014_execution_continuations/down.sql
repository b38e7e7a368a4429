DROP TABLE execution_continuations;
