//! The runner: one run of the backfill with its workers, from where it begins to how it
//! ended, recorded.
//!
//! The runner's thread holds the backfill's lock on its connection. On it, the coordinator
//! (`coordinator`) looks after the run, and worker 1 runs its batches in between; workers
//! 2.. run on threads of their own (`worker`), on the ranges of the plan they share
//! (`plan`). Each range's checkpoint is committed with each of its batches, so after a crash
//! the ranges in the database still cover every id not yet done, once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::Instant;

use diesel::prelude::*;

use super::coordinator::{Coordinator, Spawn};
use super::knobs::{batch_time_cap_ms, batch_time_target_ms};
use super::plan::Plan;
use super::ride_out::{connection_lost, one_line};
use super::sizing::Sizing;
use super::status::{BackfillStatus, with_progress};
use super::throttle::Throttle;
use super::worker::{End, Shared, Worker, worker_thread};
use super::{BackfillError, BatchDone, Direction, begin, store};

/// Why a run returned without ending by itself.
pub(super) enum Failure {
    /// A connection of the run is gone (the runner's or a worker's): riding out starts the
    /// run again once the database answers.
    ConnectionLost(diesel::result::Error),
    Error(BackfillError),
}

impl Failure {
    /// `error`, checked on `conn`, the connection it was met on.
    pub fn checked_on(conn: &mut PgConnection, error: diesel::result::Error) -> Self {
        if connection_lost(conn, &error) {
            Failure::ConnectionLost(error)
        } else {
            Failure::Error(error.into())
        }
    }
}

impl From<Failure> for BackfillError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::ConnectionLost(e) => BackfillError::Database(e),
            Failure::Error(e) => e,
        }
    }
}

/// Runs (or resumes) the backfill with workers, on `conn` (which holds the backfill's lock)
/// and, for workers beyond the first, on connections to `url` (`None`: one worker).
pub(super) fn run(
    conn: &mut PgConnection,
    url: Option<&str>,
    direction: Direction,
    throttle: &mut Throttle,
    progress: &mut dyn FnMut(&BackfillStatus),
    on_batch: &mut dyn FnMut(&BatchDone),
) -> Result<BackfillStatus, Failure> {
    let budget_note = throttle
        .resolve_budget(conn, direction)
        .map_err(|e| Failure::checked_on(conn, e))?;
    let p99_budget_ms = throttle.max_request_p99_ms;
    let (stored, ranges) = begin(
        conn,
        direction,
        url.is_some(),
        (p99_budget_ms, budget_note.as_deref()),
        throttle.quiet_p99_ms,
        throttle.auto_rule,
    )
    .map_err(|e| Failure::checked_on(conn, e))?;
    let batch_time_cap_ms = batch_time_cap_ms(p99_budget_ms, throttle.quiet_p99_ms);
    log_start(
        &stored,
        direction,
        ranges.iter().filter(|r| !r.is_done()).count(),
        batch_time_cap_ms,
    );
    let lock_timeout_words = url.and_then(|url| {
        crate::db::lock_timeout::words(conn, url)
            .map_err(|e| log::warn!("backfill batches wait for rows held elsewhere: {e}"))
            .ok()
    });
    let (events_tx, events) = mpsc::channel();
    let shared = Shared {
        plan: Mutex::new(Plan::new(ranges, stored.workers)),
        throttle: Mutex::new(throttle),
        events: events_tx,
        direction,
        stop: AtomicBool::new(false),
        auto: AtomicBool::new(stored.workers_auto),
        batch_time_cap_ms,
        sized: Mutex::new(Sizing::default()),
        lock_timeout_words,
    };
    let mut coordinator = Coordinator::new(stored, events, url.is_some(), progress, on_batch);
    coordinator.report(&shared);
    let end = run_with_threads(&mut coordinator, &shared, conn, url);
    coordinator.after_the_workers(&shared, conn);
    record_end(conn, end, coordinator.into_progress())
}

