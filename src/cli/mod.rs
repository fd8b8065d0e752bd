//! The `zdm` command line: `serve` (the default), `migrate`, `backfill`, `verify`, `demo`,
//! `bench`, `seed`, `db`: one file per subcommand, each with its `clap` arguments and the
//! `run` that does it. The CLI runs the same gates and runner as the admin API, on its own
//! connection.
//!
//! Here: the commands' list, what they share (the connection, the progress bar, the notice
//! of a private PostgreSQL left running) and the exit code.

mod backfill;
mod bench;
mod db;
mod demo;
mod migrate;
mod seed;
mod serve;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use diesel::PgConnection;
use indicatif::{ProgressBar, ProgressStyle};

use self::backfill::BackfillArgs;
use self::bench::BenchWhat;
use self::db::DbAction;
use self::demo::DemoArgs;
use self::migrate::MigrateAction;
use self::seed::SeedArgs;
use self::serve::ServeArgs;
use crate::config::Config;
use crate::migration::control::BackfillSettings;
use crate::startup::{self, StartupError};

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
    /// Measure: `bench backfill`, `bench http`, `bench replicas` or `bench pacing` (see `zdm bench --help`).
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Bulk-insert realistic users.
    Seed(SeedArgs),
    /// The private PostgreSQL (used while DATABASE_URL is unset): `db stop` stops it.
    Db {
        #[command(subcommand)]
        action: DbAction,
    },
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
            Command::Verify => verify::run_verify(&config),
            Command::Demo(args) => args.run(&config),
            Command::Bench { what } => what.run(&config),
            Command::Seed(args) => args.run(&config),
            Command::Db { action } => action.run(&config),
        }
    }
}

/// An error of the tools (anyhow) with its whole chain of causes: converted into a boxed
/// error as it is, it would show only its outermost context.
fn with_causes(err: anyhow::Error) -> StartupError {
    format!("{err:#}").into()
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

/// Connects to the migrated database (see `Connected`); a private PostgreSQL this starts is
/// left running, and the command says so.
fn connect(config: &Config) -> Result<Connected, StartupError> {
    let database = startup::prepare_database(config)?;
    say_started_and_left_running(&database.private);
    let settings = config.backfill_settings(database.all_replica_urls(config));
    let direct = (database.session_url != database.url).then_some(database.session_url.as_str());
    Ok(Connected {
        conn: crate::db::session(&database.session_url)?,
        connections: crate::db::Connections::new(&database.url, direct),
        url: database.session_url,
        settings,
    })
}

/// Says which of the private clusters `private` this command started: it leaves them
/// running, for the commands after it.
fn say_started_and_left_running(private: &[crate::local_pg::LocalPg]) {
    let started: Vec<_> = private
        .iter()
        .filter(|pg| pg.started_here)
        .cloned()
        .collect();
    startup::say_left_running(&started, "was started by this command");
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
