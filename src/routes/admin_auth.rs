//! Who may use the admin API and pages: the Bearer token, the log-in sessions, and the limit
//! on failed attempts, all shared by the fleet through PostgreSQL (`db::admin_auth`).
//!
//! Authentication runs as middleware on the `/api/admin` and `/admin` scopes, before any
//! handler reads its body: an unauthenticated caller learns nothing about what a body would
//! have done. Every answer of both scopes carries `Cache-Control: no-store`.
//!
//! The limit counts only failures. A request with the right token is never looked up, slowed
//! or refused by it, so a flood of wrong guesses cannot lock the real admin out.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError, web};

use super::client::{client_info, cookie_name};
use super::db;
use crate::app_state::AppState;
use crate::db::admin_auth::{self, LOGIN_LIMITS};
use crate::error::{AppError, HtmlError};
use crate::migration::state::{self, Action};
use crate::secrets::is_secret_form;

/// The admin session cookie (`__Host-zdm_admin` over HTTPS, see `client::cookie_name`).
pub const SESSION_COOKIE: &str = "zdm_admin";

/// Characters of a session id that name it in the history: enough to tell sessions apart,
/// far too few to help guess the rest (208 of its 256 bits stay unknown).
const ACTOR_PREFIX_CHARS: usize = 8;

/// A live admin session, as the middleware found it for this request.
#[derive(Debug, Clone)]
pub struct AdminSession {
    pub id: String,
    pub csrf: String,
}

impl AdminSession {
    /// Who asked, for the history: the session's id prefix and the instance that served it.
    pub fn actor(&self, instance_id: &str) -> String {
        format!("session:{}@{instance_id}", &self.id[..ACTOR_PREFIX_CHARS])
    }
}

/// The history's name for a caller of the admin API.
pub fn api_actor(instance_id: &str) -> String {
    format!("api@{instance_id}")
}

/// The log target of admin actions.
pub const ADMIN_LOG: &str = "zdm::admin";

/// Records an admin action that is not a phase step (a backfill control, a verification) and
/// who asked, in the history (outcome `asked`: the backfill's status says how it went) and the
/// log. The history is best effort here: the action goes ahead if it cannot be written.
pub async fn record_action(state: &web::Data<AppState>, actor: &str, action: Action, detail: &str) {
    log::info!(target: ADMIN_LOG, "{} {detail} asked by {actor}", action.as_str());
    let (actor, detail, phase) = (actor.to_owned(), detail.to_owned(), state.phase.get());
    let detail = (!detail.is_empty()).then_some(detail);
    let recorded = crate::routes::db(state, move |conn| {
        Ok(state::record(
            conn,
            action,
            phase,
            phase,
            &actor,
            "asked",
            detail.as_deref(),
        )?)
    })
    .await;
    if let Err(e) = recorded {
        log::warn!("could not record the admin action in the history: {e}");
    }
}

fn state_of(req: &HttpRequest) -> Result<web::Data<AppState>, AppError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| AppError::internal("the app state is missing"))
}

/// The key failed log-ins are counted under: the client's address (as a trusted proxy
/// reports it, else the peer's), or for IPv6 its /64 (one host is usually given a whole /64).
pub fn client_key(req: &HttpRequest) -> String {
    limit_key(client_info(req).ip)
}

fn limit_key(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            ipnet::Ipv6Net::new(v6, 64).map_or_else(|_| v6.to_string(), |n| n.trunc().to_string())
        }
        v4 => v4.to_string(),
    }
}

