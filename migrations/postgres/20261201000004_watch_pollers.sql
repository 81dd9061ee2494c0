-- Watching shared by the replicas on this database: one row per watched execution. The
-- replica holding the lease reads the execution from SageMaker and publishes each changed
-- snapshot here (and with NOTIFY); the others feed their watchers from it. SQLite, with one
-- process, has no such table: its pollers are in-process only.
CREATE TABLE watch_pollers (
    execution_arn    TEXT        PRIMARY KEY,
    -- The replica that reads it from SageMaker while the lease runs (database clock).
    owner            TEXT        NOT NULL,
    lease_expires_at TIMESTAMPTZ NOT NULL,
    -- Bumped by each publication; 0 before the first.
    version          BIGINT      NOT NULL DEFAULT 0,
    -- The latest publication as JSON: a snapshot, or that the execution does not exist.
    snapshot         TEXT,
    -- When the holder last read SageMaker (heartbeats report it).
    observed_at      TIMESTAMPTZ,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Rows nobody has held for a while are deleted in the background.
CREATE INDEX watch_pollers_lease ON watch_pollers (lease_expires_at);
