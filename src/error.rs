//! The one error type of the HTTP layer, and how each case reaches a client.
//!
//! When to use what:
//! - `Validation`: input that parsed but breaks a rule (422, names the field).
//! - `UnknownField`: a body with a field the request does not take (422, names it).
//! - `BadRequest`: input that does not parse at all (400).
//! - `NotFound`: no such row or route (404). `diesel::NotFound` converts to it.
//! - `Conflict`: the request clashes with stored data, e.g. a duplicate email (409).
//! - `Refused`: the migration's state does not allow the step now, e.g. an unmet gate (409).
//! - `Unauthorized`: an admin route without a valid token or session (401).
//! - `Forbidden`: a form post without its CSRF token (403).
//! - `TooManyRequests`: too many failed admin log-ins (429 with Retry-After).
//! - `PayloadTooLarge`: body over the limit (413).
//! - `RequestTimeout`: the body did not arrive in time (408).
//! - `Unavailable`: the database cannot be reached right now, e.g. no primary during a
//!   failover (503 with Retry-After); the client may retry.
//! - `ConstraintRefused`: the database's constraints refused a write the code thought valid:
//!   the schema moved on under this instance (503 naming the constraint, logged as an error);
//!   the client may retry once the instance has caught up.
//! - `Fenced`: this instance has not read the phase recently enough to know which code to run
//!   (503 with Retry-After); see `migration::follower`.
//! - `Internal`: everything else (500). Logged with its cause; the client sees a generic text.
//!
//! Database text never reaches a client: only the messages written here do. How the
//! migration's own errors map onto these is in `migration::control` (this module sits
//! below the migration and knows nothing of it).
//!
//! JSON routes answer `{"error": "...", "field": "..."}`; HTML routes wrap the error in
//! [`HtmlError`], which renders `templates/error.html`.
//!
//! Outside a request (start-up, the embedded migrations, the commands) an error only ends
//! the process with its message, so any error will do: [`BoxError`].

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use askama::Template;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use serde::Serialize;

use crate::domain::FieldError;

/// Any error, for code whose caller only reports it: start-up, migrations, the commands.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Cause = BoxError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Validation(FieldError),
    /// A body field the request does not take, named as the client spelt it.
    #[error("{}", unknown_field_message(.field, .expected))]
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    #[error("{0}")]
    BadRequest(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(FieldError),
    /// A request the current state does not allow (a migration gate, a running backfill).
    #[error("{0}")]
    Refused(String),
    #[error("a valid admin token is required")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("too many attempts; try again in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the database is unavailable")]
    Unavailable(#[source] Cause),
    #[error(
        "the database refused this write: it breaks {constraint}, which the current phase requires; this instance has not caught up with the phase yet, try again in a moment"
    )]
    ConstraintRefused {
        constraint: String,
        #[source]
        cause: Cause,
    },
    #[error(
        "this instance has not read the migration's phase recently and serves no data until it has; try again in a moment"
    )]
    Fenced,
    #[error("internal error")]
    Internal(#[source] Cause),
}

impl AppError {
    pub fn internal(cause: impl Into<Cause>) -> Self {
        AppError::Internal(cause.into())
    }

    /// The field a client should fix, if the error is about one.
    pub fn field(&self) -> Option<&str> {
        match self {
            AppError::Validation(e) | AppError::Conflict(e) => Some(e.field),
            AppError::UnknownField { field, .. } => Some(field),
            _ => None,
        }
    }

    /// The text a client sees (never database text).
    pub fn public_message(&self) -> String {
        match self {
            AppError::Unavailable(_) => {
                "The database is unavailable right now; try again in a moment.".to_owned()
            }
            AppError::Internal(_) => {
                "Something went wrong on our side; it has been logged.".to_owned()
            }
            AppError::NotFound => "Not found.".to_owned(),
            other => other.to_string(),
        }
    }

    /// Headers some errors carry, on JSON and pages alike.
    fn add_headers(&self, response: &mut actix_web::HttpResponseBuilder) {
        match self {
            AppError::Unauthorized => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            AppError::TooManyRequests { retry_after_secs } => {
                response.insert_header(("Retry-After", retry_after_secs.to_string()));
            }
            // A database that cannot be reached is usually back within seconds (a restart, a
            // failover to a standby): the client is told it may retry.
            AppError::Unavailable(_) | AppError::ConstraintRefused { .. } | AppError::Fenced => {
                response.insert_header(("Retry-After", "1"));
            }
            _ => {}
        }
    }

