-- Removes what the up migration created (pg_stat_statements too, if zdm made it) and brings
-- back the gate function it replaced.
-- squawk-ignore-file require-lock-timeout, ban-drop-function, ban-drop-table, ban-drop-column
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
DROP FUNCTION zdm_validate_or_drop(text, text);
DROP FUNCTION zdm_finish_step(text, text, text, text);
DROP FUNCTION zdm_require_no_step_failure();
DROP FUNCTION zdm_record_step(text, text, text, text, text);
DROP FUNCTION zdm_begin_step(text, text, text, text);
DROP FUNCTION zdm_require_gates(text, text, text);
DROP FUNCTION zdm_gates(text, text, text);
DROP FUNCTION zdm_clients_gate();
DROP FUNCTION zdm_sample_column_use();
DROP TABLE zdm_column_use;
ALTER TABLE zdm_migration_state DROP COLUMN contract_quiet_secs;
DO $$
BEGIN
    IF obj_description((SELECT oid FROM pg_extension WHERE extname = 'pg_stat_statements'),
                       'pg_extension') LIKE 'created by zdm%' THEN
        DROP EXTENSION pg_stat_statements;
    END IF;
END;
$$;
DROP FUNCTION zdm_confirmation_gate();
DROP FUNCTION zdm_refilled_gate();
DROP FUNCTION zdm_backfill_gate();
DROP FUNCTION zdm_verify_gate(text, text);
DROP FUNCTION zdm_verify_names(text);
DROP FUNCTION zdm_instances_gate(text, text);
DROP FUNCTION zdm_actor();
DROP FUNCTION zdm_lock_timeout(text);
DROP FUNCTION zdm_phase_index(text);

-- The gate every phase migration checks before it touches `users`, so that running the
-- migrations by hand (`diesel migration run`) cannot get ahead of the app: the stored phase
-- must be one of `allowed`, and every instance seen in the last 10 seconds must have applied
-- a phase between `min_applied` and `max_applied`. The phase row is locked (FOR SHARE) until
-- the migration commits, so the phase cannot move underneath it.
CREATE FUNCTION zdm_require_phase(allowed text[], min_applied text, max_applied text DEFAULT 'contracted')
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    phases CONSTANT text[] := ARRAY['baseline', 'expanded', 'dual_write', 'backfilled',
                                    'read_new', 'new_only', 'contracted'];
    current_phase text;
    lagging text;
BEGIN
    SELECT phase INTO current_phase FROM zdm_migration_state FOR SHARE;
    IF NOT current_phase = ANY (allowed) THEN
        RAISE EXCEPTION 'zdm gate: this migration needs phase % but the phase is %',
            array_to_string(allowed, ' or '), current_phase
            USING HINT = 'Use `zdm migrate advance` / `rollback`: they apply the migrations in order.';
    END IF;
    SELECT string_agg(id || ' (' || applied_phase || ')', ', ') INTO lagging
      FROM zdm_instances
     WHERE last_seen > now() - interval '10 seconds'
       AND (array_position(phases, applied_phase) < array_position(phases, min_applied)
            OR array_position(phases, applied_phase) > array_position(phases, max_applied));
    IF lagging IS NOT NULL THEN
        RAISE EXCEPTION 'zdm gate: live instances must have applied a phase from % to %: %',
            min_applied, max_applied, lagging;
    END IF;
END;
$$;
