-- The session name of a caller proven as an assumed IAM role: its principal names the role
-- (`arn:aws:iam::ACCOUNT:role/ROLE`, what a policy names ahead of time), and the session
-- (`arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION`) tells apart the role's holders, a pod or
-- an instance, in the audit trail. NULL for every other method, and in rows the service
-- writes on a record's behalf (the completer, a forced stop).
ALTER TABLE stop_audit ADD COLUMN auth_session TEXT;
