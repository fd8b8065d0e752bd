-- Removes the tables and function the up migration created; only for development databases.
-- squawk-ignore-file ban-drop-table, ban-drop-function, require-lock-timeout
DROP TABLE zdm_migration_history;
DROP FUNCTION zdm_history_is_append_only();
DROP TABLE zdm_migration_state;
