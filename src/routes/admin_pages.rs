//! The admin dashboard (`/admin`): log in with the admin token, then see and drive the
//! migration. Server-rendered and usable without JavaScript; `static/admin.js` only refreshes
//! the backfill progress (from `/admin/status.json`) without a reload.
//!
//! Log-in sets an HttpOnly, SameSite=Strict session cookie (Secure when the request came over
//! HTTPS). Sessions live in PostgreSQL (`admin_auth`), so a log-in holds on every instance
//! and across restarts. Every form carries the session's CSRF token.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::{StatusCode, header};
use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::{Deserialize, Serialize};

use super::actions::{
    advance_step, change_knobs, check_knobs, current_status, rollback_step, start_backfill_now,
    step_from, stop_backfill_now, verify_now,
};
use super::admin_auth::{
    self, AdminSession, SESSION_COOKIE, failed_attempt, session_of, token_matches,
};
use super::client::{client_info, cookie_name};
use super::db;
use super::render::{self, Caching, notice_text};
use crate::app_state::AppState;
use crate::domain::Phase;
use crate::error::{AppError, HtmlError};
use crate::migration::backfill::{self, BackfillState, Knobs};
use crate::migration::gates::CONTRACT_CONFIRMATION;
use crate::migration::shown_gates::{ShownGate, next_gates, unmet_backfill_gates};
use crate::migration::state::Action;
use crate::migration::status::MigrationStatus;
use crate::secrets::{is_secret_form, new_secret};

/// The report of the last `zdm demo` run of zdm's migration without an injected fault, in
/// the report folder: the proof, which runs in other modes never overwrite.
pub const DEMO_REPORT: &str = "demo-zdm.html";

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/admin")
            .wrap(from_fn(admin_auth::require_session))
            .route("", web::get().to(dashboard))
            .route("/login", web::get().to(login_form))
            .route("/login", web::post().to(login))
            .route("/logout", web::post().to(logout))
            .route("/status.json", web::get().to(status_json))
            .route("/advance", web::post().to(advance))
            .route("/rollback", web::post().to(rollback))
            .route("/backfill/{action}", web::post().to(backfill_action))
            .route("/verify", web::post().to(verify))
            .route("/demo-report", web::get().to(demo_report)),
    );
}

#[derive(Template)]
#[template(path = "admin/login.html")]
struct LoginPage {
    error: Option<&'static str>,
}

