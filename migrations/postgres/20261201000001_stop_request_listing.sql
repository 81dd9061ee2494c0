-- ListStopRequests: a principal's own requests newest first, everyone's for auditors, and
-- either filtered by pipeline or by execution. Pages are keyset pages in the order
-- (created_at, principal, client_token) descending, which these indexes serve.

-- The pipeline an execution belongs to (its ARN before `/execution/`), set on insert, so that
-- the pipeline filter is an equality an index can serve.
ALTER TABLE stop_requests ADD COLUMN pipeline_arn TEXT NOT NULL DEFAULT '';
UPDATE stop_requests SET pipeline_arn = split_part(pipeline_execution_arn, '/execution/', 1);

-- One principal's requests, newest first.
CREATE INDEX stop_requests_principal_newest
    ON stop_requests (principal, created_at DESC, client_token DESC);
-- Every principal's requests, newest first (auditors).
CREATE INDEX stop_requests_newest
    ON stop_requests (created_at DESC, principal DESC, client_token DESC);
-- One pipeline's requests, newest first.
CREATE INDEX stop_requests_pipeline ON stop_requests (pipeline_arn, created_at DESC);
