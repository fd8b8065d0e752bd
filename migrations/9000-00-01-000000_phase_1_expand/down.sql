-- Dropping the columns is the rollback itself; the gate guarantees they hold no data yet.
-- squawk-ignore-file ban-drop-column
-- Step 1 back, expanded → baseline: no live instance writes the new columns (the gate), so
-- dropping them loses nothing. Catalogue only.
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('rollback', 'expanded', 'baseline');
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
DECLARE
    reason text;
    reason_detail text;
BEGIN
    ALTER TABLE users
        DROP COLUMN IF EXISTS first_name,
        DROP COLUMN IF EXISTS last_name;
EXCEPTION
    WHEN lock_not_available THEN
        PERFORM zdm_lock_timeout('DROP COLUMN first_name, last_name');
    WHEN dependent_objects_still_exist THEN
        GET STACKED DIAGNOSTICS reason = MESSAGE_TEXT, reason_detail = PG_EXCEPTION_DETAIL;
        PERFORM zdm_refuse_dependents('roll back from expanded', reason, reason_detail);
END;
$$;
-- A trigger whose function names the columns, made after the gates (a function's body is not
-- a dependency PostgreSQL knows): with users locked now, nothing can be added in between.
SELECT zdm_require_gate(g.name, g.met, g.detail, 'roll back from expanded')
  FROM zdm_dependencies_gate(ARRAY['first_name', 'last_name']) AS g;
SELECT zdm_finish_step('rollback', 'expanded', 'baseline');
