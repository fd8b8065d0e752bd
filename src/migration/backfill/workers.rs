//! Workers: one runner fills the key range with several connections at once.
//!
//! The run's key range is split into disjoint ranges `(start_id, end_id]`, each with its own
//! checkpoint committed with each of its batches (`zdm_backfill_ranges`). Worker 1 runs on the
//! runner's own connection (the one holding the advisory lock) and also coordinates: between
//! its batches it collects the other workers' progress, follows the workers knob and, in auto
//! mode, decides the count (`auto`). Workers 2.. run on threads with connections of their own.
//!
//! A worker keeps its range until it is done, then takes a range nobody works on, or else
//! splits the biggest one: the other worker keeps the lower half and it takes the upper. The
//! split never reaches into a batch in flight: before a batch writes anything, its worker
//! reserves the ids it will cover (`Plan::reserve`), and a split starts above them. The new
//! range and the shortened end are committed in one transaction before the new range's first
//! batch, so after a crash the ranges in the database still cover every id not yet done,
//! once. Changing the count while it runs is the same: more workers split what remains, fewer
//! leave their ranges for the others to take.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use diesel::dsl::now;
use diesel::prelude::*;

use super::auto::{self, Limits};
use super::batch::{BatchOutcome, Ran, run_batch};
use super::knobs::{Workers, batch_time_target_ms, next_batch_size};
use super::ride_out::{connection_lost, one_line};
use super::status::{BackfillStatus, WorkerRange, with_progress};
use super::throttle::{THROTTLE_POLL, Throttle};
use super::{BackfillError, BackfillState, BatchDone, Direction, begin, record_change};
use crate::schema::state::{zdm_backfill, zdm_backfill_ranges};

/// How long a worker with nothing to do waits before it looks again.
const IDLE: Duration = Duration::from_millis(50);

/// After a worker could not connect, the runner tries to add workers again this much later.
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(5);

/// Why auto mode keeps one worker where the runner has no p99 budget.
pub(super) const NO_BUDGET: &str =
    "auto needs a p99 budget (ZDM_BACKFILL_MAX_P99_MS) where the backfill runs: one worker";

/// A range and the batch in flight on it, if any.
struct Slot {
    range: WorkerRange,
    /// The end of the batch in flight: ids up to here are being written.
    reserved: Option<i64>,
}

impl Slot {
    /// Where the ids nobody has taken yet start.
    fn free_from(&self) -> i64 {
        self.reserved.unwrap_or(self.range.last_id)
    }

    fn is_open(&self) -> bool {
        !self.range.is_done()
    }
}

/// The ranges of the run as the workers see them, and how many workers should run.
struct Plan {
    slots: Vec<Slot>,
    next_no: i32,
    /// Workers 1..=target run.
    target: i32,
}

/// What a worker is to work on next.
enum Claim {
    /// Its range, from its checkpoint.
    Keep { range_no: i32, from: i64 },
    /// A range nobody works on.
    Take { range_no: i32, from: i64 },
    /// The upper part of another worker's range, from `new.start_id` (the other's range now
    /// ends there).
    Split { victim: i32, new: WorkerRange },
    /// Nothing left that is worth splitting.
    Nothing,
}

impl Plan {
    fn new(ranges: Vec<WorkerRange>, target: i32) -> Self {
        let next_no = ranges.iter().map(|r| r.range_no).max().unwrap_or(0) + 1;
        Self {
            slots: ranges
                .into_iter()
                .map(|range| Slot {
                    range,
                    reserved: None,
                })
                .collect(),
            next_no,
            target,
        }
    }

    fn ranges(&self) -> Vec<WorkerRange> {
        self.slots.iter().map(|s| s.range.clone()).collect()
    }

    fn all_done(&self) -> bool {
        self.slots
            .iter()
            .all(|s| !s.is_open() && s.reserved.is_none())
    }

