-- The stop-request store: one row per idempotency key, and an append-only audit trail.
--
-- The same schema as migrations/postgres, in SQLite's terms. Times are INTEGER milliseconds
-- since the Unix epoch, taken from the database (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
-- so comparisons for leases and expiry are exact and independent of text formats.

-- One row per idempotency key: (principal, client_token). See migrations/postgres for the
-- meaning of each column.
CREATE TABLE stop_requests (
    principal              TEXT    NOT NULL,
    client_token           TEXT    NOT NULL,
    fingerprint            TEXT    NOT NULL,
    method                 TEXT    NOT NULL,
    pipeline_execution_arn TEXT    NOT NULL,
    reason                 TEXT    NOT NULL DEFAULT '',
    upstream_token         TEXT    NOT NULL,
    state                  TEXT    NOT NULL DEFAULT 'pending'
                                   CHECK (state IN ('pending', 'completed')),
    lease_owner            TEXT,
    lease_expires_at       INTEGER,
    epoch                  INTEGER NOT NULL DEFAULT 1,
    attempts               INTEGER NOT NULL DEFAULT 0,
    outcome                TEXT    CHECK (outcome IN ('STOP_REQUESTED', 'ALREADY_STOPPING', 'ALREADY_STOPPED')),
    error_code             TEXT,
    execution_status       TEXT,
    last_error             TEXT,
    created_at             INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    updated_at             INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    completed_at           INTEGER,
    expires_at             INTEGER NOT NULL,
    PRIMARY KEY (principal, client_token),
    CONSTRAINT stop_requests_completion CHECK (
        (state = 'pending' AND outcome IS NULL AND error_code IS NULL AND completed_at IS NULL)
        OR (state = 'completed' AND (outcome IS NULL) <> (error_code IS NULL) AND completed_at IS NOT NULL)
    )
) STRICT;

-- The retention task deletes expired rows in bounded batches, oldest first.
CREATE INDEX stop_requests_expires_at ON stop_requests (expires_at);

-- The background completer looks for pending requests whose lease ran out.
CREATE INDEX stop_requests_pending_lease ON stop_requests (lease_expires_at) WHERE state = 'pending';

-- Every stop request for one execution, in order.
CREATE INDEX stop_requests_execution ON stop_requests (pipeline_execution_arn, created_at);

-- Append-only audit trail, not tied to stop_requests so it outlives their retention.
CREATE TABLE stop_audit (
    id                     INTEGER PRIMARY KEY AUTOINCREMENT,
    at                     INTEGER NOT NULL DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)),
    principal              TEXT    NOT NULL,
    client_token           TEXT    NOT NULL,
    pipeline_execution_arn TEXT    NOT NULL,
    reason                 TEXT    NOT NULL DEFAULT '',
    event                  TEXT    NOT NULL,
    outcome                TEXT,
    error_code             TEXT,
    epoch                  INTEGER,
    worker                 TEXT
) STRICT;

CREATE INDEX stop_audit_execution ON stop_audit (pipeline_execution_arn, at);
CREATE INDEX stop_audit_principal ON stop_audit (principal, at);
CREATE INDEX stop_audit_at ON stop_audit (at);
