-- Step 1, baseline → expanded: add the new columns.
-- Nullable and without a default, ADD COLUMN only changes the catalogue: no table rewrite,
-- the ACCESS EXCLUSIVE lock lasts milliseconds. lock_timeout keeps it from queueing behind a
-- long transaction (and everyone else queueing behind it); the runner retries. The step sets
-- statement_timeout itself too: a role's or a database's own (a DBA's guard rail) would cancel
-- a step's scans, which let traffic through, half-way.
-- Every phase migration has this shape: zdm_begin_step checks the phase and the step's gates,
-- the DDL runs inside a handler that reports a lock timeout in zdm's own words (the runner
-- recognises it whatever the server's language), and zdm_finish_step moves the stored phase
-- and records it, all in the migration's transaction.
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('advance', 'baseline', 'expanded');
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
BEGIN
    ALTER TABLE users
        ADD COLUMN IF NOT EXISTS first_name TEXT,
        ADD COLUMN IF NOT EXISTS last_name TEXT;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('ADD COLUMN first_name, last_name');
END;
$$;
-- ADD COLUMN IF NOT EXISTS keeps a column of the same name that was already there (the gates
-- refused one that differs; this finds one made in between): the columns are exactly zdm's.
SELECT zdm_require_gate(g.name, g.met, g.detail, 'advance from baseline')
  FROM zdm_schema_gate('expanded') AS g;
SELECT zdm_finish_step('advance', 'baseline', 'expanded');
