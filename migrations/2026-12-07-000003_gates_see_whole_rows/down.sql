-- squawk-ignore-file require-lock-timeout, ban-drop-function
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
-- The bodies of 2026-12-06-000001_gates_see_the_database.
CREATE OR REPLACE FUNCTION zdm_schema_gate(for_phase text)
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    idx integer := zdm_phase_index(for_phase);
    col text;
    att record;
    problems text[] := '{}';
    foreign_constraints text;
BEGIN
    FOREACH col IN ARRAY ARRAY['full_name', 'first_name', 'last_name'] LOOP
        SELECT a.attnum, a.attnotnull, a.atthasdef, a.attgenerated, a.attidentity,
               format_type(a.atttypid, a.atttypmod) AS type
          INTO att
          FROM pg_attribute a
         WHERE a.attrelid = 'users'::regclass AND a.attname = col AND NOT a.attisdropped;
        IF NOT FOUND THEN
            IF col = 'full_name' AND idx < 6 THEN
                problems := problems || 'users.full_name is missing'::text;
            ELSIF col <> 'full_name' AND idx >= 1 THEN
                problems := problems || format('users.%s is missing', col);
            END IF;
            CONTINUE;
        END IF;
        IF col = 'full_name' THEN
            -- The application's own column: what it holds beside zdm's needs is its own.
            CONTINUE;
        END IF;
        IF att.type <> 'text' THEN
            problems := problems || format('users.%s is %s, not text', col, att.type);
        END IF;
        IF att.atthasdef OR att.attgenerated <> '' OR att.attidentity <> '' THEN
            problems := problems || format('users.%s has a default or is generated', col);
        END IF;
        IF att.attnotnull AND idx < 6 THEN
            problems := problems || format('users.%s is NOT NULL before the contract', col);
        END IF;
        SELECT string_agg(format('%s (%s)', c.conname, pg_get_constraintdef(c.oid)), ', ' ORDER BY c.conname)
          INTO foreign_constraints
          FROM pg_constraint c
         WHERE c.conrelid = 'users'::regclass AND att.attnum = ANY (c.conkey)
           AND c.conname NOT IN ('users_names_present', 'users_full_name_present');
        IF foreign_constraints IS NOT NULL THEN
            problems := problems || format('users.%s has a constraint zdm did not make: %s',
                                           col, foreign_constraints);
        END IF;
    END LOOP;
    name := 'schema';
    met := cardinality(problems) = 0;
    detail := CASE WHEN met
        THEN format('users has %s''s name columns', for_phase)
        ELSE format('users is not as %s has it: %s; zdm makes first_name and last_name as text, '
                    'nullable, without a default or a constraint of their own: drop or fix what '
                    'differs (a leftover of an earlier attempt?), then try again',
                    for_phase, array_to_string(problems, '; '))
    END;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION zdm_dependencies_gate(columns text[])
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found text[];
    names_a_column text := '\m(' || array_to_string(columns, '|') || ')\M';
