-- The gates as data, and zdm's errors told apart without reading their words.
-- - zdm_gate_table: which gates each step checks, one row per gate, in the order they are
--   checked and shown; zdm_gates reads it, and zdm_gate calls the function that checks each.
-- - zdm_phases and zdm_live_window: the phase list and the live window, each written once in
--   SQL (a test compares them with Rust's `Phase::ALL` and `LIVE_WINDOW`).
-- - zdm_raise: refusals, undone steps and lock timeouts carry a SQLSTATE and a DETAIL of
--   their own; the messages people read are as they were.
-- Functions only, every existing signature kept (CREATE OR REPLACE); down.sql restores the
-- bodies they replace. Functions take no lock that traffic could queue behind.
-- squawk-ignore-file require-lock-timeout

-- The phases in order, baseline to contracted. (zdm_migration_state's CHECK lists them too;
-- the same test holds it to this list.)
CREATE FUNCTION zdm_phases() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT ARRAY['baseline', 'expanded', 'dual_write', 'backfilled', 'read_new', 'new_only',
                 'contracted']
$$;

-- The phases in order: index 0 (baseline) to 6 (contracted), NULL for anything else.
CREATE OR REPLACE FUNCTION zdm_phase_index(phase text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT array_position(zdm_phases(), phase) - 1
$$;

-- An instance not heard of for this long is not live: the gates stop waiting for it (and it
-- stops serving past half of it, see Rust's `PHASE_LEASE`).
CREATE FUNCTION zdm_live_window() RETURNS interval
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT interval '10 seconds'
$$;

-- zdm's own errors, for clients to tell apart by kind rather than by wording:
--   kind           SQLSTATE   DETAIL              meaning
--   refused        ZD001      zdm:refused         a gate of the step is unmet, or the phase is
--                                                 not the step's; nothing was changed
--   undone         ZD002      zdm:undone          the step found something wrong on its way
--                                                 and undid what it had done
--   lock_timeout   55P03      zdm:lock_timeout    a lock wait reached lock_timeout (PostgreSQL's
--                                                 lock_not_available); the step may be retried
-- Diesel hands Rust the DETAIL but not the SQLSTATE, so the runner reads the DETAIL.
CREATE FUNCTION zdm_raise(kind text, message text, hint text DEFAULT NULL) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    code text := CASE kind WHEN 'refused' THEN 'ZD001'
                           WHEN 'undone' THEN 'ZD002'
                           WHEN 'lock_timeout' THEN '55P03' END;
BEGIN
    IF code IS NULL THEN
        RAISE EXCEPTION 'zdm_raise: no kind %', kind USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF hint IS NULL THEN
        RAISE EXCEPTION USING MESSAGE = message, DETAIL = 'zdm:' || kind, ERRCODE = code;
    END IF;
    RAISE EXCEPTION USING MESSAGE = message, DETAIL = 'zdm:' || kind, HINT = hint, ERRCODE = code;
END;
$$;

-- A lock wait that reached lock_timeout, told by a DETAIL of zdm's own: PostgreSQL's text
-- follows the server's lc_messages, this one does not, so the runner recognises it (and
-- retries) in every language. Every DDL of a phase migration runs inside a handler calling it.
CREATE OR REPLACE FUNCTION zdm_lock_timeout(what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM zdm_raise('lock_timeout',
                      format('zdm_lock_timeout: %s could not take its lock within lock_timeout', what));
END;
$$;

-- Gate: every instance heard of within the live window has applied a phase from min_phase to
-- max_phase.
CREATE OR REPLACE FUNCTION zdm_instances_gate(min_phase text, max_phase text)
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE sql STABLE AS $$
    WITH live AS (
        SELECT id, applied_phase,
               coalesce(zdm_phase_index(applied_phase)
                        BETWEEN zdm_phase_index(min_phase) AND zdm_phase_index(max_phase),
                        false) AS inside
          FROM zdm_instances
         WHERE last_seen > now() - zdm_live_window()
    ), wanted AS (
        SELECT CASE WHEN min_phase = max_phase THEN min_phase
                    WHEN max_phase = 'contracted' THEN min_phase || ' or later'
                    ELSE min_phase || ' to ' || max_phase
               END AS phases
    )
    SELECT 'instances',
           coalesce(bool_and(inside), true),
           CASE WHEN coalesce(bool_and(inside), true)
                THEN format('all %s live instance(s) have applied %s',
                            count(*), (SELECT phases FROM wanted))
                ELSE format('waiting for instance(s) to apply %s: %s', (SELECT phases FROM wanted),
                            string_agg(id || ' (' || applied_phase || ')', ', ' ORDER BY id)
                                FILTER (WHERE NOT inside))
           END
      FROM live
$$;

-- Gate: the phase writes both name forms, so no row the forward backfill fills can be
-- overwritten by a write of full_name alone.
CREATE FUNCTION zdm_backfill_phase_gate(from_phase text, phases text[])
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'phase',
           from_phase = ANY (phases),
           CASE WHEN from_phase = ANY (phases)
                THEN format('phase %s writes both name forms', from_phase)
                ELSE format('the backfill runs in %s or %s; the phase is %s',
                            array_to_string(phases[1:cardinality(phases) - 1], ', '),
                            phases[cardinality(phases)], from_phase)
           END
$$;

-- The gate table. A step is 'advance' or 'rollback' from a phase, 'refill' (the end of the
-- rollback out of new_only, once the phase is back at read_new), 'backfill' (starting the
-- forward backfill in a phase) or 'verify' (a verification in a phase). A row holds from the
-- phases listed, or from every phase (NULL). The rows of a step are checked and shown in the
-- order they have here. The gate is the name zdm_gate knows it by (the name it is shown
-- under); its arguments:
--   instances         the range of phases every live instance must have applied
--   dependencies      the columns the step drops, which nothing else may use
--   phase             the phases the backfill may run in
-- Where each gate's function is defined: see the module doc of src/migration/gates.rs.
CREATE FUNCTION zdm_gate_table()
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
CREATE FUNCTION zdm_gate(gate text, arguments text[], from_phase text, verify_mode text)
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

-- The gates of one step from from_phase (see zdm_gate_table), in the table's order.
-- verify_mode: 'fresh' verifies now (and stores it), 'stored' reads the last verification,
-- 'skip' leaves it out (the step verifies later itself).
CREATE OR REPLACE FUNCTION zdm_gates(step text, from_phase text, verify_mode text DEFAULT 'stored')
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    wanted record;
BEGIN
    IF NOT EXISTS (SELECT FROM zdm_gate_table() AS t WHERE t.step = zdm_gates.step)
       OR verify_mode NOT IN ('fresh', 'stored', 'skip') THEN
        RAISE EXCEPTION 'zdm_gates: no step % or no verify mode %', step, verify_mode
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR wanted IN
        SELECT t.gate, t.arguments
          FROM zdm_gate_table() WITH ORDINALITY AS t
         WHERE t.step = zdm_gates.step
           AND (t.from_phases IS NULL OR zdm_gates.from_phase = ANY (t.from_phases))
         ORDER BY t.ordinality
    LOOP
        RETURN QUERY SELECT * FROM zdm_gate(wanted.gate, wanted.arguments, from_phase, verify_mode);
    END LOOP;
END;
$$;

-- Refuses, naming every unmet gate of the step, with what to do.
CREATE OR REPLACE FUNCTION zdm_require_gates(step text, from_phase text, verify_mode text DEFAULT 'fresh')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    unmet text;
BEGIN
    SELECT string_agg(g.name || ' gate: ' || g.detail, '; ') INTO unmet
      FROM zdm_gates(step, from_phase, verify_mode) AS g
     WHERE NOT g.met;
    IF unmet IS NOT NULL THEN
        PERFORM zdm_raise('refused',
            format('zdm gate: cannot %s from %s: %s',
                   CASE step WHEN 'rollback' THEN 'roll back' WHEN 'refill' THEN 'finish the rollback'
                             ELSE step END,
                   from_phase, unmet),
            'Meet the gate, then run the step again (`zdm migrate status` shows every gate).');
    END IF;
END;
$$;

-- The start of a step from from_phase to to_phase ('advance' or 'rollback'): locks the phase
-- row until the step commits (one step at a time, whoever runs it) and checks the phase and
-- the step's gates. Returns false when the phase is already to_phase: a step run again after
-- it committed (its DDL is idempotent; zdm_finish_step then changes nothing).
CREATE OR REPLACE FUNCTION zdm_begin_step(action text, from_phase text, to_phase text,
                                          verify_mode text DEFAULT 'fresh')
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    current_phase text;
BEGIN
    BEGIN
        SELECT phase INTO current_phase FROM zdm_migration_state FOR UPDATE;
    EXCEPTION WHEN lock_not_available THEN
        PERFORM zdm_lock_timeout('the phase row (another step is running)');
    END;
    IF current_phase = to_phase THEN
        RETURN false;
    END IF;
    IF current_phase IS DISTINCT FROM from_phase THEN
        PERFORM zdm_raise('refused',
            format('zdm gate: this migration steps from %s to %s, but the phase is %s',
                   from_phase, to_phase, current_phase),
            'Run the migrations in order: `diesel migration run` and `revert` take one step each, as `zdm migrate advance` and `rollback` do.');
    END IF;
    PERFORM zdm_require_gates(action, from_phase, verify_mode);
    -- What a step in several transactions found wrong on its way (see zdm_validate_or_drop).
    PERFORM set_config('zdm.step_failure', '', false);
    RETURN true;
END;
$$;

-- Raises what a step in several transactions found wrong on its way and undid (see
-- zdm_validate_or_drop), if it did.
CREATE OR REPLACE FUNCTION zdm_require_no_step_failure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    failure text := nullif(current_setting('zdm.step_failure', true), '');
BEGIN
    IF failure IS NOT NULL THEN
        PERFORM zdm_raise('undone', 'zdm step undone: ' || failure,
                          'Nothing of the step remains; fix what it names, then run it again.');
    END IF;
END;
$$;

-- Refuses with one gate's finding, as zdm_require_gates does with a step's: for what a step
-- checks again after its DDL (then holding the table's lock, so nothing can change in
-- between).
CREATE OR REPLACE FUNCTION zdm_require_gate(gate_name text, gate_met boolean, gate_detail text, during text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT gate_met THEN
        PERFORM zdm_raise('refused',
            format('zdm gate: cannot %s: %s gate: %s', during, gate_name, gate_detail),
            'Nothing of the step remains; meet the gate, then run the step again.');
    END IF;
END;
$$;

-- A DROP that PostgreSQL refused because something created after the step's gates depends
-- on the column: a refusal like the dependencies gate's, in PostgreSQL's words, so the
-- runner answers 409 and the step's transaction leaves nothing behind.
CREATE OR REPLACE FUNCTION zdm_refuse_dependents(during text, reason text, reason_detail text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM zdm_raise('refused',
        format('zdm gate: cannot %s: dependencies gate: %s', during,
               reason || coalesce(': ' || replace(nullif(reason_detail, ''), E'\n', '; '), '')),
        'Nothing of the step remains; drop or change what depends on the column, then run the step again.');
END;
$$;
