//! `zdm bench backfill|http|replicas|pacing`: the measurements, each on a scratch database
//! or cluster of its own.

use clap::{Args, Subcommand};

use super::{say_started_and_left_running, with_causes};
use crate::config::Config;
use crate::migration::backfill;
use crate::startup::StartupError;
use crate::tools::bench;

/// The server to make the scratch database on: the app database's; a private PostgreSQL this
/// starts is left running, and the command says so.
fn database_url(config: &Config) -> Result<String, StartupError> {
    let database = config.resolve_database()?;
    say_started_and_left_running(&database.private);
    Ok(database.url)
}

#[derive(Debug, Subcommand)]
pub(super) enum BenchWhat {
    /// The zdm backfill against one monolithic UPDATE on two identical tables, in a scratch
    /// database on the same server (dropped afterwards).
    Backfill(BenchBackfillArgs),
    /// The HTTP serving path (one `zdm serve` under a built-in load client) against
    /// pgbench's point select, in a scratch database. Build with --release for real figures.
    Http(BenchHttpArgs),
    /// The backfill's effect on a streaming replica that applies WAL late, without and with
    /// the lag throttle, on a scratch primary + replica of its own (removed afterwards).
    Replicas(BenchReplicasArgs),
    /// What the backfill costs the users under a relative p99 budget: auto workers against
    /// one worker, in interleaved `zdm demo --quick` runs (about a minute each; build with
    /// --release for real figures).
    Pacing(BenchPacingArgs),
}

impl BenchWhat {
    pub(super) fn run(self, config: &Config) -> Result<(), StartupError> {
        match self {
            BenchWhat::Backfill(args) => args.run(config),
            BenchWhat::Http(args) => args.run(config),
            BenchWhat::Replicas(args) => args.run(config),
            BenchWhat::Pacing(args) => args.run(config),
        }
    }
}

#[derive(Debug, Args)]
pub(super) struct BenchBackfillArgs {
    /// Users in each table.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    rows: u64,
    /// Rows in the backfill's first batch (and in every one with --batch-target-ms 0).
    #[arg(long, default_value_t = backfill::DEFAULT_BATCH_SIZE, value_parser = clap::value_parser!(i32).range(1..=i64::from(backfill::MAX_BATCH_SIZE)))]
    batch_size: i32,
    /// The batch time the backfill sizes its batches to, in milliseconds (0: fixed size).
    #[arg(long, default_value_t = backfill::DEFAULT_BATCH_TARGET_MS, value_parser = clap::value_parser!(i32).range(0..=i64::from(backfill::MAX_BATCH_TARGET_MS)))]
    batch_target_ms: i32,
    /// Rounds, each filling a fresh copy once each way; the order alternates (single
    /// UPDATE first, then the backfill first), so an even number cancels steady drift.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Leave autovacuum on for both tables during the fills. It may then run on the
    /// backfill's table while the backfill's batches commit (never on the single
    /// UPDATE's, which commits once), inside the backfill's timed fill.
    #[arg(long)]
    autovacuum: bool,
    /// Also fill a copy of the first M users both ways in every round, and print each
    /// way's rate on all rows against its rate on those M (measured in the same run, so
    /// the machine's drift between runs does not enter it).
    #[arg(long, value_name = "M", value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    small_rows: Option<u64>,
    /// Drop the unique index on lower(email) from both tables before the fills, to see
    /// what its upkeep costs each row (every filled row gets a new version, and so a new
    /// entry in every index).
    #[arg(long)]
    without_email_index: bool,
    /// Workers of the backfill (each on ranges of its own, one connection each); with
    /// more than one the report ends with `parallel_backfill_vs_single_update`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=i64::from(backfill::MAX_WORKERS)))]
    workers: i32,
}

impl BenchBackfillArgs {
    fn run(self, config: &Config) -> Result<(), StartupError> {
        let url = database_url(config)?;
        let options = bench::backfill::BackfillBenchOptions {
            rows: self.rows,
            rounds: self.rounds,
            knobs: backfill::Knobs {
                batch_size: Some(self.batch_size),
                sleep_ms: Some(0),
                batch_target_ms: Some(self.batch_target_ms),
                workers: Some(backfill::Workers::Fixed(self.workers)),
                triggers: None,
            },
            autovacuum: self.autovacuum,
            small_rows: self.small_rows,
            without_email_index: self.without_email_index,
        };
        bench::backfill::backfill_benchmark(&url, options, |line| println!("{line}"))
            .map(drop)
            .map_err(with_causes)
    }
}

