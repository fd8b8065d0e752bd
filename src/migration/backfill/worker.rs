//! A worker: one connection that runs batches, one at a time, on the range the plan assigns
//! it, until it is let go, the backfill stops running, or its connection fails. What the
//! workers of a run share, what they tell the coordinator, and why one ends.
//!
//! Worker 1 runs on the runner's connection (the one holding the advisory lock), stepped by
//! the runner's thread between the coordinator's looks; workers 2.. run on threads with
//! connections of their own (`worker_thread`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use diesel::prelude::*;

use super::batch::{BatchOutcome, run_batch};
use super::plan::{Assignment, Plan};
use super::ride_out::{connection_lost, one_line};
use super::sizing::{Sizing, sizing_knob};
use super::status::BackfillStatus;
use super::throttle::{THROTTLE_POLL, Throttle};
use super::{BATCH_GIVE_WAY_PAUSE, BackfillError, BackfillState, BatchDone, Direction, store};
use crate::db::lock_timeout;

/// How long a worker with nothing to do waits before it looks again.
const IDLE: Duration = Duration::from_millis(50);

/// Why a worker, or the whole run, ends.
pub(super) enum End {
    /// Every range is done (the run).
    Done,
    /// The backfill is no longer running (paused, cancelled...).
    Stopped,
    /// The run ends, or the count went below the worker (a worker).
    Dismissed,
    /// It could not connect, the server's connection limit say (a worker): the run goes on
    /// with the workers it has.
    NoConnection(String),
    /// A connection is gone (a database restart, crash or failover): the run ends as if the
    /// runner had lost its own, and riding out (`ride_out`) starts it again.
    Lost(diesel::result::Error),
    /// A query failed on a working connection.
    Failed(diesel::result::Error),
}

impl From<diesel::result::Error> for End {
    fn from(e: diesel::result::Error) -> Self {
        End::Failed(e)
    }
}

impl End {
    /// This end checked on `conn`, the connection it failed on: a failure whose connection
    /// is gone is `Lost`.
    pub fn checked_on(self, conn: &mut PgConnection) -> Self {
        match self {
            End::Failed(e) if connection_lost(conn, &e) => End::Lost(e),
            other => other,
        }
    }
}

/// What a worker tells the coordinator while it works.
pub(super) enum News {
    Batch {
        done: BatchDone,
        stored: Box<BackfillStatus>,
    },
    /// It waits for the throttle; the row as stored.
    Waiting(Box<BackfillStatus>),
}

/// What a worker thread sends the coordinator.
pub(super) enum Event {
    News(News),
    Ended { worker: i32, end: End },
}

/// What the workers of a run share.
pub(super) struct Shared<'t> {
    pub plan: Mutex<Plan>,
    /// One worker waits for the replicas and the requests, the others queue behind it.
    pub throttle: Mutex<&'t mut Throttle>,
    pub events: mpsc::Sender<Event>,
    pub direction: Direction,
    /// The run ends: every worker stops at its next batch boundary.
    pub stop: AtomicBool,
    /// Auto mode (as the coordinator last read the knob).
    pub auto: AtomicBool,
    /// Under the users' p99 budget the throttle watches, the longest a batch sized by time
    /// aims at (`knobs::batch_time_cap_ms`).
    pub batch_time_cap_ms: Option<f64>,
    /// The size the last batch sized by time ran with, and the knobs it followed: a worker
    /// started later begins there, not at the knob's size again.
    pub sized: Mutex<Sizing>,
    /// PostgreSQL's words for a lock timeout (`db::lock_timeout`), where known: batches then
    /// give way to a row another transaction holds (`BATCH_LOCK_TIMEOUT`) and are tried
    /// again; unknown, they wait for it (up to their statement_timeout).
    pub lock_timeout_words: Option<String>,
}

/// Locks `mutex`, also after a thread panicked while holding it.
pub(super) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared<'_> {
    pub fn plan(&self) -> MutexGuard<'_, Plan> {
        locked(&self.plan)
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Whether `worker` still has a place in the run.
    fn keeps(&self, worker: i32) -> bool {
        !self.stopped() && worker <= self.plan().target
    }

    /// Workers wait for the throttle before each batch, except in auto mode with several
    /// workers: there the coordinator halves their number when a limit is passed instead,
    /// down to the one worker that then waits.
    fn waits_for_throttle(&self) -> bool {
        !self.auto.load(Ordering::Acquire) || self.plan().target <= 1
    }

    /// Sleeps for `pause`, or until the run ends.
    fn sleep(&self, pause: Duration) {
        super::sleep_unless(pause, Duration::from_millis(20), || self.stopped());
    }
}

