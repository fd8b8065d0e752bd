//! The knobs a client turns while the backfill runs (batch size, target batch time, sleep,
//! workers) or before it starts (whether the triggers of users fire), and how the batch size
//! follows the target time.

use std::time::Duration;

use diesel::prelude::*;

use super::status::{BackfillStatus, WorkerRange, stored_status, with_progress_and_ranges};
use super::{MAX_BATCH_SIZE, MAX_BATCH_TARGET_MS, MAX_SLEEP_MS, MAX_WORKERS, Triggers};
use crate::schema::state::zdm_backfill;

/// The target batch time may grow the batch size by at most this factor per batch, and
/// shrink it by its inverse, so that one slow batch (a checkpoint) does not swing it.
const MAX_RESIZE_STEP: f64 = 1.5;

/// The backfill's settings as a client changes them; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    /// Rows per batch.
    pub batch_size: Option<i32>,
    /// Pause between batches, in milliseconds.
    pub sleep_ms: Option<i32>,
    /// The batch time the batch size follows, in milliseconds; 0 keeps batch_size as set.
    pub batch_target_ms: Option<i32>,
    /// How many workers fill the key range at once: a fixed count or `"auto"`.
    pub workers: Option<Workers>,
    /// Whether the triggers of users fire on the batches' updates: `"fire"` or `"skip"`.
    pub triggers: Option<Triggers>,
}

/// The workers knob: a fixed count (1 to `MAX_WORKERS`), or `auto`: the runner adds a worker
/// while the users' p99 and the replicas' lag stay within their limits and halves the count
/// when they do not. In JSON a number or `"auto"`; on the command line `N` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Fixed(i32),
    Auto,
}

impl std::fmt::Display for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workers::Fixed(n) => write!(f, "{n}"),
            Workers::Auto => f.write_str("auto"),
        }
    }
}

/// Why `"auto"` is refused where no p99 budget is configured.
pub const AUTO_NEEDS_A_BUDGET: &str = "workers \"auto\" needs a p99 budget: set ZDM_BACKFILL_MAX_P99_MS (the users' p99 the backfill keeps within) or ZDM_BACKFILL_MAX_P99_RATIO (that p99 relative to theirs when it starts) where the backfill runs";

/// What `Workers` accepts, said where it is refused.
pub const WORKERS_EXPECTED: &str = "a whole number of workers from 1 to 16, or \"auto\"";

impl std::str::FromStr for Workers {
    type Err = String;

    /// `auto`, or a count within 1..=MAX_WORKERS.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        if value.eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        match value.parse::<i32>() {
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(Workers::Fixed(n)),
            _ => Err(format!("expected {WORKERS_EXPECTED}, not {value:?}")),
        }
    }
}

