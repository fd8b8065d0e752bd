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
//!   (`zdm_lock_attempt()`: the stored `lock_attempt_ms`, 20 ms by default), so a migration
//!   waiting behind a long transaction holds up other sessions for at most that long. When it
//!   gives up, its SQL says so with zdm's own DETAIL (`zdm_lock_timeout`, whatever the
//!   server's language), its transaction rolls back, and the runner tries again after a
//!   jittered pause growing from 25 ms to 1 s (`lock_retry_pause`), within
//!   `LOCK_WAIT_BUDGET` (8 s). Then it fails cleanly.
//! - The rollback out of new_only, which needs the fleet between its parts: the phase goes
//!   back to read_new, the runner waits until every instance dual-writes again, runs the
//!   reverse backfill (throttled like the forward one), and then reverts the migration.
//! - Who asked (the history's actor) and the contract's confirmation reach the SQL through
//!   the session settings `zdm.actor` and `zdm.confirm`; refused and failed steps are
//!   recorded in the history here.
//!
//! [I4]: crate::migration#invariants

use std::time::{Duration, Instant};

use diesel::connection::BoxableConnection;
use diesel::connection::SimpleConnection;
use diesel::migration::{Migration, MigrationMetadata, MigrationName, MigrationSource};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_migrations::MigrationHarness;
use serde::Serialize;

use super::advisory_lock::AdvisoryLock;
use super::backfill::{self, BackfillError, BackfillState, Direction, Throttle};
use super::schema_migrations::MIGRATIONS;
use super::state::{self, Action, StateError};
use crate::domain::Phase;

/// How long a step keeps trying for its lock on users: attempts as long as the stored
/// `lock_attempt_ms` (20 ms unless `ZDM_LOCK_ATTEMPT_MS` says otherwise; each is that long a
/// stall for the requests queued behind it) and the pauses between them, until this much time
/// has gone.
pub const LOCK_WAIT_BUDGET: Duration = Duration::from_secs(8);

/// The pause after the `n`th lock timeout (from 1): from 25 ms, doubling up to 1 s, jittered
/// down to half of that, so that the requests queued behind an attempt go through before the
/// next, and two steps retrying at once fall out of step.
pub fn lock_retry_pause(n: u32, rng: &mut fastrand::Rng) -> Duration {
    let cap_ms = (25_u64 << n.saturating_sub(1).min(6)).min(1000);
    Duration::from_millis(rng.u64(cap_ms / 2..=cap_ms))
}
/// How long a rollback out of new_only waits for every instance to dual-write again.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);
const LOCK_KEY: i64 = 0x7a64_6d72; // "zdmr"
/// How long a step that names the phase it starts from waits for a step in progress.
pub const NAMED_STEP_WAIT: Duration = Duration::from_secs(10);

/// A phase migration's SQL, read from the files `embed_migrations!` embeds (see
/// `StepMigration`).
struct StepFiles {
    name: &'static str,
    up: &'static str,
    down: &'static str,
}

macro_rules! step_files {
    ($name:literal) => {
        StepFiles {
            name: $name,
            up: include_str!(concat!("../../migrations/", $name, "/up.sql")),
            down: include_str!(concat!("../../migrations/", $name, "/down.sql")),
        }
    };
}

const STEP_FILES: [StepFiles; 6] = [
    step_files!("9000-00-01-000000_phase_1_expand"),
    step_files!("9000-00-02-000000_phase_2_dual_write"),
    step_files!("9000-00-03-000000_phase_3_backfilled"),
    step_files!("9000-00-04-000000_phase_4_read_new"),
    step_files!("9000-00-05-000000_phase_5_new_only"),
    step_files!("9000-00-06-000000_phase_6_contract"),
];

pub const EXPAND: &str = STEP_FILES[0].name;
pub const DUAL_WRITE: &str = STEP_FILES[1].name;
pub const BACKFILLED: &str = STEP_FILES[2].name;
pub const READ_NEW: &str = STEP_FILES[3].name;
pub const NEW_ONLY: &str = STEP_FILES[4].name;
pub const CONTRACT: &str = STEP_FILES[5].name;