pub(super) struct Worker {
    /// 1..=MAX_WORKERS; 1 runs on the runner's connection.
    no: i32,
    sizing: Sizing,
    /// The backfill's row as this worker last saw it.
    stored: BackfillStatus,
    /// Its batches that gave way to a row held elsewhere since its last batch that ran.
    gave_way: u32,
}

impl Worker {
    pub fn new(no: i32, stored: BackfillStatus, sizing: Sizing) -> Self {
        Self {
            no,
            sizing,
            stored,
            gave_way: 0,
        }
    }

    /// Waits for the throttle if it applies, takes something to work on, and runs one batch,
    /// telling `tell` what it did. Ok: how long to pause before the next step; Err: why this
    /// worker ends.
    pub fn step(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        tell: &mut dyn FnMut(News),
    ) -> Result<Duration, End> {
        self.try_step(shared, conn, tell)
            .map_err(|end| end.checked_on(conn))
    }

    fn try_step(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        tell: &mut dyn FnMut(News),
    ) -> Result<Duration, End> {
        if !shared.keeps(self.no) {
            return Err(self.dismissed(shared, conn));
        }
        if shared.waits_for_throttle() {
            self.wait_for_throttle(shared, conn, tell)?;
        }
        let Some((range_no, from)) = self.take_work(shared, conn)? else {
            return Ok(IDLE);
        };
        self.run_one_batch(shared, conn, range_no, from, tell)
    }

    /// Let go: leaves this worker's open ranges for the others, unless the run ends.
    fn dismissed(&self, shared: &Shared, conn: &mut PgConnection) -> End {
        if shared.stopped() {
            return End::Dismissed;
        }
        let released = shared.plan().release(self.no);
        match store::leave_ranges(conn, &released) {
            Ok(()) => End::Dismissed,
            Err(e) => End::Failed(e),
        }
    }

    /// Waits until the replicas and the requests are within their limits (telling `tell`
    /// while it waits). Err: the backfill stopped running, or this worker was let go, while
    /// it waited.
    fn wait_for_throttle(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        tell: &mut dyn FnMut(News),
    ) -> Result<(), End> {
        let stop = || !shared.keeps(self.no);
        let mut on_wait = |s: &BackfillStatus| tell(News::Waiting(Box::new(s.clone())));
        let waited = locked(&shared.throttle).wait_until_clear(
            conn,
            self.stored.clone(),
            &stop,
            &mut on_wait,
        );
        let status = match waited {
            Ok(status) => status,
            Err(BackfillError::Database(e)) => return Err(End::Failed(e)),
            Err(other) => unreachable!("the throttle fails only on the database: {other}"),
        };
        if status.state == BackfillState::Running {
            return Ok(());
        }
        if !shared.keeps(self.no) {
            return Err(self.dismissed(shared, conn));
        }
        self.stored = status;
        Err(End::Stopped)
    }

    /// The range to work on and where its next batch starts; a range taken is recorded as
    /// this worker's, a split committed before its first batch.
    fn take_work(
        &self,
        shared: &Shared,
        conn: &mut PgConnection,
    ) -> QueryResult<Option<(i32, i64)>> {
        let assigned = shared.plan().assign(self.no);
        Ok(match assigned {
            Assignment::Keep { range_no, from } => Some((range_no, from)),
            Assignment::Take { range_no, from } => {
                store::take_range(conn, range_no, self.no)?;
                Some((range_no, from))
            }
            Assignment::Split { shortened, new } => {
                store::store_split(conn, shortened, &new, self.no)?;
                log::debug!(
                    "backfill worker {} takes ids {}..={} from range {shortened}",
                    self.no,
                    new.start_id + 1,
                    new.end_id
                );
                Some((new.range_no, new.last_id))
            }
            Assignment::Nothing => None,
        })
    }

