-- Each instance reports the p99 latency of the user requests it answered since its last
-- heartbeat, so a backfill, wherever it runs, can back off while requests get slow.
-- zdm_instances is zdm's own table, written only by the instances' heartbeats.
-- squawk-ignore-file require-lock-timeout
ALTER TABLE zdm_instances ADD COLUMN recent_p99_ms DOUBLE PRECISION;
