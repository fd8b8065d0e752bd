//! The admin API (`Authorization: Bearer $ADMIN_TOKEN`): the migration's status, advance and
//! rollback, the backfill and verification.

use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use diesel::prelude::*;
use serde::Deserialize;
use serde_json::json;

use super::db;
use crate::app_state::AppState;
use crate::domain::FieldError;
use crate::error::AppError;
use crate::migration::backfill::{self, BackfillError, BackfillStatus, Direction, Knobs};
use crate::migration::gates::{self, GateError};
use crate::migration::runner::{self, RunError, Transition};
use crate::migration::state::{self, StateError};
use crate::migration::status::{BackfillView, MigrationStatus, migration_status};
use crate::migration::verify::{self, VerifyError, VerifyResult};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // The same actions as the dashboard's forms (`admin_pages`), authorised by Bearer token.
    cfg.service(
        web::scope("/api/admin")
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

fn authorize(req: &HttpRequest, state: &AppState) -> Result<(), AppError> {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if token_matches(given.trim(), &state.admin_token) {
        Ok(())
    } else {
        Err(AppError::Unauthorized)
    }
}

impl From<GateError> for AppError {
    fn from(e: GateError) -> Self {
        match e {
            GateError::State(s) => s.into(),
            GateError::Verify(v) => v.into(),
        }
    }
}

impl From<VerifyError> for AppError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::NotApplicable(_) => AppError::Refused(e.to_string()),
            VerifyError::Database(d) => d.into(),
        }
    }
}

impl From<BackfillError> for AppError {
    fn from(e: BackfillError) -> Self {
        match e {
            BackfillError::Database(d) => d.into(),
            refusal => AppError::Refused(refusal.to_string()),
        }
    }
}

impl From<RunError> for AppError {
    fn from(e: RunError) -> Self {
        if e.is_refusal() || e.is_transient() {
            return AppError::Refused(e.to_string());
        }
        match e {
            RunError::State(StateError::Database(d)) => d.into(),
            other => AppError::internal(other),
        }
    }
}

async fn status(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(current_status(&state).await?))
}

/// The whole status, as the API and the dashboard show it.
pub async fn current_status(state: &web::Data<AppState>) -> Result<MigrationStatus, AppError> {
    db(state, |conn| Ok(migration_status(conn)?)).await
}

#[derive(Debug, Default, Deserialize)]
pub struct AdvanceBody {
    confirm: Option<String>,
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

/// Advances one phase in the name of this instance.
pub async fn advance_step(
    state: &web::Data<AppState>,
    confirm: Option<String>,
) -> Result<Transition, AppError> {
    let actor = state.instance_id.clone();
    let transition = own_connection(state, move |conn| {
        Ok(runner::advance(conn, &actor, confirm.as_deref())?)
    })
    .await?;
    state
        .metrics
        .lock_timeout_retries
        .inc_by(transition.lock_timeouts as u64);
    Ok(transition)
}

/// Rolls back one phase in the name of this instance.
pub async fn rollback_step(state: &web::Data<AppState>) -> Result<Transition, AppError> {
    let actor = state.instance_id.clone();
    let transition = own_connection(state, move |conn| Ok(runner::rollback(conn, &actor)?)).await?;
    state
        .metrics
        .lock_timeout_retries
        .inc_by(transition.lock_timeouts as u64);
    Ok(transition)
}

async fn advance(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Option<web::Json<AdvanceBody>>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    let transition = advance_step(&state, body.and_then(|b| b.into_inner().confirm)).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "transition": transition, "status": current_status(&state).await? })))
}

async fn rollback(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    let transition = rollback_step(&state).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "transition": transition, "status": current_status(&state).await? })))
}

fn checked(knobs: &Knobs) -> Result<(), AppError> {
    match knobs.invalid() {
        Some((field, message)) => Err(AppError::Validation(FieldError::new(field, message))),
        None => Ok(()),
    }
}

fn view(status: BackfillStatus) -> BackfillView {
    BackfillView {
        rows_per_s: status.rows_per_s(),
        status,
    }
}

/// Starts (or resumes) the forward backfill in a thread of its own and returns once it has
/// taken its lock and run its first step, or refused. The thread rides out a lost database
/// (see `backfill::run_riding_out`).
pub async fn start_backfill_now(
    state: &web::Data<AppState>,
    knobs: Knobs,
) -> Result<BackfillView, AppError> {
    checked(&knobs)?;
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
    let mut throttle =
        backfill::Throttle::new(state.replica_urls.clone(), state.replica_max_lag_bytes)
            .with_request_p99_limit(state.backfill_max_p99_ms);
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
    Ok(view(db(state, |conn| Ok(backfill::status(conn)?)).await?))
}

/// Asks the running backfill to stop at the next batch boundary (`paused` or `cancelled`).
pub async fn stop_backfill_now(
    state: &web::Data<AppState>,
    to: &'static str,
) -> Result<BackfillView, AppError> {
    Ok(view(
        db(state, move |conn| Ok(backfill::request_stop(conn, to)?)).await?,
    ))
}

pub async fn change_knobs(
    state: &web::Data<AppState>,
    knobs: Knobs,
) -> Result<BackfillView, AppError> {
    checked(&knobs)?;
    Ok(view(
        db(state, move |conn| Ok(backfill::set_knobs(conn, knobs)?)).await?,
    ))
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
    body: Option<web::Json<Knobs>>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    let knobs = body.map(|b| b.into_inner()).unwrap_or_default();
    Ok(HttpResponse::Accepted().json(start_backfill_now(&state, knobs).await?))
}

async fn pause_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(stop_backfill_now(&state, "paused").await?))
}

async fn cancel_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(stop_backfill_now(&state, "cancelled").await?))
}

async fn backfill_settings(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Knobs>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(change_knobs(&state, body.into_inner()).await?))
}

async fn run_verify(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    Ok(HttpResponse::Ok().json(verify_now(&state).await?))
}
