-- Step 4, backfilled → read_new: no schema change. Reads switch to the new columns, which a
-- fresh verification (in zdm_begin_step's gates) finds in agreement with full_name on every row.
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('advance', 'backfilled', 'read_new');
SELECT zdm_finish_step('advance', 'backfilled', 'read_new');
