//! How an app instance follows the phase stored in the database.
//!
//! A background thread polls the phase every `poll` interval (250 ms by default, so a change
//! reaches every instance well within a second), switches the instance to it, and records a
//! heartbeat in `zdm_instances` with the phase it has *applied*: at once after a switch, and
//! every `HEARTBEAT_EVERY` otherwise. Gates that need "every live instance acknowledged" read
//! those heartbeats. Request handlers read the applied phase from memory: no query per request.
//!
//! Two rules keep an instance from running code of a phase the fleet has left ([I8]):
//! - Fencing: every successful read renews a lease of `PHASE_LEASE` (half the live window).
//!   Past it, the instance serves no phase-dependent request (503) until it has read the
//!   phase again: a frozen or partitioned instance that the gates stopped waiting for never
//!   wakes up to serve old code.
//! - Drain: the instance acknowledges a new phase only once every request that started under
//!   an older one has finished (`AppliedPhase::enter` counts them).
//!
//! A serving instance also reports its recent user requests' latency with each heartbeat
//! (then every `REPORTING_HEARTBEAT_EVERY`): their p99 and their histogram over the last
//! `metrics::REPORT_WINDOW`, for the backfill's latency throttle.
//!
//! [I8]: crate::migration#invariants

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::prelude::*;

use super::state::{self, StateError};
use crate::db::DbPool;
use crate::domain::Phase;
use crate::metrics::LatencyWindow;
use crate::schema::state::zdm_instances;

/// An instance that has not been heard of for this long is not live. Who is live is decided
/// in SQL, by `zdm_live_window()` (migration `2026-12-06-000003_gate_table`), which must be
/// this: a test reads it from the database and compares.
pub const LIVE_WINDOW: Duration = Duration::from_secs(10);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// How long a phase read stays good for serving (I8): half the live window. An instance whose
/// last successful read is older (frozen by SIGSTOP, paused with its VM, cut off from the
/// database) may already have been left behind by a step the gates took without it, since
/// after the live window they no longer wait for it. So it serves no phase-dependent request
/// until it has read the phase again.
pub const PHASE_LEASE: Duration = Duration::from_secs(LIVE_WINDOW.as_secs() / 2);

/// The phase this instance has applied, since when (Unix seconds, as stored), the primary's
/// WAL position when it switched (a replica past it has the phase's schema), when it last
/// read the phase (its lease), and the requests running under each phase; cheap to clone and
/// read.
#[derive(Debug, Clone)]
pub struct AppliedPhase(Arc<Applied>);

#[derive(Debug)]
struct Applied {
    phase: AtomicU8,
    since: AtomicI64,
    lsn: AtomicU64,
    /// When the phase was last read successfully, in ms after `epoch`.
    read_at_ms: AtomicU64,
    epoch: Instant,
    /// Requests in flight, by the phase that was current when they started.
    in_flight: [AtomicUsize; 7],
}

/// A request's hold on the phase it started under: while it lives, the instance does not
/// acknowledge a later phase (drain before acknowledging, I8).
#[derive(Debug)]
pub struct PhaseGuard {
    applied: AppliedPhase,
    phase: Phase,
}

impl PhaseGuard {
    /// The phase current when the request started.
    pub fn phase(&self) -> Phase {
        self.phase
    }
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        self.applied.0.in_flight[self.phase.index()].fetch_sub(1, Ordering::SeqCst);
    }
}

/// The instance's phase lease has run out: it must read the phase before it serves.
#[derive(Debug, thiserror::Error)]
#[error("the phase was last read {0:?} ago, longer than the lease")]
pub struct StaleLease(pub Duration);

impl AppliedPhase {
    /// A phase just read from the database (the lease starts now).
    pub fn new(phase: Phase, since: i64) -> Self {
        Self(Arc::new(Applied {
            phase: AtomicU8::new(phase.index() as u8),
            since: AtomicI64::new(since),
            lsn: AtomicU64::new(crate::replicas::UNKNOWN_POSITION),
            read_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            in_flight: Default::default(),
        }))
    }

    /// The primary's WAL position when this instance switched to its phase (`u64::MAX`, which
    /// no replica reaches, until known).
    pub fn switched_at_lsn(&self) -> u64 {
        self.0.lsn.load(Ordering::Acquire)
    }

    fn set_lsn(&self, lsn: u64) {
        self.0.lsn.store(lsn, Ordering::Release);
    }

    pub fn get(&self) -> Phase {
        Phase::ALL[self.0.phase.load(Ordering::SeqCst) as usize]
    }

