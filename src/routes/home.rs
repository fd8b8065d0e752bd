//! The home page and the health check.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde_json::json;

use super::db;
use crate::db::{DbPool, users_v1};
use crate::error::{AppError, HtmlError};
use crate::migration::{Phase, state};

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
}

pub async fn index(pool: web::Data<DbPool>) -> Result<HttpResponse, HtmlError> {
    let (phase, user_count) = db(&pool, |conn| {
        Ok((state::current_phase(conn)?, users_v1::count_users(conn)?))
    })
    .await?;
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
    };
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page.render()?))
}

/// 200 with the phase when the database answers, 503 when it does not.
pub async fn healthz(pool: web::Data<DbPool>) -> Result<HttpResponse, AppError> {
    let phase = db(&pool, |conn| Ok(state::current_phase(conn)?)).await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "ok", "phase": phase.as_str() })))
}
