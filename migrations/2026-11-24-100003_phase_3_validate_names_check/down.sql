-- Re-creating the guard as NOT VALID is how a validation is undone.
-- squawk-ignore-file ban-drop-constraint
-- A constraint cannot be un-validated; put it back as NOT VALID (brief locks only).
SET LOCAL lock_timeout = '200ms';
SELECT zdm_require_phase(ARRAY['dual_write', 'backfilled'], 'baseline');
ALTER TABLE users DROP CONSTRAINT users_names_present;
ALTER TABLE users
    ADD CONSTRAINT users_names_present
    CHECK (first_name IS NOT NULL AND last_name IS NOT NULL) NOT VALID;
