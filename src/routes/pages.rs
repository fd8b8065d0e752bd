//! The user pages, one set of handlers for both versions: `/v1/users…` with one "Full name"
//! field and `/v2/users…` with "First name" and "Last name" (released at dual_write).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::render::{Caching, html, notice_text, see_other};
use super::{csrf, db, db_read, read_user, v2_phase};
use crate::app_state::AppState;
use crate::db::users::{self, StoredUser};
use crate::domain::Phase;
use crate::domain::user::FieldErrors;
use crate::domain::{FieldError, NewUser};
use crate::error::{AppError, HtmlError};

/// Users per page of the list.
pub const PAGE_SIZE: i64 = 25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    fn prefix(self) -> &'static str {
        match self {
            Version::V1 => "/v1/users",
            Version::V2 => "/v2/users",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        }
    }

    /// The phase to serve this page in; v2 pages do not exist before dual_write.
    fn phase(self, state: &AppState) -> Result<Phase, HtmlError> {
        match self {
            Version::V1 => Ok(state.phase.get()),
            Version::V2 => Ok(v2_phase(state)?),
        }
    }

    /// The phase whose code this version's writes follow (see `AppState::v1_write_phase`).
    fn write_phase(self, state: &AppState) -> Result<Phase, HtmlError> {
        match self {
            Version::V1 => Ok(state.v1_write_phase()),
            Version::V2 => Ok(v2_phase(state)?),
        }
    }

    /// The name columns of the list.
    fn name_headers(self) -> &'static [&'static str] {
        match self {
            Version::V1 => &["Full name"],
            Version::V2 => &["First name", "Last name"],
        }
    }

    fn name_cells(self, user: &StoredUser, phase: Phase) -> Vec<String> {
        match self {
            Version::V1 => vec![user.v1_full_name(phase)],
            Version::V2 => {
                let (first, last) = user.v2_name_parts(phase);
                vec![first, last]
            }
        }
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    for version in [Version::V1, Version::V2] {
        cfg.service(
            web::scope(version.prefix())
                .app_data(web::Data::new(version))
                .route("", web::get().to(list))
                .route("", web::post().to(create))
                .route("/new", web::get().to(new_form))
                .route("/{id}", web::post().to(update))
                .route("/{id}/edit", web::get().to(edit_form))
                .route("/{id}/delete", web::get().to(confirm_delete))
                .route("/{id}/delete", web::post().to(delete)),
        );
    }
}

/// Renders a page holding a form: the form gets the CSRF token, and the response sets its
/// cookie when the browser had none.
fn form_page<T: Template>(
    req: &HttpRequest,
    key: &[u8],
    status: StatusCode,
    page: impl FnOnce(String) -> T,
) -> Result<HttpResponse, HtmlError> {
    let (token, cookie) = csrf::form_token(req, key)?;
    let mut response = html(status, page(token), Caching::Default)?;
    if let Some(cookie) = cookie {
        response.add_cookie(&cookie).map_err(AppError::internal)?;
    }
    Ok(response)
}

/// What a finished action says on the list page.
const NOTICES: &[(&str, &str)] = &[
    ("created", "User created."),
    ("updated", "User saved."),
    ("deleted", "User deleted."),
];

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    after_id: Option<i64>,
    notice: Option<String>,
}

struct Row {
    id: i64,
    names: Vec<String>,
    email: String,
}

#[derive(Template)]
#[template(path = "users/list.html")]
struct ListPage {
    version: &'static str,
    prefix: &'static str,
    headers: &'static [&'static str],
    rows: Vec<Row>,
    after_id: i64,
    next_after_id: Option<i64>,
    notice: Option<&'static str>,
}

