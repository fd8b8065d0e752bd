//! `zdm bench replicas`: what the backfill does to a streaming replica, with and without the
//! lag throttle.
//!
//! Starts a scratch primary and one streaming replica of its own (`pg_basebackup -R`, the
//! same set-up as `ZDM_REPLICAS`), makes the replica apply WAL late
//! (`recovery_min_apply_delay`: a replica that is far away or busy), then runs the same
//! backfill on two identical databases: once free, once throttled at the lag limit, sampling
//! the replica's replay lag (bytes of WAL the primary wrote that the replica has not
//! replayed, measured as the throttle does) every 20 ms. Prints the
//! largest lag and the time of each run, and last `throttled_lag_vs_limit: X`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::domain::Phase;
use crate::local_pg::{LocalPg, ScratchCluster};
use crate::migration::backfill::{self, BackfillState, Direction, Throttle};
use crate::migration::{runner, schema_migrations, state, verify};
use crate::replicas::{current_lsn, replayed_lsn};

#[derive(Debug, Clone)]
pub struct ReplicaBenchOptions {
    /// Users in each of the two databases.
    pub rows: u64,
    /// The throttle's limit (`ZDM_REPLICA_MAX_LAG_BYTES` in the app).
    pub max_lag_bytes: i64,
    /// How late the replica applies WAL.
    pub apply_delay_ms: u64,
    pub batch_size: i32,
}

impl Default for ReplicaBenchOptions {
    fn default() -> Self {
        Self {
            rows: 80_000,
            max_lag_bytes: 4 * 1024 * 1024,
            apply_delay_ms: 1000,
            batch_size: 2000,
        }
    }
}

/// One backfill run as the replica saw it.
#[derive(Debug, Clone)]
pub struct LagRun {
    pub largest_lag_bytes: i64,
    pub secs: f64,
    pub rows_updated: i64,
    /// How many times the backfill found the replica too far behind and waited.
    pub waits: usize,
}

#[derive(Debug, Clone)]
pub struct LagFigures {
    pub without_throttle: LagRun,
    pub with_throttle: LagRun,
}

/// Runs the benchmark on a scratch cluster under `base`, removed afterwards.
pub fn replica_benchmark(
    base: PathBuf,
    opts: &ReplicaBenchOptions,
    mut say: impl FnMut(&str),
) -> Result<LagFigures> {
    say(&format!(
        "starting a scratch primary and a streaming replica in {}...",
        base.display()
    ));
    let mut cluster = ScratchCluster::new(base);
    let primary = cluster.primary().context("starting the scratch primary")?;
    let replica = cluster
        .replica(&primary)
        .context("starting the streaming replica")?;
    delay_replay(&replica, opts.apply_delay_ms)?;
    measure(&primary, &replica, opts, say)
}

/// Makes `replica` apply WAL `ms` milliseconds after the primary wrote it.
pub fn delay_replay(replica: &LocalPg, ms: u64) -> Result<()> {
    let mut conn =
        PgConnection::establish(&replica.url("postgres")).context("connecting to the replica")?;
    conn.batch_execute(&format!(
        "ALTER SYSTEM SET recovery_min_apply_delay = '{ms}ms'"
    ))
    .context("setting the replica's recovery_min_apply_delay")?;
    conn.batch_execute("SELECT pg_reload_conf()")
        .context("reloading the replica's configuration")?;
    Ok(())
}

/// A database `name` on `primary` with `rows` seeded users, in dual_write: ready for the
/// backfill. Returns its URL.
pub fn prepared_database(primary: &LocalPg, name: &str, rows: u64) -> Result<String> {
    primary
        .create_database_if_missing(name)
        .with_context(|| format!("creating the database {name}"))?;
    let url = primary.url(name);
    let mut conn =
        PgConnection::establish(&url).with_context(|| format!("connecting to {name}"))?;
    schema_migrations::run_infrastructure_migrations(&mut conn)
        .map_err(anyhow::Error::from_boxed)
        .with_context(|| format!("migrating {name}"))?;
    crate::tools::seed::seed_users(&mut conn, Phase::Baseline, rows, 5, |_| {})
        .with_context(|| format!("seeding {name}"))?;
    while state::current_phase(&mut conn).context("reading the phase")? < Phase::DualWrite {
        runner::advance(&mut conn, "bench", None)
            .with_context(|| format!("advancing {name} to dual_write"))?;
    }
    // Vacuum now, so that autovacuum does not write WAL of its own during a measured run.
    conn.batch_execute("VACUUM ANALYZE users")
        .with_context(|| format!("vacuuming {name}"))?;
    Ok(url)
}

/// Bytes of WAL the primary has written that the replica has not replayed yet. Measured the
/// way the throttle does (the replica's own `pg_last_wal_replay_lsn()`): the primary's
/// `pg_stat_replication.replay_lsn` is only as fresh as the replica's last status message,
/// which may be seconds old while no WAL flows.
pub struct ReplayLag {
    primary: PgConnection,
    replica: PgConnection,
}

impl ReplayLag {
    pub fn connect(primary: &LocalPg, replica: &LocalPg) -> Result<Self> {
        Ok(Self {
            primary: PgConnection::establish(&primary.url("postgres"))
                .context("connecting to the primary")?,
            replica: PgConnection::establish(&replica.url("postgres"))
                .context("connecting to the replica")?,
        })
    }

