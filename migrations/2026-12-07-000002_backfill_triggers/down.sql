-- squawk-ignore-file require-lock-timeout, ban-drop-column, ban-drop-function
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
-- The bodies of 2026-12-06-000003_gate_table.
CREATE OR REPLACE FUNCTION zdm_gate_table()
RETURNS TABLE (step text, from_phases text[], gate text, arguments text[])
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    VALUES
    -- Every step first finds the schema as its phase has it.
    ('advance',  NULL::text[],                         'schema',           NULL::text[]),
    ('rollback', NULL,                                 'schema',           NULL),
    -- What reads every row must see every row: the backfill, verify, the reverse backfill.
    ('advance',  '{dual_write,backfilled,read_new}',   'row security',     NULL),
    ('rollback', '{new_only}',                         'row security',     NULL),
    ('backfill', NULL,                                 'row security',     NULL),
    ('verify',   NULL,                                 'row security',     NULL),
    ('refill',   NULL,                                 'row security',     NULL),
    -- Forward: the fleet has applied the phase being left (or a later one).
    ('advance',  '{expanded}',                         'instances',        '{expanded,contracted}'),
    ('advance',  '{dual_write}',                       'instances',        '{dual_write,contracted}'),
    ('advance',  '{dual_write}',                       'backfill',         NULL),
    ('advance',  '{read_new}',                         'instances',        '{read_new,contracted}'),
    -- The contract: nothing may use full_name any more, and a person confirms the drop.
    ('advance',  '{new_only}',                         'instances',        '{new_only,contracted}'),
    ('advance',  '{new_only}',                         'dependencies',     '{full_name}'),
    ('advance',  '{new_only}',                         'clients',          NULL),
    ('advance',  '{new_only}',                         'confirmation',     NULL),
    -- I2 (the invariants are listed in src/migration/mod.rs) holds on every row: before the
    -- guard is validated, before reads switch to the new columns, and the last moment
    -- full_name is kept (not checked with verify_mode 'skip': the step verifies later itself).
    ('advance',  '{dual_write,backfilled,read_new}',   'verify',           NULL),
    -- The new columns are dropped: no instance may still write them, nothing may use them.
    ('rollback', '{expanded}',                         'instances',        '{baseline,expanded}'),
    ('rollback', '{expanded}',                         'dependencies',     '{first_name,last_name}'),
    ('refill',   NULL,                                 'instances',        '{dual_write,read_new}'),
    ('refill',   NULL,                                 'reverse backfill', NULL),
    -- No row the backfill fills may be overwritten by a write of full_name alone.
    ('backfill', NULL,                                 'phase',            '{dual_write,backfilled,read_new}'),
    ('backfill', NULL,                                 'instances',        '{dual_write,read_new}')
$$;

-- One gate of the table, checked by its function.
CREATE OR REPLACE FUNCTION zdm_gate(gate text, arguments text[], from_phase text, verify_mode text)
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql AS $$
BEGIN
    CASE gate
        WHEN 'schema' THEN
            RETURN QUERY SELECT * FROM zdm_schema_gate(from_phase);
        WHEN 'row security' THEN
            RETURN QUERY SELECT * FROM zdm_row_security_gate();
        WHEN 'instances' THEN
            RETURN QUERY SELECT * FROM zdm_instances_gate(arguments[1], arguments[2]);
        WHEN 'backfill' THEN
            RETURN QUERY SELECT * FROM zdm_backfill_gate();
        WHEN 'dependencies' THEN
            RETURN QUERY SELECT * FROM zdm_dependencies_gate(arguments);
        WHEN 'clients' THEN
            RETURN QUERY SELECT * FROM zdm_clients_gate();
        WHEN 'confirmation' THEN
            RETURN QUERY SELECT * FROM zdm_confirmation_gate();
        WHEN 'verify' THEN
            IF verify_mode <> 'skip' THEN
                RETURN QUERY SELECT * FROM zdm_verify_gate(from_phase, verify_mode);
            END IF;
        WHEN 'reverse backfill' THEN
            RETURN QUERY SELECT * FROM zdm_refilled_gate();
        WHEN 'phase' THEN
            RETURN QUERY SELECT * FROM zdm_backfill_phase_gate(from_phase, arguments);
    END CASE;
END;
$$;

DROP FUNCTION IF EXISTS zdm_triggers_gate();
DROP FUNCTION IF EXISTS zdm_skip_triggers(boolean);
DROP FUNCTION IF EXISTS zdm_may_skip_triggers();
ALTER TABLE zdm_backfill DROP COLUMN IF EXISTS triggers;
