//! Prometheus metrics (`GET /metrics`): requests by route and status with a latency
//! histogram, the phase, the backfill (and its workers), the last verification, the pool, and the lock
//! timeouts the runner retried. Request metrics are counted as requests pass; the rest is
//! read when scraped.

use std::collections::VecDeque;
use std::time::Instant;

use diesel::PgConnection;
use prometheus::core::Metric;
use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::db::DbPool;
use crate::domain::Phase;
use crate::migration::backfill::{self, BackfillState};
use crate::migration::{state, verify};

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    /// Requests of users (both APIs and the pages), finely bucketed: what the backfill's
    /// latency throttle watches.
    user_latency: Histogram,
    pub lock_timeout_retries: IntCounter,
    reads_from_primary: IntCounter,
    reads_from_replicas: IntCounter,
    phase: IntGaugeVec,
    backfill_rows_done: IntGauge,
    backfill_rows_total: IntGauge,
    backfill_batches: IntGauge,
    backfill_rows_per_second: Gauge,
    backfill_state: IntGaugeVec,
    backfill_replica_lag: IntGauge,
    backfill_workers: IntGauge,
    verify_divergent: IntGauge,
    pool_in_use: IntGauge,
    pool_idle: IntGauge,
    database_up: IntGauge,
}

/// The user-latency histogram's counts at some moment, so that a later look can tell what
/// happened since.
#[derive(Debug, Default)]
pub struct LatencyMark {
    buckets: Vec<u64>,
    total: u64,
}

impl LatencyMark {
    /// The user requests answered between `from` and this mark. The bounds are those the
    /// histogram was built with (`USER_LATENCY_BOUNDS`): no second read of it.
    fn window_since(&self, from: &LatencyMark) -> LatencyWindow {
        let since = |now: u64, then: Option<u64>| now.saturating_sub(then.unwrap_or(0)) as i64;
        let mut counts: Vec<i64> = (self.buckets.iter().enumerate())
            .map(|(i, c)| since(*c, from.buckets.get(i).copied()))
            .collect();
        counts.push(since(self.total, Some(from.total)));
        LatencyWindow {
            le: USER_LATENCY_BOUNDS.to_vec(),
            counts,
        }
    }
}

/// How far back an instance's latency report reaches (its heartbeat's `recent_p99_ms` and
/// `recent_latency_counts`): the requests it answered over the last 2 s, not since its
/// previous heartbeat (500 ms earlier). Measured on the demo (`--quick`: two instances, some
/// 550 user requests a second each): a 500-ms p99 is an instance's third-slowest of about 275
/// requests, and the worse of two such readings, as a backfill run started, was 0.96–2.18 ×
/// the quiet phases' p99 over every request (12 runs); the fleet's over 2 s, 0.93–1.39 ×.
pub const REPORT_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// An instance's user requests over its last report window, as its heartbeat stores them:
/// a histogram, which (unlike a p99) adds up across instances.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LatencyWindow {
    /// The buckets' upper bounds in seconds (Prometheus' `le`).
    pub le: Vec<f64>,
    /// Cumulative counts: one per bound, and one more, every request (the slowest included).
    pub counts: Vec<i64>,
}

impl LatencyWindow {
    /// The requests' p99 in ms (`p99_of_buckets`); `None` with too few requests or counts that
    /// do not match the bounds.
    pub fn p99_ms(&self) -> Option<f64> {
        let (&total, cumulative) = self.counts.split_last()?;
        if cumulative.len() != self.le.len() {
            return None;
        }
        let cumulative: Vec<u64> = cumulative.iter().map(|c| (*c).max(0) as u64).collect();
        p99_of_buckets(&self.le, &cumulative, total.max(0) as u64)
    }