    fn slot(&mut self, range_no: i32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.range.range_no == range_no)
    }

    fn claim(&mut self, worker: i32) -> Claim {
        if let Some(own) = self
            .slots
            .iter()
            .find(|s| s.range.worker == Some(worker) && s.is_open())
        {
            return Claim::Keep {
                range_no: own.range.range_no,
                from: own.range.last_id,
            };
        }
        if let Some(waiting) = self
            .slots
            .iter_mut()
            .filter(|s| s.range.worker.is_none() && s.is_open())
            .min_by_key(|s| s.range.start_id)
        {
            waiting.range.worker = Some(worker);
            return Claim::Take {
                range_no: waiting.range.range_no,
                from: waiting.range.last_id,
            };
        }
        // The biggest part nobody has reserved yet, split if each half holds a batch or more.
        let Some(victim) = self
            .slots
            .iter_mut()
            .filter(|s| s.is_open())
            .max_by_key(|s| s.range.end_id - s.free_from())
        else {
            return Claim::Nothing;
        };
        let from = victim.free_from();
        let span = victim.range.end_id - from;
        if span < 2 * i64::from(victim.range.batch_size.max(1)) {
            return Claim::Nothing;
        }
        let mid = from + span / 2;
        let new = WorkerRange {
            range_no: self.next_no,
            start_id: mid,
            last_id: mid,
            end_id: victim.range.end_id,
            worker: Some(worker),
            rows_done: 0,
            rows_updated: 0,
            batches: 0,
            batch_size: victim.range.batch_size,
            updated_at: chrono::Utc::now(),
        };
        victim.range.end_id = mid;
        let victim = victim.range.range_no;
        self.next_no += 1;
        self.slots.push(Slot {
            range: new.clone(),
            reserved: None,
        });
        Claim::Split { victim, new }
    }

    /// A batch of `range_no` would end at `full_end` (None: fewer ids are left than a batch):
    /// where it ends, within the range's end as it stands now, reserved for it.
    fn reserve(&mut self, range_no: i32, full_end: Option<i64>) -> i64 {
        let Some(slot) = self.slot(range_no) else {
            unreachable!("a worker reserves only in its own range");
        };
        let end = slot.range.end_id;
        let upper = full_end.filter(|e| *e <= end).unwrap_or(end);
        slot.reserved = Some(upper);
        upper
    }

    fn unreserve(&mut self, range_no: i32) {
        if let Some(slot) = self.slot(range_no) {
            slot.reserved = None;
        }
    }

    fn finish(&mut self, range_no: i32, ran: &Ran) {
        if let Some(slot) = self.slot(range_no) {
            slot.reserved = None;
            let range = &mut slot.range;
            range.last_id = ran.upper;
            range.rows_done += ran.scanned;
            range.rows_updated += ran.updated;
            range.batches += 1;
            range.batch_size = ran.size;
            range.updated_at = chrono::Utc::now();
        }
    }

    /// Leaves `worker`'s open ranges for the others; their numbers.
    fn release(&mut self, worker: i32) -> Vec<i32> {
        self.slots
            .iter_mut()
            .filter(|s| s.range.worker == Some(worker) && s.is_open())
            .map(|s| {
                s.range.worker = None;
                s.range.range_no
            })
            .collect()
    }
}

/// What the workers of a run share.
struct Shared<'t> {
    plan: Mutex<Plan>,
    /// One worker waits for the replicas and the requests, the others queue behind it.
    throttle: Mutex<&'t mut Throttle>,
    events: mpsc::Sender<Event>,
    direction: Direction,
    /// The run ends: every worker stops at its next batch boundary.
    stop: AtomicBool,
    /// Auto mode (as the runner last read the knob).
    auto: AtomicBool,
    /// The users' p99 budget the throttle watches, if any: batches sized by time aim at no
    /// longer than it.
    p99_budget_ms: Option<f64>,
    /// The size the last batch sized by time ran with, and the knobs it followed: a worker
    /// started later begins there, not at the knob's size again.
    sized: Mutex<Sizing>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared<'_> {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        locked(&self.plan)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Whether `worker` still has a place in the run.
    fn keeps(&self, worker: i32) -> bool {
        !self.stopped() && worker <= self.plan().target
    }

    /// Workers wait for the throttle before each batch, except in auto mode with several
    /// workers: there the runner halves their number when a limit is passed instead, down to
    /// the one worker that then waits.
    fn waits_for_throttle(&self) -> bool {
        !self.auto.load(Ordering::Acquire) || self.plan().target <= 1
    }

    /// Sleeps for `pause`, or until the run ends.
    fn sleep(&self, pause: Duration) {
        super::sleep_unless(pause, Duration::from_millis(20), || self.stopped());
    }
}

/// What a worker thread tells the runner.
enum Event {
    Batch {
        done: BatchDone,
        stored: Box<BackfillStatus>,
    },
    /// It waits for the throttle; the row as stored.
    Waiting(Box<BackfillStatus>),
    Ended {
        worker: i32,
        end: WorkerEnd,
    },
}

/// Why a worker stopped.
enum WorkerEnd {
    /// The run ends, or the count went below it.
    Asked,
    /// The backfill is no longer running (paused, cancelled...): the row as stored.
    NotRunning(Box<BackfillStatus>),
    /// Its connection is gone.
    Lost(String),
    /// It could not connect (the server's connection limit, say): the run goes on with the
    /// workers it has.
    NoConnection(String),
    Failed(diesel::result::Error),
}

/// The batch size a worker's next batch takes: with a target time (no longer than a p99
/// budget, `batch_time_target_ms`), its own last size scaled by its last batch's time; after
/// a change of the knobs, the knob's size.
#[derive(Default, Clone, Copy)]
struct Sizing {
    /// (batch_size, batch_target_ms) as the knobs said at the last batch.
    knob: Option<(i32, i32)>,
    size: i32,
    last: Option<Duration>,
}

