//! What the backfill says about itself: its stored status, read so that it never claims to
//! run when no runner holds its lock, and the requests to stop it.

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use serde::Serialize;

use super::{BackfillError, LOCK_KEY};
use crate::schema::state::zdm_backfill;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct BackfillStatus {
    #[serde(skip)]
    pub singleton: bool,
    pub direction: String,
    /// idle, running, throttled (waiting for replicas or requests), paused, done, failed,
    /// cancelled, or interrupted (stored as running, but no runner holds the lock).
    pub state: String,
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

    pub fn is_finished(&self) -> bool {
        matches!(
            self.state.as_str(),
            "done" | "failed" | "cancelled" | "idle"
        )
    }
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
    let stored: BackfillStatus = zdm_backfill::table.first(conn)?;
    if !matches!(stored.state.as_str(), "running" | "throttled") {
        return Ok(stored);
    }
    let interrupted: Option<BackfillStatus> = diesel::update(
        zdm_backfill::table
            .filter(zdm_backfill::state.eq_any(["running", "throttled"]))
            .filter(no_runner()),
    )
    .set((
        zdm_backfill::state.eq("interrupted"),
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
                "the backfill was running but no runner holds its lock: interrupted at id {}",
                status.last_id
            );
            Ok(status)
        }
        None => zdm_backfill::table.first(conn),
    }
}

/// Asks a running backfill to stop at the next batch boundary: `paused` keeps the checkpoint
/// for a resume, `cancelled` makes the next start begin afresh.
pub fn request_stop(
    conn: &mut PgConnection,
    to_state: &str,
) -> Result<BackfillStatus, BackfillError> {
    let changed: Option<BackfillStatus> =
        diesel::update(zdm_backfill::table.filter(zdm_backfill::state.eq_any([
            "running",
            "throttled",
            "paused",
            "interrupted",
        ])))
        .set(zdm_backfill::state.eq(to_state))
        .get_result(conn)
        .optional()?;
    match changed {
        Some(status) => Ok(status),
        None => Err(BackfillError::NotRunning(status(conn)?.state)),
    }
}