async fn list(
    req: HttpRequest,
    state: web::Data<AppState>,
    version: web::Data<Version>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, HtmlError> {
    let version = **version;
    let phase = version.phase(&state)?;
    let after_id = query.after_id.unwrap_or(0).max(0);
    let mut stored = db_read(&state, &req, move |conn| {
        Ok(users::list_users(conn, phase, after_id, PAGE_SIZE + 1)?)
    })
    .await?;
    let next_after_id = if stored.len() as i64 > PAGE_SIZE {
        stored.truncate(PAGE_SIZE as usize);
        stored.last().map(|u| u.id)
    } else {
        None
    };
    let rows = stored
        .iter()
        .map(|u| Row {
            id: u.id,
            names: version.name_cells(u, phase),
            email: u.email.clone(),
        })
        .collect();
    html(
        StatusCode::OK,
        ListPage {
            version: version.label(),
            prefix: version.prefix(),
            headers: version.name_headers(),
            rows,
            after_id,
            next_after_id,
            notice: notice_text(query.notice.as_deref(), NOTICES),
        },
        Caching::Default,
    )
}

/// The form's fields as typed; kept verbatim so a rejected form comes back as the user left it.
#[derive(Debug, Default, Deserialize)]
pub struct UserForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    full_name: String,
    #[serde(default)]
    first_name: String,
    #[serde(default)]
    last_name: String,
    #[serde(default)]
    email: String,
}

impl UserForm {
    fn from_stored(user: StoredUser, version: Version, phase: Phase) -> Self {
        let mut form = UserForm {
            email: user.email.clone(),
            ..UserForm::default()
        };
        match version {
            Version::V1 => form.full_name = user.v1_full_name(phase),
            Version::V2 => (form.first_name, form.last_name) = user.v2_name_parts(phase),
        }
        form
    }

    fn parse(&self, version: Version) -> Result<NewUser, FieldErrors> {
        match version {
            Version::V1 => NewUser::parse_v1(Some(&self.full_name), Some(&self.email)),
            Version::V2 => NewUser::parse_v2(
                Some(&self.first_name),
                Some(&self.last_name),
                Some(&self.email),
            ),
        }
    }
}

struct Field {
    name: &'static str,
    label: &'static str,
    kind: &'static str,
    autocomplete: &'static str,
    value: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "users/form.html")]
struct FormPage {
    version: &'static str,
    prefix: &'static str,
    /// `None` for a new user.
    id: Option<i64>,
    fields: Vec<Field>,
    csrf: String,
}

impl FormPage {
    fn new(
        version: Version,
        id: Option<i64>,
        form: UserForm,
        errors: &[FieldError],
        csrf: String,
    ) -> Self {
        let error_for = |field: &str| {
            errors
                .iter()
                .find(|e| e.field == field)
                .map(|e| e.message.clone())
        };
        let field = |name, label, autocomplete, value| Field {
            name,
            label,
            kind: "text",
            autocomplete,
            value,
            error: error_for(name),
        };
        let mut fields = match version {
            Version::V1 => vec![field("full_name", "Full name", "name", form.full_name)],
            Version::V2 => vec![
                field("first_name", "First name", "given-name", form.first_name),
                field("last_name", "Last name", "family-name", form.last_name),
            ],
        };
        fields.push(Field {
            kind: "email",
            ..field("email", "Email", "email", form.email)
        });
        Self {
            version: version.label(),
            prefix: version.prefix(),
            id,
            fields,
            csrf,
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
            Some(id) => format!("{}/{id}", self.prefix),
            None => self.prefix.to_owned(),
        }
    }
}

/// Re-renders the form for input refused by validation or by the database (duplicate
/// email); other errors become an error page.
fn form_rejected(
    req: &HttpRequest,
    key: &[u8],
    version: Version,
    id: Option<i64>,
    form: UserForm,
    err: AppError,
) -> Result<HttpResponse, HtmlError> {
    let (status, field_error) = match err {
        AppError::Conflict(field_error) => (StatusCode::CONFLICT, field_error),
        AppError::Validation(field_error) => (StatusCode::UNPROCESSABLE_ENTITY, field_error),
        other => return Err(other.into()),
    };
    form_page(req, key, status, |csrf| {
        FormPage::new(version, id, form, &[field_error], csrf)
    })
}

async fn new_form(
    req: HttpRequest,
    state: web::Data<AppState>,
    version: web::Data<Version>,
) -> Result<HttpResponse, HtmlError> {
    version.phase(&state)?;
    let key = csrf::user_form_key(&state).await?;
    form_page(&req, &key, StatusCode::OK, |csrf| {
        FormPage::new(**version, None, UserForm::default(), &[], csrf)
    })
}

