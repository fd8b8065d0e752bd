//! `zdm demo`: the proof under live traffic, with the options that change the run.

mod chaos;

use clap::Args;

use super::{say_started_and_left_running, with_causes};
use crate::config::{Config, MAX_PRIVATE_REPLICAS};
use crate::migration::backfill;
use crate::startup::StartupError;
use crate::tools::demo::{self, DemoOptions, Fault};

#[derive(Debug, Args)]
pub(super) struct DemoArgs {
    /// A small run that finishes in about a minute.
    #[arg(long)]
    quick: bool,
    /// Run the one-step migration a hurried team would ship instead, to see what it breaks.
    #[arg(long)]
    naive: bool,
    /// After the contract, undo it under the same traffic and walk back to read_new.
    #[arg(long, conflicts_with = "naive")]
    undo: bool,
    /// Users seeded before the traffic starts.
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=100_000_000))]
    rows: Option<u64>,
    /// Concurrent clients.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=256))]
    clients: Option<u64>,
    /// Seconds of traffic in each phase.
    #[arg(long)]
    phase_secs: Option<f64>,
    /// Share of requests that write, in percent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
    write_percent: Option<u32>,
    /// Write the summary as JSON to this file.
    #[arg(long)]
    json_out: Option<std::path::PathBuf>,
    /// Where the HTML report goes (default: the data folder's reports/).
    #[arg(long)]
    report_dir: Option<std::path::PathBuf>,
    /// Streaming replicas of the private PostgreSQL to read from and throttle on.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=MAX_PRIVATE_REPLICAS as u64))]
    replicas: u64,
    /// Put a real PgBouncer in transaction mode between the instances and the database (found
    /// on PATH or in /usr/sbin; Debian's package `pgbouncer`), with fewer server connections
    /// than the instances' pools together; the steps, the backfill and verify go direct.
    #[arg(long)]
    pooler: bool,
    /// Run on a primary and a synchronous streaming standby of the demo's own (removed
    /// afterwards), the instances connected to both through a multi-host URL; mid-backfill the
    /// primary is killed (SIGKILL) and the standby promoted. 503s while no primary answers
    /// are counted apart; no acknowledged write may be lost.
    #[arg(long, conflicts_with_all = ["naive", "replicas"])]
    failover: bool,
    /// With --failover: an asynchronous standby instead, to measure what PostgreSQL allows
    /// to be lost there (acknowledged writes within the replication lag).
    #[arg(long, requires = "failover")]
    async_standby: bool,
    /// The backfill's sleep between batches, in ms (default: 100 quick, 50 full); with
    /// `ZDM_BACKFILL_MAX_P99_MS` set, 0 leaves the pacing to the latency throttle.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=i64::from(backfill::MAX_SLEEP_MS)))]
    backfill_sleep_ms: Option<i32>,
    /// Rows in each of the backfill's batches (default: 1000 quick, 2000 full); with
    /// --backfill-batch-target-ms, in its first.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=i64::from(backfill::MAX_BATCH_SIZE)))]
    backfill_batch: Option<i32>,
    /// Size the backfill's batches toward this transaction time, in ms (default: fixed
    /// batches of --backfill-batch rows).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=i64::from(backfill::MAX_BATCH_TARGET_MS)))]
    backfill_batch_target_ms: Option<i32>,
    /// The backfill's workers (1-16 or `auto`; auto needs ZDM_BACKFILL_MAX_P99_MS or
    /// ZDM_BACKFILL_MAX_P99_RATIO).
    #[arg(long, value_name = "N|auto")]
    backfill_workers: Option<backfill::Workers>,
    /// Break the app on purpose, to see the audit catch it (the run then fails):
    /// `lose-writes` answers some updates as saved and rolls them back, `lagging-v1` makes
    /// v1 writes skip the new columns.
    #[arg(long, value_enum)]
    fault: Option<Fault>,
    /// Chaos: the walk (with rollbacks and re-advances) and the faults drawn from --seed, on
    /// a PostgreSQL of the run's own (removed afterwards) that faults restart and kill. A 503
    /// while a fault lasts is counted apart; anything else the audit finds fails the run.
    #[arg(long, conflicts_with_all = ["naive", "undo", "async_standby"])]
    chaos: bool,
    /// The chaos run's seed (the same seed draws the same schedule on any machine).
    #[arg(long, requires = "chaos", default_value_t = 1)]
    seed: u64,
    /// Chaos runs of seeds --seed … --seed + N − 1, one line each and a summary; JSON with
    /// --json-out.
    #[arg(long, requires = "chaos", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    runs: Option<u64>,
    /// Write the chaos schedule as JSON to this file before the run starts.
    #[arg(long, requires = "chaos", conflicts_with = "runs")]
    schedule_out: Option<std::path::PathBuf>,
    /// Replay the chaos schedule of this file (written by --schedule-out) instead of drawing
    /// one from --seed.
    #[arg(long, requires = "chaos", conflicts_with = "runs")]
    schedule: Option<std::path::PathBuf>,
    /// With --chaos: the same traffic and faults with no migration, to show that the audit
    /// finds nothing where there is nothing to find.
    #[arg(long, requires = "chaos")]
    control: bool,
}

