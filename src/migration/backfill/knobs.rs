//! The knobs a client turns while the backfill runs (batch size, target batch time, sleep),
//! and how the batch size follows the target time.

use std::time::Duration;

use diesel::prelude::*;

use super::status::{BackfillStatus, status};
use super::{MAX_BATCH_SIZE, MAX_BATCH_TARGET_MS, MAX_SLEEP_MS};
use crate::schema::state::zdm_backfill;

/// The target batch time may grow the batch size by at most this factor per batch, and
/// shrink it by its inverse, so that one slow batch (a checkpoint) does not swing it.
const MAX_RESIZE_STEP: f64 = 1.5;

/// The backfill's settings as a client changes them; `None` keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Knobs {
    /// Rows per batch.
    pub batch_size: Option<i32>,
    /// Pause between batches, in milliseconds.
    pub sleep_ms: Option<i32>,
    /// The batch time the batch size follows, in milliseconds; 0 keeps batch_size as set.
    pub batch_target_ms: Option<i32>,
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
        }
    }

    /// What each knob must lie within, as `(field, message)` for the first that does not.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
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
        ];
        ranges
            .into_iter()
            .find_map(|(field, value, low, meaning, high)| {
                value.is_some_and(|v| !(low..=high).contains(&v)).then(|| {
                    (
                        field,
                        format!("{field} must be between {low}{meaning} and {high}."),
                    )
                })
            })
    }
}

/// Changes the knobs, also while running. A batch size given without a target time is kept
/// as given (the target is turned off); with one, it is where the sizing starts from.
pub fn set_knobs(conn: &mut PgConnection, knobs: Knobs) -> QueryResult<BackfillStatus> {
    let current = status(conn)?;
    let target = match (knobs.batch_size, knobs.batch_target_ms) {
        (_, Some(target)) => target,
        (Some(_), None) => 0,
        (None, None) => current.batch_target_ms,
    };
    diesel::update(zdm_backfill::table)
        .set((
            zdm_backfill::batch_size.eq(knobs.batch_size.unwrap_or(current.batch_size)),
            zdm_backfill::sleep_ms.eq(knobs.sleep_ms.unwrap_or(current.sleep_ms)),
            zdm_backfill::batch_target_ms.eq(target),
        ))
        .get_result(conn)
}

/// The next batch size: the last one scaled by how far its batch's time was from the
/// target, by at most `MAX_RESIZE_STEP` either way, within 1..=MAX_BATCH_SIZE.
pub fn next_batch_size(size: i32, took: Duration, target_ms: i32) -> i32 {
    let took_ms = (took.as_secs_f64() * 1000.0).max(0.1);
    let factor = (f64::from(target_ms) / took_ms).clamp(1.0 / MAX_RESIZE_STEP, MAX_RESIZE_STEP);
    ((f64::from(size) * factor).round() as i32).clamp(1, MAX_BATCH_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_size_moves_toward_the_target_time_by_bounded_steps() {
        let ms = Duration::from_millis;
        // Twice as fast as the target: grows, but by at most 1.5×.
        assert_eq!(next_batch_size(1000, ms(20), 40), 1500);
        assert_eq!(next_batch_size(1000, ms(32), 40), 1250);
        assert_eq!(next_batch_size(1000, ms(40), 40), 1000);
        assert_eq!(next_batch_size(1000, ms(50), 40), 800);
        // A batch stalled by a checkpoint shrinks the next by a third, not to nothing.
        assert_eq!(next_batch_size(1000, ms(900), 40), 667);
        assert_eq!(next_batch_size(1, ms(900), 40), 1);
        assert_eq!(next_batch_size(MAX_BATCH_SIZE, ms(1), 40), MAX_BATCH_SIZE);
        assert_eq!(next_batch_size(10, Duration::ZERO, 40), 15);
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
    }
}
