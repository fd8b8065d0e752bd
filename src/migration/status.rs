//! The whole state of the migration in one value: what the dashboard, the admin API and
//! `zdm migrate status` show.

use diesel::prelude::*;
use serde::Serialize;

use super::backfill::{self, BackfillStatus, WorkerChange, WorkerRange, Workers};
use super::gates::{self, Gate};
use super::runner;
use super::state::{self, HistoryEntry, Instance, StateError};
use super::verify::{self, VerifyResult};
use crate::domain::Phase;

#[derive(Serialize)]
pub struct Step {
    pub phase: Phase,
    pub gates: Vec<Gate>,
}

#[derive(Serialize)]
pub struct BackfillView {
    #[serde(flatten)]
    pub status: BackfillStatus,
    pub rows_per_s: f64,
    /// The workers knob: a count, or "auto".
    pub workers_setting: Workers,
    /// The run's key ranges, each with its checkpoint and the worker on it.
    pub ranges: Vec<WorkerRange>,
    /// The latest changes of the number of workers, newest first.
    pub worker_changes: Vec<WorkerChange>,
}

/// How many changes of the number of workers the status lists.
const WORKER_CHANGES_SHOWN: i64 = 10;

/// The backfill as the API and the dashboard show it (read first: it marks a backfill whose
/// runner is gone as interrupted).
pub fn backfill_view(conn: &mut PgConnection) -> QueryResult<BackfillView> {
    let (status, ranges) = backfill::status_and_ranges(conn)?;
    BackfillView::with_ranges(conn, status, ranges)
}

impl BackfillView {
    /// `status` (with the progress of `ranges`, as `backfill::status_and_ranges` returns
    /// them) with its rate, ranges and changes of workers.
    pub fn with_ranges(
        conn: &mut PgConnection,
        status: BackfillStatus,
        ranges: Vec<WorkerRange>,
    ) -> QueryResult<Self> {
        Ok(Self {
            rows_per_s: status.rows_per_s(),
            workers_setting: status.workers_setting(),
            ranges,
            worker_changes: backfill::worker_changes(conn, WORKER_CHANGES_SHOWN)?,
            status,
        })
    }
}

/// One phase migration and whether it is applied: what `diesel migration list` shows.
#[derive(Serialize)]
pub struct StepMigration {
    pub name: &'static str,
    pub applied: bool,
}

/// Everything the dashboard and `zdm migrate status` show.
#[derive(Serialize)]
pub struct MigrationStatus {
    pub phase: Phase,
    /// The phase migrations, in order: the first `phase` of them are applied (one more while
    /// a rollback out of new_only has not finished).
    pub migrations: Vec<StepMigration>,
    pub phase_since: chrono::DateTime<chrono::Utc>,
    pub next: Option<Step>,
    pub previous: Option<Step>,
    pub backfill: BackfillView,
    /// The gates of starting (or resuming) the forward backfill, where it may be started: in
    /// the phases it runs in (dual_write to read_new), while it neither runs nor is done.
    pub backfill_gates: Vec<Gate>,
    pub verify: Option<VerifyResult>,
    pub instances: Vec<Instance>,
    pub history: Vec<HistoryEntry>,
    /// Which URL serves what (filled in by whoever knows: the server, the CLI).
    pub connections: crate::db::Connections,
}

/// Reads the whole status (gates from the stored verification, no fresh one).
pub fn migration_status(conn: &mut PgConnection) -> Result<MigrationStatus, StateError> {
    let (phase, phase_since) = state::phase_and_since(conn)?;
    // First: it marks a backfill whose runner is gone as interrupted, which the gates read.
    let backfill = backfill_view(conn)?;
    let next = match phase.next() {
        Some(to) => Some(Step {
            phase: to,
            gates: gates::advance_gates(conn, phase)?,
        }),
        None => None,
    };
    let previous = match phase.previous() {
        Some(to) => Some(Step {
            phase: to,
            gates: gates::rollback_gates(conn, phase)?,
        }),
        None => None,
    };
    let startable = !matches!(
        backfill.status.state,
        backfill::BackfillState::Running
            | backfill::BackfillState::Throttled
            | backfill::BackfillState::Done
    );
    let backfill_gates = if startable && (Phase::DualWrite..=Phase::ReadNew).contains(&phase) {
        gates::backfill_gates(conn, phase)?
    } else {
        Vec::new()
    };
    let applied = runner::applied_steps(conn)?;
    Ok(MigrationStatus {
        phase,
        migrations: runner::STEPS
            .into_iter()
            .map(|name| StepMigration {
                name,
                applied: applied.contains(&name),
            })
            .collect(),
        phase_since,
        next,
        previous,
        backfill,
        backfill_gates,
        verify: verify::latest(conn)?,
        instances: state::live_instances(conn)?,
        history: state::history(conn, 50)?,
        connections: Default::default(),
    })
}
