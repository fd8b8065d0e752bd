-- The backfill can wait for streaming replicas to catch up: a `throttled` state, and what it
-- is waiting for. zdm_backfill is the backfill's own one-row table: no application traffic
-- touches it, so replacing its CHECK here takes no lock that matters.
-- squawk-ignore-file ban-drop-constraint, constraint-missing-not-valid, require-lock-timeout, adding-field-with-default
ALTER TABLE zdm_backfill DROP CONSTRAINT zdm_backfill_state_check;
ALTER TABLE zdm_backfill ADD CONSTRAINT zdm_backfill_state_check
    CHECK (state IN ('idle', 'running', 'paused', 'done', 'failed', 'cancelled', 'throttled'));
-- The largest replay lag of the replicas at the last check, in bytes of WAL.
ALTER TABLE zdm_backfill ADD COLUMN replica_lag_bytes BIGINT NOT NULL DEFAULT 0;
-- Why the backfill waits, while it is throttled.
ALTER TABLE zdm_backfill ADD COLUMN throttle_reason TEXT;
