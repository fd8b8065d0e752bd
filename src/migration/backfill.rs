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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::dsl::now;
use diesel::prelude::*;
use serde::Serialize;

use super::advisory_lock::AdvisoryLock;
use super::name_sql::{zdm_name_first, zdm_name_join, zdm_name_last};
use super::verify::needs_repair;
use crate::schema::expanded::users;
use crate::schema::state::{zdm_backfill, zdm_instances};

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
/// The target batch time may grow the batch size by at most this factor per batch, and
/// shrink it by its inverse, so that one slow batch (a checkpoint) does not swing it.
const MAX_RESIZE_STEP: f64 = 1.5;
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

/// Why a backfill stored as running is `interrupted`, when no error of its own was recorded.
pub const NO_RUNNER: &str = "no runner holds the backfill's lock: its process ended or lost the database; resume continues from the checkpoint";

/// SQL: no session of this database holds the backfill's advisory lock (a bigint key shows in
/// pg_locks as classid = its high 32 bits, objid = its low 32 bits, objsubid = 1).
fn no_runner() -> diesel::expression::SqlLiteral<diesel::sql_types::Bool> {
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

/// The backfill's settings as a client changes them; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Knobs {
    /// Rows per batch.
    pub batch_size: Option<i32>,
    /// Pause between batches, in milliseconds.
    pub sleep_ms: Option<i32>,
    /// The batch time the batch size follows, in milliseconds; 0 keeps batch_size as set.
    pub batch_target_ms: Option<i32>,
}

impl Knobs {
    pub fn sleep(sleep_ms: i32) -> Self {
        Knobs {
            sleep_ms: Some(sleep_ms),
            ..Knobs::default()
        }
    }

    /// A fixed batch size (no target time) and sleep, as the tests and demos want them.
    pub fn fixed(batch_size: i32, sleep_ms: i32) -> Self {
        Knobs {
            batch_size: Some(batch_size),
            sleep_ms: Some(sleep_ms),
            batch_target_ms: None,
        }
    }

    /// What each knob must lie within, as `(field, message)` for the first that does not.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        // (field, value, lowest, what the lowest means, highest)
        let ranges = [
            ("batch_size", self.batch_size, 1, "", MAX_BATCH_SIZE),
            ("sleep_ms", self.sleep_ms, 0, "", MAX_SLEEP_MS),
            (
                "batch_target_ms",
                self.batch_target_ms,
                0,
                " (a fixed batch size)",
                MAX_BATCH_TARGET_MS,
            ),
        ];
        ranges
            .into_iter()
            .find_map(|(field, value, low, meaning, high)| {
                value.is_some_and(|v| !(low..=high).contains(&v)).then(|| {
                    (
                        field,
                        format!("{field} must be between {low}{meaning} and {high}."),
                    )
                })
            })
    }
}

/// Changes the knobs, also while running. A batch size given without a target time is kept
/// as given (the target is turned off); with one, it is where the sizing starts from.
pub fn set_knobs(conn: &mut PgConnection, knobs: Knobs) -> QueryResult<BackfillStatus> {
    let current = status(conn)?;
    let target = match (knobs.batch_size, knobs.batch_target_ms) {
        (_, Some(target)) => target,
        (Some(_), None) => 0,
        (None, None) => current.batch_target_ms,
    };
    diesel::update(zdm_backfill::table)
        .set((
            zdm_backfill::batch_size.eq(knobs.batch_size.unwrap_or(current.batch_size)),
            zdm_backfill::sleep_ms.eq(knobs.sleep_ms.unwrap_or(current.sleep_ms)),
            zdm_backfill::batch_target_ms.eq(target),
        ))
        .get_result(conn)
}

