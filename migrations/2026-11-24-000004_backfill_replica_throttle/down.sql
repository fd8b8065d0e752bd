-- squawk-ignore-file ban-drop-constraint, constraint-missing-not-valid, require-lock-timeout, ban-drop-column
UPDATE zdm_backfill SET state = 'running' WHERE state = 'throttled';
ALTER TABLE zdm_backfill DROP COLUMN throttle_reason;
ALTER TABLE zdm_backfill DROP COLUMN replica_lag_bytes;
ALTER TABLE zdm_backfill DROP CONSTRAINT zdm_backfill_state_check;
ALTER TABLE zdm_backfill ADD CONSTRAINT zdm_backfill_state_check
    CHECK (state IN ('idle', 'running', 'paused', 'done', 'failed', 'cancelled'));
