//! The figures of the backfill benchmark, and the lines it prints them as.

use std::time::Duration;

use super::timed::Timed;
use super::{BackfillBenchOptions, Fill, Side, backfill_label};
use crate::migration::backfill::BackfillStatus;
use crate::tools::stats::{MIB, ms, nearest_rank, peak_rss_mib};

/// The figures of one run of the benchmark.
#[derive(Debug, Default)]
pub struct BackfillBenchReport {
    /// One per round, in the order they ran.
    pub single: Vec<Timed>,
    pub backfill: Vec<Timed>,
    /// The same on the copies of the first `small_rows` users (empty without).
    pub small_single: Vec<Timed>,
    pub small_backfill: Vec<Timed>,
    /// The backfill's batch transaction times, all rounds (not the small copies), sorted.
    pub batch_times: Vec<Duration>,
    /// The sizes those batches had, sorted.
    pub batch_sizes: Vec<i32>,
    /// The backfill's workers.
    pub workers: i32,
    /// The ranges each full-size backfill fill ended with (its key range split among the
    /// workers, and split again as they ran out of work), one per round.
    pub ranges: Vec<usize>,
    /// The indexes on each filled table, by name.
    pub index_names: Vec<String>,
    /// The fills as they ran, named as the report names them (`round 1: single UPDATE`).
    pub order: Vec<String>,
    /// Each full-size backfill fill's rate through each tenth of its table, in rows/s (see
    /// `rates_by_tenth`), one per round.
    pub rates_by_tenth: Vec<Vec<f64>>,
}

impl BackfillBenchReport {
    /// Every timed fill, the single UPDATE's then the backfill's, the small copies' last.
    pub fn fills(&self) -> impl Iterator<Item = &Timed> {
        self.single
            .iter()
            .chain(&self.backfill)
            .chain(&self.small_single)
            .chain(&self.small_backfill)
    }

    /// Where the figures of `fill` go.
    pub(super) fn runs_of(&mut self, fill: Fill) -> &mut Vec<Timed> {
        match (fill.side, fill.first) {
            (Side::Single, None) => &mut self.single,
            (Side::Backfill, None) => &mut self.backfill,
            (Side::Single, Some(_)) => &mut self.small_single,
            (Side::Backfill, Some(_)) => &mut self.small_backfill,
        }
    }

    /// Each way's rate on all rows over its rate on the small copies: (backfill, single).
    pub fn size_ratios(&self) -> Option<(f64, f64)> {
        if self.small_backfill.is_empty() {
            return None;
        }
        Some((
            Self::rate(&self.backfill) / Self::rate(&self.small_backfill),
            Self::rate(&self.single) / Self::rate(&self.small_single),
        ))
    }

    /// Total rows over total time: each side's rate across all its rounds.
    fn rate(runs: &[Timed]) -> f64 {
        Self::rows_per_s(runs, |t| t.secs)
    }

    /// Total rows over the total of `secs` of each run.
    fn rows_per_s(runs: &[Timed], secs: impl Fn(&Timed) -> f64) -> f64 {
        let rows: u64 = runs.iter().map(|t| t.rows).sum();
        rows as f64 / runs.iter().map(secs).sum::<f64>()
    }

    /// `backfill_vs_single_update`: the backfill's rate over the single UPDATE's.
    pub fn ratio(&self) -> f64 {
        Self::rate(&self.backfill) / Self::rate(&self.single)
    }

    /// Total rows over the total time of the fills and the VACUUMs after them.
    fn rate_with_vacuum(runs: &[Timed]) -> f64 {
        Self::rows_per_s(runs, |t| t.secs + t.vacuum_secs)
    }

    /// As `ratio`, counting the VACUUM after each fill: the ratio of the work each way
    /// causes until its table is settled, whenever autovacuum happened to run.
    pub fn ratio_with_vacuum(&self) -> f64 {
        Self::rate_with_vacuum(&self.backfill) / Self::rate_with_vacuum(&self.single)
    }
}

