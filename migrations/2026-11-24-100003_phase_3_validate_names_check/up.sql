-- Phase 3 (backfilled), step 2: validate the guard. VALIDATE scans the table under a SHARE
-- UPDATE EXCLUSIVE lock, which lets reads and writes go on. It fails (and changes nothing)
-- if the backfill left a row without first_name or last_name.
SET LOCAL lock_timeout = '200ms';
SELECT zdm_require_phase(ARRAY['dual_write', 'backfilled'], 'dual_write');
ALTER TABLE users VALIDATE CONSTRAINT users_names_present;
