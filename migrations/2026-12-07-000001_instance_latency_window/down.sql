-- squawk-ignore-file require-lock-timeout, ban-drop-column
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
ALTER TABLE zdm_instances DROP COLUMN IF EXISTS recent_latency_counts;
ALTER TABLE zdm_instances DROP COLUMN IF EXISTS recent_latency_le;
