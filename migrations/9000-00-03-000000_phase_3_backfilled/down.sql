-- Rolling back to dual_write removes the guard this migration added.
-- This file manages its own transactions (metadata.toml: run_in_transaction = false).
-- squawk-ignore-file ban-drop-constraint, transaction-nesting
-- Step 3 back, backfilled → dual_write: every instance still dual-writes; only the guard goes.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('rollback', 'backfilled', 'dual_write');
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
BEGIN
    ALTER TABLE users DROP CONSTRAINT IF EXISTS users_names_present;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('DROP CONSTRAINT users_names_present');
END;
$$;
SELECT zdm_finish_step('rollback', 'backfilled', 'dual_write');
COMMIT;
