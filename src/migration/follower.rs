//! How an app instance follows the phase stored in the database.
//!
//! A background thread polls the phase every `poll` interval (250 ms by default, so a change
//! reaches every instance well within a second), switches the instance to it, and records a
//! heartbeat in `zdm_instances` with the phase it has *applied*: at once after a switch, and
//! every `HEARTBEAT_EVERY` otherwise. Gates that need "every live instance acknowledged" read
//! those heartbeats. Request handlers read the applied phase from memory: no query per request.
//! A serving instance also reports the p99 of its recent user requests with each heartbeat
//! (then every `REPORTING_HEARTBEAT_EVERY`), for the backfill's latency throttle.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use diesel::prelude::*;

use super::Phase;
use super::state::{self, StateError};
use crate::db::DbPool;
use crate::metrics::{LatencyMark, Metrics};
use crate::schema::state::zdm_instances;

/// An instance that has not been heard of for this long is not live (the SQL gates use the
/// same window).
pub const LIVE_WINDOW: Duration = Duration::from_secs(10);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);

/// The phase this instance has applied, since when (Unix seconds, as stored), and the
/// primary's WAL position when it switched (a replica past it has the phase's schema); cheap
/// to clone and read.
#[derive(Debug, Clone)]
pub struct AppliedPhase(Arc<(AtomicU8, AtomicI64, AtomicU64)>);

impl AppliedPhase {
    pub fn new(phase: Phase, since: i64) -> Self {
        Self(Arc::new((
            AtomicU8::new(phase.index() as u8),
            AtomicI64::new(since),
            AtomicU64::new(u64::MAX),
        )))
    }

    /// The primary's WAL position when this instance switched to its phase (`u64::MAX`, which
    /// no replica reaches, until known).
    pub fn switched_at_lsn(&self) -> u64 {
        self.0.2.load(Ordering::Acquire)
    }

    fn set_lsn(&self, lsn: u64) {
        self.0.2.store(lsn, Ordering::Release);
    }

    pub fn get(&self) -> Phase {
        Phase::ALL[self.0.0.load(Ordering::Acquire) as usize]
    }

    /// When the stored phase was entered (Unix seconds).
    pub fn since(&self) -> i64 {
        self.0.1.load(Ordering::Acquire)
    }

    fn set(&self, phase: Phase, since: i64) {
        self.0.1.store(since, Ordering::Release);
        self.0.0.store(phase.index() as u8, Ordering::Release);
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
    recent_p99_ms: Option<f64>,
) -> QueryResult<()> {
    diesel::insert_into(zdm_instances::table)
        .values((
            zdm_instances::id.eq(id),
            zdm_instances::applied_phase.eq(phase.as_str()),
            zdm_instances::recent_p99_ms.eq(recent_p99_ms),
        ))
        .on_conflict(zdm_instances::id)
        .do_update()
        .set((
            zdm_instances::applied_phase.eq(phase.as_str()),
            zdm_instances::last_seen.eq(diesel::dsl::now),
            zdm_instances::recent_p99_ms.eq(recent_p99_ms),
        ))
        .execute(conn)
        .map(drop)
}

/// What an instance reports about its requests with each heartbeat (the backfill's latency
/// throttle reads it), and how often it beats to keep that fresh.
struct LatencyReport {
    metrics: Arc<Metrics>,
    since: LatencyMark,
}

/// Heartbeats of an instance that reports its request latency: often enough for the
/// backfill to react within a batch or two.
const REPORTING_HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

impl PhaseFollower {
    /// Reads the phase once (so the instance starts in step), records the first heartbeat and
    /// starts following.
    pub fn start(pool: DbPool, poll: Duration) -> Result<Self, StateError> {
        Self::start_with(pool, poll, None)
    }

    /// As `start`, also reporting the p99 of the user requests `metrics` counted since the
    /// previous heartbeat (every `REPORTING_HEARTBEAT_EVERY`).
    pub fn start_reporting(
        pool: DbPool,
        poll: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StateError> {
        Self::start_with(
            pool,
            poll,
            Some(LatencyReport {
                metrics,
                since: LatencyMark::default(),
            }),
        )
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
    let mut recent_p99 = move || {
        report
            .as_mut()
            .and_then(|r| r.metrics.user_p99_ms_since(&mut r.since))
    };
    let mut last_beat = Instant::now();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(poll);
        let mut conn = match pool.get() {
            Ok(conn) => conn,
            Err(e) => {
                log::warn!("phase follower: database unavailable: {e}");
                continue;
            }
        };
        match state::phase_and_since(&mut conn) {
            Ok((phase, since)) if phase != applied.get() => {
                let from = applied.get();
                applied.set_lsn(u64::MAX);
                applied.set(phase, since.timestamp());
                if let Ok(lsn) = crate::replicas::current_lsn(&mut conn) {
                    applied.set_lsn(lsn);
                }
                log::info!("instance {id} switched from {from} to {phase}");
                if let Err(e) = heartbeat(&mut conn, &id, phase, recent_p99()) {
                    log::warn!("phase follower: heartbeat failed: {e}");
                }
                last_beat = Instant::now();
            }
            Ok((phase, _)) => {
                if last_beat.elapsed() >= beat_every {
                    if let Err(e) = heartbeat(&mut conn, &id, phase, recent_p99()) {
                        log::warn!("phase follower: heartbeat failed: {e}");
                    }
                    last_beat = Instant::now();
                }
            }
            Err(e) => log::warn!("phase follower: could not read the phase: {e}"),
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
