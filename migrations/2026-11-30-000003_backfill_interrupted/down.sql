-- Before this migration a backfill whose runner was gone stayed `running`; a start resumes
-- it from its checkpoint either way.
-- squawk-ignore-file ban-drop-constraint, constraint-missing-not-valid, require-lock-timeout
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
UPDATE zdm_backfill SET state = 'running' WHERE state = 'interrupted';
ALTER TABLE zdm_backfill DROP CONSTRAINT zdm_backfill_state_check;
ALTER TABLE zdm_backfill ADD CONSTRAINT zdm_backfill_state_check
    CHECK (state IN ('idle', 'running', 'paused', 'done', 'failed', 'cancelled', 'throttled'));
