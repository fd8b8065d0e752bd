//! What every request handler can reach: built once at start-up, shared by all workers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::db::DbPool;
use crate::migration::follower::AppliedPhase;

#[derive(Clone)]
pub struct AppState {
    pub pool: DbPool,
    /// For work that needs a connection of its own (advisory locks held for minutes).
    pub database_url: String,
    /// The phase this instance has applied (kept current by the phase follower).
    pub phase: AppliedPhase,
    /// This instance's name in `zdm_instances` and in the history.
    pub instance_id: String,
    /// The Bearer token of the admin API, and the password of the admin pages.
    pub admin_token: String,
    pub sessions: AdminSessions,
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