/// The knobs sizing follows, as stored: (batch_size, batch_target_ms).
fn sizing_knob(stored: &BackfillStatus) -> (i32, i32) {
    (stored.batch_size, stored.batch_target_ms)
}

impl Sizing {
    fn next(&self, knob: (i32, i32), p99_budget_ms: Option<f64>) -> i32 {
        let (batch_size, target_ms) = knob;
        if target_ms <= 0 || self.knob != Some(knob) {
            return batch_size;
        }
        let target_ms = batch_time_target_ms(target_ms, p99_budget_ms);
        match self.last {
            Some(took) => next_batch_size(self.size, took, target_ms),
            None => self.size,
        }
    }

    fn ran(&mut self, knob: (i32, i32), size: i32, took: Duration) {
        self.knob = Some(knob);
        self.size = size;
        self.last = Some(took);
    }

    /// Where a new worker starts: at this size while the knobs are the same, its own time to
    /// come.
    fn to_start_from(self) -> Self {
        Self { last: None, ..self }
    }
}

/// One step of a worker.
enum Step {
    Ran {
        done: BatchDone,
        stored: Box<BackfillStatus>,
    },
    /// Nothing to do now; look again after this long.
    Pause(Duration),
    Ended(WorkerEnd),
}

struct Worker {
    /// 1..=MAX_WORKERS; 1 runs on the runner's connection.
    no: i32,
    sizing: Sizing,
    /// The backfill's row as this worker last saw it.
    stored: BackfillStatus,
}

impl Worker {
    fn new(no: i32, stored: BackfillStatus) -> Self {
        Self {
            no,
            sizing: Sizing::default(),
            stored,
        }
    }

    /// Waits for the throttle if it applies, takes something to work on, and runs one batch.
    fn step(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        on_wait: &mut dyn FnMut(&BackfillStatus),
    ) -> QueryResult<Step> {
        if !shared.keeps(self.no) {
            if !shared.stopped() {
                self.release(shared, conn)?;
            }
            return Ok(Step::Ended(WorkerEnd::Asked));
        }
        if shared.waits_for_throttle()
            && let Some(instead) = self.wait_for_throttle(shared, conn, on_wait)?
        {
            return Ok(instead);
        }
        let Some((range_no, from)) = self.claim(shared, conn)? else {
            return Ok(Step::Pause(IDLE));
        };
        self.run_one_batch(shared, conn, range_no, from)
    }

    /// Waits until the replicas and the requests are within their limits (telling `on_wait`
    /// while it waits). None: go on to the batch; else the step to take instead, as the
    /// backfill stopped running or this worker was let go while it waited.
    fn wait_for_throttle(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        on_wait: &mut dyn FnMut(&BackfillStatus),
    ) -> QueryResult<Option<Step>> {
        let stop = || !shared.keeps(self.no);
        let waited =
            locked(&shared.throttle).wait_until_clear(conn, self.stored.clone(), &stop, on_wait);
        let status = match waited {
            Ok(status) => status,
            Err(BackfillError::Database(e)) => return Err(e),
            Err(other) => unreachable!("the throttle fails only on the database: {other}"),
        };
        if status.state == BackfillState::Running {
            return Ok(None);
        }
        if !shared.keeps(self.no) {
            return Ok(Some(Step::Pause(Duration::ZERO)));
        }
        self.stored = status.clone();
        Ok(Some(Step::Ended(WorkerEnd::NotRunning(Box::new(status)))))
    }

    /// Runs the next batch of `range_no`, from `from`, within what this worker reserves of
    /// the range, and learns its time for the size of the next.
    fn run_one_batch(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        range_no: i32,
        from: i64,
    ) -> QueryResult<Step> {
        let started = Instant::now();
        let sizing = &self.sizing;
        let outcome = run_batch(
            conn,
            shared.direction,
            range_no,
            from,
            |stored| sizing.next(sizing_knob(stored), shared.p99_budget_ms),
            |full_end| shared.plan().reserve(range_no, full_end),
        );
        let ran = match outcome {
            Ok(BatchOutcome::Ran(ran)) => ran,
            Ok(BatchOutcome::NotRunning(stored)) => {
                shared.plan().unreserve(range_no);
                return self.not_running(conn, stored);
            }
            Err(e) => {
                shared.plan().unreserve(range_no);
                return Err(e);
            }
        };
        let took = started.elapsed();
        shared.plan().finish(range_no, &ran);
        self.sizing.ran(sizing_knob(&ran.stored), ran.size, took);
        *locked(&shared.sized) = self.sizing;
        self.stored = ran.stored.clone();
        Ok(Step::Ran {
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
        })
    }

