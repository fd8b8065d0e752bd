//! What the backfill says about itself: its stored status, read so that it never claims to
//! run when no runner holds its lock, with the progress of its ranges (one checkpoint each),
//! and the requests to stop it.

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use serde::Serialize;

use super::{BackfillError, BackfillState, Direction, LOCK_KEY, Triggers, Workers};
use crate::schema::state::{zdm_backfill, zdm_backfill_ranges, zdm_backfill_worker_changes};

#[derive(Debug, Clone, PartialEq, Queryable, Serialize)]
pub struct BackfillStatus {
    #[serde(skip)]
    pub singleton: bool,
    pub direction: Direction,
    pub state: BackfillState,
    /// The checkpoint: every id up to it is done (with several ranges, the lowest of their
    /// checkpoints; each range has its own, see `WorkerRange`).
    pub last_id: i64,
    pub max_id: i64,
    pub rows_done: i64,
    pub rows_updated: i64,
    pub rows_total: i64,
    pub batches: i64,
    pub batch_size: i32,
    pub sleep_ms: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub error: Option<String>,
    /// The largest replay lag of the replicas at the last check, in bytes of WAL.
    pub replica_lag_bytes: i64,
    /// Why the backfill waits, while it is `throttled`.
    pub throttle_reason: Option<String>,
    /// The batch time the batch size follows, in milliseconds; 0: batch_size stays as set.
    pub batch_target_ms: i32,
    /// Workers running now (while it runs), or the last run's count.
    pub workers: i32,
    /// The count asked for, when not `workers_auto`.
    pub workers_wanted: i32,
    /// The runner sets the count itself, within the p99 budget and the replicas' lag limit.
    pub workers_auto: bool,
    /// Why `workers` is what it is: the reason of its last change.
    pub workers_reason: Option<String>,
    pub workers_changed_at: Option<DateTime<Utc>>,
    /// The rule auto mode moves the count by where the run runs (`ZDM_BACKFILL_AUTO_RULE`):
    /// "zone" or "aimd".
    pub workers_rule: Option<String>,
    /// The users' p99 the instances reported when the run started, in ms: where its p99
    /// budget begins (kept when the run is resumed). `None` without a budget.
    pub quiet_p99_ms: Option<f64>,
    /// Whether the triggers of users fire on the batches' updates, as chosen before the first
    /// batch (`Triggers`); `None`: not chosen (the `triggers` gate holds the backfill while one
    /// would fire).
    pub triggers: Option<Triggers>,
}

impl BackfillStatus {
    /// Rows per second since the start (0 before the first batch).
    pub fn rows_per_s(&self) -> f64 {
        let Some(started) = self.started_at else {
            return 0.0;
        };
        let end = self.finished_at.unwrap_or(self.updated_at);
        let secs = (end - started).num_milliseconds() as f64 / 1000.0;
        if secs <= 0.0 {
            0.0
        } else {
            self.rows_done as f64 / secs
        }
    }

    /// The workers knob as a client sets it.
    pub fn workers_setting(&self) -> Workers {
        if self.workers_auto {
            Workers::Auto
        } else {
            Workers::Fixed(self.workers_wanted)
        }
    }

    /// With the progress of `ranges` (the ranges of the run since it began): the counters
    /// stored in `zdm_backfill` plus theirs, the checkpoint below which every range is done,
    /// and the size of the last batch.
    pub(super) fn with_ranges(mut self, ranges: &[WorkerRange]) -> Self {
        if ranges.is_empty() {
            return self;
        }
        for range in ranges {
            self.rows_done += range.rows_done;
            self.rows_updated += range.rows_updated;
            self.batches += range.batches;
            self.updated_at = self.updated_at.max(range.updated_at);
        }
        self.last_id = ranges
            .iter()
            .filter(|r| !r.is_done())
            .map(|r| r.last_id)
            .min()
            .unwrap_or(self.max_id);
        if self.batch_target_ms > 0
            && let Some(latest) = ranges
                .iter()
                .filter(|r| r.batches > 0)
                .max_by_key(|r| r.updated_at)
        {
            self.batch_size = latest.batch_size;
        }
        self
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }
}

/// One of the disjoint key ranges `(start_id, end_id]` a run is split into, with its own
/// checkpoint (`last_id`) and counters, committed with each of its batches.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct WorkerRange {
    pub range_no: i32,
    /// The range starts after this id.
    pub start_id: i64,
    /// Its checkpoint: every id in `(start_id, last_id]` is done.
    pub last_id: i64,
    /// Its last id.
    pub end_id: i64,
    /// The worker on it (1 runs on the runner's own connection), if any.
    pub worker: Option<i32>,
    pub rows_done: i64,
    pub rows_updated: i64,
    pub batches: i64,
    /// The size of its last batch.
    pub batch_size: i32,
    pub updated_at: DateTime<Utc>,
}

impl WorkerRange {
    pub fn is_done(&self) -> bool {
        self.last_id >= self.end_id
    }

