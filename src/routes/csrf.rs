//! Cross-site request forgery protection for every state-changing form.
//!
//! Two checks, both needed to pass:
//! - the request comes from our own pages: `Sec-Fetch-Site` (sent by browsers) is
//!   `same-origin` or `none`, and `Origin`, when sent, is this server's own;
//! - the form carries a token only our pages know. The user pages use a double-submit token:
//!   a random value in an HttpOnly, SameSite=Strict cookie, repeated in a hidden field (a
//!   forging site can neither read nor set the cookie). Only a value of the form this app
//!   issues (`secrets`) counts as a token: a cookie planted with any other value is refused.
//!   The admin pages use the token of the logged-in session instead.

use actix_web::HttpRequest;
use actix_web::cookie::{Cookie, SameSite};

use super::admin_auth::token_matches;
use super::client::{client_info, cookie_name};
use crate::error::AppError;
use crate::secrets::{is_secret_form, new_secret};

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

/// The token for the user pages' forms, and the cookie to set when the browser has none yet
/// (or one this app did not issue).
pub fn form_token(req: &HttpRequest) -> Result<(String, Option<Cookie<'static>>), AppError> {
    let https = client_info(req).https;
    if let Some(cookie) = req.cookie(&cookie_name(COOKIE, https))
        && is_secret_form(cookie.value())
    {
        return Ok((cookie.value().to_owned(), None));
    }
    let token = new_secret().map_err(AppError::internal)?;
    let cookie = Cookie::build(cookie_name(COOKIE, https), token.clone())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(https)
        .finish();
    Ok((token, Some(cookie)))
}

/// A user-page form post: same origin, and its `csrf` field repeats the cookie.
pub fn check_form(req: &HttpRequest, field: &str) -> Result<(), AppError> {
    check_same_origin(req)?;
    let cookie = req
        .cookie(&cookie_name(COOKIE, client_info(req).https))
        .ok_or_else(|| forbidden("its security cookie is missing"))?;
    if !is_secret_form(cookie.value()) || !token_matches(field, cookie.value()) {
        return Err(forbidden("its security token is missing or wrong"));
    }
    Ok(())
}
