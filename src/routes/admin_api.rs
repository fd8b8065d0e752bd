//! The admin API (`Authorization: Bearer $ADMIN_TOKEN`, checked by `admin_auth` before any
//! handler runs): the migration's status, advance and rollback, the backfill and
//! verification.

use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::json;

use super::BODY_LIMIT;
use super::actions::{
    advance_step, change_knobs, check_knobs, current_status, rollback_step, start_backfill_now,
    step_from, stop_backfill_now, verify_now,
};
use super::admin_auth::{self, api_actor, record_action};
use super::input::optional_json;
use crate::app_state::AppState;
use crate::error::AppError;
use crate::migration::backfill::{BackfillState, Knobs};
use crate::migration::state::Action;

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

async fn status(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    Ok(HttpResponse::Ok().json(current_status(&state).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvanceBody {
    /// The phase the step starts from; without it, from wherever the migration is.
    from: Option<String>,
    confirm: Option<String>,
    #[serde(default)]
    without_client_check: bool,
}

async fn advance(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let body: AdvanceBody = optional_json(&req, &body)?;
    let from = step_from(body.from.as_deref())?;
    let actor = api_actor(&state.instance_id);
    let transition =
        advance_step(&state, actor, from, body.confirm, body.without_client_check).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "transition": transition, "status": current_status(&state).await? })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackBody {
    /// As `AdvanceBody::from`.
    from: Option<String>,
}

async fn rollback(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let body: RollbackBody = optional_json(&req, &body)?;
    let from = step_from(body.from.as_deref())?;
    let transition = rollback_step(&state, api_actor(&state.instance_id), from).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "transition": transition, "status": current_status(&state).await? })))
}

async fn start_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let knobs: Knobs = optional_json(&req, &body)?;
    check_knobs(&state, &knobs)?;
    record_action(
        &state,
        &api_actor(&state.instance_id),
        Action::Backfill,
        &knobs.asked("start"),
    )
    .await;
    Ok(HttpResponse::Accepted().json(start_backfill_now(&state, knobs).await?))
}

/// The body of an action that takes no fields: empty, or `{}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoFields {}

async fn pause_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let NoFields {} = optional_json(&req, &body)?;
    record_action(
        &state,
        &api_actor(&state.instance_id),
        Action::Backfill,
        "pause",
    )
    .await;
    Ok(HttpResponse::Ok().json(stop_backfill_now(&state, BackfillState::Paused).await?))
}

async fn cancel_backfill(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let NoFields {} = optional_json(&req, &body)?;
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
    check_knobs(&state, &knobs)?;
    record_action(
        &state,
        &api_actor(&state.instance_id),
        Action::Backfill,
        &knobs.asked("settings"),
    )
    .await;
    Ok(HttpResponse::Ok().json(change_knobs(&state, knobs).await?))
}

async fn run_verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    body: web::Bytes,
) -> Result<HttpResponse, AppError> {
    let NoFields {} = optional_json(&req, &body)?;
    record_action(&state, &api_actor(&state.instance_id), Action::Verify, "").await;
    Ok(HttpResponse::Ok().json(verify_now(&state).await?))
}
