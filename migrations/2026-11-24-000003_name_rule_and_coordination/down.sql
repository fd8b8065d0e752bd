-- Removes the tables and functions the up migration created; only for development databases.
-- squawk-ignore-file ban-drop-table, ban-drop-function, require-lock-timeout
DROP FUNCTION zdm_require_phase(text[], text, text);
DROP TABLE zdm_backfill;
DROP TABLE zdm_verify;
DROP TABLE zdm_instances;
DROP FUNCTION zdm_name_join(text, text);
DROP FUNCTION zdm_name_last(text);
DROP FUNCTION zdm_name_first(text);
DROP FUNCTION zdm_name_norm(text);
