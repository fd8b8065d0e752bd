//! The v1 JSON API: users with one `full_name`.

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::db;
use crate::db::DbPool;
use crate::db::users_v1::{self, NewUserV1, UserChangesV1, UserV1};
use crate::domain::{NewUser, UserChanges, user::FieldErrors};
use crate::error::AppError;

/// Largest page a client may ask for.
pub const MAX_PAGE: i64 = 1000;
const DEFAULT_PAGE: i64 = 50;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1/users")
            .route("", web::get().to(list))
            .route("", web::post().to(create))
            .route("/{id}", web::get().to(show))
            .route("/{id}", web::put().to(update))
            .route("/{id}", web::delete().to(remove)),
    );
}

/// The body of POST and PUT. Every field is optional here so that a missing one is reported
/// as a 422 naming it, not as an unreadable body.
#[derive(Debug, Deserialize)]
pub struct UserBody {
    full_name: Option<String>,
    email: Option<String>,
}

fn first_error(errors: FieldErrors) -> AppError {
    errors
        .into_iter()
        .next()
        .map(AppError::Validation)
        .unwrap_or_else(|| AppError::BadRequest("Invalid input.".to_owned()))
}

impl TryFrom<UserBody> for NewUserV1 {
    type Error = AppError;

    fn try_from(body: UserBody) -> Result<Self, AppError> {
        let user = NewUser::parse(body.full_name.as_deref(), body.email.as_deref())
            .map_err(first_error)?;
        Ok(NewUserV1 {
            full_name: user.full_name.into_inner(),
            email: user.email.into_inner(),
        })
    }
}

impl TryFrom<UserBody> for UserChangesV1 {
    type Error = AppError;

    fn try_from(body: UserBody) -> Result<Self, AppError> {
        let changes = UserChanges::parse(body.full_name.as_deref(), body.email.as_deref())
            .map_err(first_error)?;
        Ok(UserChangesV1 {
            full_name: changes.full_name.map(|n| n.into_inner()),
            email: changes.email.map(|e| e.into_inner()),
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    after_id: Option<i64>,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct Page {
    users: Vec<UserV1>,
    /// Pass as `after_id` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after_id: Option<i64>,
}

async fn list(
    pool: web::Data<DbPool>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    let after_id = query.after_id.unwrap_or(0);
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(AppError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}."
        )));
    }
    let users = db(&pool, move |conn| {
        Ok(users_v1::list_users(conn, after_id, limit)?)
    })
    .await?;
    let next_after_id = if users.len() as i64 == limit {
        users.last().map(|u| u.id)
    } else {
        None
    };
    Ok(HttpResponse::Ok().json(Page {
        users,
        next_after_id,
    }))
}

async fn create(
    pool: web::Data<DbPool>,
    body: web::Json<UserBody>,
) -> Result<HttpResponse, AppError> {
    let new = NewUserV1::try_from(body.into_inner())?;
    let user = db(&pool, move |conn| Ok(users_v1::insert_user(conn, &new)?)).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/users/{}", user.id)))
        .json(user))
}

async fn show(pool: web::Data<DbPool>, id: web::Path<i64>) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let user = db(&pool, move |conn| Ok(users_v1::find_user(conn, id)?)).await?;
    Ok(HttpResponse::Ok().json(user))
}

async fn update(
    pool: web::Data<DbPool>,
    id: web::Path<i64>,
    body: web::Json<UserBody>,
) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    let changes = UserChangesV1::try_from(body.into_inner())?;
    let user = db(&pool, move |conn| {
        Ok(users_v1::update_user(conn, id, &changes)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(user))
}

async fn remove(pool: web::Data<DbPool>, id: web::Path<i64>) -> Result<HttpResponse, AppError> {
    let id = id.into_inner();
    db(&pool, move |conn| Ok(users_v1::delete_user(conn, id)?)).await?;
    Ok(HttpResponse::NoContent().finish())
}