BEGIN
    SELECT coalesce(array_agg(DISTINCT what ORDER BY what), '{}') INTO found FROM (
        -- What the catalogue records as depending on the columns.
        SELECT coalesce(
                   (SELECT format('%s %s', CASE v.relkind WHEN 'm' THEN 'materialized view'
                                                          ELSE 'view' END, v.oid::regclass)
                      FROM pg_rewrite r JOIN pg_class v ON v.oid = r.ev_class
                     WHERE d.classid = 'pg_rewrite'::regclass AND r.oid = d.objid
                       AND r.rulename = '_RETURN'),
                   pg_describe_object(d.classid, d.objid, d.objsubid)) AS what
          FROM pg_depend d
          JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
         WHERE d.refclassid = 'pg_class'::regclass AND d.refobjid = 'users'::regclass
           AND a.attname = ANY (columns) AND d.deptype IN ('n', 'a')
           AND NOT (d.classid = 'pg_constraint'::regclass
                    AND EXISTS (SELECT FROM pg_constraint c
                                 WHERE c.oid = d.objid
                                   AND c.conname IN ('users_names_present', 'users_full_name_present')))
        UNION ALL
        -- Trigger functions on users whose body names a column.
        SELECT format('trigger %s on users (its function %s names %s)',
                      t.tgname, p.oid::regprocedure, array_to_string(columns, ' or '))
          FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE t.tgrelid = 'users'::regclass AND NOT t.tgisinternal
           AND p.prosrc ~* names_a_column
        UNION ALL
        -- Other functions whose body names users and a column.
        SELECT format('function %s (its body names users and %s)',
                      p.oid::regprocedure, array_to_string(columns, ' or '))
          FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE l.lanname NOT IN ('internal', 'c')
           AND p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
           AND p.proname NOT LIKE 'zdm\_%'
           AND NOT EXISTS (SELECT FROM pg_depend e
                            WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid
                              AND e.deptype = 'e')
           AND NOT EXISTS (SELECT FROM pg_trigger t
                            WHERE t.tgfoid = p.oid AND t.tgrelid = 'users'::regclass)
           AND p.prosrc ~* names_a_column AND p.prosrc ~* '\musers\M'
    ) AS objects;
    name := 'dependencies';
    met := cardinality(found) = 0;
    detail := CASE WHEN met
        THEN format('nothing else uses users.%s', array_to_string(columns, ', users.'))
        ELSE format('%s use(s) users.%s: %s; drop or change them first (the step drops the column)',
                    cardinality(found), array_to_string(columns, ', users.'),
                    array_to_string(found, ', '))
    END;
    RETURN NEXT;
END;
$$;

CREATE OR REPLACE FUNCTION zdm_sample_column_use() RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    stats_reset_now timestamptz;
    watched boolean;
    stats_reset_before timestamptz;
    was_reset boolean;
    why_now text;
