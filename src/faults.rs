//! Faults an instance can be told to inject, so that `zdm demo --fault …` can show its audit
//! catching them. Each is off unless `zdm serve` is given the hidden `--inject-fault` flag,
//! which only the demo passes to the instances it starts; an instance with one on says so at
//! warn level when it starts. No environment variable switches a fault on: a process that
//! finds one of the old `ZDM_FAULT_*` variables refuses to start (see `crate::config`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use diesel::PgConnection;
use diesel::prelude::*;

/// The prefix of the environment variables that once switched faults on, refused at start.
pub const FAULT_ENV_PREFIX: &str = "ZDM_FAULT_";

/// One fault, as `zdm serve --inject-fault` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InjectedFault {
    /// `lagging-v1`: v1 writes behave like expanded-phase code (full_name only) whatever the
    /// phase, as a broken dual-write would.
    LaggingV1Writes,
    /// `lose-writes=N`: every Nth user update this instance answers as done is rolled back.
    LoseWrites(u64),
}

impl std::fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InjectedFault::LaggingV1Writes => f.write_str("lagging-v1"),
            InjectedFault::LoseWrites(every) => write!(f, "lose-writes={every}"),
        }
    }
}

impl std::str::FromStr for InjectedFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            None if s == "lagging-v1" => Ok(InjectedFault::LaggingV1Writes),
            Some(("lose-writes", every)) => every
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .map(InjectedFault::LoseWrites)
                .ok_or_else(|| format!("lose-writes=N needs a positive N, got {every:?}")),
            _ => Err(format!("unknown fault {s:?}: lagging-v1 or lose-writes=N")),
        }
    }
}

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

    /// The faults `zdm serve --inject-fault` was given (the last of each kind wins).
    pub fn injected(faults: &[InjectedFault]) -> Self {
        faults
            .iter()
            .fold(Self::default(), |acc, fault| match fault {
                InjectedFault::LaggingV1Writes => Self::new(true, acc.lose_every()),
                InjectedFault::LoseWrites(every) => Self::new(acc.lagging_v1_writes, Some(*every)),
            })
    }

    fn lose_every(&self) -> Option<u64> {
        self.lose_writes.as_ref().map(|lose| lose.every)
    }

    /// Says loudly which faults are on; nothing when none is.
    pub fn warn_if_on(&self) {
        if self.lagging_v1_writes {
            log::warn!(
                "FAULT INJECTION ON (--inject-fault {}): v1 writes skip the new columns (a broken dual-write)",
                InjectedFault::LaggingV1Writes
            );
        }
        if let Some(every) = self.lose_every() {
            log::warn!(
                "FAULT INJECTION ON (--inject-fault {}): every {every}th user update is answered as saved but rolled back",
                InjectedFault::LoseWrites(every)
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
    fn the_flag_reads_back_what_it_writes() {
        for fault in [
            InjectedFault::LaggingV1Writes,
            InjectedFault::LoseWrites(20),
        ] {
            assert_eq!(fault.to_string().parse::<InjectedFault>(), Ok(fault));
        }
        for wrong in [
            "lose-writes",
            "lose-writes=0",
            "lose-writes=x",
            "lagging-v1=1",
            "drop",
        ] {
            assert!(wrong.parse::<InjectedFault>().is_err(), "{wrong}");
        }
        let both =
            Faults::injected(&[InjectedFault::LoseWrites(2), InjectedFault::LaggingV1Writes]);
        assert!(both.lagging_v1_writes);
        assert!(!both.lose_this_update());
        assert!(both.lose_this_update());
        assert!(!Faults::injected(&[]).lose_this_update());
    }

    #[test]
    fn clones_share_one_count() {
        let faults = Faults::new(false, Some(2));
        let other = faults.clone();
        assert!(!faults.lose_this_update());
        assert!(other.lose_this_update());
    }
}