impl serde::Serialize for Workers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Workers::Fixed(n) => serializer.serialize_i32(*n),
            Workers::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Workers {
    /// A whole number (its range is checked by `Knobs::invalid`, so that it answers 422
    /// naming the field) or `"auto"`.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Workers;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(WORKERS_EXPECTED)
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<Workers, E> {
                Ok(Workers::Fixed(i32::try_from(n).unwrap_or(i32::MAX)))
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<Workers, E> {
                Ok(Workers::Fixed(i32::try_from(n).unwrap_or(i32::MAX)))
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Workers, E> {
                if s == "auto" {
                    Ok(Workers::Auto)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(s), &self))
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Knobs {
    pub fn sleep(sleep_ms: i32) -> Self {
        Knobs {
            sleep_ms: Some(sleep_ms),
            ..Knobs::default()
        }
    }

    /// A fixed batch size (no target time) and sleep, as the tests and demos want them.
    pub fn fixed(batch_size: i32, sleep_ms: i32) -> Self {
        Knobs {
            batch_size: Some(batch_size),
            sleep_ms: Some(sleep_ms),
            batch_target_ms: None,
            workers: None,
            triggers: None,
        }
    }

    /// These knobs with `workers`.
    pub fn with_workers(self, workers: Workers) -> Self {
        Knobs {
            workers: Some(workers),
            ..self
        }
    }

    /// `action` ("start", "settings") as the history records it: with the choice for the
    /// triggers, if one was made.
    pub fn asked(&self, action: &str) -> String {
        match self.triggers {
            Some(triggers) => format!("{action} (triggers \"{triggers}\")"),
            None => action.to_owned(),
        }
    }

    /// What each knob must lie within, as `(field, message)` for the first that does not.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        let workers = match self.workers {
            Some(Workers::Fixed(n)) => Some(n),
            _ => None,
        };
        // (field, value, lowest, what the lowest means, highest)
        let ranges = [
            ("batch_size", self.batch_size, 1, "", MAX_BATCH_SIZE),
            ("sleep_ms", self.sleep_ms, 0, "", MAX_SLEEP_MS),
            (
                "batch_target_ms",
                self.batch_target_ms,
                0,
                " (a fixed batch size)",
                MAX_BATCH_TARGET_MS,
            ),
            ("workers", workers, 1, "", MAX_WORKERS),
        ];
        ranges
            .into_iter()
            .find_map(|(field, value, low, meaning, high)| {
                value.is_some_and(|v| !(low..=high).contains(&v)).then(|| {
                    (
                        field,
                        format!(
                            "{field} must be between {low}{meaning} and {high}{}.",
                            if field == "workers" {
                                ", or \"auto\""
                            } else {
                                ""
                            }
                        ),
                    )
                })
            })
    }
}

/// Why `knobs` may not change the choice for the triggers `current` ran with, if they may
/// not: a run that has filled rows with them firing (or skipped) keeps that, or half the table
/// would have an audit row each and half not. A first choice (none was made: no trigger would
/// fire when it started), and any choice once it is done or cancelled, are free.
pub fn triggers_kept(current: &BackfillStatus, knobs: &Knobs) -> Option<String> {
    let (Some(chosen), Some(wanted)) = (current.triggers, knobs.triggers) else {
        return None;
    };
    let under_way = current.rows_done > 0
        && !matches!(
            current.state,
            super::BackfillState::Done | super::BackfillState::Cancelled
        );
    (under_way && chosen != wanted).then(|| {
        format!(
            "the backfill has passed {} rows with triggers \"{chosen}\" and keeps that; cancel it to start afresh with \"{wanted}\"",
            current.rows_done
        )
    })
}

/// The batch time the sizing aims at: the knob's (`batch_target_ms`), but no longer than
/// `cap_ms` (`batch_time_cap_ms`) under a p99 budget for the users' requests.
pub fn batch_time_target_ms(knob_ms: i32, cap_ms: Option<f64>) -> f64 {
    let knob = f64::from(knob_ms);
    cap_ms.map_or(knob, |cap| knob.min(cap))
}

/// The shortest batch time a cap asks for. A batch has a fixed cost (its round trips and
/// its commit, about 0.7 ms on the demo's machine) that does not shrink with it: capped at
/// the 0.75-0.9 ms of headroom a relative budget of 1.5 left on the demo, batches fell to 1-10
/// rows, and one worker filled 900-4,300 rows/s where it had filled 20,000, the machine's
/// cores busy with commits rather than rows. At 2 ms a batch is about two thirds rows.
pub const MIN_BATCH_TIME_MS: f64 = 2.0;

/// The longest a batch sized by time may take under a p99 budget of `budget_ms` for the
/// users' requests: the headroom between their p99 when the run started (`quiet_ms`) and the
/// budget, so that a request that waits behind a whole batch stays within the budget; the
/// budget itself where that p99 is unknown or not below it; never under `MIN_BATCH_TIME_MS`;
/// no cap without a budget. What a batch costs the users is its length, not the rate: on the
/// demo (one worker, no budget, the instances' p99 against the quiet phases'), 1,000-row
/// batches cost 2.3-3.0 × at 62,000-69,000 rows/s and still 2.0-2.9 × with 60 ms between
/// them (12,500 rows/s), while 50-row batches cost 1.4-1.6 × at 35,000-38,000 rows/s, and
/// two workers of them 1.25-1.54 × at 60,000-69,000 (the README's pacing section).
pub fn batch_time_cap_ms(budget_ms: Option<f64>, quiet_ms: Option<f64>) -> Option<f64> {
    let budget = budget_ms?;
    let cap = match quiet_ms {
        Some(quiet) if quiet < budget => budget - quiet,
        _ => budget,
    };
    Some(cap.max(MIN_BATCH_TIME_MS))
}

/// Changes the knobs, also while running. A batch size given without a target time is kept
/// as given (the target is turned off); with one, it is where the sizing starts from. A
/// runner picks a new workers setting up within a fraction of a second: it re-splits what
/// remains among the new count. The knobs not given stay as stored once it holds the lock:
/// two changes at once (two operators) keep both. Returns the status and the ranges it
/// counted, as `status_and_ranges` does.
pub fn set_knobs(
    conn: &mut PgConnection,
    knobs: Knobs,
) -> QueryResult<(BackfillStatus, Vec<WorkerRange>)> {
    let stored = conn.transaction(|conn| {
        super::hold_back_batches(conn)?;
        let current = stored_status(conn)?;
        let target = match (knobs.batch_size, knobs.batch_target_ms) {
            (_, Some(target)) => target,
            (Some(_), None) => 0,
            (None, None) => current.batch_target_ms,
        };
        let workers = knobs.workers.unwrap_or(current.workers_setting());
        diesel::update(zdm_backfill::table)
            .set((
                zdm_backfill::batch_size.eq(knobs.batch_size.unwrap_or(current.batch_size)),
                zdm_backfill::sleep_ms.eq(knobs.sleep_ms.unwrap_or(current.sleep_ms)),
                zdm_backfill::batch_target_ms.eq(target),
                zdm_backfill::workers_auto.eq(workers == Workers::Auto),
                zdm_backfill::workers_wanted.eq(match workers {
                    Workers::Fixed(n) => n,
                    Workers::Auto => current.workers_wanted,
                }),
                zdm_backfill::triggers.eq(knobs.triggers.or(current.triggers)),
            ))
            .get_result(conn)
    })?;
    with_progress_and_ranges(conn, stored)
}

/// The next batch size: the last one scaled by how far its batch's time was from the
/// target, by at most `MAX_RESIZE_STEP` either way, within 1..=MAX_BATCH_SIZE.
pub fn next_batch_size(size: i32, took: Duration, target_ms: f64) -> i32 {
    let took_ms = (took.as_secs_f64() * 1000.0).max(0.1);
    let factor = (target_ms / took_ms).clamp(1.0 / MAX_RESIZE_STEP, MAX_RESIZE_STEP);
    ((f64::from(size) * factor).round() as i32).clamp(1, MAX_BATCH_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_size_moves_toward_the_target_time_by_bounded_steps() {
        let ms = Duration::from_millis;
        // Twice as fast as the target: grows, but by at most 1.5×.
        assert_eq!(next_batch_size(1000, ms(20), 40.0), 1500);
        assert_eq!(next_batch_size(1000, ms(32), 40.0), 1250);
        assert_eq!(next_batch_size(1000, ms(40), 40.0), 1000);
        assert_eq!(next_batch_size(1000, ms(50), 40.0), 800);
        // A batch stalled by a checkpoint shrinks the next by a third, not to nothing.
        assert_eq!(next_batch_size(1000, ms(900), 40.0), 667);
        assert_eq!(next_batch_size(1, ms(900), 40.0), 1);
        assert_eq!(next_batch_size(MAX_BATCH_SIZE, ms(1), 40.0), MAX_BATCH_SIZE);
        assert_eq!(next_batch_size(10, Duration::ZERO, 40.0), 15);
    }

    #[test]
    fn under_a_p99_budget_batches_aim_at_the_headroom_but_no_shorter_than_their_fixed_cost() {
        assert_eq!(batch_time_target_ms(40, None), 40.0);
        assert_eq!(batch_time_target_ms(40, Some(2.0)), 2.0);
        assert_eq!(batch_time_target_ms(40, Some(1.5)), 1.5);
        // A target already below the budget stays.
        assert_eq!(batch_time_target_ms(1, Some(5.0)), 1.0);
        // Under a budget of 6 ms from a quiet p99 of 3 ms, batches aim at the 3 ms between;
        // with less headroom, at the shortest batch that is not mostly its fixed cost.
        assert_eq!(batch_time_cap_ms(Some(6.0), Some(3.0)), Some(3.0));
        assert_eq!(
            batch_time_cap_ms(Some(3.0), Some(2.0)),
            Some(MIN_BATCH_TIME_MS)
        );
        // The quiet p99 unknown (no traffic), or not below the budget: the budget, if not
        // shorter than the floor.
        assert_eq!(batch_time_cap_ms(Some(3.0), None), Some(3.0));
        assert_eq!(batch_time_cap_ms(Some(1.0), None), Some(MIN_BATCH_TIME_MS));
        assert_eq!(batch_time_cap_ms(Some(3.0), Some(4.0)), Some(3.0));
        assert_eq!(batch_time_cap_ms(None, Some(2.0)), None);
        // 10-ms batches of 1,000 rows: toward 40 ms they grow, toward a 2 ms budget they
        // shrink.
        let took = Duration::from_millis(10);
        assert_eq!(
            next_batch_size(1000, took, batch_time_target_ms(40, None)),
            1500
        );
        assert_eq!(
            next_batch_size(1000, took, batch_time_target_ms(40, Some(2.0))),
            667
        );
    }

    #[test]
    fn knobs_out_of_range_name_their_field() {
        assert_eq!(
            Knobs::fixed(0, 0).invalid().map(|e| e.0),
            Some("batch_size")
        );
        assert_eq!(
            Knobs {
                batch_target_ms: Some(-1),
                ..Knobs::default()
            }
            .invalid()
            .map(|e| e.0),
            Some("batch_target_ms")
        );
        assert_eq!(
            Knobs::sleep(60_001).invalid().map(|e| e.0),
            Some("sleep_ms")
        );
        assert_eq!(Knobs::fixed(100_000, 0).invalid(), None);
        for bad in [0, 17] {
            assert_eq!(
                Knobs::sleep(0)
                    .with_workers(Workers::Fixed(bad))
                    .invalid()
                    .map(|e| e.0),
                Some("workers")
            );
        }
        assert_eq!(Knobs::sleep(0).with_workers(Workers::Auto).invalid(), None);
    }

    #[test]
    fn workers_read_as_a_count_or_auto() {
        let knobs: Knobs = serde_json::from_str(r#"{"workers": 3}"#).unwrap();
        assert_eq!(knobs.workers, Some(Workers::Fixed(3)));
        let knobs: Knobs = serde_json::from_str(r#"{"workers": "auto"}"#).unwrap();
        assert_eq!(knobs.workers, Some(Workers::Auto));
        let big: Knobs = serde_json::from_str(r#"{"workers": 99999999999}"#).unwrap();
        assert_eq!(big.invalid().map(|e| e.0), Some("workers"));
        assert!(serde_json::from_str::<Knobs>(r#"{"workers": "many"}"#).is_err());
        assert!(serde_json::from_str::<Knobs>(r#"{"workers": 2.5}"#).is_err());
        let knobs: Knobs = serde_json::from_str(r#"{"triggers": "skip"}"#).unwrap();
        assert_eq!(knobs.triggers, Some(Triggers::Skip));
        assert!(serde_json::from_str::<Knobs>(r#"{"triggers": "off"}"#).is_err());
        assert_eq!("auto".parse(), Ok(Workers::Auto));
        assert_eq!(" 16 ".parse(), Ok(Workers::Fixed(16)));
        assert!("0".parse::<Workers>().is_err());
        assert!("17".parse::<Workers>().is_err());
        assert_eq!(serde_json::to_string(&Workers::Auto).unwrap(), r#""auto""#);
        assert_eq!(serde_json::to_string(&Workers::Fixed(4)).unwrap(), "4");
    }
}
