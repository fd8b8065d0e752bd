//! Streaming replicas of a private primary: cloned with `pg_basebackup`, made synchronous,
//! promoted as an HA manager would, and reached through a multi-host URL that follows a
//! failover.

use std::fs;
use std::path::Path;

use diesel::prelude::*;
use diesel::sql_types::Text;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{
    LocalPg, LocalPgError, PORT, SUPERUSER, check, io_err, lock_base_dir, percent_encode,
    usable_base_dir,
};
use crate::db::databases::quote_ident;

/// How long `promote` waits for the standby to accept writes.
const PROMOTE_WITHIN_SECS: &str = "180";

impl LocalPg {
    /// Starts (creating it on first use) streaming replica number `index` of this private
    /// primary, in `<base>/replica-<index>`, on a unix socket of its own. The replica is made
    /// with `pg_basebackup -R` (hot standby, following the primary over a streaming
    /// replication connection on the primary's socket) and reused by later calls.
    pub fn ensure_replica(&self, index: usize) -> Result<LocalPg, LocalPgError> {
        let base_dir =
            usable_base_dir(&self.base_dir.join(format!("replica-{index}")), self.run_as)?;
        let _lock = lock_base_dir(&base_dir, self.run_as)?;
        let mut replica = LocalPg::at(base_dir, self.bin_dir.clone(), self.run_as);
        if !replica.data_dir.join("PG_VERSION").is_file() {
            replica.clone_primary(self)?;
        }
        if !replica.is_running() {
            replica.start()?;
            replica.started_here = true;
        }
        Ok(replica.with_socket_from_pid_file())
    }

    /// A base backup of `primary` into place, configured to stream from it.
    fn clone_primary(&self, primary: &LocalPg) -> Result<(), LocalPgError> {
        let scratch = self.base_dir.join("pgdata.init");
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(io_err("removing an unfinished base backup"))?;
        }
        log::info!(
            "cloning the private primary into a replica in {}",
            self.data_dir.display()
        );
        let out = self
            .command("pg_basebackup")
            .arg("-D")
            .arg(&scratch)
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-U",
                SUPERUSER,
                "-p",
                &PORT.to_string(),
            ])
            .arg("-h")
            .arg(&primary.socket_dir)
            .output()
            .map_err(io_err("running pg_basebackup"))?;
        check(out, "pg_basebackup")?;
        // The name the replica streams under (its walreceiver's application_name), which a
        // primary's `synchronous_standby_names` refers to.
        let auto_conf = scratch.join("postgresql.auto.conf");
        let mut text =
            fs::read_to_string(&auto_conf).map_err(io_err("reading postgresql.auto.conf"))?;
        text.push_str(&format!("cluster_name = '{}'\n", self.standby_name()));
        fs::write(&auto_conf, text).map_err(io_err("writing postgresql.auto.conf"))?;
        fs::rename(&scratch, &self.data_dir).map_err(io_err("moving the replica into place"))
    }

    /// The name this replica streams under: `zdm_` and its folder's name (`zdm_replica_1`).
    pub fn standby_name(&self) -> String {
        let folder = self
            .base_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        format!("zdm_{}", folder.replace('-', "_"))
    }

    /// Makes `standby` (a replica of this primary) synchronous: from now on a commit here is
    /// acknowledged only once the standby has flushed it (`synchronous_commit = on`), so a
    /// failover to it loses no acknowledged write. Set with `ALTER SYSTEM` on this primary
    /// only, after the standby was cloned: a promoted standby does not wait for a standby of
    /// its own (an HA manager clears the setting on promotion for the same reason). Returns
    /// once the primary reports the standby as `sync` (within 60 s).
    pub fn make_synchronous(&self, standby: &LocalPg) -> Result<(), LocalPgError> {
        let name = standby.standby_name();
        let mut conn = PgConnection::establish(&self.url("postgres"))?;
        let database = |source| LocalPgError::Database {
            name: "postgres".to_owned(),
            source,
        };
        // ALTER SYSTEM runs outside any transaction, so one statement at a time.
        for sql in [
            format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{}'",
                quote_ident(&name)
            ),
            "ALTER SYSTEM SET synchronous_commit = on".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            diesel::sql_query(sql)
                .execute(&mut conn)
                .map_err(database)?;
        }
        let started = std::time::Instant::now();
        loop {
            let sync: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
                "EXISTS (SELECT FROM pg_stat_replication WHERE sync_state = 'sync' AND application_name = ",
            )
            .bind::<Text, _>(&name)
            .sql(")"))
            .get_result(&mut conn)
            .map_err(database)?;
            if sync {
                return Ok(());
            }
            if started.elapsed() > std::time::Duration::from_secs(60) {
                return Err(LocalPgError::Command {
                    what: format!("making {name} a synchronous standby"),
                    detail: "the primary did not report it as sync within 60 s".to_owned(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, as an HA manager does when the
    /// primary is lost), returning once it accepts writes. The standby first replays what it
    /// has received: on a loaded machine, behind a backfill, that took over pg_ctl's default
    /// 60 s once, so it waits up to `PROMOTE_WITHIN_SECS`.
    pub fn promote(&self) -> Result<(), LocalPgError> {
        let out = self
            .command("pg_ctl")
            .arg("promote")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", PROMOTE_WITHIN_SECS])
            .output()
            .map_err(io_err("running pg_ctl promote"))?;
        check(out, "pg_ctl promote")
    }

    /// The postmaster's process id (the first line of `postmaster.pid`), for a test or a demo
    /// that kills the server as a crash would.
    pub fn postmaster_pid(&self) -> Result<i32, LocalPgError> {
        postmaster_pid_in(&self.data_dir)
    }

    /// Kills the postmaster with SIGKILL, as a crash or a lost machine would (its server
    /// processes go down with it, nothing is flushed), and returns once it is gone (within
    /// 10 s).
    pub fn kill_postmaster(&self) -> Result<(), LocalPgError> {
        let postmaster = Pid::from_raw(self.postmaster_pid()?);
        let failed = |detail: String| LocalPgError::Command {
            what: "killing the postmaster".to_owned(),
            detail,
        };
        kill(postmaster, Signal::SIGKILL).map_err(|e| failed(e.to_string()))?;
        let started = std::time::Instant::now();
        while kill(postmaster, None).is_ok() {
            if started.elapsed() > std::time::Duration::from_secs(10) {
                return Err(failed("still there 10 s after SIGKILL".to_owned()));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(())
    }

    /// A libpq URL for `database` naming every server of `servers` in turn, taking the first
    /// that accepts writes (`target_session_attrs=read-write`): what an application uses to
    /// follow a failover by itself.
    pub fn multi_host_url(servers: &[&LocalPg], database: &str) -> String {
        let hosts: Vec<String> = servers
            .iter()
            .map(|pg| percent_encode(&pg.socket_dir.to_string_lossy()))
            .collect();
        let ports: Vec<String> = servers.iter().map(|_| PORT.to_string()).collect();
        format!(
            "postgres:///{database}?host={}&port={}&user={SUPERUSER}&target_session_attrs=read-write",
            hosts.join(","),
            ports.join(",")
        )
    }
}

/// The process id on the first line of `data_dir`'s `postmaster.pid`.
pub(super) fn postmaster_pid_in(data_dir: &Path) -> Result<i32, LocalPgError> {
    let text = fs::read_to_string(data_dir.join("postmaster.pid"))
        .map_err(io_err("reading postmaster.pid"))?;
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| LocalPgError::Command {
            what: "reading postmaster.pid".to_owned(),
            detail: "no process id on its first line".to_owned(),
        })
}
