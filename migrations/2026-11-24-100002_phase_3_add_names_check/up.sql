-- Phase 3 (backfilled), step 1: the NOT NULL guard for the new columns, NOT VALID.
-- NOT VALID skips the scan of existing rows (brief lock only) but is enforced for every new
-- write from now on, which is why every live instance must already dual-write.
SET LOCAL lock_timeout = '200ms';
SELECT zdm_require_phase(ARRAY['dual_write', 'backfilled'], 'dual_write');
ALTER TABLE users
    ADD CONSTRAINT users_names_present
    CHECK (first_name IS NOT NULL AND last_name IS NOT NULL) NOT VALID;
