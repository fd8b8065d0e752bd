//! The operator's actions on the migration, for every front end: the admin API, the admin
//! pages and the CLI parse their input, call these, and render what they return. Each runs
//! on a blocking thread with a connection it is given or opens; none knows about HTTP.
//!
//! Here too: how the migration's errors reach a client (the `From` impls for `AppError` at
//! the end): a step or a backfill the migration's state does not allow now is a 409 that
//! says why; the database's own errors go through `AppError`'s usual mapping (503 when it
//! cannot be reached, a logged 500 otherwise).

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use diesel::prelude::*;

use super::backfill::{
    self, AutoRule, BackfillError, BackfillState, BackfillStatus, Direction, Knobs, RideOut,
    Throttle, Workers,
};
use super::gates;
use super::runner::{self, Consent, RunError, Transition};
use super::state::{self, StateError};
use super::status::{BackfillView, MigrationStatus, backfill_view, migration_status};
use super::verify::{self, VerifyError, VerifyResult};
use crate::domain::{FieldError, Phase};
use crate::error::AppError;

/// How long a start waits for the backfill to take its lock and run its first step.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What a backfill run from this process waits for, and how long it rides out a lost
/// database: from the configuration.
#[derive(Debug, Clone, Default)]
pub struct BackfillSettings {
    /// Streaming replicas whose replay lag throttles the backfill, and the limit.
    pub replica_urls: Vec<String>,
    pub max_lag_bytes: i64,
    /// The requests' p99 above which it waits, and auto mode's budget
    /// (`ZDM_BACKFILL_MAX_P99_MS`).
    pub max_p99_ms: Option<f64>,
    /// The same relative to the instances' own p99 when a run starts
    /// (`ZDM_BACKFILL_MAX_P99_RATIO`).
    pub max_p99_ratio: Option<f64>,
    /// How auto workers move their count (`ZDM_BACKFILL_AUTO_RULE`).
    pub auto_rule: AutoRule,
    /// Stopped at shutdown, so that a runner waiting for the database gives up.
    pub ride_out: RideOut,
}

impl BackfillSettings {
    /// What its backfills (and the reverse backfill of a rollback) wait for.
    pub fn throttle(&self) -> Throttle {
        Throttle::new(self.replica_urls.clone(), self.max_lag_bytes)
            .with_request_p99_limit(self.max_p99_ms)
            .with_request_p99_ratio(self.max_p99_ratio)
            .with_auto_rule(self.auto_rule)
    }

