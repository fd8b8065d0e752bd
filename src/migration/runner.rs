//! The runner: advances or rolls back the phase by one step, checking the gates, applying or
//! reverting the phase's schema migrations, and recording everything in the history.
//!
//! DDL safety (I4): every phase migration sets `lock_timeout = 200ms` itself, so a migration
//! waiting behind a long transaction holds up other sessions for at most that long. When it
//! gives up (SQLSTATE 55P03, "canceling statement due to lock timeout") its transaction rolls
//! back whole, and the runner tries again after 0.2 s, 0.4 s, 0.8 s, 1.6 s and 3.2 s: six
//! attempts, about 7.4 s in all at worst. Then it fails cleanly with nothing applied.
//!
//! One step at a time across the fleet: the runner holds a session advisory lock while it
//! works; a second runner is refused at once.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_migrations::MigrationHarness;
use serde::Serialize;

use super::Phase;
use super::advisory_lock::AdvisoryLock;
use super::backfill::{self, BackfillError, Direction};
use super::gates::{self, Gate, GateError, VerifyMode};
use super::schema_migrations::MIGRATIONS;
use super::state::{self, Action, StateError};

/// Pauses between attempts of a migration that hit its lock_timeout.
pub const LOCK_RETRY_SCHEDULE: [Duration; 5] = [
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1600),
    Duration::from_millis(3200),
];
/// How long a rollback out of new_only waits for every instance to dual-write again.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const LOCK_KEY: i64 = 0x7a64_6d72; // "zdmr"

pub const EXPAND: &str = "2026-11-24-100001_phase_1_expand";
pub const ADD_NAMES_CHECK: &str = "2026-11-24-100002_phase_3_add_names_check";
pub const VALIDATE_NAMES_CHECK: &str = "2026-11-24-100003_phase_3_validate_names_check";
pub const FULL_NAME_OPTIONAL: &str = "2026-11-24-100004_phase_5_full_name_optional";
pub const CONTRACT: &str = "2026-11-24-100005_phase_6_contract";

