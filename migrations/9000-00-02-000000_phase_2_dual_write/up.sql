-- Step 2, expanded → dual_write: no schema change. Moving the phase switches every instance to
-- code that writes both name forms. It is a migration of its own so that `diesel migration
-- run` takes this step too, one step at a time, and only once every live instance has the new
-- columns in its schema (applied expanded).
SET LOCAL statement_timeout = 0;
SELECT zdm_begin_step('advance', 'expanded', 'dual_write');
SELECT zdm_finish_step('advance', 'expanded', 'dual_write');
