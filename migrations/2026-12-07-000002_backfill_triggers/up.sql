-- The backfill and the triggers of users. Each batch is an UPDATE of users, so every trigger
-- of users on UPDATE (of any column, or of first_name or last_name) fires for each row the
-- backfill fills: an updated_at stamped on every row of the table, an audit row or a queued
-- job per row. Whether that is wanted is the operator's to say, before the first batch:
-- zdm_backfill.triggers is 'fire' (they fire, as for any update) or 'skip' (the batches run
-- with session_replication_role = replica, where triggers enabled the default way do not
-- fire; those set ENABLE ALWAYS or ENABLE REPLICA do). The new 'triggers' gate of the
-- backfill holds it while a trigger would fire and nothing was chosen; zdm_skip_triggers is
-- what a batch calls for 'skip'.
-- zdm's own table, which no request locks: the start-up's lock timeout
-- (run_infrastructure_migrations_giving_way) bounds it; a column without a
-- default adds no rewrite. Functions: every existing signature kept (CREATE OR REPLACE);
-- down.sql restores the bodies they replace.
-- squawk-ignore-file require-lock-timeout
ALTER TABLE zdm_backfill ADD COLUMN triggers TEXT CHECK (triggers IN ('fire', 'skip'));

-- Whether this session's role may set session_replication_role: a superuser, or (PostgreSQL
-- 15 and newer) one granted SET on it.
CREATE FUNCTION zdm_may_skip_triggers() RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    may boolean := coalesce((SELECT r.rolsuper FROM pg_roles AS r WHERE r.rolname = current_user),
                            false);
BEGIN
    IF NOT may AND to_regprocedure('has_parameter_privilege(text,text)') IS NOT NULL THEN
        EXECUTE 'SELECT has_parameter_privilege(''session_replication_role'', ''SET'')' INTO may;
    END IF;
    RETURN may;
END;
$$;

-- A batch told to skip the triggers: session_replication_role = replica for the rest of its
-- transaction. Where the role may not set it, a forward batch (strict) fails, naming the
-- grant; the reverse one (the end of a rollback, no time to stop) runs with them firing, and
-- returns false.
CREATE FUNCTION zdm_skip_triggers(strict boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF zdm_may_skip_triggers() THEN
        PERFORM set_config('session_replication_role', 'replica', true);
        RETURN true;
    ELSIF strict THEN
        RAISE EXCEPTION 'zdm: the backfill skips the triggers of users (triggers "skip"), but % may not set session_replication_role', current_user
            USING HINT = format('GRANT SET ON PARAMETER session_replication_role TO %s (as a superuser), or start it with triggers "fire"', quote_ident(current_user));
    END IF;
    RETURN false;
END;
$$;

-- Gate: the triggers of users that the forward backfill's updates fire, as the operator chose
-- (zdm_backfill.triggers). A row trigger fires for each row a batch fills, a statement trigger
-- once a batch. A trigger's WHEN clause is not evaluated here: one with a WHEN is named as one
-- that may fire. Under 'skip' the batches also skip ON UPDATE rules and the checks of foreign
-- keys, which an UPDATE of the name columns alone does not need. The reverse backfill (the end
-- of a rollback out of new_only, which sets full_name) is not held by this gate, a rollback
-- being no time to stop; it runs as chosen here (see zdm_skip_triggers).
CREATE FUNCTION zdm_triggers_gate()
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    choice text := (SELECT b.triggers FROM zdm_backfill AS b);
    skipping boolean := coalesce(choice = 'skip', false);
    firing text[];
    skipped text[];
    what text;
BEGIN
    WITH on_update AS (
        SELECT format('%s (%s UPDATE%s FOR EACH %s%s%s)', t.tgname,
                      CASE WHEN t.tgtype & 2 <> 0 THEN 'BEFORE' ELSE 'AFTER' END,
                      (SELECT ' OF ' || string_agg(a.attname, ', ' ORDER BY a.attnum)
                         FROM pg_attribute AS a
                        WHERE a.attrelid = t.tgrelid AND a.attnum = ANY (t.tgattr::int2[])),
                      CASE WHEN t.tgtype & 1 <> 0 THEN 'ROW' ELSE 'STATEMENT' END,
                      CASE t.tgenabled WHEN 'A' THEN ', ENABLE ALWAYS'
                                       WHEN 'R' THEN ', ENABLE REPLICA' ELSE '' END,
                      CASE WHEN t.tgqual IS NOT NULL THEN ', when its WHEN holds' ELSE '' END) AS what,
               t.tgenabled AS enabled
          FROM pg_trigger AS t
         WHERE t.tgrelid = 'users'::regclass AND NOT t.tgisinternal
           AND t.tgtype & 16 <> 0
           AND t.tgenabled <> 'D'
           AND (cardinality(t.tgattr::int2[]) = 0
                OR EXISTS (SELECT FROM pg_attribute AS a
                            WHERE a.attrelid = t.tgrelid AND a.attnum = ANY (t.tgattr::int2[])
                              AND a.attname IN ('first_name', 'last_name')))
    )
    SELECT coalesce(array_agg(u.what ORDER BY u.what)
                        FILTER (WHERE u.enabled = 'A'
                                   OR u.enabled = CASE WHEN skipping THEN 'R' ELSE 'O' END), '{}'),
           coalesce(array_agg(u.what ORDER BY u.what)
                        FILTER (WHERE skipping AND u.enabled = 'O'), '{}')
      INTO firing, skipped
      FROM on_update AS u;
    what := format('trigger(s) of users on the backfill''s updates (a row trigger fires for each row '
                   'it fills, a statement trigger once a batch): %s', array_to_string(firing, ', '));
    name := 'triggers';
    IF skipping AND NOT zdm_may_skip_triggers() THEN
        met := false;
        detail := format('triggers "skip" runs the batches with session_replication_role = replica, '
                         'which %s may not set: GRANT SET ON PARAMETER session_replication_role TO %s '
                         '(PostgreSQL 15 or newer, as a superuser), or choose "fire"',
                         current_user, quote_ident(current_user));
    ELSIF skipping AND cardinality(firing) > 0 THEN
        met := false;
        detail := format('%s %s: they fire even with session_replication_role = replica (triggers '
                         '"skip"); choose "fire" (an ENABLE REPLICA one then does not fire)',
                         cardinality(firing), what);
    ELSIF skipping THEN
        met := true;
        detail := CASE WHEN cardinality(skipped) = 0
            THEN 'no trigger of users fires on the backfill''s updates (triggers "skip")'
            ELSE format('the batches run with session_replication_role = replica, so these do not '
                        'fire (triggers "skip"): %s', array_to_string(skipped, ', ')) END;
    ELSIF cardinality(firing) = 0 THEN
        met := true;
        detail := 'no trigger of users fires on the backfill''s updates';
    ELSIF choice = 'fire' THEN
        met := true;
        detail := format('%s %s, as chosen (triggers "fire")', cardinality(firing), what);
    ELSE
        met := false;
        detail := format('%s %s; an updated_at stamped or an audit row written for every row of '
                         'users is yours to allow: start it with triggers "fire" to let them, or '
                         '"skip" to run its batches with session_replication_role = replica',
                         cardinality(firing), what);
    END IF;
    RETURN NEXT;
END;
$$;

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
    ('backfill', NULL,                                 'instances',        '{dual_write,read_new}'),
    -- The users' own triggers fire on the backfill's updates only as the operator chose.
    ('backfill', NULL,                                 'triggers',         NULL)
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
        WHEN 'triggers' THEN
            RETURN QUERY SELECT * FROM zdm_triggers_gate();
    END CASE;
END;
$$;
