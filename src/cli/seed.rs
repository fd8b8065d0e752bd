//! `zdm seed`: bulk-inserts realistic users, the way the current phase writes them.

use std::time::Instant;

use clap::Args;

use super::{connect, progress_bar, with_causes};
use crate::config::Config;
use crate::migration::state;
use crate::startup::StartupError;

#[derive(Debug, Args)]
pub(super) struct SeedArgs {
    /// How many users to insert.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    users: u64,
    /// Seed of the name generator (same seed, same names); random by default.
    #[arg(long)]
    rng_seed: Option<u64>,
}

impl SeedArgs {
    pub(super) fn run(self, config: &Config) -> Result<(), StartupError> {
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
