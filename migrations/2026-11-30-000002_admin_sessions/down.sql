-- Removes the tables the up migration created: every admin is logged out.
-- squawk-ignore-file ban-drop-table, require-lock-timeout
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
DROP TABLE zdm_admin_login_failures;
DROP TABLE zdm_admin_sessions;
