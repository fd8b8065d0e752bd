//! The range plan: which worker works on which part of the key range, as pure code (no
//! database, no threads) that the workers share behind a lock.
//!
//! A run's key range is split into disjoint ranges `(start_id, end_id]`, each with its own
//! checkpoint. A worker keeps its range until it is done, then takes a range nobody works
//! on, or else splits the biggest one: the other worker keeps the lower half and it takes
//! the upper. The split never reaches into a batch in flight: before a batch writes
//! anything, its worker reserves the ids it will cover (`Plan::reserve`), and a split starts
//! above them. Changing the number of workers is the same: more workers split what remains,
//! fewer leave their ranges for the others to take.

use super::batch::Ran;
use super::status::WorkerRange;

/// A range and the batch in flight on it, if any.
struct Slot {
    range: WorkerRange,
    /// The end of the batch in flight: ids up to here are being written.
    reserved: Option<i64>,
}

impl Slot {
    /// Where the ids nobody has taken yet start.
    fn free_from(&self) -> i64 {
        self.reserved.unwrap_or(self.range.last_id)
    }

    fn is_open(&self) -> bool {
        !self.range.is_done()
    }
}

/// The ranges of the run as the workers see them, and how many workers should run.
pub(super) struct Plan {
    slots: Vec<Slot>,
    next_no: i32,
    /// Workers 1..=target run.
    pub target: i32,
}

/// What a worker is to work on next, as the plan assigns it.
pub(super) enum Assignment {
    /// Its range, from its checkpoint.
    Keep { range_no: i32, from: i64 },
    /// A range nobody works on.
    Take { range_no: i32, from: i64 },
    /// The upper part of another worker's range, from `new.start_id` (the other's range now
    /// ends there).
    Split { shortened: i32, new: WorkerRange },
    /// Nothing left that is worth splitting.
    Nothing,
}

impl Plan {
    pub fn new(ranges: Vec<WorkerRange>, target: i32) -> Self {
        let next_no = ranges.iter().map(|r| r.range_no).max().unwrap_or(0) + 1;
        Self {
            slots: ranges
                .into_iter()
                .map(|range| Slot {
                    range,
                    reserved: None,
                })
                .collect(),
            next_no,
            target,
        }
    }

    pub fn ranges(&self) -> Vec<WorkerRange> {
        self.slots.iter().map(|s| s.range.clone()).collect()
    }

    pub fn all_done(&self) -> bool {
        self.slots
            .iter()
            .all(|s| !s.is_open() && s.reserved.is_none())
    }

    fn slot(&mut self, range_no: i32) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|s| s.range.range_no == range_no)
    }

    /// What `worker` works on next: its own open range, else a range nobody works on, else
    /// the upper half of the biggest part nobody has reserved.
    pub fn assign(&mut self, worker: i32) -> Assignment {
        if let Some(own) = self
            .slots
            .iter()
            .find(|s| s.range.worker == Some(worker) && s.is_open())
        {
            return Assignment::Keep {
                range_no: own.range.range_no,
                from: own.range.last_id,
            };
        }
        if let Some(waiting) = self
            .slots
            .iter_mut()
            .filter(|s| s.range.worker.is_none() && s.is_open())
            .min_by_key(|s| s.range.start_id)
        {
            waiting.range.worker = Some(worker);
            return Assignment::Take {
                range_no: waiting.range.range_no,
                from: waiting.range.last_id,
            };
        }
        self.split_biggest(worker)
    }

    /// The biggest part nobody has reserved yet, split if each half holds a batch or more:
    /// `worker` takes the upper half.
    fn split_biggest(&mut self, worker: i32) -> Assignment {
        let Some(biggest) = self
            .slots
            .iter_mut()
            .filter(|s| s.is_open())
            .max_by_key(|s| s.range.end_id - s.free_from())
        else {
            return Assignment::Nothing;
        };
        let from = biggest.free_from();
        let span = biggest.range.end_id - from;
        if span < 2 * i64::from(biggest.range.batch_size.max(1)) {
            return Assignment::Nothing;
        }
        let mid = from + span / 2;
        let new = WorkerRange {
            range_no: self.next_no,
            start_id: mid,
            last_id: mid,
            end_id: biggest.range.end_id,
            worker: Some(worker),
            rows_done: 0,
            rows_updated: 0,
            batches: 0,
            batch_size: biggest.range.batch_size,
            updated_at: chrono::Utc::now(),
        };
        biggest.range.end_id = mid;
        let shortened = biggest.range.range_no;
        self.next_no += 1;
        self.slots.push(Slot {
            range: new.clone(),
            reserved: None,
        });
        Assignment::Split { shortened, new }
    }

    /// A batch of `range_no` would end at `full_end` (None: fewer ids are left than a batch):
    /// where it ends, within the range's end as it stands now, reserved for it.
    pub fn reserve(&mut self, range_no: i32, full_end: Option<i64>) -> i64 {
        let Some(slot) = self.slot(range_no) else {
            unreachable!("a worker reserves only in its own range");
        };
        let end = slot.range.end_id;
        let upper = full_end.filter(|e| *e <= end).unwrap_or(end);
        slot.reserved = Some(upper);
        upper
    }

    /// The batch reserved on `range_no` wrote nothing.
    pub fn unreserve(&mut self, range_no: i32) {
        if let Some(slot) = self.slot(range_no) {
            slot.reserved = None;
        }
    }

    /// The batch reserved on `range_no` committed as `ran`: its checkpoint and counters move.
    pub fn record_batch(&mut self, range_no: i32, ran: &Ran) {
        if let Some(slot) = self.slot(range_no) {
            slot.reserved = None;
            let range = &mut slot.range;
            range.last_id = ran.upper;
            range.rows_done += ran.scanned;
            range.rows_updated += ran.updated;
            range.batches += 1;
            range.batch_size = ran.size;
            range.updated_at = chrono::Utc::now();
        }
    }

    /// Leaves `worker`'s open ranges for the others; their numbers.
    pub fn release(&mut self, worker: i32) -> Vec<i32> {
        self.slots
            .iter_mut()
            .filter(|s| s.range.worker == Some(worker) && s.is_open())
            .map(|s| {
                s.range.worker = None;
                s.range.range_no
            })
            .collect()
    }
}

