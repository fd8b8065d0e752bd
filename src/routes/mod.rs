//! HTTP only: parse the request, call `db`/`migration`, render JSON or a template.

pub mod admin_api;
pub mod admin_pages;
pub mod api_v1;
pub mod api_v2;
pub mod csrf;
pub mod home;
pub mod input;
pub mod pages;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use diesel::PgConnection;

use crate::app_state::AppState;
use crate::error::{AppError, HtmlError};
use crate::migration::Phase;

/// Largest JSON or form body accepted; a user record is far smaller.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Every route of the app; used by the server and by the tests.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(input::json_config())
        .app_data(input::form_config())
        .app_data(input::query_config())
        .app_data(input::path_config())
        .route("/", web::get().to(home::index))
        .route("/healthz", web::get().to(home::healthz))
        .route("/metrics", web::get().to(metrics))
        .route("/static/app.css", web::get().to(stylesheet))
        .route("/static/admin.js", web::get().to(admin_script))
        .configure(api_v1::configure)
        .configure(api_v2::configure)
        .configure(admin_api::configure)
        .configure(admin_pages::configure)
        .configure(pages::configure)
        .default_service(web::to(not_found));
}

/// Runs blocking Diesel work on actix's blocking thread pool. The connection is checked out
/// inside the closure, so a request holds one only while its queries run.
pub async fn db<F, T>(state: &web::Data<AppState>, work: F) -> Result<T, AppError>
where
    F: FnOnce(&mut PgConnection) -> Result<T, AppError> + Send + 'static,
    T: Send + 'static,
{
    let pool = state.pool.clone();
    web::block(move || {
        let mut conn = pool.get()?;
        work(&mut conn)
    })
    .await?
}

/// The phase for a v2 request: v2 is not released (404) before dual_write.
pub fn v2_phase(state: &AppState) -> Result<Phase, AppError> {
    let phase = state.phase.get();
    if phase.v2_released() {
        Ok(phase)
    } else {
        Err(AppError::NotFound)
    }
}

/// Whether a request came for the JSON API (errors then answer JSON, not a page).
fn is_api(req: &HttpRequest) -> bool {
    req.path().starts_with("/api/")
}

async fn not_found(req: HttpRequest) -> Result<HttpResponse, actix_web::Error> {
    if is_api(&req) {
        Err(AppError::NotFound.into())
    } else {
        Err(HtmlError(AppError::NotFound).into())
    }
}

/// The stylesheet is compiled into the binary: the app serves every byte it needs.
async fn stylesheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(include_str!("../../static/app.css"))
}

/// The dashboard's only script: live backfill progress (the page works without it).
async fn admin_script() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(include_str!("../../static/admin.js"))
}

/// Prometheus text format. Open like `/healthz`: it tells counts and timings, no data.
async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let state = state.clone();
    let text = web::block(move || state.metrics.scrape(&state.pool))
        .await?
        .map_err(AppError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}
