//! `zdm demo --chaos`: one seeded run, a replayed schedule, or `--runs N` seeds in a row,
//! each on a PostgreSQL of its own that the faults may restart and kill.

use std::path::Path;

use super::DemoArgs;
use crate::cli::with_causes;
use crate::config::Config;
use crate::startup::StartupError;
use crate::tools::demo;
use crate::tools::demo::chaos;
use crate::tools::demo::chaos::schedule::{self, Setup};
use crate::tools::demo::report::DemoSummary;

/// Instances a chaos run starts with (one more may join late).
const INSTANCES: u32 = 2;

impl DemoArgs {
    pub(super) fn run_chaos(self, config: &Config) -> Result<(), StartupError> {
        let self_runs = self.runs;
        let runs = self.runs.unwrap_or(1);
        let first = self.seed;
        let control = self.control;
        let setup = Setup {
            instances: INSTANCES,
            pooler: self.pooler,
            failover: self.failover,
            replicas: self.replicas > 0,
        };
        let schedule_file = self.schedule.clone();
        let backfill_batch = self.backfill_batch.unwrap_or(chaos::BACKFILL_BATCH);
        let replayed = self
            .schedule
            .as_deref()
            .map(chaos::read_schedule)
            .transpose()
            .map_err(with_causes)?;
        let schedule_out = self.schedule_out.clone();
        let json_out = self.json_out.clone();
        let mut opts = DemoArgs {
            quick: true,
            json_out: None,
            // A promotion is one of the faults a schedule may draw, not the fixed script's.
            failover: false,
            ..self
        }
        .options(config);
        // The quick size unless asked otherwise (`--quick` is the default for chaos).
        opts.chaos = None;
        opts.schedule_file = schedule_file;
        opts.backfill_batch = backfill_batch;
        let base = config.data_dir.join("demo-chaos");
        let mut summaries = Vec::new();
        for seed in first..first + runs {
            let schedule = match &replayed {
                Some(schedule) => schedule.clone(),
                None => schedule::draw(seed, setup),
            };
            if let Some(path) = &schedule_out {
                demo::write_json(path, &schedule).map_err(with_causes)?;
            }
            if (
                schedule.setup.pooler,
                schedule.setup.failover,
                schedule.setup.replicas,
            ) != (setup.pooler, setup.failover, setup.replicas)
            {
                return Err(format!(
                    "the schedule was drawn for {:?}: give --pooler, --failover and --replicas as it was run",
                    schedule.setup
                )
                .into());
            }
            // A run the harness could not finish fails its seed; the next seeds still run.
            let summary = chaos::run_seed(&base, &opts, schedule.clone(), control)
                .unwrap_or_else(|e| chaos::harness_failure(&opts, schedule, control, &e));
            println!("{}", one_line(&summary));
            if runs == 1 {
                print!("{}", demo::report::table(&summary));
                println!(
                    "report: {}",
                    demo::report_file(&opts.report_dir, &summary).display()
                );
            }
            summaries.push(summary);
        }
        report_runs(&summaries, json_out.as_deref(), self_runs.is_some())
    }
}

/// Prints the summary of `--runs`, writes the JSON, and fails naming the seeds that failed
/// and how to replay the first.
fn report_runs(
    summaries: &[DemoSummary],
    json_out: Option<&Path>,
    as_runs: bool,
) -> Result<(), StartupError> {
    let failed: Vec<u64> = summaries
        .iter()
        .filter(|s| !s.passed)
        .filter_map(|s| s.seed)
        .collect();
    let runs = summaries.len();
    if runs > 1 {
        println!("{}", totals(summaries, &failed));
    }
    if let Some(path) = json_out {
        let json = match (summaries, as_runs) {
            ([one], false) => serde_json::to_value(one).unwrap_or_default(),
            _ => serde_json::json!({ "runs": summaries, "failed_seeds": failed }),
        };
        demo::write_json(path, &json).map_err(with_causes)?;
    }
    match summaries.iter().find(|s| !s.passed) {
        None => Ok(()),
        Some(first) => Err(format!(
            "chaos: {} of {runs} run(s) failed, seeds {failed:?}; replay the first with: {}",
            failed.len(),
            first.replay.clone().unwrap_or_default()
        )
        .into()),
    }
}

/// A run in one line: its seed, what it did and what the audit found.
fn one_line(s: &DemoSummary) -> String {
    format!(
        "seed {:>5} {}: {} requests, {} answered 503 ({} outside a fault), {} failed, {} lost, {} divergent, {} faults, ended at {}{}",
        s.seed.unwrap_or_default(),
        if s.passed { "passed" } else { "FAILED" },
        s.requests,
        s.unavailable_requests,
        s.unavailable_outside_faults,
        s.failed_requests,
        s.lost_writes,
        s.divergent_rows,
        s.faults_injected.unwrap_or_default(),
        s.audit.phase,
        match (&s.walk_error, s.passed) {
            (Some(e), _) => format!("; the walk stopped: {e}"),
            (None, false) => format!("; replay: {}", s.replay.clone().unwrap_or_default()),
            (None, true) => String::new(),
        }
    )
}

/// The summary of `--runs`.
fn totals(summaries: &[DemoSummary], failed: &[u64]) -> String {
    let sum = |f: fn(&DemoSummary) -> usize| summaries.iter().map(f).sum::<usize>();
    format!(
        "chaos: {} runs, {} requests, {} answered 503, {} failed, {} lost, {} divergent, {} faults; failed seeds: {failed:?}",
        summaries.len(),
        sum(|s| s.requests),
        sum(|s| s.unavailable_requests),
        sum(|s| s.failed_requests),
        sum(|s| s.lost_writes),
        sum(|s| s.divergent_rows),
        sum(|s| s.faults_injected.unwrap_or_default()),
    )
}
