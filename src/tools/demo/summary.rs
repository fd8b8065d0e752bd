//! A run's figures, from its timeline, its samples and its audit: per-segment statistics,
//! the worst p99 of each phase, the servers' p99 against the quiet phases', the 503s that
//! met no fault, and whether zero downtime held.

use std::collections::BTreeMap;

use super::report::{self, DemoSummary, FailoverSummary, Segment};
use super::traffic::{self, Sample};
use super::{DemoOptions, FAULT_AFTERMATH_MS, Timeline, Traffic, audit, chaos, server_latency};

/// The run's figures: per-segment statistics, the worst p99 of each phase, the audit's
/// findings, and whether zero downtime held.
pub(super) fn summarize(
    opts: &DemoOptions,
    traffic: &Traffic,
    audit: audit::AuditResult,
) -> DemoSummary {
    let mut segments =
        report::segment_stats(&traffic.timeline.segments, &traffic.samples, &traffic.cpu);
    for (stats, segment) in segments.iter_mut().zip(&traffic.timeline.segments) {
        let counts = traffic.server.between(segment.start_ms, segment.end_ms);
        stats.server_p99_ms = traffic.server.p99_ms(&counts);
    }
    let failed_requests: usize = segments.iter().map(|s| s.failed).sum();
    let unavailable_requests: usize = segments.iter().map(|s| s.unavailable).sum();
    let failover = opts.failover.as_ref().map(|f| FailoverSummary {
        standby: f.standby_kind().to_owned(),
        seconds_without_primary: traffic
            .timeline
            .without_primary
            .map_or(0.0, |d| d.as_secs_f64()),
        unavailable_requests,
        lost_to_async_replication: audit.lost_to_async_replication,
        requests_meeting_the_loss: segments.iter().map(|s| s.lost_upstream).sum(),
    });
    let unavailable_outside_faults = unexcused_503s(opts, traffic, &segments);
    let server = ServerRatios::of(traffic);
    let chaos = opts.chaos.as_ref();
    DemoSummary {
        mode: if opts.naive { "naive" } else { "zdm" }.to_owned(),
        undo: opts.undo && !opts.naive,
        requests: traffic.samples.len(),
        failed_requests,
        stale_reads: segments.iter().map(|s| s.stale_reads).sum(),
        lost_writes: audit.lost_writes,
        divergent_rows: audit.divergent,
        untouched_rows_altered: audit.untouched_altered,
        injected_fault: opts.fault.map(|f| f.name().to_owned()),
        p99_ms_by_phase: p99_ms_by_phase(&segments, |s| Some(s.p99_ms)),
        server_p99_ms_by_phase: p99_ms_by_phase(&segments, |s| s.server_p99_ms),
        server_backfill_p99_vs_quiet: server.backfill_vs_quiet,
        server_backfill_p99_vs_run_start: server.backfill_vs_run_start,
        server_ddl_p99_vs_quiet: server.ddl_vs_quiet,
        passed: traffic.walk_error.is_none()
            && failed_requests == 0
            && unavailable_outside_faults == 0
            && !audit.found_anything(),
        seed: chaos.map(|c| c.schedule.seed),
        replay: chaos.map(|c| chaos::replay_hint(opts, &c.schedule, c.control)),
        schedule: chaos.map(|c| c.schedule.clone()),
        faults_injected: chaos.map(|_| traffic.timeline.faults_struck.values().sum()),
        faults_struck: traffic.timeline.faults_struck.clone(),
        control: chaos.is_some_and(|c| c.control),
        fault_windows: closed_windows(&traffic.timeline, false),
        unavailable_outside_faults,
        walk_error: traffic.walk_error.clone(),
        backfill_p99_vs_baseline: backfill_p99_vs_baseline(&segments),
        segments,
        faults: traffic.timeline.markers.clone(),
        lock_timeouts_retried: traffic.lock_timeouts,
        backfill: traffic.backfill.clone(),
        acknowledged_writes_tracked: traffic.ledgers.iter().map(|l| l.rows.len()).sum(),
        unacknowledged_creates: traffic.unacknowledged_creates,
        cpus: traffic.cpu.first().map(|s| s.times.cpus),
        replicas: opts.replica_servers.len(),
        replica_reads: traffic.replica_reads,
        pooler: opts.pooler.then(|| "pgbouncer transaction".to_owned()),
        unavailable_requests,
        failover,
        audit,
    }
}

