-- The database session (backend pid) of the holder's listening connection: when that session
-- is gone (the holder's process died and its connections with it), the lease is free at once
-- instead of when it runs out. NULL: not known, the lease alone counts.
ALTER TABLE watch_pollers ADD COLUMN holder_pid INTEGER;
