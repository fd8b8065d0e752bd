-- squawk-ignore-file require-lock-timeout, ban-drop-column, ban-drop-function
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
DROP FUNCTION IF EXISTS zdm_lock_attempt();
ALTER TABLE zdm_migration_state DROP COLUMN IF EXISTS lock_attempt_ms;
