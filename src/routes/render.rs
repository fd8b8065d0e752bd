//! How the HTML routes answer: a rendered page, the redirect after a form, the notice a
//! redirect asks the next page to show. Shared by the user pages and the admin dashboard,
//! which differ only in whether a browser may keep the answer.

use actix_web::HttpResponse;
use actix_web::http::{StatusCode, header};
use askama::Template;

use crate::error::HtmlError;

/// Whether a browser or proxy may keep an answer. The admin pages show the migration's live
/// state and a CSRF token, so nothing of theirs is stored; the user pages leave it to HTTP's
/// defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caching {
    Default,
    NoStore,
}

impl Caching {
    fn apply(self, response: &mut actix_web::HttpResponseBuilder) {
        if self == Caching::NoStore {
            response.insert_header((header::CACHE_CONTROL, "no-store"));
        }
    }
}

/// A page rendered from its template.
pub fn html(
    status: StatusCode,
    page: impl Template,
    caching: Caching,
) -> Result<HttpResponse, HtmlError> {
    let body = page.render()?;
    let mut response = HttpResponse::build(status);
    caching.apply(&mut response);
    Ok(response.content_type("text/html; charset=utf-8").body(body))
}

/// 303 to `location`: after a form post, so that a reload does not send the form again.
pub fn see_other(location: &str, caching: Caching) -> HttpResponse {
    let mut response = HttpResponse::SeeOther();
    caching.apply(&mut response);
    response
        .insert_header((header::LOCATION, location))
        .finish()
}

/// The fixed text a `?notice=` code stands for among a page's `notices` (code, text); an
/// unknown code shows nothing, so a link can never make a page say what it likes.
pub fn notice_text(code: Option<&str>, notices: &[(&str, &'static str)]) -> Option<&'static str> {
    let code = code?;
    notices
        .iter()
        .find(|(known, _)| *known == code)
        .map(|(_, text)| *text)
}
