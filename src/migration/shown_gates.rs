//! The next step's gates (and the backfill's) as people are shown them: the dashboard (the page and
//! `/admin/status.json`, which `static/admin.js` redraws from) and `zdm migrate status`. A gate the step checks for itself when it is taken
//! (a fresh verification) is shown as such, not as unmet; a backfill never started says so
//! instead of counting "0 of 0 rows".

use serde::Serialize;

use crate::migration::backfill::{BackfillState, Direction};
use crate::migration::gates::Gate;
use crate::migration::status::MigrationStatus;

/// The gate `zdm_gates` names after the stored verification.
const VERIFY_GATE: &str = "verify";
/// The gate `zdm_gates` names after the forward backfill.
const BACKFILL_GATE: &str = "backfill";

/// How a gate stands before the step is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GateMark {
    Met,
    Unmet,
    /// The step runs this check itself when it is taken: nothing to do beforehand.
    OnAdvance,
}

impl GateMark {
    fn symbol(self) -> &'static str {
        match self {
            GateMark::Met => "✓",
            GateMark::Unmet => "✗",
            GateMark::OnAdvance => "↻",
        }
    }

    /// What a screen reader says before the detail.
    fn said(self) -> &'static str {
        match self {
            GateMark::Met => "met",
            GateMark::Unmet => "not met",
            GateMark::OnAdvance => "checked when you advance",
        }
    }

    fn class(self) -> &'static str {
        match self {
            GateMark::Met => "met",
            GateMark::Unmet => "unmet",
            GateMark::OnAdvance => "on-advance",
        }
    }
}

/// One gate, with everything the page and the script print of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShownGate {
    pub name: String,
    pub mark: GateMark,
    pub symbol: &'static str,
    pub said: &'static str,
    pub class: &'static str,
    pub detail: String,
}

/// What the stored state says beyond the gates themselves.
#[derive(Debug, Clone, Copy, Default)]
struct Context {
    /// A verification of the current phase was stored since the phase was entered.
    verified_in_phase: bool,
    /// The forward backfill has never started.
    backfill_not_started: bool,
}

/// The gates of the next step, as shown; empty in the last phase.
pub fn next_gates(status: &MigrationStatus) -> Vec<ShownGate> {
    let Some(next) = &status.next else {
        return Vec::new();
    };
    let backfill = &status.backfill.status;
    let context = Context {
        verified_in_phase: status.verify.as_ref().is_some_and(|v| {
            v.phase == status.phase.as_str() && v.checked_at >= status.phase_since
        }),
        backfill_not_started: backfill.state == BackfillState::Idle
            && backfill.direction == Direction::Forward
            && backfill.rows_total == 0,
    };
    next.gates.iter().map(|gate| shown(gate, context)).collect()
}

/// The gates of starting the forward backfill that are not met, as shown; none where it
/// cannot start.
pub fn unmet_backfill_gates(status: &MigrationStatus) -> Vec<ShownGate> {
    status
        .backfill_gates
        .iter()
        .filter(|gate| !gate.met)
        .map(|gate| shown(gate, Context::default()))
        .collect()
}

fn shown(gate: &Gate, context: Context) -> ShownGate {
    let (mark, detail) = if gate.met {
        (GateMark::Met, gate.detail.clone())
    } else if gate.name == VERIFY_GATE && !context.verified_in_phase {
        (
            GateMark::OnAdvance,
            "no verification in this phase yet; the step runs one, and refuses on a divergent row"
                .to_owned(),
        )
    } else if gate.name == BACKFILL_GATE && context.backfill_not_started {
        (
            GateMark::Unmet,
            "the backfill has not started yet (Start on the dashboard, or zdm backfill)".to_owned(),
        )
    } else {
        (GateMark::Unmet, gate.detail.clone())
    };
    ShownGate {
        name: gate.name.clone(),
        mark,
        symbol: mark.symbol(),
        said: mark.said(),
        class: mark.class(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(name: &str, met: bool, detail: &str) -> Gate {
        Gate {
            name: name.to_owned(),
            met,
            detail: detail.to_owned(),
        }
    }

    #[test]
    fn a_verification_the_step_runs_itself_is_not_shown_as_unmet() {
        let unverified = gate("verify", false, "no verification since entering dual_write");
        let shown_now = shown(&unverified, Context::default());
        assert_eq!(shown_now.mark, GateMark::OnAdvance);
        assert_eq!(shown_now.said, "checked when you advance");

        let divergent = gate("verify", false, "verify found 3 divergent row(s)");
        let verified = Context {
            verified_in_phase: true,
            ..Context::default()
        };
        let shown_after = shown(&divergent, verified);
        assert_eq!(
            shown_after.mark,
            GateMark::Unmet,
            "a divergent row is unmet"
        );
        assert_eq!(shown_after.detail, divergent.detail);
    }

    #[test]
    fn a_backfill_never_started_says_so() {
        let idle = gate("backfill", false, "the backfill is idle (0 of 0 rows)");
        let not_started = Context {
            backfill_not_started: true,
            ..Context::default()
        };
        let shown_idle = shown(&idle, not_started);
        assert_eq!(shown_idle.mark, GateMark::Unmet);
        assert!(
            shown_idle.detail.contains("has not started"),
            "{shown_idle:?}"
        );

        let paused = gate("backfill", false, "the backfill is paused (10 of 40 rows)");
        assert_eq!(shown(&paused, Context::default()).detail, paused.detail);
    }

    #[test]
    fn met_gates_keep_their_words() {
        let met = gate(
            "instances",
            true,
            "all 2 live instance(s) have applied expanded",
        );
        let shown_met = shown(&met, Context::default());
        assert_eq!((shown_met.mark, shown_met.symbol), (GateMark::Met, "✓"));
        assert_eq!(shown_met.detail, met.detail);
    }
}
