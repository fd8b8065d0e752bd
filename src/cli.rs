//! The `zdm` command line: `serve` (the default), `migrate`, `backfill`, `verify`, `demo`,
//! `bench`, `seed`: one `clap::Args` struct per subcommand, whose `run` does it. The CLI runs
//! the same gates and runner as the admin API, on its own connection.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use diesel::{Connection, PgConnection};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::migration::backfill;
use crate::migration::control::{self, BackfillSettings};
use crate::migration::runner::Consent;
use crate::migration::{Phase, state};
use crate::startup::{self, StartupError};
use crate::tools::bench;
use crate::tools::demo::{self, DemoOptions, Fault};

/// The name this process uses in the migration history.
const CLI_ACTOR: &str = "cli";

#[derive(Debug, Parser)]
#[command(
    name = "zdm",
    version,
    about = "A zero-downtime PostgreSQL schema migration you can run, watch and measure."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the web app and the API (the default).
    Serve(ServeArgs),
    /// Show, advance or roll back the migration's phase.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
    },
    /// Run (or resume) the backfill to the end, with a progress bar.
    Backfill(BackfillArgs),
    /// Count the rows that break the current phase's invariant.
    Verify,
    /// Prove zero downtime: two instances, live traffic, the whole migration, faults, audit.
    Demo(DemoArgs),
    /// Measure: `bench backfill`, `bench http` or `bench replicas` (see `zdm bench --help`).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Bulk-insert realistic users.
    Seed(SeedArgs),
}

