//! The runner: advances or rolls back the phase by one step.
//!
//! Each step is one phase migration (`migrations/9000-*`). Its SQL checks the step's gates,
//! changes the schema and moves the stored phase, in its own transaction(s), so the runner
//! takes a step exactly as `diesel migration run` or `revert` would, and the phase and the
//! applied migrations never disagree. What the runner adds:
//!
//! - One step at a time across the fleet: it holds a session advisory lock while it works; a
//!   second runner is refused at once. (The step's SQL also locks the phase row.)
//! - DDL safety ([I4]): every transaction of a phase migration sets its own lock_timeout
//!   (`zdm_lock_attempt()`: the stored `lock_attempt_ms`, 5 ms by default), so a migration
//!   waiting behind a long transaction holds up other sessions for at most that long. When it
//!   gives up, its SQL says so with zdm's own DETAIL (`zdm_lock_timeout`, whatever the
//!   server's language), its transaction rolls back, and the runner tries again after a
//!   jittered pause growing from 25 ms to 1 s (`lock_retry_pause`) and once the transactions
//!   then in the DDL's way have ended (`holders`: it waits for them outside the lock queue,
//!   not in it), within `LOCK_WAIT_BUDGET` (10 s, its last attempt included). Then it fails
//!   cleanly.
//! - The rollback out of new_only, which needs the fleet between its parts: the phase goes
//!   back to read_new, the runner waits until every instance dual-writes again, runs the
//!   reverse backfill (throttled like the forward one), and then reverts the migration.
//! - Who asked (the history's actor) and the contract's confirmation reach the SQL through
//!   the session settings `zdm.actor` and `zdm.confirm`; refused and failed steps are
//!   recorded in the history here.
//!
//! Here: advance, rollback and settling an interrupted step, the step's session settings and
//! the runner's advisory lock. `steps` knows the phase migrations and applies one (retrying
//! lock timeouts); `holders` finds and waits out the transactions in a DDL's way; `error`
//! holds what a step fails with and tells apart what the SQL raised. What they make public is
//! re-exported here.
//!
//! [I4]: crate::migration#invariants

mod error;
mod holders;
mod steps;

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use serde::Serialize;

use super::advisory_lock::AdvisoryLock;
use super::backfill::{self, BackfillState, Direction, Throttle};
use super::state::{self, Action};
use crate::domain::Phase;

use error::classify;
pub use error::{RunError, is_lock_timeout};
pub use holders::{a_step_waits as a_step_waits_for_lock_holders, someone_waits_on_users};
pub use steps::{
    BACKFILLED, CONTRACT, DUAL_WRITE, EXPAND, LOCK_WAIT_BUDGET, NEW_ONLY, READ_NEW, STEPS,
    applied_steps, is_applied, last_applied_step, lock_retry_pause, step_migration,
};
use steps::{Step, apply};

/// How long a rollback out of new_only waits for every instance to dual-write again.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const LOCK_KEY: i64 = 0x7a64_6d72; // "zdmr"
/// How long a step that names the phase it starts from waits for a step in progress.
pub const NAMED_STEP_WAIT: Duration = Duration::from_secs(10);

/// The log target of a refused or failed step as the history records it: the CLI, which
/// prints the error itself, leaves it out of its log.
pub const HISTORY_LOG: &str = "zdm::history";

#[derive(Debug, Clone, Serialize)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    /// Lock timeouts met (and retried) on the way.
    pub lock_timeouts: usize,
}

/// Advances one phase: applies the step's migration. `actor` names who asked (an instance id
/// or "cli") for the history; `confirm` must be `users.full_name` to contract.
pub fn advance(
    conn: &mut PgConnection,
    actor: &str,
    confirm: Option<&str>,
) -> Result<Transition, RunError> {
    advance_with(
        conn,
        actor,
        None,
        &Consent {
            confirm,
            without_client_check: false,
        },
    )
}

/// What a user gives to allow the contract.
#[derive(Debug, Clone, Copy, Default)]
pub struct Consent<'a> {
    /// Must be `users.full_name` (the column dropped).
    pub confirm: Option<&'a str>,
    /// Where pg_stat_statements is unavailable, the contract goes without knowing whether a
    /// client zdm does not run still uses full_name; recorded in the history.
    pub without_client_check: bool,
}

