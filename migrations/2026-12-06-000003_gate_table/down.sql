-- The definitions the up migration replaced, as migrations 2026-11-30-000001_steps_in_sql and
-- 2026-12-06-000001_gates_see_the_database left them, and without the functions it added.
-- Functions only: no lock that traffic could queue behind; the dropped ones are this
-- migration's own, which nothing calls once the definitions above are back.
-- squawk-ignore-file require-lock-timeout, ban-drop-function
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;

CREATE OR REPLACE FUNCTION zdm_phase_index(phase text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT array_position(ARRAY['baseline', 'expanded', 'dual_write', 'backfilled',
                                'read_new', 'new_only', 'contracted'], phase) - 1
$$;

CREATE OR REPLACE FUNCTION zdm_lock_timeout(what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'zdm_lock_timeout: % could not take its lock within lock_timeout', what
        USING ERRCODE = 'lock_not_available';
END;
$$;

CREATE OR REPLACE FUNCTION zdm_instances_gate(min_phase text, max_phase text)
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE sql STABLE AS $$
    WITH live AS (
        SELECT id, applied_phase,
               coalesce(zdm_phase_index(applied_phase)
                        BETWEEN zdm_phase_index(min_phase) AND zdm_phase_index(max_phase),
                        false) AS inside
          FROM zdm_instances
         WHERE last_seen > now() - interval '10 seconds'
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

CREATE OR REPLACE FUNCTION zdm_gates(step text, from_phase text, verify_mode text DEFAULT 'stored')
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql AS $$
BEGIN
    IF step IN ('advance', 'rollback') THEN
        RETURN QUERY SELECT * FROM zdm_schema_gate(from_phase);
    END IF;
    -- What reads every row must see every row: the backfill, verify, and the reverse backfill.
    IF step IN ('backfill', 'verify', 'refill')
       OR (step = 'advance' AND from_phase IN ('dual_write', 'backfilled', 'read_new'))
       OR (step = 'rollback' AND from_phase = 'new_only') THEN
        RETURN QUERY SELECT * FROM zdm_row_security_gate();
    END IF;
    IF step = 'advance' THEN
        IF from_phase = 'expanded' THEN
            RETURN QUERY SELECT * FROM zdm_instances_gate('expanded', 'contracted');
        ELSIF from_phase = 'dual_write' THEN
            RETURN QUERY SELECT * FROM zdm_instances_gate('dual_write', 'contracted');
            RETURN QUERY SELECT * FROM zdm_backfill_gate();
        ELSIF from_phase = 'read_new' THEN
            RETURN QUERY SELECT * FROM zdm_instances_gate('read_new', 'contracted');
        ELSIF from_phase = 'new_only' THEN
            RETURN QUERY SELECT * FROM zdm_instances_gate('new_only', 'contracted');
            RETURN QUERY SELECT * FROM zdm_dependencies_gate(ARRAY['full_name']);
            RETURN QUERY SELECT * FROM zdm_clients_gate();
            RETURN QUERY SELECT * FROM zdm_confirmation_gate();
        END IF;
        -- I2 holds on every row: before the guard is validated, before reads switch to the
        -- new columns, and the last moment full_name is kept.
        IF from_phase IN ('dual_write', 'backfilled', 'read_new') AND verify_mode <> 'skip' THEN
            RETURN QUERY SELECT * FROM zdm_verify_gate(from_phase, verify_mode);
        END IF;
    ELSIF step = 'rollback' AND from_phase = 'expanded' THEN
        -- The new columns are dropped: no instance may still write them, nothing may use them.
        RETURN QUERY SELECT * FROM zdm_instances_gate('baseline', 'expanded');
        RETURN QUERY SELECT * FROM zdm_dependencies_gate(ARRAY['first_name', 'last_name']);
    ELSIF step = 'refill' THEN
        RETURN QUERY SELECT * FROM zdm_instances_gate('dual_write', 'read_new');
        RETURN QUERY SELECT * FROM zdm_refilled_gate();
    ELSIF step = 'backfill' THEN
        -- No row the backfill fills may be overwritten by a write of full_name alone.
        RETURN QUERY SELECT 'phase',
            from_phase IN ('dual_write', 'backfilled', 'read_new'),
            CASE WHEN from_phase IN ('dual_write', 'backfilled', 'read_new')
                 THEN format('phase %s writes both name forms', from_phase)
                 ELSE format('the backfill runs in dual_write, backfilled or read_new; the phase is %s',
                             from_phase) END;
        RETURN QUERY SELECT * FROM zdm_instances_gate('dual_write', 'read_new');
    END IF;
END;
$$;

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
        RAISE EXCEPTION 'zdm gate: cannot % from %: %',
            CASE step WHEN 'rollback' THEN 'roll back' WHEN 'refill' THEN 'finish the rollback'
                      ELSE step END,
            from_phase, unmet
            USING HINT = 'Meet the gate, then run the step again (`zdm migrate status` shows every gate).';
    END IF;
END;
$$;

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
        RAISE EXCEPTION 'zdm gate: this migration steps from % to %, but the phase is %',
            from_phase, to_phase, current_phase
            USING HINT = 'Run the migrations in order: `diesel migration run` and `revert` take one step each, as `zdm migrate advance` and `rollback` do.';
    END IF;
    PERFORM zdm_require_gates(action, from_phase, verify_mode);
    -- What a step in several transactions found wrong on its way (see zdm_validate_or_drop).
    PERFORM set_config('zdm.step_failure', '', false);
    RETURN true;
END;
$$;

CREATE OR REPLACE FUNCTION zdm_require_no_step_failure() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    failure text := nullif(current_setting('zdm.step_failure', true), '');
BEGIN
    IF failure IS NOT NULL THEN
        RAISE EXCEPTION 'zdm step undone: %', failure
            USING HINT = 'Nothing of the step remains; fix what it names, then run it again.';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION zdm_require_gate(gate_name text, gate_met boolean, gate_detail text, during text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT gate_met THEN
        RAISE EXCEPTION 'zdm gate: cannot %: % gate: %', during, gate_name, gate_detail
            USING HINT = 'Nothing of the step remains; meet the gate, then run the step again.';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION zdm_refuse_dependents(during text, reason text, reason_detail text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'zdm gate: cannot %: dependencies gate: %',
        during, reason || coalesce(': ' || replace(nullif(reason_detail, ''), E'\n', '; '), '')
        USING HINT = 'Nothing of the step remains; drop or change what depends on the column, then run the step again.';
END;
$$;

DROP FUNCTION zdm_gate(text, text[], text, text);
DROP FUNCTION zdm_gate_table();
DROP FUNCTION zdm_backfill_phase_gate(text, text[]);
DROP FUNCTION zdm_raise(text, text, text);
DROP FUNCTION zdm_live_window();
DROP FUNCTION zdm_phases();
