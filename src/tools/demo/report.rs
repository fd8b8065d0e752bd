//! The demo's figures: per-phase requests, failures by kind and latency percentiles, the
//! faults injected, the backfill rate and the audit; printed as a table, written as one
//! self-contained HTML file with a latency-over-time chart, and as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use askama::Template;
use serde::Serialize;

use super::audit::AuditResult;
use super::cpu::{CpuSample, busy_cores};
use super::traffic::{Outcome, Sample};

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

#[derive(Debug, Clone, Default, Serialize)]
pub struct SegmentStats {
    pub name: String,
    pub seconds: f64,
    pub requests: usize,
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
    pub failed_requests: usize,
    /// The audit's findings (see `AuditResult`): acknowledged writes not found...
    pub lost_writes: usize,
    /// ... rows breaking I2 ...
    pub divergent_rows: usize,
    /// ... and seeded rows no client wrote that changed anyway.
    pub untouched_rows_altered: usize,
    /// The fault injected on purpose (`--fault`), if any.
    pub injected_fault: Option<String>,
    pub p99_ms_by_phase: BTreeMap<String, f64>,
    /// The same, as the instances measured it (the upper bound of a histogram bucket).
    pub server_p99_ms_by_phase: BTreeMap<String, f64>,
    /// The instances' p99 during the backfill over theirs in the quiet phases of the run
    /// (baseline, expanded, dual_write before the backfill), taken together.
    pub server_backfill_p99_vs_quiet: Option<f64>,
    pub segments: Vec<SegmentStats>,
    pub faults: Vec<Marker>,
    pub lock_timeouts_retried: usize,
    pub backfill_rows_per_s: Option<f64>,
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

fn percentile(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((sorted_us.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted_us[rank.min(sorted_us.len() - 1)]) / 1000.0
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
            let unavailable = count(|o| matches!(o, Outcome::Unavailable));
            let lost_upstream = count(|o| matches!(o, Outcome::LostUpstream));
            SegmentStats {
                name: seg.name.clone(),
                seconds,
                requests: mine.len(),
                failed: failed_status + failed_timeout + failed_connection + stale_reads,
                failed_status,
                failed_timeout,
                failed_connection,
                stale_reads,
                unavailable,
                lost_upstream,
                server_p99_ms: None,
                p50_ms: percentile(&latencies, 0.50),
                p95_ms: percentile(&latencies, 0.95),
                p99_ms: percentile(&latencies, 0.99),
                max_ms: percentile(&latencies, 1.0),
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

/// The table printed at the end of a run.
pub fn table(summary: &DemoSummary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>6} {:>8} {:>6} {:>4} {:>7} {:>5} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>5}",
        "phase",
        "secs",
        "requests",
        "failed",
        "503",
        "status",
        "t/o",
        "conn",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "srv p99",
        "max ms",
        "req/s",
        "cpu"
    );
    for s in &summary.segments {
        let _ = writeln!(
            out,
            "{:<12} {:>6.1} {:>8} {:>6} {:>4} {:>7} {:>5} {:>5} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>8.1} {:>7.0} {:>5}",
            s.name,
            s.seconds,
            s.requests,
            s.failed,
            s.unavailable,
            s.failed_status + s.stale_reads,
            s.failed_timeout,
            s.failed_connection,
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
    if let Some(rate) = summary.backfill_rows_per_s {
        let _ = writeln!(
            out,
            "backfill: {rate:.0} rows/s (including the crash and resume)"
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
            "the instances' own p99 during the backfill / in the quiet phases (srv p99: the upper bound of a histogram bucket): {r:.2}"
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
    if let Some(f) = &summary.failover {
        let loss = if f.standby == "synchronous" {
            "no acknowledged write may be lost".to_owned()
        } else {
            format!(
                "{} acknowledged writes lost to asynchronous replication, met by {} requests since",
                f.lost_to_async_replication, f.requests_meeting_the_loss
            )
        };
        let _ = writeln!(
            out,
            "failover: primary killed (SIGKILL), {} standby promoted; {:.1} s without a primary; {} requests answered 503 + Retry-After; {loss}",
            f.standby, f.seconds_without_primary, f.unavailable_requests
        );
    } else if summary.unavailable_requests > 0 {
        let _ = writeln!(
            out,
            "{} requests answered 503 (no database) in a run without a failover",
            summary.unavailable_requests
        );
    }
    if let Some(e) = &summary.walk_error {
        let _ = writeln!(out, "the migration stopped: {e}");
    }
    out.push_str(&audit_text(summary));
    let _ = writeln!(
        out,
        "{}: {} requests, {} failed, {} lost writes, {} divergent rows, {} untouched rows altered",
        summary.mode,
        summary.requests,
        summary.failed_requests,
        summary.lost_writes,
        summary.divergent_rows,
        summary.untouched_rows_altered
    );
    out
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

/// The phase labels above the chart: their font size, a width per character that the
/// labels' glyphs stay under on average (short lowercase words; a browser test holds the
/// rendered boxes to it), the space kept between two labels on a row, and the row height.
pub const LABEL_FONT_PX: f64 = 11.0;
pub const LABEL_CHAR_PX: f64 = 7.0;
pub const LABEL_GAP_PX: f64 = 6.0;
pub const LABEL_ROW_PX: f64 = 15.0;

/// Where a label goes: its left edge, its width (as `LABEL_CHAR_PX` estimates it) and its row
/// (0 just above the chart, then upwards).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LabelBox {
    pub x: f64,
    pub width: f64,
    pub row: usize,
}

/// Places each label (`(band start, text)`, in time order) a little right of its band's
/// start, kept within `[left, right]`, on the lowest row where it keeps `LABEL_GAP_PX` from
/// every label placed before it: short phases stagger instead of overlapping, whatever the
/// run's length.
pub fn place_labels<'a>(
    labels: impl IntoIterator<Item = (f64, &'a str)>,
    left: f64,
    right: f64,
) -> Vec<LabelBox> {
    // The right end of the last label on each row; labels go left to right, so a label
    // starting past a row's end (plus the gap) overlaps nothing on it.
    let mut row_ends: Vec<f64> = Vec::new();
    labels
        .into_iter()
        .map(|(start, text)| {
            let width = text.chars().count() as f64 * LABEL_CHAR_PX;
            let x = (start + 3.0).min(right - width).max(left);
            let row = match row_ends.iter().position(|end| end + LABEL_GAP_PX <= x) {
                Some(row) => row,
                None => {
                    row_ends.push(f64::NEG_INFINITY);
                    row_ends.len() - 1
                }
            };
            row_ends[row] = x + width;
            LabelBox { x, width, row }
        })
        .collect()
}

/// Chart geometry, computed here so the template only places it.
struct Band {
    x: f64,
    width: f64,
    name: String,
    shade: bool,
    label_x: f64,
    label_y: f64,
}

/// A row of the audit's table in the report.
struct Finding {
    check: String,
    checked: String,
    found: String,
    bad: bool,
}

struct Line {
    x: f64,
    label: String,
}

/// The instances' p99 of each segment (`SegmentStats::server_p99_ms`) as a flat line over
/// the segment, in SVG polyline points; a segment without one interrupts nothing, it is
/// skipped.
fn server_p99_steps(
    summary: &DemoSummary,
    segments: &[Segment],
    time: &TimeScale,
    latency: &LatencyScale,
) -> String {
    summary
        .segments
        .iter()
        .zip(segments)
        .filter_map(|(stats, seg)| {
            let y = latency.y(stats.server_p99_ms?);
            Some(format!(
                "{:.1},{y:.1} {:.1},{y:.1}",
                time.x(seg.start_ms),
                time.x(seg.end_ms)
            ))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[derive(Template)]
#[template(path = "demo/report.html")]
struct ReportPage<'a> {
    summary: &'a DemoSummary,
    table: String,
    /// The injected fault, described.
    fault: Option<String>,
    findings: Vec<Finding>,
    label_font_px: f64,
    width: f64,
    height: f64,
    plot_top: f64,
    plot_bottom: f64,
    bands: Vec<Band>,
    markers: Vec<Line>,
    p50: String,
    p99: String,
    max: String,
    /// The instances' own p99 of each segment, as a step: SVG polyline points.
    server_p99: String,
    failures: Vec<(f64, f64)>,
    y_ticks: Vec<(f64, String)>,
    x_ticks: Vec<(f64, String)>,
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

/// The chart's time axis: the run, from its start to the end of its last segment, between
/// `left` and `right`.
struct TimeScale {
    left: f64,
    right: f64,
    end_ms: u32,
}

impl TimeScale {
    fn of(segments: &[Segment]) -> Self {
        Self {
            left: 60.0,
            right: 1080.0,
            end_ms: segments.last().map_or(1, |s| s.end_ms.max(1)),
        }
    }

    fn x(&self, ms: u32) -> f64 {
        self.left + (self.right - self.left) * f64::from(ms) / f64::from(self.end_ms)
    }

    /// About ten ticks, on whole seconds.
    fn ticks(&self) -> Vec<(f64, String)> {
        let step_s = ((f64::from(self.end_ms) / 1000.0 / 10.0).ceil() as u32).max(1);
        (0..=self.end_ms / 1000)
            .step_by(step_s as usize)
            .map(|s| (self.x(s * 1000), format!("{s}s")))
            .collect()
    }
}

/// The chart's latency axis: logarithmic, from 0.1 ms at `bottom` to the slowest request (at
/// least 10 ms) at `top`, so that sub-millisecond reads and multi-second stalls both show.
struct LatencyScale {
    top: f64,
    bottom: f64,
    lo: f64,
    hi: f64,
}

impl LatencyScale {
    fn new(top: f64, bottom: f64, samples: &[Sample]) -> Self {
        let max_ms = samples.iter().map(|s| s.latency_us).max().unwrap_or(1000) as f64 / 1000.0;
        Self {
            top,
            bottom,
            lo: 0.1_f64.log10(),
            hi: max_ms.max(10.0).log10(),
        }
    }

    fn y(&self, ms: f64) -> f64 {
        self.bottom
            - (self.bottom - self.top) * ((ms.max(0.1).log10() - self.lo) / (self.hi - self.lo))
    }

    /// A tick per power of ten within the scale.
    fn ticks(&self) -> Vec<(f64, String)> {
        [0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0]
            .into_iter()
            .filter(|ms: &f64| ms.log10() <= self.hi + 1e-9)
            .map(|ms| {
                (
                    self.y(ms),
                    if ms < 1.0 {
                        format!("{ms}")
                    } else {
                        format!("{ms:.0}")
                    },
                )
            })
            .collect()
    }
}

/// Requests are grouped by the 250 ms in which they started.
const BUCKET_MS: u32 = 250;

/// The chart's curves: p50, p99 and max of each bucket's requests as SVG polyline points,
/// and the failed requests of each bucket.
struct Curves {
    p50: String,
    p99: String,
    max: String,
    failures: Vec<(f64, f64)>,
}

fn curves(time: &TimeScale, latency: &LatencyScale, samples: &[Sample]) -> Curves {
    let mut buckets: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let mut failed: BTreeMap<u32, usize> = BTreeMap::new();
    for s in samples {
        buckets
            .entry(s.at_ms / BUCKET_MS)
            .or_default()
            .push(s.latency_us);
        if s.outcome != Outcome::Ok {
            *failed.entry(s.at_ms / BUCKET_MS).or_default() += 1;
        }
    }
    let middle = |bucket: u32| time.x(bucket * BUCKET_MS + BUCKET_MS / 2);
    let mut lines = [String::new(), String::new(), String::new()];
    for (b, lat) in &mut buckets {
        lat.sort_unstable();
        let bx = middle(*b);
        for (line, q) in lines.iter_mut().zip([0.5, 0.99, 1.0]) {
            let _ = write!(line, "{bx:.1},{:.1} ", latency.y(percentile(lat, q)));
        }
    }
    let [p50, p99, max] = lines;
    Curves {
        p50,
        p99,
        max,
        failures: failed
            .iter()
            .map(|(b, n)| (middle(*b), *n as f64))
            .collect(),
    }
}

/// A shaded band per segment, alternately, with its label where `place_labels` put it above
/// the plot's `top`.
fn bands(time: &TimeScale, segments: &[Segment], labels: &[LabelBox], top: f64) -> Vec<Band> {
    segments
        .iter()
        .zip(labels)
        .enumerate()
        .map(|(i, (s, label))| Band {
            x: time.x(s.start_ms),
            width: (time.x(s.end_ms) - time.x(s.start_ms)).max(0.5),
            name: s.name.clone(),
            shade: i % 2 == 0,
            label_x: label.x,
            label_y: top - 8.0 - LABEL_ROW_PX * label.row as f64,
        })
        .collect()
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
    let width = 1100.0;
    let time = TimeScale::of(segments);
    let labels = place_labels(
        segments
            .iter()
            .map(|s| (time.x(s.start_ms), s.name.as_str())),
        time.left,
        width - 4.0,
    );
    // Every row of labels above the first makes the chart that much taller.
    let extra_rows = labels.iter().map(|l| l.row).max().unwrap_or(0) as f64;
    let top = 30.0 + LABEL_ROW_PX * extra_rows;
    let latency = LatencyScale::new(top, top + 310.0, samples);
    let Curves {
        p50,
        p99,
        max,
        failures,
    } = curves(&time, &latency, samples);
    ReportPage {
        summary,
        table: table(summary),
        fault: summary.injected_fault.as_deref().map(describe_fault),
        findings: findings(summary),
        label_font_px: LABEL_FONT_PX,
        width,
        height: top + 350.0,
        plot_top: top,
        plot_bottom: latency.bottom,
        bands: bands(&time, segments, &labels, top),
        markers: summary
            .faults
            .iter()
            .map(|m| Line {
                x: time.x(m.at_ms),
                label: m.label.clone(),
            })
            .collect(),
        p50,
        p99,
        max,
        server_p99: server_p99_steps(summary, segments, &time, &latency),
        failures,
        y_ticks: latency.ticks(),
        x_ticks: time.ticks(),
    }
    .render()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The segments of a zdm run, in order.
    const NAMES: [&str; 11] = [
        "baseline",
        "expanding",
        "expanded",
        "dual_write",
        "backfill",
        "dual_write",
        "backfilled",
        "read_new",
        "new_only",
        "contracting",
        "contracted",
    ];

    /// Places the labels of segments lasting `lengths_ms` on the report's chart.
    fn layout(lengths_ms: &[u32]) -> Vec<LabelBox> {
        let total: f64 = lengths_ms.iter().map(|l| f64::from(*l)).sum();
        let mut start = 0.0;
        let starts: Vec<f64> = lengths_ms
            .iter()
            .map(|l| {
                let x = 60.0 + 1020.0 * start / total;
                start += f64::from(*l);
                x
            })
            .collect();
        place_labels(starts.into_iter().zip(NAMES), 60.0, 1096.0)
    }

    fn assert_apart(boxes: &[LabelBox]) {
        for (i, a) in boxes.iter().enumerate() {
            assert!(
                a.x >= 60.0 && a.x + a.width <= 1096.0,
                "{a:?} leaves the chart"
            );
            for b in &boxes[i + 1..] {
                let apart = a.row != b.row
                    || a.x + a.width + LABEL_GAP_PX <= b.x
                    || b.x + b.width + LABEL_GAP_PX <= a.x;
                assert!(apart, "{a:?} overlaps {b:?}");
            }
        }
    }

    #[test]
    fn labels_of_short_phases_go_up_a_row_and_long_ones_stay_on_the_first() {
        let even = layout(&[3000; 11]);
        assert!(even.iter().all(|l| l.row == 0), "{even:?}");
        // A 30-minute baseline, then every phase over in a few seconds.
        let mut lengths = vec![1_800_000];
        lengths.extend([2000; 10]);
        let squeezed = layout(&lengths);
        assert_apart(&squeezed);
        assert!(squeezed.iter().any(|l| l.row >= 2), "{squeezed:?}");
        // The end of the run: labels pushed left of the chart's right edge, still apart.
        assert!(squeezed.iter().all(|l| l.x + l.width <= 1096.0));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn no_two_labels_overlap_whatever_the_phase_lengths(
            lengths in prop::collection::vec(1u32..600_000, 11)
        ) {
            assert_apart(&layout(&lengths));
        }
    }
}
