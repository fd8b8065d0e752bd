//! What every request handler can reach: built once at start-up, shared by all workers.

use std::sync::{Arc, Mutex};

use crate::db::DbPool;
use crate::migration::follower::AppliedPhase;

#[derive(Clone)]
pub struct AppState {
    pub pool: DbPool,
    /// Reads of one user by id from the primary, coalesced (see `db::reads`).
    pub user_reads: crate::db::reads::UserReads,
    /// For work that needs a session of its own (advisory locks held for minutes, the steps'
    /// session settings, the backfill's long-lived connections): `DIRECT_DATABASE_URL`
    /// where the pool goes through a transaction-mode pooler, else the pool's URL.
    pub session_url: String,
    /// Which URL serves what, for the dashboard and the status.
    pub connections: crate::db::Connections,
    /// The phase this instance has applied (kept current by the phase follower).
    pub phase: AppliedPhase,
    /// This instance's name in `zdm_instances` and in the history.
    pub instance_id: String,
    /// The Bearer token of the admin API, and the password of the admin pages.
    pub admin_token: String,
    /// The proxies whose `X-Forwarded-For`/`-Proto` are believed (`ZDM_TRUSTED_PROXIES`).
    pub trusted_proxies: crate::trusted_proxies::TrustedProxies,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What the backfills this instance runs wait for (the replicas' lag, the requests'
    /// p99) and how long they ride out a lost database (stopped at shutdown).
    pub backfill: crate::migration::control::BackfillSettings,
    /// Replicas the user reads may go to (empty: all reads from the primary).
    pub read_replicas: crate::replicas::ReadReplicas,
    /// The backfill this process runs, if any, so a shutdown can stop it at a batch boundary.
    pub backfill_thread: BackfillThread,
    /// Where `zdm demo` writes its reports; the dashboard links the latest.
    pub report_dir: std::path::PathBuf,
    /// Faults injected for `zdm demo --fault` (see `crate::faults`); none in normal use.
    pub faults: crate::faults::Faults,
    /// The clients this instance knows to be over the failed log-in limit, so a flood of
    /// wrong tokens is refused without database work.
    pub failed_logins: crate::failed_logins::FailedLogins,
    /// The key the user forms' CSRF tokens are signed with, read once from PostgreSQL.
    pub user_form_key: crate::secrets::UserFormKey,
}

impl AppState {
    /// The phase whose code v1 writes follow.
    pub fn v1_write_phase(&self) -> crate::domain::Phase {
        let phase = self.phase.get();
        if self.faults.lagging_v1_writes {
            phase.min(crate::domain::Phase::Expanded)
        } else {
            phase
        }
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
