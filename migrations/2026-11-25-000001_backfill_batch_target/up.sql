-- The backfill can size its batches itself: after each batch it scales the batch size toward
-- the one that takes batch_target_ms (0 = keep batch_size as set). A batch's transaction
-- holds the row locks of its rows, so its time is what a user write that meets it may wait;
-- a target in milliseconds holds on a fast machine and a slow one alike, a row count does not.
-- zdm_backfill is the backfill's own one-row table: no application traffic touches it.
-- squawk-ignore-file require-lock-timeout, adding-field-with-default, constraint-missing-not-valid, prefer-bigint-over-int
ALTER TABLE zdm_backfill ADD COLUMN batch_target_ms INTEGER NOT NULL DEFAULT 40
    CHECK (batch_target_ms BETWEEN 0 AND 10000);
