//! The home page and the health check.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde_json::json;

use super::db;
use crate::app_state::AppState;
use crate::db::users;
use crate::error::{AppError, HtmlError};
use crate::migration::Phase;

struct PhaseStep {
    name: &'static str,
    summary: &'static str,
    done: bool,
    current: bool,
}

#[derive(Template)]
#[template(path = "index.html")]
struct HomePage {
    phase: Phase,
    steps: Vec<PhaseStep>,
    user_count: i64,
    v2_released: bool,
}

pub async fn index(state: web::Data<AppState>) -> Result<HttpResponse, HtmlError> {
    let phase = state.phase.get();
    let user_count = db(&state, |conn| Ok(users::count_users(conn)?)).await?;
    let steps = Phase::ALL
        .into_iter()
        .map(|p| PhaseStep {
            name: p.as_str(),
            summary: p.summary(),
            done: p < phase,
            current: p == phase,
        })
        .collect();
    let page = HomePage {
        phase,
        steps,
        user_count,
        v2_released: phase.v2_released(),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page.render()?))
}

/// 200 with this instance's applied phase when the database answers, 503 when it does not.
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    db(&state, |conn| {
        diesel::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), conn)?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "phase": state.phase.get().as_str(),
        "instance": state.instance_id,
    })))
}
