-- Step 4 back, read_new → backfilled: no schema change; reads come from full_name again.
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('rollback', 'read_new', 'backfilled');
SELECT zdm_finish_step('rollback', 'read_new', 'backfilled');
