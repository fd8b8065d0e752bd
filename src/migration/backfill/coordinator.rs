//! The coordinator: on the runner's connection, it hears what the workers did and tells the
//! caller, sees the run end, and every `auto::LOOK_EVERY` reads the knobs and state as
//! stored, sets the number of workers (the knob, auto mode, or fewer after one could not
//! connect), records each change, and starts the workers that are missing.

use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use diesel::prelude::*;

use super::auto::{self, AutoRule, Limits};
use super::knobs::Workers;
use super::status::BackfillStatus;
use super::worker::{End, Event, News, Shared, locked};
use super::zone::{self, ZoneClock};
use super::{BackfillState, BatchDone, record_change, store};

/// After a worker could not connect, the coordinator tries to add workers again this much
/// later.
const RETRY_CONNECT_AFTER: Duration = Duration::from_secs(5);

/// Why auto mode keeps one worker where the runner has no p99 budget.
pub(super) const NO_BUDGET: &str = "auto needs a p99 budget (ZDM_BACKFILL_MAX_P99_MS or ZDM_BACKFILL_MAX_P99_RATIO, with traffic to measure) where the backfill runs: one worker";

/// Why a runner without a database URL runs one worker.
pub(super) const ONE_CONNECTION: &str =
    "one worker: this runner has a single connection to the database";

/// Starts worker `n` on a thread, from the row as stored; whether it started.
pub(super) type Spawn<'s> = dyn FnMut(i32, BackfillStatus) -> bool + 's;

pub(super) struct Coordinator<'a> {
    /// The backfill's row as last read or told.
    stored: BackfillStatus,
    events: mpsc::Receiver<Event>,
    /// Which workers have a thread (index: worker number).
    alive: Vec<bool>,
    /// Whether workers beyond the first can connect.
    can_grow: bool,
    /// When the number of workers last changed.
    changed: Instant,
    /// How long auto mode's readings have all been within the limits (AIMD).
    calm: auto::Calm,
    /// How long they have stayed in each of the zone rule's zones.
    zone: ZoneClock,
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