/// The 503s no fault excuses. A chaos run's: the instances' own outside every window of a
/// fault that lets them answer 503. Otherwise every 503, except while a failover leaves no
/// primary to answer: in the failover's segment and those on either side of it (a request is
/// counted in the segment it started in, and the instances take a moment to reach the new
/// primary).
fn unexcused_503s(
    opts: &DemoOptions,
    traffic: &Traffic,
    segments: &[report::SegmentStats],
) -> usize {
    if opts.chaos.is_some() {
        return unavailable_outside(&traffic.samples, &closed_windows(&traffic.timeline, true));
    }
    let around_the_failover = |i: usize| {
        traffic
            .timeline
            .promoted_in
            .is_some_and(|p| i + 1 >= p && i <= p + 1)
    };
    segments
        .iter()
        .enumerate()
        .filter(|(i, _)| !around_the_failover(*i))
        .map(|(_, s)| s.unavailable)
        .sum()
}

/// The timeline's fault windows (those where the instances may answer 503 only, with
/// `app_may_503`), those still open closed at the run's end.
fn closed_windows(timeline: &Timeline, app_may_503: bool) -> Vec<(u32, u32)> {
    let end = timeline.segments.last().map_or(0, |s| s.end_ms);
    timeline
        .fault_windows
        .iter()
        .filter(|w| w.app_may_503 || !app_may_503)
        .map(|w| (w.start_ms, w.end_ms.unwrap_or(end)))
        .collect()
}

/// The instances' own 503s of requests that were in flight in no window of a fault that
/// lets them answer 503 (nor its aftermath). The load balancer's 503s for an instance a
/// fault took down are that fault's by construction (`Rotation::lost_to_a_fault`).
fn unavailable_outside(samples: &[Sample], windows: &[(u32, u32)]) -> usize {
    samples
        .iter()
        .filter(|s| s.outcome == traffic::Outcome::Unavailable)
        .filter(|s| {
            let (sent, answered) = (s.at_ms, s.at_ms + s.latency_us / 1000);
            !windows
                .iter()
                .any(|(start, end)| sent <= end + FAULT_AFTERMATH_MS && answered >= *start)
        })
        .count()
}

/// The worst p99 of each phase, as `p99` gives a segment's (a phase the run enters twice has
/// two segments).
fn p99_ms_by_phase(
    segments: &[report::SegmentStats],
    p99: impl Fn(&report::SegmentStats) -> Option<f64>,
) -> BTreeMap<String, f64> {
    let mut by_phase = BTreeMap::new();
    for s in segments {
        if let Some(p99) = p99(s) {
            let entry = by_phase.entry(s.name.clone()).or_insert(0.0_f64);
            *entry = entry.max(p99);
        }
    }
    by_phase
}

/// The servers' p99 in the backfill and while a DDL waited for its lock, over their p99 in
/// the quiet phases of the same run (baseline, expanded and dual_write before the backfill,
/// taken together), and the backfill's over the users' p99 its run started from (where it
/// noted one, under a budget): what the backfill, or a DDL waiting for its lock, cost the
/// users, as the instances measured it. Each p99 is summed once from the segments' histograms.
struct ServerRatios {
    backfill_vs_quiet: Option<f64>,
    backfill_vs_run_start: Option<f64>,
    ddl_vs_quiet: Option<f64>,
}

impl ServerRatios {
    fn of(traffic: &Traffic) -> Self {
        let (segments, server) = (&traffic.timeline.segments, &traffic.server);
        let before_backfill = segments
            .iter()
            .position(|s| s.name == "backfill")
            .unwrap_or(segments.len());
        let quiet = server_p99(
            server,
            &mut segments[..before_backfill]
                .iter()
                .filter(|s| ["baseline", "expanded", "dual_write"].contains(&s.name.as_str())),
        );
        // Every segment of the backfill: a failover's run has two.
        let backfill = server_p99_named(segments, server, &["backfill"]);
        let ddl = server_p99_named(segments, server, &["expanding", "contracting"]);
        let run_start = traffic.backfill.as_ref().and_then(|b| b.quiet_p99_ms);
        Self {
            backfill_vs_quiet: ratio(backfill, quiet),
            backfill_vs_run_start: ratio(backfill, run_start),
            ddl_vs_quiet: ratio(ddl, quiet),
        }
    }
}

