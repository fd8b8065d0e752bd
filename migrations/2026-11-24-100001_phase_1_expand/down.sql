-- Dropping the columns is the rollback itself; the gate guarantees they hold no data yet.
-- squawk-ignore-file ban-drop-column
-- Back to baseline: the new columns are still unwritten (no instance dual-writes), so
-- dropping them loses nothing.
SET LOCAL lock_timeout = '200ms';
SELECT zdm_require_phase(ARRAY['baseline', 'expanded'], 'baseline', 'expanded');
ALTER TABLE users
    DROP COLUMN IF EXISTS first_name,
    DROP COLUMN IF EXISTS last_name;