    /// What a worker does when its batch found the backfill not `running` (`stored`).
    fn not_running(
        &mut self,
        conn: &mut PgConnection,
        stored: BackfillStatus,
    ) -> QueryResult<Step> {
        self.stored = stored.clone();
        Ok(match stored.state {
            // A reader looked just before this runner took the lock and marked it;
            // it runs, so it says so again.
            BackfillState::Interrupted => {
                mark_running(conn)?;
                Step::Pause(Duration::ZERO)
            }
            // Another worker waits for the throttle.
            BackfillState::Throttled => Step::Pause(THROTTLE_POLL),
            _ => Step::Ended(WorkerEnd::NotRunning(Box::new(stored))),
        })
    }

    /// The range to work on and where its next batch starts; a claimed range is recorded as
    /// this worker's, a split committed before its first batch.
    fn claim(&self, shared: &Shared, conn: &mut PgConnection) -> QueryResult<Option<(i32, i64)>> {
        let claim = shared.plan().claim(self.no);
        use zdm_backfill_ranges as r;
        Ok(match claim {
            Claim::Keep { range_no, from } => Some((range_no, from)),
            Claim::Take { range_no, from } => {
                diesel::update(r::table.find(range_no))
                    .set(r::worker.eq(self.no))
                    .execute(conn)?;
                Some((range_no, from))
            }
            Claim::Split { victim, new } => {
                conn.transaction(|conn| {
                    diesel::insert_into(r::table)
                        .values((
                            r::range_no.eq(new.range_no),
                            r::start_id.eq(new.start_id),
                            r::last_id.eq(new.last_id),
                            r::end_id.eq(new.end_id),
                            r::worker.eq(self.no),
                            r::batch_size.eq(new.batch_size),
                        ))
                        .execute(conn)?;
                    diesel::update(r::table.find(victim))
                        .set(r::end_id.eq(new.start_id))
                        .execute(conn)
                })?;
                log::debug!(
                    "backfill worker {} takes ids {}..={} from range {victim}",
                    self.no,
                    new.start_id + 1,
                    new.end_id
                );
                Some((new.range_no, new.last_id))
            }
            Claim::Nothing => None,
        })
    }

    /// Leaves this worker's open ranges for the others.
    fn release(&self, shared: &Shared, conn: &mut PgConnection) -> QueryResult<()> {
        let released = shared.plan().release(self.no);
        if !released.is_empty() {
            use zdm_backfill_ranges as r;
            diesel::update(r::table.filter(r::range_no.eq_any(&released)))
                .set(r::worker.eq(None::<i32>))
                .execute(conn)?;
        }
        Ok(())
    }
}

/// The runner holds the lock; a status a reader marked interrupted is running again.
fn mark_running(conn: &mut PgConnection) -> QueryResult<usize> {
    diesel::update(zdm_backfill::table.filter(zdm_backfill::state.eq(BackfillState::Interrupted)))
        .set((
            zdm_backfill::state.eq(BackfillState::Running),
            zdm_backfill::error.eq(None::<String>),
        ))
        .execute(conn)
}

/// A worker on a thread and a connection of its own, until it is asked to stop, the backfill
/// stops running, or its connection fails.
fn worker_thread(
    shared: &Shared,
    no: i32,
    stored: BackfillStatus,
    url: &str,
    spare: &Mutex<Vec<PgConnection>>,
) {
    let send = |event| {
        // The runner listens until every worker has ended.
        let _ = shared.events.send(event);
    };
    let connected = locked(spare).pop().map_or_else(
        || PgConnection::establish(url).map_err(|e| one_line(&e)),
        Ok,
    );
    let mut conn = match connected {
        Ok(conn) => conn,
        Err(error) => {
            send(Event::Ended {
                worker: no,
                end: WorkerEnd::NoConnection(error),
            });
            return;
        }
    };
    let mut worker = Worker::new(no, stored);
    worker.sizing = locked(&shared.sized).to_start_from();
    let end = loop {
        let mut on_wait = |s: &BackfillStatus| send(Event::Waiting(Box::new(s.clone())));
        match worker.step(shared, &mut conn, &mut on_wait) {
            Ok(Step::Ran { done, stored }) => {
                let sleep = Duration::from_millis(stored.sleep_ms.max(0) as u64);
                send(Event::Batch { done, stored });
                shared.sleep(sleep);
            }
            Ok(Step::Pause(pause)) => shared.sleep(pause),
            Ok(Step::Ended(end)) => break end,
            Err(e) if connection_lost(&mut conn, &e) => break WorkerEnd::Lost(one_line(&e)),
            Err(e) => break WorkerEnd::Failed(e),
        }
    };
    if !matches!(end, WorkerEnd::Lost(_)) {
        locked(spare).push(conn);
    }
    send(Event::Ended { worker: no, end });
}

