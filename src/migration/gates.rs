//! The gates between phases (DESIGN §1): what must hold before the runner moves the phase.
//! Each gate says whether it is met and why, for the 409 answer, the CLI and the dashboard.

use serde::Serialize;

use super::Phase;
use super::backfill;
use super::state::{self, StateError};
use super::verify::{self, VerifyError};
use diesel::PgConnection;

/// What a user types to allow the contract (the column that will be dropped).
pub const CONTRACT_CONFIRMATION: &str = "users.full_name";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gate {
    pub name: &'static str,
    pub met: bool,
    pub detail: String,
}

/// Whether verify gates run a fresh verification (when actually advancing) or read the
/// stored one (when only showing the gates).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyMode {
    Fresh,
    Stored,
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
}

impl From<diesel::result::Error> for GateError {
    fn from(e: diesel::result::Error) -> Self {
        GateError::State(e.into())
    }
}

/// Every live instance has applied a phase in `min..=max`.
fn instances_between(conn: &mut PgConnection, min: Phase, max: Phase) -> Result<Gate, GateError> {
    let live = state::live_instances(conn)?;
    let outside: Vec<String> = live
        .iter()
        .filter(|i| i.phase().is_none_or(|p| p < min || p > max))
        .map(|i| format!("{} ({})", i.id, i.applied_phase))
        .collect();
    let want = if min == max {
        min.as_str().to_owned()
    } else if max == Phase::Contracted {
        format!("{min} or later")
    } else {
        format!("{min} to {max}")
    };
    Ok(Gate {
        name: "instances",
        met: outside.is_empty(),
        detail: if outside.is_empty() {
            format!("all {} live instance(s) have applied {want}", live.len())
        } else {
            format!(
                "waiting for instance(s) to apply {want}: {}",
                outside.join(", ")
            )
        },
    })
}

fn backfill_done(conn: &mut PgConnection) -> Result<Gate, GateError> {
    let status = backfill::status(conn)?;
    let met = status.state == "done" && status.direction == "forward";
    Ok(Gate {
        name: "backfill",
        met,
        detail: if met {
            format!(
                "backfill done: {} rows scanned, {} filled",
                status.rows_done, status.rows_updated
            )
        } else {
            format!(
                "the backfill is {} ({} of {} rows); run it to the end",
                status.state, status.rows_done, status.rows_total
            )
        },
    })
}

fn verified(conn: &mut PgConnection, phase: Phase, mode: VerifyMode) -> Result<Gate, GateError> {
    let result = match mode {
        VerifyMode::Fresh => Some(verify::verify(conn, phase)?),
        VerifyMode::Stored => {
            let (_, since) = state::phase_and_since(conn)?;
            verify::latest(conn)?.filter(|v| v.phase == phase.as_str() && v.checked_at >= since)
        }
    };
    Ok(match result {
        None => Gate {
            name: "verify",
            met: false,
            detail: format!("no verification since entering {phase}; it runs when you advance"),
        },
        Some(v) if v.divergent == 0 => Gate {
            name: "verify",
            met: true,
            detail: "verify found 0 divergent rows".to_owned(),
        },
        Some(v) => Gate {
            name: "verify",
            met: false,
            detail: format!(
                "verify found {} divergent row(s), e.g. ids {:?}; run the backfill again",
                v.divergent, v.sample_ids
            ),
        },
    })
}

fn confirmation(confirm: Option<&str>) -> Gate {
    let met = confirm == Some(CONTRACT_CONFIRMATION);
    Gate {
        name: "confirmation",
        met,
        detail: if met {
            "confirmed".to_owned()
        } else {
            format!("type `{CONTRACT_CONFIRMATION}` to confirm dropping the column")
        },
    }
}

/// The gates for advancing from `from` (to `from.next()`).
pub fn advance_gates(
    conn: &mut PgConnection,
    from: Phase,
    confirm: Option<&str>,
    mode: VerifyMode,
) -> Result<Vec<Gate>, GateError> {
    Ok(match from {
        Phase::Baseline | Phase::Contracted => vec![],
        Phase::Expanded => vec![instances_between(conn, Phase::Expanded, Phase::Contracted)?],
        Phase::DualWrite => vec![
            instances_between(conn, Phase::DualWrite, Phase::Contracted)?,
            backfill_done(conn)?,
            verified(conn, from, mode)?,
        ],
        Phase::Backfilled => vec![verified(conn, from, mode)?],
        Phase::ReadNew => vec![instances_between(conn, Phase::ReadNew, Phase::Contracted)?],
        Phase::NewOnly => vec![
            instances_between(conn, Phase::NewOnly, Phase::Contracted)?,
            verified(conn, from, mode)?,
            confirmation(confirm),
        ],
    })
}

/// The gates for rolling back from `from` (to `from.previous()`).
pub fn rollback_gates(conn: &mut PgConnection, from: Phase) -> Result<Vec<Gate>, GateError> {
    Ok(match from {
        // The new columns are dropped: no instance may still write them.
        Phase::Expanded => vec![instances_between(conn, Phase::Baseline, Phase::Expanded)?],
        _ => vec![],
    })
}

/// The gates for starting (or resuming) the forward backfill: the new columns are written by
/// every instance, so no row the backfill fills can be overwritten by a v1-only write.
pub fn backfill_gates(conn: &mut PgConnection, phase: Phase) -> Result<Vec<Gate>, GateError> {
    let in_phase = matches!(phase, Phase::DualWrite | Phase::Backfilled | Phase::ReadNew);
    Ok(vec![
        Gate {
            name: "phase",
            met: in_phase,
            detail: if in_phase {
                format!("phase {phase} writes both name forms")
            } else {
                format!(
                    "the backfill runs in dual_write, backfilled or read_new; the phase is {phase}"
                )
            },
        },
        instances_between(conn, Phase::DualWrite, Phase::ReadNew)?,
    ])
}