/// Counts a failed attempt (a wrong token) of this request's client: `Ok` when it was
/// counted, `TooManyRequests` when the client or everyone is over the limit.
///
/// A client this instance already knows to be over the limit is refused from memory, before
/// any database work; the others take their turn, one at a time per instance, so a flood of
/// wrong tokens holds at most one pooled connection and the users keep the rest.
pub async fn failed_attempt(
    state: &web::Data<AppState>,
    req: &HttpRequest,
) -> Result<(), AppError> {
    let client = client_key(req);
    let over_limit = |wait: std::time::Duration| AppError::TooManyRequests {
        retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
    };
    if let Some(wait) = state.failed_logins.wait_of(&client) {
        return Err(over_limit(wait));
    }
    let _turn = state.failed_logins.turn().await;
    if let Some(wait) = state.failed_logins.wait_of(&client) {
        return Err(over_limit(wait));
    }
    let key = client.clone();
    let waits = db(state, move |conn| {
        Ok(admin_auth::record_failed_login(conn, &key, LOGIN_LIMITS)?)
    })
    .await?;
    state.failed_logins.remember(&client, waits);
    match waits.longest() {
        None => Ok(()),
        Some(wait) => Err(over_limit(wait)),
    }
}

/// The live session named by the request's cookie, if any (marking it as used).
pub async fn session_of(
    req: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<Option<AdminSession>, AppError> {
    let Some(id) = req
        .cookie(&cookie_name(SESSION_COOKIE, client_info(req).https))
        .map(|c| c.value().to_owned())
        .filter(|id| is_secret_form(id))
    else {
        return Ok(None);
    };
    let lookup = id.clone();
    let csrf = db(state, move |conn| {
        Ok(admin_auth::touch_session(conn, &lookup)?)
    })
    .await?;
    Ok(csrf.map(|csrf| AdminSession { id, csrf }))
}

/// The Bearer token check of the admin API. A wrong token counts as a failed attempt; no
/// token at all is simply refused. The scheme's name is case-insensitive (RFC 7235):
/// `bearer` is Bearer.
async fn check_bearer(req: &HttpRequest) -> Result<(), AppError> {
    let state = state_of(req)?;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or_default();
    if token_matches(given, &state.admin_token) {
        return Ok(());
    }
    if !given.is_empty() {
        failed_attempt(&state, req).await?;
    }
    Err(AppError::Unauthorized)
}

fn no_store<B>(mut response: ServiceResponse<B>) -> ServiceResponse<B> {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// Middleware of `/api/admin`: the Bearer token first, then the handler.
pub async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let response = match check_bearer(req.request()).await {
        Ok(()) => next.call(req).await?.map_into_left_body(),
        Err(e) => req.into_response(e.error_response()).map_into_right_body(),
    };
    Ok(no_store(response))
}

/// Middleware of `/admin`: every page but the log-in needs a live session, found before the
/// handler reads its form. Without one, a page asks to log in, `status.json` and the forms
/// answer 401.
pub async fn require_session(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    if req.path() == "/admin/login" {
        return Ok(no_store(next.call(req).await?.map_into_left_body()));
    }
    let json = req.path() == "/admin/status.json";
    let refusal = match state_of(req.request()) {
        Ok(state) => match session_of(req.request(), &state).await {
            Ok(Some(session)) => {
                req.extensions_mut().insert(session);
                return Ok(no_store(next.call(req).await?.map_into_left_body()));
            }
            Ok(None) if req.method() == Method::GET && !json => {
                let to_login = HttpResponse::SeeOther()
                    .insert_header((header::LOCATION, "/admin/login"))
                    .finish();
                return Ok(no_store(req.into_response(to_login).map_into_right_body()));
            }
            Ok(None) => AppError::Unauthorized,
            Err(e) => e,
        },
        Err(e) => e,
    };
    let response = if json {
        refusal.error_response()
    } else {
        HtmlError(refusal).error_response()
    };
    Ok(no_store(req.into_response(response).map_into_right_body()))
}

/// Compares in constant time, so the answer's timing does not reveal how much of a guessed
/// token was right.
pub fn token_matches(given: &str, expected: &str) -> bool {
    !expected.is_empty()
        && constant_time_eq::constant_time_eq(given.as_bytes(), expected.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_per_ipv4_address_and_per_ipv6_64() {
        let key = |ip: &str| limit_key(ip.parse().unwrap());
        assert_eq!(key("198.51.100.7"), "198.51.100.7");
        assert_eq!(key("::ffff:198.51.100.7"), "198.51.100.7");
        assert_eq!(key("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2:bbbb::9"), key("2001:db8:1:2:aaaa::1"));
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
    }
}
