//! The v1 JSON API: users with one `full_name`, in every phase. After the contract it is
//! served from the new columns and its answers carry `Deprecation` and `Sunset` headers.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::{Next, from_fn};
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::{db, db_read, read_user};
use crate::app_state::AppState;
use crate::db::users::{self, StoredUser};
use crate::domain::Phase;
use crate::domain::user::FieldErrors;
use crate::domain::{NewUser, UserChanges};
use crate::error::AppError;

/// Largest page a client may ask for.
pub const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 50;
/// How long v1 stays served after the contract, as announced in `Sunset`.
pub const SUNSET_AFTER_DAYS: i64 = 180;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/users")
            .wrap(from_fn(deprecation_headers))
            .route("", web::get().to(list))
            .route("", web::post().to(create))
            .route("/{id}", web::get().to(show))
            .route("/{id}", web::put().to(update))
            .route("/{id}", web::delete().to(remove)),
    );
}

/// After the contract every v1 answer says it is deprecated (RFC 9745), when it goes away
/// (RFC 8594) and what replaces it.
async fn deprecation_headers(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let mut response = next.call(req).await?;
    if let Some(state) = state
        && state.phase.get() == Phase::Contracted
    {
        let since = state.phase.since();
        let sunset = chrono::DateTime::from_timestamp(since + SUNSET_AFTER_DAYS * 86_400, 0)
            .unwrap_or_default()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let headers = response.headers_mut();
        for (name, value) in [
            ("deprecation", format!("@{since}")),
            ("sunset", sunset),
            (
                "link",
                "</api/v2/users>; rel=\"successor-version\"".to_owned(),
            ),
        ] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(header::HeaderName::from_static(name), value);
            }
        }
    }
    Ok(response)
}

/// The body of POST and PUT. Every field is optional here so that a missing one is reported
/// as a 422 naming it, not as an unreadable body.
#[derive(Debug, Deserialize)]
pub struct UserBody {
    full_name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct V1User {
    id: i64,
    full_name: String,
    email: String,
}

impl V1User {
    fn new(user: StoredUser, phase: Phase) -> Self {
        Self {
            full_name: user.v1_full_name(phase),
            id: user.id,
            email: user.email,
        }
    }
}

/// The first problem found: a JSON answer names one field.
pub fn first_error(errors: FieldErrors) -> AppError {
    errors
        .into_iter()
        .next()
        .map(AppError::Validation)
        .unwrap_or_else(|| AppError::BadRequest("Invalid input.".to_owned()))
}

impl TryFrom<UserBody> for NewUser {
    type Error = AppError;

    fn try_from(body: UserBody) -> Result<Self, AppError> {
        NewUser::parse_v1(body.full_name.as_deref(), body.email.as_deref()).map_err(first_error)
    }
}

impl TryFrom<UserBody> for UserChanges {
    type Error = AppError;

    fn try_from(body: UserBody) -> Result<Self, AppError> {
        UserChanges::parse_v1(body.full_name.as_deref(), body.email.as_deref()).map_err(first_error)
    }
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    after_id: Option<i64>,
    limit: Option<i64>,
}

impl PageQuery {
    pub fn checked(&self) -> Result<(i64, i64), AppError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(AppError::BadRequest(format!(
                "limit must be between 1 and {MAX_PAGE}."
            )));
        }
        Ok((self.after_id.unwrap_or(0), limit))
    }
}

#[derive(Serialize)]
pub struct Page<T> {
    users: Vec<T>,
    /// Pass as `after_id` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after_id: Option<i64>,
}

impl<T> Page<T> {
    pub fn new(stored: Vec<StoredUser>, limit: i64, view: impl Fn(StoredUser) -> T) -> Self {
        let next_after_id = if stored.len() as i64 == limit {
            stored.last().map(|u| u.id)
        } else {
            None
        };
        Self {
            users: stored.into_iter().map(view).collect(),
            next_after_id,
        }
    }
}

async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    let (after_id, limit) = query.checked()?;
    let phase = state.phase.get();
    let stored = db_read(&state, &req, move |conn| {
        Ok(users::list_users(conn, phase, after_id, limit)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Page::new(stored, limit, |u| V1User::new(u, phase))))
}

async fn create(
    state: web::Data<AppState>,
    body: web::Json<UserBody>,
) -> Result<HttpResponse, AppError> {
    let new = NewUser::try_from(body.into_inner())?;
    let phase = state.v1_write_phase();
    let user = db(&state, move |conn| {
        Ok(users::insert_user(
            conn,
            phase,
            &new.name,
            new.email.as_str(),
        )?)
    })
    .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/users/{}", user.id)))
        .json(V1User::new(user, phase)))
}

async fn show(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let phase = state.phase.get();
    let user = read_user(&state, &req, phase, id).await?;
    Ok(HttpResponse::Ok().json(V1User::new(user, phase)))
}

async fn update(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<UserBody>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let changes = UserChanges::try_from(body.into_inner())?;
    let phase = state.v1_write_phase();
    let email = changes.email.map(|e| e.as_str().to_owned());
    let user = super::update_user(&state, phase, id, changes.name, email).await?;
    Ok(HttpResponse::Ok().json(V1User::new(user, phase)))
}

pub async fn remove(
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    db(&state, move |conn| Ok(users::delete_user(conn, id)?)).await?;
    Ok(HttpResponse::NoContent().finish())
}