    /// The knobs within their ranges; `"auto"` workers only with a p99 budget (a backfill
    /// started here runs here).
    pub fn check(&self, knobs: &Knobs) -> Result<(), FieldError> {
        if let Some((field, message)) = knobs.invalid() {
            return Err(FieldError::new(field, message));
        }
        if knobs.workers == Some(Workers::Auto)
            && self.max_p99_ms.is_none()
            && self.max_p99_ratio.is_none()
        {
            return Err(FieldError::new("workers", backfill::AUTO_NEEDS_A_BUDGET));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// A gate of the backfill is not met (the detail says which and why).
    #[error("cannot start the backfill: {0}")]
    GateUnmet(String),
    /// A knob's new value would leave a gate of the backfill unmet (the detail says which).
    #[error("cannot change the backfill's settings: {0}")]
    KnobRefused(String),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("the backfill did not start: {0}")]
    NotStarted(String),
}

/// Advances one phase, from `from` if given (else from wherever the migration is); `actor`
/// goes into the history.
pub fn advance(
    conn: &mut PgConnection,
    actor: &str,
    from: Option<Phase>,
    consent: &Consent<'_>,
) -> Result<Transition, RunError> {
    runner::advance_with(conn, actor, from, consent)
}

/// Rolls back one phase, from `from` if given; `actor` goes into the history. Its reverse
/// backfill (out of new_only) waits as `settings` say.
pub fn rollback(
    conn: &mut PgConnection,
    actor: &str,
    from: Option<Phase>,
    settings: &BackfillSettings,
) -> Result<Transition, RunError> {
    runner::rollback(conn, actor, from, &mut settings.throttle())
}

/// How long a step that lost its connection waits for a server to answer again (a restart,
/// a standby promoted by an HA manager) to learn whether it committed.
pub const SETTLE_WAIT: Duration = Duration::from_secs(60);

/// `outcome` of a step run on a connection to `url`; when that connection was lost under it,
/// waits (up to `wait`, trying every 0.25 s) for a server to answer at `url` and asks it
/// whether the step committed (`runner::settle_interrupted`): a step that did is a success,
/// one that did not stays `Interrupted`, now with its `failed` line in the history.
pub fn settle_step(
    url: &str,
    outcome: Result<Transition, RunError>,
    actor: &str,
    wait: Duration,
) -> Result<Transition, RunError> {
    let Err(interrupted @ RunError::Interrupted { .. }) = outcome else {
        return outcome;
    };
    let started = std::time::Instant::now();
    loop {
        match crate::db::session(url) {
            Ok(mut conn) => {
                return match runner::settle_interrupted(&mut conn, &interrupted, actor) {
                    Ok(Some(committed)) => Ok(committed),
                    Ok(None) => Err(interrupted),
                    Err(e) => {
                        log::warn!("could not settle the interrupted step: {e}");
                        Err(interrupted)
                    }
                };
            }
            Err(e) if started.elapsed() >= wait => {
                log::warn!("no server answered within {wait:?} after a step was interrupted: {e}");
                return Err(interrupted);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Stores the knobs and checks the backfill's gates for the stored phase with them (the
/// `triggers` gate reads the choice stored), in one transaction: refused, nothing is kept.
/// Its callers check the knobs' ranges before they touch the database (so that a bad knob is
/// told as such even while it is down). What every start does first.
fn prepare_backfill(conn: &mut PgConnection, knobs: Knobs) -> Result<(), ControlError> {
    conn.transaction(|conn| {
        store_knobs(conn, knobs)?;
        let phase = state::current_phase(conn)?;
        first_unmet(gates::backfill_gates(conn, phase)?)
            .map_or(Ok(()), |unmet| Err(ControlError::GateUnmet(unmet)))
    })
}

/// Stores the knobs, unless they would change the choice for the triggers a run under way
/// made (`backfill::triggers_kept`).
fn store_knobs(
    conn: &mut PgConnection,
    knobs: Knobs,
) -> Result<(BackfillStatus, Vec<backfill::WorkerRange>), ControlError> {
    if knobs.triggers.is_some()
        && let Some(why) = backfill::triggers_kept(&backfill::status(conn)?, &knobs)
    {
        return Err(FieldError::new("triggers", why).into());
    }
    Ok(backfill::set_knobs(conn, knobs)?)
}

/// "name gate: detail" of the first gate not met, if one is not.
fn first_unmet(gates: Vec<gates::Gate>) -> Option<String> {
    gates
        .into_iter()
        .find(|g| !g.met)
        .map(|gate| format!("{} gate: {}", gate.name, gate.detail))
}

/// The forward backfill on `conn` until it ends, riding out a lost database (reconnecting to
/// `url`) and waiting as `settings` say; `progress` sees its status after every batch.
fn fill_forward(
    conn: PgConnection,
    url: &str,
    settings: &BackfillSettings,
    progress: impl FnMut(&BackfillStatus),
) -> Result<BackfillStatus, BackfillError> {
    backfill::run_riding_out(
        conn,
        url,
        Direction::Forward,
        &mut settings.throttle(),
        &settings.ride_out,
        progress,
    )
}

/// Runs (or resumes) the forward backfill here until it ends, riding out a lost database;
/// `progress` sees its status after every batch.
pub fn run_backfill(
    mut conn: PgConnection,
    url: &str,
    settings: &BackfillSettings,
    knobs: Knobs,
    progress: impl FnMut(&BackfillStatus),
) -> Result<BackfillStatus, ControlError> {
    settings.check(&knobs)?;
    prepare_backfill(&mut conn, knobs)?;
    Ok(fill_forward(conn, url, settings, progress)?)
}

/// Starts (or resumes) the forward backfill in a thread of its own, handed to `keep` at once
/// (so that a shutdown can stop it, even if it starts late), and returns the backfill's
/// view once it has taken its lock and run its first step, or the reason it did not.
/// Blocks.
pub fn start_backfill(
    url: &str,
    settings: &BackfillSettings,
    knobs: Knobs,
    keep: impl FnOnce(JoinHandle<()>),
) -> Result<BackfillView, ControlError> {
    settings.check(&knobs)?;
    let mut conn = crate::db::session(url)?;
    prepare_backfill(&mut conn, knobs)?;
    let (started_tx, started_rx) = mpsc::sync_channel::<Result<(), ControlError>>(1);
    let url = url.to_owned();
    let settings = settings.clone();
    let handle = std::thread::Builder::new()
        .name("zdm-backfill".to_owned())
        .spawn(move || {
            let conn = match crate::db::session(&url) {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = started_tx.send(Err(e.into()));
                    return;
                }
            };
            let mut told = false;
            let result = fill_forward(conn, &url, &settings, |_| {
                if !told {
                    let _ = started_tx.send(Ok(()));
                    told = true;
                }
            });
            match result {
                Err(e) if !told => {
                    let _ = started_tx.send(Err(e.into()));
                }
                Err(e) => log::error!("backfill failed: {e}"),
                Ok(_) => {}
            }
        })
        .map_err(|e| ControlError::NotStarted(e.to_string()))?;
    keep(handle);
    match started_rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(())) => Ok(backfill_view(&mut conn)?),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ControlError::NotStarted(e.to_string())),
    }
}

/// The whole status, as the API, the dashboard and `zdm migrate status` show it.
pub fn status(conn: &mut PgConnection) -> Result<MigrationStatus, StateError> {
    migration_status(conn)
}

/// Asks the running backfill to stop at the next batch boundary: `Paused` keeps the
/// checkpoints for a resume, `Cancelled` makes the next start begin afresh.
pub fn stop_backfill(
    conn: &mut PgConnection,
    to: BackfillState,
) -> Result<BackfillView, ControlError> {
    let (stopped, ranges) = backfill::request_stop(conn, to)?;
    Ok(BackfillView::with_ranges(conn, stopped, ranges)?)
}

/// Changes the knobs, also while it runs.
pub fn change_knobs(
    conn: &mut PgConnection,
    settings: &BackfillSettings,
    knobs: Knobs,
) -> Result<BackfillView, ControlError> {
    settings.check(&knobs)?;
    let (changed, ranges) = conn.transaction(|conn| {
        let stored = store_knobs(conn, knobs)?;
        // A new choice for the triggers holds from the next batch on: its gate, now.
        if knobs.triggers.is_some()
            && let Some(unmet) = first_unmet(gates::triggers_gate(conn)?)
        {
            return Err(ControlError::KnobRefused(unmet));
        }
        Ok(stored)
    })?;
    Ok(BackfillView::with_ranges(conn, changed, ranges)?)
}

/// Verifies the whole table for the stored phase (a whole-table scan: give it a connection
/// free of the web pool's statement_timeout).
pub fn verify_now(conn: &mut PgConnection) -> Result<(Phase, VerifyResult), ControlError> {
    let phase = state::current_phase(conn)?;
    Ok((phase, verify::verify(conn, phase)?))
}

impl From<ControlError> for AppError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Invalid(field) => AppError::Validation(field),
            refused @ (ControlError::GateUnmet(_) | ControlError::KnobRefused(_)) => {
                AppError::Refused(refused.to_string())
            }
            ControlError::Run(e) => e.into(),
            ControlError::Backfill(e) => e.into(),
            ControlError::Verify(e) => e.into(),
            ControlError::State(e) => e.into(),
            ControlError::Database(e) => e.into(),
            ControlError::Connect(e) => AppError::Unavailable(Box::new(e)),
            not_started @ ControlError::NotStarted(_) => AppError::internal(not_started),
        }
    }
}