fn log_start(
    stored: &BackfillStatus,
    direction: Direction,
    open: usize,
    batch_time_cap_ms: Option<f64>,
) {
    log::info!(
        "backfill ({}) of ids up to {} in {open} range(s) left, {} worker(s): {}",
        direction.as_str(),
        stored.max_id,
        stored.workers,
        stored.workers_reason.as_deref().unwrap_or_default()
    );
    let target_ms = batch_time_target_ms(stored.batch_target_ms, batch_time_cap_ms);
    if stored.batch_target_ms > 0 && target_ms < f64::from(stored.batch_target_ms) {
        log::info!(
            "backfill batches sized toward {target_ms:.2} ms, the headroom under the users' p99 budget, rather than the {} ms set",
            stored.batch_target_ms
        );
    }
}

/// The runner's thread, and the workers it starts on threads of their own with connections
/// to `url` (spare connections of workers that ended go to workers started later). Returns
/// how the run ended, once every worker has.
fn run_with_threads(
    coordinator: &mut Coordinator,
    shared: &Shared,
    conn: &mut PgConnection,
    url: Option<&str>,
) -> End {
    let spare = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let spare = &spare;
        let mut spawn = |no: i32, stored: BackfillStatus| {
            let Some(url) = url else {
                return false;
            };
            let started = std::thread::Builder::new()
                .name(format!("zdm-backfill-{no}"))
                .spawn_scoped(scope, move || {
                    worker_thread(shared, no, stored, url, spare);
                });
            if let Err(e) = &started {
                log::warn!("backfill: could not start worker {no}: {e}");
            }
            started.is_ok()
        };
        let end = run_on_the_runners_thread(coordinator, shared, conn, &mut spawn);
        shared.stop.store(true, Ordering::Release);
        end
    })
}

/// The coordinator's ticks, and worker 1's steps whenever its pause is over, on the runner's
/// connection; between them the coordinator waits for the other workers' events.
fn run_on_the_runners_thread(
    coordinator: &mut Coordinator,
    shared: &Shared,
    conn: &mut PgConnection,
    spawn: &mut Spawn,
) -> End {
    let mut first = Worker::new(1, coordinator.stored().clone(), Sizing::default());
    let mut next_step = Instant::now();
    loop {
        if let Some(end) = coordinator.tick(shared, conn, spawn) {
            return end;
        }
        let pause_left = next_step.saturating_duration_since(Instant::now());
        if !pause_left.is_zero() {
            if let Some(end) = coordinator.wait_for_event(shared, pause_left) {
                return end;
            }
            continue;
        }
        match first.step(shared, conn, &mut |news| coordinator.hear(shared, news)) {
            Ok(pause) => next_step = Instant::now() + pause,
            Err(end) => {
                if let Some(end) = coordinator.worker_ended(1, end) {
                    return end;
                }
            }
        }
    }
}

/// Records how the run ended (`done`, or `failed` if the database can still be told), tells
/// `progress` when it is done, and returns its status, or why it failed.
fn record_end(
    conn: &mut PgConnection,
    end: End,
    progress: &mut dyn FnMut(&BackfillStatus),
) -> Result<BackfillStatus, Failure> {
    let recorded = match end {
        End::Done => store::record_done(conn).and_then(|done| {
            let done = with_progress(conn, done)?;
            progress(&done);
            log::info!(
                "backfill done: {} rows scanned, {} updated",
                done.rows_done,
                done.rows_updated
            );
            Ok(done)
        }),
        End::Stopped | End::Dismissed | End::NoConnection(_) => store::stored_row(conn)
            .and_then(|stored| with_progress(conn, stored))
            .inspect(|stopped| {
                log::info!("backfill {} at id {}", stopped.state, stopped.last_id);
            }),
        End::Failed(e) => {
            let _ = store::record_failed(conn, &e.to_string());
            return Err(Failure::checked_on(conn, e));
        }
        End::Lost(e) => {
            log::warn!(
                "backfill: a connection of the run is gone: {}",
                one_line(&e)
            );
            return Err(Failure::ConnectionLost(e));
        }
    };
    recorded.map_err(|e| Failure::checked_on(conn, e))
}
