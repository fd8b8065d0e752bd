//! The demo's figures: per-phase requests, failures by kind and latency percentiles, the
//! faults injected, the backfill rate and the audit; printed as a table, written as one
//! self-contained HTML file with a latency-over-time chart, and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use askama::Template;
use serde::Serialize;

use super::audit::AuditResult;
use super::chart::{Chart, chart};
use super::cpu::{CpuSample, busy_cores};
use super::traffic::{Outcome, Sample};
use crate::migration::backfill::{BackfillStatus, WorkerChange};
use crate::tools::stats::nearest_rank;

/// A stretch of the run: a phase, or the backfill within dual_write.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    pub name: String,
    pub start_ms: u32,
    pub end_ms: u32,
}

/// A fault injected (or its end), at a moment of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Marker {
    pub at_ms: u32,
    pub label: String,
}

/// What the backfill of a zdm run did, its crash and resume included.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillRun {
    /// Rows scanned.
    pub rows: i64,
    pub batches: i64,
    pub rows_per_s: f64,
    /// The rule auto mode moved the workers by.
    pub workers_rule: Option<String>,
    /// The users' p99 when the run first started, where a p99 budget began.
    pub quiet_p99_ms: Option<f64>,
    /// Each count of workers the run (and its resumed run) took, oldest first, and why.
    pub worker_changes: Vec<WorkerChange>,
}

impl BackfillRun {
    /// The run `done` (as stored once done), with its changes of the worker count (newest
    /// first, as `backfill::worker_changes` reads them).
    pub fn of(done: &BackfillStatus, mut worker_changes: Vec<WorkerChange>) -> Self {
        worker_changes.reverse();
        Self {
            rows: done.rows_done,
            batches: done.batches,
            rows_per_s: done.rows_per_s(),
            workers_rule: done.workers_rule.clone(),
            quiet_p99_ms: done.quiet_p99_ms,
            worker_changes,
        }
    }

