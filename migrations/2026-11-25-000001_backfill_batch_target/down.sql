-- squawk-ignore-file require-lock-timeout, ban-drop-column
ALTER TABLE zdm_backfill DROP COLUMN batch_target_ms;
