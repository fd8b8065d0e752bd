-- Dropping full_name is the contract itself (guarded below). SET NOT NULL is backed by the
-- validated users_names_present check, so PostgreSQL skips the scan; that check is then
-- redundant and dropped.
-- squawk-ignore-file ban-drop-column, adding-not-nullable-field, ban-drop-constraint
-- Phase 6 (contracted): drop full_name; first_name and last_name become NOT NULL.
-- Refused unless every live instance runs new_only (nothing reads or writes full_name) and a
-- verification since entering new_only found every row complete.
SET LOCAL lock_timeout = '200ms';
SELECT zdm_require_phase(ARRAY['new_only'], 'new_only');
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM zdm_verify v, zdm_migration_state s
         WHERE v.divergent = 0 AND v.phase = 'new_only' AND v.checked_at >= s.changed_at
    ) THEN
        RAISE EXCEPTION 'zdm gate: contract needs a verification with 0 divergent rows since entering new_only'
            USING HINT = 'Run `zdm verify`, then advance again.';
    END IF;
END;
$$;
-- Dropping the column is the point of the contract phase; the gate above makes it safe.
ALTER TABLE users DROP COLUMN full_name;
-- The validated users_names_present check proves there are no NULLs, so SET NOT NULL skips
-- the table scan; the check is redundant afterwards.
ALTER TABLE users
    ALTER COLUMN first_name SET NOT NULL,
    ALTER COLUMN last_name SET NOT NULL;
ALTER TABLE users DROP CONSTRAINT users_names_present;
