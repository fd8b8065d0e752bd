-- squawk-ignore-file ban-drop-constraint, constraint-missing-not-valid, require-lock-timeout, ban-drop-column
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
UPDATE zdm_backfill SET state = 'running' WHERE state = 'throttled';
ALTER TABLE zdm_backfill DROP COLUMN throttle_reason;
ALTER TABLE zdm_backfill DROP COLUMN replica_lag_bytes;
ALTER TABLE zdm_backfill DROP CONSTRAINT zdm_backfill_state_check;
ALTER TABLE zdm_backfill ADD CONSTRAINT zdm_backfill_state_check
    CHECK (state IN ('idle', 'running', 'paused', 'done', 'failed', 'cancelled'));
