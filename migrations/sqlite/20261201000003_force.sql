-- (SQLite: times are milliseconds since the epoch, as in stop_requests.)
-- force_after: a stop may ask that, when the execution is still Stopping that long after the
-- stop, the Callback steps that hold it are answered with SendPipelineExecutionStepFailure.
-- The deadline lives with the record, so any replica carries it out, after restarts too; the
-- replica that does claims the record with the same lease and fencing epoch as a stop.

-- When the stop is to be forced (NULL: never), when that was done, and what could not be
-- forced (a Lambda step cannot be interrupted).
ALTER TABLE stop_requests ADD COLUMN force_at INTEGER;
ALTER TABLE stop_requests ADD COLUMN forced_at INTEGER;
ALTER TABLE stop_requests ADD COLUMN force_note TEXT;

-- The background forcer looks for due deadlines not yet carried out.
CREATE INDEX stop_requests_force_due ON stop_requests (force_at)
    WHERE force_at IS NOT NULL AND forced_at IS NULL;

-- Each callback a forced stop released: once per (request, callback token), written by the
-- epoch that holds the record.
CREATE TABLE stop_releases (
    principal      TEXT        NOT NULL,
    client_token   TEXT        NOT NULL,
    callback_token TEXT        NOT NULL,
    step_name      TEXT        NOT NULL,
    epoch          INTEGER     NOT NULL,
    worker         TEXT        NOT NULL,
    released_at    INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    PRIMARY KEY (principal, client_token, callback_token)
);

-- What an audit event is about beyond its outcome (the released step and callback token).
ALTER TABLE stop_audit ADD COLUMN detail TEXT;
