//! `zdm db stop`: stops the private PostgreSQL, which the commands leave running for the
//! ones after them (only `zdm serve` stops what it started itself).

use clap::Subcommand;

use crate::config::Config;
use crate::local_pg::LocalPg;
use crate::startup::StartupError;

#[derive(Debug, Subcommand)]
pub(super) enum DbAction {
    /// Stop the private PostgreSQL in ZDM_DATA_DIR (`.zdm`) and its replicas, if they run.
    Stop,
}

impl DbAction {
    pub(super) fn run(self, config: &Config) -> Result<(), StartupError> {
        match self {
            DbAction::Stop => {
                let stopped = LocalPg::stop_all(&config.data_dir)?;
                if stopped.is_empty() {
                    println!(
                        "no private PostgreSQL is running in {}",
                        config.data_dir.display()
                    );
                }
                for folder in stopped {
                    println!("stopped the private PostgreSQL in {}", folder.display());
                }
                Ok(())
            }
        }
    }
}
