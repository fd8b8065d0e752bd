//! HTTP only: parse the request, call `db`/`migration`, render JSON or a template.

pub mod actions;
pub mod admin_api;
pub mod admin_auth;
pub mod admin_pages;
pub mod api_v1;
pub mod api_v2;
pub mod body;
pub mod client;
pub mod csrf;
pub mod home;
pub mod input;
pub mod pages;
pub mod render;

use actix_web::ResponseError;
use actix_web::body::{EitherBody, MessageBody};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, HttpResponse, web};
use diesel::PgConnection;

use crate::app_state::AppState;
use crate::db::users::{self, StoredUser};
use crate::domain::Phase;
use crate::error::{AppError, HtmlError};
use crate::replicas;

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
    run_on(state, state.pool.clone(), work).await
}

/// The work on a connection of `pool`, on the blocking thread pool, once the instance's phase
/// lease is checked again: a request that waited (for a connection, or frozen with its
/// process) past the lease does not run its phase's queries (I8).
async fn run_on<F, T>(state: &AppState, pool: crate::db::DbPool, work: F) -> Result<T, AppError>
where
    F: FnOnce(&mut PgConnection) -> Result<T, AppError> + Send + 'static,
    T: Send + 'static,
{
    let phase = state.phase.clone();
    web::block(move || {
        let mut conn = pool.get()?;
        phase.check_lease().map_err(|_| AppError::Fenced)?;
        let result = work(&mut conn);
        // An answer (a 404 or a refused write is one) proves the connection; after a database
        // error its next checkout pings it.
        if !matches!(
            result,
            Err(AppError::Unavailable(_) | AppError::Internal(_))
        ) {
            conn.mark_proven();
        }
        result
    })
    .await?
}

/// Runs a read of user data: on a replica that has replayed past both this instance's phase
/// switch and the client's own last write (its `zdm_lsn` cookie), else on the primary.
pub async fn db_read<F, T>(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    work: F,
) -> Result<T, AppError>
where
    F: FnOnce(&mut PgConnection) -> Result<T, AppError> + Send + 'static,
    T: Send + 'static,
{
    let pool = read_replica(state, req).unwrap_or(&state.pool).clone();
    run_on(state, pool, work).await
}

/// Updates the user `id` as the code of `phase` writes it (the one write path of the v1 and
/// v2 APIs and pages), where the lose-writes fault may roll it back after all.
pub async fn update_user(
    state: &web::Data<AppState>,
    phase: Phase,
    id: i64,
    name: Option<crate::domain::Name>,
    email: Option<String>,
) -> Result<StoredUser, AppError> {
    let lose = state.faults.lose_this_update();
    db(state, move |conn| {
        Ok(crate::faults::commit_unless_lost(conn, lose, |conn| {
            users::update_user(conn, phase, id, name.as_ref(), email.as_deref())
        })?)
    })
    .await
}

/// Reads the user `id` as `db_read` would, a read on the primary going through the
/// coalesced point reads (`db::reads`).
pub async fn read_user(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    phase: Phase,
    id: i64,
) -> Result<StoredUser, AppError> {
    match read_replica(state, req) {
        Some(replica) => {
            run_on(state, replica.clone(), move |conn| {
                Ok(users::find_user(conn, phase, id)?)
            })
            .await
        }
        None => {
            state.phase.check_lease().map_err(|_| AppError::Fenced)?;
            state.user_reads.find(phase, id).await
        }
    }
}

/// The replica a read of this request may go to, counting the read by where it goes: one
/// that has replayed past both this instance's phase switch and the client's own last
/// write (its `zdm_lsn` cookie); none without replicas or when none has.
fn read_replica<'a>(state: &'a AppState, req: &HttpRequest) -> Option<&'a crate::db::DbPool> {
    if state.read_replicas.is_empty() {
        state.metrics.count_read(false);
        return None;
    }
    let own_write = req
        .cookie(replicas::COOKIE)
        .and_then(|c| c.value().parse::<u64>().ok())
        .unwrap_or(0);
    let required = state.phase.switched_at_lsn().max(own_write);
    let replica = state.read_replicas.pick(required);
    state.metrics.count_read(replica.is_some());
    replica
}

/// After a successful write, remembers the primary's WAL position in the client's `zdm_lsn`
/// cookie, so its next reads go only to replicas that have replayed it (read-your-writes).
/// Does nothing without replicas.
pub async fn remember_write_position(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let is_write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let mut response = next.call(req).await?;
    let Some(state) = state.filter(|s| is_write && !s.read_replicas.is_empty()) else {
        return Ok(response);
    };
    if !(response.status().is_success() || response.status().is_redirection()) {
        return Ok(response);
    }
    // A position that cannot be read (the database answered the write, then not this): no
    // replica is known to have the write, so this client's reads go to the primary until its
    // next write sets a position again.
    let lsn = db(&state, |conn| Ok(replicas::current_lsn(conn)?))
        .await
        .unwrap_or_else(|e| {
            log::warn!("the write position is unknown ({e}); this client reads from the primary");
            replicas::UNKNOWN_POSITION
        });
    let cookie = Cookie::build(replicas::COOKIE, lsn.to_string())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .finish();
    if let Ok(value) = header::HeaderValue::from_str(&cookie.to_string()) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}

/// Whether a request is served by phase-dependent code: the user data of the v1 and v2 APIs
/// and pages.
fn is_phase_dependent(path: &str) -> bool {
    ["/api/v1", "/api/v2", "/v1", "/v2"]
        .iter()
        .any(|prefix| path == *prefix || path.starts_with(&format!("{prefix}/")))
}

/// Fencing and drain (I8): a phase-dependent request starts only while the instance's phase
/// lease is fresh (else 503 with Retry-After), and holds the phase it started under until it
/// is answered, so the instance acknowledges a later phase only after it.
pub async fn fence(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let guard = match req.app_data::<web::Data<AppState>>() {
        Some(state) if is_phase_dependent(req.path()) => match state.phase.enter() {
            Ok(guard) => Some(guard),
            Err(stale) => {
                log::warn!("{} refused: {stale}", req.path());
                let refusal = if is_api(req.request()) {
                    AppError::Fenced.error_response()
                } else {
                    HtmlError(AppError::Fenced).error_response()
                };
                return Ok(req.into_response(refusal).map_into_right_body());
            }
        },
        _ => None,
    };
    let response = next.call(req).await;
    drop(guard);
    Ok(response?.map_into_left_body())
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
