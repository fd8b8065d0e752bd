-- Making full_name optional is the point of new_only: code no longer writes it.
-- This file manages its own transactions (metadata.toml: run_in_transaction = false).
-- squawk-ignore-file ban-drop-not-null, transaction-nesting
-- Step 5, read_new → new_only: code stops writing full_name, so it may be NULL for new rows.
-- The gates: every live instance reads the new columns, and a fresh verification finds I2 on
-- every row, the last moment full_name is kept (a row changed behind the new columns' back
-- would otherwise reach the drop unnoticed). DROP NOT NULL only changes the catalogue.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('advance', 'read_new', 'new_only');
-- The DDL's own attempt at its lock: lock_attempt_ms (zdm_lock_attempt).
SELECT zdm_lock_attempt();
DO $$
BEGIN
    ALTER TABLE users ALTER COLUMN full_name DROP NOT NULL;
EXCEPTION WHEN lock_not_available THEN
    PERFORM zdm_lock_timeout('ALTER COLUMN full_name DROP NOT NULL');
END;
$$;
SELECT zdm_finish_step('advance', 'read_new', 'new_only');
COMMIT;