    fn log(&self) {
        match self {
            AppError::Internal(cause) => log::error!("internal error: {cause:?}"),
            AppError::Unavailable(cause) => log::warn!("database unavailable: {cause}"),
            AppError::ConstraintRefused { constraint, cause } => {
                log::error!("a write broke {constraint}: {cause}")
            }
            AppError::Fenced => log::warn!("refused a request: the phase lease is stale"),
            _ => {}
        }
    }
}

fn unknown_field_message(field: &str, expected: &[&str]) -> String {
    if expected.is_empty() {
        format!("Unknown field {field:?}: this request takes no fields.")
    } else {
        format!(
            "Unknown field {field:?}: this request takes {}.",
            expected.join(", ")
        )
    }
}

impl From<FieldError> for AppError {
    fn from(e: FieldError) -> Self {
        AppError::Validation(e)
    }
}

/// The unique index that makes email addresses unique (case-insensitively).
pub const EMAIL_UNIQUE_INDEX: &str = "users_email_key";

impl From<DieselError> for AppError {
    fn from(e: DieselError) -> Self {
        match e {
            DieselError::NotFound => AppError::NotFound,
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, ref info)
                if info.constraint_name() == Some(EMAIL_UNIQUE_INDEX) =>
            {
                AppError::Conflict(FieldError::new(
                    "email",
                    "A user with this email address already exists.",
                ))
            }
            // The code wrote what the schema no longer allows: the phase moved on under this
            // instance (or another client broke a rule). Not the client's fault, nor a bug to
            // hide behind a bare 500.
            DieselError::DatabaseError(
                DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation,
                ref info,
            ) => AppError::ConstraintRefused {
                constraint: match (info.constraint_name(), info.column_name()) {
                    (Some(name), _) => format!("constraint {name}"),
                    (None, Some(column)) => format!("NOT NULL on {column}"),
                    (None, None) => "a constraint".to_owned(),
                },
                cause: Box::new(e),
            },
            // The connection died (server restarted, backend killed): the pool replaces it.
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => AppError::Unavailable(Box::new(e)),
            // statement_timeout (SQLSTATE 57014): the database is too busy to answer in time.
            // Diesel exposes no SQLSTATE for it; PostgreSQL's message is matched.
            DieselError::DatabaseError(DatabaseErrorKind::Unknown, ref info)
                if info.message().contains("statement timeout") =>
            {
                AppError::Unavailable(Box::new(e))
            }
            other => AppError::Internal(Box::new(other)),
        }
    }
}

impl From<diesel::r2d2::PoolError> for AppError {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        AppError::Unavailable(Box::new(e))
    }
}

impl From<actix_web::error::BlockingError> for AppError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        AppError::internal(e)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::Validation(_) | AppError::UnknownField { .. } => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::Conflict(_) | AppError::Refused(_) => StatusCode::CONFLICT,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unavailable(_) | AppError::ConstraintRefused { .. } | AppError::Fenced => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        self.log();
        let mut response = HttpResponse::build(self.status_code());
        self.add_headers(&mut response);
        response.json(ErrorBody {
            error: self.public_message(),
            field: self.field(),
        })
    }
}

/// An [`AppError`] met by an HTML page: rendered as a page that says what happened and what
/// to do next.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct HtmlError(#[from] pub AppError);

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    message: String,
    advice: &'a str,
}

impl ResponseError for HtmlError {
    fn status_code(&self) -> StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        self.0.log();
        let status = self.status_code();
        let advice = match &self.0 {
            AppError::NotFound => "It may have been deleted. Go back to the list and pick another.",
            AppError::Unauthorized => "Log in at /admin/login with the admin token.",
            AppError::Unavailable(_) | AppError::ConstraintRefused { .. } | AppError::Fenced => {
                "Wait a few seconds and reload the page."
            }
            AppError::Internal(_) => "Reload the page; if it happens again, check the server log.",
            _ => "Go back, correct the request and send it again.",
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error"),
            message: self.0.public_message(),
            advice,
        };
        let mut response = HttpResponse::build(status);
        self.0.add_headers(&mut response);
        match page.render() {
            Ok(body) => response.content_type("text/html; charset=utf-8").body(body),
            Err(e) => {
                log::error!("rendering the error page failed: {e}");
                HttpResponse::build(status).body(self.0.public_message())
            }
        }
    }
}

impl From<FieldError> for HtmlError {
    fn from(e: FieldError) -> Self {
        HtmlError(e.into())
    }
}

impl From<askama::Error> for HtmlError {
    fn from(e: askama::Error) -> Self {
        HtmlError(AppError::internal(e))
    }
}
