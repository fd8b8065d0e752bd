//! The backfill: fills `first_name` + `last_name` of old rows from `full_name` (forward), or,
//! when new_only is rolled back, refills `full_name` from the parts (reverse).
//!
//! - Keyset batches over the primary key. Each batch is one short transaction with its own
//!   `statement_timeout`: one guarded UPDATE whose WHERE is the repair condition (rows are
//!   never read into Rust and written back), and the checkpoint committed with it.
//!   Memory stays flat whatever the table size.
//! - Workers: the key range is split into disjoint ranges, each with its own checkpoint,
//!   filled by up to 16 workers at once (one connection each, still one runner). The count
//!   is a knob that can change while it runs, or `auto`: within a p99 budget (see `auto`).
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
//! Here the entry points and where a run begins. A run: `runner` (from its start to its
//! recorded end), `coordinator` (the number of workers, what they did told to the caller),
//! `worker` (one connection's batches), `plan` (which worker works on which range, pure),
//! `sizing` (the next batch's size), `batch` (one transaction) and `store` (the other
//! writes). Around it: `status` (what it says about itself, stop requests), `knobs` (what a
//! client turns while it runs), `throttle` (waiting for replicas and requests), `auto` (the
//! number of workers within the budget) and `ride_out` (a lost database).

mod auto;
mod batch;
mod coordinator;
mod knobs;
mod plan;
mod ride_out;
mod runner;
mod sizing;
mod state;
mod status;
mod store;
mod throttle;
mod worker;
mod zone;

use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::dsl::now;
use diesel::prelude::*;

use super::advisory_lock::AdvisoryLock;
use crate::schema::expanded::users;
use crate::schema::state::zdm_backfill;
use runner::Failure;

pub use auto::AutoRule;
pub use knobs::{
    AUTO_NEEDS_A_BUDGET, Knobs, WORKERS_EXPECTED, Workers, next_batch_size, set_knobs,
    triggers_kept,
};
pub use ride_out::{DEFAULT_RIDE_OUT, RideOut, run_riding_out};
pub use state::{BackfillState, Direction, Triggers, UnknownName};
pub use status::{
    BackfillStatus, NO_RUNNER, WorkerChange, WorkerRange, ranges, request_stop, status,
    status_and_ranges, worker_changes,
};
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
/// How long a batch waits for a row another transaction holds before it gives way: rolled
/// back, it releases the rows it had already updated (users' writes of them queue behind it
/// meanwhile), and is tried again after a pause (`BATCH_GIVE_WAY_PAUSE`, growing). A user's
/// write holds its row for milliseconds; longer is a transaction left open. Where the runner
/// has no URL for a second session to learn the server's words for a lock timeout (a
/// rollback's reverse backfill), its batches wait for the row instead.
pub const BATCH_LOCK_TIMEOUT: &str = "100ms";
/// The first pause before a batch that gave way is tried again.
pub(super) const BATCH_GIVE_WAY_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
/// The most workers a backfill runs at once (as the table's CHECK allows).
pub const MAX_WORKERS: i32 = 16;
/// The advisory lock key held by the one running backfill ("zdmb").
pub const LOCK_KEY: i64 = 0x7a64_6d62;

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("a backfill is already running (another instance or process holds its lock)")]
    AlreadyRunning,
    #[error("the backfill is {0}; only a running backfill can be paused or cancelled")]
    NotRunning(BackfillState),
    #[error(
        "the backfill lost the database and stopped waiting for it after {waited:.1?}: {error}"
    )]
    GaveUp { waited: Duration, error: String },
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// What one batch did, as `run_workers` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchDone {
    /// The worker that ran it (1 on the runner's connection).
    pub worker: i32,
    pub range_no: i32,
    /// It covered the ids `(from, to]`.
    pub from: i64,
    pub to: i64,
    /// Rows passed, rows changed.
    pub rows: i64,
    pub updated: i64,
    /// Its batch size.
    pub size: i32,
    /// Its transaction's time, from its start to its commit.
    pub took: Duration,
}

/// Runs (or resumes) the backfill in `direction` until it is done, paused or cancelled,
/// calling `progress` after every batch. Blocks the calling thread. One worker, on `conn`.
pub fn run(
    conn: &mut PgConnection,
    direction: Direction,
    progress: impl FnMut(&BackfillStatus),
) -> Result<BackfillStatus, BackfillError> {
    run_throttled(conn, direction, &mut Throttle::none(), progress)
}

