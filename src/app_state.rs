//! What every request handler can reach: built once at start-up, shared by all workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::DbPool;
use crate::migration::follower::AppliedPhase;

#[derive(Clone)]
pub struct AppState {
    pub pool: DbPool,
    /// Reads of one user by id from the primary, coalesced (see `db::reads`).
    pub user_reads: crate::db::reads::UserReads,
    /// For work that needs a connection of its own (advisory locks held for minutes).
    pub database_url: String,
    /// The phase this instance has applied (kept current by the phase follower).
    pub phase: AppliedPhase,
    /// This instance's name in `zdm_instances` and in the history.
    pub instance_id: String,
    /// The Bearer token of the admin API, and the password of the admin pages.
    pub admin_token: String,
    pub sessions: AdminSessions,
    pub login_limiter: LoginLimiter,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Streaming replicas whose replay lag throttles the backfill, and the limit.
    pub replica_urls: Vec<String>,
    pub replica_max_lag_bytes: i64,
    /// The requests' p99 above which the backfill waits (`ZDM_BACKFILL_MAX_P99_MS`).
    pub backfill_max_p99_ms: Option<f64>,
    /// Replicas the user reads may go to (empty: all reads from the primary).
    pub read_replicas: crate::replicas::ReadReplicas,
    /// The backfill this process runs, if any, so a shutdown can stop it at a batch boundary.
    pub backfill_thread: BackfillThread,
    /// How long a backfill this process runs waits for a lost database; stopped at shutdown.
    pub backfill_ride_out: crate::migration::backfill::RideOut,
    /// Where `zdm demo` writes its reports; the dashboard links the latest.
    pub report_dir: std::path::PathBuf,
    /// Fault injection for the demo's own test (`ZDM_FAULT_LAGGING_V1_WRITES`): v1 writes
    /// behave like expanded-phase code (full_name only) whatever the phase, as a broken
    /// dual-write would. Never set in normal use.
    pub fault_lagging_v1_writes: bool,
}

impl AppState {
    /// The phase whose code v1 writes follow.
    pub fn v1_write_phase(&self) -> crate::migration::Phase {
        let phase = self.phase.get();
        if self.fault_lagging_v1_writes {
            phase.min(crate::migration::Phase::Expanded)
        } else {
            phase
        }
    }
}

/// How long an admin page session lasts after login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// Logged-in admin page sessions of this instance, by the id in their cookie. Each carries
/// the CSRF token its forms must send back. Kept in memory: a restart logs everyone out, and
/// each instance has its own (log in on the instance you use).
#[derive(Clone, Default)]
pub struct AdminSessions(Arc<Mutex<HashMap<String, Session>>>);

struct Session {
    csrf_token: String,
    expires: Instant,
}

fn random_token() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(40)
        .collect()
}

impl AdminSessions {
    /// A new session: `(session id, CSRF token)`.
    pub fn create(&self) -> (String, String) {
        let (id, csrf_token) = (random_token(), random_token());
        let mut sessions = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        sessions.insert(
            id.clone(),
            Session {
                csrf_token: csrf_token.clone(),
                expires: now + SESSION_LIFETIME,
            },
        );
        (id, csrf_token)
    }

    /// The CSRF token of a live session.
    pub fn csrf_token(&self, id: &str) -> Option<String> {
        let sessions = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions
            .get(id)
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.csrf_token.clone())
    }

    pub fn remove(&self, id: &str) {
        let mut sessions = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sessions.remove(id);
    }
}

/// Failed admin log-ins allowed per client address within `LOGIN_WINDOW`.
pub const LOGIN_ATTEMPTS: u32 = 5;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(60);

/// Counts failed admin log-ins per client address, so the token cannot be guessed at speed.
/// (Behind a reverse proxy every client shares the proxy's address: the limit then applies to
/// all of them together, which errs on the safe side.)
#[derive(Clone, Default)]
pub struct LoginLimiter(Arc<Mutex<HashMap<std::net::IpAddr, (u32, Instant)>>>);

impl LoginLimiter {
    /// `Some(wait)` when this address must wait before trying again.
    pub fn blocked_for(&self, ip: std::net::IpAddr) -> Option<Duration> {
        let attempts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (failures, since) = attempts.get(&ip)?;
        let elapsed = since.elapsed();
        (*failures >= LOGIN_ATTEMPTS && elapsed < LOGIN_WINDOW).then(|| LOGIN_WINDOW - elapsed)
    }

    pub fn failed(&self, ip: std::net::IpAddr) {
        let mut attempts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = attempts.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= LOGIN_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
    }

    pub fn succeeded(&self, ip: std::net::IpAddr) {
        let mut attempts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        attempts.remove(&ip);
    }
}

/// The thread running a backfill started by this process.
#[derive(Clone, Default)]
pub struct BackfillThread(Arc<Mutex<Option<std::thread::JoinHandle<()>>>>);

impl BackfillThread {
    pub fn set(&self, handle: std::thread::JoinHandle<()>) {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(handle);
    }

    /// The running thread, taken out (for the shutdown to wait on).
    pub fn take_running(&self) -> Option<std::thread::JoinHandle<()>> {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.take().filter(|h| !h.is_finished())
    }
}
