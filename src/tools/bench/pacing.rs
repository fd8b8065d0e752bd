//! `zdm bench pacing`: what the backfill costs the users under a relative p99 budget, auto
//! workers against one worker, in interleaved `zdm demo --quick` runs (each a process of its
//! own on the same server): per run, the instances' p99 during the
//! backfill over the quiet phases' (`server_backfill_p99_vs_quiet`) and the fill rate; per
//! side, how many runs held the budget and the rate against one worker's in the same runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::migration::backfill::AutoRule;

pub struct PacingBenchOptions {
    /// Runs of each side.
    pub runs: usize,
    pub rows: u64,
    /// `ZDM_BACKFILL_MAX_P99_RATIO` of every run.
    pub ratio: f64,
    /// The auto rules measured against one worker.
    pub rules: Vec<AutoRule>,
    pub batch_target_ms: i32,
    /// Where each run's summary, output and report go.
    pub dir: PathBuf,
}

/// One side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `--backfill-workers auto` under the rule.
    Auto(AutoRule),
    /// `--backfill-workers 1`: the one-worker throttle under the same budget.
    One,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Auto(rule) => rule.as_str(),
            Side::One => "one",
        }
    }
}

/// The sides in ABBA order (forward, then backward, and again) until each ran `runs` times:
/// a steady drift of the machine's speed weighs on every side alike over each pair.
pub fn interleaved(sides: &[Side], runs: usize) -> Vec<Side> {
    (0..runs)
        .flat_map(|round| {
            let mut order = sides.to_vec();
            if round % 2 == 1 {
                order.reverse();
            }
            order
        })
        .collect()
}

/// What one run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFigures {
    pub side: Side,
    /// `server_backfill_p99_vs_quiet`.
    pub vs_quiet: f64,
    /// `server_backfill_p99_vs_run_start`.
    pub vs_start: Option<f64>,
    pub rows_per_s: f64,
    /// `server_ddl_p99_vs_quiet`.
    pub ddl: Option<f64>,
    /// Zero downtime held (the demo's own verdict).
    pub passed: bool,
}

impl RunFigures {
    fn of(side: Side, summary: &Value) -> Result<Self> {
        let number = |key: &str| summary[key].as_f64();
        Ok(Self {
            side,
            vs_quiet: number("server_backfill_p99_vs_quiet")
                .context("the run reported no server_backfill_p99_vs_quiet")?,
            vs_start: number("server_backfill_p99_vs_run_start"),
            rows_per_s: summary["backfill"]["rows_per_s"]
                .as_f64()
                .context("the run reported no backfill rate")?,
            ddl: number("server_ddl_p99_vs_quiet"),
            passed: summary["passed"] == true,
        })
    }

    fn line(&self, ratio: f64) -> String {
        let within = if self.vs_quiet <= ratio { "≤" } else { ">" };
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2}"));
        format!(
            "{}: p99 during the backfill / quiet phases {:.2} ({within} {ratio}), / its start {}; {:.0} rows/s; DDL stall {}; {}",
            self.side.name(),
            self.vs_quiet,
            opt(self.vs_start),
            self.rows_per_s,
            opt(self.ddl),
            if self.passed { "passed" } else { "FAILED" }
        )
    }
}

/// A side's figures over its runs.
#[derive(Debug, Clone, PartialEq)]
pub struct SideFigures {
    pub side: Side,
    pub runs: usize,
    /// Runs whose `vs_quiet` was within the ratio.
    pub within: usize,
    pub median: f64,
    pub lowest: f64,
    pub highest: f64,
    pub mean_rows_per_s: f64,
    /// The mean rate over one worker's mean rate, where one worker ran.
    pub vs_one: Option<f64>,
}