/// How a run ended.
enum End {
    Done,
    /// No longer running (paused, cancelled...).
    Stopped,
    /// A worker lost its connection: the run ends as if the runner had lost its own, and
    /// riding out (`ride_out`) starts it again from the checkpoints.
    Lost(String),
    /// A batch failed.
    Failed(diesel::result::Error),
}

/// Worker 1 and the runner's bookkeeping, on the runner's connection.
struct Runner<'a> {
    stored: BackfillStatus,
    events: mpsc::Receiver<Event>,
    /// Which workers have a thread (index: worker number).
    alive: Vec<bool>,
    /// Whether workers beyond the first can connect.
    can_grow: bool,
    changed: Instant,
    /// How long auto mode's readings have all been within the limits.
    calm: auto::Calm,
    /// Auto mode's additions that did not hold (they lengthen the wait before the next).
    probes: auto::Probes,
    looked: Option<Instant>,
    /// A worker that could not connect, and why: the count goes down to those running.
    unconnected: Option<(i32, String)>,
    /// No worker is added before then (after one could not connect).
    grow_after: Option<Instant>,
    progress: &'a mut dyn FnMut(&BackfillStatus),
    on_batch: &'a mut dyn FnMut(&BatchDone),
}

impl<'a> Runner<'a> {
    fn new(
        stored: BackfillStatus,
        events: mpsc::Receiver<Event>,
        can_grow: bool,
        progress: &'a mut dyn FnMut(&BackfillStatus),
        on_batch: &'a mut dyn FnMut(&BatchDone),
    ) -> Self {
        Self {
            stored,
            events,
            alive: vec![false; super::MAX_WORKERS as usize + 1],
            can_grow,
            changed: Instant::now(),
            calm: auto::Calm::new(Instant::now()),
            probes: auto::Probes::default(),
            looked: None,
            unconnected: None,
            grow_after: None,
            progress,
            on_batch,
        }
    }

    fn status(&self, shared: &Shared) -> BackfillStatus {
        self.stored.clone().with_ranges(&shared.plan().ranges())
    }

    fn report(&mut self, shared: &Shared) {
        let status = self.status(shared);
        (self.progress)(&status);
    }

    fn batch(&mut self, shared: &Shared, done: BatchDone, stored: BackfillStatus) {
        self.stored = stored;
        log::debug!(
            "backfill worker {} batch {}..={} in {:?} ({} rows, {} updated)",
            done.worker,
            done.from + 1,
            done.to,
            done.took,
            done.rows,
            done.updated
        );
        (self.on_batch)(&done);
        self.report(shared);
    }

    /// Worker 1's loop, with the runner's bookkeeping between its batches. `spawn` starts
    /// worker `n` on a thread.
    fn drive(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        spawn: &mut dyn FnMut(i32, BackfillStatus) -> bool,
    ) -> End {
        let mut me = Worker::new(1, self.stored.clone());
        loop {
            match self.look(shared, conn, spawn) {
                Ok(Some(end)) => return end,
                Ok(None) => {}
                Err(e) => return End::Failed(e),
            }
            let stepped = {
                let mut on_wait = |s: &BackfillStatus| {
                    self.calm.restart(Instant::now());
                    self.stored = s.clone();
                    self.report(shared);
                };
                me.step(shared, conn, &mut on_wait)
            };
            let pause = match stepped {
                Ok(Step::Ran { done, stored }) => {
                    let sleep = Duration::from_millis(stored.sleep_ms.max(0) as u64);
                    self.batch(shared, done, *stored);
                    sleep
                }
                Ok(Step::Pause(pause)) => pause,
                Ok(Step::Ended(WorkerEnd::NotRunning(stored))) => {
                    self.stored = *stored;
                    return End::Stopped;
                }
                Ok(Step::Ended(_)) => return End::Stopped,
                Err(e) => return End::Failed(e),
            };
            // The pause between batches goes to the bookkeeping.
            let until = Instant::now() + pause;
            loop {
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                if let Ok(event) = self.events.recv_timeout(left.min(auto::LOOK_EVERY))
                    && let Some(end) = self.event(shared, event)
                {
                    return end;
                }
                match self.look(shared, conn, spawn) {
                    Ok(Some(end)) => return end,
                    Ok(None) => {}
                    Err(e) => return End::Failed(e),
                }
            }
        }
    }

