-- Rolling back to dual_write removes the guard this migration added.
-- squawk-ignore-file ban-drop-constraint
SET LOCAL lock_timeout = '200ms';
SELECT zdm_require_phase(ARRAY['dual_write', 'backfilled'], 'baseline');
ALTER TABLE users DROP CONSTRAINT IF EXISTS users_names_present;
