-- Dropping full_name is the contract itself (guarded below). SET NOT NULL is backed by the
-- validated users_names_present check, so PostgreSQL skips the scan; that check is then
-- redundant and dropped.
-- This file manages its own transactions (metadata.toml: run_in_transaction = false).
-- squawk-ignore-file ban-drop-column, adding-not-nullable-field, ban-drop-constraint, transaction-nesting
-- Step 6, new_only → contracted: drop full_name; first_name and last_name become NOT NULL.
-- Refused unless every live instance runs new_only or later (no zdm code reads or writes
-- full_name) and the drop is confirmed: `zdm migrate advance --confirm users.full_name`, the
-- dashboard's field, or by hand PGOPTIONS='-c zdm.confirm=users.full_name' diesel migration run.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('advance', 'new_only', 'contracted');
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
DECLARE
    reason text;
    reason_detail text;
BEGIN
    ALTER TABLE users DROP COLUMN IF EXISTS full_name;
    ALTER TABLE users
        ALTER COLUMN first_name SET NOT NULL,
        ALTER COLUMN last_name SET NOT NULL;
    ALTER TABLE users DROP CONSTRAINT IF EXISTS users_names_present;
EXCEPTION
    WHEN lock_not_available THEN
        PERFORM zdm_lock_timeout('DROP COLUMN full_name');
    WHEN dependent_objects_still_exist THEN
        GET STACKED DIAGNOSTICS reason = MESSAGE_TEXT, reason_detail = PG_EXCEPTION_DETAIL;
        PERFORM zdm_refuse_dependents('advance from new_only', reason, reason_detail);
END;
$$;
-- A trigger whose function names full_name, made after the gates (a function's body is not a
-- dependency PostgreSQL knows), would fail every write from now on: with users locked now,
-- nothing can be added in between.
SELECT zdm_require_gate(g.name, g.met, g.detail, 'advance from new_only')
  FROM zdm_dependencies_gate(ARRAY['full_name']) AS g;
SELECT zdm_finish_step('advance', 'new_only', 'contracted');
COMMIT;