/// The phase migrations in order: the one at index `i` steps from `Phase::ALL[i]` to the next.
pub const STEPS: [&str; 6] = [EXPAND, DUAL_WRITE, BACKFILLED, READ_NEW, NEW_ONLY, CONTRACT];

/// The phase migration that advances from `from` (and that a rollback to `from` reverts).
pub fn step_migration(from: Phase) -> Option<&'static str> {
    STEPS.get(from.index()).copied()
}

/// The log target of a refused or failed step as the history records it: the CLI, which
/// prints the error itself, leaves it out of its log.
pub const HISTORY_LOG: &str = "zdm::history";

/// What the SQL of a phase migration raises (`zdm_raise` in migration
/// `2026-12-06-000003_gate_table`), told apart by the DETAIL it raises it with: Diesel hands
/// on the DETAIL, not the SQLSTATE. The message is for people, in words the runner passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raised {
    /// A gate is unmet, or the phase is not the step's: nothing was changed.
    Refused,
    /// The step found something wrong on its way and undid what it had done.
    Undone,
    /// A lock wait reached lock_timeout; the step may be tried again.
    LockTimeout,
}

impl Raised {
    const ALL: [Raised; 3] = [Raised::Refused, Raised::Undone, Raised::LockTimeout];

    fn detail(self) -> &'static str {
        match self {
            Raised::Refused => "zdm:refused",
            Raised::Undone => "zdm:undone",
            Raised::LockTimeout => "zdm:lock_timeout",
        }
    }

    /// The words the message starts with for someone reading the database's error (psql,
    /// `diesel migration run`); the runner's own error says its kind otherwise.
    fn label(self) -> &'static str {
        match self {
            Raised::Refused => "zdm gate: ",
            Raised::Undone => "zdm step undone: ",
            Raised::LockTimeout => "zdm_lock_timeout: ",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("another migration step is in progress; try again when it has finished")]
    Busy,
    /// The step named the phase it starts from, and the phase is another: someone else (or an
    /// earlier try of the same request) took a step meanwhile.
    #[error("the phase is {phase}, not {expected}: another step was taken since; nothing was done")]
    PhaseMoved { expected: Phase, phase: Phase },
    /// A gate of the step is unmet (checked by the step's SQL): what, and what to do.
    #[error("{0}")]
    Refused(String),
    /// The step found something wrong half-way and undid what it had done.
    #[error("the step was undone: {0}")]
    Undone(String),
    #[error("contracted is the last phase")]
    AtEnd,
    #[error("baseline is the first phase")]
    AtStart,
    #[error(
        "a rollback out of new_only has not finished (full_name is still optional): run rollback again to finish it"
    )]
    UnfinishedRollback,
    #[error(
        "the phase is {phase} but the last applied phase migration is {applied}; revert or apply migrations until they match (`diesel migration list`)"
    )]
    Mismatch { phase: Phase, applied: String },
    #[error(
        "{migration} could not take its lock within lock_timeout in {attempts} attempts over {:.1} s; nothing was applied (a long transaction holds users)",
        waited.as_secs_f64()
    )]
    LockTimeout {
        migration: String,
        attempts: usize,
        waited: Duration,
    },
    #[error(
        "instances did not apply {phase} within {secs} s: {waiting}; the phase is {phase}, run rollback again to finish"
    )]
    AckTimeout {
        phase: Phase,
        secs: u64,
        waiting: String,
    },
    #[error(
        "{migration} was canceled by {setting} ({message}); each step sets its own timeouts, so this one came from elsewhere (a role's or the database's setting applied to zdm's session): nothing of the step remains, try again"
    )]
    Canceled {
        migration: String,
        setting: &'static str,
        message: String,
    },
    #[error("migration {migration} failed: {message}")]
    Migration { migration: String, message: String },
    /// The connection died under the step (the server crashed, or the primary was lost in a
    /// failover): the step committed on the server that answers next or not at all, which
    /// only that server can tell (see `settle_interrupted`).
    #[error(
        "the connection to the database was lost during the {} {from} → {to} ({message}); it committed on the server that answers next or not at all: its phase and history say which",
        action.as_str()
    )]
    Interrupted {
        action: Action,
        from: Phase,
        to: Phase,
        message: String,
    },
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<diesel::result::Error> for RunError {
    fn from(e: diesel::result::Error) -> Self {
        RunError::State(e.into())
    }
}

