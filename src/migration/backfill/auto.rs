//! Auto mode: the runner picks the number of workers itself, by additive increase and
//! multiplicative decrease. While the users' p99 that the instances report and the replicas'
//! lag stay within their limits it adds one worker at a time; when either is over, it halves
//! the count, down to one worker, which then waits as a throttled backfill does.

use std::time::Duration;

use super::MAX_WORKERS;

/// A worker is added at most this often, and only while every report since the last change
/// stayed within the limits (each is looked at as it comes).
pub(super) const ADD_AFTER: Duration = Duration::from_secs(2);

/// How often the runner looks.
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(250);

/// What the runner reads before it decides.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reading {
    /// The worst p99 among the reports that came after the last change (none: no instance
    /// reported one, too few requests).
    pub worst_p99_ms: Option<f64>,
    /// Instances whose last report came after the last change.
    pub fresh_reports: i64,
    /// Instances heard of lately.
    pub live_instances: i64,
    /// The replicas' largest replay lag in bytes, or why it cannot be measured.
    pub lag: Result<i64, String>,
}

/// The limits auto mode keeps to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub p99_budget_ms: f64,
    pub max_lag_bytes: i64,
}

/// The number of workers to change to from `workers`, and why; `None` to keep it. `since`:
/// how long ago the count last changed.
pub(super) fn decide(
    workers: i32,
    limits: Limits,
    reading: &Reading,
    since: Duration,
) -> Option<(i32, String)> {
    let Limits {
        p99_budget_ms,
        max_lag_bytes,
    } = limits;
    let lag = match &reading.lag {
        Err(why) => return halve(workers, why),
        Ok(lag) if *lag > max_lag_bytes => {
            return halve(
                workers,
                &format!("replica lag {lag} bytes is above the limit of {max_lag_bytes} bytes"),
            );
        }
        Ok(lag) => *lag,
    };
    // The instances have not reported on the requests made since the last change yet.
    if reading.live_instances > 0 && reading.fresh_reports == 0 {
        return None;
    }
    let requests = match reading.worst_p99_ms {
        Some(p99) if p99 > p99_budget_ms => {
            return halve(
                workers,
                &format!("requests' p99 of {p99:.1} ms is above the budget of {p99_budget_ms} ms"),
            );
        }
        Some(p99) => {
            format!("requests' p99 of {p99:.1} ms is within the budget of {p99_budget_ms} ms")
        }
        None => "no instance reports a p99 (too few requests)".to_owned(),
    };
    if workers >= MAX_WORKERS || since < ADD_AFTER {
        return None;
    }
    Some((
        workers + 1,
        format!("{requests} and the replicas' lag ({lag} bytes) within its limit: one more worker"),
    ))
}

fn halve(workers: i32, why: &str) -> Option<(i32, String)> {
    (workers > 1).then(|| ((workers / 2).max(1), format!("{why}: half the workers")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        p99_budget_ms: 5.0,
        max_lag_bytes: 1000,
    };

    fn reading(p99: Option<f64>, lag: Result<i64, String>) -> Reading {
        Reading {
            worst_p99_ms: p99,
            fresh_reports: 2,
            live_instances: 2,
            lag,
        }
    }

    #[test]
    fn adds_one_worker_at_a_time_while_within_the_limits() {
        let within = reading(Some(3.0), Ok(10));
        let (next, why) = decide(2, LIMITS, &within, ADD_AFTER).unwrap();
        assert_eq!(next, 3);
        assert!(
            why.contains("p99 of 3.0 ms is within the budget of 5 ms"),
            "{why}"
        );
        assert_eq!(decide(2, LIMITS, &within, ADD_AFTER / 2), None, "not yet");
        assert_eq!(decide(MAX_WORKERS, LIMITS, &within, ADD_AFTER), None);
        // Nobody reports a p99: no request is slow.
        assert_eq!(
            decide(1, LIMITS, &reading(None, Ok(0)), ADD_AFTER).map(|d| d.0),
            Some(2)
        );
    }

    #[test]
    fn halves_when_over_a_limit_down_to_one() {
        let slow = reading(Some(7.5), Ok(0));
        let (next, why) = decide(5, LIMITS, &slow, Duration::ZERO).unwrap();
        assert_eq!(next, 2);
        assert!(why.starts_with("requests' p99 of 7.5 ms is above"), "{why}");
        assert_eq!(decide(2, LIMITS, &slow, ADD_AFTER).map(|d| d.0), Some(1));
        // One worker over the budget: no change; that worker waits (the throttle).
        assert_eq!(decide(1, LIMITS, &slow, ADD_AFTER * 10), None);
        let lagging = reading(Some(1.0), Ok(5000));
        assert_eq!(decide(4, LIMITS, &lagging, ADD_AFTER).map(|d| d.0), Some(2));
        let unreachable = reading(Some(1.0), Err("replica 1 cannot be reached".to_owned()));
        let (next, why) = decide(3, LIMITS, &unreachable, ADD_AFTER).unwrap();
        assert_eq!(next, 1);
        assert_eq!(why, "replica 1 cannot be reached: half the workers");
    }

    #[test]
    fn waits_for_reports_that_cover_the_last_change() {
        let stale = Reading {
            fresh_reports: 0,
            ..reading(Some(7.5), Ok(0))
        };
        assert_eq!(decide(4, LIMITS, &stale, ADD_AFTER), None);
        // No instance at all: nothing to wait for.
        let alone = Reading {
            fresh_reports: 0,
            live_instances: 0,
            ..reading(None, Ok(0))
        };
        assert_eq!(decide(4, LIMITS, &alone, ADD_AFTER).map(|d| d.0), Some(5));
    }
}
