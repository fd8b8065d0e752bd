//! The `zdm` command line: `serve` (the default) and `seed`.

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::Config;
use crate::startup::{self, StartupError};

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
    Serve,
    /// Bulk-insert realistic users.
    Seed {
        /// How many users to insert.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
        users: u64,
        /// Seed of the name generator (same seed, same names); random by default.
        #[arg(long)]
        rng_seed: Option<u64>,
    },
}

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(
        env_logger::Env::default().default_filter_or("info,actix_server=warn"),
    )
    .init();
    let cli = Cli::parse();
    let result = Config::from_env()
        .map_err(StartupError::from)
        .and_then(|config| match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => actix_web::rt::System::new().block_on(startup::serve(config)),
            Command::Seed { users, rng_seed } => seed(&config, users, rng_seed),
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn seed(config: &Config, users: u64, rng_seed: Option<u64>) -> Result<(), StartupError> {
    let pool = startup::prepare_database(config)?;
    let mut conn = pool.get()?;
    let bar = ProgressBar::new(users).with_style(
        ProgressStyle::with_template(
            "{spinner} seeding [{bar:40}] {human_pos}/{human_len} users · {per_sec} · ETA {eta}",
        )?
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let done = crate::seed::seed_users(
        &mut conn,
        users,
        rng_seed.unwrap_or_else(|| fastrand::u64(..)),
        |n| bar.set_position(n),
    )?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeded {done} users in {secs:.1} s ({:.0} rows/s)",
        done as f64 / secs.max(f64::EPSILON)
    );
    Ok(())
}
