-- A function of zdm's own, which no request locks: the start-up's lock timeout
-- (run_infrastructure_migrations_giving_way) bounds it.
-- squawk-ignore-file require-lock-timeout
-- The backfill gate, when the last backfill was the reverse one of a rollback out of
-- new_only (and the walk went on down to dual_write): it said "the backfill is done … run it
-- to the end", which refused the step while calling it done. It now says which backfill is
-- done and that the forward one must run again (it finds the rows filled, dual-written all
-- along, and quickly records that it covered them). The gate itself is unchanged.
CREATE OR REPLACE FUNCTION zdm_backfill_gate()
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE sql STABLE AS $$
    SELECT 'backfill',
           b.state = 'done' AND b.direction = 'forward',
           CASE WHEN b.state = 'done' AND b.direction = 'forward'
                THEN format('backfill done: %s rows scanned, %s filled',
                            b.rows_done + r.rows_done, b.rows_updated + r.rows_updated)
                WHEN b.direction = 'reverse'
                THEN format('the last backfill is the reverse one of a rollback out of new_only '
                            '(%s); run the forward backfill again before this step: '
                            '`zdm backfill` or the dashboard (it finds the rows filled)',
                            b.state)
                ELSE format('the backfill is %s (%s of %s rows); run it to the end: '
                            '`zdm backfill` or the dashboard',
                            b.state, b.rows_done + r.rows_done, b.rows_total)
           END
      FROM zdm_backfill b,
           (SELECT coalesce(sum(rows_done), 0) AS rows_done,
                   coalesce(sum(rows_updated), 0) AS rows_updated
              FROM zdm_backfill_ranges) r
$$;
