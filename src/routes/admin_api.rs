//! The admin API (`Authorization: Bearer $ADMIN_TOKEN`, checked by `admin_auth` before any
//! handler runs): the migration's status, advance and rollback, the backfill and
//! verification.

use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use diesel::prelude::*;
use serde::Deserialize;
use serde_json::json;

use super::admin_auth::{self, api_actor, record_action};
use super::input::optional_json;
use super::{BODY_LIMIT, db};
use crate::app_state::AppState;
use crate::domain::FieldError;
use crate::error::AppError;
use crate::migration::backfill::{self, BackfillState, Direction, Knobs, Workers};
use crate::migration::gates;
use crate::migration::runner::{self, Transition};
use crate::migration::state::{self, Action};
use crate::migration::status::{BackfillView, MigrationStatus, backfill_view, migration_status};
use crate::migration::verify::{self, VerifyResult};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // The same actions as the dashboard's forms (`admin_pages`), authorised by Bearer token.
    cfg.service(
        web::scope("/api/admin")
            .wrap(from_fn(admin_auth::require_token))
            .app_data(web::PayloadConfig::new(BODY_LIMIT))
            .route("/migration", web::get().to(status))
            .route("/migration/advance", web::post().to(advance))
            .route("/migration/rollback", web::post().to(rollback))
            .route("/backfill/start", web::post().to(start_backfill))
            .route("/backfill/resume", web::post().to(start_backfill))
            .route("/backfill/pause", web::post().to(pause_backfill))
            .route("/backfill/cancel", web::post().to(cancel_backfill))
            .route("/backfill/settings", web::post().to(backfill_settings))
            .route("/verify", web::post().to(run_verify)),
    );
}

/// Compares in constant time, so the answer's timing does not reveal how much of a guessed
/// token was right.
pub fn token_matches(given: &str, expected: &str) -> bool {
    !expected.is_empty()
        && constant_time_eq::constant_time_eq(given.as_bytes(), expected.as_bytes())
}

async fn status(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(current_status(&state).await?))
}

/// The whole status, as the API and the dashboard show it.
pub async fn current_status(state: &web::Data<AppState>) -> Result<MigrationStatus, AppError> {
    db(state, |conn| Ok(migration_status(conn)?)).await
}

#[derive(Debug, Default, Deserialize)]
pub struct AdvanceBody {
    confirm: Option<String>,
    #[serde(default)]
    without_client_check: bool,
}

/// Runs a migration step on a connection of its own (its advisory lock and any reverse
/// backfill can outlive a pooled connection's fair share).
async fn own_connection<F, T>(state: &web::Data<AppState>, work: F) -> Result<T, AppError>
where
    F: FnOnce(&mut PgConnection) -> Result<T, AppError> + Send + 'static,
    T: Send + 'static,
{
    let url = state.database_url.clone();
    web::block(move || {
        let mut conn =
            PgConnection::establish(&url).map_err(|e| AppError::Unavailable(Box::new(e)))?;
        work(&mut conn)
    })
    .await?
}

/// Advances one phase; `actor` (an admin session or the API, and this instance) goes into
/// the history.
pub async fn advance_step(
    state: &web::Data<AppState>,
    actor: String,
    confirm: Option<String>,
    without_client_check: bool,
) -> Result<Transition, AppError> {
    let transition = own_connection(state, move |conn| {
        let consent = runner::Consent {
            confirm: confirm.as_deref(),
            without_client_check,
        };
        Ok(runner::advance_with(conn, &actor, &consent)?)
    })
    .await?;
    state
        .metrics
        .lock_timeout_retries
        .inc_by(transition.lock_timeouts as u64);
    Ok(transition)
}

/// Rolls back one phase; `actor` goes into the history. Its reverse backfill (out of
/// new_only) waits for this instance's throttle.
pub async fn rollback_step(
    state: &web::Data<AppState>,
    actor: String,
) -> Result<Transition, AppError> {
    let mut throttle = state.backfill_throttle();
    let transition = own_connection(state, move |conn| {
        Ok(runner::rollback(conn, &actor, &mut throttle)?)
    })
    .await?;
    state
        .metrics
        .lock_timeout_retries
        .inc_by(transition.lock_timeouts as u64);
    Ok(transition)
}

async fn advance(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let body: AdvanceBody = optional_json(&req, &body)?;
    let actor = api_actor(&state.instance_id);
    let transition = advance_step(&state, actor, body.confirm, body.without_client_check).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "transition": transition, "status": current_status(&state).await? })))
}

async fn rollback(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let transition = rollback_step(&state, api_actor(&state.instance_id)).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "transition": transition, "status": current_status(&state).await? })))
}

