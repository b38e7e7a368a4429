ALTER TABLE users DROP COLUMN updated_at;
ALTER TABLE users DROP COLUMN preferences;