impl DemoArgs {
    pub(super) fn run(self, config: &Config) -> Result<(), StartupError> {
        if self.chaos {
            return self.run_chaos(config);
        }
        if self.replicas > 0 && config.database_url.is_some() {
            return Err(
                "--replicas starts replicas of the private PostgreSQL: unset DATABASE_URL".into(),
            );
        }
        // With --failover, a primary and a standby of the demo's own, removed when the run is
        // over; else the private set-up as `zdm serve` makes it, with the replicas asked for.
        let failover = self
            .failover
            .then(|| {
                demo::failover::Failover::start(
                    &config.data_dir.join("demo-failover"),
                    !self.async_standby,
                )
            })
            .transpose()
            .map_err(with_causes)?;
        let (url, replica_servers, private) = match &failover {
            Some((_, _, url)) => (url.clone(), Vec::new(), Vec::new()),
            None => {
                let database = Config {
                    private_replicas: self.replicas as usize,
                    ..config.clone()
                }
                .resolve_database()?;
                (database.url, database.replica_urls, database.private)
            }
        };
        let mut opts = self.options(config);
        opts.replica_servers = replica_servers;
        opts.failover = failover.as_ref().map(|(_, failover, _)| failover.clone());
        let report_dir = opts.report_dir.clone();
        let summary = actix_web::rt::System::new()
            .block_on(demo::run(&url, opts))
            .map_err(with_causes);
        if let Ok(summary) = &summary {
            print!("{}", demo::report::table(summary));
            println!(
                "report: {}",
                demo::report_file(&report_dir, summary).display()
            );
        }
        say_started_and_left_running(&private);
        let summary = summary?;
        if summary.mode == "zdm" && !summary.passed {
            return Err(format!(
                "zero downtime did not hold: {} failed request(s), {} answered 503, {} stale read(s), {} lost write(s), {} divergent row(s), {} untouched row(s) altered{} (see the report)",
                summary.failed_requests,
                summary.unavailable_requests,
                summary.stale_reads,
                summary.lost_writes,
                summary.divergent_rows,
                summary.untouched_rows_altered,
                if summary.walk_error.is_some() { ", and the migration stopped" } else { "" }
            )
            .into());
        }
        Ok(())
    }

    /// The demo's options: the quick or the full run's, with what the flags change, and the
    /// fault (the replicas are the caller's to start).
    pub(super) fn options(self, config: &Config) -> DemoOptions {
        let dir = self.report_dir.unwrap_or_else(|| config.report_dir());
        let mut opts = if self.quick {
            DemoOptions::quick(dir)
        } else {
            DemoOptions::full(dir)
        };
        opts.naive = self.naive;
        opts.undo = self.undo;
        opts.rows = self.rows.unwrap_or(opts.rows);
        opts.clients = self.clients.map_or(opts.clients, |c| c as usize);
        opts.phase_secs = self
            .phase_secs
            .filter(|s| *s > 0.0)
            .unwrap_or(opts.phase_secs);
        opts.write_percent = self.write_percent.unwrap_or(opts.write_percent);
        opts.json_out = self.json_out;
        opts.backfill_sleep_ms = self.backfill_sleep_ms.unwrap_or(opts.backfill_sleep_ms);
        opts.backfill_batch = self.backfill_batch.unwrap_or(opts.backfill_batch);
        opts.backfill_batch_target_ms = self.backfill_batch_target_ms;
        opts.backfill_workers = self.backfill_workers;
        opts.pooler = self.pooler;
        opts.fault = self.fault;
        opts
    }
}
