//! The v2 JSON API: users with `first_name` and `last_name`, released at dual_write
//! (404 before). Until reads switch, a v2 client reads what it wrote: the new columns where
//! they agree with `full_name`, else the split of `full_name`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};

use super::api_v1::{Page, PageQuery, first_error};
use super::{db, db_read, read_user, v2_phase};
use crate::app_state::AppState;
use crate::db::users::{self, StoredUser};
use crate::domain::Phase;
use crate::domain::{NewUser, UserChanges};
use crate::error::AppError;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v2/users")
            .route("", web::get().to(list))
            .route("", web::post().to(create))
            .route("/{id}", web::get().to(show))
            .route("/{id}", web::put().to(update))
            .route("/{id}", web::delete().to(remove)),
    );
}

/// The body of POST and PUT (see `UserChanges::parse_v2`: the name parts come together).
#[derive(Debug, Deserialize)]
pub struct UserBody {
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct V2User {
    id: i64,
    first_name: String,
    last_name: String,
    email: String,
}

impl V2User {
    fn new(user: StoredUser, phase: Phase) -> Self {
        let (first_name, last_name) = user.v2_name_parts(phase);
        Self {
            id: user.id,
            first_name,
            last_name,
            email: user.email,
        }
    }
}

impl TryFrom<UserBody> for NewUser {
    type Error = AppError;

    fn try_from(body: UserBody) -> Result<Self, AppError> {
        NewUser::parse_v2(
            body.first_name.as_deref(),
            body.last_name.as_deref(),
            body.email.as_deref(),
        )
        .map_err(first_error)
    }
}

impl TryFrom<UserBody> for UserChanges {
    type Error = AppError;

    fn try_from(body: UserBody) -> Result<Self, AppError> {
        UserChanges::parse_v2(
            body.first_name.as_deref(),
            body.last_name.as_deref(),
            body.email.as_deref(),
        )
        .map_err(first_error)
    }
}

async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, AppError> {
    let phase = v2_phase(&state)?;
    let (after_id, limit) = query.checked()?;
    let stored = db_read(&state, &req, move |conn| {
        Ok(users::list_users(conn, phase, after_id, limit)?)
    })
    .await?;
    Ok(HttpResponse::Ok().json(Page::new(stored, limit, |u| V2User::new(u, phase))))
}

async fn create(
    state: web::Data<AppState>,
    body: web::Json<UserBody>,
) -> Result<HttpResponse, AppError> {
    let phase = v2_phase(&state)?;
    let new = NewUser::try_from(body.into_inner())?;
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
        .insert_header((header::LOCATION, format!("/api/v2/users/{}", user.id)))
        .json(V2User::new(user, phase)))
}

async fn show(
    req: HttpRequest,
    state: web::Data<AppState>,
    id: web::Path<i64>,
) -> Result<HttpResponse, AppError> {
    let phase = v2_phase(&state)?;
    let id = id.into_inner();
    let user = read_user(&state, &req, phase, id).await?;
    Ok(HttpResponse::Ok().json(V2User::new(user, phase)))
}

async fn update(
    state: web::Data<AppState>,
    id: web::Path<i64>,
    body: web::Json<UserBody>,
) -> Result<HttpResponse, AppError> {
    let phase = v2_phase(&state)?;
    let id = id.into_inner();
    let changes = UserChanges::try_from(body.into_inner())?;
    let email = changes.email.map(|e| e.as_str().to_owned());
    let user = super::update_user(&state, phase, id, changes.name, email).await?;
    Ok(HttpResponse::Ok().json(V2User::new(user, phase)))
}

async fn remove(state: web::Data<AppState>, id: web::Path<i64>) -> Result<HttpResponse, AppError> {
    v2_phase(&state)?;
    super::api_v1::remove(state, id).await
}
