//! Auto mode's zone rule, after Spirit (Block's MySQL schema-change tool), which dropped
//! halving because the count sawtoothed against the load it caused itself. The users' p99 is
//! placed in the headroom between their p99 when the run started (the quiet p99) and the
//! budget: below `ADD_BELOW` of it (held for `auto::ADD_AFTER`, longer after failed probes)
//! one worker more; inside the dead band up to `REMOVE_ABOVE`, no change; above the band
//! (held for `REMOVE_AFTER`) one worker fewer; over the budget (held for `HALVE_AFTER`) half
//! as many. The replicas' lag over its limit halves at once, as under AIMD.
//!
//! Why the headroom and not the budget itself: with a relative budget of 1.5 the quiet p99
//! is already 67 % of the budget, so Spirit's "below 40 % of the budget" never holds and the
//! rule would stay at one worker. Measured on the demo (`--quick --rows 200000`, 2 idle
//! cores): quiet p99 1.5 ms, budget 2.25 ms (40 % of it, 0.9 ms, is below any reading).
//! The headroom is 0.75 ms, three of the histogram's quarter-millisecond buckets there, and
//! the readings are interpolated within them (`metrics::p99_of_buckets`): one worker more
//! below 1.8 ms, none up to 2.03 ms, fewer above.

use std::time::{Duration, Instant};

use super::MAX_WORKERS;
use super::auto::{Limits, Reading, halve, lag_over, p99_over};

/// Below this share of the headroom between the quiet p99 and the budget, a worker is added.
pub(super) const ADD_BELOW: f64 = 0.4;
/// Above this share (the dead band's top), a worker is taken away.
pub(super) const REMOVE_ABOVE: f64 = 0.7;
/// How long the readings must stay above the band before a worker is taken away. Each
/// reading covers the last 2 s (`metrics::REPORT_WINDOW`), so a slow moment stays in the
/// readings for that long: a burst of slow requests that lifts a 2-s p99 above the band takes
/// a worker away (the measurements in the README were taken so).
pub(super) const REMOVE_AFTER: Duration = Duration::from_millis(1000);
/// How long the readings must stay over the budget before the count is halved. Meanwhile
/// the throttle makes every worker wait before its next batch, so one reading over the
/// budget is already answered.
pub(super) const HALVE_AFTER: Duration = Duration::from_millis(500);

/// Where a reading's p99 falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Zone {
    /// Below `ADD_BELOW` of the headroom, or no p99 reported (too few requests).
    Below,
    /// The dead band.
    Band,
    /// Above the band, within the budget.
    Above,
    /// Over the budget.
    Over,
}

/// `p99`'s share of the headroom between the quiet p99 and the budget (0 at or under the
/// quiet p99, 1 at the budget). Without a quiet p99 under the budget (none was reported when
/// the run started, or a fixed budget below it), the headroom is the whole budget: Spirit's
/// zone.
pub(super) fn share_of_headroom(limits: Limits, p99: f64) -> f64 {
    let budget = limits.p99_budget_ms;
    let floor = limits
        .quiet_p99_ms
        .filter(|quiet| *quiet < budget)
        .unwrap_or(0.0);
    ((p99 - floor) / (budget - floor)).max(0.0)
}

pub(super) fn zone_of(limits: Limits, reading: &Reading) -> Zone {
    match reading.p99_ms {
        None => Zone::Below,
        Some(p99) if p99 > limits.p99_budget_ms => Zone::Over,
        Some(p99) => match share_of_headroom(limits, p99) {
            share if share < ADD_BELOW => Zone::Below,
            share if share <= REMOVE_ABOVE => Zone::Band,
            _ => Zone::Above,
        },
    }
}

/// How long the readings have stayed in each zone that moves the count, since the count
/// last changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Held {
    /// Below the band (no worker waited meanwhile).
    pub below: Duration,
    /// Above the band (over the budget counts: it is above the band too).
    pub above: Duration,
    pub over: Duration,
}

/// Since when the readings have stayed below the band, above it, and over the budget.
#[derive(Debug, Clone, Copy)]
pub(super) struct ZoneClock {
    below: Option<Instant>,
    above: Option<Instant>,
    over: Option<Instant>,
}

impl ZoneClock {
    pub fn new(now: Instant) -> Self {
        Self {
            below: Some(now),
            above: None,
            over: None,
        }
    }

    /// The count changed at `now`: every wait starts again. The first reading that covers
    /// the new count comes `REPORT_COVERS` later and covers 2 s of it: below the band, it has
    /// held for `ADD_AFTER` already.
    pub fn restart(&mut self, now: Instant) {
        *self = Self::new(now);
    }

    /// A worker waited for the throttle at `now` (a reading over the budget the runner's own
    /// looks need not see): the wait for another worker starts again.
    pub fn throttled(&mut self, now: Instant) {
        self.below = Some(now);
    }

