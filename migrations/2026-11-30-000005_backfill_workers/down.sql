DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
-- squawk-ignore-file require-lock-timeout, ban-drop-column, ban-drop-table

-- The ranges' counters go back into zdm_backfill, and its checkpoint becomes the id below
-- which every range is done.
UPDATE zdm_backfill b
   SET rows_done = b.rows_done + r.rows_done,
       rows_updated = b.rows_updated + r.rows_updated,
       batches = b.batches + r.batches,
       last_id = coalesce(r.low, b.max_id)
  FROM (SELECT coalesce(sum(rows_done), 0)::bigint AS rows_done,
               coalesce(sum(rows_updated), 0)::bigint AS rows_updated,
               coalesce(sum(batches), 0)::bigint AS batches,
               min(last_id) FILTER (WHERE last_id < end_id) AS low,
               count(*) AS ranges
          FROM zdm_backfill_ranges) r
 WHERE r.ranges > 0;

CREATE OR REPLACE FUNCTION zdm_backfill_gate()
RETURNS TABLE (name text, met boolean, detail text)
LANGUAGE sql STABLE AS $$
    SELECT 'backfill',
           state = 'done' AND direction = 'forward',
           CASE WHEN state = 'done' AND direction = 'forward'
                THEN format('backfill done: %s rows scanned, %s filled', rows_done, rows_updated)
                ELSE format('the backfill is %s (%s of %s rows); run it to the end: '
                            '`zdm backfill` or the dashboard', state, rows_done, rows_total)
           END
      FROM zdm_backfill
$$;

DROP TABLE zdm_backfill_worker_changes;
DROP TABLE zdm_backfill_ranges;
ALTER TABLE zdm_backfill DROP COLUMN workers_changed_at;
ALTER TABLE zdm_backfill DROP COLUMN workers_reason;
ALTER TABLE zdm_backfill DROP COLUMN workers_auto;
ALTER TABLE zdm_backfill DROP COLUMN workers_wanted;
ALTER TABLE zdm_backfill DROP COLUMN workers;