    fn event(&mut self, shared: &Shared, event: Event) -> Option<End> {
        match event {
            Event::Batch { done, stored } => self.batch(shared, done, *stored),
            Event::Waiting(stored) => {
                self.calm.restart(Instant::now());
                self.stored = *stored;
                self.report(shared);
            }
            Event::Ended { worker, end } => {
                if let Some(alive) = self.alive.get_mut(worker as usize) {
                    *alive = false;
                }
                return match end {
                    WorkerEnd::Asked => None,
                    WorkerEnd::NotRunning(stored) => {
                        self.stored = *stored;
                        Some(End::Stopped)
                    }
                    WorkerEnd::Lost(error) => Some(End::Lost(error)),
                    WorkerEnd::NoConnection(error) => {
                        self.unconnected = Some((worker, error));
                        None
                    }
                    WorkerEnd::Failed(error) => Some(End::Failed(error)),
                };
            }
        }
        None
    }

    /// The other workers' news; then, every `auto::LOOK_EVERY`, the knobs and state as
    /// stored, and the number of workers.
    fn look(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        spawn: &mut dyn FnMut(i32, BackfillStatus) -> bool,
    ) -> QueryResult<Option<End>> {
        while let Ok(event) = self.events.try_recv() {
            if let Some(end) = self.event(shared, event) {
                return Ok(Some(end));
            }
        }
        if shared.plan().all_done() {
            return Ok(Some(End::Done));
        }
        if self.unconnected.is_none()
            && self
                .looked
                .is_some_and(|at| at.elapsed() < auto::LOOK_EVERY)
        {
            return Ok(None);
        }
        self.looked = Some(Instant::now());
        let stored: BackfillStatus = zdm_backfill::table.first(conn)?;
        if !BackfillState::ACTIVE_OR_INTERRUPTED.contains(&stored.state) {
            self.stored = stored;
            return Ok(Some(End::Stopped));
        }
        shared.auto.store(stored.workers_auto, Ordering::Release);
        self.stored = stored;
        let change = match self.unconnected.take() {
            Some((worker, error)) => {
                self.grow_after = Some(Instant::now() + RETRY_CONNECT_AFTER);
                // The workers below it keep going; those above leave their ranges to them.
                Some((
                    (worker - 1).clamp(1, shared.plan().target),
                    format!(
                        "worker {worker} could not connect ({error}); more are tried again in {} s",
                        RETRY_CONNECT_AFTER.as_secs()
                    ),
                ))
            }
            None if self.grow_after.is_some_and(|at| Instant::now() < at) => None,
            None => self.wanted(shared, conn)?,
        };
        let from = shared.plan().target;
        if let Some((to, reason)) = change.filter(|(to, _)| *to != from) {
            // The workers follow the new count at once; its record may wait for the
            // batches in flight.
            shared.plan().target = to;
            self.stored = record_change(conn, Some(from), to, &reason)?;
            log::info!("backfill: {from} → {to} worker(s): {reason}");
            self.probes.changed(from, to, self.changed.elapsed());
            self.changed = Instant::now();
            self.calm.restart(self.changed);
        }
        let target = shared.plan().target;
        for no in 2..=target {
            let slot = no as usize;
            if !self.alive[slot] {
                self.alive[slot] = spawn(no, self.stored.clone());
            }
        }
        Ok(None)
    }

    /// Once every worker has ended (their batches are committed or rolled back): what they
    /// said last still counts (a worker that could not connect is recorded so), and no open
    /// range is shown with a worker on it any more. The writes are best effort: the database
    /// may be gone (it may be why the run ended), and the end is told either way.
    fn after_the_workers(&mut self, shared: &Shared, conn: &mut PgConnection) {
        while let Ok(event) = self.events.try_recv() {
            let _ = self.event(shared, event);
        }
        if let Some((worker, error)) = self.unconnected.take() {
            let from = shared.plan().target;
            let to = (worker - 1).clamp(1, from);
            if to != from {
                let reason = format!("worker {worker} could not connect ({error})");
                let _ = record_change(conn, Some(from), to, &reason);
                log::info!("backfill: {from} → {to} worker(s): {reason}");
            }
        }
        let _ = diesel::update(
            zdm_backfill_ranges::table
                .filter(zdm_backfill_ranges::worker.is_not_null())
                .filter(zdm_backfill_ranges::last_id.lt(zdm_backfill_ranges::end_id)),
        )
        .set(zdm_backfill_ranges::worker.eq(None::<i32>))
        .execute(conn);
    }