/// As `advance`, with the contract's consent, and only from `expected` when it is given (see
/// `take_lock`).
pub fn advance_with(
    conn: &mut PgConnection,
    actor: &str,
    expected: Option<Phase>,
    consent: &Consent,
) -> Result<Transition, RunError> {
    let mut lock = take_lock(conn, expected)?;
    let conn = lock.conn();
    let from = phase_as_expected(conn, expected)?;
    let to = from.next().ok_or(RunError::AtEnd)?;
    let outcome = with_step_settings(conn, actor, consent, |conn| {
        let migration = step_migration(from).ok_or(RunError::AtEnd)?;
        if is_applied(conn, migration)? {
            return Err(if from == Phase::ReadNew {
                RunError::UnfinishedRollback
            } else {
                RunError::Mismatch {
                    phase: from,
                    applied: migration.to_owned(),
                }
            });
        }
        let lock_timeouts = apply(conn, migration, Step::Up)?;
        Ok(Transition {
            from,
            to,
            lock_timeouts,
        })
    });
    let outcome = outcome.map_err(|e| interrupted(conn, e, Action::Advance, from, to));
    // An interrupted step is recorded once its outcome is known (`settle_interrupted`).
    if let Err(e) = &outcome
        && !matches!(e, RunError::Interrupted { .. })
    {
        record_failure(conn, Action::Advance, from, to, actor, e);
    }
    outcome
}

/// Rolls back one phase: reverts the last applied phase migration, as `diesel migration
/// revert` would. Out of contracted too: after the contract first_name and last_name hold
/// everything full_name held (its normalised form is their join), so the drop is undone by
/// re-adding the column empty, and the rollback new_only → read_new refills it. The reverse
/// backfill of that rollback waits for `throttle` (replica lag, the requests' p99) like the
/// forward backfill. Only from `expected` when it is given (the stored phase: read_new for
/// a rollback out of new_only that stopped half-way).
pub fn rollback(
    conn: &mut PgConnection,
    actor: &str,
    expected: Option<Phase>,
    throttle: &mut Throttle,
) -> Result<Transition, RunError> {
    let mut lock = take_lock(conn, expected)?;
    let conn = lock.conn();
    let from = phase_as_expected(conn, expected)?;
    let last = last_applied_step(conn)?;
    // A rollback out of new_only that stopped half-way (instances slow to acknowledge, the
    // reverse backfill paused): the phase is already read_new, full_name still optional.
    let (from, to) = if from == Phase::ReadNew && last == Some(NEW_ONLY) {
        (Phase::NewOnly, Phase::ReadNew)
    } else {
        (from, from.previous().ok_or(RunError::AtStart)?)
    };
    let outcome = with_step_settings(conn, actor, &Consent::default(), |conn| {
        let migration = step_migration(to).ok_or(RunError::AtStart)?;
        if last != Some(migration) {
            return Err(RunError::Mismatch {
                phase: from,
                applied: last.unwrap_or("none").to_owned(),
            });
        }
        let lock_timeouts = if from == Phase::NewOnly {
            leave_new_only(conn, throttle)?
        } else {
            apply(conn, migration, Step::Down)?
        };
        Ok(Transition {
            from,
            to,
            lock_timeouts,
        })
    });
    let outcome = outcome.map_err(|e| interrupted(conn, e, Action::Rollback, from, to));
    // An interrupted step is recorded once its outcome is known (`settle_interrupted`).
    if let Err(e) = &outcome
        && !matches!(e, RunError::Interrupted { .. })
    {
        record_failure(conn, Action::Rollback, from, to, actor, e);
    }
    outcome
}

