-- zdm's own table, which no request locks; the start-up that applies this sets the lock
-- timeout and gives way (run_infrastructure_migrations_giving_way): the instances read it.
-- A constant default adds the column without a rewrite.
-- squawk-ignore-file require-lock-timeout, adding-field-with-default, prefer-bigint-over-int
-- How long each attempt of a step waits for its lock on users (its lock_timeout), in ms.
-- While a DDL statement waits for ACCESS EXCLUSIVE, every request that touches users queues
-- behind it: an attempt is that long a stall for the users. So the attempts are short and
-- many; the runner pauses between them, jittered and growing, within a bounded total
-- (`runner::LOCK_WAIT_BUDGET`). Set with ZDM_LOCK_ATTEMPT_MS.
ALTER TABLE zdm_migration_state
    ADD COLUMN lock_attempt_ms INTEGER NOT NULL DEFAULT 5
    CHECK (lock_attempt_ms BETWEEN 1 AND 10000);

-- Sets this transaction's lock_timeout to the stored attempt length, times the session's
-- zdm.lock_attempt_scale (set by the runner: longer attempts after 2 s of trying, so that a
-- table that is never free for 5 ms still lets the step through), at most 200 ms (or the
-- stored length, if longer). Every transaction of a phase migration calls it right before
-- its DDL on users. The literal SET LOCAL lock_timeout
-- at the top of each bounds the rest: the gates' waits on zdm's own rows (a heartbeat's
-- sample of pg_stat_statements), which no request queues behind.
CREATE OR REPLACE FUNCTION zdm_lock_attempt() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('lock_timeout',
                       least(s.lock_attempt_ms
                             * coalesce(nullif(current_setting('zdm.lock_attempt_scale', true), '')::int, 1),
                             greatest(s.lock_attempt_ms, 200)) || 'ms',
                       true)
       FROM zdm_migration_state s;
END;
$$;
