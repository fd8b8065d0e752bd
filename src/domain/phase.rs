//! The seven phases of `full_name` → `first_name` + `last_name`, in order.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Baseline,
    Expanded,
    DualWrite,
    Backfilled,
    ReadNew,
    NewOnly,
    Contracted,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Baseline,
        Phase::Expanded,
        Phase::DualWrite,
        Phase::Backfilled,
        Phase::ReadNew,
        Phase::NewOnly,
        Phase::Contracted,
    ];

    /// The name used in the database, the API and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Baseline => "baseline",
            Phase::Expanded => "expanded",
            Phase::DualWrite => "dual_write",
            Phase::Backfilled => "backfilled",
            Phase::ReadNew => "read_new",
            Phase::NewOnly => "new_only",
            Phase::Contracted => "contracted",
        }
    }

    /// One line for people: what this phase means for the schema and the clients.
    pub fn summary(self) -> &'static str {
        match self {
            Phase::Baseline => "users has full_name only; v1 clients read and write it.",
            Phase::Expanded => "first_name and last_name exist (nullable); nobody writes them yet.",
            Phase::DualWrite => "every write fills full_name and first_name + last_name alike.",
            Phase::Backfilled => {
                "old rows are backfilled and verified; a NOT NULL guard is validated."
            }
            Phase::ReadNew => "reads come from first_name + last_name; writes are still dual.",
            Phase::NewOnly => "no code touches full_name any more.",
            Phase::Contracted => "full_name is dropped; first_name and last_name are NOT NULL.",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn next(self) -> Option<Phase> {
        Phase::ALL.get(self.index() + 1).copied()
    }

    pub fn previous(self) -> Option<Phase> {
        self.index().checked_sub(1).map(|i| Phase::ALL[i])
    }

    /// Whether v2 clients are served (404 before dual_write).
    pub fn v2_released(self) -> bool {
        self >= Phase::DualWrite
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown phase {0:?}")]
pub struct UnknownPhase(pub String);

impl FromStr for Phase {
    type Err = UnknownPhase;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownPhase(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_order() {
        for (i, phase) in Phase::ALL.into_iter().enumerate() {
            assert_eq!(phase.index(), i);
            assert_eq!(phase.as_str().parse::<Phase>().unwrap(), phase);
        }
        assert!("dual-write".parse::<Phase>().is_err());
    }
}
