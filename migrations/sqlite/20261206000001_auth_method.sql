-- How each caller proved who it is, beside the principal it proved: `mtls`, `token`, `jwt`,
-- `iam`, `mesh`, or `anonymous` without authentication. See migrations/postgres for the
-- meaning of each column; NULL in rows recorded before it existed.
ALTER TABLE stop_requests ADD COLUMN auth_method TEXT;
ALTER TABLE stop_audit ADD COLUMN auth_method TEXT;