    /// Runs the next batch of `range_no`, from `from`, within what this worker reserves of
    /// the range, tells it, and learns its time for the size of the next. Returns the sleep
    /// the knobs ask for between batches.
    fn run_one_batch(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        range_no: i32,
        from: i64,
        tell: &mut dyn FnMut(News),
    ) -> Result<Duration, End> {
        let started = Instant::now();
        let sizing = &self.sizing;
        let words = shared.lock_timeout_words.as_deref();
        let outcome = run_batch(
            conn,
            shared.direction,
            (range_no, from),
            |stored| sizing.next(sizing_knob(stored), shared.batch_time_cap_ms),
            |full_end| shared.plan().reserve(range_no, full_end),
            words.is_some(),
        );
        let ran = match outcome {
            Ok(BatchOutcome::Ran(ran)) => ran,
            Ok(BatchOutcome::NotRunning(stored)) => {
                shared.plan().unreserve(range_no);
                return self.not_running(conn, stored);
            }
            Err(e) if words.is_some_and(|words| lock_timeout::is_lock_timeout(&e, words)) => {
                shared.plan().unreserve(range_no);
                return Ok(self.give_way(from));
            }
            Err(e) => {
                shared.plan().unreserve(range_no);
                return Err(e.into());
            }
        };
        let took = started.elapsed();
        self.gave_way = 0;
        shared.plan().record_batch(range_no, &ran);
        self.sizing.ran(sizing_knob(&ran.stored), ran.size, took);
        *locked(&shared.sized) = self.sizing;
        self.stored = ran.stored.clone();
        tell(News::Batch {
            done: BatchDone {
                worker: self.no,
                range_no,
                from,
                to: ran.upper,
                rows: ran.scanned,
                updated: ran.updated,
                size: ran.size,
                took,
            },
            stored: Box::new(ran.stored),
        });
        Ok(Duration::from_millis(self.stored.sleep_ms.max(0) as u64))
    }

    /// After its batch from `from` gave way to a row another transaction holds: the pause
    /// before it tries again, from `BATCH_GIVE_WAY_PAUSE` doubling to 8 times that (a
    /// transaction left open may stay so for long; each try redoes the batch up to the row).
    fn give_way(&mut self, from: i64) -> Duration {
        self.gave_way += 1;
        let pause = BATCH_GIVE_WAY_PAUSE * (1 << (self.gave_way - 1).min(3));
        if self.gave_way % 10 == 1 {
            log::warn!(
                "backfill worker {}: the batch after id {from} gave way to a row another transaction holds ({} time(s)); trying again in {pause:?}",
                self.no,
                self.gave_way
            );
        }
        pause
    }

    /// What a worker does when its batch found the backfill not `running` (`stored`).
    fn not_running(
        &mut self,
        conn: &mut PgConnection,
        stored: BackfillStatus,
    ) -> Result<Duration, End> {
        let state = stored.state;
        self.stored = stored;
        match state {
            // A reader looked just before this runner took the lock and marked it;
            // it runs, so it says so again.
            BackfillState::Interrupted => {
                store::mark_running(conn)?;
                Ok(Duration::ZERO)
            }
            // Another worker waits for the throttle.
            BackfillState::Throttled => Ok(THROTTLE_POLL),
            _ => Err(End::Stopped),
        }
    }
}

/// Worker `no` on a thread and a connection of its own (one a worker that ended left in
/// `spare`, or a new one to `url`), until it ends; then it tells the coordinator why.
pub(super) fn worker_thread(
    shared: &Shared,
    no: i32,
    stored: BackfillStatus,
    url: &str,
    spare: &Mutex<Vec<PgConnection>>,
) {
    // The coordinator listens until every worker has ended.
    let send = |event| {
        let _ = shared.events.send(event);
    };
    let connected = locked(spare)
        .pop()
        .map_or_else(|| crate::db::session(url).map_err(|e| one_line(&e)), Ok);
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(error) => {
            send(Event::Ended {
                worker: no,
                end: End::NoConnection(error),
            });
            return;
        }
    };
    let mut worker = Worker::new(no, stored, locked(&shared.sized).to_start_from());
    let end = loop {
        match worker.step(shared, &mut conn, &mut |news| send(Event::News(news))) {
            Ok(pause) => shared.sleep(pause),
            Err(end) => break end,
        }
    };
    if !matches!(end, End::Lost(_)) {
        locked(spare).push(conn);
    }
    send(Event::Ended { worker: no, end });
}