BEGIN
    IF to_regclass('pg_stat_statements') IS NULL THEN
        RETURN false;
    END IF;
    IF to_regclass('pg_stat_statements_info') IS NOT NULL THEN
        SELECT i.stats_reset INTO stats_reset_now FROM pg_stat_statements_info i;
    END IF;
    -- Read without a lock: two samplers noticing the same reset mark the same statements.
    SELECT true, w.stats_reset INTO watched, stats_reset_before FROM zdm_column_use_watch w;
    was_reset := coalesce(watched AND stats_reset_now IS DISTINCT FROM stats_reset_before, false);
    why_now := CASE WHEN was_reset
        THEN format('ran since pg_stat_statements was reset at %s',
                    to_char(stats_reset_now AT TIME ZONE 'UTC', 'HH24:MI:SS "UTC"'))
        ELSE 'ran' END;
    INSERT INTO zdm_column_use_watch AS w (singleton, stats_reset, reset_at)
    VALUES (true, stats_reset_now,
            CASE WHEN was_reset THEN least(coalesce(stats_reset_now, now()), now()) END)
    ON CONFLICT (singleton) DO UPDATE
       SET stats_reset = EXCLUDED.stats_reset,
           reset_at = coalesce(EXCLUDED.reset_at, w.reset_at)
     -- Written only when it changed: a step's transaction (which samples in its gates) then
     -- holds no lock that every heartbeat's sample would queue behind.
     WHERE w.stats_reset IS DISTINCT FROM EXCLUDED.stats_reset;

    WITH sampled AS (
        SELECT s.queryid, min(s.query) AS query, sum(s.calls) AS calls,
               sum(s.total_exec_time) AS total_exec_time
          FROM pg_stat_statements s
         WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND s.queryid IS NOT NULL
           -- Reads and writes (not DDL, such as the migration that made the column), naming
           -- the column and the table in the SQL itself, not in a comment (a migration file's
           -- comments are part of its first statement's text).
           AND regexp_replace(s.query, '--[^\n]*|/\*.*?\*/', '', 'g')
               ~* '^\s*(select|insert|update|delete|with|copy|merge|table)\M.*\mfull_name\M'
           AND regexp_replace(s.query, '--[^\n]*|/\*.*?\*/', '', 'g') ~* '\musers\M'
           AND s.query !~* '\mzdm_'
         GROUP BY s.queryid
    ), gone AS (
        UPDATE zdm_column_use u
           SET present = false, last_called = now(),
               why = 'left pg_stat_statements (a reset or an eviction) and may have run just before'
         WHERE u.present AND NOT EXISTS (SELECT FROM sampled s WHERE s.queryid = u.queryid)
    )
    INSERT INTO zdm_column_use AS u (queryid, query, calls, total_exec_time, last_called, present, why)
    SELECT s.queryid, s.query, s.calls, s.total_exec_time, now(), true, why_now
      FROM sampled s
    ON CONFLICT (queryid) DO UPDATE
       SET last_called = now(), calls = EXCLUDED.calls, total_exec_time = EXCLUDED.total_exec_time,
           present = true, why = why_now
     -- Unchanged counters write nothing (every instance samples with every heartbeat).
     WHERE was_reset OR NOT u.present OR u.calls IS DISTINCT FROM EXCLUDED.calls
        OR (u.total_exec_time IS NOT NULL
            AND u.total_exec_time IS DISTINCT FROM EXCLUDED.total_exec_time);
    RETURN true;
EXCEPTION
    WHEN lock_not_available THEN
        -- A step's lock_timeout met while another sampler writes the same rows: the step
        -- retries, as after any lock timeout.
        PERFORM zdm_lock_timeout('the sample of pg_stat_statements');
    WHEN object_not_in_prerequisite_state THEN
        -- The name covers its whole class (lock_not_available too): only 55000 itself means
        -- the extension exists but its library is not loaded (shared_preload_libraries).
        IF SQLSTATE <> '55000' THEN
            RAISE;
        END IF;
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
    reset_at timestamptz;
    unknown text;
BEGIN
    name := 'clients';
    IF NOT zdm_sample_column_use() THEN
        unknown := 'install pg_stat_statements';
    ELSIF NOT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') THEN
        unknown := format('%s sees only its own statements in pg_stat_statements; '
                          'GRANT pg_read_all_stats TO %s',
                          current_user, quote_ident(current_user));
    END IF;
    IF unknown IS NOT NULL THEN
        met := current_setting('zdm.without_client_check', true) IS NOT DISTINCT FROM 'true';
        detail := CASE WHEN met
            THEN format('not checked (%s), contract confirmed without_client_check', unknown)
            ELSE format('unknown: %s (or contract with without_client_check)', unknown) END;
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT contract_quiet_secs, changed_at INTO quiet, entered FROM zdm_migration_state;
    SELECT u.query, u.last_called, u.why INTO latest FROM zdm_column_use u
     WHERE u.last_called > now() - make_interval(secs => quiet)
     ORDER BY u.last_called DESC LIMIT 1;
    SELECT w.reset_at INTO reset_at FROM zdm_column_use_watch w
     WHERE w.reset_at > now() - make_interval(secs => quiet);
    IF latest IS NOT NULL THEN
        met := false;
        detail := format('`%s` names users and full_name and %s (counted at %s); waiting until no client has used it for %s s',
                         left(regexp_replace(latest.query, '\s+', ' ', 'g'), 80), latest.why,
                         to_char(latest.last_called AT TIME ZONE 'UTC', 'HH24:MI:SS "UTC"'), quiet);
    ELSIF reset_at IS NOT NULL THEN
        met := false;
        detail := format('pg_stat_statements was reset at %s, so a use just before it cannot be ruled out; watching again until %s',
                         to_char(reset_at AT TIME ZONE 'UTC', 'HH24:MI:SS "UTC"'),
                         to_char((reset_at + make_interval(secs => quiet)) AT TIME ZONE 'UTC',
                                 'HH24:MI:SS "UTC"'));
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

DROP FUNCTION zdm_untracked_statements();
DROP FUNCTION zdm_uses_full_name(text);
DROP FUNCTION zdm_name_column_problems(text, boolean);
DROP FUNCTION zdm_whole_rows_of_users();
DROP FUNCTION zdm_column_dependents(text[]);
