-- Dropping the columns is the rollback itself; the gate guarantees they hold no data yet.
-- squawk-ignore-file ban-drop-column
-- Step 1 back, expanded → baseline: no live instance writes the new columns (the gate), so
-- dropping them loses nothing. Catalogue only.
SET LOCAL lock_timeout = '200ms';
SELECT zdm_begin_step('rollback', 'expanded', 'baseline');
DO $$
BEGIN
    ALTER TABLE users
        DROP COLUMN IF EXISTS first_name,
        DROP COLUMN IF EXISTS last_name;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('DROP COLUMN first_name, last_name');
END;
$$;
SELECT zdm_finish_step('rollback', 'expanded', 'baseline');
