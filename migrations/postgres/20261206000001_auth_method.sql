-- How each caller proved who it is, beside the principal it proved: `mtls`, `token`, `jwt`,
-- `iam`, `mesh`, or `anonymous` without authentication.

-- The method of the call that made the request. It is neither key nor fingerprint: the same
-- principal proven another way (a static token replaced by a JWT) replays its own requests.
-- NULL in rows recorded before this column existed: the method is unknown, not guessed.
ALTER TABLE stop_requests ADD COLUMN auth_method TEXT;

-- The method of the caller whose call the row records: a replay's own caller, which may
-- differ from the record's; a row written by the service on a record's behalf (the
-- completer, a forced stop) carries the record's. NULL in rows written before.
ALTER TABLE stop_audit ADD COLUMN auth_method TEXT;
