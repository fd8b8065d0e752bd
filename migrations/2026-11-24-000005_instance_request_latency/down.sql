-- squawk-ignore-file require-lock-timeout, ban-drop-column
ALTER TABLE zdm_instances DROP COLUMN recent_p99_ms;
