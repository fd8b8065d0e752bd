//! The home page and the health check.

use actix_web::{HttpResponse, web};
use askama::Template;
use serde_json::json;

use super::db;
use crate::app_state::AppState;
use crate::db::users::{self, UserCount};
use crate::domain::Phase;
use crate::error::{AppError, HtmlError};

struct PhaseStep {
    name: &'static str,
    summary: &'static str,
    done: bool,
    current: bool,
}

#[derive(Template)]
#[template(path = "index.html")]
struct HomePage {
    phase: Phase,
    steps: Vec<PhaseStep>,
    /// "12", "about 1,000,000" or "more than 10,000".
    user_count: String,
    v2_released: bool,
}

/// Up to this many users the home page counts them; beyond, it shows the planner's estimate.
/// Anyone can load the page, so what it costs must not grow with the table (a full count
/// takes about a second at 10 M rows).
const EXACT_COUNT_UP_TO: i64 = 10_000;

/// A count with thousands separators.
fn thousands(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn count_text(count: UserCount) -> String {
    match count {
        UserCount::Exact(n) => thousands(n),
        UserCount::About(n) => format!("about {}", thousands(n)),
        UserCount::MoreThan(n) => format!("more than {}", thousands(n)),
    }
}

pub async fn index(state: web::Data<AppState>) -> Result<HttpResponse, HtmlError> {
    let phase = state.phase.get();
    let user_count = db(&state, |conn| {
        Ok(users::count_users_cheaply(conn, EXACT_COUNT_UP_TO)?)
    })
    .await?;
    let steps = Phase::ALL
        .into_iter()
        .map(|p| PhaseStep {
            name: p.as_str(),
            summary: p.summary(),
            done: p < phase,
            current: p == phase,
        })
        .collect();
    let page = HomePage {
        phase,
        steps,
        user_count: count_text(user_count),
        v2_released: phase.v2_released(),
    };
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page.render()?))
}

/// 200 with this instance's applied phase when the database answers, 503 when it does not.
pub async fn healthz(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    db(&state, |conn| {
        diesel::RunQueryDsl::execute(diesel::sql_query("SELECT 1"), conn)?;
        Ok(())
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ok",
        "phase": state.phase.get().as_str(),
        "instance": state.instance_id,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_as_numbers() {
        assert_eq!(count_text(UserCount::Exact(0)), "0");
        assert_eq!(count_text(UserCount::Exact(9_999)), "9,999");
        assert_eq!(count_text(UserCount::About(1_234_567)), "about 1,234,567");
        assert_eq!(count_text(UserCount::MoreThan(10_000)), "more than 10,000");
    }
}
