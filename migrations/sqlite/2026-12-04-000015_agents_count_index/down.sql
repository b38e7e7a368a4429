DROP INDEX agents_count;
