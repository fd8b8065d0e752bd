//! The backfill: fills `first_name` + `last_name` of old rows from `full_name` (forward), or,
//! when new_only is rolled back, refills `full_name` from the parts (reverse).
//!
//! - Keyset batches over the primary key. Each batch is one short transaction with its own
//!   `statement_timeout`: one guarded UPDATE whose WHERE is the repair condition (rows are
//!   never read into Rust and written back), and the checkpoint (`last_id`) committed with it.
//!   Memory stays flat whatever the table size.
//! - Batch size and the sleep between batches are read from `zdm_backfill` before every
//!   batch, so they can be changed while it runs; so can its state (pause, cancel).
//! - With a target batch time (the default), the batch size follows it: after each batch it
//!   is scaled toward the size that takes the target, so batches stay as short on a slow
//!   machine or a busy table as on a fast idle one.
//! - One runner at a time across all instances and processes: a session advisory lock, which
//!   PostgreSQL releases by itself if the runner dies.
//! - The status never says `running` when no runner holds that lock: whoever reads it and
//!   finds the lock free records `interrupted` (the runner's process died, or it lost the
//!   database and gave up).
//! - A runner that loses its connection (a database restart or crash) reconnects, retrying
//!   with backoff for a bounded time (`RideOut`), and resumes from the checkpoint by itself;
//!   past the bound it gives up and records `failed` with the error if the database can be
//!   reached to say so (else the status reads `interrupted` once it is back).
//! - A runner that died (`kill -9`), failed or gave up leaves its checkpoint; the next start
//!   resumes from there. Only `done` and `cancelled` make it start afresh.
//!
//! Here the run loop and where a run begins; `status` (what it says about itself, stop
//! requests), `knobs` (what a client turns while it runs), `batch` (one transaction),
//! `throttle` (waiting for replicas and requests) and `ride_out` (a lost database).

mod batch;
mod knobs;
mod ride_out;
mod status;
mod throttle;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::prelude::*;
use serde::Serialize;

use super::advisory_lock::AdvisoryLock;
use crate::schema::expanded::users;
use crate::schema::state::zdm_backfill;
use batch::run_batch;

pub use knobs::{Knobs, next_batch_size, set_knobs};
pub use ride_out::{DEFAULT_RIDE_OUT, RideOut, run_riding_out};
pub use status::{BackfillStatus, NO_RUNNER, request_stop, status};
pub use throttle::Throttle;

/// Rows per batch unless changed: small enough for a batch to take milliseconds. With a
/// target batch time, the size of the first batch only.
pub const DEFAULT_BATCH_SIZE: i32 = 5000;
/// The largest batch size a client may set, or the target time may grow to.
pub const MAX_BATCH_SIZE: i32 = 100_000;
/// The target batch time a fresh database starts with (0 turns sizing by time off).
pub const DEFAULT_BATCH_TARGET_MS: i32 = 40;
/// The largest target batch time a client may set (as the table's CHECK allows).
pub const MAX_BATCH_TARGET_MS: i32 = 10_000;
/// The longest sleep between batches a client may set (as the table's CHECK allows).
pub const MAX_SLEEP_MS: i32 = 60_000;
/// A batch that takes longer than this is cancelled (and retried by the next start).
pub const BATCH_STATEMENT_TIMEOUT: &str = "5s";
/// The advisory lock key held by the one running backfill ("zdmb").
pub const LOCK_KEY: i64 = 0x7a64_6d62;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// first_name, last_name := split(full_name)
    Forward,
    /// full_name := join(first_name, last_name)
    Reverse,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("a backfill is already running (another instance or process holds its lock)")]
    AlreadyRunning,
    #[error("the backfill is {0}; only a running backfill can be paused or cancelled")]
    NotRunning(String),
    #[error(
        "the backfill lost the database and stopped waiting for it after {waited:.1?}: {error}"
    )]
    GaveUp { waited: Duration, error: String },
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// Runs (or resumes) the backfill in `direction` until it is done, paused or cancelled,
/// calling `progress` after every batch. Blocks the calling thread.
pub fn run(
    conn: &mut PgConnection,
    direction: Direction,
    progress: impl FnMut(&BackfillStatus),
) -> Result<BackfillStatus, BackfillError> {
    run_throttled(conn, direction, &mut Throttle::none(), progress)
}

