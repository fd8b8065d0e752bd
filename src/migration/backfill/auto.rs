//! Auto mode: the runner picks the number of workers itself, by one of two rules
//! (`AutoRule`): the zone rule (`zone`, the default), or additive increase and multiplicative
//! decrease, here. Both halve the count when the replicas' lag is over its limit. Under AIMD,
//! while the users' p99 that the instances report and the replicas' lag stay within their
//! limits it adds one worker at a time; when either is over, it halves the count, down to one
//! worker, which then waits as a throttled backfill does. A worker added and taken away again
//! before its count held for `PROBE_HOLDS` was a failed probe: each one in a row at the same
//! count doubles the wait before the next addition reaching that count (2, 4, 8, 16, 32 s), so
//! that a server without room for another worker is not probed every few seconds at the
//! users' expense; once that count holds, the wait is reset.

use std::time::{Duration, Instant};

use super::MAX_WORKERS;
use super::throttle::REPORT_COVERS;

/// How auto mode moves the number of workers (`ZDM_BACKFILL_AUTO_RULE`). The default is the
/// zone rule, the one that held the budget: in interleaved runs on the demo under a relative
/// budget of 1.5 (the fleet's p99 over 2-s windows, batches of at least 2 ms), it held it in
/// 12 runs of 12 over three sets, at 1.14–1.29 × one worker's rate; AIMD, side by side, in
/// 11 of 12 at 0.99–1.94 × (it adds a worker whenever a reading is within the budget, so it
/// keeps probing past it and halving back). `zdm bench pacing`; README, "The backfill's cost
/// to the users".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AutoRule {
    /// One worker more while the p99 is low in the headroom between the users' p99 when the
    /// run started and the budget, none in a dead band above that, one fewer above the band,
    /// half as many only over the budget (see `zone`).
    #[default]
    Zone,
    /// One worker more while every reading is within the budget, half as many on a reading
    /// over it.
    Aimd,
}

impl AutoRule {
    pub fn as_str(self) -> &'static str {
        match self {
            AutoRule::Zone => "zone",
            AutoRule::Aimd => "aimd",
        }
    }
}

impl std::fmt::Display for AutoRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AutoRule {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value.trim().to_ascii_lowercase().as_str() {
            "zone" => Ok(AutoRule::Zone),
            "aimd" => Ok(AutoRule::Aimd),
            _ => Err(format!("{value:?} is no auto rule: \"zone\" or \"aimd\"")),
        }
    }
}

/// A worker is added once the count has held this long with every reading within the limits
/// (`Calm`): a reading over them starts the wait again, also at one worker, which it only
/// makes wait.
pub(super) const ADD_AFTER: Duration = Duration::from_secs(2);

/// An addition taken back before its count held this long was a failed probe: the readings
/// that can take it back come only once the instances' reports cover the new count
/// (`REPORT_COVERS`, 2.2 s), and it must then hold for `ADD_AFTER`.
pub(super) const PROBE_HOLDS: Duration = ADD_AFTER.saturating_add(REPORT_COVERS);

/// Failed probes in a row beyond which the wait stops doubling (2 s · 2^4 = 32 s).
const MAX_BACKOFF_DOUBLINGS: u32 = 4;

/// The additions that did not hold: how long to wait before the next one.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Probes {
    /// The count an addition reached and that was taken back at once, and how many times in
    /// a row that happened.
    failed_at: Option<i32>,
    failed: u32,
    /// The count the last addition reached, while it is the count.
    trying: Option<i32>,
}

impl Probes {
    /// How long the count must hold before a worker is added to reach `next`.
    pub fn add_after(self, next: i32) -> Duration {
        if self.failed_at == Some(next) {
            ADD_AFTER * 2u32.pow(self.failed.min(MAX_BACKOFF_DOUBLINGS))
        } else {
            ADD_AFTER
        }
    }

    /// Notes a change of the count from `from`, which it had for `held`, to `to`.
    pub fn changed(&mut self, from: i32, to: i32, held: Duration) {
        let held_long = held >= PROBE_HOLDS;
        if to > from {
            // Adding beyond the count that failed: it held.
            if self.failed_at == Some(from) {
                *self = Probes::default();
            }
            self.trying = Some(to);
            return;
        }
        if self.trying.take() == Some(from) && !held_long {
            self.failed = if self.failed_at == Some(from) {
                self.failed + 1
            } else {
                1
            };
            self.failed_at = Some(from);
        } else if held_long && self.failed_at == Some(from) {
            *self = Probes::default();
        }
    }
}

