//! One batch: a short transaction that repairs the rows after the checkpoint and moves the
//! checkpoint, committed together.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::dsl::now;
use diesel::prelude::*;

use super::knobs::next_batch_size;
use super::status::BackfillStatus;
use super::{BATCH_STATEMENT_TIMEOUT, Direction};
use crate::migration::name_sql::{zdm_name_first, zdm_name_join, zdm_name_last};
use crate::migration::verify::needs_repair;
use crate::schema::expanded::users;
use crate::schema::state::zdm_backfill;

/// One batch: the ids after the checkpoint, up to `batch_size` of them, repaired and the
/// checkpoint moved, in one transaction. With a target time, `batch_size` is first resized
/// by how long the `last` batch took (stored with the checkpoint). Returns the state as
/// stored after it, which also carries any knob or state change made meanwhile.
pub(super) fn run_batch(
    conn: &mut PgConnection,
    direction: Direction,
    current: &BackfillStatus,
    last: Option<Duration>,
) -> QueryResult<BackfillStatus> {
    conn.transaction(|conn| {
        // The commit need not wait for its WAL to reach the disk: a crash can only lose the
        // last batches together with their checkpoint (one transaction), and the next run
        // redoes them. Any later durable commit, a user's or the final `done`, flushes them.
        conn.batch_execute(&format!(
            "SET LOCAL statement_timeout = '{BATCH_STATEMENT_TIMEOUT}'; SET LOCAL synchronous_commit = off"
        ))?;
        // The row lock makes pause and cancel wait for this batch to commit, so once they
        // answer, no further batch runs.
        let mut knobs: BackfillStatus = zdm_backfill::table.for_update().first(conn)?;
        if knobs.state == "interrupted" {
            // This runner holds the lock: a reader that looked just before it took the lock
            // marked it. It runs, so it says so again.
            knobs = diesel::update(zdm_backfill::table)
                .set((
                    zdm_backfill::state.eq("running"),
                    zdm_backfill::error.eq(None::<String>),
                ))
                .get_result(conn)?;
        }
        if knobs.state != "running" {
            return Ok(knobs);
        }
        let from = current.last_id;
        let batch_size = match last {
            Some(took) if knobs.batch_target_ms > 0 => {
                next_batch_size(knobs.batch_size, took, knobs.batch_target_ms)
            }
            _ => knobs.batch_size,
        };
        let batch = i64::from(batch_size.max(1));
        // The batch ends at the batch_size-th id after the checkpoint; the last one, shorter,
        // at max_id (rows inserted since the start are dual-written and need no backfill).
        let full_batch_end: Option<i64> = users::table
            .select(users::id)
            .filter(users::id.gt(from))
            .order(users::id)
            .offset(batch - 1)
            .first(conn)
            .optional()?
            .filter(|end| *end <= current.max_id);
        let upper = full_batch_end.unwrap_or(current.max_id);
        let in_batch = users::id.gt(from).and(users::id.le(upper));
        let scanned: i64 = match full_batch_end {
            Some(_) => batch,
            None => users::table.filter(in_batch).count().get_result(conn)?,
        };
        let updated = match direction {
            Direction::Forward => {
                diesel::update(users::table.filter(in_batch).filter(needs_repair()))
                    .set((
                        users::first_name.eq(zdm_name_first(users::full_name).nullable()),
                        users::last_name.eq(zdm_name_last(users::full_name).nullable()),
                    ))
                    .execute(conn)?
            }
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
        diesel::update(zdm_backfill::table)
            .set((
                zdm_backfill::last_id.eq(upper),
                zdm_backfill::rows_done.eq(zdm_backfill::rows_done + scanned),
                zdm_backfill::rows_updated.eq(zdm_backfill::rows_updated + updated as i64),
                zdm_backfill::batches.eq(zdm_backfill::batches + 1),
                zdm_backfill::batch_size.eq(batch_size),
                zdm_backfill::updated_at.eq(now),
            ))
            .get_result(conn)
    })
}
