-- zdm's own table, which no request locks (only the instances' heartbeats and the gates and
-- the backfill that read them use it): the start-up's lock timeout
-- (run_infrastructure_migrations_giving_way) bounds it; columns without a default add
-- no rewrite.
-- squawk-ignore-file require-lock-timeout
-- Each instance's user-request latency over its last report window, as a histogram: the
-- buckets' upper bounds in seconds (Prometheus' `le`) and their cumulative counts, one more
-- count than bounds (the last is every request, the slowest included). Summed over the
-- instances, they give the fleet's p99 (what the users see), not the worst instance's.
ALTER TABLE zdm_instances ADD COLUMN recent_latency_le DOUBLE PRECISION[];
ALTER TABLE zdm_instances ADD COLUMN recent_latency_counts BIGINT[];