/// The knobs within their ranges; `"auto"` workers only where this instance has a p99
/// budget (a backfill it starts runs here).
fn checked(state: &AppState, knobs: &Knobs) -> Result<(), AppError> {
    if let Some((field, message)) = knobs.invalid() {
        return Err(AppError::Validation(FieldError::new(field, message)));
    }
    if knobs.workers == Some(Workers::Auto) && state.backfill_max_p99_ms.is_none() {
        return Err(AppError::Validation(FieldError::new(
            "workers",
            backfill::AUTO_NEEDS_A_BUDGET,
        )));
    }
    Ok(())
}

/// Starts (or resumes) the forward backfill in a thread of its own and returns once it has
/// taken its lock and run its first step, or refused. The thread rides out a lost database
/// (see `backfill::run_riding_out`).
pub async fn start_backfill_now(
    state: &web::Data<AppState>,
    knobs: Knobs,
) -> Result<BackfillView, AppError> {
    checked(state, &knobs)?;
    let phase = state.phase.get();
    db(state, move |conn| {
        let gate_list = gates::backfill_gates(conn, phase)?;
        if let Some(gate) = gate_list.iter().find(|g| !g.met) {
            return Err(AppError::Refused(format!(
                "cannot start the backfill: {}",
                gate.detail
            )));
        }
        backfill::set_knobs(conn, knobs)?;
        Ok(())
    })
    .await?;
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel::<Result<(), AppError>>(1);
    let url = state.database_url.clone();
    let mut throttle = state.backfill_throttle();
    let ride_out = state.backfill_ride_out.clone();
    let handle = std::thread::Builder::new()
        .name("zdm-backfill".to_owned())
        .spawn(move || {
            let conn = match PgConnection::establish(&url) {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = started_tx.send(Err(AppError::Unavailable(Box::new(e))));
                    return;
                }
            };
            let mut told = false;
            let result = backfill::run_riding_out(
                conn,
                &url,
                Direction::Forward,
                &mut throttle,
                &ride_out,
                |_| {
                    if !told {
                        let _ = started_tx.send(Ok(()));
                        told = true;
                    }
                },
            );
            match result {
                Err(e) if !told => {
                    let _ = started_tx.send(Err(e.into()));
                }
                Err(e) => log::error!("backfill failed: {e}"),
                Ok(_) => {}
            }
        })
        .map_err(AppError::internal)?;
    state.backfill_thread.set(handle);
    match web::block(move || started_rx.recv_timeout(Duration::from_secs(30))).await? {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => {
            return Err(AppError::internal(format!(
                "the backfill did not start: {e}"
            )));
        }
    }
    db(state, |conn| Ok(backfill_view(conn)?)).await
}

/// Asks the running backfill to stop at the next batch boundary (`paused` or `cancelled`).
pub async fn stop_backfill_now(
    state: &web::Data<AppState>,
    to: BackfillState,
) -> Result<BackfillView, AppError> {
    db(state, move |conn| {
        let stopped = backfill::request_stop(conn, to)?;
        Ok(BackfillView::of(conn, stopped)?)
    })
    .await
}

pub async fn change_knobs(
    state: &web::Data<AppState>,
    knobs: Knobs,
) -> Result<BackfillView, AppError> {
    checked(state, &knobs)?;
    db(state, move |conn| {
        let changed = backfill::set_knobs(conn, knobs)?;
        Ok(BackfillView::of(conn, changed)?)
    })
    .await
}

/// Verifies the whole table for the stored phase.
/// A whole-table scan, so it runs on a connection of its own, free of the web pool's
/// statement_timeout.
pub async fn verify_now(state: &web::Data<AppState>) -> Result<VerifyResult, AppError> {
    own_connection(state, |conn| {
        let phase = state::current_phase(conn)?;
        Ok(verify::verify(conn, phase)?)
    })
    .await
}

async fn start_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let knobs: Knobs = optional_json(&req, &body)?;
    record_action(
        &state,
        &api_actor(&state.instance_id),
        Action::Backfill,
        "start",
    )
    .await;
    Ok(HttpResponse::Accepted().json(start_backfill_now(&state, knobs).await?))
}

async fn pause_backfill(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    record_action(
        &state,
        &api_actor(&state.instance_id),
        Action::Backfill,
        "pause",
    )
    .await;
    Ok(HttpResponse::Ok().json(stop_backfill_now(&state, BackfillState::Paused).await?))
}

async fn cancel_backfill(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    record_action(
        &state,
        &api_actor(&state.instance_id),
        Action::Backfill,
        "cancel",
    )
    .await;
    Ok(HttpResponse::Ok().json(stop_backfill_now(&state, BackfillState::Cancelled).await?))
}

async fn backfill_settings(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let knobs: Knobs = optional_json(&req, &body)?;
    record_action(
        &state,
        &api_actor(&state.instance_id),
        Action::Backfill,
        "settings",
    )
    .await;
    Ok(HttpResponse::Ok().json(change_knobs(&state, knobs).await?))
}

async fn run_verify(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    record_action(&state, &api_actor(&state.instance_id), Action::Verify, "").await;
    Ok(HttpResponse::Ok().json(verify_now(&state).await?))
}
