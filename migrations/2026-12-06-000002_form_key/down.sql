-- Removes the server's keys: every form a user page showed before must be reloaded.
-- squawk-ignore-file ban-drop-table, require-lock-timeout
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
DROP TABLE zdm_server_keys;
