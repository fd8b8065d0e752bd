//! How malformed requests are answered: extractor settings shared by every route.
//!
//! JSON and query errors answer JSON; form and path errors answer a page when the request
//! was for a page. No bad input ends in a 500.

use actix_web::error::{JsonPayloadError, PathError, QueryPayloadError, UrlencodedError};
use actix_web::{HttpMessage, HttpRequest, web};
use serde::de::DeserializeOwned;

use super::{BODY_LIMIT, is_api};
use crate::error::{AppError, HtmlError};

fn respond(req: &HttpRequest, err: AppError) -> actix_web::Error {
    if is_api(req) {
        err.into()
    } else {
        HtmlError(err).into()
    }
}

pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(BODY_LIMIT)
        .error_handler(|err, req| {
            let app_err = match err {
                JsonPayloadError::Overflow { limit } => AppError::PayloadTooLarge { limit },
                JsonPayloadError::OverflowKnownLength { limit, .. } => {
                    AppError::PayloadTooLarge { limit }
                }
                JsonPayloadError::ContentType => AppError::UnsupportedMediaType(
                    "Send the body as JSON with Content-Type: application/json.".to_owned(),
                ),
                JsonPayloadError::Deserialize(e) => {
                    AppError::BadRequest(format!("Malformed JSON body: {e}."))
                }
                other => AppError::BadRequest(format!("Could not read the body: {other}.")),
            };
            respond(req, app_err)
        })
}

pub fn form_config() -> web::FormConfig {
    web::FormConfig::default()
        .limit(BODY_LIMIT)
        .error_handler(|err, req| {
            let app_err = match err {
                UrlencodedError::Overflow { limit, .. } => AppError::PayloadTooLarge { limit },
                UrlencodedError::ContentType => AppError::UnsupportedMediaType(
                    "Send the form as application/x-www-form-urlencoded.".to_owned(),
                ),
                other => AppError::BadRequest(format!("Malformed form: {other}.")),
            };
            respond(req, app_err)
        })
}

pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err: QueryPayloadError, req| {
        respond(
            req,
            AppError::BadRequest(format!("Malformed query string: {err}.")),
        )
    })
}

/// A path that does not parse (`/api/v1/users/abc`) names no resource: 404.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|_err: PathError, req| respond(req, AppError::NotFound))
}

/// A JSON body that may be left out, parsed by the handler (after authentication) instead of
/// an extractor: an empty body is `T::default()`; anything else must be JSON of the right
/// shape (415 for another content type, 400 naming the field that did not parse). Unlike
/// `Option<web::Json<T>>`, a malformed body is never taken for a missing one.
pub fn optional_json<T: DeserializeOwned + Default>(
    req: &HttpRequest,
    body: &[u8],
) -> Result<T, AppError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if req.content_type() != "application/json" {
        return Err(AppError::UnsupportedMediaType(
            "Send the body as JSON with Content-Type: application/json.".to_owned(),
        ));
    }
    let mut json = serde_json::Deserializer::from_slice(body);
    let parsed = serde_path_to_error::deserialize(&mut json).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            AppError::BadRequest(format!("Malformed JSON body: {inner}."))
        } else {
            AppError::BadRequest(format!("Malformed JSON body: field {path}: {inner}."))
        }
    })?;
    json.end()
        .map_err(|e| AppError::BadRequest(format!("Malformed JSON body: {e}.")))?;
    Ok(parsed)
}