async fn login_form(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, HtmlError> {
    if session_of(&req, &state).await?.is_some() {
        return Ok(see_other("/admin"));
    }
    html(StatusCode::OK, LoginPage { error: None })
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

async fn login(
    req: HttpRequest,
    state: web::Data<AppState>,
    form: web::Form<LoginForm>,
) -> Result<HttpResponse, HtmlError> {
    super::csrf::check_same_origin(&req)?;
    // The right token is never held up by the limit on failures.
    if !token_matches(form.token.trim(), &state.admin_token) {
        failed_attempt(&state, &req).await?;
        return html(
            StatusCode::UNAUTHORIZED,
            LoginPage {
                error: Some(
                    "That is not the admin token. It is ADMIN_TOKEN, or the one zdm serve printed when it started.",
                ),
            },
        );
    }
    let (id, csrf) = (
        new_secret().map_err(AppError::internal)?,
        new_secret().map_err(AppError::internal)?,
    );
    let https = client_info(&req).https;
    // The session this browser held before ends: a log-in replaces it rather than leaving
    // it valid beside the new one.
    let previous = req
        .cookie(&cookie_name(SESSION_COOKIE, https))
        .map(|c| c.value().to_owned())
        .filter(|old| is_secret_form(old));
    let stored = id.clone();
    db(&state, move |conn| {
        if let Some(previous) = previous {
            crate::db::admin_auth::delete_session(conn, &previous)?;
        }
        Ok(crate::db::admin_auth::create_session(conn, &stored, &csrf)?)
    })
    .await?;
    let cookie = Cookie::build(cookie_name(SESSION_COOKIE, https), id)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(https)
        .finish();
    let mut response = see_other("/admin");
    response.add_cookie(&cookie).map_err(AppError::internal)?;
    Ok(response)
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: web::ReqData<AdminSession>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, HtmlError> {
    checked(&req, &session, &form.csrf)?;
    let id = session.id.clone();
    db(&state, move |conn| {
        Ok(crate::db::admin_auth::delete_session(conn, &id)?)
    })
    .await?;
    let mut response = see_other("/admin/login");
    let https = client_info(&req).https;
    let mut gone = Cookie::build(cookie_name(SESSION_COOKIE, https), "")
        .path("/")
        .secure(https)
        .finish();
    gone.make_removal();
    response.add_cookie(&gone).map_err(AppError::internal)?;
    Ok(response)
}

/// A form post of a live session (the middleware found it) is allowed only from our own
/// pages and with that session's CSRF token.
fn checked(req: &HttpRequest, session: &AdminSession, csrf: &str) -> Result<(), HtmlError> {
    super::csrf::check_same_origin(req)?;
    if !token_matches(csrf, &session.csrf) {
        return Err(HtmlError(AppError::Forbidden(
            "The form's security token is missing or stale; reload the dashboard and try again."
                .to_owned(),
        )));
    }
    Ok(())
}

/// One bar under the backfill's total: a range left to do, and the worker on it.
pub struct WorkerBar {
    /// "worker 2", or "waiting" for a range no worker is on.
    label: String,
    percent: f64,
    /// Its ids are `first..=last`; done up to `at`.
    first: i64,
    last: i64,
    at: i64,
    batch_size: i32,
}

/// The bars of the ranges not done yet, the ranges with a worker first (by worker).
fn worker_bars(ranges: &[backfill::WorkerRange]) -> Vec<WorkerBar> {
    let mut open: Vec<&backfill::WorkerRange> = ranges.iter().filter(|r| !r.is_done()).collect();
    open.sort_by_key(|r| (r.worker.unwrap_or(i32::MAX), r.start_id));
    open.into_iter()
        .map(|r| WorkerBar {
            label: r
                .worker
                .map_or("waiting".to_owned(), |w| format!("worker {w}")),
            percent: r.percent(),
            first: r.start_id + 1,
            last: r.end_id,
            at: r.last_id,
            batch_size: r.batch_size,
        })
        .collect()
}

/// The choices of the workers knob: auto, then 1..=MAX_WORKERS.
fn worker_choices() -> Vec<String> {
    std::iter::once("auto".to_owned())
        .chain((1..=backfill::MAX_WORKERS).map(|n| n.to_string()))
        .collect()
}

struct TimelineStep {
    name: &'static str,
    summary: &'static str,
    state: &'static str,
}

#[derive(Template)]
#[template(path = "admin/dashboard.html")]
struct Dashboard {
    status: MigrationStatus,
    timeline: Vec<TimelineStep>,
    csrf: String,
    instance_id: String,
    notice: Option<String>,
    error: Option<String>,
    confirm_word: &'static str,
    contract_next: bool,
    progress_percent: f64,
    eta: String,
    /// The backfill stopped short (interrupted or failed): the page offers to resume it.
    backfill_stopped: bool,
    /// It stopped because it failed (not interrupted).
    backfill_failed: bool,
    /// Whether `zdm demo` left a report to link.
    demo_report: bool,
    /// The next step's gates, as shown.
    next_gates: Vec<ShownGate>,
    /// The gates of starting the backfill that are not met (a trigger of users, say).
    backfill_unmet: Vec<ShownGate>,
    /// The choice for the users' triggers as stored ("fire", "skip", or "" if none).
    triggers_setting: &'static str,
    worker_bars: Vec<WorkerBar>,
    worker_choices: Vec<String>,
    /// The workers knob as set ("auto" or a count).
    workers_setting: String,
}

fn eta_text(status: &MigrationStatus) -> String {
    let b = &status.backfill;
    let left = (b.status.rows_total - b.status.rows_done).max(0) as f64;
    if b.status.state != BackfillState::Running || b.rows_per_s <= 0.0 {
        return "—".to_owned();
    }
    let secs = (left / b.rows_per_s).round() as u64;
    format!("{}m {:02}s", secs / 60, secs % 60)
}

impl Dashboard {
    fn new(status: MigrationStatus, csrf: String, instance_id: String) -> Self {
        let phase = status.phase;
        let timeline = Phase::ALL
            .into_iter()
            .map(|p| TimelineStep {
                name: p.as_str(),
                summary: p.summary(),
                state: if p < phase {
                    "done"
                } else if p == phase {
                    "current"
                } else {
                    "todo"
                },
            })
            .collect();
        let b = &status.backfill.status;
        let progress_percent = if b.rows_total > 0 {
            (b.rows_done as f64 * 100.0 / b.rows_total as f64).min(100.0)
        } else if b.state == BackfillState::Done {
            100.0
        } else {
            0.0
        };
        let backfill_stopped =
            matches!(b.state, BackfillState::Interrupted | BackfillState::Failed);
        let worker_bars = worker_bars(&status.backfill.ranges);
        let workers_setting = status.backfill.workers_setting.to_string();
        Self {
            next_gates: next_gates(&status),
            backfill_unmet: unmet_backfill_gates(&status),
            triggers_setting: b.triggers.map_or("", |t| t.as_str()),
            worker_bars,
            worker_choices: worker_choices(),
            workers_setting,
            eta: eta_text(&status),
            backfill_stopped,
            backfill_failed: b.state == BackfillState::Failed,
            timeline,
            csrf,
            instance_id,
            notice: None,
            error: None,
            confirm_word: CONTRACT_CONFIRMATION,
            contract_next: phase == Phase::NewOnly,
            progress_percent,
            status,
            demo_report: false,
        }
    }
}

#[derive(Deserialize)]
pub struct DashboardQuery {
    notice: Option<String>,
}

/// What a finished action says on the dashboard.
const NOTICES: &[(&str, &str)] = &[
    ("advanced", "Advanced one phase."),
    ("rolled_back", "Rolled back one phase."),
    ("backfill_start", "Backfill started."),
    ("backfill_resume", "Backfill started."),
    ("backfill_pause", "Backfill paused."),
    ("backfill_cancel", "Backfill cancelled."),
    ("backfill_settings", "Backfill settings saved."),
    ("verified", "Verification done."),
];

/// The dashboard's pages and redirects: never kept by a browser or proxy.
fn html(status: StatusCode, page: impl Template) -> Result<HttpResponse, HtmlError> {
    render::html(status, page, Caching::NoStore)
}

fn see_other(location: &str) -> HttpResponse {
    render::see_other(location, Caching::NoStore)
}

async fn render(
    state: &web::Data<AppState>,
    csrf: String,
    status_code: StatusCode,
    notice: Option<&str>,
    error: Option<String>,
) -> Result<HttpResponse, HtmlError> {
    let status = current_status(state).await?;
    let mut page = Dashboard::new(status, csrf, state.instance_id.clone());
    page.notice = notice_text(notice, NOTICES).map(str::to_owned);
    page.error = error;
    page.demo_report = state.report_dir.join(DEMO_REPORT).is_file();
    html(status_code, page)
}

async fn dashboard(
    state: web::Data<AppState>,
    session: web::ReqData<AdminSession>,
    query: web::Query<DashboardQuery>,
) -> Result<HttpResponse, HtmlError> {
    let csrf = session.csrf.clone();
    render(&state, csrf, StatusCode::OK, query.notice.as_deref(), None).await
}

/// What `static/admin.js` redraws the page from: the status, and the next step's gates as
/// the page shows them.
#[derive(Serialize)]
struct DashboardStatus {
    #[serde(flatten)]
    status: MigrationStatus,
    next_gates: Vec<ShownGate>,
}

async fn status_json(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let status = current_status(&state).await?;
    let next_gates = next_gates(&status);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(DashboardStatus { status, next_gates }))
}

/// After an action: back to the dashboard with a notice, or the dashboard with the reason it
/// was refused (409) or failed.
async fn finish<T>(
    state: &web::Data<AppState>,
    csrf: String,
    outcome: Result<T, AppError>,
    notice: &str,
) -> Result<HttpResponse, HtmlError> {
    match outcome {
        Ok(_) => Ok(see_other(&format!("/admin?notice={notice}"))),
        Err(e @ (AppError::Refused(_) | AppError::Validation(_))) => {
            let code = actix_web::ResponseError::status_code(&e);
            render(state, csrf, code, None, Some(e.public_message())).await
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Deserialize)]
pub struct AdvanceForm {
    #[serde(default)]
    csrf: String,
    /// The phase the page showed: a form sent twice, or after someone else's step, takes no
    /// second step.
    from: Option<String>,
    confirm: Option<String>,
    /// The checkbox "without the client check" (sent only when ticked).
    without_client_check: Option<String>,
}

async fn advance(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: web::ReqData<AdminSession>,
    form: web::Form<AdvanceForm>,
) -> Result<HttpResponse, HtmlError> {
    let form = form.into_inner();
    checked(&req, &session, &form.csrf)?;
    let confirm = form
        .confirm
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty());
    let actor = session.actor(&state.instance_id);
    let without_client_check = form.without_client_check.is_some();
    let outcome = match step_from(form.from.as_deref()) {
        Ok(from) => advance_step(&state, actor, from, confirm, without_client_check).await,
        Err(e) => Err(e),
    };
    finish(&state, session.csrf.clone(), outcome, "advanced").await
}

#[derive(Deserialize)]
pub struct RollbackForm {
    #[serde(default)]
    csrf: String,
    /// As `AdvanceForm::from`.
    from: Option<String>,
}

async fn rollback(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: web::ReqData<AdminSession>,
    form: web::Form<RollbackForm>,
) -> Result<HttpResponse, HtmlError> {
    checked(&req, &session, &form.csrf)?;
    let actor = session.actor(&state.instance_id);
    let outcome = match step_from(form.from.as_deref()) {
        Ok(from) => rollback_step(&state, actor, from).await,
        Err(e) => Err(e),
    };
    finish(&state, session.csrf.clone(), outcome, "rolled_back").await
}

#[derive(Deserialize)]
pub struct BackfillForm {
    #[serde(default)]
    csrf: String,
    batch_size: Option<String>,
    sleep_ms: Option<String>,
    batch_target_ms: Option<String>,
    workers: Option<String>,
    triggers: Option<String>,
}

/// Empty → not given; else one of the values `T` reads (`expected` says which, in the 422).
fn optional_choice<T: std::str::FromStr>(
    value: Option<&str>,
    field: &'static str,
    expected: &str,
) -> Result<Option<T>, AppError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            AppError::Validation(crate::domain::FieldError::new(
                field,
                format!("{field} must be {expected}."),
            ))
        }),
    }
}

