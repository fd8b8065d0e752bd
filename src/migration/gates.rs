//! The gates between phases: what must hold before a step moves the phase. They are checked
//! in SQL, where every phase migration checks them before it changes anything, whoever runs
//! it (the runner, `diesel migration run`, psql). This module reads them for the 409 answer,
//! the CLI and the dashboard. Each gate says whether it is met and why.
//!
//! Where they live (the newest migration that defines a function holds its definition):
//! - `2026-12-07-000002_backfill_triggers`: the gate table, which step checks which gates in
//!   which order (`zdm_gate_table`), and `zdm_gate`, which checks each; the `triggers` gate.
//! - `2026-12-06-000003_gate_table`: `zdm_gates`, which reads the table; the refusal
//!   (`zdm_require_gates`); the `instances` and `phase` gates.
//! - `2026-12-06-000001_gates_see_the_database`: the `schema`, `row security`,
//!   `dependencies` and `clients` gates.
//! - `2026-11-30-000005_backfill_workers`: the `backfill` gate.
//! - `2026-11-30-000001_steps_in_sql`: the `verify`, `reverse backfill` and `confirmation`
//!   gates, and the steps' start and end (`zdm_begin_step`, `zdm_finish_step`).
//!
//! A refused step raises SQLSTATE `ZD001` with DETAIL `zdm:refused` (`zdm_raise`); the runner
//! tells it apart by that, not by its words.

use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use serde::Serialize;

use crate::domain::Phase;

/// What a user types to allow the contract (the column that will be dropped).
pub const CONTRACT_CONFIRMATION: &str = "users.full_name";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, QueryableByName)]
pub struct Gate {
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Bool)]
    pub met: bool,
    #[diesel(sql_type = Text)]
    pub detail: String,
}

/// Which step's gates: `zdm_gates`' first argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateStep {
    Advance,
    Rollback,
    /// Starting (or resuming) the forward backfill.
    Backfill,
    /// A verification of the whole table.
    Verify,
}

impl GateStep {
    fn as_str(self) -> &'static str {
        match self {
            GateStep::Advance => "advance",
            GateStep::Rollback => "rollback",
            GateStep::Backfill => "backfill",
            GateStep::Verify => "verify",
        }
    }
}

/// The gates of `step` from phase `from`, with the stored verification (the step itself runs a
/// fresh one when it is taken).
pub fn gates(conn: &mut PgConnection, step: GateStep, from: Phase) -> QueryResult<Vec<Gate>> {
    diesel::sql_query("SELECT name, met, detail FROM zdm_gates($1, $2, 'stored')")
        .bind::<Text, _>(step.as_str())
        .bind::<Text, _>(from.as_str())
        .load(conn)
}

/// The gates for advancing from `from` (to `from.next()`).
pub fn advance_gates(conn: &mut PgConnection, from: Phase) -> QueryResult<Vec<Gate>> {
    gates(conn, GateStep::Advance, from)
}

/// The gates for rolling back from `from` (to `from.previous()`).
pub fn rollback_gates(conn: &mut PgConnection, from: Phase) -> QueryResult<Vec<Gate>> {
    gates(conn, GateStep::Rollback, from)
}

/// The `triggers` gate alone: whether the triggers of users fire on the backfill's updates as
/// chosen (see `backfill::Triggers`).
pub fn triggers_gate(conn: &mut PgConnection) -> QueryResult<Vec<Gate>> {
    diesel::sql_query("SELECT name, met, detail FROM zdm_triggers_gate()").load(conn)
}

/// The gates for starting (or resuming) the forward backfill: the new columns are written by
/// every instance, so no row the backfill fills can be overwritten by a v1-only write.
pub fn backfill_gates(conn: &mut PgConnection, phase: Phase) -> QueryResult<Vec<Gate>> {
    gates(conn, GateStep::Backfill, phase)
}