/// How often the runner looks.
pub(super) const LOOK_EVERY: Duration = Duration::from_millis(250);

/// What the runner reads before it decides.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Reading {
    /// The users' p99 across the reports that came after the last change
    /// (`metrics::fleet_p99_ms`; none: no instance reported one, too few requests).
    pub p99_ms: Option<f64>,
    /// Instances whose last report came after the last change.
    pub fresh_reports: i64,
    /// Instances heard of lately.
    pub live_instances: i64,
    /// The replicas' largest replay lag in bytes, or why it cannot be measured.
    pub lag: Result<i64, String>,
}

impl Reading {
    /// Whether the instances have yet to report on the requests made since the last change.
    pub fn awaits_fresh_reports(&self) -> bool {
        self.live_instances > 0 && self.fresh_reports == 0
    }
}

/// The limits auto mode keeps to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub p99_budget_ms: f64,
    pub max_lag_bytes: i64,
    /// The users' p99 the instances reported when the run started, if any: where the zone
    /// rule's headroom begins.
    pub quiet_p99_ms: Option<f64>,
}

/// Whether `reading` is over a limit: the replicas' lag (or it cannot be measured), or a
/// p99 above the budget. Such a reading halves the count or, at one worker, makes it wait
/// (the throttle), and the time it must then hold before a worker is added starts again.
pub(super) fn is_over(limits: Limits, reading: &Reading) -> bool {
    lag_over(limits, reading).is_some() || p99_over(limits, reading).is_some()
}

/// Why the replicas' lag is over its limit, or why it cannot be measured, if so.
pub(super) fn lag_over(limits: Limits, reading: &Reading) -> Option<String> {
    match &reading.lag {
        Err(why) => Some(why.clone()),
        Ok(lag) if *lag > limits.max_lag_bytes => Some(format!(
            "replica lag {lag} bytes is above the limit of {} bytes",
            limits.max_lag_bytes
        )),
        Ok(_) => None,
    }
}

/// Why the requests' p99 is over the budget, if it is.
pub(super) fn p99_over(limits: Limits, reading: &Reading) -> Option<String> {
    let budget = limits.p99_budget_ms;
    reading
        .p99_ms
        .filter(|p99| *p99 > budget)
        .map(|p99| format!("requests' p99 of {p99:.1} ms is above the budget of {budget} ms"))
}

/// How long the count has held with every reading within the limits.
#[derive(Debug, Clone, Copy)]
pub(super) struct Calm {
    since: Instant,
}

impl Calm {
    pub fn new(now: Instant) -> Self {
        Self { since: now }
    }

    /// The count changed, or a worker waits for the throttle (a reading over a limit the
    /// runner's own looks did not see), at `now`: the wait starts again.
    pub fn restart(&mut self, now: Instant) {
        self.since = now;
    }

    /// Notes `reading`, taken at `now`, and answers how long it has been calm.
    pub fn saw(&mut self, limits: Limits, reading: &Reading, now: Instant) -> Duration {
        if is_over(limits, reading) {
            self.since = now;
        }
        now.saturating_duration_since(self.since)
    }
}

/// The number of workers to change to from `workers`, and why; `None` to keep it. `calm`:
/// how long the count has held with every reading within the limits (since the count last
/// changed or a reading was over, whichever came later: `is_over`); `add_after`: how long it
/// must hold so before a worker is added (`Probes::add_after`).
pub(super) fn decide(
    workers: i32,
    limits: Limits,
    reading: &Reading,
    calm: Duration,
    add_after: Duration,
) -> Option<(i32, String)> {
    if let Some(why) = lag_over(limits, reading) {
        return halve(workers, &why);
    }
    // Within its limit, so measured.
    let lag = reading.lag.as_ref().map_or(0, |lag| *lag);
    if reading.awaits_fresh_reports() {
        return None;
    }
    if let Some(why) = p99_over(limits, reading) {
        return halve(workers, &why);
    }
    let budget = limits.p99_budget_ms;
    let requests = match reading.p99_ms {
        Some(p99) => format!("requests' p99 of {p99:.1} ms is within the budget of {budget} ms"),
        None => "no instance reports a p99 (too few requests)".to_owned(),
    };
    if workers >= MAX_WORKERS || calm < add_after {
        return None;
    }
    Some((
        workers + 1,
        format!("{requests} and the replicas' lag ({lag} bytes) within its limit: one more worker"),
    ))
}