/// Empty → not given; anything else must be a whole number.
fn optional_number(value: Option<&str>, field: &'static str) -> Result<Option<i32>, AppError> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            AppError::Validation(crate::domain::FieldError::new(
                field,
                format!("{field} must be a whole number."),
            ))
        }),
    }
}

async fn backfill_action(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: web::ReqData<AdminSession>,
    action: web::Path<String>,
    form: web::Form<BackfillForm>,
) -> Result<HttpResponse, HtmlError> {
    let form = form.into_inner();
    checked(&req, &session, &form.csrf)?;
    let csrf = session.csrf.clone();
    // Bad knobs are not recorded as asked.
    let knobs = (|| {
        let knobs = Knobs {
            batch_size: optional_number(form.batch_size.as_deref(), "batch_size")?,
            sleep_ms: optional_number(form.sleep_ms.as_deref(), "sleep_ms")?,
            batch_target_ms: optional_number(form.batch_target_ms.as_deref(), "batch_target_ms")?,
            workers: optional_choice(
                form.workers.as_deref(),
                "workers",
                backfill::WORKERS_EXPECTED,
            )?,
            triggers: optional_choice(
                form.triggers.as_deref(),
                "triggers",
                "\"fire\" or \"skip\"",
            )?,
        };
        check_knobs(&state, &knobs)?;
        Ok::<_, AppError>(knobs)
    })();
    let action = action.into_inner();
    if knobs.is_ok() && notice_text(Some(&format!("backfill_{action}")), NOTICES).is_some() {
        admin_auth::record_action(
            &state,
            &session.actor(&state.instance_id),
            Action::Backfill,
            &knobs.as_ref().map_or(action.clone(), |k| k.asked(&action)),
        )
        .await;
    }
    let outcome = match (action.as_str(), knobs) {
        (_, Err(e)) => Err(e),
        ("start" | "resume", Ok(knobs)) => start_backfill_now(&state, knobs).await.map(drop),
        ("pause", Ok(_)) => stop_backfill_now(&state, BackfillState::Paused)
            .await
            .map(drop),
        ("cancel", Ok(_)) => stop_backfill_now(&state, BackfillState::Cancelled)
            .await
            .map(drop),
        ("settings", Ok(knobs)) => change_knobs(&state, knobs).await.map(drop),
        _ => return Err(HtmlError(AppError::NotFound)),
    };
    finish(&state, csrf, outcome, &format!("backfill_{action}")).await
}

async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: web::ReqData<AdminSession>,
    form: web::Form<CsrfForm>,
) -> Result<HttpResponse, HtmlError> {
    checked(&req, &session, &form.csrf)?;
    admin_auth::record_action(
        &state,
        &session.actor(&state.instance_id),
        Action::Verify,
        "",
    )
    .await;
    let outcome = verify_now(&state).await;
    finish(&state, session.csrf.clone(), outcome, "verified").await
}

/// The proof's `zdm demo` report (`DEMO_REPORT`). It is one self-contained file with its own
/// inline styles, so it gets a policy of its own: no script at all, inline styles only.
async fn demo_report(state: web::Data<AppState>) -> Result<HttpResponse, HtmlError> {
    let path = state.report_dir.join(DEMO_REPORT);
    let body = web::block(move || std::fs::read_to_string(path))
        .await
        .map_err(AppError::from)?
        .map_err(|_| AppError::NotFound)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(body))
}
