-- Making full_name optional is the point of new_only: code no longer writes it.
-- This file manages its own transactions (metadata.toml: run_in_transaction = false).
-- squawk-ignore-file ban-drop-not-null, transaction-nesting
-- Phase 5 (new_only): code stops writing full_name, so it may be NULL for new rows.
-- DROP NOT NULL only changes the catalogue.
BEGIN;
SET LOCAL lock_timeout = '200ms';
SELECT zdm_require_phase(ARRAY['read_new', 'new_only'], 'read_new');
ALTER TABLE users ALTER COLUMN full_name DROP NOT NULL;
COMMIT;
