-- This file manages its own transactions (metadata.toml: run_in_transaction = false).
-- squawk-ignore-file transaction-nesting
-- Step 3, dual_write → backfilled: the NOT NULL guard of the new columns.
-- 1. Every live instance dual-writes and the backfill is done: the guard is added NOT VALID,
--    which skips the scan of existing rows (brief lock) but holds every new write to it.
-- 2. VALIDATE scans the table under SHARE UPDATE EXCLUSIVE, which lets reads and writes go
--    on; then I2 is verified, with the guard already holding new writes. If either finds a
--    row, the guard is dropped again: the step is all or nothing.
-- 3. The phase moves, or the step reports what it found (zdm_finish_step).
-- Run again after any failure, it picks up where it stopped: each part is idempotent.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('advance', 'dual_write', 'backfilled', 'skip');
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_constraint
                    WHERE conrelid = 'users'::regclass AND conname = 'users_names_present') THEN
        ALTER TABLE users
            ADD CONSTRAINT users_names_present
            CHECK (first_name IS NOT NULL AND last_name IS NOT NULL) NOT VALID;
    END IF;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('ADD CONSTRAINT users_names_present');
END;
$$;
COMMIT;

BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
SELECT zdm_validate_or_drop('users_names_present', 'dual_write')
  FROM zdm_migration_state WHERE phase = 'dual_write';
COMMIT;

BEGIN;
SET LOCAL statement_timeout = 0;
SELECT zdm_finish_step('advance', 'dual_write', 'backfilled');
COMMIT;
