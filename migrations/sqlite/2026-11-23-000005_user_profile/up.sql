-- Profile settings a user edits themselves (PUT /v1/users/me): notification preferences as a
-- JSON document, and when the profile last changed (existing users: their creation time).
ALTER TABLE users ADD COLUMN preferences TEXT NOT NULL DEFAULT '{"email":true,"slack":false}';
ALTER TABLE users ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';
UPDATE users SET updated_at = created_at;
