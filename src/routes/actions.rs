//! The admin's actions on actix's blocking pool: the one path from the admin API and the
//! dashboard's forms to `migration::control`, with what the HTTP side adds (the pool and its
//! phase lease, connections of their own for long work, the metrics, the backfill thread
//! this process keeps for its shutdown).

use actix_web::web;
use diesel::prelude::*;

use super::db;
use crate::app_state::AppState;
use crate::domain::{FieldError, Phase};
use crate::error::AppError;
use crate::migration::backfill::{BackfillState, Knobs};
use crate::migration::control;
use crate::migration::runner::{Consent, Transition};
use crate::migration::status::{BackfillView, MigrationStatus};
use crate::migration::verify::VerifyResult;

/// The whole status, as the API and the dashboard show it.
pub async fn current_status(state: &web::Data<AppState>) -> Result<MigrationStatus, AppError> {
    let connections = state.connections.clone();
    db(state, move |conn| {
        Ok(MigrationStatus {
            connections,
            ..control::status(conn)?
        })
    })
    .await
}

/// Runs a migration step on a connection of its own (its advisory lock and any reverse
/// backfill can outlive a pooled connection's fair share).
async fn own_connection<F, T>(state: &web::Data<AppState>, work: F) -> Result<T, AppError>
where
    F: FnOnce(&mut PgConnection, &str) -> Result<T, AppError> + Send + 'static,
    T: Send + 'static,
{
    let url = state.session_url.clone();
    web::block(move || {
        let mut conn = crate::db::session(&url).map_err(|e| AppError::Unavailable(Box::new(e)))?;
        work(&mut conn, &url)
    })
    .await?
}

/// The phase a step starts from, as a form or a body names it (empty: not named).
pub fn step_from(value: Option<&str>) -> Result<Option<Phase>, AppError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            let phases: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
            AppError::Validation(FieldError::new(
                "from",
                format!(
                    "from must name the phase the step starts from: one of {}.",
                    phases.join(", ")
                ),
            ))
        }),
    }
}

/// Advances one phase, from `from` if given (409 naming the phase when it is another);
/// `actor` (an admin session or the API, and this instance) goes into the history. A
/// confirmation with control characters is refused first: it could never match, and a NUL
/// byte would fail the step in PostgreSQL rather than be refused.
pub async fn advance_step(
    state: &web::Data<AppState>,
    actor: String,
    from: Option<Phase>,
    confirm: Option<String>,
    without_client_check: bool,
) -> Result<Transition, AppError> {
    if confirm
        .as_deref()
        .is_some_and(|c| c.chars().any(char::is_control))
    {
        return Err(AppError::Validation(FieldError::new(
            "confirm",
            "confirm must not contain control characters (such as NUL).",
        )));
    }
    let transition = own_connection(state, move |conn, url| {
        let consent = Consent {
            confirm: confirm.as_deref(),
            without_client_check,
        };
        let outcome = control::advance(conn, &actor, from, &consent);
        Ok(control::settle_step(
            url,
            outcome,
            &actor,
            control::SETTLE_WAIT,
        )?)
    })
    .await?;
    count_lock_timeouts(state, &transition);
    Ok(transition)
}

/// Rolls back one phase, from `from` if given; `actor` goes into the history.
pub async fn rollback_step(
    state: &web::Data<AppState>,
    actor: String,
    from: Option<Phase>,
) -> Result<Transition, AppError> {
    let settings = state.backfill.clone();
    let transition = own_connection(state, move |conn, url| {
        let outcome = control::rollback(conn, &actor, from, &settings);
        Ok(control::settle_step(
            url,
            outcome,
            &actor,
            control::SETTLE_WAIT,
        )?)
    })
    .await?;
    count_lock_timeouts(state, &transition);
    Ok(transition)
}

fn count_lock_timeouts(state: &AppState, transition: &Transition) {
    state
        .metrics
        .lock_timeout_retries
        .inc_by(transition.lock_timeouts as u64);
}

/// Checks the knobs, for the routes to call before anything waits for the database (also
/// while it is down), so that a bad knob is told as such; `control` checks them again for
/// its other callers.
pub fn check_knobs(state: &AppState, knobs: &Knobs) -> Result<(), AppError> {
    state.backfill.check(knobs).map_err(AppError::Validation)
}

/// Starts (or resumes) the forward backfill in a thread of this process and answers once it
/// runs, or why it does not (see `control::start_backfill`).
pub async fn start_backfill_now(
    state: &web::Data<AppState>,
    knobs: Knobs,
) -> Result<BackfillView, AppError> {
    let url = state.session_url.clone();
    let settings = state.backfill.clone();
    let keeper = state.clone();
    let view = web::block(move || {
        control::start_backfill(&url, &settings, knobs, |thread| {
            keeper.backfill_thread.set(thread)
        })
    })
    .await??;
    Ok(view)
}

/// Asks the running backfill to stop at the next batch boundary (`paused` or `cancelled`).
pub async fn stop_backfill_now(
    state: &web::Data<AppState>,
    to: BackfillState,
) -> Result<BackfillView, AppError> {
    db(state, move |conn| Ok(control::stop_backfill(conn, to)?)).await
}

pub async fn change_knobs(
    state: &web::Data<AppState>,
    knobs: Knobs,
) -> Result<BackfillView, AppError> {
    let settings = state.backfill.clone();
    // As the role that runs the batches: the triggers gate asks what that role may set. The
    // change waits for the batches in flight (each within its 5-s statement_timeout), not
    // longer.
    own_connection(state, move |conn, _| {
        diesel::connection::SimpleConnection::batch_execute(conn, "SET statement_timeout = '10s'")?;
        Ok(control::change_knobs(conn, &settings, knobs)?)
    })
    .await
}

/// Verifies the whole table for the stored phase, on a connection of its own (a whole-table
/// scan, free of the web pool's statement_timeout).
pub async fn verify_now(state: &web::Data<AppState>) -> Result<VerifyResult, AppError> {
    own_connection(state, |conn, _| Ok(control::verify_now(conn)?.1)).await
}
