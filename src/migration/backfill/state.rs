//! The backfill's state and direction: enums in Rust, their lowercase names as text in
//! `zdm_backfill` (and in the JSON of the API), read and written through Diesel.

use std::fmt;
use std::io::Write;
use std::str::FromStr;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use serde::Serialize;

/// Where a backfill stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "snake_case")]
pub enum BackfillState {
    /// Never started.
    Idle,
    /// A runner fills batches.
    Running,
    /// A runner waits for the replicas or for requests to get faster.
    Throttled,
    /// Asked to stop; keeps its checkpoints for a resume.
    Paused,
    Done,
    /// A batch failed, or the database was gone for longer than the runner waited; keeps its
    /// checkpoints.
    Failed,
    /// Asked to stop; the next start begins afresh.
    Cancelled,
    /// Stored as running, but no runner holds the lock: its runner died or gave up.
    Interrupted,
}

impl BackfillState {
    pub const ALL: [BackfillState; 8] = [
        BackfillState::Idle,
        BackfillState::Running,
        BackfillState::Throttled,
        BackfillState::Paused,
        BackfillState::Done,
        BackfillState::Failed,
        BackfillState::Cancelled,
        BackfillState::Interrupted,
    ];

    /// The states in which a runner holds (or held, for `Interrupted`) the backfill: those a
    /// pause or cancel can stop.
    pub const STOPPABLE: [BackfillState; 4] = [
        BackfillState::Running,
        BackfillState::Throttled,
        BackfillState::Paused,
        BackfillState::Interrupted,
    ];

    /// The states a runner's own updates may move on from: a pause or cancel asked for
    /// meanwhile wins over them.
    pub const ACTIVE_OR_INTERRUPTED: [BackfillState; 3] = [
        BackfillState::Running,
        BackfillState::Throttled,
        BackfillState::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackfillState::Idle => "idle",
            BackfillState::Running => "running",
            BackfillState::Throttled => "throttled",
            BackfillState::Paused => "paused",
            BackfillState::Done => "done",
            BackfillState::Failed => "failed",
            BackfillState::Cancelled => "cancelled",
            BackfillState::Interrupted => "interrupted",
        }
    }

    /// A runner is at work (filling or waiting).
    pub fn is_active(self) -> bool {
        matches!(self, BackfillState::Running | BackfillState::Throttled)
    }

    /// No runner will go on by itself, and nothing is left to resume.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            BackfillState::Done
                | BackfillState::Failed
                | BackfillState::Cancelled
                | BackfillState::Idle
        )
    }

    /// A start in the same direction continues from the checkpoints.
    pub fn is_resumable(self) -> bool {
        matches!(
            self,
            BackfillState::Running
                | BackfillState::Throttled
                | BackfillState::Interrupted
                | BackfillState::Paused
                | BackfillState::Failed
        )
    }
}

/// Which way a backfill fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// first_name, last_name := split(full_name)
    Forward,
    /// full_name := join(first_name, last_name)
    Reverse,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Forward, Direction::Reverse];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Forward => "forward",
            Direction::Reverse => "reverse",
        }
    }
}

/// Whether the triggers of users fire on the backfill's updates: every trigger on UPDATE of
/// users (of any column, or of the columns a batch sets) fires once for each row it fills,
/// an `updated_at` stamped or an audit row written for every row of the table, so the
/// operator chooses before the first batch (the `triggers` gate).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, AsExpression, FromSqlRow,
)]
#[diesel(sql_type = Text)]
#[serde(rename_all = "snake_case")]
pub enum Triggers {
    /// They fire, as for any update.
    Fire,
    /// The batches run with `session_replication_role = replica`: the triggers enabled the
    /// default way do not fire (those set `ENABLE ALWAYS` or `ENABLE REPLICA` do, and the gate
    /// names them). Needs a superuser or `SET` on that parameter.
    Skip,
}

impl Triggers {
    pub const ALL: [Triggers; 2] = [Triggers::Fire, Triggers::Skip];

    pub fn as_str(self) -> &'static str {
        match self {
            Triggers::Fire => "fire",
            Triggers::Skip => "skip",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown {what}: {text:?}")]
pub struct UnknownName {
    what: &'static str,
    text: String,
}

/// `Display`, `FromStr` and text in PostgreSQL for an enum with `ALL` and `as_str`.
macro_rules! text_enum {
    ($name:ident, $what:literal) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownName;

            fn from_str(text: &str) -> Result<Self, UnknownName> {
                $name::ALL
                    .into_iter()
                    .find(|v| v.as_str() == text)
                    .ok_or_else(|| UnknownName {
                        what: $what,
                        text: text.to_owned(),
                    })
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                out.write_all(self.as_str().as_bytes())?;
                Ok(IsNull::No)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
                Ok(std::str::from_utf8(value.as_bytes())?.parse()?)
            }
        }
    };
}

text_enum!(BackfillState, "backfill state");
text_enum!(Direction, "backfill direction");
text_enum!(Triggers, "choice for the triggers (fire or skip)");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for state in BackfillState::ALL {
            assert_eq!(state.as_str().parse::<BackfillState>().unwrap(), state);
            assert_eq!(
                serde_json::to_value(state).unwrap(),
                serde_json::json!(state.as_str())
            );
        }
        for direction in Direction::ALL {
            assert_eq!(
                direction.to_string().parse::<Direction>().unwrap(),
                direction
            );
        }
        assert!("Running".parse::<BackfillState>().is_err());
        assert!("sideways".parse::<Direction>().is_err());
        for triggers in Triggers::ALL {
            assert_eq!(triggers.as_str().parse::<Triggers>().unwrap(), triggers);
            let json = serde_json::to_value(triggers).unwrap();
            assert_eq!(json, serde_json::json!(triggers.as_str()));
            assert_eq!(serde_json::from_value::<Triggers>(json).unwrap(), triggers);
        }
        assert!("off".parse::<Triggers>().is_err());
    }
}
