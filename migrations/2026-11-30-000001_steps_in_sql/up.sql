-- The migration's steps, in SQL. Every phase migration (migrations/9000-*) begins with
-- zdm_begin_step, which checks the phase and the step's gates, and ends with zdm_finish_step,
-- which moves the stored phase and appends to the history, in the migration's own
-- transaction: `diesel migration run` and `revert` walk the migration exactly as
-- `zdm migrate advance` and `rollback` do, and the phase and the applied migrations never
-- disagree. The dashboard and `zdm migrate status` show the same gates (zdm_gates).
-- New functions and tables only; one column added to zdm's own state table.
-- squawk-ignore-file require-lock-timeout, ban-drop-function, prefer-bigint-over-int, adding-field-with-default

-- The phase-name gate the phase migrations called before (replaced by zdm_begin_step).
DROP FUNCTION zdm_require_phase(text[], text, text);

-- The phases in order: index 0 (baseline) to 6 (contracted), NULL for anything else.
CREATE FUNCTION zdm_phase_index(phase text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT array_position(ARRAY['baseline', 'expanded', 'dual_write', 'backfilled',
                                'read_new', 'new_only', 'contracted'], phase) - 1
$$;

-- A lock wait that reached lock_timeout, told by a message of zdm's own: PostgreSQL's text
-- follows the server's lc_messages, this one does not, so the runner recognises it (and
-- retries) in every language. Every DDL of a phase migration runs inside a handler calling it.
CREATE FUNCTION zdm_lock_timeout(what text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'zdm_lock_timeout: % could not take its lock within lock_timeout', what
        USING ERRCODE = 'lock_not_available';
END;
$$;

-- Who takes a step, for the history: what the runner sets in zdm.actor ("cli", an instance
-- id), else the client's application name and role (`diesel migration run`, psql).
CREATE FUNCTION zdm_actor() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        nullif(current_setting('zdm.actor', true), ''),
        format('by hand (%s as %s)',
               coalesce(nullif(current_setting('application_name'), ''), 'sql'), session_user))
$$;

-- Gate: every instance heard of in the last 10 seconds (the live window) has applied a phase
-- from min_phase to max_phase.
CREATE FUNCTION zdm_instances_gate(min_phase text, max_phase text)
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