impl RunError {
    /// Whether the step was refused before anything was changed (a gate, the wrong phase,
    /// another step in progress): recorded as "refused" rather than "failed".
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RunError::Busy
                | RunError::PhaseMoved { .. }
                | RunError::Refused(_)
                | RunError::AtEnd
                | RunError::AtStart
                | RunError::UnfinishedRollback
                | RunError::Mismatch { .. }
        )
    }

    /// Whether the step may simply be tried again later (the table was busy, an instance
    /// was slow, a backfill was already running).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RunError::LockTimeout { .. }
                | RunError::AckTimeout { .. }
                | RunError::Canceled { .. }
                | RunError::Backfill(BackfillError::AlreadyRunning)
        )
    }

    /// Whether a client should see this as a conflict with the migration's state (409) rather
    /// than a server error: refusals, transient failures and steps that undid themselves.
    pub fn is_conflict(&self) -> bool {
        self.is_refusal() || self.is_transient() || matches!(self, RunError::Undone(_))
    }
}

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
/// history (the phase and its history line commit together). If not, nothing of the step
/// holds but what a retry picks up again (each part of a step is idempotent), and a
/// `failed` line saying so is recorded, since the lost connection could not record it.
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
    if phase == *to {
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
    let detail = format!("{interrupted}; it did not commit here: the phase is {phase}, try again");
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
         set_config('zdm.retries', '', false)",
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Up,
    Down,
}

/// A phase migration as the harness runs it (in a transaction unless its metadata says not,
/// recorded in `__diesel_schema_migrations`), with its SQL sent by this module: the harness's
/// own error keeps only the message of what the SQL raised, this one Diesel's error with its
/// DETAIL (see `Raised`). The SQL is the same file's, read at build time.
struct StepMigration {
    embedded: Box<dyn Migration<Pg>>,
    files: &'static StepFiles,
}

impl Migration<Pg> for StepMigration {
    fn run(&self, conn: &mut dyn BoxableConnection<Pg>) -> diesel::migration::Result<()> {
        Ok(conn.batch_execute(self.files.up)?)
    }

    fn revert(&self, conn: &mut dyn BoxableConnection<Pg>) -> diesel::migration::Result<()> {
        Ok(conn.batch_execute(self.files.down)?)
    }

    fn metadata(&self) -> &dyn MigrationMetadata {
        self.embedded.metadata()
    }

    fn name(&self) -> &dyn MigrationName {
        self.embedded.name()
    }
}

fn find_migration(name: &str) -> Result<StepMigration, RunError> {
    let not_found = |message: String| RunError::Migration {
        migration: name.to_owned(),
        message,
    };
    let files = STEP_FILES
        .iter()
        .find(|files| files.name == name)
        .ok_or_else(|| not_found("not a phase migration".to_owned()))?;
    let embedded = MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(|e| not_found(e.to_string()))?
        .into_iter()
        .find(|m| m.name().to_string() == name)
        .ok_or_else(|| not_found("not embedded in this binary".to_owned()))?;
    Ok(StepMigration { embedded, files })
}

fn version_of(name: &str) -> String {
    name.split('_').next().unwrap_or(name).replace('-', "")
}

/// Whether the phase migration `name` is applied.
pub fn is_applied(conn: &mut PgConnection, name: &str) -> Result<bool, RunError> {
    Ok(applied_steps(conn)?.contains(&name))
}

/// The phase migrations applied, in order. Read with a plain SELECT, not diesel's harness,
/// which first creates its bookkeeping table if missing: a role with no DDL rights (the
/// requests' behind a pooler) shows the status too.
pub fn applied_steps(conn: &mut PgConnection) -> QueryResult<Vec<&'static str>> {
    let applied: Vec<String> = diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
        .load::<AppliedVersion>(conn)?
        .into_iter()
        .map(|v| v.version)
        .collect();
    Ok(STEPS
        .into_iter()
        .filter(|name| applied.contains(&version_of(name)))
        .collect())
}

#[derive(QueryableByName)]
struct AppliedVersion {
    #[diesel(sql_type = Text)]
    version: String,
}

