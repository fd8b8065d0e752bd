//! The v1 HTML pages: list, create, edit and delete users with one "Full name" field.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::db;
use crate::db::DbPool;
use crate::db::users_v1::{self, NewUserV1, UserChangesV1, UserV1};
use crate::domain::{FieldError, NewUser, user::FieldErrors};
use crate::error::{AppError, HtmlError};

/// Users per page of the list.
pub const PAGE_SIZE: i64 = 25;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/v1/users")
            .route("", web::get().to(list))
            .route("", web::post().to(create))
            .route("/new", web::get().to(new_form))
            .route("/{id}", web::post().to(update))
            .route("/{id}/edit", web::get().to(edit_form))
            .route("/{id}/delete", web::get().to(confirm_delete))
            .route("/{id}/delete", web::post().to(delete)),
    );
}

fn html(status: StatusCode, page: impl Template) -> Result<HttpResponse, HtmlError> {
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(page.render()?))
}

fn see_other(location: String) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// What a finished action says on the list page; fixed texts, never echoed input.
fn notice_text(code: Option<&str>) -> Option<&'static str> {
    match code? {
        "created" => Some("User created."),
        "updated" => Some("User saved."),
        "deleted" => Some("User deleted."),
        _ => None,
    }
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after_id: Option<i64>,
    notice: Option<String>,
}

#[derive(Template)]
#[template(path = "v1/users_list.html")]
struct ListPage {
    users: Vec<UserV1>,
    after_id: i64,
    next_after_id: Option<i64>,
    notice: Option<&'static str>,
}

async fn list(
    pool: web::Data<DbPool>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, HtmlError> {
    let after_id = query.after_id.unwrap_or(0).max(0);
    let mut users = db(&pool, move |conn| {
        Ok(users_v1::list_users(conn, after_id, PAGE_SIZE + 1)?)
    })
    .await?;
    let next_after_id = if users.len() as i64 > PAGE_SIZE {
        users.truncate(PAGE_SIZE as usize);
        users.last().map(|u| u.id)
    } else {
        None
    };
    html(
        StatusCode::OK,
        ListPage {
            users,
            after_id,
            next_after_id,
            notice: notice_text(query.notice.as_deref()),
        },
    )
}

/// The form's fields as typed; kept verbatim so a rejected form comes back as the user left it.
#[derive(Debug, Default, Deserialize)]
pub struct UserForm {
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    email: String,
}

#[derive(Template)]
#[template(path = "v1/user_form.html")]
struct FormPage {
    /// `None` for a new user.
    id: Option<i64>,
    form: UserForm,
    full_name_error: Option<String>,
    email_error: Option<String>,
}

impl FormPage {
    fn new(id: Option<i64>, form: UserForm, errors: &[FieldError]) -> Self {
        let error_for = |field: &str| {
            errors
                .iter()
                .find(|e| e.field == field)
                .map(|e| e.message.clone())
        };
        Self {
            id,
            full_name_error: error_for("full_name"),
            email_error: error_for("email"),
            form,
        }
    }

    fn title(&self) -> String {
        match self.id {
            Some(id) => format!("Edit user #{id}"),
            None => "New user".to_owned(),
        }
    }

    fn action(&self) -> String {
        match self.id {
            Some(id) => format!("/v1/users/{id}"),
            None => "/v1/users".to_owned(),
        }
    }
}

impl TryFrom<&UserForm> for NewUserV1 {
    type Error = FieldErrors;

    fn try_from(form: &UserForm) -> Result<Self, FieldErrors> {
        let user = NewUser::parse(Some(&form.full_name), Some(&form.email))?;
        Ok(NewUserV1 {
            full_name: user.full_name.into_inner(),
            email: user.email.into_inner(),
        })
    }
}

/// Re-renders the form for input the database refused (duplicate email); other errors
/// become an error page.
fn form_rejected(
    id: Option<i64>,
    form: UserForm,
    err: AppError,
) -> Result<HttpResponse, HtmlError> {
    match err {
        AppError::Conflict(field_error) => html(
            StatusCode::CONFLICT,
            FormPage::new(id, form, &[field_error]),
        ),
        AppError::Validation(field_error) => html(
            StatusCode::UNPROCESSABLE_ENTITY,
            FormPage::new(id, form, &[field_error]),
        ),
        other => Err(other.into()),
    }
}

async fn new_form() -> Result<HttpResponse, HtmlError> {
    html(
        StatusCode::OK,
        FormPage::new(None, UserForm::default(), &[]),
    )
}

async fn create(
    pool: web::Data<DbPool>,
    form: web::Form<UserForm>,
) -> Result<HttpResponse, HtmlError> {
    let form = form.into_inner();
    let new = match NewUserV1::try_from(&form) {
        Ok(new) => new,
        Err(errors) => {
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                FormPage::new(None, form, &errors),
            );
        }
    };
    match db(&pool, move |conn| Ok(users_v1::insert_user(conn, &new)?)).await {
        Ok(user) => Ok(see_other(format!(
            "/v1/users?after_id={}&notice=created",
            user.id - 1
        ))),
        Err(err) => form_rejected(None, form, err),
    }
}

async fn edit_form(pool: web::Data<DbPool>, id: web::Path<i64>) -> Result<HttpResponse, HtmlError> {
    let id = id.into_inner();
    let user = db(&pool, move |conn| Ok(users_v1::find_user(conn, id)?)).await?;
    let form = UserForm {
        full_name: user.full_name,
        email: user.email,
    };
    html(StatusCode::OK, FormPage::new(Some(id), form, &[]))
}

async fn update(
    pool: web::Data<DbPool>,
    id: web::Path<i64>,
    form: web::Form<UserForm>,
) -> Result<HttpResponse, HtmlError> {
    let id = id.into_inner();
    let form = form.into_inner();
    let changes = match NewUserV1::try_from(&form) {
        Ok(valid) => UserChangesV1 {
            full_name: Some(valid.full_name),
            email: Some(valid.email),
        },
        Err(errors) => {
            return html(
                StatusCode::UNPROCESSABLE_ENTITY,
                FormPage::new(Some(id), form, &errors),
            );
        }
    };
    match db(&pool, move |conn| {
        Ok(users_v1::update_user(conn, id, &changes)?)
    })
    .await
    {
        Ok(user) => Ok(see_other(format!(
            "/v1/users?after_id={}&notice=updated",
            user.id - 1
        ))),
        Err(err) => form_rejected(Some(id), form, err),
    }
}

#[derive(Template)]
#[template(path = "v1/user_delete.html")]
struct DeletePage {
    user: UserV1,
}

async fn confirm_delete(
    pool: web::Data<DbPool>,
    id: web::Path<i64>,
) -> Result<HttpResponse, HtmlError> {
    let id = id.into_inner();
    let user = db(&pool, move |conn| Ok(users_v1::find_user(conn, id)?)).await?;
    html(StatusCode::OK, DeletePage { user })
}

async fn delete(pool: web::Data<DbPool>, id: web::Path<i64>) -> Result<HttpResponse, HtmlError> {
    let id = id.into_inner();
    db(&pool, move |conn| Ok(users_v1::delete_user(conn, id)?)).await?;
    Ok(see_other("/v1/users?notice=deleted".to_owned()))
}