-- Verification of invariant I2, stored where the dashboard shows it: the rows whose new
-- columns are missing or disagree with full_name (the backfill's repair condition), and the
-- first ten of their ids. Returns how many there are.
CREATE FUNCTION zdm_verify_names(for_phase text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    divergent bigint;
    sample bigint[] := '{}';
BEGIN
    SELECT count(*) INTO divergent FROM users
     WHERE first_name IS NULL OR last_name IS NULL
        OR zdm_name_norm(full_name) IS DISTINCT FROM zdm_name_join(first_name, last_name);
    IF divergent > 0 THEN
        SELECT coalesce(array_agg(id ORDER BY id), '{}') INTO sample FROM (
            SELECT id FROM users
             WHERE first_name IS NULL OR last_name IS NULL
                OR zdm_name_norm(full_name) IS DISTINCT FROM zdm_name_join(first_name, last_name)
             ORDER BY id LIMIT 10) AS first_ten;
    END IF;
    INSERT INTO zdm_verify (divergent, sample_ids, phase, checked_at)
    VALUES (divergent, sample, for_phase, now())
    ON CONFLICT (singleton) DO UPDATE
       SET divergent = EXCLUDED.divergent, sample_ids = EXCLUDED.sample_ids,
           phase = EXCLUDED.phase, checked_at = EXCLUDED.checked_at;
    RETURN divergent;
END;
$$;

-- Gate: a verification of for_phase since the phase was entered found 0 divergent rows.
-- mode 'fresh' verifies now (and stores it); 'stored' reads the last one.
CREATE FUNCTION zdm_verify_gate(for_phase text, mode text)
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    found record;
BEGIN
    IF mode = 'fresh' THEN
        PERFORM zdm_verify_names(for_phase);
    END IF;
    SELECT v.divergent, v.sample_ids INTO found
      FROM zdm_verify v, zdm_migration_state s
     WHERE v.phase = for_phase AND v.checked_at >= s.changed_at;
    name := 'verify';
    IF found IS NULL THEN
        met := false;
        detail := format('no verification since entering %s; it runs when you advance', for_phase);
    ELSIF found.divergent = 0 THEN
        met := true;
        detail := 'verify found 0 divergent rows';
    ELSE
        met := false;
        detail := format('verify found %s divergent row(s), e.g. ids %s; run the backfill again '
                         '(`zdm backfill` or the dashboard)', found.divergent, found.sample_ids);
    END IF;
    RETURN NEXT;
END;
$$;

-- Gate: the forward backfill has run to the end.
CREATE FUNCTION zdm_backfill_gate()
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE sql STABLE AS $$
    SELECT 'backfill',
           state = 'done' AND direction = 'forward',
           CASE WHEN state = 'done' AND direction = 'forward'
                THEN format('backfill done: %s rows scanned, %s filled', rows_done, rows_updated)
                ELSE format('the backfill is %s (%s of %s rows); run it to the end: '
                            '`zdm backfill` or the dashboard', state, rows_done, rows_total)
           END
      FROM zdm_backfill
$$;

-- Gate: full_name is back on every row (the reverse backfill of a rollback out of new_only
-- has run): none missing or different from the join of the parts.
CREATE FUNCTION zdm_refilled_gate()
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql AS $$
DECLARE
    missing bigint;
BEGIN
    SELECT count(*) INTO missing FROM users
     WHERE full_name IS DISTINCT FROM zdm_name_join(first_name, last_name);
    name := 'reverse backfill';
    met := missing = 0;
    detail := CASE WHEN missing = 0 THEN 'full_name is filled on every row'
                   ELSE format('%s row(s) lack full_name; `zdm migrate rollback` runs the reverse '
                               'backfill and finishes the step', missing) END;
    RETURN NEXT;
END;
$$;

-- Gate: the contract's typed confirmation, from zdm.confirm (the runner sets it from
-- `--confirm` or the dashboard's field; by hand: PGOPTIONS='-c zdm.confirm=users.full_name').
CREATE FUNCTION zdm_confirmation_gate()
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE sql STABLE AS $$
    SELECT 'confirmation',
           current_setting('zdm.confirm', true) IS NOT DISTINCT FROM 'users.full_name',
           CASE WHEN current_setting('zdm.confirm', true) IS NOT DISTINCT FROM 'users.full_name'
                THEN 'confirmed'
                ELSE 'type `users.full_name` to confirm dropping the column' END
$$;

-- The contract sees every client, not only zdm's instances: before full_name is dropped,
-- nothing may have read or written it for a quiet window. PostgreSQL's pg_stat_statements
-- counts the calls of every statement; zdm samples the calls of those that name full_name
-- (with every heartbeat in new_only, and whenever the contract's gates are checked) and notes
-- when each last grew. A report, a cron job or a psql session still using the column holds
-- the drop back. The extension is created where the role may.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_stat_statements') THEN
        CREATE EXTENSION pg_stat_statements;
        -- So that the down migration removes it only if zdm made it.
        COMMENT ON EXTENSION pg_stat_statements IS 'created by zdm for the contract''s client check';
    END IF;
EXCEPTION WHEN OTHERS THEN
    -- Not installed (contrib), or not ours to create: the contract then asks for
    -- without_client_check.
    RAISE NOTICE 'pg_stat_statements is not available here: %', SQLERRM;
END;
$$;

-- How long no client may have used full_name before the contract (ZDM_CONTRACT_QUIET_SECS,
-- written by every `zdm serve` at start).
ALTER TABLE zdm_migration_state
    ADD COLUMN contract_quiet_secs INTEGER NOT NULL DEFAULT 300
    CHECK (contract_quiet_secs BETWEEN 0 AND 86400);

-- Statements naming full_name, as last sampled: their calls, and when those last grew.
CREATE TABLE zdm_column_use (
    queryid BIGINT PRIMARY KEY,
    query TEXT NOT NULL,
    calls BIGINT NOT NULL,
    last_called TIMESTAMPTZ NOT NULL
);

-- Samples pg_stat_statements: statements of this database that name full_name, zdm's own
-- left out (they also name a zdm_ object: its migrations, verification and backfill; zdm's
-- request code cannot name full_name from new_only on, its schema module has no such
-- column). A statement seen for the first time counts as just used: when it ran before is
-- unknown. Returns false where pg_stat_statements cannot be read.
CREATE FUNCTION zdm_sample_column_use() RETURNS boolean
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

-- Gate: no client has used full_name for the quiet window, observed since entering
-- new_only. Where pg_stat_statements is unavailable it is unknown, and met only with
-- zdm.without_client_check = 'true' (the runner sets it from `without_client_check`).
CREATE FUNCTION zdm_clients_gate()
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

-- The gates of one step: 'advance' or 'rollback' from from_phase, 'refill' (the end of the
-- rollback out of new_only, once the phase is back at read_new), or 'backfill' (starting the
-- forward backfill in from_phase). verify_mode: 'fresh', 'stored' or 'skip' (the step
-- verifies later itself).
CREATE FUNCTION zdm_gates(step text, from_phase text, verify_mode text DEFAULT 'stored')
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

-- Refuses, naming every unmet gate of the step, with what to do.
CREATE FUNCTION zdm_require_gates(step text, from_phase text, verify_mode text DEFAULT 'fresh')
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

-- The start of a step from from_phase to to_phase ('advance' or 'rollback'): locks the phase
-- row until the step commits (one step at a time, whoever runs it) and checks the phase and
-- the step's gates. Returns false when the phase is already to_phase: a step run again after
-- it committed (its DDL is idempotent; zdm_finish_step then changes nothing).
CREATE FUNCTION zdm_begin_step(action text, from_phase text, to_phase text,
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

-- Appends to the history; without a detail, what the runner set in zdm.detail (a contract
-- without the client check) and zdm.retries (lock timeouts met on the way).
CREATE FUNCTION zdm_record_step(action text, from_phase text, to_phase text, outcome text,
                                detail text DEFAULT NULL)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO zdm_migration_history (action, from_phase, to_phase, actor, outcome, detail)
    VALUES (action, from_phase, to_phase, zdm_actor(), outcome,
            coalesce(detail, nullif(concat_ws('; ', nullif(current_setting('zdm.detail', true), ''),
                                              nullif(current_setting('zdm.retries', true), '')), '')))
$$;

-- Raises what a step in several transactions found wrong on its way and undid (see
-- zdm_validate_or_drop), if it did.
CREATE FUNCTION zdm_require_no_step_failure() RETURNS void
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

-- The end of a step: moves the stored phase and records it, unless the step undid itself on
-- the way.
CREATE FUNCTION zdm_finish_step(action text, from_phase text, to_phase text,
                                detail text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM zdm_require_no_step_failure();
    UPDATE zdm_migration_state SET phase = to_phase, changed_at = now() WHERE phase = from_phase;
    IF FOUND THEN
        PERFORM zdm_record_step(action, from_phase, to_phase, 'done', detail);
    END IF;
END;
$$;

-- The second transaction of a step that adds a guard NOT VALID in its first: validates the
-- guard (a scan that lets reads and writes through) and, with verify_phase, verifies I2 with
-- the guard in place. If either fails, the guard is dropped again, so that nothing of the
-- step remains, and zdm_finish_step reports why. A lock timeout leaves it to the retry.
CREATE FUNCTION zdm_validate_or_drop(guard text, verify_phase text DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    failure text;
    divergent bigint;
BEGIN
    IF nullif(current_setting('zdm.step_failure', true), '') IS NOT NULL THEN
        RETURN;
    END IF;
    BEGIN
        EXECUTE format('ALTER TABLE users VALIDATE CONSTRAINT %I', guard);
    EXCEPTION
        WHEN lock_not_available THEN
            PERFORM zdm_lock_timeout('VALIDATE CONSTRAINT ' || guard);
        WHEN check_violation OR not_null_violation THEN
            failure := format('VALIDATE CONSTRAINT %s found rows that break it', guard);
    END;
    IF failure IS NULL AND verify_phase IS NOT NULL THEN
        divergent := zdm_verify_names(verify_phase);
        IF divergent > 0 THEN
            SELECT format('verify gate: verify found %s divergent row(s), e.g. ids %s; run the '
                          'backfill again (`zdm backfill` or the dashboard)', v.divergent, v.sample_ids)
              INTO failure FROM zdm_verify v;
        END IF;
    ELSIF failure IS NOT NULL AND verify_phase IS NOT NULL THEN
        failure := failure || '; run the backfill again (`zdm backfill` or the dashboard)';
    END IF;
    IF failure IS NOT NULL THEN
        BEGIN
            EXECUTE format('ALTER TABLE users DROP CONSTRAINT IF EXISTS %I', guard);
        EXCEPTION WHEN lock_not_available THEN
            PERFORM zdm_lock_timeout('DROP CONSTRAINT ' || guard);
        END;
        PERFORM set_config('zdm.step_failure', failure || '; the guard ' || guard || ' was removed', false);
    END IF;
END;
$$;

-- Databases that took phase steps before the phase migrations got their own versions (the
-- 9000-* range, after every infrastructure migration) recorded them under the old versions:
-- record them under the new ones, including the two steps that had no migration
-- (dual_write and read_new), so that every phase step already taken counts as applied.
DO $$
DECLARE
    phase_now integer := (SELECT zdm_phase_index(phase) FROM zdm_migration_state);
BEGIN
    IF EXISTS (SELECT FROM __diesel_schema_migrations WHERE version = '20261124100001') THEN
        INSERT INTO __diesel_schema_migrations (version)
        SELECT new_version FROM (VALUES
            ('90000001000000', 1), ('90000002000000', 2), ('90000003000000', 3),
            ('90000004000000', 4), ('90000005000000', 5), ('90000006000000', 6)
        ) AS steps (new_version, to_index)
         WHERE to_index <= phase_now
        ON CONFLICT DO NOTHING;
        DELETE FROM __diesel_schema_migrations
         WHERE version IN ('20261124100001', '20261124100002', '20261124100003',
                           '20261124100004', '20261124100005');
    END IF;
END;
$$;