/// Splits the ids `(after, last]` into `parts` ranges of about the same span.
pub(super) fn split_evenly(after: i64, last: i64, parts: i32) -> Vec<(i64, i64)> {
    let span = i128::from(last) - i128::from(after);
    if span <= 0 {
        return Vec::new();
    }
    let parts = i128::from(parts.max(1)).min(span);
    (0..parts)
        .map(|i| {
            let at = |k: i128| (i128::from(after) + span * k / parts) as i64;
            (at(i), at(i + 1))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(no: i32, start: i64, last: i64, end: i64, worker: Option<i32>) -> WorkerRange {
        WorkerRange {
            range_no: no,
            start_id: start,
            last_id: last,
            end_id: end,
            worker,
            rows_done: 0,
            rows_updated: 0,
            batches: 0,
            batch_size: 10,
            updated_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn the_key_range_splits_evenly_and_covers_every_id_once() {
        assert_eq!(
            split_evenly(0, 100, 4),
            [(0, 25), (25, 50), (50, 75), (75, 100)]
        );
        assert_eq!(split_evenly(9, 12, 5), [(9, 10), (10, 11), (11, 12)]);
        assert!(split_evenly(5, 5, 3).is_empty());
        let parts = split_evenly(-1, i64::MAX, 16);
        assert_eq!(parts.len(), 16);
        assert!(parts.windows(2).all(|w| w[0].1 == w[1].0));
        assert_eq!((parts[0].0, parts[15].1), (-1, i64::MAX));
    }

    #[test]
    fn a_worker_takes_a_waiting_range_then_splits_above_the_batch_in_flight() {
        let mut plan = Plan::new(
            vec![range(1, 0, 0, 100, None), range(2, 100, 100, 200, None)],
            2,
        );
        assert!(matches!(
            plan.assign(1),
            Assignment::Take {
                range_no: 1,
                from: 0
            }
        ));
        assert!(matches!(
            plan.assign(2),
            Assignment::Take {
                range_no: 2,
                from: 100
            }
        ));
        assert!(matches!(
            plan.assign(1),
            Assignment::Keep {
                range_no: 1,
                from: 0
            }
        ));
        // Worker 1's batch in flight reaches id 40; worker 2 finished its range.
        assert_eq!(plan.reserve(1, Some(40)), 40);
        plan.slot(2).unwrap().range.last_id = 200;
        let Assignment::Split { shortened, new } = plan.assign(2) else {
            panic!("expected a split");
        };
        assert_eq!(shortened, 1);
        // Half of what is neither done nor in flight: (40, 100] → (40, 70] and (70, 100].
        assert_eq!((new.start_id, new.last_id, new.end_id), (70, 70, 100));
        assert_eq!(plan.slot(1).unwrap().range.end_id, 70);
        // A batch reserved afterwards stops at the new end.
        plan.unreserve(1);
        assert_eq!(plan.reserve(1, Some(90)), 70);
        assert_eq!(plan.reserve(1, None), 70);
    }

    #[test]
    fn a_range_smaller_than_two_batches_is_not_split() {
        let mut plan = Plan::new(vec![range(1, 0, 0, 19, Some(1))], 2);
        assert!(matches!(plan.assign(2), Assignment::Nothing));
        let mut plan = Plan::new(vec![range(1, 0, 0, 20, Some(1))], 2);
        assert!(matches!(plan.assign(2), Assignment::Split { .. }));
    }

    #[test]
    fn a_worker_let_go_leaves_its_range_to_the_others() {
        let mut plan = Plan::new(
            vec![
                range(1, 0, 30, 100, Some(1)),
                range(2, 100, 150, 200, Some(2)),
            ],
            1,
        );
        assert_eq!(plan.release(2), [2]);
        plan.slot(1).unwrap().range.last_id = 100;
        assert!(matches!(
            plan.assign(1),
            Assignment::Take {
                range_no: 2,
                from: 150
            }
        ));
        plan.slot(2).unwrap().range.last_id = 200;
        assert!(plan.all_done());
    }
}