    pub fn bytes(&mut self) -> Result<i64> {
        let replayed = replayed_lsn(&mut self.replica)
            .context("reading the replica's replay position")?
            .context("the replica is not replaying")?;
        let written =
            current_lsn(&mut self.primary).context("reading the primary's WAL position")?;
        Ok(written.saturating_sub(replayed) as i64)
    }

    /// Waits (up to a minute) until the replica has replayed to within `bytes`.
    pub fn wait_below(&mut self, bytes: i64) -> Result<()> {
        for _ in 0..600 {
            if self.bytes()? <= bytes {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the replica did not catch up within a minute")
    }
}

/// Runs the backfill of `url` to the end in a thread while sampling the replay lag.
pub fn backfill_measuring_lag(
    url: &str,
    lag: &mut ReplayLag,
    mut throttle: Throttle,
    batch_size: i32,
) -> Result<LagRun> {
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let worker = {
        let (url, done) = (url.to_owned(), done.clone());
        std::thread::spawn(move || -> Result<(backfill::BackfillStatus, usize)> {
            let result = (|| {
                let mut conn =
                    PgConnection::establish(&url).context("connecting for the backfill")?;
                backfill::set_knobs(&mut conn, backfill::Knobs::fixed(batch_size, 0))
                    .context("setting the backfill's knobs")?;
                let mut waits = 0;
                let status =
                    backfill::run_throttled(&mut conn, Direction::Forward, &mut throttle, |s| {
                        waits += usize::from(s.state == BackfillState::Throttled);
                    })
                    .context("running the backfill")?;
                Ok((status, waits))
            })();
            done.store(true, Ordering::Release);
            result
        })
    };
    let mut largest = 0;
    while !done.load(Ordering::Acquire) {
        largest = largest.max(lag.bytes()?);
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    let (status, waits) = worker
        .join()
        .map_err(|_| anyhow!("the backfill thread panicked"))??;
    if status.state != BackfillState::Done {
        bail!("the backfill ended {}", status.state);
    }
    Ok(LagRun {
        largest_lag_bytes: largest,
        secs,
        rows_updated: status.rows_updated,
        waits,
    })
}

/// The two runs, free and throttled, on `primary` and its (slow) `replica`.
pub fn measure(
    primary: &LocalPg,
    replica: &LocalPg,
    opts: &ReplicaBenchOptions,
    mut say: impl FnMut(&str),
) -> Result<LagFigures> {
    let limit = opts.max_lag_bytes;
    say(&format!("seeding two databases of {} users...", opts.rows));
    let free = prepared_database(primary, "zdm_lag_free", opts.rows)?;
    let throttled = prepared_database(primary, "zdm_lag_throttled", opts.rows)?;
    let mut lag = ReplayLag::connect(primary, replica)?;
    lag.wait_below(limit / 4)?;

    say("backfill without the throttle...");
    let without_throttle =
        backfill_measuring_lag(&free, &mut lag, Throttle::none(), opts.batch_size)
            .context("the backfill without the throttle")?;
    // The free run's dead row versions are vacuumed before the next run, not during it: the
    // replica's lag counts every writer's WAL, and the throttle holds back only the backfill.
    PgConnection::establish(&free)
        .context("connecting to vacuum after the free run")?
        .batch_execute("VACUUM users")
        .context("vacuuming after the free run")?;
    lag.wait_below(limit / 4)?;
    say("backfill with the throttle...");
    let with_throttle = backfill_measuring_lag(
        &throttled,
        &mut lag,
        Throttle::new(vec![replica.url("zdm_lag_throttled")], limit),
        opts.batch_size,
    )
    .context("the backfill with the throttle")?;
    for url in [&free, &throttled] {
        let mut conn = PgConnection::establish(url).context("connecting to verify")?;
        let divergent = verify::verify(&mut conn, Phase::DualWrite)
            .context("verifying after the backfill")?
            .divergent;
        if divergent != 0 {
            bail!("{divergent} rows diverge after the backfill");
        }
    }

    let mib = |bytes: i64| bytes as f64 / crate::tools::stats::MIB;
    say(&format!(
        "rows: {} per run, batches of {}, replica applies WAL {} ms late, limit {:.1} MiB",
        opts.rows,
        opts.batch_size,
        opts.apply_delay_ms,
        mib(limit)
    ));
    for (label, run) in [
        ("without the throttle", &without_throttle),
        ("with the throttle", &with_throttle),
    ] {
        say(&format!(
            "{label:<21} {} rows in {:>6.2} s, replica replay lag up to {:>6.1} MiB, waited {} times",
            run.rows_updated,
            run.secs,
            mib(run.largest_lag_bytes),
            run.waits
        ));
    }
    say(&format!(
        "free_lag_vs_limit: {:.2}",
        without_throttle.largest_lag_bytes as f64 / limit as f64
    ));
    say(&format!(
        "throttled_lag_vs_limit: {:.2}",
        with_throttle.largest_lag_bytes as f64 / limit as f64
    ));
    Ok(LagFigures {
        without_throttle,
        with_throttle,
    })
}