/// Each side's figures, in the order the sides first ran.
pub fn by_side(runs: &[RunFigures], ratio: f64) -> Vec<SideFigures> {
    let mut sides: Vec<Side> = Vec::new();
    for run in runs {
        if !sides.contains(&run.side) {
            sides.push(run.side);
        }
    }
    let mean_rate = |side: Side| {
        let rates: Vec<f64> = runs
            .iter()
            .filter(|r| r.side == side)
            .map(|r| r.rows_per_s)
            .collect();
        rates.iter().sum::<f64>() / rates.len() as f64
    };
    let one = sides.contains(&Side::One).then(|| mean_rate(Side::One));
    sides
        .into_iter()
        .map(|side| {
            let mut ratios: Vec<f64> = runs
                .iter()
                .filter(|r| r.side == side)
                .map(|r| r.vs_quiet)
                .collect();
            ratios.sort_by(f64::total_cmp);
            let n = ratios.len();
            let median = if n % 2 == 1 {
                ratios[n / 2]
            } else {
                (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
            };
            let mean_rows_per_s = mean_rate(side);
            SideFigures {
                side,
                runs: n,
                within: ratios.iter().filter(|r| **r <= ratio).count(),
                median,
                lowest: ratios[0],
                highest: ratios[n - 1],
                mean_rows_per_s,
                vs_one: one
                    .filter(|one| *one > 0.0 && side != Side::One)
                    .map(|one| mean_rows_per_s / one),
            }
        })
        .collect()
}

/// The closing lines: each side's, then the DDL stall over every run.
pub fn summary_lines(runs: &[RunFigures], ratio: f64) -> Vec<String> {
    let mut lines: Vec<String> = by_side(runs, ratio)
        .iter()
        .map(|s| {
            let vs_one = s
                .vs_one
                .map(|x| format!(", {x:.2} × one worker's"))
                .unwrap_or_default();
            format!(
                "{}: {} of {} runs within {ratio} × the quiet phases' p99 (median {:.2}, {:.2}–{:.2}); {:.0} rows/s (mean){vs_one}",
                s.side.name(),
                s.within,
                s.runs,
                s.median,
                s.lowest,
                s.highest,
                s.mean_rows_per_s
            )
        })
        .collect();
    let ddl: Vec<f64> = runs.iter().filter_map(|r| r.ddl).collect();
    if let (Some(low), Some(high)) = (
        ddl.iter().copied().reduce(f64::min),
        ddl.iter().copied().reduce(f64::max),
    ) {
        let over = ddl.iter().filter(|d| **d > 3.0).count();
        lines.push(format!(
            "DDL stall (server_ddl_p99_vs_quiet, target ≤ 3): {low:.2}–{high:.2} in {} runs, {over} over 3",
            ddl.len()
        ));
    }
    lines
}

/// Runs the demo once for `side` as run `index`, its summary, output and report in
/// `opts.dir`; what it reported.
fn run_once(exe: &Path, opts: &PacingBenchOptions, side: Side, index: usize) -> Result<RunFigures> {
    let name = format!("{index}-{}", side.name());
    let json = opts.dir.join(format!("{name}.json"));
    let log_path = opts.dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = Command::new(exe);
    command
        .args(["demo", "--quick", "--rows", &opts.rows.to_string()])
        .args([
            "--backfill-workers",
            if side == Side::One { "1" } else { "auto" },
        ])
        .args([
            "--backfill-batch-target-ms",
            &opts.batch_target_ms.to_string(),
        ])
        .args(["--backfill-sleep-ms", "0", "--json-out"])
        .arg(&json)
        .arg("--report-dir")
        .arg(opts.dir.join(&name))
        .env("ZDM_BACKFILL_MAX_P99_RATIO", opts.ratio.to_string())
        .stdout(log.try_clone().context("sharing the run's log")?)
        .stderr(log);
    if let Side::Auto(rule) = side {
        command.env("ZDM_BACKFILL_AUTO_RULE", rule.as_str());
    }
    // A summary left by an earlier bench in the same folder is not this run's.
    match std::fs::remove_file(&json) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", json.display()));
        }
        _ => {}
    }
    let status = command.status().context("running zdm demo")?;
    let text = std::fs::read_to_string(&json).with_context(|| {
        format!(
            "the run ({status}) left no summary; its output: {}",
            log_path.display()
        )
    })?;
    let summary: Value = serde_json::from_str(&text).context("reading the run's summary")?;
    RunFigures::of(side, &summary).with_context(|| format!("its output: {}", log_path.display()))
}