/// As `run`, waiting before each batch until every replica in `throttle` has replayed to
/// within its lag limit (and the requests are within its p99 limit). One worker, on `conn`:
/// without a database URL no other connection can be opened (the reverse backfill of a
/// rollback runs so).
pub fn run_throttled(
    conn: &mut PgConnection,
    direction: Direction,
    throttle: &mut Throttle,
    progress: impl FnMut(&BackfillStatus),
) -> Result<BackfillStatus, BackfillError> {
    run_workers(conn, None, direction, throttle, progress, |_| {})
}

/// The backfill with as many workers as its knob says (`workers`, or auto mode), the first on
/// `conn`, the others on connections to `url` (`None`: one worker). Takes the backfill's lock
/// on `conn` (`AlreadyRunning` if another runner holds it) and runs until the backfill is
/// done, paused, cancelled or fails, calling `progress` with the status after every batch
/// and `on_batch` with each batch. Blocks the calling thread.
pub fn run_workers(
    conn: &mut PgConnection,
    url: Option<&str>,
    direction: Direction,
    throttle: &mut Throttle,
    mut progress: impl FnMut(&BackfillStatus),
    mut on_batch: impl FnMut(&BatchDone),
) -> Result<BackfillStatus, BackfillError> {
    Ok(run_locked(
        conn,
        url,
        direction,
        throttle,
        &mut progress,
        &mut on_batch,
    )?)
}

/// As `run_workers`, telling a lost connection apart from other failures, for riding it out.
fn run_locked(
    conn: &mut PgConnection,
    url: Option<&str>,
    direction: Direction,
    throttle: &mut Throttle,
    progress: &mut dyn FnMut(&BackfillStatus),
    on_batch: &mut dyn FnMut(&BatchDone),
) -> Result<BackfillStatus, Failure> {
    let error = match AdvisoryLock::try_acquire(conn, LOCK_KEY) {
        Ok(Some(mut lock)) => {
            return runner::run(lock.conn(), url, direction, throttle, progress, on_batch);
        }
        Ok(None) => return Err(Failure::Error(BackfillError::AlreadyRunning)),
        Err(e) => e,
    };
    Err(Failure::checked_on(conn, error))
}

/// Resumes an interrupted run of the same direction, or starts afresh, and sets the number
/// of workers it starts with. `budget`: the users' p99 budget of this run, and where a
/// relative one was set from (recorded with the run's first count of workers); `quiet_p99_ms`:
/// the users' p99 it starts from (stored, and kept when the run resumes); `rule`: how auto
/// mode moves the count here (recorded in the status). Returns the row as stored and the
/// run's ranges.
fn begin(
    conn: &mut PgConnection,
    direction: Direction,
    can_grow: bool,
    (p99_budget_ms, budget_note): (Option<f64>, Option<&str>),
    quiet_p99_ms: Option<f64>,
    rule: AutoRule,
) -> QueryResult<(BackfillStatus, Vec<WorkerRange>)> {
    let current = status::stored_status(conn)?;
    let (count, mut reason) =
        initial_workers(current.workers_setting(), can_grow, p99_budget_ms, rule);
    if let Some(note) = budget_note {
        reason = format!("{reason} ({note})");
    }
    // interrupted (or still running, read by nobody since): its runner died or gave up;
    // paused: asked to; failed: a batch failed (statement_timeout, or the database was gone
    // for longer than the runner waited). All keep their checkpoints.
    if current.state.is_resumable() && current.direction == direction {
        resume(conn, &current)?;
    } else {
        start_afresh(conn, direction, current.batch_size, count)?;
    }
    diesel::update(zdm_backfill::table)
        .set((
            zdm_backfill::workers_rule.eq(rule.as_str()),
            zdm_backfill::quiet_p99_ms.eq(quiet_p99_ms),
        ))
        .execute(conn)?;
    let stored = record_change(conn, None, count, &reason)?;
    Ok((stored, ranges(conn)?))
}

