-- A function of zdm's own, which no request locks: no lock timeout needed.
-- squawk-ignore-file require-lock-timeout
-- The gate's earlier wording (2026-11-30-000005_backfill_workers).
CREATE OR REPLACE FUNCTION zdm_backfill_gate()
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE sql STABLE AS $$
    SELECT 'backfill',
           b.state = 'done' AND b.direction = 'forward',
           CASE WHEN b.state = 'done' AND b.direction = 'forward'
                THEN format('backfill done: %s rows scanned, %s filled',
                            b.rows_done + r.rows_done, b.rows_updated + r.rows_updated)
                ELSE format('the backfill is %s (%s of %s rows); run it to the end: '
                            '`zdm backfill` or the dashboard',
                            b.state, b.rows_done + r.rows_done, b.rows_total)
           END
      FROM zdm_backfill b,
           (SELECT coalesce(sum(rows_done), 0) AS rows_done,
                   coalesce(sum(rows_updated), 0) AS rows_updated
              FROM zdm_backfill_ranges) r
$$;