    /// Records how the run ended (`done`, or `failed` if the database can still be told)
    /// and returns its status, or the error.
    fn finish(
        &mut self,
        conn: &mut PgConnection,
        end: End,
    ) -> Result<BackfillStatus, BackfillError> {
        match end {
            End::Done => {
                let done: BackfillStatus = diesel::update(zdm_backfill::table)
                    .set((
                        zdm_backfill::state.eq(BackfillState::Done),
                        zdm_backfill::last_id.eq(zdm_backfill::max_id),
                        zdm_backfill::finished_at.eq(now),
                        zdm_backfill::updated_at.eq(now),
                    ))
                    .get_result(conn)?;
                let done = with_progress(conn, done)?;
                (self.progress)(&done);
                log::info!(
                    "backfill done: {} rows scanned, {} updated",
                    done.rows_done,
                    done.rows_updated
                );
                Ok(done)
            }
            End::Stopped => {
                let stored: BackfillStatus = zdm_backfill::table.first(conn)?;
                let stopped = with_progress(conn, stored)?;
                log::info!("backfill {} at id {}", stopped.state, stopped.last_id);
                Ok(stopped)
            }
            End::Failed(e) => {
                let _ = diesel::update(zdm_backfill::table)
                    .set((
                        zdm_backfill::state.eq(BackfillState::Failed),
                        zdm_backfill::error.eq(e.to_string()),
                    ))
                    .execute(conn);
                Err(e.into())
            }
            End::Lost(error) => {
                log::warn!("backfill: a worker lost its connection: {error}");
                Err(BackfillError::Database(
                    diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::ClosedConnection,
                        Box::new(error),
                    ),
                ))
            }
        }
    }

    /// The number of workers the knob (or auto mode) asks for now, if it differs.
    fn wanted(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
    ) -> QueryResult<Option<(i32, String)>> {
        let current = shared.plan().target;
        let (to, reason) = match self.stored.workers_setting() {
            _ if !self.can_grow => (1, ONE_CONNECTION.to_owned()),
            Workers::Fixed(n) => (n, format!("set to {n}")),
            Workers::Auto => {
                let mut throttle = locked(&shared.throttle);
                let Some(budget) = throttle.max_request_p99_ms else {
                    return Ok((current != 1).then(|| (1, NO_BUDGET.to_owned())));
                };
                let limits = Limits {
                    p99_budget_ms: budget,
                    max_lag_bytes: throttle.max_lag_bytes,
                };
                let reading = throttle.reading(conn)?;
                let calm = self.calm.saw(limits, &reading, Instant::now());
                return Ok(auto::decide(
                    current,
                    limits,
                    &reading,
                    calm,
                    self.probes.add_after(current + 1),
                ));
            }
        };
        Ok((to != current).then_some((to, reason)))
    }
}

/// Why a runner without a database URL runs one worker.
pub(super) const ONE_CONNECTION: &str =
    "one worker: this runner has a single connection to the database";

/// Runs (or resumes) the backfill with workers, on `conn` (which holds the backfill's lock)
/// and, for workers beyond the first, on connections to `url` (`None`: one worker).
pub(super) fn run(
    conn: &mut PgConnection,
    url: Option<&str>,
    direction: Direction,
    throttle: &mut Throttle,
    progress: &mut dyn FnMut(&BackfillStatus),
    on_batch: &mut dyn FnMut(&BatchDone),
) -> Result<BackfillStatus, BackfillError> {
    let (stored, ranges) = begin(conn, direction, url.is_some(), throttle.max_request_p99_ms)?;
    log::info!(
        "backfill ({}) of ids up to {} in {} range(s) left, {} worker(s): {}",
        direction.as_str(),
        stored.max_id,
        ranges.iter().filter(|r| !r.is_done()).count(),
        stored.workers,
        stored.workers_reason.as_deref().unwrap_or_default()
    );
    let p99_budget_ms = throttle.max_request_p99_ms;
    let target_ms = batch_time_target_ms(stored.batch_target_ms, p99_budget_ms);
    if stored.batch_target_ms > 0 && target_ms < f64::from(stored.batch_target_ms) {
        log::info!(
            "backfill batches sized toward {target_ms} ms, the users' p99 budget, rather than the {} ms set",
            stored.batch_target_ms
        );
    }
    let (events_tx, events) = mpsc::channel();
    let shared = Shared {
        plan: Mutex::new(Plan::new(ranges, stored.workers)),
        throttle: Mutex::new(throttle),
        events: events_tx,
        direction,
        stop: AtomicBool::new(false),
        auto: AtomicBool::new(stored.workers_auto),
        p99_budget_ms,
        sized: Mutex::new(Sizing::default()),
    };
    let mut runner = Runner::new(stored, events, url.is_some(), progress, on_batch);
    runner.report(&shared);
    let end = drive_with_workers(&mut runner, &shared, conn, url);
    runner.after_the_workers(&shared, conn);
    runner.finish(conn, end)
}

/// Worker 1 and the runner's bookkeeping on `conn`, and the workers it starts on threads of
/// their own with connections to `url`. Returns how the run ended, once every worker has.
fn drive_with_workers(
    runner: &mut Runner,
    shared: &Shared,
    conn: &mut PgConnection,
    url: Option<&str>,
) -> End {
    // The connections of workers that ended, for workers started later to reuse.
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
        let end = runner.drive(shared, conn, &mut spawn);
        shared.stop.store(true, Ordering::Release);
        end
    })
}