/// Marks the run `current` running again, from the checkpoints its ranges hold.
fn resume(conn: &mut PgConnection, current: &BackfillStatus) -> QueryResult<()> {
    use crate::schema::state::zdm_backfill_ranges as r;
    diesel::update(zdm_backfill::table)
        .set((
            zdm_backfill::state.eq(BackfillState::Running),
            zdm_backfill::error.eq(None::<String>),
        ))
        .execute(conn)?;
    // Workers are assigned afresh.
    diesel::update(r::table)
        .set(r::worker.eq(None::<i32>))
        .execute(conn)?;
    // Ids left but no range to hold them (a run checkpointed before there were ranges): its
    // checkpoint becomes its one range, as the migration that added the ranges does.
    let stored_ranges: i64 = r::table.count().get_result(conn)?;
    if stored_ranges == 0 && current.last_id < current.max_id {
        diesel::insert_into(r::table)
            .values((
                r::range_no.eq(1),
                r::start_id.eq(current.last_id),
                r::last_id.eq(current.last_id),
                r::end_id.eq(current.max_id),
                r::batch_size.eq(current.batch_size),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// Starts a run in `direction` over the ids in the table now, split evenly into one range
/// per worker it starts with (`workers`), each beginning with `batch_size`. The previous
/// run's ranges, counters and changes of the worker count go.
fn start_afresh(
    conn: &mut PgConnection,
    direction: Direction,
    batch_size: i32,
    workers: i32,
) -> QueryResult<()> {
    use crate::schema::state::{zdm_backfill_ranges as r, zdm_backfill_worker_changes};
    let (min_id, max_id): (Option<i64>, Option<i64>) = users::table
        .select((diesel::dsl::min(users::id), diesel::dsl::max(users::id)))
        .first(conn)?;
    let rows_total: i64 = users::table.count().get_result(conn)?;
    diesel::delete(r::table).execute(conn)?;
    diesel::delete(zdm_backfill_worker_changes::table).execute(conn)?;
    if let (Some(min_id), Some(max_id)) = (min_id, max_id) {
        let ranges: Vec<_> = plan::split_evenly(min_id - 1, max_id, workers)
            .into_iter()
            .zip(1..)
            .map(|((after, last), no)| {
                (
                    r::range_no.eq(no),
                    r::start_id.eq(after),
                    r::last_id.eq(after),
                    r::end_id.eq(last),
                    r::batch_size.eq(batch_size),
                )
            })
            .collect();
        diesel::insert_into(r::table)
            .values(&ranges)
            .execute(conn)?;
    }
    diesel::update(zdm_backfill::table)
        .set((
            zdm_backfill::direction.eq(direction),
            zdm_backfill::state.eq(BackfillState::Running),
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
        .execute(conn)?;
    Ok(())
}

/// The number of workers a run starts with, and why.
fn initial_workers(
    setting: Workers,
    can_grow: bool,
    p99_budget_ms: Option<f64>,
    rule: AutoRule,
) -> (i32, String) {
    match (setting, p99_budget_ms) {
        (Workers::Fixed(1), _) => (1, "set to 1".to_owned()),
        _ if !can_grow => (1, coordinator::ONE_CONNECTION.to_owned()),
        (Workers::Fixed(n), _) => (n, format!("set to {n}")),
        (Workers::Auto, Some(budget)) => (
            1,
            format!(
                "auto ({rule} rule): starts with one worker and adds one at a time while the requests' p99 stays within {budget:.1} ms"
            ),
        ),
        (Workers::Auto, None) => (1, coordinator::NO_BUDGET.to_owned()),
    }
}

/// Records that the run now has `workers` workers (`previous`: None at its start), and why:
/// in the status and in the list of changes, in one transaction. Returns the row as stored.
fn record_change(
    conn: &mut PgConnection,
    previous: Option<i32>,
    workers: i32,
    reason: &str,
) -> QueryResult<BackfillStatus> {
    use crate::schema::state::zdm_backfill_worker_changes as c;
    conn.transaction(|conn| {
        hold_back_batches(conn)?;
        diesel::insert_into(c::table)
            .values((
                c::workers.eq(workers),
                c::previous.eq(previous),
                c::reason.eq(reason),
            ))
            .execute(conn)?;
        diesel::update(zdm_backfill::table)
            .set((
                zdm_backfill::workers.eq(workers),
                zdm_backfill::workers_reason.eq(reason),
                zdm_backfill::workers_changed_at.eq(now),
            ))
            .get_result(conn)
    })
}

/// Makes way, in the current transaction, for a change of the backfill's status row that
/// must not wait behind a stream of batches. Each batch holds the row `FOR SHARE`, and
/// PostgreSQL lets a new share lock past an update waiting for the row as long as no one
/// holds more than a share lock: with workers starting batches back to back, a pause could
/// wait until its statement_timeout. An EXCLUSIVE lock on the table queues in order, waits
/// for the batches in flight and holds new ones back until this transaction ends; plain
/// reads go on.
pub(super) fn hold_back_batches(conn: &mut PgConnection) -> QueryResult<()> {
    conn.batch_execute("LOCK TABLE zdm_backfill IN EXCLUSIVE MODE")
}

/// Sleeps for `pause`, or until `stopped` says so (looked at every `tick`).
pub(super) fn sleep_unless(pause: Duration, tick: Duration, stopped: impl Fn() -> bool) {
    let until = std::time::Instant::now() + pause;
    while !stopped() {
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(tick));
    }
}