/// The next batch size: the last one scaled by how far its batch's time was from the
/// target, by at most `MAX_RESIZE_STEP` either way, within 1..=MAX_BATCH_SIZE.
pub fn next_batch_size(size: i32, took: Duration, target_ms: i32) -> i32 {
    let took_ms = (took.as_secs_f64() * 1000.0).max(0.1);
    let factor = (f64::from(target_ms) / took_ms).clamp(1.0 / MAX_RESIZE_STEP, MAX_RESIZE_STEP);
    ((f64::from(size) * factor).round() as i32).clamp(1, MAX_BATCH_SIZE)
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

/// How a runner rides out a lost database: how long it keeps trying to get back before it
/// gives up, and a switch that ends the waiting early (a shutdown). Clones share the switch.
#[derive(Debug, Clone)]
pub struct RideOut {
    pub give_up_after: Duration,
    stop: Arc<AtomicBool>,
}

/// How long a runner waits for a lost database unless configured (`ZDM_BACKFILL_RIDE_OUT_SECS`).
pub const DEFAULT_RIDE_OUT: Duration = Duration::from_secs(60);
/// The pause before the first reconnection attempt; doubled after each failed one, up to
/// `LONGEST_RECONNECT_PAUSE`.
const FIRST_RECONNECT_PAUSE: Duration = Duration::from_millis(250);
const LONGEST_RECONNECT_PAUSE: Duration = Duration::from_secs(2);

impl RideOut {
    pub fn new(give_up_after: Duration) -> Self {
        Self {
            give_up_after,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Ends the waiting for the database now, and any later one at once (for a shutdown: a
    /// runner waiting for a database that is down must not hold it up).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps for `pause`, or until stopped.
    fn sleep(&self, pause: Duration) {
        let until = Instant::now() + pause;
        while !self.stopped() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

impl Default for RideOut {
    fn default() -> Self {
        Self::new(DEFAULT_RIDE_OUT)
    }
}

/// Whether `error` means the connection is gone, rather than a query that failed on a
/// working one: Diesel says so, or the connection no longer answers.
fn connection_lost(conn: &mut PgConnection, error: &diesel::result::Error) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    matches!(
        error,
        Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _
        )
    ) || diesel::select(1.into_sql::<diesel::sql_types::Integer>())
        .execute(conn)
        .is_err()
}

/// As `run_throttled`, on `conn` and then, when that connection is lost (a database restart
/// or crash), on new connections to `url`: it reconnects, pausing 0.25 s, 0.5 s, 1 s, then 2 s
/// between attempts and logging each, and resumes from the checkpoint by itself. It
/// waits at most `ride_out.give_up_after` from the moment the connection was lost; past that
/// it records `failed` with the error (if the database accepts a connection to say so; else
/// the status reads `interrupted` once it is back) and returns `GaveUp`.
pub fn run_riding_out(
    conn: PgConnection,
    url: &str,
    direction: Direction,
    throttle: &mut Throttle,
    ride_out: &RideOut,
    mut progress: impl FnMut(&BackfillStatus),
) -> Result<BackfillStatus, BackfillError> {
    let mut conn = Some(conn);
    // Since when the database is lost, and the last error that said so.
    let mut lost: Option<(Instant, String)> = None;
    let mut attempts = 0;
    let mut pause = FIRST_RECONNECT_PAUSE;
    loop {
        if let Some(mut current) = conn.take() {
            let result = run_throttled(&mut current, direction, throttle, |s| {
                // It is back: a later loss is a new outage, with a bound of its own.
                if lost.take().is_some() {
                    log::info!(
                        "backfill: resumed at id {} after {attempts} reconnection attempt(s)",
                        s.last_id
                    );
                    (attempts, pause) = (0, FIRST_RECONNECT_PAUSE);
                }
                progress(s);
            });
            match result {
                Ok(done) => return Ok(done),
                Err(BackfillError::AlreadyRunning) if lost.is_some() => {
                    log::info!("backfill: another runner took it over while this one reconnected");
                    return Ok(status(&mut current)?);
                }
                Err(BackfillError::Database(e)) if connection_lost(&mut current, &e) => {
                    let error = one_line(&e);
                    log::warn!("backfill: lost the database connection: {error}");
                    let since = lost.map_or_else(Instant::now, |(since, _)| since);
                    lost = Some((since, error));
                }
                Err(e) => return Err(e),
            }
        }
        let Some((since, error)) = &mut lost else {
            unreachable!("a runner only reconnects after losing its connection");
        };
        let waited = since.elapsed();
        if ride_out.stopped() || waited >= ride_out.give_up_after {
            return Err(give_up(url, ride_out, waited, error));
        }
        ride_out.sleep(pause.min(ride_out.give_up_after - waited));
        if ride_out.stopped() {
            continue;
        }
        attempts += 1;
        match PgConnection::establish(url) {
            Ok(fresh) => {
                log::info!(
                    "backfill: reconnected (attempt {attempts}); resuming from the checkpoint"
                );
                conn = Some(fresh);
            }
            Err(e) => {
                *error = one_line(&e);
                log::warn!(
                    "backfill: reconnection attempt {attempts} failed ({error}); next in {:?}, giving up {:?} after the connection was lost",
                    (pause * 2).min(LONGEST_RECONNECT_PAUSE),
                    ride_out.give_up_after
                );
            }
        }
        pause = (pause * 2).min(LONGEST_RECONNECT_PAUSE);
    }
}

/// An error as one line (libpq's messages span several), for the log and the status.
fn one_line(error: &impl std::fmt::Display) -> String {
    error
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A runner stops waiting for the database: past its bound it records `failed` with the error
/// (unless another runner has taken over meanwhile), when the database accepts a connection
/// to say so.
fn give_up(url: &str, ride_out: &RideOut, waited: Duration, error: &str) -> BackfillError {
    if ride_out.stopped() {
        log::info!("backfill: stopped while waiting for the database ({error})");
        return BackfillError::GaveUp {
            waited,
            error: format!("stopped while waiting for the database: {error}"),
        };
    }
    let message = format!("the database was unreachable for {waited:.1?}: {error}");
    log::error!("backfill: gave up; {message}; a resume continues from the checkpoint");
    let recorded = PgConnection::establish(url)
        .map_err(|e| e.to_string())
        .and_then(|mut conn| {
            diesel::update(
                zdm_backfill::table
                    .filter(zdm_backfill::state.eq_any(["running", "throttled", "interrupted"]))
                    .filter(no_runner()),
            )
            .set((
                zdm_backfill::state.eq("failed"),
                zdm_backfill::error.eq(&message),
                zdm_backfill::updated_at.eq(now),
            ))
            .execute(&mut conn)
            .map_err(|e| e.to_string())
        });
    if let Err(e) = recorded {
        log::warn!("backfill: could not record the failure ({e}); the status reads interrupted");
    }
    BackfillError::GaveUp {
        waited,
        error: error.to_owned(),
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

/// One batch: the ids after the checkpoint, up to `batch_size` of them, repaired and the
/// checkpoint moved, in one transaction. With a target time, `batch_size` is first resized
/// by how long the `last` batch took (stored with the checkpoint). Returns the state as
/// stored after it, which also carries any knob or state change made meanwhile.
fn run_batch(
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

/// Replica-lag throttling: streaming replicas replay the backfill's WAL; a backfill that
/// writes faster than they replay makes every read from them stale. Before each batch the
/// backfill measures each replica's replay lag (bytes of WAL between the primary's current
/// position and the replica's replay position) and, while any is above the limit or cannot be
/// reached, waits in the state `throttled`, saying why.
///
/// It can also watch the requests: with a p99 limit, it waits while any live instance
/// reported (with its last heartbeat, see `follower`) a p99 above the limit for the user
/// requests it answered just before.
pub struct Throttle {
    replicas: Vec<(String, Option<PgConnection>)>,
    pub max_lag_bytes: i64,
    pub max_request_p99_ms: Option<f64>,
}

/// Instances whose latency reports are recent enough to act on.
const LATENCY_REPORT_WINDOW_SECS: u32 = 2;

/// How often a throttled backfill looks again.
const THROTTLE_POLL: Duration = Duration::from_millis(200);

impl Throttle {
    pub fn none() -> Self {
        Self::new(Vec::new(), i64::MAX)
    }

    pub fn new(replica_urls: Vec<String>, max_lag_bytes: i64) -> Self {
        Self {
            replicas: replica_urls.into_iter().map(|url| (url, None)).collect(),
            max_lag_bytes,
            max_request_p99_ms: None,
        }
    }

    /// Also waits while the requests' p99 is above `ms` (`None`: does not watch them).
    pub fn with_request_p99_limit(mut self, ms: Option<f64>) -> Self {
        self.max_request_p99_ms = ms;
        self
    }

    /// Why the requests say wait, if they do: the worst p99 the live instances reported.
    fn slow_requests(&self, conn: &mut PgConnection) -> QueryResult<Option<String>> {
        let Some(limit) = self.max_request_p99_ms else {
            return Ok(None);
        };
        let recent = diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "last_seen > now() - interval '{LATENCY_REPORT_WINDOW_SECS} seconds'"
        ));
        let worst: Option<f64> = zdm_instances::table
            .filter(recent)
            .select(diesel::dsl::max(zdm_instances::recent_p99_ms))
            .first(conn)?;
        Ok(worst
            .filter(|p99| *p99 > limit)
            .map(|p99| format!("requests' p99 of {p99:.1} ms is above the limit of {limit:.1} ms")))
    }

    /// The largest replay lag in bytes, or why it cannot be measured.
    fn largest_lag(&mut self, primary: &mut PgConnection) -> Result<i64, String> {
        let mut largest = 0;
        for (index, (url, conn)) in self.replicas.iter_mut().enumerate() {
            if conn.is_none() {
                *conn = PgConnection::establish(url).ok();
            }
            let Some(replica) = conn.as_mut() else {
                return Err(format!("replica {} cannot be reached", index + 1));
            };
            let replayed = match crate::replicas::replayed_lsn(replica) {
                Ok(lsn) => lsn,
                Err(_) => {
                    *conn = None;
                    return Err(format!("replica {} cannot be reached", index + 1));
                }
            };
            let Some(replayed) = replayed else {
                return Err(format!(
                    "replica {} is not replaying (is it a standby?)",
                    index + 1
                ));
            };
            let written = crate::replicas::current_lsn(primary).map_err(|e| e.to_string())?;
            let lag = written.saturating_sub(replayed) as i64;
            largest = largest.max(lag);
        }
        Ok(largest)
    }

    /// Returns once the replicas are within the limit and the requests are fast enough
    /// (state `running`), or as soon as the backfill was paused or cancelled meanwhile.
    fn wait_until_clear(
        &mut self,
        conn: &mut PgConnection,
        mut current: BackfillStatus,
        progress: &mut impl FnMut(&BackfillStatus),
    ) -> Result<BackfillStatus, BackfillError> {
        if self.replicas.is_empty() && self.max_request_p99_ms.is_none() {
            return Ok(current);
        }
        loop {
            let measured = self.largest_lag(conn);
            let (mut state, lag, mut reason) = match &measured {
                Ok(lag) if *lag <= self.max_lag_bytes => ("running", *lag, None),
                Ok(lag) => (
                    "throttled",
                    *lag,
                    Some(format!(
                        "replica lag {lag} bytes is above the limit of {} bytes",
                        self.max_lag_bytes
                    )),
                ),
                Err(why) => ("throttled", current.replica_lag_bytes, Some(why.clone())),
            };
            if state == "running"
                && let Some(why) = self.slow_requests(conn)?
            {
                (state, reason) = ("throttled", Some(why));
            }
            // Only a running (or throttled) backfill changes state here, or one a reader marked
            // interrupted just before this runner took the lock: a pause or cancel asked for
            // meanwhile wins.
            let updated: Option<BackfillStatus> =
                diesel::update(zdm_backfill::table.filter(zdm_backfill::state.eq_any([
                    "running",
                    "throttled",
                    "interrupted",
                ])))
                .set((
                    zdm_backfill::state.eq(state),
                    zdm_backfill::replica_lag_bytes.eq(lag),
                    zdm_backfill::throttle_reason.eq(&reason),
                    zdm_backfill::updated_at.eq(now),
                ))
                .get_result(conn)
                .optional()?;
            current = match updated {
                Some(status) => status,
                None => return Ok(status(conn)?),
            };
            if state == "running" {
                return Ok(current);
            }
            log::debug!(
                "backfill throttled: {}",
                reason.as_deref().unwrap_or_default()
            );
            progress(&current);
            std::thread::sleep(THROTTLE_POLL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_size_moves_toward_the_target_time_by_bounded_steps() {
        let ms = Duration::from_millis;
        // Twice as fast as the target: grows, but by at most 1.5×.
        assert_eq!(next_batch_size(1000, ms(20), 40), 1500);
        assert_eq!(next_batch_size(1000, ms(32), 40), 1250);
        assert_eq!(next_batch_size(1000, ms(40), 40), 1000);
        assert_eq!(next_batch_size(1000, ms(50), 40), 800);
        // A batch stalled by a checkpoint shrinks the next by a third, not to nothing.
        assert_eq!(next_batch_size(1000, ms(900), 40), 667);
        assert_eq!(next_batch_size(1, ms(900), 40), 1);
        assert_eq!(next_batch_size(MAX_BATCH_SIZE, ms(1), 40), MAX_BATCH_SIZE);
        assert_eq!(next_batch_size(10, Duration::ZERO, 40), 15);
    }

    #[test]
    fn knobs_out_of_range_name_their_field() {
        assert_eq!(
            Knobs::fixed(0, 0).invalid().map(|e| e.0),
            Some("batch_size")
        );
        assert_eq!(
            Knobs {
                batch_target_ms: Some(-1),
                ..Knobs::default()
            }
            .invalid()
            .map(|e| e.0),
            Some("batch_target_ms")
        );
        assert_eq!(
            Knobs::sleep(60_001).invalid().map(|e| e.0),
            Some("sleep_ms")
        );
        assert_eq!(Knobs::fixed(100_000, 0).invalid(), None);
    }
}
