//! The stored migration state: the phase every instance follows, its history, the live
//! instances and what they applied.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::domain::Phase;
use crate::schema::state::{zdm_instances, zdm_migration_history, zdm_migration_state};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error("the stored phase is invalid: {0}")]
    Corrupt(#[from] crate::domain::UnknownPhase),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
}

/// The phase stored in the database.
pub fn current_phase(conn: &mut PgConnection) -> Result<Phase, StateError> {
    Ok(phase_and_since(conn)?.0)
}

/// The stored phase and when it was entered.
pub fn phase_and_since(conn: &mut PgConnection) -> Result<(Phase, DateTime<Utc>), StateError> {
    let (name, since): (String, DateTime<Utc>) = zdm_migration_state::table
        .select((zdm_migration_state::phase, zdm_migration_state::changed_at))
        .first(conn)?;
    Ok((name.parse()?, since))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Advance,
    Rollback,
    /// A control of the backfill (what was asked is in the detail).
    Backfill,
    Verify,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Advance => "advance",
            Action::Rollback => "rollback",
            Action::Backfill => "backfill",
            Action::Verify => "verify",
        }
    }
}

/// One line of the append-only history.
#[derive(Debug, Clone, Queryable, Serialize)]
pub struct HistoryEntry {
    pub id: i64,
    pub action: String,
    pub from_phase: String,
    pub to_phase: String,
    pub actor: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

/// Appends to the history.
pub fn record(
    conn: &mut PgConnection,
    action: Action,
    from: Phase,
    to: Phase,
    actor: &str,
    outcome: &str,
    detail: Option<&str>,
) -> QueryResult<()> {
    diesel::insert_into(zdm_migration_history::table)
        .values((
            zdm_migration_history::action.eq(action.as_str()),
            zdm_migration_history::from_phase.eq(from.as_str()),
            zdm_migration_history::to_phase.eq(to.as_str()),
            zdm_migration_history::actor.eq(actor),
            zdm_migration_history::outcome.eq(outcome),
            zdm_migration_history::detail.eq(detail),
        ))
        .execute(conn)
        .map(drop)
}

/// Moves the stored phase from `from` to `to` and records it, in one transaction. Fails with
/// `NotFound` if the phase is no longer `from` (someone else moved it).
pub fn set_phase(
    conn: &mut PgConnection,
    action: Action,
    from: Phase,
    to: Phase,
    actor: &str,
    detail: Option<&str>,
) -> QueryResult<()> {
    conn.transaction(|conn| {
        let moved = diesel::update(
            zdm_migration_state::table.filter(zdm_migration_state::phase.eq(from.as_str())),
        )
        .set((
            zdm_migration_state::phase.eq(to.as_str()),
            zdm_migration_state::changed_at.eq(diesel::dsl::now),
        ))
        .execute(conn)?;
        if moved == 0 {
            return Err(diesel::result::Error::NotFound);
        }
        record(conn, action, from, to, actor, "done", detail)
    })
}

/// The newest history entries first.
pub fn history(conn: &mut PgConnection, limit: i64) -> QueryResult<Vec<HistoryEntry>> {
    zdm_migration_history::table
        .order(zdm_migration_history::id.desc())
        .limit(limit)
        .load(conn)
}

#[derive(Debug, Clone, Queryable, Serialize)]
pub struct Instance {
    pub id: String,
    pub applied_phase: String,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// p99 of the user requests it answered over its last report window
    /// (`metrics::REPORT_WINDOW`), in ms (`None`: too few to tell).
    pub recent_p99_ms: Option<f64>,
}

impl Instance {
    pub fn phase(&self) -> Option<Phase> {
        self.applied_phase.parse().ok()
    }
}

/// Instances heard of within the live window.
pub fn live_instances(conn: &mut PgConnection) -> QueryResult<Vec<Instance>> {
    // The database's clock and window decide, as in the SQL gate `zdm_instances_gate`.
    let live = diesel::dsl::sql::<diesel::sql_types::Bool>("last_seen > now() - zdm_live_window()");
    zdm_instances::table
        .filter(live)
        .order(zdm_instances::id)
        .select((
            zdm_instances::id,
            zdm_instances::applied_phase,
            zdm_instances::started_at,
            zdm_instances::last_seen,
            zdm_instances::recent_p99_ms,
        ))
        .load(conn)
}

/// How long no client may have used `users.full_name` before the contract (the contract's
/// gate reads it from the database, whoever takes the step).
pub fn set_contract_quiet_secs(conn: &mut PgConnection, secs: i32) -> QueryResult<()> {
    diesel::sql_query("UPDATE zdm_migration_state SET contract_quiet_secs = $1")
        .bind::<diesel::sql_types::Integer, _>(secs)
        .execute(conn)
        .map(drop)
}

/// Stores how long each attempt of a step waits for its lock on users (`zdm_lock_attempt`).
pub fn set_lock_attempt_ms(conn: &mut PgConnection, ms: i32) -> QueryResult<()> {
    diesel::sql_query("UPDATE zdm_migration_state SET lock_attempt_ms = $1")
        .bind::<diesel::sql_types::Integer, _>(ms)
        .execute(conn)
        .map(drop)
}

/// How long each attempt of a step waits for its lock on users, as stored, in ms.
pub fn lock_attempt_ms(conn: &mut PgConnection) -> QueryResult<i32> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "(SELECT lock_attempt_ms FROM zdm_migration_state)",
    ))
    .get_result(conn)
}

/// Samples the use of `users.full_name` by every client (see `zdm_sample_column_use`):
/// false where pg_stat_statements is unavailable, or this role sees only its own statements
/// there (it samples nothing then).
pub fn sample_column_use(conn: &mut PgConnection) -> QueryResult<bool> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "zdm_sample_column_use()",
    ))
    .get_result(conn)
}