/// `over` / `under`, where both are known and `under` is above 0.
fn ratio(over: Option<f64>, under: Option<f64>) -> Option<f64> {
    match (over, under) {
        (Some(o), Some(u)) if u > 0.0 => Some(o / u),
        _ => None,
    }
}

/// The servers' p99 over the `chosen` segments, their histograms taken together.
fn server_p99(
    server: &server_latency::ServerLatency,
    chosen: &mut dyn Iterator<Item = &Segment>,
) -> Option<f64> {
    let summed = chosen.fold(Vec::new(), |mut sum: Vec<u64>, s| {
        let counts = server.between(s.start_ms, s.end_ms);
        sum.resize(counts.len(), 0);
        sum.iter_mut().zip(counts).for_each(|(a, c)| *a += c);
        sum
    });
    server.p99_ms(&summed)
}

/// The servers' p99 over every segment named one of `names`.
fn server_p99_named(
    segments: &[Segment],
    server: &server_latency::ServerLatency,
    names: &[&str],
) -> Option<f64> {
    server_p99(
        server,
        &mut segments.iter().filter(|s| names.contains(&s.name.as_str())),
    )
}

/// How much the backfill slowed the traffic: its p99 over the baseline's (target ≤ 2).
fn backfill_p99_vs_baseline(segments: &[report::SegmentStats]) -> Option<f64> {
    let p99 = |name: &str| segments.iter().find(|s| s.name == name).map(|s| s.p99_ms);
    match (p99("backfill"), p99("baseline")) {
        (Some(b), Some(base)) if base > 0.0 => Some(b / base),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_faults_that_let_the_instances_answer_503_excuse_their_503s() {
        let mut timeline = Timeline::start();
        timeline.enter("baseline");
        let window = |start_ms, end_ms, app_may_503| super::super::FaultWindow {
            start_ms,
            end_ms,
            app_may_503,
        };
        // A lock holder (no 503 of the instances' may come of it), then a PostgreSQL restart
        // that has not ended when the run does.
        timeline.fault_windows = vec![window(1_000, Some(2_000), false), window(5_000, None, true)];
        timeline.segments[0].end_ms = 9_000;
        assert_eq!(
            closed_windows(&timeline, false),
            [(1_000, 2_000), (5_000, 9_000)]
        );
        assert_eq!(closed_windows(&timeline, true), [(5_000, 9_000)]);
    }

    #[test]
    fn a_503_counts_against_the_run_unless_it_met_a_faults_window() {
        let sample = |at_ms: u32, latency_ms: u32| Sample {
            at_ms,
            latency_us: latency_ms * 1000,
            segment: 0,
            outcome: traffic::Outcome::Unavailable,
        };
        let windows = [(10_000, 12_000)];
        // Sent before the fault struck and answered in it; sent within it; in its aftermath.
        assert_eq!(unavailable_outside(&[sample(9_500, 600)], &windows), 0);
        assert_eq!(unavailable_outside(&[sample(11_000, 1)], &windows), 0);
        assert_eq!(unavailable_outside(&[sample(14_900, 1)], &windows), 0);
        // Before it, or well after it: downtime of zdm's own.
        assert_eq!(unavailable_outside(&[sample(9_000, 10)], &windows), 1);
        assert_eq!(unavailable_outside(&[sample(15_100, 1)], &windows), 1);
        assert_eq!(unavailable_outside(&[sample(11_000, 1)], &[]), 1);
        // Anything else is no 503 of the instances': the load balancer's for an instance a
        // fault took down is that fault's.
        for outcome in [traffic::Outcome::Ok, traffic::Outcome::LostWithInstance] {
            let other = Sample {
                outcome,
                ..sample(1, 1)
            };
            assert_eq!(unavailable_outside(&[other], &[]), 0);
        }
    }
}