pub(super) fn halve(workers: i32, why: &str) -> Option<(i32, String)> {
    (workers > 1).then(|| ((workers / 2).max(1), format!("{why}: half the workers")))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn a_rule_reads_from_its_name_and_a_bad_one_says_which_there_are() {
        assert_eq!("zone".parse(), Ok(AutoRule::Zone));
        assert_eq!(" AIMD ".parse(), Ok(AutoRule::Aimd));
        let err = "spirit".parse::<AutoRule>().unwrap_err();
        assert_eq!(err, "\"spirit\" is no auto rule: \"zone\" or \"aimd\"");
    }

    const LIMITS: Limits = Limits {
        p99_budget_ms: 5.0,
        max_lag_bytes: 1000,
        quiet_p99_ms: None,
    };

    pub(in crate::migration::backfill) fn reading(
        p99: Option<f64>,
        lag: Result<i64, String>,
    ) -> Reading {
        Reading {
            p99_ms: p99,
            fresh_reports: 2,
            live_instances: 2,
            lag,
        }
    }

    #[test]
    fn adds_one_worker_at_a_time_while_within_the_limits() {
        let within = reading(Some(3.0), Ok(10));
        let (next, why) = decide(2, LIMITS, &within, ADD_AFTER, ADD_AFTER).unwrap();
        assert_eq!(next, 3);
        assert!(
            why.contains("p99 of 3.0 ms is within the budget of 5 ms"),
            "{why}"
        );
        assert_eq!(
            decide(2, LIMITS, &within, ADD_AFTER / 2, ADD_AFTER),
            None,
            "not yet"
        );
        assert_eq!(
            decide(MAX_WORKERS, LIMITS, &within, ADD_AFTER, ADD_AFTER),
            None
        );
        // Nobody reports a p99: no request is slow.
        assert_eq!(
            decide(1, LIMITS, &reading(None, Ok(0)), ADD_AFTER, ADD_AFTER).map(|d| d.0),
            Some(2)
        );
    }

    #[test]
    fn halves_when_over_a_limit_down_to_one() {
        let slow = reading(Some(7.5), Ok(0));
        let (next, why) = decide(5, LIMITS, &slow, Duration::ZERO, ADD_AFTER).unwrap();
        assert_eq!(next, 2);
        assert!(why.starts_with("requests' p99 of 7.5 ms is above"), "{why}");
        assert_eq!(
            decide(2, LIMITS, &slow, ADD_AFTER, ADD_AFTER).map(|d| d.0),
            Some(1)
        );
        // One worker over the budget: no change; that worker waits (the throttle).
        assert_eq!(decide(1, LIMITS, &slow, ADD_AFTER * 10, ADD_AFTER), None);
        let lagging = reading(Some(1.0), Ok(5000));
        assert_eq!(
            decide(4, LIMITS, &lagging, ADD_AFTER, ADD_AFTER).map(|d| d.0),
            Some(2)
        );
        let unreachable = reading(Some(1.0), Err("replica 1 cannot be reached".to_owned()));
        let (next, why) = decide(3, LIMITS, &unreachable, ADD_AFTER, ADD_AFTER).unwrap();
        assert_eq!(next, 1);
        assert_eq!(why, "replica 1 cannot be reached: half the workers");
    }

    #[test]
    fn each_failed_probe_doubles_the_wait_and_a_count_that_holds_resets_it() {
        let quick = Duration::from_millis(500);
        let mut probes = Probes::default();
        assert_eq!(probes.add_after(2), ADD_AFTER);
        let mut waits = Vec::new();
        for _ in 0..6 {
            probes.changed(1, 2, ADD_AFTER);
            probes.changed(2, 1, quick);
            waits.push(probes.add_after(2).as_secs());
        }
        assert_eq!(waits, [4, 8, 16, 32, 32, 32]);
        assert_eq!(probes.add_after(3), ADD_AFTER, "only the count that failed");
        let within = reading(Some(1.0), Ok(0));
        assert_eq!(
            decide(1, LIMITS, &within, ADD_AFTER * 15, probes.add_after(2)),
            None
        );
        assert_eq!(
            decide(1, LIMITS, &within, ADD_AFTER * 16, probes.add_after(2)).map(|d| d.0),
            Some(2)
        );

        // From four workers: the fifth fails each time, the climb back to four does not
        // reset it.
        let mut probes = Probes::default();
        for _ in 0..3 {
            probes.changed(4, 5, ADD_AFTER);
            probes.changed(5, 2, quick);
            assert_eq!(probes.add_after(3), ADD_AFTER);
            probes.changed(2, 3, ADD_AFTER);
            probes.changed(3, 4, ADD_AFTER);
        }
        assert_eq!(probes.add_after(5), ADD_AFTER * 8);
        // Five workers that held long enough for a sixth: the wait is reset.
        probes.changed(4, 5, ADD_AFTER * 8);
        probes.changed(5, 6, ADD_AFTER);
        assert_eq!(probes.add_after(5), ADD_AFTER);

        // Taken back before the reports covering it could have held for ADD_AFTER: failed.
        let mut probes = Probes::default();
        probes.changed(1, 2, ADD_AFTER);
        probes.changed(2, 1, PROBE_HOLDS - Duration::from_millis(100));
        assert_eq!(probes.add_after(2), ADD_AFTER * 2);

        // A count that held and is halved later (the users' traffic grew) is no failed probe.
        let mut probes = Probes::default();
        probes.changed(1, 2, ADD_AFTER);
        probes.changed(2, 1, ADD_AFTER * 10);
        assert_eq!(probes.add_after(2), ADD_AFTER);
    }

    #[test]
    fn a_reading_over_a_limit_starts_the_wait_for_another_worker_again() {
        let start = Instant::now();
        let mut calm = Calm::new(start);
        let (within, over) = (reading(Some(4.0), Ok(0)), reading(Some(6.0), Ok(0)));
        // One worker near its budget: readings over and within by turns, every 250 ms.
        for tick in 1..=40u32 {
            let now = start + LOOK_EVERY * tick;
            let seen = if tick % 2 == 0 { &over } else { &within };
            let held = calm.saw(LIMITS, seen, now);
            assert_eq!(
                decide(1, LIMITS, seen, held, ADD_AFTER),
                None,
                "no worker added at {:?}",
                now - start
            );
        }
        // Within the budget for 2 s since the last reading over it: one more.
        let last_over = start + LOOK_EVERY * 40;
        let mut added = None;
        for tick in 1..=8u32 {
            let now = last_over + LOOK_EVERY * tick;
            let held = calm.saw(LIMITS, &within, now);
            added = decide(1, LIMITS, &within, held, ADD_AFTER).map(|d| d.0);
            assert_eq!(added.is_some(), tick == 8, "at {:?}", now - last_over);
        }
        assert_eq!(added, Some(2));
        // A change of the count starts it again.
        calm.restart(last_over + ADD_AFTER);
        let held = calm.saw(LIMITS, &within, last_over + ADD_AFTER + LOOK_EVERY);
        assert_eq!(held, LOOK_EVERY);
    }

    #[test]
    fn a_reading_over_a_limit_is_told_apart() {
        assert!(!is_over(LIMITS, &reading(Some(5.0), Ok(1000))));
        assert!(!is_over(LIMITS, &reading(None, Ok(0))));
        assert!(is_over(LIMITS, &reading(Some(5.5), Ok(0))));
        assert!(is_over(LIMITS, &reading(Some(1.0), Ok(1001))));
        assert!(is_over(
            LIMITS,
            &reading(None, Err("replica 1 cannot be reached".to_owned()))
        ));
    }

    #[test]
    fn waits_for_reports_that_cover_the_last_change() {
        let stale = Reading {
            fresh_reports: 0,
            ..reading(Some(7.5), Ok(0))
        };
        assert_eq!(decide(4, LIMITS, &stale, ADD_AFTER, ADD_AFTER), None);
        // No instance at all: nothing to wait for.
        let alone = Reading {
            fresh_reports: 0,
            live_instances: 0,
            ..reading(None, Ok(0))
        };
        assert_eq!(
            decide(4, LIMITS, &alone, ADD_AFTER, ADD_AFTER).map(|d| d.0),
            Some(5)
        );
    }
}