/// `error`, or `Interrupted` when the connection no longer answers: whatever the step met,
/// its outcome is then for the next server to tell.
fn interrupted(
    conn: &mut PgConnection,
    error: RunError,
    action: Action,
    from: Phase,
    to: Phase,
) -> RunError {
    let alive = diesel::select(1.into_sql::<diesel::sql_types::Integer>())
        .execute(conn)
        .is_ok();
    if alive {
        return error;
    }
    RunError::Interrupted {
        action,
        from,
        to,
        message: error
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// After a step lost its connection (`Interrupted`), on a connection to the server that
/// answers now (the same one restarted, or the standby promoted in its place): whether the
/// step committed there. If the phase moved to `to`, it did, and its `done` line is in the
/// history (the phase and its history line commit together), except for the rollback out of
/// new_only, which moves the phase first: it is done once its migration is reverted, and
/// before that it stopped half-way (full_name perhaps not refilled, not required). If not,
/// nothing of the step holds but what a retry picks up again (each part of a step is
/// idempotent), and a `failed` line saying so is recorded, since the lost connection could
/// not record it.
pub fn settle_interrupted(
    conn: &mut PgConnection,
    interrupted: &RunError,
    actor: &str,
) -> Result<Option<Transition>, RunError> {
    let RunError::Interrupted {
        action, from, to, ..
    } = interrupted
    else {
        return Ok(None);
    };
    let phase = state::current_phase(conn)?;
    let half_way = *action == Action::Rollback
        && *from == Phase::NewOnly
        && last_applied_step(conn)? == Some(NEW_ONLY);
    if phase == *to && !half_way {
        log::info!(
            "the interrupted {} {from} → {to} committed: the phase is {to}",
            action.as_str()
        );
        return Ok(Some(Transition {
            from: *from,
            to: *to,
            lock_timeouts: 0,
        }));
    }
    let detail = if half_way && phase == *to {
        format!(
            "{interrupted}; it stopped half-way: the phase is {phase}, but full_name is not refilled and required yet; run rollback again"
        )
    } else {
        format!("{interrupted}; it did not commit here: the phase is {phase}, try again")
    };
    state::record(conn, *action, *from, *to, actor, "failed", Some(&detail))?;
    log::warn!("{detail}");
    Ok(None)
}

/// Takes the runner's lock. A step that names the phase it starts from (`expected`) waits
/// for a step in progress, up to `NAMED_STEP_WAIT`, and is then checked against the phase
/// that step left: two operators who each press "Advance" once take one step between them,
/// and a retry of a step that went through is refused. Without it, a step is refused at once
/// while another runs.
fn take_lock(
    conn: &mut PgConnection,
    expected: Option<Phase>,
) -> Result<AdvisoryLock<'_>, RunError> {
    let lock = match expected {
        Some(_) => AdvisoryLock::acquire_within(conn, LOCK_KEY, NAMED_STEP_WAIT)?,
        None => AdvisoryLock::try_acquire(conn, LOCK_KEY)?,
    };
    lock.ok_or(RunError::Busy)
}

/// The stored phase, read under the runner's lock, if it is `expected` (or nothing was
/// expected). A refusal here changes nothing and is not recorded.
fn phase_as_expected(conn: &mut PgConnection, expected: Option<Phase>) -> Result<Phase, RunError> {
    let phase = state::current_phase(conn)?;
    match expected {
        Some(expected) if expected != phase => Err(RunError::PhaseMoved { expected, phase }),
        _ => Ok(phase),
    }
}

/// The rollback out of new_only. The phase goes back to read_new first (as the first
/// transaction of the migration's down.sql does, which then finds it done); once every live
/// instance dual-writes again, the reverse backfill refills full_name where it differs from
/// the parts, and the migration's revert makes it required again. Returns the lock timeouts
/// retried.
fn leave_new_only(conn: &mut PgConnection, throttle: &mut Throttle) -> Result<usize, RunError> {
    conn.transaction(|conn| {
        conn.batch_execute(
            "SELECT zdm_begin_step('rollback', 'new_only', 'read_new');
             SELECT zdm_finish_step('rollback', 'new_only', 'read_new', 'full_name is refilled next');",
        )
    })
    .map_err(|e| classify(NEW_ONLY, &e).unwrap_or_else(|| e.into()))?;
    wait_for_instances(conn, Phase::ReadNew, ACK_TIMEOUT)?;
    let done = backfill::run_throttled(conn, Direction::Reverse, throttle, |_| {})?;
    if done.state != BackfillState::Done {
        return Err(RunError::Migration {
            migration: NEW_ONLY.to_owned(),
            message: format!(
                "the reverse backfill stopped ({}); run rollback again",
                done.state
            ),
        });
    }
    apply(conn, NEW_ONLY, Step::Down)
}

/// Runs `work` with the session settings the phase migrations read: who asked, and the
/// contract's consent. They are cleared afterwards (the connection may be reused).
fn with_step_settings<T>(
    conn: &mut PgConnection,
    actor: &str,
    consent: &Consent,
    work: impl FnOnce(&mut PgConnection) -> Result<T, RunError>,
) -> Result<T, RunError> {
    set_settings(conn, actor, consent)?;
    let outcome = work(conn);
    if let Err(e) = set_settings(conn, "", &Consent::default()) {
        log::warn!("could not clear the step's session settings: {e}");
    }
    outcome
}

fn set_settings(conn: &mut PgConnection, actor: &str, consent: &Consent) -> QueryResult<()> {
    let without = consent.without_client_check;
    diesel::sql_query(
        "SELECT set_config('zdm.actor', $1, false), set_config('zdm.confirm', $2, false), \
         set_config('zdm.without_client_check', $3, false), set_config('zdm.detail', $4, false), \
         set_config('zdm.retries', '', false), set_config('zdm.lock_attempt_scale', '', false)",
    )
    .bind::<Text, _>(actor)
    .bind::<Text, _>(consent.confirm.unwrap_or(""))
    .bind::<Text, _>(if without { "true" } else { "" })
    .bind::<Text, _>(if without { "without_client_check" } else { "" })
    .execute(conn)
    .map(drop)
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
    log::warn!(target: HISTORY_LOG, "{} {from} → {to} {outcome}: {error}", action.as_str());
}