pub fn main() -> ExitCode {
    // A refused step is printed once, as the error below, not also as its history's log line.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(format!(
        "info,actix_server=warn,{}=off",
        crate::migration::runner::HISTORY_LOG
    )))
    .init();
    let cli = Cli::parse();
    let result = Config::from_env()
        .map_err(StartupError::from)
        .and_then(|config| {
            cli.command
                .unwrap_or(Command::Serve(ServeArgs::default()))
                .run(config)
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

impl Command {
    fn run(self, config: Config) -> Result<(), StartupError> {
        match self {
            Command::Serve(args) => actix_web::rt::System::new().block_on(startup::serve(
                config,
                crate::faults::Faults::injected(&args.inject_fault),
            )),
            Command::Migrate { action } => action.run(&config),
            Command::Backfill(args) => args.run(&config),
            Command::Verify => run_verify(&config),
            Command::Demo(args) => args.run(&config),
            Command::Bench { what } => what.run(&config),
            Command::Seed(args) => args.run(&config),
        }
    }
}

#[derive(Debug, Default, Args)]
struct ServeArgs {
    /// Break this instance on purpose (`lagging-v1`, `lose-writes=N`): only `zdm demo --fault`
    /// passes it, to the instances it starts, so that its audit has something to catch. Hidden
    /// because no one else should: the instance says so loudly at start.
    #[arg(long, hide = true, value_name = "FAULT")]
    inject_fault: Vec<crate::faults::InjectedFault>,
}

/// An error of the tools (anyhow) with its whole chain of causes: converted into a boxed
/// error as it is, it would show only its outermost context.
fn with_causes(err: anyhow::Error) -> StartupError {
    format!("{err:#}").into()
}

#[derive(Debug, Subcommand)]
enum MigrateAction {
    /// The phase, the gates of the next step, the backfill, verify, instances and history.
    Status,
    /// Advance one phase if its gates are met.
    Advance {
        /// Only if the phase is still this one (as `migrate status` showed it): a command
        /// repeated after its step went through takes no second step.
        #[arg(long, value_name = "PHASE")]
        from: Option<Phase>,
        /// Required to contract: `--confirm users.full_name` (the column dropped).
        #[arg(long)]
        confirm: Option<String>,
        /// Contract although pg_stat_statements cannot tell whether a client zdm does not run
        /// still uses full_name (recorded in the history).
        #[arg(long)]
        without_client_check: bool,
    },
    /// Roll back one phase where the data allows.
    Rollback {
        /// Only if the phase is still this one, as for `advance`.
        #[arg(long, value_name = "PHASE")]
        from: Option<Phase>,
    },
}

impl MigrateAction {
    /// Does the action, then prints where the migration stands.
    fn run(self, config: &Config) -> Result<(), StartupError> {
        let Connected {
            mut conn,
            settings,
            connections,
            ..
        } = connect(config)?;
        match self {
            MigrateAction::Status => {}
            MigrateAction::Advance {
                from,
                confirm,
                without_client_check,
            } => {
                let consent = Consent {
                    confirm: confirm.as_deref(),
                    without_client_check,
                };
                let t =
                    control::advance(&mut conn, CLI_ACTOR, from, &consent).map_err(in_cli_words)?;
                println!("advanced {} → {}", t.from, t.to);
            }
            MigrateAction::Rollback { from } => {
                let t = control::rollback(&mut conn, CLI_ACTOR, from, &settings)?;
                println!("rolled back {} → {}", t.from, t.to);
            }
        }
        print_status(&mut conn, connections)
    }
}

/// A refused advance as the command line says it: the confirmation gate speaks the
/// dashboard's words (type `users.full_name` into its field), where here it is a flag.
fn in_cli_words(err: crate::migration::runner::RunError) -> StartupError {
    match err {
        crate::migration::runner::RunError::Refused(why) => why
            .replace(
                "type `users.full_name` to confirm",
                "pass --confirm users.full_name to confirm",
            )
            .into(),
        other => other.into(),
    }
}

fn print_status(
    conn: &mut PgConnection,
    connections: crate::db::Connections,
) -> Result<(), StartupError> {
    let status = control::status(conn)?;
    println!(
        "requests: {}{}; migrations, steps, backfill and verify: {}",
        connections.requests,
        if connections.pooled {
            " (a transaction-mode pooler)"
        } else {
            ""
        },
        connections.sessions
    );
    println!(
        "phase: {} (since {})",
        status.phase,
        status.phase_since.format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!("       {}", status.phase.summary());
    println!("phase migrations (as `diesel migration list` shows them):");
    for m in &status.migrations {
        println!("  [{}] {}", if m.applied { "X" } else { " " }, m.name);
    }
    if let Some(next) = &status.next {
        println!("next:  {}", next.phase);
        for gate in &next.gates {
            println!(
                "  [{}] {}: {}",
                if gate.met { "x" } else { " " },
                gate.name,
                gate.detail
            );
        }
    }
    let b = &status.backfill.status;
    println!(
        "backfill: {} ({}), {}/{} rows, {} filled, {:.0} rows/s",
        b.state, b.direction, b.rows_done, b.rows_total, b.rows_updated, status.backfill.rows_per_s
    );
    println!(
        "  workers: {} (set: {}){}",
        b.workers,
        b.workers_setting(),
        b.workers_reason
            .as_deref()
            .map_or(String::new(), |why| format!(": {why}"))
    );
    for r in status.backfill.ranges.iter().filter(|r| !r.is_done()) {
        println!(
            "  range {}: ids {}..={} at {} ({:.0} %){}",
            r.range_no,
            r.start_id + 1,
            r.end_id,
            r.last_id,
            r.percent(),
            r.worker.map_or(String::new(), |w| format!(", worker {w}"))
        );
    }
    match &status.verify {
        Some(v) => println!(
            "verify: {} divergent in {} at {}{}",
            v.divergent,
            v.phase,
            v.checked_at.format("%H:%M:%S"),
            if v.sample_ids.is_empty() {
                String::new()
            } else {
                format!(", e.g. ids {:?}", v.sample_ids)
            }
        ),
        None => println!("verify: never run"),
    }
    println!("instances: {}", status.instances.len());
    for i in &status.instances {
        println!(
            "  {} applied {} (seen {})",
            i.id,
            i.applied_phase,
            i.last_seen.format("%H:%M:%S")
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
struct BackfillArgs {
    /// Rows per batch (each batch is one short transaction).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=i64::from(backfill::MAX_BATCH_SIZE)))]
    batch_size: Option<i32>,
    /// Pause between batches, in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=i64::from(backfill::MAX_SLEEP_MS)))]
    sleep_ms: Option<i32>,
    /// Resize batches after each one toward this transaction time, in milliseconds
    /// (0: keep --batch-size; a --batch-size alone also turns it off).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..=i64::from(backfill::MAX_BATCH_TARGET_MS)))]
    batch_target_ms: Option<i32>,
    /// Workers filling disjoint key ranges at once, one connection each (1-16), or `auto`:
    /// one more while the requests' p99 stays within ZDM_BACKFILL_MAX_P99_MS and the
    /// replicas' lag within its limit, half as many when not.
    #[arg(long, value_name = "N|auto")]
    workers: Option<backfill::Workers>,
}

impl BackfillArgs {
    fn run(self, config: &Config) -> Result<(), StartupError> {
        let knobs = backfill::Knobs {
            batch_size: self.batch_size,
            sleep_ms: self.sleep_ms,
            batch_target_ms: self.batch_target_ms,
            workers: self.workers,
        };
        let Connected {
            conn,
            url,
            settings,
            ..
        } = connect(config)?;
        let bar = progress_bar(0, "backfill")?;
        let done = control::run_backfill(conn, &url, &settings, knobs, |s| {
            bar.set_length(s.rows_total.max(0) as u64);
            bar.set_position(s.rows_done.max(0) as u64);
            bar.set_message(format!("· {} worker(s)", s.workers));
        })?;
        bar.finish_and_clear();
        println!(
            "backfill {}: {} rows scanned, {} filled, {} batches, {:.0} rows/s, {} worker(s) at the end",
            done.state,
            done.rows_done,
            done.rows_updated,
            done.batches,
            done.rows_per_s(),
            done.workers
        );
        Ok(())
    }
}

fn run_verify(config: &Config) -> Result<(), StartupError> {
    let (phase, result) = control::verify_now(&mut connect(config)?.conn)?;
    println!("verify ({phase}): {} divergent row(s)", result.divergent);
    if !result.sample_ids.is_empty() {
        println!("  e.g. ids {:?}", result.sample_ids);
    }
    Ok(())
}

#[derive(Debug, Args)]
struct DemoArgs {
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
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=4))]
    replicas: u64,
    /// Put a real PgBouncer in transaction mode between the instances and the database (found
    /// on PATH or in /usr/sbin; Debian's package `pgbouncer`), with fewer server connections
    /// than the instances' pools together; the steps, the backfill and verify go direct.
    #[arg(long)]
    pooler: bool,
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
    /// The backfill's workers (1-16 or `auto`; auto needs ZDM_BACKFILL_MAX_P99_MS).
    #[arg(long, value_name = "N|auto")]
    backfill_workers: Option<backfill::Workers>,
    /// Break the app on purpose, to see the audit catch it (the run then fails):
    /// `lose-writes` answers some updates as saved and rolls them back, `lagging-v1` makes
    /// v1 writes skip the new columns.
    #[arg(long, value_enum)]
    fault: Option<Fault>,
}

impl DemoArgs {
    fn run(self, config: &Config) -> Result<(), StartupError> {
        let opts = self.options(config)?;
        let url = config.resolve_database_url()?;
        let report_dir = opts.report_dir.clone();
        let summary = actix_web::rt::System::new()
            .block_on(demo::run(&url, opts))
            .map_err(with_causes)?;
        print!("{}", demo::report::table(&summary));
        println!(
            "report: {}",
            demo::report_file(&report_dir, &summary).display()
        );
        if summary.mode == "zdm" && !summary.passed {
            return Err(format!(
                "zero downtime did not hold: {} failed request(s), {} stale read(s), {} lost write(s), {} divergent row(s), {} untouched row(s) altered{} (see the report)",
                summary.failed_requests,
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

    /// The demo's options: the quick or the full run's, with what the flags change, the
    /// replicas started, and the fault.
    fn options(self, config: &Config) -> Result<DemoOptions, StartupError> {
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
        if self.replicas > 0 {
            if config.database_url.is_some() {
                return Err(
                    "--replicas starts replicas of the private PostgreSQL: unset DATABASE_URL"
                        .into(),
                );
            }
            let primary = crate::local_pg::LocalPg::ensure_running(&config.data_dir)?;
            for index in 1..=self.replicas as usize {
                opts.replica_servers
                    .push(primary.ensure_replica(index)?.url("postgres"));
            }
        }
        opts.fault = self.fault;
        Ok(opts)
    }
}

#[derive(Debug, Subcommand)]
enum BenchWhat {
    /// The zdm backfill against one monolithic UPDATE on two identical tables, in a scratch
    /// database on the same server (dropped afterwards).
    Backfill(BenchBackfillArgs),
    /// The HTTP serving path (one `zdm serve` under a built-in load client) against
    /// pgbench's point select, in a scratch database. Build with --release for real figures.
    Http(BenchHttpArgs),
    /// The backfill's effect on a streaming replica that applies WAL late, without and with
    /// the lag throttle, on a scratch primary + replica of its own (removed afterwards).
    Replicas(BenchReplicasArgs),
}

impl BenchWhat {
    fn run(self, config: &Config) -> Result<(), StartupError> {
        match self {
            BenchWhat::Backfill(args) => args.run(config),
            BenchWhat::Http(args) => args.run(config),
            BenchWhat::Replicas(args) => args.run(config),
        }
    }
}

#[derive(Debug, Args)]
struct BenchBackfillArgs {
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
        let url = config.resolve_database_url()?;
        let options = bench::BackfillBenchOptions {
            rows: self.rows,
            rounds: self.rounds,
            knobs: backfill::Knobs {
                batch_size: Some(self.batch_size),
                sleep_ms: Some(0),
                batch_target_ms: Some(self.batch_target_ms),
                workers: Some(backfill::Workers::Fixed(self.workers)),
            },
            autovacuum: self.autovacuum,
            small_rows: self.small_rows,
            without_email_index: self.without_email_index,
        };
        bench::backfill_benchmark(&url, options, |line| println!("{line}"))
            .map(drop)
            .map_err(with_causes)
    }
}

#[derive(Debug, Args)]
struct BenchHttpArgs {
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
}

impl BenchHttpArgs {
    fn run(self, config: &Config) -> Result<(), StartupError> {
        let url = config.resolve_database_url()?;
        let opts = bench::http::HttpBenchOptions {
            rows: self.rows,
            concurrency: self.concurrency as usize,
            secs: self.secs.max(1.0),
            pooler: self.pooler,
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
struct BenchReplicasArgs {
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
struct SeedArgs {
    /// How many users to insert.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    users: u64,
    /// Seed of the name generator (same seed, same names); random by default.
    #[arg(long)]
    rng_seed: Option<u64>,
}

impl SeedArgs {
    fn run(self, config: &Config) -> Result<(), StartupError> {
        let mut conn = connect(config)?.conn;
        let phase = state::current_phase(&mut conn)?;
        let bar = progress_bar(self.users, "seeding")?;
        let started = Instant::now();
        let seed = self.rng_seed.unwrap_or_else(|| fastrand::u64(..));
        let done = crate::tools::seed::seed_users(&mut conn, phase, self.users, seed, |n| {
            bar.set_position(n)
        })
        .map_err(with_causes)?;
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "seeded {done} users in {secs:.1} s ({:.0} rows/s)",
            done as f64 / secs.max(f64::EPSILON)
        );
        Ok(())
    }
}

/// The migrated database, as the CLI reaches it: a connection of its own, its URL (for a
/// backfill that reconnects), and what a backfill it runs waits for (the configured replicas
/// and those of the private set-up, the requests' p99) and how long it rides out a lost
/// database.
struct Connected {
    conn: PgConnection,
    url: String,
    settings: BackfillSettings,
    connections: crate::db::Connections,
}

fn connect(config: &Config) -> Result<Connected, StartupError> {
    let database = startup::prepare_database(config)?;
    let settings = config.backfill_settings(database.all_replica_urls(config));
    let direct = (database.session_url != database.url).then_some(database.session_url.as_str());
    Ok(Connected {
        conn: PgConnection::establish(&database.session_url)?,
        connections: crate::db::Connections::new(&database.url, direct),
        url: database.session_url,
        settings,
    })
}

fn progress_bar(total: u64, what: &str) -> Result<ProgressBar, StartupError> {
    Ok(ProgressBar::new(total).with_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} [{{bar:40}}] {{human_pos}}/{{human_len}} rows · {{per_sec}} · ETA {{eta}} {{msg}}"
        ))?
        .progress_chars("=> "),
    ))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    #[test]
    fn the_help_names_every_bench_subcommand() {
        let mut cli = Cli::command();
        let help = cli.render_help().to_string();
        let bench_line = help
            .lines()
            .find(|line| line.trim_start().starts_with("bench "))
            .unwrap_or_else(|| panic!("no bench line in {help}"));
        let bench = cli.find_subcommand("bench").expect("a bench subcommand");
        for sub in bench.get_subcommands().filter(|s| s.get_name() != "help") {
            assert!(bench_line.contains(sub.get_name()), "{bench_line}");
        }
    }
}
