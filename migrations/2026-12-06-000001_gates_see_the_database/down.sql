-- The gates as they were before they saw the database as it is.
-- squawk-ignore-file require-lock-timeout, ban-drop-column, ban-drop-table, ban-drop-function
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;

CREATE OR REPLACE FUNCTION zdm_sample_column_use() RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF to_regclass('pg_stat_statements') IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO zdm_column_use AS u (queryid, query, calls, last_called)
    SELECT s.queryid, min(s.query), sum(s.calls), now()
      FROM pg_stat_statements s
     WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       -- Reads and writes (not DDL, such as the migration that made the column), naming it
       -- in the SQL itself, not in a comment (a migration file's comments are part of its
       -- first statement's text).
       AND regexp_replace(s.query, '--[^\n]*|/\*.*?\*/', '', 'g')
           ~* '^\s*(select|insert|update|delete|with|copy|merge|table)\M.*\mfull_name\M'
       AND s.query !~* '\mzdm_'
     GROUP BY s.queryid
    ON CONFLICT (queryid) DO UPDATE
       SET last_called = CASE WHEN EXCLUDED.calls > u.calls THEN now() ELSE u.last_called END,
           calls = EXCLUDED.calls
     -- Unchanged counts write nothing (every instance samples with every heartbeat).
     WHERE u.calls IS DISTINCT FROM EXCLUDED.calls;
    RETURN true;
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    -- The extension exists but the library is not loaded (shared_preload_libraries).
    RETURN false;
END;
$$;

CREATE OR REPLACE FUNCTION zdm_clients_gate()
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    quiet integer;
    entered timestamptz;
    latest record;
BEGIN
    name := 'clients';
    IF NOT zdm_sample_column_use() THEN
        met := current_setting('zdm.without_client_check', true) IS NOT DISTINCT FROM 'true';
        detail := CASE WHEN met
            THEN 'not checked: pg_stat_statements is unavailable, contract confirmed without_client_check'
            ELSE 'unknown: install pg_stat_statements (or contract with without_client_check)' END;
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT contract_quiet_secs, changed_at INTO quiet, entered FROM zdm_migration_state;
    SELECT u.query, u.last_called INTO latest FROM zdm_column_use u
     WHERE u.last_called > now() - make_interval(secs => quiet)
     ORDER BY u.last_called DESC LIMIT 1;
    IF latest IS NOT NULL THEN
        met := false;
        detail := format('`%s` used users.full_name at %s; waiting until no client has for %s s',
                         left(regexp_replace(latest.query, '\s+', ' ', 'g'), 80),
                         to_char(latest.last_called AT TIME ZONE 'UTC', 'HH24:MI:SS "UTC"'), quiet);
    ELSIF entered > now() - make_interval(secs => quiet) THEN
        met := false;
        detail := format('watching for clients of users.full_name since entering new_only; the quiet window of %s s ends at %s',
                         quiet, to_char((entered + make_interval(secs => quiet)) AT TIME ZONE 'UTC',
                                        'HH24:MI:SS "UTC"'));
    ELSE
        met := true;
        detail := format('no client has used users.full_name for %s s', quiet);
    END IF;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION zdm_gates(step text, from_phase text, verify_mode text DEFAULT 'stored')
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql AS $$
BEGIN
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
            RETURN QUERY SELECT * FROM zdm_clients_gate();
            RETURN QUERY SELECT * FROM zdm_confirmation_gate();
        END IF;
        -- I2 holds on every row: before the guard is validated, before reads switch to the
        -- new columns, and the last moment full_name is kept.
        IF from_phase IN ('dual_write', 'backfilled', 'read_new') AND verify_mode <> 'skip' THEN
            RETURN QUERY SELECT * FROM zdm_verify_gate(from_phase, verify_mode);
        END IF;
    ELSIF step = 'rollback' AND from_phase = 'expanded' THEN
        -- The new columns are dropped: no instance may still write them.
        RETURN QUERY SELECT * FROM zdm_instances_gate('baseline', 'expanded');
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

ALTER TABLE zdm_column_use DROP COLUMN why;
ALTER TABLE zdm_column_use DROP COLUMN present;
ALTER TABLE zdm_column_use DROP COLUMN total_exec_time;
DROP TABLE zdm_column_use_watch;
DROP FUNCTION zdm_refuse_dependents(text, text, text);
DROP FUNCTION zdm_require_gate(text, boolean, text, text);
DROP FUNCTION zdm_row_security_gate();
DROP FUNCTION zdm_dependencies_gate(text[]);
DROP FUNCTION zdm_schema_gate(text);
