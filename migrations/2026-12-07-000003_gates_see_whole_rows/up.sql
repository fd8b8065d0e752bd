-- The steps see more of the database as it is:
-- - the drop: functions that read a column off a row of users they take or return (no need
--   to name users), and rows of users stored whole elsewhere (a column of type users);
-- - the expand: a first_name or last_name already there that holds values, has another
--   collation, or that an index, a view or a trigger already uses;
-- - the drop's undo: a full_name that someone else made meanwhile (generated, say);
-- - the clients: a statement that uses full_name without naming it (`SELECT *`, a column-less
--   COPY or INSERT, `TABLE users`) or behind PREPARE, EXPLAIN, DECLARE or DO; a role or
--   database whose statements pg_stat_statements does not track; and no sample taken by a
--   role that sees only its own statements (it took the others' for gone).
-- Functions only.
-- squawk-ignore-file require-lock-timeout

-- What uses the columns a step drops, named: what PostgreSQL records (views, materialized
-- views, indexes, triggers, policies, statistics, publications' column lists, generated
-- columns, constraints not zdm's), triggers on users whose function names a column, and any
-- other function whose body names a column and either names users or takes or returns a row
-- of it (`u users`, a helper a trigger passes NEW to): PostgreSQL records only the type.
CREATE FUNCTION zdm_column_dependents(columns text[]) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found text[];
    names_a_column text := '\m(' || array_to_string(columns, '|') || ')\M';
    row_types oid[] := (SELECT ARRAY[t.oid, t.typarray] FROM pg_type t
                          WHERE t.oid = (SELECT reltype FROM pg_class WHERE oid = 'users'::regclass));
BEGIN
    SELECT coalesce(array_agg(DISTINCT what ORDER BY what), '{}') INTO found FROM (
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
        SELECT format('trigger %s on users (its function %s names %s)',
                      t.tgname, p.oid::regprocedure, array_to_string(columns, ' or '))
          FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
         WHERE t.tgrelid = 'users'::regclass AND NOT t.tgisinternal
           AND p.prosrc ~* names_a_column
        UNION ALL
        SELECT CASE WHEN p.prosrc ~* '\musers\M'
                    THEN format('function %s (its body names users and %s)',
                                p.oid::regprocedure, array_to_string(columns, ' or '))
                    ELSE format('function %s (its body names %s, of the row of users it takes or returns)',
                                p.oid::regprocedure, array_to_string(columns, ' or ')) END
          FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
         WHERE l.lanname NOT IN ('internal', 'c')
           AND p.pronamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
           AND p.proname NOT LIKE 'zdm\_%'
           AND NOT EXISTS (SELECT FROM pg_depend e
                            WHERE e.classid = 'pg_proc'::regclass AND e.objid = p.oid
                              AND e.deptype = 'e')
           AND NOT EXISTS (SELECT FROM pg_trigger t
                            WHERE t.tgfoid = p.oid AND t.tgrelid = 'users'::regclass)
           AND p.prosrc ~* names_a_column
           AND (p.prosrc ~* '\musers\M'
                OR p.prorettype = ANY (row_types)
                OR p.proargtypes::oid[] && row_types
                OR coalesce(p.proallargtypes, '{}') && row_types)
    ) AS objects;
    RETURN found;
END;
$$;

-- Where rows of users are stored whole outside users: a column of a table, a view or a
-- composite type of type users (or users[]), or a domain over it. Dropping a column of users
-- takes that field from every such value, silently, and the drop's undo does not bring it
-- back.
CREATE FUNCTION zdm_whole_rows_of_users() RETURNS text[]
LANGUAGE sql STABLE AS $$
    WITH row_types AS (
        SELECT ARRAY[t.oid, t.typarray] AS oids FROM pg_type t
         WHERE t.oid = (SELECT reltype FROM pg_class WHERE oid = 'users'::regclass)
    )
    SELECT coalesce(array_agg(what ORDER BY what), '{}') FROM (
        SELECT format('column %s.%s (it holds whole rows of users)',
                      a.attrelid::regclass, quote_ident(a.attname)) AS what
          FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid, row_types
         WHERE a.atttypid = ANY (row_types.oids) AND a.attnum > 0 AND NOT a.attisdropped
           AND c.relkind IN ('r', 'p', 'f', 'v', 'm', 'c') AND c.oid <> 'users'::regclass
        UNION ALL
        SELECT format('domain %s (over a row of users)', d.oid::regtype)
          FROM pg_type d, row_types
         WHERE d.typtype = 'd' AND d.typbasetype = ANY (row_types.oids)
    ) AS stored
$$;

-- Gate: nothing else depends on the columns a step drops (zdm_column_dependents), and no row
-- of users is stored whole elsewhere (zdm_whole_rows_of_users).
CREATE OR REPLACE FUNCTION zdm_dependencies_gate(columns text[])
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    found text[] := zdm_column_dependents(columns) || zdm_whole_rows_of_users();
BEGIN
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

-- The shape of one name column as zdm makes it, or what differs: text of the database's
-- collation, without a default, not generated, nullable (`nullable`), with no constraint but
-- zdm's own.
CREATE FUNCTION zdm_name_column_problems(col text, nullable boolean) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
DECLARE
    att record;
    problems text[] := '{}';
    foreign_constraints text;
BEGIN
    SELECT a.attnum, a.attnotnull, a.atthasdef, a.attgenerated, a.attidentity, a.attcollation,
           format_type(a.atttypid, a.atttypmod) AS type
      INTO att
      FROM pg_attribute a
     WHERE a.attrelid = 'users'::regclass AND a.attname = col AND NOT a.attisdropped;
    IF att.type <> 'text' THEN
        problems := problems || format('users.%s is %s, not text', col, att.type);
    ELSIF att.attcollation <> 'pg_catalog.default'::regcollation THEN
        problems := problems || format('users.%s has the collation %s, not the database''s',
                                       col, att.attcollation::regcollation);
    END IF;
    IF att.atthasdef OR att.attgenerated <> '' OR att.attidentity <> '' THEN
        problems := problems || format('users.%s has a default or is generated', col);
    END IF;
    IF att.attnotnull AND nullable THEN
        problems := problems || format('users.%s is NOT NULL%s', col,
                                       CASE WHEN col <> 'full_name' THEN ' before the contract' END);
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
    RETURN problems;
END;
$$;

-- Gate: users' name columns are the phase's, as zdm makes them (zdm_name_column_problems).
-- A column of the same name left by an earlier attempt (`ADD COLUMN IF NOT EXISTS` would
-- keep it silently) must be exactly that; before the expand it must also be empty (the
-- backfill would overwrite its values, the expand's rollback drop them) and unused (a unique
-- index would fail the dual writes, a leftover trigger rewrite them). full_name is the
-- application's own until the contract; in `contracted` one can only be the drop's undo
-- half-way, as zdm makes it, or someone else's (a generated one would fail every write once
-- the instances write it again).
CREATE OR REPLACE FUNCTION zdm_schema_gate(for_phase text)
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    idx integer := zdm_phase_index(for_phase);
    col text;
    present text[] := '{}';
    holds_values boolean;
    users_of text[];
    problems text[] := '{}';
BEGIN
    FOREACH col IN ARRAY ARRAY['full_name', 'first_name', 'last_name'] LOOP
        IF NOT EXISTS (SELECT FROM pg_attribute a
                        WHERE a.attrelid = 'users'::regclass AND a.attname = col
                          AND NOT a.attisdropped) THEN
            IF col = 'full_name' AND idx < 6 THEN
                problems := problems || 'users.full_name is missing'::text;
            ELSIF col <> 'full_name' AND idx >= 1 THEN
                problems := problems || format('users.%s is missing', col);
            END IF;
        ELSIF col = 'full_name' AND idx >= 6 THEN
            problems := problems || zdm_name_column_problems(col, true);
        ELSIF col <> 'full_name' THEN
            problems := problems || zdm_name_column_problems(col, idx < 6);
            present := present || col;
            IF idx = 0 THEN
                EXECUTE format('SELECT EXISTS (SELECT FROM users WHERE %I IS NOT NULL)', col)
                   INTO holds_values;
                IF holds_values THEN
                    problems := problems || format('users.%s already holds values', col);
                END IF;
            END IF;
        END IF;
    END LOOP;
    IF idx = 0 AND cardinality(present) > 0 THEN
        users_of := zdm_column_dependents(present);
        IF cardinality(users_of) > 0 THEN
            problems := problems || format('already used by %s', array_to_string(users_of, ', '));
        END IF;
    END IF;
    name := 'schema';
    met := cardinality(problems) = 0;
    detail := CASE WHEN met
        THEN format('users has %s''s name columns', for_phase)
        ELSE format('users is not as %s has it: %s; zdm makes its name columns as text, '
                    'nullable, without a default or a constraint of their own, and adds '
                    'first_name and last_name empty: drop or fix what differs (a leftover of an '
                    'earlier attempt?), then try again',
                    for_phase, array_to_string(problems, '; '))
    END;
    RETURN NEXT;
END;
$$;

-- Whether a statement's text (comments taken out: a migration file's comments are part of
-- its first statement's) uses users.full_name: not DDL (the migration that made the column,
-- say), naming users, and naming full_name, or taking every column of users without naming
-- one: `SELECT *` from or joining it, `u.*`, `RETURNING *` of a write of it, `TABLE users`, a
-- column-less COPY or INSERT (its values go by position). Whatever it is wrapped in counts
-- too: PREPARE, EXPLAIN, DECLARE, DO, a parenthesis. Not counted: `EXISTS (SELECT * …)`, a
-- star over other tables, a whole row passed on (`to_jsonb(u)`).
CREATE FUNCTION zdm_uses_full_name(statement text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    -- users, schema-qualified or not, quoted or not (not a schema named users).
    tbl constant text := '("?[a-z_][a-z0-9_$]*"?\.)?"?users\M"?(?!\s*\.)';
    s constant text := regexp_replace(statement, 'exists\s*\(\s*select\s+\*', 'exists (select 1', 'gi');
BEGIN
    IF s ~* '^\s*(create|alter|drop|comment|grant|revoke|security|truncate|vacuum|analyze|cluster|reindex|lock|refresh|set|reset|show|listen|notify|discard)\M'
       OR s !~* '\musers\M' THEN
        RETURN false;
    END IF;
    RETURN s ~* '\mfull_name\M'
        OR s ~* ('\mselect\s+(distinct\s+)?\*\s*from\s+' || tbl)
        OR s ~* ('\mselect\s+(distinct\s+)?\*\s*from\s+[^;()]*\mjoin\s+' || tbl)
        OR s ~* '"?\musers"?\.\*'
        OR s ~* '(\w+)\.\*.*\m(from|join)\s+("?\w+"?\.)?"?users"?\s+(as\s+)?\1\M'
        OR (s ~* '\mreturning\s+\*' AND s ~* ('\m(insert\s+into|update|delete\s+from)\s+' || tbl))
        OR s ~* ('(^|[(]|\m(as|for|explain|analyze|verbose|union|all|except|intersect))\s*table\s+' || tbl)
        OR s ~* ('\mcopy\s+' || tbl || '\s+(to|from)\M')
        OR s ~* ('\minsert\s+into\s+' || tbl || '\s+(as\s+\w+\s+)?(values|select|with|table|default|overriding)\M');
END;
$$;

-- Samples pg_stat_statements as before, with zdm_uses_full_name deciding which statements
-- use the column, and only as a role that sees every role's statements.
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
    -- A role that sees only its own statements there (an instance's pooled role, say) would
    -- take every other role's for gone, and the next privileged sample for new uses.
    IF NOT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') THEN
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
           AND s.query !~* '\mzdm_'
           -- Block comments first, on their own: in one pattern with the line comments the
           -- lazy match would turn greedy, and take all from the first /* to the last */.
           AND zdm_uses_full_name(regexp_replace(regexp_replace(s.query, '/\*.*?\*/', '', 'g'),
                                                 '--[^\n]*', '', 'g'))
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

-- Why some clients' statements would not be in pg_stat_statements at all, if they would
-- not: tracking switched off for the server (pg_stat_statements.track = none, or
-- compute_query_id = off, without which it tracks nothing), or for this database or a role
-- that may read or write users (`ALTER ROLE … SET pg_stat_statements.track = none`). A client
-- of such a role could use full_name unseen. zdm's own role is left out (its statements are
-- not the clients'), as are roles that may not touch users (a monitoring agent's, say).
CREATE FUNCTION zdm_untracked_statements() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN EXISTS (SELECT FROM pg_settings
                      WHERE name = 'pg_stat_statements.track' AND setting = 'none'
                        AND source NOT IN ('user', 'database', 'session'))
            THEN 'pg_stat_statements.track is none, so no statement is tracked; set it to top'
        WHEN EXISTS (SELECT FROM pg_settings
                      WHERE name = 'compute_query_id' AND setting = 'off'
                        AND source NOT IN ('user', 'database', 'session'))
            THEN 'compute_query_id is off, so pg_stat_statements tracks no statement; set it to auto'
        ELSE (SELECT format('pg_stat_statements does not track the statements of %s (%s); RESET it',
                            string_agg(CASE WHEN s.setrole = 0 THEN 'every role'
                                            ELSE 'role ' || quote_ident(r.rolname) END
                                       || CASE WHEN s.setdatabase = 0 THEN '' ELSE ' here' END,
                                       ', '),
                            string_agg(DISTINCT c, ', '))
                FROM pg_db_role_setting s
                LEFT JOIN pg_roles r ON r.oid = s.setrole
                CROSS JOIN LATERAL unnest(s.setconfig) AS c
               WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
                 AND c ~* '^(pg_stat_statements\.track=none|compute_query_id=(off|false|no|0))$'
                 AND (s.setrole = 0
                      OR (r.rolname <> current_user
                          AND has_any_column_privilege(s.setrole, 'users', 'SELECT, INSERT, UPDATE')))
              HAVING count(*) > 0)
    END
$$;

-- Gate: no client has used users.full_name for the quiet window, as before; unknown also
-- where some role's statements are not tracked (zdm_untracked_statements).
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
    IF NOT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') THEN
        unknown := format('%s sees only its own statements in pg_stat_statements; '
                          'GRANT pg_read_all_stats TO %s',
                          current_user, quote_ident(current_user));
    ELSIF NOT zdm_sample_column_use() THEN
        unknown := 'install pg_stat_statements';
    ELSE
        unknown := zdm_untracked_statements();
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
        detail := format('`%s` uses users.full_name and %s (counted at %s); waiting until no client has used it for %s s',
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
