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

use super::admin_api::token_matches;
use crate::error::AppError;
use crate::secrets::{is_secret_form, new_secret};

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
        let info = req.connection_info();
        let ours = format!("{}://{}", info.scheme(), info.host());
        if origin != ours {
            return Err(forbidden("it was sent from another origin"));
        }
    }
    Ok(())
}

/// The token for the user pages' forms, and the cookie to set when the browser has none yet
/// (or one this app did not issue).
pub fn form_token(req: &HttpRequest) -> Result<(String, Option<Cookie<'static>>), AppError> {
    if let Some(cookie) = req.cookie(COOKIE)
        && is_secret_form(cookie.value())
    {
        return Ok((cookie.value().to_owned(), None));
    }
    let token = new_secret().map_err(AppError::internal)?;
    let secure = req.connection_info().scheme() == "https";
    let cookie = Cookie::build(COOKIE, token.clone())
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .finish();
    Ok((token, Some(cookie)))
}

/// A user-page form post: same origin, and its `csrf` field repeats the cookie.
pub fn check_form(req: &HttpRequest, field: &str) -> Result<(), AppError> {
    check_same_origin(req)?;
    let cookie = req
        .cookie(COOKIE)
        .ok_or_else(|| forbidden("its security cookie is missing"))?;
    if !is_secret_form(cookie.value()) || !token_matches(field, cookie.value()) {
        return Err(forbidden("its security token is missing or wrong"));
    }
    Ok(())
}
