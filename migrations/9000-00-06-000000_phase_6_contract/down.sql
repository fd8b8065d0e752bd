-- Catalogue changes only: the guard is added NOT VALID and validated in its own transaction.
-- This file manages its own transactions (metadata.toml: run_in_transaction = false).
-- squawk-ignore-file ban-drop-not-null, transaction-nesting
-- Step 6 back, contracted → new_only: the drop undone without losing a write. After the
-- contract first_name and last_name hold everything full_name held (its normalised form is
-- their join), so full_name comes back empty and the rollback new_only → read_new refills it
-- (the reverse backfill) once every instance writes it again.
-- 1. full_name is re-added, nullable and without a default (catalogue only), and the NOT NULL
--    guard of the parts as new_only has it, NOT VALID;
-- 2. the guard is validated (a scan that lets traffic through; every row has both parts);
-- 3. the parts become nullable again, as in new_only (catalogue only), and the phase moves.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('rollback', 'contracted', 'new_only');
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
BEGIN
    ALTER TABLE users ADD COLUMN IF NOT EXISTS full_name TEXT;
    IF NOT EXISTS (SELECT FROM pg_constraint
                    WHERE conrelid = 'users'::regclass AND conname = 'users_names_present') THEN
        ALTER TABLE users
            ADD CONSTRAINT users_names_present
            CHECK (first_name IS NOT NULL AND last_name IS NOT NULL) NOT VALID;
    END IF;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('ADD COLUMN full_name');
END;
$$;
COMMIT;

BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
SELECT zdm_validate_or_drop('users_names_present');
COMMIT;

BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_require_no_step_failure();
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
BEGIN
    ALTER TABLE users
        ALTER COLUMN first_name DROP NOT NULL,
        ALTER COLUMN last_name DROP NOT NULL;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('ALTER COLUMN first_name, last_name DROP NOT NULL');
END;
$$;
SELECT zdm_finish_step('rollback', 'contracted', 'new_only');
COMMIT;