/// The phase migrations applied when advancing *from* a phase (reverted, in reverse order,
/// when rolling back *to* it).
pub fn migrations_leaving(phase: Phase) -> &'static [&'static str] {
    match phase {
        Phase::Baseline => &[EXPAND],
        Phase::DualWrite => &[ADD_NAMES_CHECK, VALIDATE_NAMES_CHECK],
        Phase::ReadNew => &[FULL_NAME_OPTIONAL],
        Phase::NewOnly => &[CONTRACT],
        Phase::Expanded | Phase::Backfilled | Phase::Contracted => &[],
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("another migration step is in progress; try again when it has finished")]
    Busy,
    #[error("cannot {action} from {from}: {}", unmet(.gates))]
    GateUnmet {
        action: &'static str,
        from: Phase,
        gates: Vec<Gate>,
    },
    #[error("contracted is the last phase")]
    AtEnd,
    #[error("baseline is the first phase")]
    AtStart,
    #[error(
        "contracted cannot be rolled back by the app: full_name is gone (see the contract's down.sql for disaster recovery)"
    )]
    Irreversible,
    #[error(
        "{migration} could not take its lock within lock_timeout in {attempts} attempts; nothing was applied (a long transaction holds users)"
    )]
    LockTimeout { migration: String, attempts: usize },
    #[error(
        "instances did not apply {phase} within {secs} s: {waiting}; the phase is {phase}, run rollback again to finish"
    )]
    AckTimeout {
        phase: Phase,
        secs: u64,
        waiting: String,
    },
    #[error("migration {migration} failed: {message}")]
    Migration { migration: String, message: String },
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    #[error(transparent)]
    Gate(#[from] GateError),
    #[error(transparent)]
    State(#[from] StateError),
}

fn unmet(gates: &[Gate]) -> String {
    gates
        .iter()
        .filter(|g| !g.met)
        .map(|g| format!("{} gate: {}", g.name, g.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<diesel::result::Error> for RunError {
    fn from(e: diesel::result::Error) -> Self {
        RunError::State(e.into())
    }
}

impl RunError {
    /// Whether the step was refused before anything was tried (a gate, the wrong phase,
    /// another step in progress): recorded as "refused" rather than "failed".
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RunError::Busy
                | RunError::GateUnmet { .. }
                | RunError::AtEnd
                | RunError::AtStart
                | RunError::Irreversible
        )
    }

    /// Whether the step may simply be tried again later (the table was busy, an instance
    /// was slow, a backfill was already running).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RunError::LockTimeout { .. }
                | RunError::AckTimeout { .. }
                | RunError::Backfill(BackfillError::AlreadyRunning)
        )
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    /// Lock timeouts met (and retried) on the way.
    pub lock_timeouts: usize,
}

/// Advances one phase. `actor` names who asked (an instance id or "cli") for the history;
/// `confirm` must be `users.full_name` to contract.
pub fn advance(
    conn: &mut PgConnection,
    actor: &str,
    confirm: Option<&str>,
) -> Result<Transition, RunError> {
    let mut lock = AdvisoryLock::try_acquire(conn, LOCK_KEY)?.ok_or(RunError::Busy)?;
    let conn = lock.conn();
    let from = state::current_phase(conn)?;
    let to = from.next().ok_or(RunError::AtEnd)?;
    let outcome = (|| {
        let gate_list = gates::advance_gates(conn, from, confirm, VerifyMode::Fresh)?;
        if gate_list.iter().any(|g| !g.met) {
            return Err(RunError::GateUnmet {
                action: "advance",
                from,
                gates: gate_list,
            });
        }
        let mut lock_timeouts = 0;
        for name in migrations_leaving(from) {
            lock_timeouts += apply(conn, name, Step::Up)?;
        }
        let detail =
            (lock_timeouts > 0).then(|| format!("{lock_timeouts} lock timeout(s) retried"));
        state::set_phase(conn, Action::Advance, from, to, actor, detail.as_deref())?;
        Ok(Transition {
            from,
            to,
            lock_timeouts,
        })
    })();
    if let Err(e) = &outcome {
        record_failure(conn, Action::Advance, from, to, actor, e);
    }
    outcome
}

/// Rolls back one phase, where the data allows (never out of contracted).
pub fn rollback(conn: &mut PgConnection, actor: &str) -> Result<Transition, RunError> {
    let mut lock = AdvisoryLock::try_acquire(conn, LOCK_KEY)?.ok_or(RunError::Busy)?;
    let conn = lock.conn();
    let from = state::current_phase(conn)?;
    if from == Phase::Contracted {
        return Err(RunError::Irreversible);
    }
    // A rollback out of new_only that stopped half-way (instances slow to acknowledge) is
    // finished first: the phase is already read_new, full_name still optional.
    if from == Phase::ReadNew && is_applied(conn, FULL_NAME_OPTIONAL)? {
        let outcome = finish_leaving_new_only(conn);
        let outcome = outcome.map(|lock_timeouts| Transition {
            from: Phase::NewOnly,
            to: Phase::ReadNew,
            lock_timeouts,
        });
        match &outcome {
            Ok(_) => state::record(
                conn,
                Action::Rollback,
                Phase::NewOnly,
                Phase::ReadNew,
                actor,
                "done",
                Some("finished the reverse backfill"),
            )?,
            Err(e) => record_failure(
                conn,
                Action::Rollback,
                Phase::NewOnly,
                Phase::ReadNew,
                actor,
                e,
            ),
        }
        return outcome;
    }
    let to = from.previous().ok_or(RunError::AtStart)?;
    let outcome = (|| {
        let gate_list = gates::rollback_gates(conn, from)?;
        if gate_list.iter().any(|g| !g.met) {
            return Err(RunError::GateUnmet {
                action: "roll back",
                from,
                gates: gate_list,
            });
        }
        if from == Phase::NewOnly {
            // Instances must dual-write again before full_name is refilled and required.
            state::set_phase(
                conn,
                Action::Rollback,
                from,
                to,
                actor,
                Some("reverse backfill follows"),
            )?;
            let lock_timeouts = finish_leaving_new_only(conn)?;
            return Ok(Transition {
                from,
                to,
                lock_timeouts,
            });
        }
        let mut lock_timeouts = 0;
        for name in migrations_leaving(to).iter().rev() {
            lock_timeouts += apply(conn, name, Step::Down)?;
        }
        let detail =
            (lock_timeouts > 0).then(|| format!("{lock_timeouts} lock timeout(s) retried"));
        state::set_phase(conn, Action::Rollback, from, to, actor, detail.as_deref())?;
        Ok(Transition {
            from,
            to,
            lock_timeouts,
        })
    })();
    if let Err(e) = &outcome {
        record_failure(conn, Action::Rollback, from, to, actor, e);
    }
    outcome
}

/// With the phase back at read_new: wait until every live instance dual-writes, refill
/// full_name where it differs from the parts (the reverse backfill), then make it required
/// again. Returns the lock timeouts retried.
fn finish_leaving_new_only(conn: &mut PgConnection) -> Result<usize, RunError> {
    wait_for_instances(conn, Phase::ReadNew, ACK_TIMEOUT)?;
    let done = backfill::run(conn, Direction::Reverse, |_| {})?;
    if done.state != "done" {
        return Err(RunError::Migration {
            migration: FULL_NAME_OPTIONAL.to_owned(),
            message: format!(
                "the reverse backfill stopped ({}); run rollback again",
                done.state
            ),
        });
    }
    apply(conn, FULL_NAME_OPTIONAL, Step::Down)
}

fn wait_for_instances(
    conn: &mut PgConnection,
    phase: Phase,
    timeout: Duration,
) -> Result<(), RunError> {
    let started = Instant::now();
    loop {
        let waiting: Vec<String> = state::live_instances(conn)?
            .into_iter()
            .filter(|i| i.phase() != Some(phase))
            .map(|i| format!("{} ({})", i.id, i.applied_phase))
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(RunError::AckTimeout {
                phase,
                secs: timeout.as_secs(),
                waiting: waiting.join(", "),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn record_failure(
    conn: &mut PgConnection,
    action: Action,
    from: Phase,
    to: Phase,
    actor: &str,
    error: &RunError,
) {
    let outcome = if error.is_refusal() {
        "refused"
    } else {
        "failed"
    };
    if let Err(e) = state::record(
        conn,
        action,
        from,
        to,
        actor,
        outcome,
        Some(&error.to_string()),
    ) {
        log::error!(
            "could not record the {outcome} {} in the history: {e}",
            action.as_str()
        );
    }
    log::warn!("{} {from} → {to} {outcome}: {error}", action.as_str());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Up,
    Down,
}

fn find_migration(name: &str) -> Result<Box<dyn Migration<Pg>>, RunError> {
    MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(|e| RunError::Migration {
            migration: name.to_owned(),
            message: e.to_string(),
        })?
        .into_iter()
        .find(|m| m.name().to_string() == name)
        .ok_or_else(|| RunError::Migration {
            migration: name.to_owned(),
            message: "not embedded in this binary".to_owned(),
        })
}

/// Whether the phase migration `name` is applied.
pub fn is_applied(conn: &mut PgConnection, name: &str) -> Result<bool, RunError> {
    let migration = find_migration(name)?;
    let applied = conn.applied_migrations().map_err(|e| RunError::Migration {
        migration: name.to_owned(),
        message: e.to_string(),
    })?;
    Ok(applied.contains(&migration.name().version()))
}

/// Whether an error (or any of its causes) is PostgreSQL's lock_timeout (SQLSTATE 55P03).
/// Diesel exposes no SQLSTATE, so the server's message is matched; a server whose
/// `lc_messages` is not English will not be retried, only fail cleanly.
fn is_lock_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.to_string().contains("lock timeout") {
            return true;
        }
        current = e.source();
    }
    false
}

/// Applies (or reverts) one phase migration, retrying lock timeouts on the schedule.
/// Nothing happens if it is already applied (reverted). Returns the lock timeouts met.
fn apply(conn: &mut PgConnection, name: &str, step: Step) -> Result<usize, RunError> {
    let applied = is_applied(conn, name)?;
    if applied == (step == Step::Up) {
        return Ok(0);
    }
    let migration = find_migration(name)?;
    let mut lock_timeouts = 0;
    let mut pauses = LOCK_RETRY_SCHEDULE.iter();
    loop {
        let result = match step {
            Step::Up => conn.run_migration(migration.as_ref()).map(drop),
            Step::Down => conn.revert_migration(migration.as_ref()).map(drop),
        };
        if result.is_err() {
            // A migration that manages its own transactions (BEGIN ... COMMIT in its file)
            // leaves its failed transaction open: end it, or the retry (and whatever uses
            // this connection next) meets "current transaction is aborted". Without one
            // open, PostgreSQL only warns.
            let _ = conn.batch_execute("ROLLBACK");
        }
        match result {
            Ok(()) => {
                log::info!(
                    "{} {name}",
                    if step == Step::Up {
                        "applied"
                    } else {
                        "reverted"
                    }
                );
                return Ok(lock_timeouts);
            }
            Err(e) if is_lock_timeout(e.as_ref()) => {
                lock_timeouts += 1;
                let Some(pause) = pauses.next() else {
                    return Err(RunError::LockTimeout {
                        migration: name.to_owned(),
                        attempts: lock_timeouts,
                    });
                };
                log::warn!("{name}: lock timeout (attempt {lock_timeouts}), retrying in {pause:?}");
                std::thread::sleep(*pause);
            }
            Err(e) => {
                return Err(RunError::Migration {
                    migration: name.to_owned(),
                    message: e.to_string(),
                });
            }
        }
    }
}
