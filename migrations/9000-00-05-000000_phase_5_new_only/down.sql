-- The helper CHECK is dropped once SET NOT NULL has used it as proof.
-- This file manages its own transactions (metadata.toml: run_in_transaction = false).
-- squawk-ignore-file ban-drop-constraint, transaction-nesting
-- Step 5 back, new_only → read_new. Instances must write full_name again before it can be
-- refilled and required, so:
-- 1. The phase goes back to read_new first (instances switch to dual-writing code).
-- 2. Once every live instance has applied read_new and the reverse backfill has refilled
--    full_name (`zdm migrate rollback` waits for the first and runs the second), a NOT NULL
--    CHECK is added NOT VALID (brief lock),
-- 3. validated (a scan that lets traffic through; dropped again if it finds a NULL),
-- 4. and SET NOT NULL uses it as proof and skips the scan.
-- Run by hand, it stops at 2 until the instances and the reverse backfill are there, saying
-- so; run again, it picks up where it stopped.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('rollback', 'new_only', 'read_new');
SELECT zdm_finish_step('rollback', 'new_only', 'read_new', 'full_name is refilled next');
COMMIT;

BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_require_gates('refill', 'read_new');
SELECT set_config('zdm.step_failure', '', false);
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                    WHERE conrelid = 'users'::regclass AND conname = 'users_full_name_present') THEN
        ALTER TABLE users
            ADD CONSTRAINT users_full_name_present CHECK (full_name IS NOT NULL) NOT VALID;
    END IF;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('ADD CONSTRAINT users_full_name_present');
END;
$$;
COMMIT;

BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
SELECT zdm_validate_or_drop('users_full_name_present');
COMMIT;

BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_require_no_step_failure();
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
BEGIN
    ALTER TABLE users ALTER COLUMN full_name SET NOT NULL;
    ALTER TABLE users DROP CONSTRAINT users_full_name_present;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('ALTER COLUMN full_name SET NOT NULL');
END;
$$;
SELECT zdm_record_step('rollback', 'new_only', 'read_new', 'done', 'full_name refilled and required again');
COMMIT;