/// Splits the ids `(after, last]` into `parts` ranges of about the same span.
pub(super) fn split_evenly(after: i64, last: i64, parts: i32) -> Vec<(i64, i64)> {
    let span = i128::from(last) - i128::from(after);
    if span <= 0 {
        return Vec::new();
    }
    let parts = i128::from(parts.max(1)).min(span);
    (0..parts)
        .map(|i| {
            let at = |k: i128| (i128::from(after) + span * k / parts) as i64;
            (at(i), at(i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(no: i32, start: i64, last: i64, end: i64, worker: Option<i32>) -> WorkerRange {
        WorkerRange {
            range_no: no,
            start_id: start,
            last_id: last,
            end_id: end,
            worker,
            rows_done: 0,
            rows_updated: 0,
            batches: 0,
            batch_size: 10,
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_key_range_splits_evenly_and_covers_every_id_once() {
        assert_eq!(
            split_evenly(0, 100, 4),
            [(0, 25), (25, 50), (50, 75), (75, 100)]
        );
        assert_eq!(split_evenly(9, 12, 5), [(9, 10), (10, 11), (11, 12)]);
        assert!(split_evenly(5, 5, 3).is_empty());
        let parts = split_evenly(-1, i64::MAX, 16);
        assert_eq!(parts.len(), 16);
        assert!(parts.windows(2).all(|w| w[0].1 == w[1].0));
        assert_eq!((parts[0].0, parts[15].1), (-1, i64::MAX));
    }

    #[test]
    fn a_worker_takes_a_waiting_range_then_splits_above_the_batch_in_flight() {
        let mut plan = Plan::new(
            vec![range(1, 0, 0, 100, None), range(2, 100, 100, 200, None)],
            2,
        );
        assert!(matches!(
            plan.claim(1),
            Claim::Take {
                range_no: 1,
                from: 0
            }
        ));
        assert!(matches!(
            plan.claim(2),
            Claim::Take {
                range_no: 2,
                from: 100
            }
        ));
        assert!(matches!(
            plan.claim(1),
            Claim::Keep {
                range_no: 1,
                from: 0
            }
        ));
        // Worker 1's batch in flight reaches id 40; worker 2 finished its range.
        assert_eq!(plan.reserve(1, Some(40)), 40);
        plan.slot(2).unwrap().range.last_id = 200;
        let Claim::Split { victim, new } = plan.claim(2) else {
            panic!("expected a split");
        };
        assert_eq!(victim, 1);
        // Half of what is neither done nor in flight: (40, 100] → (40, 70] and (70, 100].
        assert_eq!((new.start_id, new.last_id, new.end_id), (70, 70, 100));
        assert_eq!(plan.slot(1).unwrap().range.end_id, 70);
        // A batch reserved afterwards stops at the new end.
        plan.unreserve(1);
        assert_eq!(plan.reserve(1, Some(90)), 70);
        assert_eq!(plan.reserve(1, None), 70);
    }

    #[test]
    fn a_worker_added_later_starts_at_the_size_the_others_reached() {
        let knob = (5000, 40);
        let mut first = Sizing::default();
        assert_eq!(first.next(knob, Some(2.0)), 5000, "the knob's size first");
        // 25-ms batches against a 2 ms budget: down by a third each time.
        let mut size = 5000;
        for _ in 0..10 {
            first.ran(knob, size, Duration::from_millis(25));
            size = first.next(knob, Some(2.0));
        }
        assert_eq!(size, 87);
        // A worker started now begins where the first one is, not at 5,000 again...
        let added = first.to_start_from();
        assert_eq!(added.next(knob, Some(2.0)), first.size);
        // ...unless the knobs changed since.
        assert_eq!(added.next((300, 40), Some(2.0)), 300);
        assert_eq!(added.next((5000, 0), Some(2.0)), 5000);
    }

    #[test]
    fn a_range_smaller_than_two_batches_is_not_split() {
        let mut plan = Plan::new(vec![range(1, 0, 0, 19, Some(1))], 2);
        assert!(matches!(plan.claim(2), Claim::Nothing));
        let mut plan = Plan::new(vec![range(1, 0, 0, 20, Some(1))], 2);
        assert!(matches!(plan.claim(2), Claim::Split { .. }));
    }

    #[test]
    fn a_worker_let_go_leaves_its_range_to_the_others() {
        let mut plan = Plan::new(
            vec![
                range(1, 0, 30, 100, Some(1)),
                range(2, 100, 150, 200, Some(2)),
            ],
            1,
        );
        assert_eq!(plan.release(2), [2]);
        plan.slot(1).unwrap().range.last_id = 100;
        assert!(matches!(
            plan.claim(1),
            Claim::Take {
                range_no: 2,
                from: 150
            }
        ));
        plan.slot(2).unwrap().range.last_id = 200;
        assert!(plan.all_done());
    }
}
