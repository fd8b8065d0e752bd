-- New tables and functions only: no other session can hold a lock on them. The knob
-- columns (batch size, sleep) are small bounded numbers, not ids.
-- squawk-ignore-file require-lock-timeout, prefer-bigint-over-int
-- The name rule, in SQL. src/domain/name_rule.rs holds the same rule in Rust, and a
-- differential property test runs both on thousands of generated names.
--
--   norm(s)      every run of Unicode White_Space (space, tab, NBSP, U+2000..U+200A,
--                ideographic space, ...) becomes one ASCII space; both ends trimmed
--   first(s)     norm(s) up to its first space (all of it for a single word)
--   last(s)      norm(s) after its first space ('' for a single word)
--   join(f, l)   the non-empty parts of f and l, separated by one space
--
-- The character class lists Unicode's White_Space property explicitly: PostgreSQL's
-- [[:space:]] depends on the database locale, Rust's char::is_whitespace does not.
CREATE FUNCTION zdm_name_norm(s text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT btrim(
        regexp_replace(s, '[\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]+', ' ', 'g'),
        ' ')
$$;

CREATE FUNCTION zdm_name_first(s text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT split_part(zdm_name_norm(s), ' ', 1) $$;

CREATE FUNCTION zdm_name_last(s text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE WHEN strpos(n, ' ') = 0 THEN '' ELSE substr(n, strpos(n, ' ') + 1) END
      FROM (SELECT zdm_name_norm(s) AS n) AS normalised
$$;

CREATE FUNCTION zdm_name_join(first_name text, last_name text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT concat_ws(' ', NULLIF(first_name, ''), NULLIF(last_name, '')) $$;

-- Every running app instance: the phase it has applied and when it last said so. Gates that
-- need "every live instance acknowledged" read this table.
CREATE TABLE zdm_instances (
    id TEXT PRIMARY KEY,
    applied_phase TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The latest verification: rows breaking the consistency invariant, a few of their ids.
CREATE TABLE zdm_verify (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    divergent BIGINT NOT NULL,
    sample_ids BIGINT[] NOT NULL,
    phase TEXT NOT NULL,
    checked_at TIMESTAMPTZ NOT NULL
);

-- The backfill's progress; `last_id` is the checkpoint, committed with each batch.
CREATE TABLE zdm_backfill (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    direction TEXT NOT NULL DEFAULT 'forward' CHECK (direction IN ('forward', 'reverse')),
    state TEXT NOT NULL DEFAULT 'idle'
        CHECK (state IN ('idle', 'running', 'paused', 'done', 'failed', 'cancelled')),
    last_id BIGINT NOT NULL DEFAULT 0,
    max_id BIGINT NOT NULL DEFAULT 0,
    rows_done BIGINT NOT NULL DEFAULT 0,
    rows_updated BIGINT NOT NULL DEFAULT 0,
    rows_total BIGINT NOT NULL DEFAULT 0,
    batches BIGINT NOT NULL DEFAULT 0,
    batch_size INTEGER NOT NULL DEFAULT 5000 CHECK (batch_size BETWEEN 1 AND 100000),
    sleep_ms INTEGER NOT NULL DEFAULT 0 CHECK (sleep_ms BETWEEN 0 AND 60000),
    started_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    error TEXT
);
INSERT INTO zdm_backfill DEFAULT VALUES;

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
