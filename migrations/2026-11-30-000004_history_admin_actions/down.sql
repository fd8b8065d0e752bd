-- The old CHECK comes back NOT VALID and is validated where it can be: rows of the new actions
-- stay (the history is append-only), and where there are some it stays NOT VALID, holding new
-- rows only.
-- squawk-ignore-file ban-drop-constraint, require-lock-timeout
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
ALTER TABLE zdm_migration_history DROP CONSTRAINT zdm_migration_history_action_check;
ALTER TABLE zdm_migration_history ADD CONSTRAINT zdm_migration_history_action_check
    CHECK (action IN ('advance', 'rollback')) NOT VALID;
DO $$
BEGIN
    ALTER TABLE zdm_migration_history VALIDATE CONSTRAINT zdm_migration_history_action_check;
EXCEPTION WHEN check_violation THEN
    RAISE NOTICE 'the history holds backfill or verify actions: the CHECK stays NOT VALID';
END;
$$;
