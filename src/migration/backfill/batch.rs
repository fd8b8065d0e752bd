//! One batch: a short transaction that repairs the rows after a range's checkpoint and moves
//! the checkpoint, committed together.

use diesel::connection::SimpleConnection;
use diesel::dsl::{self, now};
use diesel::prelude::*;

use super::status::BackfillStatus;
use super::{BATCH_LOCK_TIMEOUT, BATCH_STATEMENT_TIMEOUT, BackfillState, Direction, Triggers};
use crate::migration::name_sql::{zdm_name_first, zdm_name_join, zdm_name_last};
use crate::migration::verify::needs_repair;
use crate::schema::expanded::users;
use crate::schema::state::{zdm_backfill, zdm_backfill_ranges};

diesel::define_sql_function! {
    /// `session_replication_role = replica` for the rest of the transaction, where the role may
    /// set it (migration `2026-12-07-000002_backfill_triggers`).
    #[sql_name = "zdm_skip_triggers"]
    fn skip_triggers(strict: diesel::sql_types::Bool) -> diesel::sql_types::Bool;
}

/// What a batch did.
pub(super) enum BatchOutcome {
    /// The backfill was not `running` when the batch began (paused, cancelled, throttled, or
    /// marked interrupted by a reader): nothing was done. Carries the row as stored.
    NotRunning(BackfillStatus),
    Ran(Ran),
}

/// A committed batch.
pub(super) struct Ran {
    /// `zdm_backfill` as the batch read it (its knobs and state).
    pub stored: BackfillStatus,
    /// The range's new checkpoint.
    pub upper: i64,
    /// Rows passed, and rows changed.
    pub scanned: i64,
    pub updated: i64,
    /// The batch size it ran with.
    pub size: i32,
}

/// One batch of range `range_no` from its checkpoint `from`: the ids after it, up to
/// `size_for(knobs)` of them, repaired and the range's checkpoint moved, in one transaction.
/// `reserve` is told the id the batch would end at (the size-th after `from`, if there is
/// one) before anything is written, and answers where it ends: no further than the range's
/// end as it stands then, which another worker may have shortened by splitting the range.
/// With `give_way`, a row held by another transaction for `BATCH_LOCK_TIMEOUT` ends the
/// batch with a lock timeout, undone, for the caller to try again.
pub(super) fn run_batch(
    conn: &mut PgConnection,
    direction: Direction,
    (range_no, from): (i32, i64),
    size_for: impl FnOnce(&BackfillStatus) -> i32,
    reserve: impl FnOnce(Option<i64>) -> i64,
    give_way: bool,
) -> QueryResult<BatchOutcome> {
    conn.transaction(|conn| {
        // The commit need not wait for its WAL to reach the disk: a crash can only lose the
        // last batches together with their checkpoint (one transaction), and the next run
        // redoes them. Any later durable commit, a user's or the final `done`, flushes them.
        conn.batch_execute(&format!(
            "SET LOCAL statement_timeout = '{BATCH_STATEMENT_TIMEOUT}'; SET LOCAL synchronous_commit = off"
        ))?;
        if give_way {
            conn.batch_execute(&format!(
                "SET LOCAL lock_timeout = '{BATCH_LOCK_TIMEOUT}'"
            ))?;
        }
        // A shared row lock: the workers' batches run side by side, and pause and cancel
        // (which update the row) wait for every batch in flight to commit, so once they
        // answer, no further batch runs.
        let stored: BackfillStatus = zdm_backfill::table.for_share().first(conn)?;
        if stored.state != BackfillState::Running {
            return Ok(BatchOutcome::NotRunning(stored));
        }
        // The users' triggers skipped, as chosen, for this transaction's updates: a forward
        // batch whose role may not fails; a reverse one (a rollback's) lets them fire.
        if stored.triggers == Some(Triggers::Skip) {
            diesel::select(skip_triggers(direction == Direction::Forward)).execute(conn)?;
        }
        let size = size_for(&stored).max(1);
        let (upper, scanned) = batch_end(conn, from, size, reserve)?;
        let updated = repair(conn, direction, from, upper)?;
        let ran = Ran {
            stored,
            upper,
            scanned,
            updated,
            size,
        };
        checkpoint(conn, range_no, &ran)?;
        Ok(BatchOutcome::Ran(ran))
    })
}

/// Where the batch of `size` ids after `from` ends, as `reserve` allows, and how many rows
/// it passes.
fn batch_end(
    conn: &mut PgConnection,
    from: i64,
    size: i32,
    reserve: impl FnOnce(Option<i64>) -> i64,
) -> QueryResult<(i64, i64)> {
    let batch = i64::from(size);
    let full_batch_end: Option<i64> = users::table
        .select(users::id)
        .filter(users::id.gt(from))
        .order(users::id)
        .offset(batch - 1)
        .first(conn)
        .optional()?;
    // The last batch of a range, shorter, ends at the range's end (rows inserted since
    // the start, past max_id, are dual-written and need no backfill).
    let upper = reserve(full_batch_end);
    let scanned: i64 = if full_batch_end == Some(upper) {
        batch
    } else {
        users::table
            .filter(ids_in(from, upper))
            .count()
            .get_result(conn)?
    };
    Ok((upper, scanned))
}

/// Repairs the rows of `(from, upper]` that need it, in one UPDATE whose WHERE is the
/// repair condition: rows already right are neither read into Rust nor written again.
/// Returns the rows changed.
fn repair(
    conn: &mut PgConnection,
    direction: Direction,
    from: i64,
    upper: i64,
) -> QueryResult<i64> {
    let in_batch = ids_in(from, upper);
    let updated = match direction {
        Direction::Forward => diesel::update(users::table.filter(in_batch).filter(needs_repair()))
            .set((
                users::first_name.eq(zdm_name_first(users::full_name).nullable()),
                users::last_name.eq(zdm_name_last(users::full_name).nullable()),
            ))
            .execute(conn)?,
        Direction::Reverse => {
            let joined = zdm_name_join(users::first_name, users::last_name);
            diesel::update(
                users::table
                    .filter(in_batch)
                    .filter(users::full_name.is_distinct_from(joined)),
            )
            .set(users::full_name.eq(zdm_name_join(users::first_name, users::last_name)))
            .execute(conn)?
        }
    };
    Ok(updated as i64)
}

/// Moves range `range_no`'s checkpoint past the batch `ran` and adds to its counters, in the
/// batch's transaction.
fn checkpoint(conn: &mut PgConnection, range_no: i32, ran: &Ran) -> QueryResult<()> {
    use zdm_backfill_ranges as r;
    // The range must be there to take the checkpoint: without it, nothing of the batch
    // stays (NotFound rolls it back).
    let checkpointed = diesel::update(r::table.find(range_no))
        .set((
            r::last_id.eq(ran.upper),
            r::rows_done.eq(r::rows_done + ran.scanned),
            r::rows_updated.eq(r::rows_updated + ran.updated),
            r::batches.eq(r::batches + 1),
            r::batch_size.eq(ran.size),
            r::updated_at.eq(now),
        ))
        .execute(conn)?;
    if checkpointed != 1 {
        return Err(diesel::result::Error::NotFound);
    }
    Ok(())
}

/// The ids `(from, upper]`.
fn ids_in(from: i64, upper: i64) -> dsl::And<dsl::Gt<users::id, i64>, dsl::LtEq<users::id, i64>> {
    users::id.gt(from).and(users::id.le(upper))
}
