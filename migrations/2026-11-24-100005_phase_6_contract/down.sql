-- Disaster recovery: restores the new_only schema as it was, whatever the cost (see below).
-- squawk-ignore-file ban-drop-not-null, constraint-missing-not-valid
-- Disaster recovery only: the app never leaves contracted. Restores full_name from the new
-- columns with one full-table UPDATE, which rewrites every row: run it in a maintenance window.
SET LOCAL lock_timeout = '200ms';
ALTER TABLE users ADD COLUMN full_name TEXT;
UPDATE users SET full_name = zdm_name_join(first_name, last_name);
ALTER TABLE users
    ADD CONSTRAINT users_names_present CHECK (first_name IS NOT NULL AND last_name IS NOT NULL);
ALTER TABLE users
    ALTER COLUMN first_name DROP NOT NULL,
    ALTER COLUMN last_name DROP NOT NULL;
