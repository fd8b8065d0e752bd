-- zdm's own table, which no request locks (only the backfill's runner and readers of its
-- status use it): the start-up's lock timeout
-- (run_infrastructure_migrations_giving_way) bounds it; a column without a default adds no rewrite.
-- squawk-ignore-file require-lock-timeout
-- The rule by which auto mode moves the number of workers (ZDM_BACKFILL_AUTO_RULE) where
-- the current (or last) run runs: 'zone' or 'aimd'; NULL before the first run that knew it.
ALTER TABLE zdm_backfill ADD COLUMN workers_rule TEXT;
