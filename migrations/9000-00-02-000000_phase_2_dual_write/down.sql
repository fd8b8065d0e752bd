-- The guard is dropped only where a failed step to backfilled left it behind.
-- squawk-ignore-file ban-drop-constraint
-- Step 2 back, dual_write → expanded: instances go back to writing full_name alone, so rows
-- written from now on lose their new columns' agreement and the backfill must run again.
-- A NOT VALID guard left by a step to backfilled that could not finish would refuse those
-- writes: it goes too, so the schema is exactly expanded's whatever happened before.
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('rollback', 'dual_write', 'expanded');
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_constraint
                WHERE conrelid = 'users'::regclass AND conname = 'users_names_present') THEN
        ALTER TABLE users DROP CONSTRAINT users_names_present;
    END IF;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('DROP CONSTRAINT users_names_present');
END;
$$;
UPDATE zdm_backfill SET state = 'idle' WHERE state = 'done';
SELECT zdm_finish_step('rollback', 'dual_write', 'expanded');
