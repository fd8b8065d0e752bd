//! Faults an instance can be told to inject, so that `zdm demo --fault …` can show its audit
//! catching them. Each is off unless its environment variable is set (the demo sets them for
//! its own child instances only), and an instance with one on says so at warn level when it
//! starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::PgConnection;
use diesel::prelude::*;

/// `1`: v1 writes behave like expanded-phase code (full_name only) whatever the phase, as a
/// broken dual-write would.
pub const LAGGING_V1_WRITES_ENV: &str = "ZDM_FAULT_LAGGING_V1_WRITES";
/// `N`: every Nth user update this instance answers as done is rolled back instead.
pub const LOSE_WRITES_ENV: &str = "ZDM_FAULT_LOSE_WRITES";

#[derive(Debug, Clone, Default)]
pub struct Faults {
    pub lagging_v1_writes: bool,
    lose_writes: Option<LoseWrites>,
}

#[derive(Debug, Clone)]
struct LoseWrites {
    every: u64,
    /// Updates counted so far, shared by the instance's workers.
    updates: Arc<AtomicU64>,
}

impl Faults {
    /// `lose_every`: lose every Nth update (`None` or 0: none).
    pub fn new(lagging_v1_writes: bool, lose_every: Option<u64>) -> Self {
        Self {
            lagging_v1_writes,
            lose_writes: lose_every.filter(|n| *n > 0).map(|every| LoseWrites {
                every,
                updates: Arc::default(),
            }),
        }
    }

    /// Says loudly which faults are on; nothing when none is.
    pub fn warn_if_on(&self) {
        if self.lagging_v1_writes {
            log::warn!(
                "FAULT INJECTION ON ({LAGGING_V1_WRITES_ENV}): v1 writes skip the new columns (a broken dual-write)"
            );
        }
        if let Some(lose) = &self.lose_writes {
            log::warn!(
                "FAULT INJECTION ON ({LOSE_WRITES_ENV}={}): every {}th user update is answered as saved but rolled back",
                lose.every,
                lose.every
            );
        }
    }

    /// Counts an update and says whether to lose it (every Nth one with the fault on).
    pub fn lose_this_update(&self) -> bool {
        self.lose_writes.as_ref().is_some_and(|lose| {
            (lose.updates.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(lose.every)
        })
    }
}

/// Runs `write`; when `lose` is set, inside a transaction that is then rolled back, returning
/// what the write returned all the same, so the caller answers as if it had been saved.
pub fn commit_unless_lost<T>(
    conn: &mut PgConnection,
    lose: bool,
    write: impl FnOnce(&mut PgConnection) -> QueryResult<T>,
) -> QueryResult<T> {
    if !lose {
        return write(conn);
    }
    let mut written = None;
    let rolled_back = conn.transaction::<(), diesel::result::Error, _>(|conn| {
        written = Some(write(conn)?);
        Err(diesel::result::Error::RollbackTransaction)
    });
    match (rolled_back, written) {
        (Err(diesel::result::Error::RollbackTransaction), Some(value)) => {
            log::debug!("fault injection: an update was rolled back after it succeeded");
            Ok(value)
        }
        (Err(e), _) => Err(e),
        (Ok(()), _) => Err(diesel::result::Error::RollbackTransaction),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loses_every_nth_update_and_none_when_off() {
        let faults = Faults::new(false, Some(3));
        let lost: Vec<bool> = (0..7).map(|_| faults.lose_this_update()).collect();
        assert_eq!(lost, [false, false, true, false, false, true, false]);
        let off = Faults::default();
        assert!((0..100).all(|_| !off.lose_this_update()));
        let zero = Faults::new(false, Some(0));
        assert!((0..100).all(|_| !zero.lose_this_update()));
    }

    #[test]
    fn clones_share_one_count() {
        let faults = Faults::new(false, Some(2));
        let other = faults.clone();
        assert!(!faults.lose_this_update());
        assert!(other.lose_this_update());
    }
}
