-- Removes the tables and function the up migration created; only for development databases.
-- squawk-ignore-file ban-drop-table, ban-drop-function, require-lock-timeout
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
DROP TABLE zdm_migration_history;
DROP FUNCTION zdm_history_is_append_only();
DROP TABLE zdm_migration_state;