/// The last phase migration applied (what a revert would undo), if any.
pub fn last_applied_step(conn: &mut PgConnection) -> Result<Option<&'static str>, RunError> {
    Ok(applied_steps(conn)?.last().copied())
}

/// What zdm's SQL raised in `error` or any of its causes, and its message for people.
fn raised(error: &(dyn std::error::Error + 'static)) -> Option<(Raised, String)> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(diesel::result::Error::DatabaseError(_, info)) =
            e.downcast_ref::<diesel::result::Error>()
        {
            let kind = Raised::ALL
                .into_iter()
                .find(|kind| info.details() == Some(kind.detail()))?;
            let message = info.message();
            let message = message.strip_prefix(kind.label()).unwrap_or(message);
            return Some((kind, message.trim().to_owned()));
        }
        current = e.source();
    }
    None
}

/// Whether an error is a lock wait that reached lock_timeout. Only zdm's own DETAIL counts
/// (see `zdm_lock_timeout` in the SQL): PostgreSQL's message follows the server's
/// `lc_messages`.
pub fn is_lock_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(raised(error), Some((Raised::LockTimeout, _)))
}

/// The setting whose timeout canceled a statement or ended the session, where one did.
/// PostgreSQL's own message is matched (Diesel exposes no SQLSTATE for it), as for requests.
fn timeout_setting(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut texts = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        texts.push(e.to_string());
        current = e.source();
    }
    [
        ("statement timeout", "statement_timeout"),
        (
            "idle-in-transaction timeout",
            "idle_in_transaction_session_timeout",
        ),
    ]
    .into_iter()
    .find(|(words, _)| texts.iter().any(|text| text.contains(words)))
    .map(|(_, setting)| setting)
}

