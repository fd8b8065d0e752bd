-- New tables only: no other session can hold a lock on them.
-- squawk-ignore-file require-lock-timeout
-- The phase every app instance follows: exactly one row.
CREATE TABLE zdm_migration_state (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    phase TEXT NOT NULL CHECK (phase IN (
        'baseline', 'expanded', 'dual_write', 'backfilled', 'read_new', 'new_only', 'contracted'
    )),
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO zdm_migration_state (phase) VALUES ('baseline');

-- Every transition and rollback, attempted or done: who, when, and how it ended.
CREATE TABLE zdm_migration_history (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    action TEXT NOT NULL CHECK (action IN ('advance', 'rollback')),
    from_phase TEXT NOT NULL,
    to_phase TEXT NOT NULL,
    actor TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The history is append-only: rows can be added, never changed or removed.
CREATE FUNCTION zdm_history_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'zdm_migration_history is append-only (% refused)', TG_OP;
END;
$$;
CREATE TRIGGER zdm_history_no_update_or_delete
    BEFORE UPDATE OR DELETE ON zdm_migration_history
    FOR EACH ROW EXECUTE FUNCTION zdm_history_is_append_only();
CREATE TRIGGER zdm_history_no_truncate
    BEFORE TRUNCATE ON zdm_migration_history
    FOR EACH STATEMENT EXECUTE FUNCTION zdm_history_is_append_only();