/// As `run`, waiting before each batch until every replica in `throttle` has replayed to
/// within its lag limit.
pub fn run_throttled(
    conn: &mut PgConnection,
    direction: Direction,
    throttle: &mut Throttle,
    mut progress: impl FnMut(&BackfillStatus),
) -> Result<BackfillStatus, BackfillError> {
    let mut lock =
        AdvisoryLock::try_acquire(conn, LOCK_KEY)?.ok_or(BackfillError::AlreadyRunning)?;
    let conn = lock.conn();
    let mut current = begin(conn, direction)?;
    log::info!(
        "backfill ({}) from id {} to {}",
        direction.as_str(),
        current.last_id,
        current.max_id
    );
    progress(&current);
    // How long the last batch took, for sizing the next one.
    let mut last_batch = None::<Duration>;
    loop {
        if current.state != "running" {
            log::info!("backfill {} at id {}", current.state, current.last_id);
            return Ok(current);
        }
        if current.last_id >= current.max_id {
            let done = diesel::update(zdm_backfill::table)
                .set((
                    zdm_backfill::state.eq("done"),
                    zdm_backfill::finished_at.eq(now),
                    zdm_backfill::updated_at.eq(now),
                ))
                .get_result(conn)?;
            progress(&done);
            log::info!(
                "backfill done: {} rows scanned, {} updated",
                done.rows_done,
                done.rows_updated
            );
            return Ok(done);
        }
        current = throttle.wait_until_clear(conn, current, &mut progress)?;
        if current.state != "running" {
            continue;
        }
        let started = Instant::now();
        current = match run_batch(conn, direction, &current, last_batch) {
            Ok(next) => next,
            Err(e) => {
                let _ = diesel::update(zdm_backfill::table)
                    .set((
                        zdm_backfill::state.eq("failed"),
                        zdm_backfill::error.eq(e.to_string()),
                    ))
                    .execute(conn);
                return Err(e.into());
            }
        };
        let took = started.elapsed();
        last_batch = Some(took);
        log::debug!(
            "backfill batch to id {} in {took:?} ({} rows updated so far)",
            current.last_id,
            current.rows_updated
        );
        progress(&current);
        if current.sleep_ms > 0 && current.state == "running" {
            std::thread::sleep(Duration::from_millis(current.sleep_ms as u64));
        }
    }
}

/// Resumes an interrupted run of the same direction, or starts afresh.
fn begin(conn: &mut PgConnection, direction: Direction) -> QueryResult<BackfillStatus> {
    let current = status(conn)?;
    // interrupted (or still running, read by nobody since): its runner died or gave up;
    // paused: asked to; failed: a batch failed (statement_timeout, or the database was gone
    // for longer than the runner waited). All keep their checkpoint.
    let resumable = matches!(
        current.state.as_str(),
        "running" | "throttled" | "interrupted" | "paused" | "failed"
    ) && current.direction == direction.as_str();
    if resumable {
        return diesel::update(zdm_backfill::table)
            .set((
                zdm_backfill::state.eq("running"),
                zdm_backfill::error.eq(None::<String>),
            ))
            .get_result(conn);
    }
    let max_id: Option<i64> = users::table
        .select(diesel::dsl::max(users::id))
        .first(conn)?;
    let rows_total: i64 = users::table.count().get_result(conn)?;
    diesel::update(zdm_backfill::table)
        .set((
            zdm_backfill::direction.eq(direction.as_str()),
            zdm_backfill::state.eq("running"),
            zdm_backfill::last_id.eq(0),
            zdm_backfill::max_id.eq(max_id.unwrap_or(0)),
            zdm_backfill::rows_done.eq(0),
            zdm_backfill::rows_updated.eq(0),
            zdm_backfill::rows_total.eq(rows_total),
            zdm_backfill::batches.eq(0),
            zdm_backfill::started_at.eq(now),
            zdm_backfill::updated_at.eq(now),
            zdm_backfill::finished_at.eq(None::<DateTime<Utc>>),
            zdm_backfill::error.eq(None::<String>),
        ))
        .get_result(conn)
}
