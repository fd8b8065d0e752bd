//! What the runner and its workers write besides their batches (`batch`): the ranges taken,
//! split and left, and how the run ended. Plain functions on a connection.

use diesel::dsl::now;
use diesel::prelude::*;

use super::BackfillState;
use super::status::{BackfillStatus, WorkerRange};
use crate::schema::state::{zdm_backfill, zdm_backfill_ranges as r};

/// The backfill's row as stored (the runner holds the lock: no check whether a runner does).
pub(super) fn stored_row(conn: &mut PgConnection) -> QueryResult<BackfillStatus> {
    zdm_backfill::table.first(conn)
}

/// Records range `range_no` as `worker`'s.
pub(super) fn take_range(conn: &mut PgConnection, range_no: i32, worker: i32) -> QueryResult<()> {
    diesel::update(r::table.find(range_no))
        .set(r::worker.eq(worker))
        .execute(conn)?;
    Ok(())
}

/// Stores the split of range `shortened` at `new.start_id`: `new` (the upper part, `worker`'s)
/// and the shortened end, in one transaction, so that after a crash the ranges stored still
/// cover every id not yet done, once.
pub(super) fn store_split(
    conn: &mut PgConnection,
    shortened: i32,
    new: &WorkerRange,
    worker: i32,
) -> QueryResult<()> {
    conn.transaction(|conn| {
        diesel::insert_into(r::table)
            .values((
                r::range_no.eq(new.range_no),
                r::start_id.eq(new.start_id),
                r::last_id.eq(new.last_id),
                r::end_id.eq(new.end_id),
                r::worker.eq(worker),
                r::batch_size.eq(new.batch_size),
            ))
            .execute(conn)?;
        diesel::update(r::table.find(shortened))
            .set(r::end_id.eq(new.start_id))
            .execute(conn)?;
        Ok(())
    })
}

/// Records the ranges `released` as nobody's.
pub(super) fn leave_ranges(conn: &mut PgConnection, released: &[i32]) -> QueryResult<()> {
    if !released.is_empty() {
        diesel::update(r::table.filter(r::range_no.eq_any(released)))
            .set(r::worker.eq(None::<i32>))
            .execute(conn)?;
    }
    Ok(())
}

/// Once every worker has ended: no open range shows a worker on it any more.
pub(super) fn leave_open_ranges(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::update(
        r::table
            .filter(r::worker.is_not_null())
            .filter(r::last_id.lt(r::end_id)),
    )
    .set(r::worker.eq(None::<i32>))
    .execute(conn)?;
    Ok(())
}

/// The runner holds the lock; a status a reader marked interrupted is running again.
pub(super) fn mark_running(conn: &mut PgConnection) -> QueryResult<()> {
    diesel::update(zdm_backfill::table.filter(zdm_backfill::state.eq(BackfillState::Interrupted)))
        .set((
            zdm_backfill::state.eq(BackfillState::Running),
            zdm_backfill::error.eq(None::<String>),
        ))
        .execute(conn)?;
    Ok(())
}

/// Every range is done: so is the run. Returns the row as stored.
pub(super) fn record_done(conn: &mut PgConnection) -> QueryResult<BackfillStatus> {
    diesel::update(zdm_backfill::table)
        .set((
            zdm_backfill::state.eq(BackfillState::Done),
            zdm_backfill::last_id.eq(zdm_backfill::max_id),
            zdm_backfill::finished_at.eq(now),
            zdm_backfill::updated_at.eq(now),
        ))
        .get_result(conn)
}

/// A batch failed with `error`.
pub(super) fn record_failed(conn: &mut PgConnection, error: &str) -> QueryResult<()> {
    diesel::update(zdm_backfill::table)
        .set((
            zdm_backfill::state.eq(BackfillState::Failed),
            zdm_backfill::error.eq(error),
        ))
        .execute(conn)?;
    Ok(())
}