    /// How far along it is, by ids, in percent.
    pub fn percent(&self) -> f64 {
        let span = (self.end_id - self.start_id).max(1) as f64;
        ((self.last_id - self.start_id) as f64 * 100.0 / span).clamp(0.0, 100.0)
    }
}

/// A change of the number of workers during a run, and why.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct WorkerChange {
    #[serde(skip)]
    pub id: i64,
    pub at: DateTime<Utc>,
    pub workers: i32,
    pub previous: Option<i32>,
    pub reason: String,
}

/// The ranges of the current (or last) run, in key order.
pub fn ranges(conn: &mut PgConnection) -> QueryResult<Vec<WorkerRange>> {
    zdm_backfill_ranges::table
        .order(zdm_backfill_ranges::start_id)
        .load(conn)
}

/// The last `limit` changes of the number of workers in the current (or last) run, newest
/// first.
pub fn worker_changes(conn: &mut PgConnection, limit: i64) -> QueryResult<Vec<WorkerChange>> {
    zdm_backfill_worker_changes::table
        .order(zdm_backfill_worker_changes::id.desc())
        .limit(limit)
        .load(conn)
}

/// The status as stored, with the progress of the ranges.
pub(super) fn with_progress(
    conn: &mut PgConnection,
    stored: BackfillStatus,
) -> QueryResult<BackfillStatus> {
    Ok(with_progress_and_ranges(conn, stored)?.0)
}

/// As `with_progress`, with the ranges it counted (read once).
pub(super) fn with_progress_and_ranges(
    conn: &mut PgConnection,
    stored: BackfillStatus,
) -> QueryResult<(BackfillStatus, Vec<WorkerRange>)> {
    let ranges = ranges(conn)?;
    Ok((stored.with_ranges(&ranges), ranges))
}

/// Why a backfill stored as running is `interrupted`, when no error of its own was recorded.
pub const NO_RUNNER: &str = "no runner holds the backfill's lock: its process ended or lost the database; resume continues from the checkpoint";

/// SQL: no session of this database holds the backfill's advisory lock (a bigint key shows in
/// pg_locks as classid = its high 32 bits, objid = its low 32 bits, objsubid = 1).
pub(super) fn no_runner() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
    diesel::dsl::sql(&format!(
        "NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid = {} AND objid = {} AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        LOCK_KEY >> 32,
        LOCK_KEY & 0xffff_ffff
    ))
}

/// The backfill's status. One stored as running (or throttled) whose lock no session holds
/// has no runner: it is recorded as `interrupted` here, keeping the last error it recorded,
/// so no reader is ever told it runs.
pub fn status(conn: &mut PgConnection) -> QueryResult<BackfillStatus> {
    Ok(status_and_ranges(conn)?.0)
}

/// As `status`, with the ranges it counted (read once).
pub fn status_and_ranges(
    conn: &mut PgConnection,
) -> QueryResult<(BackfillStatus, Vec<WorkerRange>)> {
    let stored = stored_status(conn)?;
    with_progress_and_ranges(conn, stored)
}

/// As `status`, without the ranges' progress: the row as stored (after the check above).
pub(super) fn stored_status(conn: &mut PgConnection) -> QueryResult<BackfillStatus> {
    let stored: BackfillStatus = zdm_backfill::table.first(conn)?;
    if !stored.state.is_active() {
        return Ok(stored);
    }
    let interrupted: Option<BackfillStatus> = diesel::update(
        zdm_backfill::table
            .filter(zdm_backfill::state.eq_any([BackfillState::Running, BackfillState::Throttled]))
            .filter(no_runner()),
    )
    .set((
        zdm_backfill::state.eq(BackfillState::Interrupted),
        zdm_backfill::error.eq(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Text>,
        >("coalesce(error, ")
        .bind::<diesel::sql_types::Text, _>(NO_RUNNER)
        .sql(")")),
        zdm_backfill::throttle_reason.eq(None::<String>),
        zdm_backfill::updated_at.eq(now),
    ))
    .get_result(conn)
    .optional()?;
    match interrupted {
        Some(status) => {
            log::warn!(
                "the backfill was running but no runner holds its lock: interrupted; a resume continues from its checkpoints"
            );
            Ok(status)
        }
        None => zdm_backfill::table.first(conn),
    }
}

/// Asks a running backfill to stop at the next batch boundary: `paused` keeps the checkpoint
/// for a resume, `cancelled` makes the next start begin afresh. Returns the status and the
/// ranges it counted, as `status_and_ranges` does.
pub fn request_stop(
    conn: &mut PgConnection,
    to_state: BackfillState,
) -> Result<(BackfillStatus, Vec<WorkerRange>), BackfillError> {
    let changed: Option<BackfillStatus> = conn.transaction(|conn| {
        super::hold_back_batches(conn)?;
        diesel::update(
            zdm_backfill::table.filter(zdm_backfill::state.eq_any(BackfillState::STOPPABLE)),
        )
        .set(zdm_backfill::state.eq(to_state))
        .get_result(conn)
        .optional()
    })?;
    match changed {
        Some(stored) => Ok(with_progress_and_ranges(conn, stored)?),
        None => Err(BackfillError::NotRunning(status(conn)?.state)),
    }
}
