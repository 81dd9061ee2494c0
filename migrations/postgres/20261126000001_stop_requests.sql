-- The stop-request store: one row per idempotency key, and an append-only audit trail.
--
-- Times come from the database clock (now()), never from a replica's clock, so that leases
-- and expiry mean the same thing to every replica sharing this database.

-- One row per idempotency key: (principal, client_token). The row is claimed (state
-- 'pending', with a lease) before anything is sent upstream, and completed with the outcome
-- that every retry of the same key replays.
CREATE TABLE stop_requests (
    -- Who asked: the authenticated principal ('anonymous' without auth).
    principal              TEXT        NOT NULL,
    -- The caller's idempotency token (or the one generated for it).
    client_token           TEXT        NOT NULL,
    -- Hex SHA-256 of the canonical request (method, ARN, reason): the same key with another
    -- fingerprint is a reused key, answered FAILED_PRECONDITION.
    fingerprint            TEXT        NOT NULL,
    -- The RPC the key was used with (StopExecution).
    method                 TEXT        NOT NULL,
    pipeline_execution_arn TEXT        NOT NULL,
    reason                 TEXT        NOT NULL DEFAULT '',
    -- SageMaker's ClientRequestToken, derived from the key: identical on every attempt, by
    -- every replica, so SageMaker deduplicates too.
    upstream_token         TEXT        NOT NULL,
    state                  TEXT        NOT NULL DEFAULT 'pending'
                                       CHECK (state IN ('pending', 'completed')),
    -- The worker that holds the claim, and until when. A lease that ran out may be taken over
    -- (by a retry or the background completer), which bumps the epoch.
    lease_owner            TEXT,
    lease_expires_at       TIMESTAMPTZ,
    -- Fencing epoch: every write after the claim is conditional on it, so a worker that lost
    -- its lease cannot overwrite the result of a newer one.
    epoch                  BIGINT      NOT NULL DEFAULT 1,
    -- How many times the stop was attempted upstream.
    attempts               INTEGER     NOT NULL DEFAULT 0,
    -- Success: STOP_REQUESTED, ALREADY_STOPPING or ALREADY_STOPPED.
    outcome                TEXT        CHECK (outcome IN ('STOP_REQUESTED', 'ALREADY_STOPPING', 'ALREADY_STOPPED')),
    -- A final error that is replayed: the ErrorInfo reason (EXECUTION_NOT_FOUND,
    -- EXECUTION_ALREADY_TERMINAL).
    error_code             TEXT,
    -- The execution status known when the request completed (SageMaker's spelling).
    execution_status       TEXT,
    -- The last transient failure, for operators; never sent to callers.
    last_error             TEXT,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at           TIMESTAMPTZ,
    -- After this the row is deleted by the retention task and the token may be reused.
    expires_at             TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (principal, client_token),
    -- A completed request has exactly one of an outcome and an error; a pending one neither.
    CONSTRAINT stop_requests_completion CHECK (
        (state = 'pending' AND outcome IS NULL AND error_code IS NULL AND completed_at IS NULL)
        OR (state = 'completed' AND (outcome IS NULL) <> (error_code IS NULL) AND completed_at IS NOT NULL)
    )
);

-- The retention task deletes expired rows in bounded batches, oldest first.
CREATE INDEX stop_requests_expires_at ON stop_requests (expires_at);

-- The background completer looks for pending requests whose lease ran out.
CREATE INDEX stop_requests_pending_lease ON stop_requests (lease_expires_at) WHERE state = 'pending';

-- Every stop request for one execution, in order (operators, audits).
CREATE INDEX stop_requests_execution ON stop_requests (pipeline_execution_arn, created_at);

-- Append-only audit trail: who asked what, why, when, and what came of it. Rows are not
-- tied to stop_requests, so they outlive the idempotency records' retention.
CREATE TABLE stop_audit (
    id                     BIGSERIAL   PRIMARY KEY,
    at                     TIMESTAMPTZ NOT NULL DEFAULT now(),
    principal              TEXT        NOT NULL,
    client_token           TEXT        NOT NULL,
    pipeline_execution_arn TEXT        NOT NULL,
    reason                 TEXT        NOT NULL DEFAULT '',
    -- What happened: received, replayed, completed, failed_transient, taken_over, key_reused.
    event                  TEXT        NOT NULL,
    outcome                TEXT,
    error_code             TEXT,
    epoch                  BIGINT,
    -- Which replica wrote the row.
    worker                 TEXT
);

CREATE INDEX stop_audit_execution ON stop_audit (pipeline_execution_arn, at);
CREATE INDEX stop_audit_principal ON stop_audit (principal, at);
CREATE INDEX stop_audit_at ON stop_audit (at);
