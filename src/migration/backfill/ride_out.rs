//! Riding out a lost database: a runner whose connection dies reconnects with backoff for a
//! bounded time and resumes from the checkpoint by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::dsl::now;
use diesel::prelude::*;

use super::runner::Failure;
use super::status::{BackfillStatus, no_runner, status};
use super::throttle::Throttle;
use super::{BackfillError, BackfillState, Direction, run_locked, sleep_unless};
use crate::schema::state::zdm_backfill;

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
        sleep_unless(pause, Duration::from_millis(50), || self.stopped());
    }
}

impl Default for RideOut {
    fn default() -> Self {
        Self::new(DEFAULT_RIDE_OUT)
    }
}

/// Whether `error` means the connection is gone, rather than a query that failed on a
/// working one: Diesel says so, or the connection no longer answers.
pub(super) fn connection_lost(conn: &mut PgConnection, error: &diesel::result::Error) -> bool {
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

/// Runs the backfill with its workers as `run_workers` does, on `conn` and then, when a
/// connection of the run is lost (a database restart
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
            let mut on_progress = |s: &BackfillStatus| {
                // It is back: a later loss is a new outage, with a bound of its own.
                if lost.take().is_some() {
                    log::info!(
                        "backfill: resumed at id {} after {attempts} reconnection attempt(s)",
                        s.last_id
                    );
                    (attempts, pause) = (0, FIRST_RECONNECT_PAUSE);
                }
                progress(s);
            };
            let result = run_locked(
                &mut current,
                Some(url),
                direction,
                throttle,
                &mut on_progress,
                &mut |_| {},
            );
            match result {
                Ok(done) => return Ok(done),
                Err(Failure::Error(BackfillError::AlreadyRunning)) if lost.is_some() => {
                    log::info!("backfill: another runner took it over while this one reconnected");
                    return Ok(status(&mut current)?);
                }
                Err(Failure::ConnectionLost(e)) => {
                    let error = one_line(&e);
                    log::warn!("backfill: lost the database connection: {error}");
                    let since = lost.map_or_else(Instant::now, |(since, _)| since);
                    lost = Some((since, error));
                }
                Err(Failure::Error(e)) => return Err(e),
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
        match crate::db::session(url) {
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
pub(super) fn one_line(error: &impl std::fmt::Display) -> String {
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
    let recorded = crate::db::session(url)
        .map_err(|e| e.to_string())
        .and_then(|mut conn| {
            diesel::update(
                zdm_backfill::table
                    .filter(zdm_backfill::state.eq_any(BackfillState::ACTIVE_OR_INTERRUPTED))
                    .filter(no_runner()),
            )
            .set((
                zdm_backfill::state.eq(BackfillState::Failed),
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
