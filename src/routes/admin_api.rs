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
use crate::error::AppError;
use crate::migration::backfill::{self, BackfillError, Direction};
use crate::migration::gates::{self, GateError};
use crate::migration::runner::{self, RunError};
use crate::migration::state::{self, StateError};
use crate::migration::status::{BackfillView, migration_status};
use crate::migration::verify::{self, VerifyError};

pub fn configure(cfg: &mut web::ServiceConfig) {
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
    let status = db(&state, |conn| Ok(migration_status(conn)?)).await?;
    Ok(HttpResponse::Ok().json(status))
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

async fn advance(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Option<web::Json<AdvanceBody>>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    let confirm = body.and_then(|b| b.into_inner().confirm);
    let actor = state.instance_id.clone();
    let transition = own_connection(&state, move |conn| {
        Ok(runner::advance(conn, &actor, confirm.as_deref())?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({ "transition": transition, "status": db(&state, |conn| Ok(migration_status(conn)?)).await? })))
}

async fn rollback(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    let actor = state.instance_id.clone();
    let transition =
        own_connection(&state, move |conn| Ok(runner::rollback(conn, &actor)?)).await?;
    Ok(HttpResponse::Ok().json(json!({ "transition": transition, "status": db(&state, |conn| Ok(migration_status(conn)?)).await? })))
}

#[derive(Debug, Default, Deserialize)]
pub struct Knobs {
    batch_size: Option<i32>,
    sleep_ms: Option<i32>,
}

impl Knobs {
    fn checked(&self) -> Result<(), AppError> {
        if self.batch_size.is_some_and(|b| !(1..=100_000).contains(&b)) {
            return Err(AppError::Validation(crate::domain::FieldError::new(
                "batch_size",
                "batch_size must be between 1 and 100000.",
            )));
        }
        if self.sleep_ms.is_some_and(|s| !(0..=60_000).contains(&s)) {
            return Err(AppError::Validation(crate::domain::FieldError::new(
                "sleep_ms",
                "sleep_ms must be between 0 and 60000.",
            )));
        }
        Ok(())
    }
}

/// Starts (or resumes) the forward backfill in a thread of its own and answers once it has
/// taken its lock and run its first step, or refused.
async fn start_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: Option<web::Json<Knobs>>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    let knobs = body.map(|b| b.into_inner()).unwrap_or_default();
    knobs.checked()?;
    let phase = state.phase.get();
    db(&state, move |conn| {
        let gate_list = gates::backfill_gates(conn, phase)?;
        if let Some(gate) = gate_list.iter().find(|g| !g.met) {
            return Err(AppError::Refused(format!(
                "cannot start the backfill: {}",
                gate.detail
            )));
        }
        backfill::set_knobs(conn, knobs.batch_size, knobs.sleep_ms)?;
        Ok(())
    })
    .await?;
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel::<Result<(), AppError>>(1);
    let url = state.database_url.clone();
    std::thread::Builder::new()
        .name("zdm-backfill".to_owned())
        .spawn(move || {
            let mut conn = match PgConnection::establish(&url) {
                Ok(conn) => conn,
                Err(e) => {
                    let _ = started_tx.send(Err(AppError::Unavailable(Box::new(e))));
                    return;
                }
            };
            let mut told = false;
            let result = backfill::run(&mut conn, Direction::Forward, |_| {
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
        .map_err(AppError::internal)?;
    let started = web::block(move || started_rx.recv_timeout(Duration::from_secs(30))).await?;
    match started {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => {
            return Err(AppError::internal(format!(
                "the backfill did not start: {e}"
            )));
        }
    }
    let status = db(&state, |conn| Ok(backfill::status(conn)?)).await?;
    Ok(HttpResponse::Accepted().json(BackfillView {
        rows_per_s: status.rows_per_s(),
        status,
    }))
}

async fn stop_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
    to: &'static str,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    let status = db(&state, move |conn| Ok(backfill::request_stop(conn, to)?)).await?;
    Ok(HttpResponse::Ok().json(BackfillView {
        rows_per_s: status.rows_per_s(),
        status,
    }))
}

async fn pause_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    stop_backfill(req, state, "paused").await
}

async fn cancel_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    stop_backfill(req, state, "cancelled").await
}

async fn backfill_settings(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Json<Knobs>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    let knobs = body.into_inner();
    knobs.checked()?;
    let status = db(&state, move |conn| {
        Ok(backfill::set_knobs(conn, knobs.batch_size, knobs.sleep_ms)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(BackfillView {
        rows_per_s: status.rows_per_s(),
        status,
    }))
}

async fn run_verify(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    authorize(&req, &state)?;
    let result = db(&state, |conn| {
        let phase = state::current_phase(conn)?;
        Ok(verify::verify(conn, phase)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(result))
}
