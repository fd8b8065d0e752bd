//! Cross-site request forgery protection for every state-changing form.
//!
//! Two checks, both needed to pass:
//! - the request comes from our own pages: `Sec-Fetch-Site` (sent by browsers) is
//!   `same-origin` or `none`, and `Origin`, when sent, is this server's own;
//! - the form carries a token only our pages know. The user pages have no session: their
//!   browser holds a random value in an HttpOnly, SameSite=Strict cookie, and the hidden field
//!   holds the HMAC of that value under a key only the server knows (`secrets`, kept in
//!   PostgreSQL for the fleet), so a cookie a client planted, with any token of its own
//!   making, is refused. The admin pages use the token stored with the logged-in session.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::{HttpRequest, web};

use super::client::{client_info, cookie_name};
use super::db;
use crate::app_state::AppState;
use crate::error::AppError;
use crate::secrets::{is_secret_form, is_user_form_token, new_secret, user_form_token};

/// The double-submit cookie (`__Host-zdm_csrf` over HTTPS, see `client::cookie_name`).
pub const COOKIE: &str = "zdm_csrf";

fn forbidden(why: &str) -> AppError {
    AppError::Forbidden(format!(
        "This form was refused: {why}. Reload the page and submit it again."
    ))
}

/// The request comes from a page of this server (or from a tool that sends no browser
/// headers at all).
pub fn check_same_origin(req: &HttpRequest) -> Result<(), AppError> {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site")
        && !matches!(site, "same-origin" | "none")
    {
        return Err(forbidden("it was sent from another site"));
    }
    if let Some(origin) = header("origin") {
        // Our origin as the browser sees it: the scheme a trusted proxy reports, and the Host
        // the browser sent (never X-Forwarded-Host, which anyone can send).
        let scheme = if client_info(req).https {
            "https"
        } else {
            "http"
        };
        let ours = format!("{scheme}://{}", header("host").unwrap_or_default());
        if origin != ours {
            return Err(forbidden("it was sent from another origin"));
        }
    }
    Ok(())
}

/// The key the user forms' tokens are signed with (read from PostgreSQL once per instance).
pub async fn user_form_key(state: &web::Data<AppState>) -> Result<Vec<u8>, AppError> {
    let key = state
        .user_form_key
        .get(|| {
            db(state, |conn| {
                Ok(crate::db::admin_auth::user_form_key(conn)?)
            })
        })
        .await?;
    Ok(key.to_vec())
}

/// The token for the user pages' forms, and the cookie to set when the browser has none yet
/// (or one this app did not issue).
pub fn form_token(
    req: &HttpRequest,
    key: &[u8],
) -> Result<(String, Option<Cookie<'static>>), AppError> {
    let https = client_info(req).https;
    if let Some(cookie) = req.cookie(&cookie_name(COOKIE, https))
        && is_secret_form(cookie.value())
    {
        return Ok((user_form_token(key, cookie.value()), None));
    }
    let value = new_secret().map_err(AppError::internal)?;
    let token = user_form_token(key, &value);
    let cookie = Cookie::build(cookie_name(COOKIE, https), value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(https)
        .finish();
    Ok((token, Some(cookie)))
}

/// A user-page form post: same origin, and its `csrf` field is the token the server made for
/// the browser's cookie.
pub fn check_form(req: &HttpRequest, key: &[u8], field: &str) -> Result<(), AppError> {
    check_same_origin(req)?;
    let cookie = req
        .cookie(&cookie_name(COOKIE, client_info(req).https))
        .ok_or_else(|| forbidden("its security cookie is missing"))?;
    if !is_secret_form(cookie.value()) || !is_user_form_token(key, cookie.value(), field) {
        return Err(forbidden("its security token is missing or wrong"));
    }
    Ok(())
}