#[derive(Debug, Args)]
pub(super) struct BenchHttpArgs {
    /// Users seeded.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    rows: u64,
    /// Concurrent keep-alive clients (and pgbench clients).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=512))]
    concurrency: u64,
    /// Seconds per scenario.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// The server's requests and pgbench both through a real PgBouncer in transaction mode
    /// (`DATABASE_URL` the pooler, `DIRECT_DATABASE_URL` the database).
    #[arg(long)]
    pooler: bool,
    /// The server direct, but sending its statements as it does behind a pooler: unnamed,
    /// planned afresh each time (no statement cache, no generic plan), to measure that cost
    /// apart from the pooler's hop.
    #[arg(long, conflicts_with = "pooler")]
    unnamed_statements: bool,
}

impl BenchHttpArgs {
    fn run(self, config: &Config) -> Result<(), StartupError> {
        let url = database_url(config)?;
        let opts = bench::http::HttpBenchOptions {
            rows: self.rows,
            concurrency: self.concurrency as usize,
            secs: self.secs.max(1.0),
            pooler: self.pooler,
            unnamed_statements: self.unnamed_statements,
        };
        actix_web::rt::System::new()
            .block_on(bench::http::http_benchmark(&url, opts, |line| {
                println!("{line}")
            }))
            .map(drop)
            .map_err(with_causes)
    }
}

#[derive(Debug, Args)]
pub(super) struct BenchReplicasArgs {
    /// Users in each of the two databases.
    #[arg(long, default_value_t = 80_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    rows: u64,
    /// The throttle's replay-lag limit in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024, value_parser = clap::value_parser!(i64).range(1..))]
    max_lag_bytes: i64,
    /// How late the replica applies WAL, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    apply_delay_ms: u64,
    /// Rows per backfill batch.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(i32).range(1..=1_000_000))]
    batch_size: i32,
}

impl BenchReplicasArgs {
    fn run(self, config: &Config) -> Result<(), StartupError> {
        let opts = bench::replicas::ReplicaBenchOptions {
            rows: self.rows,
            max_lag_bytes: self.max_lag_bytes,
            apply_delay_ms: self.apply_delay_ms,
            batch_size: self.batch_size,
        };
        bench::replicas::replica_benchmark(config.data_dir.join("bench-replicas"), &opts, |line| {
            println!("{line}")
        })
        .map(drop)
        .map_err(with_causes)
    }
}

#[derive(Debug, Args)]
pub(super) struct BenchPacingArgs {
    /// Runs of each side (auto workers under each rule, one worker), in ABBA order (an even
    /// number balances it).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=50))]
    runs: u32,
    /// Users the demo seeds.
    #[arg(long, default_value_t = 600_000, value_parser = clap::value_parser!(u64).range(100..=100_000_000))]
    rows: u64,
    /// The relative p99 budget of every run (`ZDM_BACKFILL_MAX_P99_RATIO`), above 1 and at
    /// most 100.
    #[arg(long, default_value_t = 1.5)]
    ratio: f64,
    /// The auto rules measured against one worker, comma-separated: zone, aimd.
    #[arg(long, value_delimiter = ',', default_value = "zone")]
    rules: Vec<backfill::AutoRule>,
    /// The batch time the backfill sizes its batches to, in milliseconds.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(i32).range(1..=i64::from(backfill::MAX_BATCH_TARGET_MS)))]
    batch_target_ms: i32,
    /// Where each run's summary (N-side.json), output (N-side.log) and report go; default:
    /// bench-pacing in the data folder.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

impl BenchPacingArgs {
    fn run(self, config: &Config) -> Result<(), StartupError> {
        if config.backfill_max_p99_ms.is_some() {
            return Err(
                "ZDM_BACKFILL_MAX_P99_MS is set: every run would refuse it beside the ratio it runs under; unset it (in the environment and .env)"
                    .into(),
            );
        }
        let opts = bench::pacing::PacingBenchOptions {
            runs: self.runs as usize,
            rows: self.rows,
            ratio: self.ratio,
            rules: self.rules,
            batch_target_ms: self.batch_target_ms,
            dir: self
                .out
                .unwrap_or_else(|| config.data_dir.join("bench-pacing")),
        };
        bench::pacing::pacing_benchmark(&opts, |line| println!("{line}"))
            .map(drop)
            .map_err(with_causes)
    }
}
