-- Removes the tables and functions the up migration created; only for development databases.
-- squawk-ignore-file ban-drop-table, ban-drop-function, require-lock-timeout
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
DROP FUNCTION zdm_require_phase(text[], text, text);
DROP TABLE zdm_backfill;
DROP TABLE zdm_verify;
DROP TABLE zdm_instances;
DROP FUNCTION zdm_name_join(text, text);
DROP FUNCTION zdm_name_last(text);
DROP FUNCTION zdm_name_first(text);
DROP FUNCTION zdm_name_norm(text);
