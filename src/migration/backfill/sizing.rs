//! The size of a worker's next batch: the knob's size, or, with a target batch time, its
//! last size scaled by its last batch's time; and where a worker started later begins.

use std::time::Duration;

use super::knobs::{batch_time_target_ms, next_batch_size};
use super::status::BackfillStatus;

/// The batch size a worker's next batch takes: with a target time (no longer than the cap
/// under a p99 budget, `batch_time_target_ms`), its own last size scaled by its last
/// batch's time; after a change of the knobs, the knob's size.
#[derive(Default, Clone, Copy)]
pub(super) struct Sizing {
    /// (batch_size, batch_target_ms) as the knobs said at the last batch.
    knob: Option<(i32, i32)>,
    size: i32,
    last: Option<Duration>,
}

/// The knobs sizing follows, as stored: (batch_size, batch_target_ms).
pub(super) fn sizing_knob(stored: &BackfillStatus) -> (i32, i32) {
    (stored.batch_size, stored.batch_target_ms)
}

impl Sizing {
    pub fn next(&self, knob: (i32, i32), cap_ms: Option<f64>) -> i32 {
        let (batch_size, target_ms) = knob;
        if target_ms <= 0 || self.knob != Some(knob) {
            return batch_size;
        }
        let target_ms = batch_time_target_ms(target_ms, cap_ms);
        match self.last {
            Some(took) => next_batch_size(self.size, took, target_ms),
            None => self.size,
        }
    }

    pub fn ran(&mut self, knob: (i32, i32), size: i32, took: Duration) {
        self.knob = Some(knob);
        self.size = size;
        self.last = Some(took);
    }

    /// Where a new worker starts: at this size while the knobs are the same, its own time to
    /// come.
    pub fn to_start_from(self) -> Self {
        Self { last: None, ..self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_added_later_starts_at_the_size_the_others_reached() {
        let knob = (5000, 40);
        let mut first = Sizing::default();
        assert_eq!(first.next(knob, Some(2.0)), 5000, "the knob's size first");
        // 25-ms batches against a 2 ms budget: down by a third each time.
        let mut size = 5000;
        for _ in 0..10 {
            first.ran(knob, size, Duration::from_millis(25));
            size = first.next(knob, Some(2.0));
        }
        assert_eq!(size, 87);
        // A worker started now begins where the first one is, not at 5,000 again...
        let added = first.to_start_from();
        assert_eq!(added.next(knob, Some(2.0)), first.size);
        // ...unless the knobs changed since.
        assert_eq!(added.next((300, 40), Some(2.0)), 300);
        assert_eq!(added.next((5000, 0), Some(2.0)), 5000);
    }
}
