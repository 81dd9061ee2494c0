-- StopExecutions: one row per batch key (principal, client_token) with the executions the
-- batch selected, so that the same batch retried stops the same executions (replaying those
-- already done) rather than whatever is Executing by then. Each execution's stop is a row of
-- stop_requests of its own, keyed by a token derived from the batch's.
CREATE TABLE stop_batches (
    principal     TEXT        NOT NULL,
    client_token  TEXT        NOT NULL,
    -- Hex SHA-256 of the canonical batch request (pipeline, reason, filters, limit): the same
    -- key with another fingerprint is a reused key.
    fingerprint   TEXT        NOT NULL,
    pipeline_arn  TEXT        NOT NULL,
    -- The selected execution ARNs, newest first, one per line.
    selected      TEXT        NOT NULL,
    -- Whether more executions were Executing than the batch's limit.
    truncated     BOOLEAN     NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Deleted with the stop requests' retention; the token may then be used afresh.
    expires_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (principal, client_token)
);

CREATE INDEX stop_batches_expires_at ON stop_batches (expires_at);
