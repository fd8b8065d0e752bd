//! A private PostgreSQL of its own (primary and replicas) for a test or a benchmark that
//! stops, restarts or clones it without disturbing anything else.

use std::fs;
use std::path::{Path, PathBuf};

use super::{LocalPg, LocalPgError};

/// A private PostgreSQL of its own (primary and replicas) under `base`, for a test or a
/// benchmark that stops, restarts or clones it without disturbing anything else. Stopped and
/// removed, replicas included, when dropped (also on a failure or a panic).
pub struct ScratchCluster {
    pub base: PathBuf,
    replicas: Vec<LocalPg>,
}

impl ScratchCluster {
    /// A fresh cluster under `base` (whatever a killed earlier run left there is removed).
    pub fn new(base: PathBuf) -> Self {
        let _ = fs::remove_dir_all(&base);
        Self {
            base,
            replicas: Vec::new(),
        }
    }

    /// The primary, started (created on first use).
    pub fn primary(&self) -> Result<LocalPg, LocalPgError> {
        LocalPg::ensure_running(&self.base)
    }

    /// Streaming replica number 1 of the primary, stopped with the cluster.
    pub fn replica(&mut self, primary: &LocalPg) -> Result<LocalPg, LocalPgError> {
        let replica = primary.ensure_replica(1)?;
        self.replicas.push(replica.clone());
        Ok(replica)
    }

    /// Replica number 1 as a synchronous standby of the primary (see
    /// `LocalPg::make_synchronous`): a failover to it loses no acknowledged write.
    pub fn synchronous_standby(&mut self, primary: &LocalPg) -> Result<LocalPg, LocalPgError> {
        let standby = self.replica(primary)?;
        primary.make_synchronous(&standby)?;
        Ok(standby)
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        for replica in &self.replicas {
            let _ = replica.stop();
        }
        // A primary killed on purpose (a failover) stays down: it is not started to be stopped.
        if postmaster_alive(&self.base.join("pgdata"))
            && let Ok(pg) = LocalPg::ensure_running(&self.base)
        {
            let _ = pg.stop();
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Whether the postmaster named by `data_dir`'s `postmaster.pid` is alive.
fn postmaster_alive(data_dir: &Path) -> bool {
    super::replica::postmaster_pid_in(data_dir)
        .is_ok_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}
