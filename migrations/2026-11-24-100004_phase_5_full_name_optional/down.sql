-- The helper CHECK is dropped once SET NOT NULL has used it as proof.
-- This file manages its own transactions (metadata.toml: run_in_transaction = false).
-- squawk-ignore-file ban-drop-constraint, transaction-nesting
-- Back to read_new, after the reverse backfill refilled full_name. SET NOT NULL would scan
-- the table under ACCESS EXCLUSIVE; instead a CHECK is added NOT VALID (brief lock), validated
-- (scan under a lock that lets traffic through), and then SET NOT NULL uses it as proof and
-- skips the scan. Each step is idempotent, so a failed run can simply be repeated.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SELECT zdm_require_phase(ARRAY['read_new'], 'dual_write', 'read_new');
ALTER TABLE users DROP CONSTRAINT IF EXISTS users_full_name_present;
ALTER TABLE users
    ADD CONSTRAINT users_full_name_present CHECK (full_name IS NOT NULL) NOT VALID;
COMMIT;

BEGIN;
ALTER TABLE users VALIDATE CONSTRAINT users_full_name_present;
COMMIT;

BEGIN;
SET LOCAL lock_timeout = '200ms';
ALTER TABLE users ALTER COLUMN full_name SET NOT NULL;
ALTER TABLE users DROP CONSTRAINT users_full_name_present;
COMMIT;
