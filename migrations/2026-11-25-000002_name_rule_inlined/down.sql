-- squawk-ignore-file require-lock-timeout
-- Infrastructure is reverted only at baseline, after every phase step was rolled back.
DO $$ BEGIN IF (SELECT phase FROM zdm_migration_state) <> 'baseline' THEN RAISE EXCEPTION 'zdm: infrastructure migrations are reverted only at baseline'; END IF; END $$;
CREATE OR REPLACE FUNCTION zdm_name_last(s text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$
    SELECT CASE WHEN strpos(n, ' ') = 0 THEN '' ELSE substr(n, strpos(n, ' ') + 1) END
      FROM (SELECT zdm_name_norm(s) AS n) AS normalised
$$;

CREATE OR REPLACE FUNCTION zdm_name_join(first_name text, last_name text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT concat_ws(' ', NULLIF(first_name, ''), NULLIF(last_name, '')) $$;
