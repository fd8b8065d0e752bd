//! `zdm backfill`: runs (or resumes) the backfill to the end, with a progress bar.

use clap::Args;

use super::{Connected, connect, progress_bar};
use crate::config::Config;
use crate::migration::backfill;
use crate::migration::control;
use crate::startup::StartupError;

#[derive(Debug, Args)]
pub(super) struct BackfillArgs {
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
    /// Whether the triggers of users fire on the backfill's updates, once for each row it
    /// fills: `fire`, or `skip` (its batches run with session_replication_role = replica).
    /// Asked for where one would fire (the triggers gate).
    #[arg(long, value_name = "fire|skip")]
    triggers: Option<backfill::Triggers>,
}

impl BackfillArgs {
    pub(super) fn run(self, config: &Config) -> Result<(), StartupError> {
        let knobs = backfill::Knobs {
            batch_size: self.batch_size,
            sleep_ms: self.sleep_ms,
            batch_target_ms: self.batch_target_ms,
            workers: self.workers,
            triggers: self.triggers,
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
