-- Phase 1 (expanded): add the new columns.
-- Nullable and without a default, ADD COLUMN only changes the catalogue: no table rewrite,
-- the ACCESS EXCLUSIVE lock lasts milliseconds. lock_timeout keeps it from queueing behind a
-- long transaction (and everyone else queueing behind it); the runner retries.
SET LOCAL lock_timeout = '200ms';
SELECT zdm_require_phase(ARRAY['baseline', 'expanded'], 'baseline');
ALTER TABLE users
    ADD COLUMN IF NOT EXISTS first_name TEXT,
    ADD COLUMN IF NOT EXISTS last_name TEXT;