impl BackfillBenchReport {
    /// Prints the figures of the run: each side's rate, the backfill's batches, what each way
    /// leaves behind, and last the rate ratio (the line a script reads). `knobs`: the
    /// backfill's, as it ran with them.
    pub(super) fn print(
        &self,
        options: &BackfillBenchOptions,
        knobs: &BackfillStatus,
        say: &mut impl FnMut(&str),
    ) {
        let rows = options.rows;
        say(&format!("rows: {rows}"));
        say(&format!(
            "single UPDATE: {} (one transaction each)",
            rate_across_rounds(&self.single)
        ));
        say(&self.backfill_summary(knobs));
        let ratios: Vec<String> = self
            .backfill
            .iter()
            .zip(&self.single)
            .map(|(b, s)| format!("{:.2}", b.rate() / s.rate()))
            .collect();
        say(&format!("ratio by round: {}", ratios.join(", ")));
        say(&format!(
            "with the VACUUM after each fill: single UPDATE {:.0} rows/s, zdm backfill {:.0} rows/s, ratio {:.2}",
            Self::rate_with_vacuum(&self.single),
            Self::rate_with_vacuum(&self.backfill),
            self.ratio_with_vacuum()
        ));
        let times = &self.batch_times;
        say(&format!(
            "batch transaction: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(nearest_rank(times, 0.5)),
            ms(nearest_rank(times, 0.99)),
            ms(times.last().copied().unwrap_or_default())
        ));
        // What each way leaves behind: one big UPDATE doubles the table (every row gets a new
        // version that autovacuum can only reclaim afterwards); batches let it keep up.
        let mib = |runs: &[Timed]| runs.last().map_or(0.0, |t| t.table_bytes as f64 / MIB);
        say(&format!(
            "table size afterwards (last round): single UPDATE {:.0} MiB, zdm backfill {:.0} MiB",
            mib(&self.single),
            mib(&self.backfill)
        ));
        if let (Some(small), Some((backfill_ratio, single_ratio))) =
            (options.small_rows, self.size_ratios())
        {
            say(&format!(
                "first {small} rows: single UPDATE {}, zdm backfill {}",
                rate_across_rounds(&self.small_single),
                rate_across_rounds(&self.small_backfill)
            ));
            say(&format!(
                "rate at {rows} rows against {small}: zdm backfill {backfill_ratio:.2}, single UPDATE {single_ratio:.2}"
            ));
        }
        say(&format!(
            "peak RSS of this process: {}",
            peak_rss_mib(None).map_or("unknown".to_owned(), |m| format!("{m:.1} MiB"))
        ));
        let ratio_name = if self.workers > 1 {
            "parallel_backfill_vs_single_update"
        } else {
            "backfill_vs_single_update"
        };
        say(&format!("{ratio_name}: {:.2}", self.ratio()));
    }

    /// The backfill's line: its rate, its batches and how it sized them (to a target time,
    /// or fixed), the ranges each round ended with.
    fn backfill_summary(&self, knobs: &BackfillStatus) -> String {
        let sizes = &self.batch_sizes;
        let sizing = if knobs.batch_target_ms > 0 {
            format!(
                "sized to {} ms from {}: median {}, range {}..{}",
                knobs.batch_target_ms,
                knobs.batch_size,
                sizes.get(sizes.len() / 2).unwrap_or(&0),
                sizes.first().unwrap_or(&0),
                sizes.last().unwrap_or(&0)
            )
        } else {
            format!("of {}", knobs.batch_size)
        };
        let ranges = self
            .ranges
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{}:  {} ({} batches {sizing}, sleep 0; ranges by round: {ranges})",
            backfill_label(self.workers),
            rate_across_rounds(&self.backfill),
            self.batch_times.len()
        )
    }
}

/// A side's rate across all its rounds, as the report gives it.
fn rate_across_rounds(runs: &[Timed]) -> String {
    let secs: f64 = runs.iter().map(|t| t.secs).sum();
    let rounds = match runs.len() {
        1 => "1 round".to_owned(),
        n => format!("{n} rounds"),
    };
    format!(
        "{:.0} rows/s ({rounds}, {secs:.1} s)",
        BackfillBenchReport::rate(runs)
    )
}