impl<'a> Coordinator<'a> {
    pub fn new(
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
            zone: ZoneClock::new(Instant::now()),
            probes: auto::Probes::default(),
            looked: None,
            unconnected: None,
            grow_after: None,
            progress,
            on_batch,
        }
    }

    pub fn stored(&self) -> &BackfillStatus {
        &self.stored
    }

    /// The caller's callback for the status, for the run's last word.
    pub fn into_progress(self) -> &'a mut dyn FnMut(&BackfillStatus) {
        self.progress
    }

    /// Tells the caller the status, with the progress of the plan's ranges.
    pub fn report(&mut self, shared: &Shared) {
        let status = self.stored.clone().with_ranges(&shared.plan().ranges());
        (self.progress)(&status);
    }

    /// Takes in what a worker did.
    pub fn hear(&mut self, shared: &Shared, news: News) {
        match news {
            News::Batch { done, stored } => {
                self.stored = *stored;
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
            }
            News::Waiting(stored) => {
                self.calm.restart(Instant::now());
                self.zone.throttled(Instant::now());
                self.stored = *stored;
            }
        }
        self.report(shared);
    }

    /// Worker `worker` ended: the run's end, if that ends it.
    pub fn worker_ended(&mut self, worker: i32, end: End) -> Option<End> {
        if let Some(alive) = self.alive.get_mut(worker as usize) {
            *alive = false;
        }
        match end {
            End::Dismissed => None,
            End::NoConnection(error) => {
                self.unconnected = Some((worker, error));
                None
            }
            run_end => Some(run_end),
        }
    }

    fn event(&mut self, shared: &Shared, event: Event) -> Option<End> {
        match event {
            Event::News(news) => {
                self.hear(shared, news);
                None
            }
            Event::Ended { worker, end } => self.worker_ended(worker, end),
        }
    }

    /// Waits up to `wait` (no longer than `auto::LOOK_EVERY`) for a worker's event, and
    /// takes it in: the run's end, if that ends it.
    pub fn wait_for_event(&mut self, shared: &Shared, wait: Duration) -> Option<End> {
        let event = self.events.recv_timeout(wait.min(auto::LOOK_EVERY)).ok()?;
        self.event(shared, event)
    }

    /// The workers' events so far; whether the run ends (every range done); and, when due,
    /// a look at the stored row and the number of workers (`look`).
    pub fn tick(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        spawn: &mut Spawn,
    ) -> Option<End> {
        while let Ok(event) = self.events.try_recv() {
            if let Some(end) = self.event(shared, event) {
                return Some(end);
            }
        }
        if shared.plan().all_done() {
            return Some(End::Done);
        }
        if !self.look_due() {
            return None;
        }
        self.looked = Some(Instant::now());
        self.look(shared, conn, spawn)
            .err()
            .map(|end| end.checked_on(conn))
    }

    /// The coordinator reads the database every `auto::LOOK_EVERY`, and at once after a
    /// worker could not connect.
    fn look_due(&self) -> bool {
        self.unconnected.is_some()
            || self
                .looked
                .is_none_or(|at| at.elapsed() >= auto::LOOK_EVERY)
    }

    /// The knobs and state as stored; the number of workers they (or a worker that could
    /// not connect) ask for; the workers missing started. Err: the run ends.
    fn look(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        spawn: &mut Spawn,
    ) -> Result<(), End> {
        let stored = store::stored_row(conn)?;
        if !BackfillState::ACTIVE_OR_INTERRUPTED.contains(&stored.state) {
            self.stored = stored;
            return Err(End::Stopped);
        }
        shared.auto.store(stored.workers_auto, Ordering::Release);
        self.stored = stored;
        if let Some((to, reason)) = self.next_count(shared, conn)? {
            self.change_count(shared, conn, to, &reason)?;
        }
        self.spawn_missing(shared, spawn);
        Ok(())
    }

    /// The number of workers to run from now on, and why, if it is to change.
    fn next_count(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
    ) -> QueryResult<Option<(i32, String)>> {
        let change = match self.unconnected.take() {
            Some((worker, error)) => Some(self.after_no_connection(shared, worker, &error)),
            None if self.grow_after.is_some_and(|at| Instant::now() < at) => None,
            None => self.wanted(shared, conn)?,
        };
        let current = shared.plan().target;
        Ok(change.filter(|(to, _)| *to != current))
    }

    /// Worker `worker` could not connect (`error`): fewer workers (`count_without`), and no
    /// worker is added for a while.
    fn after_no_connection(&mut self, shared: &Shared, worker: i32, error: &str) -> (i32, String) {
        self.grow_after = Some(Instant::now() + RETRY_CONNECT_AFTER);
        (
            count_without(worker, shared.plan().target),
            format!(
                "worker {worker} could not connect ({error}); more are tried again in {} s",
                RETRY_CONNECT_AFTER.as_secs()
            ),
        )
    }

    /// The workers follow the new count `to` at once; its record may wait for the batches
    /// in flight.
    fn change_count(
        &mut self,
        shared: &Shared,
        conn: &mut PgConnection,
        to: i32,
        reason: &str,
    ) -> QueryResult<()> {
        let from = std::mem::replace(&mut shared.plan().target, to);
        self.stored = record_change(conn, Some(from), to, reason)?;
        log::info!("backfill: {from} → {to} worker(s): {reason}");
        self.probes.changed(from, to, self.changed.elapsed());
        self.changed = Instant::now();
        self.calm.restart(self.changed);
        self.zone.restart(self.changed);
        Ok(())
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
                    quiet_p99_ms: throttle.quiet_p99_ms,
                };
                let rule = throttle.auto_rule;
                let reading = throttle.reading(conn)?;
                drop(throttle);
                return Ok(self.decide(rule, current, limits, &reading));
            }
        };
        Ok((to != current).then_some((to, reason)))
    }

    /// The count auto mode changes to from `current` by `rule`, and why (naming the rule).
    fn decide(
        &mut self,
        rule: AutoRule,
        current: i32,
        limits: Limits,
        reading: &auto::Reading,
    ) -> Option<(i32, String)> {
        let now = Instant::now();
        let add_after = self.probes.add_after(current + 1);
        let change = match rule {
            AutoRule::Aimd => {
                let calm = self.calm.saw(limits, reading, now);
                auto::decide(current, limits, reading, calm, add_after)
            }
            AutoRule::Zone if reading.awaits_fresh_reports() => None,
            AutoRule::Zone => {
                let held = self.zone.saw(zone::zone_of(limits, reading), now);
                zone::decide(current, limits, reading, held, add_after)
            }
        };
        change.map(|(to, why)| (to, format!("{rule}: {why}")))
    }

    /// Starts workers 2..=target that have no thread (worker 1 runs on the runner's thread).
    fn spawn_missing(&mut self, shared: &Shared, spawn: &mut Spawn) {
        let target = shared.plan().target;
        for no in 2..=target {
            let slot = no as usize;
            if !self.alive[slot] {
                self.alive[slot] = spawn(no, self.stored.clone());
            }
        }
    }

    /// Once every worker has ended (their batches are committed or rolled back): what they
    /// said last still counts (a worker that could not connect is recorded so), and no open
    /// range is shown with a worker on it any more. The writes are best effort: the database
    /// may be gone (it may be why the run ended), and the end is told either way.
    pub fn after_the_workers(&mut self, shared: &Shared, conn: &mut PgConnection) {
        while let Ok(event) = self.events.try_recv() {
            let _ = self.event(shared, event);
        }
        if let Some((worker, error)) = self.unconnected.take() {
            let to = count_without(worker, shared.plan().target);
            if to != shared.plan().target {
                let reason = format!("worker {worker} could not connect ({error})");
                let _ = self.change_count(shared, conn, to, &reason);
            }
        }
        let _ = store::leave_open_ranges(conn);
    }
}

/// The number of workers once worker `worker` could not connect: the workers below it keep
/// going, those above leave their ranges to them.
fn count_without(worker: i32, target: i32) -> i32 {
    (worker - 1).clamp(1, target)
}
