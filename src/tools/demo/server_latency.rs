//! The users' latency as the servers measure it: every instance's
//! `zdm_user_request_duration_seconds` histogram, read from its `/metrics` every `EVERY`
//! through the run, so that each segment's p99 can be told as the instances saw it. That is
//! where production judges latency: the clients here share the machine's cores with the
//! instances and PostgreSQL, and their own p99 carries the queueing that sharing adds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const EVERY: Duration = Duration::from_millis(250);

/// How long a reading waits for an instance (its `/metrics` reads the database too).
const PATIENCE: Duration = Duration::from_secs(2);

/// The histogram's name in the instances' exposition.
const HISTOGRAM: &str = "zdm_user_request_duration_seconds_bucket";

/// One instance's histogram at a moment: the cumulative count of each bucket, in the
/// order of `Histogram::bounds`.
type Counts = Vec<u64>;

/// The buckets' upper bounds (seconds) and counts of an exposition's user-latency
/// histogram (`+Inf` left out), or `None` if it has none.
pub fn parse_exposition(text: &str) -> Option<(Vec<f64>, Counts)> {
    let mut bounds = Vec::new();
    let mut counts = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(HISTOGRAM) else {
            continue;
        };
        let (labels, value) = rest.rsplit_once(' ')?;
        let le = labels.split("le=\"").nth(1)?.split('"').next()?;
        if le == "+Inf" {
            continue;
        }
        bounds.push(le.parse().ok()?);
        counts.push(value.trim().parse::<f64>().ok()? as u64);
    }
    (!bounds.is_empty()).then_some((bounds, counts))
}

/// One reading of every instance, at `at_ms` since the traffic started (`None` for an
/// instance that did not answer in time: stopped, restarting, or without a database).
#[derive(Debug, Clone)]
struct Reading {
    at_ms: u32,
    instances: Vec<Option<Counts>>,
}

/// The readings of a run.
#[derive(Debug, Clone, Default)]
pub struct ServerLatency {
    /// The buckets' upper bounds, in seconds.
    bounds: Vec<f64>,
    readings: Vec<Reading>,
}

impl ServerLatency {
    /// The requests every instance answered during `[start_ms, end_ms]`, by bucket
    /// (cumulative), from each instance's first reading in the span to its last. An instance
    /// whose counts went down in between was restarted: it counts from zero.
    pub fn between(&self, start_ms: u32, end_ms: u32) -> Counts {
        let mut total = vec![0; self.bounds.len()];
        let within = || {
            self.readings
                .iter()
                .filter(move |r| r.at_ms >= start_ms && r.at_ms <= end_ms)
        };
        let instances = self.readings.first().map_or(0, |r| r.instances.len());
        for i in 0..instances {
            let mut seen = within().filter_map(|r| r.instances.get(i)?.as_ref());
            let Some(first) = seen.next() else {
                continue;
            };
            let last = seen.next_back().unwrap_or(first);
            let restarted = last.iter().zip(first).any(|(l, f)| l < f);
            for (sum, (l, f)) in total.iter_mut().zip(last.iter().zip(first)) {
                *sum += if restarted { *l } else { l - f };
            }
        }
        total
    }

    /// The p99 in ms of `counts` (see `between`), or `None` with too few requests.
    pub fn p99_ms(&self, counts: &[u64]) -> Option<f64> {
        let total = counts.last().copied().unwrap_or(0);
        crate::metrics::p99_of_buckets(&self.bounds, counts, total)
    }
}

/// Reads the instances' histograms in the background until `finish`.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    handle: actix_web::rt::task::JoinHandle<ServerLatency>,
}

impl Sampler {
    /// Starts reading `urls`' `/metrics`, timed from `started`.
    pub fn start(urls: Arc<Vec<String>>, started: Instant) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = actix_web::rt::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(PATIENCE)
                .build()
                .unwrap_or_default();
            let mut latency = ServerLatency::default();
            while !stopped.load(Ordering::Acquire) {
                let at_ms = started.elapsed().as_millis() as u32;
                let mut instances = Vec::with_capacity(urls.len());
                for url in urls.iter() {
                    instances.push(read_one(&http, url, &mut latency.bounds).await);
                }
                latency.readings.push(Reading { at_ms, instances });
                actix_web::rt::time::sleep(EVERY).await;
            }
            latency
        });
        Self { stop, handle }
    }

    /// Stops reading, and returns the readings.
    pub async fn finish(self) -> ServerLatency {
        self.stop.store(true, Ordering::Release);
        self.handle.await.unwrap_or_default()
    }
}

/// One instance's histogram, if it answered in time with one bucketed as the others.
async fn read_one(http: &reqwest::Client, url: &str, bounds: &mut Vec<f64>) -> Option<Counts> {
    let text = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let (these, counts) = parse_exposition(&text)?;
    if bounds.is_empty() {
        bounds.clone_from(&these);
    }
    (*bounds == these).then_some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "# HELP zdm_user_request_duration_seconds Time to answer\n\
        # TYPE zdm_user_request_duration_seconds histogram\n\
        zdm_user_request_duration_seconds_bucket{le=\"0.001\"} 90\n\
        zdm_user_request_duration_seconds_bucket{le=\"0.01\"} 99\n\
        zdm_user_request_duration_seconds_bucket{le=\"0.1\"} 100\n\
        zdm_user_request_duration_seconds_bucket{le=\"+Inf\"} 100\n\
        zdm_user_request_duration_seconds_sum 0.2\n\
        zdm_user_request_duration_seconds_count 100\n";

    #[test]
    fn reads_the_user_latency_histogram_of_an_exposition() {
        assert_eq!(
            parse_exposition(EXPOSITION),
            Some((vec![0.001, 0.01, 0.1], vec![90, 99, 100]))
        );
        assert_eq!(parse_exposition("http_requests_total 3\n"), None);
    }

    fn reading(at_ms: u32, instances: Vec<Option<Counts>>) -> Reading {
        Reading { at_ms, instances }
    }

    #[test]
    fn a_span_counts_each_instances_requests_from_its_first_reading_to_its_last() {
        let latency = ServerLatency {
            bounds: vec![0.001, 0.01, 0.1],
            readings: vec![
                reading(0, vec![Some(vec![10, 10, 10]), Some(vec![5, 5, 5])]),
                reading(250, vec![Some(vec![50, 60, 60]), None]),
                // The second instance was restarted: its counts start again.
                reading(500, vec![Some(vec![100, 110, 120]), Some(vec![1, 2, 3])]),
            ],
        };
        assert_eq!(latency.between(0, 500), vec![90 + 1, 100 + 2, 110 + 3]);
        assert_eq!(latency.between(200, 500), vec![50, 50, 60]);
        // 113 requests, the 111.87th of them (99 %) the 9.87th of the 11 in the 10-100 ms
        // bucket: 10 + 90 × 9.87 / 11 ms.
        let p99 = latency.p99_ms(&latency.between(0, 500)).unwrap();
        assert!((p99 - (10.0 + 90.0 * 9.87 / 11.0)).abs() < 1e-6, "{p99}");
    }
}