    /// Adds `other`'s requests to these, where both have the same buckets; `false` (and
    /// nothing added) otherwise.
    fn add(&mut self, other: &LatencyWindow) -> bool {
        if self.le != other.le || self.counts.len() != other.counts.len() {
            return false;
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        true
    }
}

/// What one instance reported with its last heartbeat: its p99, and the histogram it read
/// it from (`None` from an instance that reports only a p99: an older version, or a test's).
#[derive(Debug, Clone, Default)]
pub struct InstanceLatency {
    pub p99_ms: Option<f64>,
    pub window: Option<LatencyWindow>,
}

/// The users' p99 across the fleet from what each instance reported: the p99 of all their
/// requests, from their histograms summed (Prometheus' `histogram_quantile(0.99, sum by (le)
/// (...))`), which is what the users (and the demo's report) see, not the worst instance's
/// p99 (on the demo, the worse of two noisy tails: see `REPORT_WINDOW`). Histograms with
/// other buckets (another version's) are summed apart; an instance that reports only a p99
/// counts with it. The worst of these is the answer.
pub fn fleet_p99_ms(reports: &[InstanceLatency]) -> Option<f64> {
    // Histograms with the same buckets summed, one sum per set of buckets.
    let mut sums: Vec<LatencyWindow> = Vec::new();
    let mut worst = None;
    for report in reports {
        match &report.window {
            Some(window) => {
                if !sums.iter_mut().any(|sum| sum.add(window)) {
                    sums.push(window.clone());
                }
            }
            None => worst = worse(worst, report.p99_ms),
        }
    }
    sums.iter()
        .fold(worst, |worst, sum| worse(worst, sum.p99_ms()))
}

/// The larger of two p99s, where there is one.
fn worse(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The methods that get a label of their own. Anything else a client invents (HTTP allows
/// any token, of any length) is counted as `OTHER`: a label value per invented method would
/// let anyone grow the exposition, and the server's memory, without bound.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE",
];

/// The label value for a request method: the method itself when it is a standard one, else
/// `OTHER`.
pub fn method_label(method: &str) -> &'static str {
    KNOWN_METHODS
        .into_iter()
        .find(|known| *known == method)
        .unwrap_or("OTHER")
}

/// The route label of a request that matched no route: one value for all of them, never the
/// raw path.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Fewer requests than this say nothing about a p99.
pub const MIN_REQUESTS_FOR_P99: u64 = 20;

/// The p99 in ms from cumulative bucket counts (`since[i]` requests took at most
/// `bounds[i]` seconds) of `total` requests, read as Prometheus' `histogram_quantile` reads
/// it: within the bucket the 99th percentile falls in, linearly between the bucket's bounds
/// (the requests taken as spread evenly across it). Beyond the last bucket it is that
/// bucket's bound. A bucket's upper bound alone would move in steps of a whole bucket: with
/// bounds at 2, 2.5 and 3 ms, a p99 of 2.1 ms and one of 2.5 ms both read 2.5.
pub fn p99_of_buckets(bounds: &[f64], since: &[u64], total: u64) -> Option<f64> {
    if total < MIN_REQUESTS_FOR_P99 {
        return None;
    }
    let rank = total as f64 * 0.99;
    let (mut lower, mut below) = (0.0, 0);
    for (bound, count) in bounds.iter().zip(since) {
        if *count as f64 >= rank {
            let within = (*count - below).max(1) as f64;
            let at = lower + (bound - lower) * ((rank - below as f64) / within).clamp(0.0, 1.0);
            return Some(at * 1000.0);
        }
        (lower, below) = (*bound, *count);
    }
    Some(bounds.last().copied().unwrap_or(0.0) * 1000.0)
}

/// The user-latency histogram's bounds, in seconds: every quarter of a millisecond up to
/// 3 ms, where the users' quiet p99 lies on the demo and a budget of 1.5 × it ends, so that a
/// p99 read between two bounds (`p99_of_buckets`) is off by an eighth of a millisecond at
/// most there; coarser beyond.
const USER_LATENCY_BOUNDS: [f64; 28] = [
    0.00025, 0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.00175, 0.002, 0.00225, 0.0025, 0.00275,
    0.003, 0.0035, 0.004, 0.0045, 0.005, 0.006, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.2,
    0.5, 1.0, 5.0,
];

/// `collector`, registered in `registry` (which then exposes it).
fn registered<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// The requests' counter and histograms: every request by route, method and status, and the
/// user requests alone, finely bucketed (what the backfill's latency throttle reads).
fn request_metrics(
    registry: &Registry,
) -> Result<(IntCounterVec, HistogramVec, Histogram), prometheus::Error> {
    let requests = IntCounterVec::new(
        Opts::new(
            "http_requests_total",
            "HTTP requests answered, by route pattern, method and status",
        ),
        &["route", "method", "status"],
    )?;
    let latency = HistogramVec::new(
        HistogramOpts::new(
            "http_request_duration_seconds",
            "Time to answer, by route pattern and method",
        )
        .buckets(vec![
            0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]),
        &["route", "method"],
    )?;
    let user_latency = Histogram::with_opts(
        HistogramOpts::new(
            "user_request_duration_seconds",
            "Time to answer a user request (APIs and pages, not admin)",
        )
        .buckets(USER_LATENCY_BOUNDS.to_vec()),
    )?;
    Ok((
        registered(registry, requests)?,
        registered(registry, latency)?,
        registered(registry, user_latency)?,
    ))
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("zdm".to_owned()), None)?;
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help)?);
        let labelled = |name: &str, help: &str, label: &str| {
            registered(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), &[label])?,
            )
        };
        let (http_requests, http_latency, user_latency) = request_metrics(&registry)?;
        let user_reads = registered(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "user_reads_total",
                    "Reads of user data (both APIs and pages), by the server that answered",
                ),
                &["server"],
            )?,
        )?;
        Ok(Self {
            http_requests,
            http_latency,
            user_latency,
            lock_timeout_retries: registered(
                &registry,
                IntCounter::new(
                    "migration_lock_timeout_retries_total",
                    "Lock timeouts a migration step met and retried (steps run by this instance)",
                )?,
            )?,
            reads_from_primary: user_reads.with_label_values(&["primary"]),
            reads_from_replicas: user_reads.with_label_values(&["replica"]),
            phase: labelled("phase", "1 for the stored phase", "phase")?,
            backfill_rows_done: gauge("backfill_rows_done", "Rows the backfill has passed")?,
            backfill_rows_total: gauge("backfill_rows_total", "Rows the backfill has to pass")?,
            backfill_batches: gauge("backfill_batches", "Batches the backfill has committed")?,
            backfill_rows_per_second: registered(
                &registry,
                Gauge::new(
                    "backfill_rows_per_second",
                    "The backfill's rate since it started",
                )?,
            )?,
            backfill_state: labelled("backfill_state", "1 for the backfill's state", "state")?,
            backfill_replica_lag: gauge(
                "backfill_replica_lag_bytes",
                "Largest replica replay lag the backfill last measured",
            )?,
            backfill_workers: gauge(
                "backfill_workers",
                "Workers the backfill runs now (0 when it does not run)",
            )?,
            verify_divergent: gauge(
                "verify_divergent_rows",
                "Divergent rows found by the last verification",
            )?,
            pool_in_use: gauge(
                "db_pool_connections_in_use",
                "Web pool connections checked out",
            )?,
            pool_idle: gauge("db_pool_connections_idle", "Web pool connections idle")?,
            database_up: gauge(
                "database_up",
                "1 when the last scrape could read the database",
            )?,
            registry,
        })
    }

    /// Counts one answered request. `route` must come from a closed set (the app's route
    /// patterns, or one fixed name for everything else); the method is reduced to one here.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let method = method_label(method);
        self.http_requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.http_latency
            .with_label_values(&[route, method])
            .observe(seconds);
        if route.contains("/users") {
            self.user_latency.observe(seconds);
        }
    }

    /// Counts an answered request without timing it: for answers given before any handler ran
    /// (a body that came too slowly or was refused), whose time says nothing about the app.
    pub fn count_request(&self, route: &str, method: &str, status: u16) {
        self.http_requests
            .with_label_values(&[route, method_label(method), &status.to_string()])
            .inc();
    }

    /// The user requests answered over the last `REPORT_WINDOW`, for the phase follower to
    /// report with each heartbeat (`None` at its first call, and after a gap of more than the
    /// window: a report says what came after a change of the backfill's workers only if it
    /// covers no more than the window).
    pub fn latency_reporter(
        self: &std::sync::Arc<Self>,
    ) -> impl FnMut() -> Option<LatencyWindow> + Send + 'static {
        let (metrics, mut marks) = (self.clone(), VecDeque::new());
        move || metrics.user_latency_window(&mut marks, Instant::now())
    }

    /// The user requests answered over the `REPORT_WINDOW` before `now`: since the oldest of
    /// `marks` (the histogram's counts at earlier reports) within it; `None` where there is
    /// none (every mark older, or none yet). Notes the counts at `now` in `marks` and forgets
    /// those no later report needs.
    fn user_latency_window(
        &self,
        marks: &mut VecDeque<(Instant, LatencyMark)>,
        now: Instant,
    ) -> Option<LatencyWindow> {
        while marks
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > REPORT_WINDOW)
        {
            marks.pop_front();
        }
        let mark = self.user_latency_mark();
        let window = marks.front().map(|(_, from)| mark.window_since(from));
        marks.push_back((now, mark));
        window
    }

    /// The user-latency histogram's counts now.
    fn user_latency_mark(&self) -> LatencyMark {
        let histogram = self.user_latency.metric();
        let histogram = histogram.get_histogram();
        LatencyMark {
            buckets: histogram
                .get_bucket()
                .iter()
                .map(|b| b.cumulative_count())
                .collect(),
            total: histogram.get_sample_count(),
        }
    }

    /// Counts one read of user data, answered by a replica or by the primary.
    pub fn count_read(&self, from_replica: bool) {
        if from_replica {
            self.reads_from_replicas.inc();
        } else {
            self.reads_from_primary.inc();
        }
    }

    fn read_database(
        &self,
        conn: &mut PgConnection,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let current = state::current_phase(conn)?;
        for phase in Phase::ALL {
            self.phase
                .with_label_values(&[phase.as_str()])
                .set(i64::from(phase == current));
        }
        let b = backfill::status(conn)?;
        self.backfill_rows_done.set(b.rows_done);
        self.backfill_rows_total.set(b.rows_total);
        self.backfill_batches.set(b.batches);
        self.backfill_rows_per_second.set(b.rows_per_s());
        self.backfill_replica_lag.set(b.replica_lag_bytes);
        self.backfill_workers.set(if b.state.is_active() {
            i64::from(b.workers)
        } else {
            0
        });
        for s in BackfillState::ALL {
            self.backfill_state
                .with_label_values(&[s.as_str()])
                .set(i64::from(b.state == s));
        }
        if let Some(v) = verify::latest(conn)? {
            self.verify_divergent.set(v.divergent);
        }
        Ok(())
    }

    /// The text exposition, with the database-backed gauges read now.
    pub fn scrape(&self, pool: &DbPool) -> Result<String, prometheus::Error> {
        let pool_state = pool.state();
        self.pool_idle.set(i64::from(pool_state.idle_connections));
        self.pool_in_use.set(i64::from(
            pool_state.connections - pool_state.idle_connections,
        ));
        let read = pool
            .get()
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
            .and_then(|mut conn| self.read_database(&mut conn));
        if let Err(e) = &read {
            log::warn!("metrics: could not read the database: {e}");
        }
        self.database_up.set(i64::from(read.is_ok()));
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_read_within_the_bucket_it_falls_in() {
        let bounds = [0.001, 0.01, 0.1];
        // All 100 within 1 ms: the 99th of them, spread over 0-1 ms, at 0.99 ms.
        assert_eq!(p99_of_buckets(&bounds, &[100, 100, 100], 100), Some(0.99));
        // 2 of 100 took between 10 and 100 ms: the 99th is the first of them, half-way.
        let p99 = p99_of_buckets(&bounds, &[90, 98, 100], 100).unwrap();
        assert!((p99 - 55.0).abs() < 1e-9, "{p99}");
        // Slower than every bucket: the last bound.
        assert_eq!(p99_of_buckets(&bounds, &[0, 0, 0], 50), Some(100.0));
        assert_eq!(p99_of_buckets(&bounds, &[5, 5, 5], 5), None, "too few");
    }

    #[test]
    fn a_p99_between_two_bounds_is_told_apart_from_one_at_the_upper_bound() {
        let bounds = [0.002, 0.0025, 0.003];
        // 1,000 requests, 989 within 2 ms: the 990th just past 2 ms, the p99 near 2.05 ms;
        // with 900 within 2 ms it is near 2.5 ms. Both fall in the 2.5-ms bucket.
        let early = p99_of_buckets(&bounds, &[989, 1000, 1000], 1000).unwrap();
        let late = p99_of_buckets(&bounds, &[900, 990, 1000], 1000).unwrap();
        assert!((2.0..2.1).contains(&early), "{early}");
        assert!((late - 2.5).abs() < 1e-9, "{late}");
    }

    #[test]
    fn invented_methods_share_one_label() {
        assert_eq!(method_label("GET"), "GET");
        assert_eq!(method_label("PATCH"), "PATCH");
        assert_eq!(method_label("get"), "OTHER", "methods are case-sensitive");
        assert_eq!(method_label(&"X".repeat(2000)), "OTHER");
    }

    #[test]
    fn a_report_covers_the_requests_of_the_last_window_only() {
        let metrics = Metrics::new().unwrap();
        let mut marks = VecDeque::new();
        let start = Instant::now();
        let at = |ms| start + std::time::Duration::from_millis(ms);
        let requests = |n, seconds| {
            for _ in 0..n {
                metrics.observe_request("/api/v1/users/{id}", "GET", 200, seconds);
            }
        };
        requests(50, 0.300);
        // No earlier report: nothing said about what came before it.
        assert_eq!(metrics.user_latency_window(&mut marks, at(0)), None);
        requests(50, 0.300);
        metrics.observe_request("/api/admin/migration", "GET", 200, 9.0);
        // 50 requests in the 200-500 ms bucket: the 49.5th of them, near its top.
        let slow = metrics.user_latency_window(&mut marks, at(500)).unwrap();
        assert_eq!(
            slow.counts.last(),
            Some(&50),
            "users' requests since then only"
        );
        assert!((slow.p99_ms().unwrap() - 497.0).abs() < 1e-6);
        requests(50, 0.0008);
        // Within the window every report goes back to the report at 0: the slow ones stay
        // in until it has passed.
        for ms in [1000, 2000] {
            let window = metrics.user_latency_window(&mut marks, at(ms)).unwrap();
            assert_eq!(window.counts.last(), Some(&100), "at {ms} ms");
        }
        requests(10, 0.0008);
        let later = metrics.user_latency_window(&mut marks, at(2500)).unwrap();
        assert_eq!(later.counts.last(), Some(&60), "since the report at 500 ms");
        assert!((0.75..=1.0).contains(&later.p99_ms().unwrap()));
        // No report for longer than the window: none now, one over the last beat next.
        assert_eq!(metrics.user_latency_window(&mut marks, at(60_000)), None);
        requests(30, 0.0008);
        let next = metrics.user_latency_window(&mut marks, at(60_500)).unwrap();
        assert_eq!(next.counts.last(), Some(&30));
        assert_eq!(marks.len(), 2);
    }

    #[test]
    fn the_fleets_p99_sums_the_instances_histograms() {
        let le = vec![0.001, 0.002, 0.004];
        let window = |counts: Vec<i64>| LatencyWindow {
            le: le.clone(),
            counts,
        };
        let report = |window: LatencyWindow| InstanceLatency {
            p99_ms: window.p99_ms(),
            window: Some(window),
        };
        // 1,000 fast requests on one instance, 20 of 40 slow on another: the second's own p99
        // is in the slowest bucket; across the fleet, 20 of 1,040 (2 %) are slow: the p99 is
        // too.
        let fast = report(window(vec![1000, 1000, 1000, 1000]));
        let slowish = report(window(vec![20, 20, 40, 40]));
        assert!(slowish.p99_ms.unwrap() > 3.9);
        let fleet = fleet_p99_ms(&[fast.clone(), slowish]).unwrap();
        assert!((2.0..=4.0).contains(&fleet), "{fleet}");
        // 5 slow of 1,040 (0.5 %): within the fast bucket.
        let few_slow = report(window(vec![35, 35, 40, 40]));
        let fleet = fleet_p99_ms(&[fast.clone(), few_slow]).unwrap();
        assert!(fleet <= 1.0, "{fleet}");
        // An instance that reports only its p99 counts with it, where it is worse.
        let only_p99 = InstanceLatency {
            p99_ms: Some(7.0),
            window: None,
        };
        assert_eq!(fleet_p99_ms(&[fast.clone(), only_p99]), Some(7.0));
        // Other buckets do not add up with these: summed apart, the worse p99 counts.
        let other = report(LatencyWindow {
            le: vec![0.001, 0.01],
            counts: vec![0, 100, 100],
        });
        let fleet = fleet_p99_ms(&[fast.clone(), other]).unwrap();
        assert!(fleet > 9.0, "{fleet}");
        assert_eq!(fleet_p99_ms(&[]), None);
        let empty = report(window(vec![0, 0, 0, 0]));
        assert_eq!(fleet_p99_ms(&[empty]), None);
    }
}
