-- zdm's own table, which no request locks (only the backfill's runner and readers of its
-- status use it): the start-up's lock timeout
-- (run_infrastructure_migrations_giving_way) bounds it; a column without a default adds no rewrite.
-- squawk-ignore-file require-lock-timeout
-- The users' p99 (ms) the instances reported when the current (or last) run started, where
-- its p99 budget begins. A run resumed after a crash keeps it: measured again then, it would
-- be measured in the crash's aftermath, not before the backfill. NULL without a budget.
ALTER TABLE zdm_backfill ADD COLUMN quiet_p99_ms DOUBLE PRECISION;
