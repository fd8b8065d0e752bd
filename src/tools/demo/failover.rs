//! `zdm demo --failover`: the demo's database on a primary and a streaming standby of the
//! demo's own, and mid-backfill the primary killed with SIGKILL and the standby promoted, as
//! an HA manager (Patroni, a cloud service) would. The instances and the backfill reach the
//! database through a libpq multi-host URL (`target_session_attrs=read-write`) and follow
//! the promotion by themselves; a pooler in front (`--pooler`) is pointed at the new primary,
//! as the HA manager's hook does in production.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Timeline, blocking, pause};
use crate::local_pg::{LocalPg, ScratchCluster};
use crate::pgbouncer::PgBouncer;

/// The primary and the standby the demo fails over between.
#[derive(Debug, Clone)]
pub struct Failover {
    pub primary: LocalPg,
    pub standby: LocalPg,
    /// Whether the standby is synchronous (a commit is acknowledged once the standby has
    /// flushed it): then no acknowledged write may be lost; asynchronous, PostgreSQL may
    /// lose the last ones, and the audit counts them apart.
    pub synchronous: bool,
}

impl Failover {
    /// A primary and a standby of their own under `base` (removed when the returned cluster
    /// goes), with the multi-host URL of their `postgres` database: the server the demo runs
    /// on.
    pub fn start(base: &Path, synchronous: bool) -> Result<(ScratchCluster, Self, String)> {
        let mut cluster = ScratchCluster::new(base.to_owned());
        let primary = cluster.primary().context("starting the demo's primary")?;
        let standby = if synchronous {
            cluster.synchronous_standby(&primary)
        } else {
            cluster.replica(&primary)
        }
        .context("starting the demo's standby")?;
        let url = LocalPg::multi_host_url(&[&primary, &standby], "postgres");
        let failover = Failover {
            primary,
            standby,
            synchronous,
        };
        Ok((cluster, failover, url))
    }

    pub fn standby_kind(&self) -> &'static str {
        if self.synchronous {
            "synchronous"
        } else {
            "asynchronous"
        }
    }
}

/// How long the HA manager takes to notice the primary is gone before it promotes.
const DETECTION: Duration = Duration::from_secs(1);

/// Kills the primary (SIGKILL of its postmaster: nothing is flushed, its sessions end), and
/// after `DETECTION` promotes the standby and points the pooler, if any, at it. The outage is
/// the timeline's segment `failover`; the time without a primary (from the kill until the
/// standby accepts writes) goes on the timeline too.
pub(super) async fn fail_over(
    failover: &Failover,
    pooler: Option<&PgBouncer>,
    timeline: &mut Timeline,
) -> Result<()> {
    timeline.enter("failover");
    timeline.mark("kill -9 of the primary (PostgreSQL's postmaster)");
    let without_primary = kill_and_promote(failover, pooler).await?;
    timeline.mark(format!(
        "{} standby promoted: {:.1} s without a primary{}",
        failover.standby_kind(),
        without_primary.as_secs_f64(),
        if pooler.is_some() {
            "; the pooler points at it"
        } else {
            ""
        }
    ));
    let promoted_in = timeline.segments.len() - 1;
    timeline.promoted_in = Some(promoted_in);
    if !failover.synchronous {
        timeline
            .control
            .async_promoted_in
            .store(promoted_in, std::sync::atomic::Ordering::Release);
    }
    timeline.without_primary = Some(without_primary);
    Ok(())
}

/// Kills the primary, and after `DETECTION` promotes the standby and points the pooler, if
/// any, at it. Returns how long no primary accepted writes.
pub(super) async fn kill_and_promote(
    failover: &Failover,
    pooler: Option<&PgBouncer>,
) -> Result<Duration> {
    let killed = Instant::now();
    let primary = failover.primary.clone();
    blocking(move || primary.kill_postmaster().context("killing the primary")).await?;
    pause(DETECTION.as_secs_f64()).await;
    let standby = failover.standby.clone();
    blocking(move || standby.promote().context("promoting the standby")).await?;
    if let Some(pooler) = pooler {
        pooler
            .retarget(&failover.standby.url("postgres"))
            .context("pointing the pooler at the new primary")?;
    }
    Ok(killed.elapsed())
}