/// Runs the sides in ABBA order, printing each run and the figures; returns every run's.
pub fn pacing_benchmark(
    opts: &PacingBenchOptions,
    mut say: impl FnMut(&str),
) -> Result<Vec<RunFigures>> {
    ensure!(
        opts.ratio > 1.0 && opts.ratio <= 100.0,
        "--ratio {} is no budget to run under: give a number above 1 and at most 100, say 1.5",
        opts.ratio
    );
    if opts.rules.is_empty() {
        bail!("--rules names no auto rule to measure against one worker");
    }
    let twice = |(i, rule): (usize, &AutoRule)| opts.rules[..i].contains(rule);
    if let Some((_, rule)) = opts.rules.iter().enumerate().find(|r| twice(*r)) {
        bail!("--rules names {rule} twice");
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let exe = std::env::current_exe().context("finding the zdm executable")?;
    let mut sides: Vec<Side> = opts.rules.iter().map(|r| Side::Auto(*r)).collect();
    sides.push(Side::One);
    let order = interleaved(&sides, opts.runs);
    say(&format!(
        "{} demo runs (--quick, {} rows, ZDM_BACKFILL_MAX_P99_RATIO={}), about a minute each; summaries in {}",
        order.len(),
        opts.rows,
        opts.ratio,
        opts.dir.display()
    ));
    let mut runs = Vec::new();
    for (i, side) in order.iter().enumerate() {
        let run = run_once(&exe, opts, *side, i + 1)
            .with_context(|| format!("run {} ({})", i + 1, side.name()))?;
        say(&format!(
            "run {} of {}: {}",
            i + 1,
            order.len(),
            run.line(opts.ratio)
        ));
        runs.push(run);
    }
    for line in summary_lines(&runs, opts.ratio) {
        say(&line);
    }
    let failed = runs.iter().filter(|r| !r.passed).count();
    ensure!(
        failed == 0,
        "{failed} of {} runs did not hold zero downtime: their outputs are in {}",
        runs.len(),
        opts.dir.display()
    );
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZONE: Side = Side::Auto(AutoRule::Zone);
    const AIMD: Side = Side::Auto(AutoRule::Aimd);

    #[test]
    fn the_sides_run_in_abba_order() {
        use Side::One;
        assert_eq!(
            interleaved(&[ZONE, One], 4),
            [ZONE, One, One, ZONE, ZONE, One, One, ZONE]
        );
        assert_eq!(
            interleaved(&[ZONE, AIMD, One], 2),
            [ZONE, AIMD, One, One, AIMD, ZONE]
        );
    }

    fn run(side: Side, vs_quiet: f64, rows_per_s: f64, ddl: f64) -> RunFigures {
        RunFigures {
            side,
            vs_quiet,
            vs_start: None,
            rows_per_s,
            ddl: Some(ddl),
            passed: true,
        }
    }

    #[test]
    fn each_side_counts_its_runs_within_the_budget_and_its_rate_against_one_worker() {
        let runs = [
            run(ZONE, 1.45, 30_000.0, 2.0),
            run(Side::One, 1.2, 20_000.0, 3.1),
            run(Side::One, 1.3, 10_000.0, 1.0),
            run(ZONE, 1.51, 60_000.0, 2.5),
        ];
        let sides = by_side(&runs, 1.5);
        assert_eq!(sides.len(), 2);
        let zone = &sides[0];
        assert_eq!((zone.side, zone.runs, zone.within), (ZONE, 2, 1));
        assert!((zone.median - 1.48).abs() < 1e-9);
        assert_eq!((zone.lowest, zone.highest), (1.45, 1.51));
        assert_eq!(zone.mean_rows_per_s, 45_000.0);
        assert_eq!(zone.vs_one, Some(3.0));
        assert_eq!(
            sides[1].vs_one, None,
            "one worker is not compared with itself"
        );
        let lines = summary_lines(&runs, 1.5);
        assert_eq!(
            lines[0],
            "zone: 1 of 2 runs within 1.5 × the quiet phases' p99 (median 1.48, 1.45–1.51); 45000 rows/s (mean), 3.00 × one worker's"
        );
        assert_eq!(
            lines[2],
            "DDL stall (server_ddl_p99_vs_quiet, target ≤ 3): 1.00–3.10 in 4 runs, 1 over 3"
        );
    }
}