/// A refusal, an undone step, a lock timeout, or a step canceled by a timeout, as the SQL
/// of `migration` raised it.
fn classify(migration: &str, error: &(dyn std::error::Error + 'static)) -> Option<RunError> {
    match raised(error) {
        Some((Raised::Refused, message)) => return Some(RunError::Refused(message)),
        Some((Raised::Undone, message)) => return Some(RunError::Undone(message)),
        Some((Raised::LockTimeout, _)) | None => {}
    }
    if let Some(setting) = timeout_setting(error) {
        return Some(RunError::Canceled {
            migration: migration.to_owned(),
            setting,
            message: error.to_string(),
        });
    }
    is_lock_timeout(error).then(|| RunError::LockTimeout {
        migration: migration.to_owned(),
        attempts: 1,
        waited: Duration::ZERO,
    })
}

/// Applies (or reverts) one phase migration, retrying lock timeouts (`lock_retry_pause`)
/// within `LOCK_WAIT_BUDGET`.
/// Nothing happens if it is already applied (reverted). Returns the lock timeouts met.
fn apply(conn: &mut PgConnection, name: &str, step: Step) -> Result<usize, RunError> {
    let applied = is_applied(conn, name)?;
    if applied == (step == Step::Up) {
        return Ok(0);
    }
    let migration = find_migration(name)?;
    let mut lock_timeouts = 0;
    let started = std::time::Instant::now();
    let mut rng = fastrand::Rng::new();
    loop {
        if lock_timeouts > 0 {
            diesel::sql_query("SELECT set_config('zdm.retries', $1, false)")
                .bind::<Text, _>(format!(
                    "{lock_timeouts} lock timeout(s) retried over {:.2} s",
                    started.elapsed().as_secs_f64()
                ))
                .execute(conn)?;
        }
        let result = match step {
            Step::Up => conn.run_migration(&migration).map(drop),
            Step::Down => conn.revert_migration(&migration).map(drop),
        };
        let Err(e) = result else {
            log::info!(
                "{} {name}",
                if step == Step::Up {
                    "applied"
                } else {
                    "reverted"
                }
            );
            return Ok(lock_timeouts);
        };
        // A migration that manages its own transactions (BEGIN ... COMMIT in its file) leaves
        // its failed transaction open: end it, or the retry (and whatever uses this
        // connection next) meets "current transaction is aborted". Without one open,
        // PostgreSQL only warns.
        let _ = conn.batch_execute("ROLLBACK");
        match classify(name, e.as_ref()) {
            Some(RunError::LockTimeout { .. }) => {
                lock_timeouts += 1;
                let pause = lock_retry_pause(lock_timeouts as u32, &mut rng);
                if started.elapsed() + pause > LOCK_WAIT_BUDGET {
                    return Err(RunError::LockTimeout {
                        migration: name.to_owned(),
                        attempts: lock_timeouts,
                        waited: started.elapsed(),
                    });
                }
                log::warn!("{name}: lock timeout (attempt {lock_timeouts}), retrying in {pause:?}");
                std::thread::sleep(pause);
            }
            Some(refused_or_undone) => return Err(refused_or_undone),
            None => {
                return Err(RunError::Migration {
                    migration: name.to_owned(),
                    message: e.to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_retry_pauses_grow_from_25_ms_to_1_s_jittered_down_to_half() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut ms = |n| lock_retry_pause(n, &mut rng).as_millis();
            assert!((12..=25).contains(&ms(1)));
            assert!((50..=100).contains(&ms(3)));
            assert!((400..=800).contains(&ms(6)));
            assert!((500..=1000).contains(&ms(7)));
            assert!((500..=1000).contains(&ms(40)));
        }
    }

    /// What PostgreSQL reports of an error: its message and DETAIL.
    struct Reported {
        message: &'static str,
        detail: Option<&'static str>,
    }

    impl diesel::result::DatabaseErrorInformation for Reported {
        fn message(&self) -> &str {
            self.message
        }
        fn details(&self) -> Option<&str> {
            self.detail
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    /// The error as the migration harness hands it on (boxed).
    fn reported(
        message: &'static str,
        detail: Option<&'static str>,
    ) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::Unknown,
            Box::new(Reported { message, detail }),
        ))
    }

    #[test]
    fn a_lock_timeout_is_known_by_zdms_detail_not_the_servers_words() {
        let zdms = "zdm_lock_timeout: ADD COLUMN could not take its lock within lock_timeout";
        assert!(is_lock_timeout(
            reported(zdms, Some("zdm:lock_timeout")).as_ref()
        ));
        // PostgreSQL's own message, in English or in German, or zdm's words without its
        // DETAIL: not relied on.
        for message in [
            "canceling statement due to lock timeout",
            "storniere Anfrage wegen Zeitüberschreitung einer Sperre",
            zdms,
        ] {
            assert!(
                !is_lock_timeout(reported(message, None).as_ref()),
                "{message}"
            );
        }
    }

    #[test]
    fn refusals_and_undone_steps_are_known_by_their_detail_and_keep_their_words() {
        let refusal = reported(
            "zdm gate: cannot advance from expanded: instances gate: waiting for instance(s) to apply expanded or later: a (baseline)",
            Some("zdm:refused"),
        );
        match classify(EXPAND, refusal.as_ref()) {
            Some(RunError::Refused(message)) => assert_eq!(
                message,
                "cannot advance from expanded: instances gate: waiting for instance(s) to apply expanded or later: a (baseline)"
            ),
            other => panic!("{other:?}"),
        }
        let undone = reported(
            "zdm step undone: VALIDATE CONSTRAINT users_names_present found rows that break it",
            Some("zdm:undone"),
        );
        assert!(matches!(
            classify(BACKFILLED, undone.as_ref()),
            Some(RunError::Undone(m)) if m.starts_with("VALIDATE CONSTRAINT")
        ));
        // The same words raised by anything else (a user's own trigger, say) are no refusal.
        let imitation = reported("zdm gate: cannot advance", None);
        assert!(classify(EXPAND, imitation.as_ref()).is_none());
    }

    #[test]
    fn every_phase_step_has_its_migration_in_order() {
        assert_eq!(STEPS.len(), Phase::ALL.len() - 1);
        for (i, name) in STEPS.iter().enumerate() {
            assert!(name.contains(&format!("_phase_{}_", i + 1)), "{name}");
            assert_eq!(step_migration(Phase::ALL[i]), Some(*name));
        }
        assert_eq!(step_migration(Phase::Contracted), None);
        let names = super::super::schema_migrations::all_migration_names().unwrap();
        assert_eq!(&names[names.len() - STEPS.len()..], &STEPS);
    }
}
