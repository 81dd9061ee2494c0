-- The session name of a caller proven as an assumed IAM role (see migrations/postgres).
ALTER TABLE stop_audit ADD COLUMN auth_session TEXT;