    /// The counts of workers it ran with, oldest first: "1 → 2 → 1".
    pub fn worker_counts(&self) -> String {
        let counts: Vec<String> = self
            .worker_changes
            .iter()
            .map(|c| c.workers.to_string())
            .collect();
        counts.join(" → ")
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct SegmentStats {
    pub name: String,
    pub seconds: f64,
    pub requests: usize,
    /// Requests answered with an error status, timed out or cut off (stale reads apart).
    pub failed: usize,
    pub failed_status: usize,
    pub failed_timeout: usize,
    pub failed_connection: usize,
    pub stale_reads: usize,
    /// 503s with `Retry-After` (no database for now), counted apart from `failed`: a run
    /// with a failover expects them, any other run fails on them.
    pub unavailable: usize,
    /// Requests that met a row lost with the old primary of an asynchronous standby (see
    /// `Outcome::LostUpstream`), counted apart from `failed` too.
    pub lost_upstream: usize,
    /// The p99 of the user requests the instances answered in the segment, as their own
    /// histograms measured it (see `server_latency`); none with too few.
    pub server_p99_ms: Option<f64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub requests_per_s: f64,
    /// The machine's CPUs kept busy (by anything) during the segment, in cores (see
    /// `cpu::busy_cores`); none without `/proc/stat` or without a sample on either side.
    pub cpu_busy_cores: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DemoSummary {
    pub mode: String,
    /// Whether the run undid the contract after it, walking back to read_new (`--undo`): its
    /// segments then appear twice, the way back's named `… (undo)`.
    pub undo: bool,
    pub requests: usize,
    /// Requests that failed (see `SegmentStats::failed`).
    pub failed_requests: usize,
    /// Reads that did not show their client's last acknowledged write.
    pub stale_reads: usize,
    /// The audit's findings (see `AuditResult`): acknowledged writes not found...
    pub lost_writes: usize,
    /// ... rows breaking I2 ...
    pub divergent_rows: usize,
    /// ... and seeded rows no client wrote that changed anyway.
    pub untouched_rows_altered: usize,
    /// The fault injected on purpose (`--fault`), if any.
    pub injected_fault: Option<String>,
    pub p99_ms_by_phase: BTreeMap<String, f64>,
    /// The same, as the instances measured it (read within a histogram bucket).
    pub server_p99_ms_by_phase: BTreeMap<String, f64>,
    /// The instances' p99 during the backfill over theirs in the quiet phases of the run
    /// (baseline, expanded, dual_write before the backfill), taken together.
    pub server_backfill_p99_vs_quiet: Option<f64>,
    /// The instances' p99 during the backfill over the users' p99 its run started from (its
    /// `quiet_p99_ms`, read in `dual_write` before the first batch): what a relative budget
    /// holds.
    pub server_backfill_p99_vs_run_start: Option<f64>,
    /// The same while the expand and the contract wait for their lock (`expanding`,
    /// `contracting`, taken together).
    pub server_ddl_p99_vs_quiet: Option<f64>,
    pub segments: Vec<SegmentStats>,
    pub faults: Vec<Marker>,
    pub lock_timeouts_retried: usize,
    /// The backfill (none in the naive mode, or when the walk stopped before it ended).
    pub backfill: Option<BackfillRun>,
    /// p99 during the backfill ÷ p99 in baseline (target ≤ 2).
    pub backfill_p99_vs_baseline: Option<f64>,
    pub audit: AuditResult,
    pub acknowledged_writes_tracked: usize,
    pub unacknowledged_creates: u64,
    /// The machine's CPUs, as the `cpu` column counts them (none without `/proc/stat`).
    pub cpus: Option<u32>,
    /// Streaming replicas the instances read from and the backfill waited for.
    pub replicas: usize,
    /// Reads of user data the replicas answered (the rest went to the primary).
    pub replica_reads: u64,
    /// Why the walk stopped before the end, if it did.
    pub walk_error: Option<String>,
    /// The pooler the requests went through (`--pooler`: "pgbouncer transaction"), if any.
    pub pooler: Option<String>,
    /// Requests answered 503 with `Retry-After` (see `SegmentStats::unavailable`).
    pub unavailable_requests: usize,
    /// The failover mid-backfill (`--failover`), if the run had one.
    pub failover: Option<FailoverSummary>,
    /// A chaos run's seed (`--chaos`), and the command that replays it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    /// A chaos run's schedule: the steps and faults with their planned times.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<super::chaos::schedule::Schedule>,
    /// The faults a chaos run struck (those skipped, an instance already down, apart).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faults_injected: Option<usize>,
    /// The same by kind (the schedule's `kind`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub faults_struck: BTreeMap<String, usize>,
    /// A chaos run without the migration (`--control`).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub control: bool,
    /// A chaos run's faults, from when each struck until its effect ended (ms of the run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fault_windows: Vec<(u32, u32)>,
    /// 503s outside every fault's window (a chaos run fails on them).
    pub unavailable_outside_faults: usize,
    pub passed: bool,
}

/// What a failover did to the run: how long no primary accepted writes, and what the users
/// met meanwhile.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FailoverSummary {
    /// "synchronous" (a commit waits for the standby) or "asynchronous".
    pub standby: String,
    /// From the primary's SIGKILL until the promoted standby accepted writes.
    pub seconds_without_primary: f64,
    /// Requests answered 503 with `Retry-After` through the whole run.
    pub unavailable_requests: usize,
    /// Acknowledged writes from before the promotion that the new primary lacks: what
    /// PostgreSQL's asynchronous replication allows to be lost (always 0 with a synchronous
    /// standby, where any loss is a lost write and fails the run).
    pub lost_to_async_replication: usize,
    /// Requests that met such a lost write afterwards: a 404 for a row whose creation was
    /// lost, a read without the lost value.
    pub requests_meeting_the_loss: usize,
}

impl SegmentStats {
    /// The `cpu` column: busy cores with two decimals, or "-" where none were measured.
    pub fn cpu_text(&self) -> String {
        self.cpu_busy_cores
            .map_or_else(|| "-".to_owned(), |cores| format!("{cores:.2}"))
    }
}

/// The latency at quantile `q` of sorted latencies in µs, in ms.
pub(super) fn latency_ms(sorted_us: &[u32], q: f64) -> f64 {
    f64::from(nearest_rank(sorted_us, q)) / 1000.0
}

pub fn segment_stats(
    segments: &[Segment],
    samples: &[Sample],
    cpu: &[CpuSample],
) -> Vec<SegmentStats> {
    segments
        .iter()
        .enumerate()
        .map(|(i, seg)| {
            let mine: Vec<&Sample> = samples.iter().filter(|s| s.segment as usize == i).collect();
            let mut latencies: Vec<u32> = mine.iter().map(|s| s.latency_us).collect();
            latencies.sort_unstable();
            let count = |f: fn(&Outcome) -> bool| mine.iter().filter(|s| f(&s.outcome)).count();
            let seconds = f64::from(seg.end_ms.saturating_sub(seg.start_ms)) / 1000.0;
            let failed_status = count(|o| matches!(o, Outcome::Status(_)));
            let failed_timeout = count(|o| matches!(o, Outcome::Timeout));
            let failed_connection = count(|o| matches!(o, Outcome::Connection));
            let stale_reads = count(|o| matches!(o, Outcome::Stale));
            let unavailable =
                count(|o| matches!(o, Outcome::Unavailable | Outcome::LostWithInstance));
            let lost_upstream = count(|o| matches!(o, Outcome::LostUpstream));
            SegmentStats {
                name: seg.name.clone(),
                seconds,
                requests: mine.len(),
                failed: failed_status + failed_timeout + failed_connection,
                failed_status,
                failed_timeout,
                failed_connection,
                stale_reads,
                unavailable,
                lost_upstream,
                server_p99_ms: None,
                p50_ms: latency_ms(&latencies, 0.50),
                p95_ms: latency_ms(&latencies, 0.95),
                p99_ms: latency_ms(&latencies, 0.99),
                max_ms: latency_ms(&latencies, 1.0),
                requests_per_s: if seconds > 0.0 {
                    mine.len() as f64 / seconds
                } else {
                    0.0
                },
                cpu_busy_cores: busy_cores(cpu, seg.start_ms, seg.end_ms),
            }
        })
        .collect()
}

/// The table printed at the end of a run: a row per segment, what happened during the run,
/// the audit, and a last line that sums it up.
pub fn table(summary: &DemoSummary) -> String {
    let mut out = segment_rows(&summary.segments);
    out.push_str(&run_notes(summary));
    out.push_str(&audit_text(summary));
    let _ = writeln!(
        out,
        "{}: {} requests, {} failed, {} stale reads, {} lost writes, {} divergent rows, {} untouched rows altered",
        summary.mode,
        summary.requests,
        summary.failed_requests,
        summary.stale_reads,
        summary.lost_writes,
        summary.divergent_rows,
        summary.untouched_rows_altered
    );
    out
}

/// The table's head and a row per segment: requests, failures by kind, stale reads, latency,
/// throughput and the machine's load.
fn segment_rows(segments: &[SegmentStats]) -> String {
    let mut out = format!(
        "{:<12} {:>6} {:>8} {:>6} {:>4} {:>6} {:>5} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5}\n",
        "phase",
        "secs",
        "requests",
        "failed",
        "503",
        "status",
        "t/o",
        "conn",
        "stale",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "srv p99",
        "max ms",
        "req/s",
        "cpu"
    );
    for s in segments {
        let _ = writeln!(
            out,
            "{:<12} {:>6.1} {:>8} {:>6} {:>4} {:>6} {:>5} {:>5} {:>5} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>8.1} {:>7.0} {:>5}",
            s.name,
            s.seconds,
            s.requests,
            s.failed,
            s.unavailable,
            s.failed_status,
            s.failed_timeout,
            s.failed_connection,
            s.stale_reads,
            s.p50_ms,
            s.p95_ms,
            s.p99_ms,
            s.server_p99_ms
                .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}")),
            s.max_ms,
            s.requests_per_s,
            s.cpu_text()
        );
    }
    out
}

/// What happened during the run beside the traffic: the CPUs, the faults, the lock timeouts,
/// the backfill, the replicas and the pooler, and where the migration stopped if it did.
fn run_notes(summary: &DemoSummary) -> String {
    let mut out = String::new();
    if let Some(cpus) = summary.cpus {
        let _ = writeln!(
            out,
            "cpu: the machine's {cpus} CPUs kept busy by anything on it (clients, instances, backfill, PostgreSQL), in cores"
        );
    }
    let _ = writeln!(out, "faults:");
    for m in &summary.faults {
        let _ = writeln!(out, "  {:>7.1} s  {}", f64::from(m.at_ms) / 1000.0, m.label);
    }
    let _ = writeln!(
        out,
        "lock timeouts met and retried: {}",
        summary.lock_timeouts_retried
    );
    if let Some(b) = &summary.backfill {
        let _ = writeln!(
            out,
            "backfill: {} rows in {} batches, {:.0} rows/s (including the crash and resume)",
            b.rows, b.batches, b.rows_per_s
        );
    }
    if let Some(r) = summary.backfill_p99_vs_baseline {
        let _ = writeln!(
            out,
            "p99 during the backfill / p99 in baseline: {r:.2} (target ≤ 2)"
        );
    }
    if let Some(r) = summary.server_backfill_p99_vs_quiet {
        let _ = writeln!(
            out,
            "the instances' own p99 during the backfill / in the quiet phases (srv p99: read within a histogram bucket): {r:.2}"
        );
    }
    if let Some(r) = summary.server_backfill_p99_vs_run_start {
        let _ = writeln!(
            out,
            "the instances' own p99 during the backfill / as its run started (its budget's base): {r:.2}"
        );
    }
    if let Some(r) = summary.server_ddl_p99_vs_quiet {
        let _ = writeln!(
            out,
            "the instances' own p99 while the expand and the contract wait / in the quiet phases: {r:.2} (target ≤ 3)"
        );
    }
    if summary.replicas > 0 {
        let _ = writeln!(
            out,
            "streaming replicas: {}, which answered {} reads of user data",
            summary.replicas, summary.replica_reads
        );
    }
    if let Some(pooler) = &summary.pooler {
        let _ = writeln!(
            out,
            "requests through a pooler: {pooler} (the steps, the backfill and verify direct)"
        );
    }
    out.push_str(&outage_note(summary));
    if let Some(e) = &summary.walk_error {
        let _ = writeln!(out, "the migration stopped: {e}");
    }
    out
}

/// A chaos run's faults and 503s; a failover (seconds without a primary, the 503s, what was
/// lost); or the 503s of a run with neither.
fn outage_note(summary: &DemoSummary) -> String {
    if let Some(seed) = summary.seed {
        return format!(
            "chaos, seed {seed}{}: {} faults struck; {} requests answered 503, {} of them outside every fault's window (and {} s after it); replay: {}\n",
            if summary.control {
                " (control: no migration)"
            } else {
                ""
            },
            summary.faults_injected.unwrap_or_default(),
            summary.unavailable_requests,
            summary.unavailable_outside_faults,
            super::FAULT_AFTERMATH_MS / 1000,
            summary.replay.as_deref().unwrap_or_default()
        );
    }
    let Some(f) = &summary.failover else {
        return match summary.unavailable_requests {
            0 => String::new(),
            n => format!("{n} requests answered 503 (no database) in a run without a failover\n"),
        };
    };
    let loss = if f.standby == "synchronous" {
        "no acknowledged write may be lost".to_owned()
    } else {
        format!(
            "{} acknowledged writes lost to asynchronous replication, met by {} requests since",
            f.lost_to_async_replication, f.requests_meeting_the_loss
        )
    };
    format!(
        "failover: primary killed (SIGKILL), {} standby promoted; {:.1} s without a primary; {} requests answered 503 + Retry-After; {loss}\n",
        f.standby, f.seconds_without_primary, f.unavailable_requests
    )
}

/// The injected fault (if any) and what the audit found, with examples.
fn audit_text(summary: &DemoSummary) -> String {
    let a = &summary.audit;
    let mut out = String::new();
    if let Some(fault) = &summary.injected_fault {
        let _ = writeln!(out, "INJECTED FAULT: {fault}");
    }
    let by_phase = lost_by_phase(summary)
        .iter()
        .map(|(phase, n)| format!("{phase} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = writeln!(
        out,
        "audit (in {}): {} rows checked against their last acknowledged write ({} uncertain): {} lost{}",
        a.phase,
        a.rows_checked,
        a.uncertain,
        a.lost_writes,
        if by_phase.is_empty() {
            String::new()
        } else {
            format!(" (written in: {by_phase})")
        }
    );
    let _ = writeln!(
        out,
        "  {} stale reads; {} divergent rows; {} of {} untouched seeded rows altered (checksum {} before, {} after)",
        a.stale_reads,
        a.divergent,
        a.untouched_altered,
        a.untouched_rows,
        a.untouched_checksum_before,
        a.untouched_checksum_after
    );
    for e in &a.examples {
        let _ = writeln!(out, "  {e}");
    }
    out
}

/// A row of the audit's table in the report.
struct Finding {
    check: String,
    checked: String,
    found: String,
    bad: bool,
}

#[derive(Template)]
#[template(path = "demo/report.html")]
struct ReportPage<'a> {
    summary: &'a DemoSummary,
    table: String,
    /// The injected fault, described.
    fault: Option<String>,
    findings: Vec<Finding>,
    chart: Chart,
}

/// The audit's lost writes by the phase they were written in, in the run's order.
fn lost_by_phase(summary: &DemoSummary) -> Vec<(&str, usize)> {
    let mut phases: Vec<&str> = Vec::new();
    for segment in &summary.segments {
        if !phases.contains(&segment.name.as_str()) {
            phases.push(&segment.name);
        }
    }
    for phase in summary.audit.lost_writes_by_phase.keys() {
        if !phases.contains(&phase.as_str()) {
            phases.push(phase);
        }
    }
    phases
        .into_iter()
        .filter_map(|p| Some((p, *summary.audit.lost_writes_by_phase.get(p)?)))
        .collect()
}

fn findings(summary: &DemoSummary) -> Vec<Finding> {
    let a = &summary.audit;
    let by_phase = lost_by_phase(summary)
        .iter()
        .map(|(phase, n)| format!("{n} in {phase}"))
        .collect::<Vec<_>>()
        .join(", ");
    vec![
        Finding {
            check: "acknowledged writes read back (I3)".to_owned(),
            checked: format!("{} rows ({} uncertain)", a.rows_checked, a.uncertain),
            found: if by_phase.is_empty() {
                format!("{} lost", a.lost_writes)
            } else {
                format!("{} lost (written: {by_phase})", a.lost_writes)
            },
            bad: a.lost_writes > 0,
        },
        Finding {
            check: "reads show the reader's last acknowledged write".to_owned(),
            checked: "every read of a row its client wrote".to_owned(),
            found: format!("{} stale", a.stale_reads),
            bad: a.stale_reads > 0,
        },
        Finding {
            check: format!("rows consistent in {} (I2)", a.phase),
            checked: "every row".to_owned(),
            found: format!("{} divergent", a.divergent),
            bad: a.divergent > 0,
        },
        Finding {
            check: "untouched seeded rows unchanged (checksum)".to_owned(),
            checked: format!(
                "{} rows: {} before, {} after",
                a.untouched_rows, a.untouched_checksum_before, a.untouched_checksum_after
            ),
            found: format!("{} altered", a.untouched_altered),
            bad: a.untouched_altered > 0,
        },
    ]
}

/// The injected fault's name and what it does (the name alone if it is not one the demo
/// knows, as in a summary from another version).
fn describe_fault(name: &str) -> String {
    match <super::Fault as clap::ValueEnum>::from_str(name, false) {
        Ok(fault) => format!("{name}: {}", fault.describe()),
        Err(_) => name.to_owned(),
    }
}

/// The self-contained HTML report: the table, the audit's findings and the latency chart.
pub fn html(
    summary: &DemoSummary,
    segments: &[Segment],
    samples: &[Sample],
) -> Result<String, askama::Error> {
    ReportPage {
        summary,
        table: table(summary),
        fault: summary.injected_fault.as_deref().map(describe_fault),
        findings: findings(summary),
        chart: chart(summary, segments, samples),
    }
    .render()
}