async fn create(
    req: HttpRequest,
    state: web::Data<AppState>,
    version: web::Data<Version>,
    form: web::Form<UserForm>,
) -> Result<HttpResponse, HtmlError> {
    let version = **version;
    let phase = version.write_phase(&state)?;
    let form = form.into_inner();
    let key = csrf::user_form_key(&state).await?;
    csrf::check_form(&req, &key, &form.csrf)?;
    let new = match form.parse(version) {
        Ok(new) => new,
        Err(errors) => {
            return form_page(&req, &key, StatusCode::UNPROCESSABLE_ENTITY, |csrf| {
                FormPage::new(version, None, form, &errors, csrf)
            });
        }
    };
    match db(&state, move |conn| {
        Ok(users::insert_user(
            conn,
            phase,
            &new.name,
            new.email.as_str(),
        )?)
    })
    .await
    {
        Ok(user) => Ok(see_other(
            &format!(
                "{}?after_id={}&notice=created",
                version.prefix(),
                user.id - 1
            ),
            Caching::Default,
        )),
        Err(err) => form_rejected(&req, &key, version, None, form, err),
    }
}

/// The user a page shows, read the way `version` reads in this instance's phase.
async fn find_for_page(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    version: Version,
    id: i64,
) -> Result<(StoredUser, Phase), HtmlError> {
    let phase = version.phase(state)?;
    let user = read_user(state, req, phase, id).await?;
    Ok((user, phase))
}

async fn edit_form(
    req: HttpRequest,
    state: web::Data<AppState>,
    version: web::Data<Version>,
    id: web::Path<i64>,
) -> Result<HttpResponse, HtmlError> {
    let (version, id) = (**version, id.into_inner());
    let (user, phase) = find_for_page(&state, &req, version, id).await?;
    let form = UserForm::from_stored(user, version, phase);
    let key = csrf::user_form_key(&state).await?;
    form_page(&req, &key, StatusCode::OK, |csrf| {
        FormPage::new(version, Some(id), form, &[], csrf)
    })
}

async fn update(
    req: HttpRequest,
    state: web::Data<AppState>,
    version: web::Data<Version>,
    id: web::Path<i64>,
    form: web::Form<UserForm>,
) -> Result<HttpResponse, HtmlError> {
    let version = **version;
    let phase = version.write_phase(&state)?;
    let id = id.into_inner();
    let form = form.into_inner();
    let key = csrf::user_form_key(&state).await?;
    csrf::check_form(&req, &key, &form.csrf)?;
    let valid = match form.parse(version) {
        Ok(valid) => valid,
        Err(errors) => {
            return form_page(&req, &key, StatusCode::UNPROCESSABLE_ENTITY, |csrf| {
                FormPage::new(version, Some(id), form, &errors, csrf)
            });
        }
    };
    let email = valid.email.as_str().to_owned();
    let saved = super::update_user(&state, phase, id, Some(valid.name), Some(email)).await;
    match saved {
        Ok(user) => Ok(see_other(
            &format!(
                "{}?after_id={}&notice=updated",
                version.prefix(),
                user.id - 1
            ),
            Caching::Default,
        )),
        Err(err) => form_rejected(&req, &key, version, Some(id), form, err),
    }
}

#[derive(Template)]
#[template(path = "users/delete.html")]
struct DeletePage {
    version: &'static str,
    prefix: &'static str,
    id: i64,
    name: String,
    email: String,
    csrf: String,
}

async fn confirm_delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    version: web::Data<Version>,
    id: web::Path<i64>,
) -> Result<HttpResponse, HtmlError> {
    let (version, id) = (**version, id.into_inner());
    let (user, phase) = find_for_page(&state, &req, version, id).await?;
    let key = csrf::user_form_key(&state).await?;
    form_page(&req, &key, StatusCode::OK, |csrf| DeletePage {
        version: version.label(),
        prefix: version.prefix(),
        id,
        name: version.name_cells(&user, phase).join(" "),
        email: user.email,
        csrf,
    })
}

#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    csrf: String,
}

async fn delete(
    req: HttpRequest,
    state: web::Data<AppState>,
    version: web::Data<Version>,
    id: web::Path<i64>,
    form: web::Form<DeleteForm>,
) -> Result<HttpResponse, HtmlError> {
    let version = **version;
    version.phase(&state)?;
    let key = csrf::user_form_key(&state).await?;
    csrf::check_form(&req, &key, &form.csrf)?;
    let id = id.into_inner();
    db(&state, move |conn| Ok(users::delete_user(conn, id)?)).await?;
    Ok(see_other(
        &format!("{}?notice=deleted", version.prefix()),
        Caching::Default,
    ))
}
