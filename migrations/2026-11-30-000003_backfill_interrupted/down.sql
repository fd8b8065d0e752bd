-- Before this migration a backfill whose runner was gone stayed `running`; a start resumes
-- it from its checkpoint either way.
-- squawk-ignore-file ban-drop-constraint, constraint-missing-not-valid, require-lock-timeout
UPDATE zdm_backfill SET state = 'running' WHERE state = 'interrupted';
ALTER TABLE zdm_backfill DROP CONSTRAINT zdm_backfill_state_check;
ALTER TABLE zdm_backfill ADD CONSTRAINT zdm_backfill_state_check
    CHECK (state IN ('idle', 'running', 'paused', 'done', 'failed', 'cancelled', 'throttled'));