    /// Notes the zone of a reading taken at `now`; how long each has held.
    pub fn saw(&mut self, zone: Zone, now: Instant) -> Held {
        fn hold(since: &mut Option<Instant>, inside: bool, now: Instant) -> Duration {
            if !inside {
                *since = None;
                return Duration::ZERO;
            }
            now.saturating_duration_since(*since.get_or_insert(now))
        }
        Held {
            below: hold(&mut self.below, zone == Zone::Below, now),
            above: hold(
                &mut self.above,
                matches!(zone, Zone::Above | Zone::Over),
                now,
            ),
            over: hold(&mut self.over, zone == Zone::Over, now),
        }
    }
}

/// The number of workers to change to from `workers` by the zone rule, and why; `None` to
/// keep it. `held`: how long the readings stayed in each zone (`ZoneClock::saw`);
/// `add_after`: how long they must stay below the band before a worker is added
/// (`auto::Probes::add_after`).
pub(super) fn decide(
    workers: i32,
    limits: Limits,
    reading: &Reading,
    held: Held,
    add_after: Duration,
) -> Option<(i32, String)> {
    if let Some(why) = lag_over(limits, reading) {
        return halve(workers, &why);
    }
    if reading.awaits_fresh_reports() {
        return None;
    }
    let Some(p99) = reading.p99_ms else {
        return (held.below >= add_after && workers < MAX_WORKERS).then(|| {
            (
                workers + 1,
                "no instance reports a p99 (too few requests): one more worker".to_owned(),
            )
        });
    };
    let share = share_of_headroom(limits, p99) * 100.0;
    let headroom = match limits.quiet_p99_ms {
        Some(quiet) if quiet < limits.p99_budget_ms => {
            format!(
                "the headroom from {quiet:.2} to {:.2} ms",
                limits.p99_budget_ms
            )
        }
        _ => format!("the budget of {:.2} ms", limits.p99_budget_ms),
    };
    match zone_of(limits, reading) {
        Zone::Over if held.over >= HALVE_AFTER => {
            halve(workers, &p99_over(limits, reading).unwrap_or_default())
        }
        Zone::Above | Zone::Over if held.above >= REMOVE_AFTER && workers > 1 => Some((
            workers - 1,
            format!(
                "p99 {p99:.2} ms is {share:.0} % of {headroom}, above {:.0} %: one worker fewer",
                REMOVE_ABOVE * 100.0
            ),
        )),
        Zone::Below if held.below >= add_after && workers < MAX_WORKERS => Some((
            workers + 1,
            format!(
                "p99 {p99:.2} ms is {share:.0} % of {headroom}, below {:.0} %, and the replicas' lag within its limit: one more worker",
                ADD_BELOW * 100.0
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::auto::{ADD_AFTER, tests::reading};
    use super::*;

    /// A relative budget of 1.5 over a quiet p99 of 2 ms: the headroom is 2–3 ms.
    const LIMITS: Limits = Limits {
        p99_budget_ms: 3.0,
        max_lag_bytes: 1000,
        quiet_p99_ms: Some(2.0),
    };

    fn held(below: Duration, above: Duration, over: Duration) -> Held {
        Held { below, above, over }
    }

    const LONG: Duration = Duration::from_secs(60);
    const NONE: Duration = Duration::ZERO;

    #[test]
    fn the_zone_lies_in_the_headroom_between_the_quiet_p99_and_the_budget() {
        let zone = |p99| zone_of(LIMITS, &reading(Some(p99), Ok(0)));
        assert_eq!(zone(1.0), Zone::Below);
        assert_eq!(zone(2.3), Zone::Below, "30 % of the headroom");
        assert_eq!(zone(2.5), Zone::Band, "50 %");
        assert_eq!(zone(2.65), Zone::Band, "65 %");
        assert_eq!(zone(2.8), Zone::Above, "80 %");
        assert_eq!(zone(3.0), Zone::Above, "at the budget");
        assert_eq!(zone(3.1), Zone::Over);
        assert_eq!(zone_of(LIMITS, &reading(None, Ok(0))), Zone::Below);
        // No quiet p99 under the budget: the zone is over the whole budget (Spirit's).
        for quiet in [None, Some(4.0)] {
            let limits = Limits {
                quiet_p99_ms: quiet,
                ..LIMITS
            };
            assert_eq!(zone_of(limits, &reading(Some(1.1), Ok(0))), Zone::Below);
            assert_eq!(zone_of(limits, &reading(Some(2.0), Ok(0))), Zone::Band);
            assert_eq!(zone_of(limits, &reading(Some(2.4), Ok(0))), Zone::Above);
        }
    }

    #[test]
    fn adds_one_worker_below_the_band_once_it_held() {
        let low = reading(Some(2.3), Ok(10));
        let (next, why) = decide(2, LIMITS, &low, held(ADD_AFTER, NONE, NONE), ADD_AFTER).unwrap();
        assert_eq!(next, 3);
        assert_eq!(
            why,
            "p99 2.30 ms is 30 % of the headroom from 2.00 to 3.00 ms, below 40 %, and the replicas' lag within its limit: one more worker"
        );
        let not_yet = held(ADD_AFTER / 2, NONE, NONE);
        assert_eq!(decide(2, LIMITS, &low, not_yet, ADD_AFTER), None);
        let at_most = held(LONG, NONE, NONE);
        assert_eq!(decide(MAX_WORKERS, LIMITS, &low, at_most, ADD_AFTER), None);
        let quiet = reading(None, Ok(0));
        assert_eq!(
            decide(1, LIMITS, &quiet, at_most, ADD_AFTER).map(|d| d.0),
            Some(2)
        );
    }

    #[test]
    fn holds_inside_the_dead_band_however_long() {
        for p99 in [2.45, 2.5, 2.65] {
            let band = reading(Some(p99), Ok(0));
            for workers in [1, 3, MAX_WORKERS] {
                assert_eq!(
                    decide(workers, LIMITS, &band, held(NONE, NONE, NONE), ADD_AFTER),
                    None,
                    "{p99} ms at {workers}"
                );
            }
        }
    }

    #[test]
    fn takes_one_worker_away_above_the_band_once_it_held() {
        let high = reading(Some(2.8), Ok(0));
        let (next, why) =
            decide(4, LIMITS, &high, held(NONE, REMOVE_AFTER, NONE), ADD_AFTER).expect("one fewer");
        assert_eq!(next, 3, "one fewer, not half");
        assert_eq!(
            why,
            "p99 2.80 ms is 80 % of the headroom from 2.00 to 3.00 ms, above 70 %: one worker fewer"
        );
        let brief = held(NONE, REMOVE_AFTER / 2, NONE);
        assert_eq!(decide(4, LIMITS, &high, brief, ADD_AFTER), None);
        let long = held(NONE, LONG, NONE);
        assert_eq!(decide(1, LIMITS, &high, long, ADD_AFTER), None, "one stays");
    }

    #[test]
    fn halves_only_over_the_budget_and_at_once_on_lag() {
        let over = reading(Some(4.0), Ok(0));
        let (next, why) =
            decide(5, LIMITS, &over, held(NONE, LONG, HALVE_AFTER), ADD_AFTER).expect("halved");
        assert_eq!(next, 2);
        assert_eq!(
            why,
            "requests' p99 of 4.0 ms is above the budget of 3 ms: half the workers"
        );
        // Over the budget for a moment, above the band for longer: one fewer.
        let moment = held(NONE, REMOVE_AFTER, HALVE_AFTER / 2);
        assert_eq!(
            decide(5, LIMITS, &over, moment, ADD_AFTER).map(|d| d.0),
            Some(4)
        );
        assert_eq!(
            decide(5, LIMITS, &over, held(NONE, NONE, NONE), ADD_AFTER),
            None
        );
        // The replicas' lag halves at once, whatever the p99.
        let lagging = reading(Some(1.0), Ok(5000));
        let (next, why) = decide(4, LIMITS, &lagging, held(LONG, NONE, NONE), ADD_AFTER).unwrap();
        assert_eq!(next, 2);
        assert_eq!(
            why,
            "replica lag 5000 bytes is above the limit of 1000 bytes: half the workers"
        );
        let unreachable = reading(Some(1.0), Err("replica 1 cannot be reached".to_owned()));
        assert_eq!(
            decide(3, LIMITS, &unreachable, held(LONG, NONE, NONE), ADD_AFTER).map(|d| d.0),
            Some(1)
        );
    }

    #[test]
    fn the_clock_counts_each_zone_from_its_first_reading_and_a_change_restarts_it() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut clock = ZoneClock::new(start);
        assert_eq!(clock.saw(Zone::Below, at(1000)).below, at(1000) - start);
        assert_eq!(clock.saw(Zone::Band, at(1250)), Held::default());
        assert_eq!(clock.saw(Zone::Below, at(1500)).below, NONE);
        assert_eq!(clock.saw(Zone::Below, at(2000)).below, at(500) - start);
        clock.throttled(at(2100));
        assert_eq!(clock.saw(Zone::Below, at(2200)).below, at(100) - start);
        assert_eq!(clock.saw(Zone::Above, at(2500)).above, NONE);
        let over = clock.saw(Zone::Over, at(3000));
        assert_eq!((over.above, over.over), (at(500) - start, NONE));
        let over = clock.saw(Zone::Over, at(3500));
        assert_eq!((over.above, over.over), (at(1000) - start, at(500) - start));
        clock.restart(at(4000));
        assert_eq!(clock.saw(Zone::Over, at(4250)).above, NONE);
    }

    #[test]
    fn waits_for_reports_that_cover_the_last_change() {
        let stale = Reading {
            fresh_reports: 0,
            ..reading(Some(4.0), Ok(0))
        };
        assert_eq!(
            decide(4, LIMITS, &stale, held(NONE, LONG, LONG), ADD_AFTER),
            None
        );
    }
}