    /// When the stored phase was entered (Unix seconds).
    pub fn since(&self) -> i64 {
        self.0.since.load(Ordering::Acquire)
    }

    /// Switches to `phase`. Called before `renew_lease`, so that a request that finds the
    /// lease fresh also finds the phase just read.
    fn set(&self, phase: Phase, since: i64) {
        self.0.since.store(since, Ordering::Release);
        self.0.phase.store(phase.index() as u8, Ordering::SeqCst);
    }

    /// The phase was just read from the database.
    fn renew_lease(&self) {
        let now = self.0.epoch.elapsed().as_millis() as u64;
        self.0.read_at_ms.store(now, Ordering::SeqCst);
    }

    /// Whether the last phase read is recent enough to serve by (see `PHASE_LEASE`).
    pub fn check_lease(&self) -> Result<(), StaleLease> {
        let read_at = Duration::from_millis(self.0.read_at_ms.load(Ordering::SeqCst));
        let age = self.0.epoch.elapsed().saturating_sub(read_at);
        if age < PHASE_LEASE {
            Ok(())
        } else {
            Err(StaleLease(age))
        }
    }

    /// Starts a phase-dependent request: checks the lease and counts the request under the
    /// current phase until the guard is dropped.
    pub fn enter(&self) -> Result<PhaseGuard, StaleLease> {
        self.check_lease()?;
        loop {
            let phase = self.get();
            self.0.in_flight[phase.index()].fetch_add(1, Ordering::SeqCst);
            // Counted under a phase that is still current: a switch after this point waits
            // for it (the follower reads the counts after switching).
            if self.get() == phase {
                return Ok(PhaseGuard {
                    applied: self.clone(),
                    phase,
                });
            }
            self.0.in_flight[phase.index()].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Phase-dependent requests in flight, whatever their phase.
    pub fn in_flight(&self) -> usize {
        self.0
            .in_flight
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .sum()
    }

    /// Requests still running under a phase other than the current one.
    pub fn in_flight_under_older_phases(&self) -> usize {
        let current = self.get();
        Phase::ALL
            .into_iter()
            .filter(|p| *p != current)
            .map(|p| self.0.in_flight[p.index()].load(Ordering::SeqCst))
            .sum()
    }
}

/// Keeps an instance in step with the stored phase until dropped; on drop the instance
/// removes its heartbeat, so gates stop waiting for it at once.
pub struct PhaseFollower {
    pub instance_id: String,
    applied: AppliedPhase,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pool: DbPool,
}

/// A name for this process that is unique across hosts and restarts.
pub fn new_instance_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

fn heartbeat(
    conn: &mut PgConnection,
    id: &str,
    phase: Phase,
    latency: Option<LatencyWindow>,
) -> QueryResult<()> {
    let recent_p99_ms = latency.as_ref().and_then(LatencyWindow::p99_ms);
    let (le, counts) = latency.map(|w| (w.le, w.counts)).unzip();
    diesel::insert_into(zdm_instances::table)
        .values((
            zdm_instances::id.eq(id),
            zdm_instances::applied_phase.eq(phase.as_str()),
            zdm_instances::recent_p99_ms.eq(recent_p99_ms),
            zdm_instances::recent_latency_le.eq(&le),
            zdm_instances::recent_latency_counts.eq(&counts),
        ))
        .on_conflict(zdm_instances::id)
        .do_update()
        .set((
            zdm_instances::applied_phase.eq(phase.as_str()),
            zdm_instances::last_seen.eq(diesel::dsl::now),
            zdm_instances::recent_p99_ms.eq(recent_p99_ms),
            zdm_instances::recent_latency_le.eq(&le),
            zdm_instances::recent_latency_counts.eq(&counts),
        ))
        .execute(conn)
        .map(drop)
}

/// What an instance reports about its requests with each heartbeat (the backfill's latency
/// throttle reads it): the user requests answered over the last `metrics::REPORT_WINDOW`
/// (`None`: no report this time).
type LatencyReport = Box<dyn FnMut() -> Option<LatencyWindow> + Send>;

/// Heartbeats of an instance that reports its request latency: often enough for the
/// backfill to react within a batch or two.
const REPORTING_HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

impl PhaseFollower {
    /// Reads the phase once (so the instance starts in step), records the first heartbeat and
    /// starts following.
    pub fn start(pool: DbPool, poll: Duration) -> Result<Self, StateError> {
        Self::start_with(pool, poll, None)
    }

    /// As `start`, also reporting with each heartbeat (every `REPORTING_HEARTBEAT_EVERY`) the
    /// user requests' latency over the last `metrics::REPORT_WINDOW`, as `recent` tells it
    /// (`Metrics::latency_reporter`).
    pub fn start_reporting(
        pool: DbPool,
        poll: Duration,
        recent: impl FnMut() -> Option<LatencyWindow> + Send + 'static,
    ) -> Result<Self, StateError> {
        Self::start_with(pool, poll, Some(Box::new(recent)))
    }

    fn start_with(
        pool: DbPool,
        poll: Duration,
        report: Option<LatencyReport>,
    ) -> Result<Self, StateError> {
        let instance_id = new_instance_id();
        let (phase, since) = {
            let mut conn = pool
                .get()
                .map_err(|e| StateError::Unavailable(e.to_string()))?;
            let (phase, since) = state::phase_and_since(&mut conn)?;
            heartbeat(&mut conn, &instance_id, phase, None)?;
            (phase, since)
        };
        log::info!("instance {instance_id} starts in phase {phase}");
        let applied = AppliedPhase::new(phase, since.timestamp());
        if let Ok(mut conn) = pool.get()
            && let Ok(lsn) = crate::replicas::current_lsn(&mut conn)
        {
            applied.set_lsn(lsn);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (pool, applied, stop, id) = (
                pool.clone(),
                applied.clone(),
                stop.clone(),
                instance_id.clone(),
            );
            std::thread::Builder::new()
                .name("zdm-phase-follower".to_owned())
                .spawn(move || follow(pool, applied, stop, id, poll, report))
                .map_err(|e| StateError::Unavailable(e.to_string()))?
        };
        Ok(Self {
            instance_id,
            applied,
            stop,
            thread: Some(thread),
            pool,
        })
    }

    pub fn applied(&self) -> AppliedPhase {
        self.applied.clone()
    }
}

fn follow(
    pool: DbPool,
    applied: AppliedPhase,
    stop: Arc<AtomicBool>,
    id: String,
    poll: Duration,
    mut report: Option<LatencyReport>,
) {
    let beat_every = if report.is_some() {
        REPORTING_HEARTBEAT_EVERY
    } else {
        HEARTBEAT_EVERY
    };
    let mut recent_latency = move || report.as_mut().and_then(|report| report());
    let mut last_beat = Instant::now();
    // The phase this instance has told the fleet it runs. It follows the applied phase once
    // no request that started under an older phase is still running (drain, I8), so "every
    // instance applied X" means no older code runs anywhere.
    let mut acknowledged = applied.get();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(poll);
        let mut conn = match pool.get() {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("phase follower: database unavailable: {e}");
                continue;
            }
        };
        let (phase, since) = match state::phase_and_since(&mut conn) {
            Ok(read) => read,
            Err(e) => {
                log::warn!("phase follower: could not read the phase: {e}");
                continue;
            }
        };
        let from = applied.get();
        if phase != from {
            applied.set_lsn(crate::replicas::UNKNOWN_POSITION);
            applied.set(phase, since.timestamp());
            if let Ok(lsn) = crate::replicas::current_lsn(&mut conn) {
                applied.set_lsn(lsn);
            }
            log::info!("instance {id} switched from {from} to {phase}");
        }
        applied.renew_lease();
        let draining = applied.in_flight_under_older_phases();
        let report = if draining == 0 { phase } else { acknowledged };
        if draining > 0 && phase != from {
            log::info!(
                "instance {id} acknowledges {phase} once {draining} request(s) begun under an older phase finish"
            );
        }
        if report != acknowledged || last_beat.elapsed() >= beat_every {
            match heartbeat(&mut conn, &id, report, recent_latency()) {
                Ok(()) => {
                    acknowledged = report;
                    last_beat = Instant::now();
                }
                Err(e) => log::warn!("phase follower: heartbeat failed: {e}"),
            }
            // In new_only the contract is next: watch who still uses full_name, so that its
            // quiet window is observed from the start.
            if phase == Phase::NewOnly
                && let Err(e) = state::sample_column_use(&mut conn)
            {
                log::warn!("phase follower: sampling the use of full_name failed: {e}");
            }
        }
    }
}

impl Drop for PhaseFollower {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        if let Ok(mut conn) = self.pool.get() {
            let _ =
                diesel::delete(zdm_instances::table.find(&self.instance_id)).execute(&mut **conn);
        }
    }
}
