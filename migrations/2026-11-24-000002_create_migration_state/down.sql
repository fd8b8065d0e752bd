DROP TABLE zdm_migration_history;
DROP FUNCTION zdm_history_is_append_only();
DROP TABLE zdm_migration_state;