impl From<StateError> for AppError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Database(e) => e.into(),
            corrupt => AppError::internal(corrupt),
        }
    }
}

impl From<VerifyError> for AppError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::NotApplicable(_) | VerifyError::GateUnmet { .. } => {
                AppError::Refused(e.to_string())
            }
            VerifyError::Database(d) => d.into(),
        }
    }
}

impl From<BackfillError> for AppError {
    fn from(e: BackfillError) -> Self {
        match e {
            BackfillError::Database(d) => d.into(),
            // The database was gone for longer than the runner waits: as with any database
            // that cannot be reached, the client may try again once it is back.
            gave_up @ BackfillError::GaveUp { .. } => AppError::Unavailable(Box::new(gave_up)),
            refusal @ (BackfillError::AlreadyRunning | BackfillError::NotRunning(_)) => {
                AppError::Refused(refusal.to_string())
            }
        }
    }
}

impl From<RunError> for AppError {
    fn from(e: RunError) -> Self {
        if e.is_conflict() {
            return AppError::Refused(e.to_string());
        }
        match e {
            RunError::State(StateError::Database(d)) => d.into(),
            interrupted @ RunError::Interrupted { .. } => {
                AppError::Unavailable(Box::new(interrupted))
            }
            other => AppError::internal(other),
        }
    }
}
