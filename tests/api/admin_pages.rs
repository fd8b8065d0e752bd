//! The admin dashboard: log-in, session cookie, CSRF, and driving the migration by form.

use reqwest::header::{COOKIE, SET_COOKIE};
use zdm::domain::Phase;
use zdm::migration::backfill::{self, BackfillState};

use crate::helpers::{ADMIN_TOKEN, TestApp};

/// Logs in through the form and returns the session cookie (`name=value`).
pub async fn log_in(app: &TestApp) -> String {
    let response = app
        .post_form("/admin/login", &[("token", ADMIN_TOKEN)])
        .await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/admin");
    let set_cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    set_cookie.split(';').next().unwrap().to_owned()
}

/// `GET path` with the session cookie: the status and the body.
pub async fn page(app: &TestApp, cookie: &str, path: &str) -> (u16, String) {
    let response = app
        .client
        .get(app.url(path))
        .header(COOKIE, cookie)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The CSRF token of a page's forms.
pub fn csrf_of(page: &str) -> String {
    page.split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF field")
        .to_owned()
}

async fn post(
    app: &TestApp,
    cookie: &str,
    path: &str,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .header(COOKIE, cookie)
        .form(fields)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn the_dashboard_needs_a_login() {
    let app = TestApp::spawn().await;
    let response = app.get("/admin").await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], "/admin/login");
    assert_eq!(app.get("/admin/status.json").await.status(), 401);
    let response = app
        .client
        .post(app.url("/admin/advance"))
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(app.phase(), Phase::Baseline);

    let wrong = app.post_form("/admin/login", &[("token", "guess")]).await;
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().get(SET_COOKIE).is_none());
    let wrong = wrong.text().await.unwrap();
    // Plain words: the page shows the message as text, where backticks would stay backticks.
    assert!(
        wrong.contains(
            "That is not the admin token. It is ADMIN_TOKEN, or the one zdm serve printed when it started."
        ),
        "{wrong}"
    );
    assert!(!wrong.contains('`'), "{wrong}");

    let forged = "zdm_admin=forged-session-id";
    let (status, _) = page(&app, forged, "/admin/status.json").await;
    assert_eq!(status, 401, "a made-up session is no session");
}

#[actix_web::test]
async fn a_logged_in_admin_drives_the_migration_with_forms() {
    let app = TestApp::spawn().await;
    app.create_user("Ada Lovelace", "ada@example.com").await;
    let cookie = log_in(&app).await;
    let response = app
        .client
        .get(app.url("/admin"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let dashboard = response.text().await.unwrap();
    assert!(dashboard.contains(r#"data-phase="baseline""#));
    assert!(dashboard.contains("Advance to expanded"));
    assert!(
        dashboard.contains(&app.instance_id),
        "the instances table lists this instance"
    );
    assert!(
        dashboard.contains("Recent p99"),
        "with the latency each instance reports"
    );
    let csrf = csrf_of(&dashboard);

    // Without the CSRF token nothing happens.
    let response = post(&app, &cookie, "/admin/advance", &[]).await;
    assert_eq!(response.status(), 403);
    assert_eq!(app.phase(), Phase::Baseline);

    for to in [Phase::Expanded, Phase::DualWrite] {
        let response = post(&app, &cookie, "/admin/advance", &[("csrf", &csrf)]).await;
        assert_eq!(response.status(), 303);
        app.wait_for_phase(to).await;
    }
    // Before the backfill: it says it has not started, and the verification the step runs
    // itself is not shown as unmet.
    let (_, dashboard) = page(&app, &cookie, "/admin").await;
    assert!(
        dashboard.contains("the backfill has not started"),
        "{dashboard}"
    );
    assert!(!dashboard.contains("0 of 0 rows"), "{dashboard}");
    let (_, json) = page(&app, &cookie, "/admin/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let verify_gate = status["next_gates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "verify")
        .expect("the verify gate");
    assert_eq!(verify_gate["mark"], "on_advance", "{verify_gate}");
    assert_eq!(verify_gate["symbol"], "↻");

    // An unmet gate comes back as the dashboard with the reason.
    let response = post(&app, &cookie, "/admin/advance", &[("csrf", &csrf)]).await;
    assert_eq!(response.status(), 409);
    assert!(response.text().await.unwrap().contains("backfill gate"));

    let response = post(
        &app,
        &cookie,
        "/admin/backfill/start",
        &[("csrf", &csrf), ("batch_size", "abc")],
    )
    .await;
    assert_eq!(response.status(), 422, "a bad knob is refused");
    let response = post(
        &app,
        &cookie,
        "/admin/backfill/start",
        &[("csrf", &csrf), ("batch_size", "1000"), ("sleep_ms", "0")],
    )
    .await;
    assert_eq!(response.status(), 303);
    let done = app
        .wait_for_backfill("the backfill to finish", |b| b["state"] == "done")
        .await;
    assert_eq!(done["rows_done"], done["rows_total"]);
    // The history says who started it.
    let (_, json) = page(&app, &cookie, "/admin/status.json").await;
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    let started = status["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["action"] == "backfill" && h["detail"] == "start")
        .expect("the backfill's start in the history");
    assert!(
        started["actor"].as_str().unwrap().starts_with("session:"),
        "{started}"
    );
    let (_, dashboard) = page(&app, &cookie, "/admin").await;
    assert!(
        dashboard.contains(r#"<progress id="backfill-progress" max="100" value="100.0""#),
        "the bar is full"
    );

    for to in [Phase::Backfilled, Phase::ReadNew, Phase::NewOnly] {
        let response = post(&app, &cookie, "/admin/advance", &[("csrf", &csrf)]).await;
        assert_eq!(response.status(), 303, "to {to}");
        app.wait_for_phase(to).await;
    }
    let (_, dashboard) = page(&app, &cookie, "/admin").await;
    assert!(dashboard.contains("Type <code>users.full_name</code> to drop the column"));
    let response = post(
        &app,
        &cookie,
        "/admin/advance",
        &[("csrf", &csrf), ("confirm", "users")],
    )
    .await;
    assert_eq!(response.status(), 409, "the wrong confirmation is refused");
    let response = post(
        &app,
        &cookie,
        "/admin/advance",
        &[("csrf", &csrf), ("confirm", "users.full_name")],
    )
    .await;
    assert_eq!(response.status(), 303);
    app.wait_for_phase(Phase::Contracted).await;

    // The drop can be undone from the page too.
    let (_, dashboard) = page(&app, &cookie, "/admin").await;
    assert!(dashboard.contains("Roll back to new_only"), "{dashboard}");
    let response = post(&app, &cookie, "/admin/rollback", &[("csrf", &csrf)]).await;
    assert_eq!(response.status(), 303);
    app.wait_for_phase(Phase::NewOnly).await;

    let response = post(&app, &cookie, "/admin/logout", &[("csrf", &csrf)]).await;
    assert_eq!(response.status(), 303);
    let (status, _) = page(&app, &cookie, "/admin/status.json").await;
    assert_eq!(status, 401, "the session ended");
}

#[actix_web::test]
async fn the_dashboard_links_the_last_demo_report() {
    let app = TestApp::spawn().await;
    let cookie = log_in(&app).await;
    let (_, dashboard) = page(&app, &cookie, "/admin").await;
    assert!(
        !dashboard.contains("/admin/demo-report"),
        "no report yet, no link"
    );
    std::fs::create_dir_all(&app.report_dir).unwrap();
    std::fs::write(
        app.report_dir.join(zdm::routes::admin_pages::DEMO_REPORT),
        "<html><body>report body</body></html>",
    )
    .unwrap();
    let (_, dashboard) = page(&app, &cookie, "/admin").await;
    assert!(dashboard.contains(r#"<a href="/admin/demo-report">"#));
    let response = app
        .client
        .get(app.url("/admin/demo-report"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'")
    );
    assert!(response.text().await.unwrap().contains("report body"));
    assert_eq!(
        app.get("/admin/demo-report").await.status(),
        303,
        "log-in first"
    );
    std::fs::remove_dir_all(&app.report_dir).unwrap();
}

#[actix_web::test]
async fn an_interrupted_backfill_is_shown_with_why_and_resumed_from_the_page() {
    let app = TestApp::spawn().await;
    app.seed(20_000);
    app.walk_to(Phase::DualWrite).await;
    // A runner (on a thread of the test) whose session dies after 5 batches, as in a database
    // restart, before it can record anything.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let runner = {
        let url = app.db.url.clone();
        std::thread::spawn(move || {
            use diesel::Connection;
            let mut conn = diesel::PgConnection::establish(&url).unwrap();
            backfill::set_knobs(&mut conn, backfill::Knobs::fixed(1000, 0)).unwrap();
            backfill::run(&mut conn, backfill::Direction::Forward, |s| {
                if s.batches == 5 {
                    held_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                }
            })
        })
    };
    held_rx.recv().unwrap();
    let mut conn = app.db.conn();
    for pid in crate::helpers::backfill_runner_pids(&mut conn) {
        diesel::RunQueryDsl::execute(
            diesel::sql_query(format!("SELECT pg_terminate_backend({pid})")),
            &mut conn,
        )
        .unwrap();
    }
    go_tx.send(()).unwrap();
    assert!(
        runner.join().unwrap().is_err(),
        "the runner lost its session"
    );
    // Its lock goes as its session ends, which may come just after the runner heard of it.
    crate::helpers::eventually("the runner's session to end", || {
        crate::helpers::backfill_runner_pids(&mut conn).is_empty()
    })
    .await;

    let cookie = log_in(&app).await;
    let (status, html) = page(&app, &cookie, "/admin").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("The backfill was interrupted at id 5000 of 20000: no runner holds"),
        "{html}"
    );
    assert!(html.contains("Resume from id 5000"), "{html}");
    // Without a script the page still renders the gates as they stand.
    assert!(
        html.contains("the backfill is interrupted (5000 of 20000 rows); run it to the end"),
        "{html}"
    );
    let resumed = post(
        &app,
        &cookie,
        "/admin/backfill/resume",
        &[("csrf", &csrf_of(&html))],
    )
    .await;
    assert_eq!(resumed.status(), 303);
    assert_eq!(
        resumed.headers()["location"],
        "/admin?notice=backfill_resume"
    );
    crate::helpers::eventually("the resumed backfill to finish", || {
        backfill::status(&mut conn).unwrap().state == BackfillState::Done
    })
    .await;
    let (_, html) = page(&app, &cookie, "/admin").await;
    assert!(!html.contains("backfill-stopped"), "{html}");
    assert_eq!(backfill::status(&mut conn).unwrap().rows_done, 20_000);
}

#[actix_web::test]
async fn the_dashboard_sets_the_workers_and_shows_one_bar_per_worker() {
    let app = TestApp::spawn().await;
    app.seed(20_000);
    app.walk_to(Phase::DualWrite).await;
    let cookie = log_in(&app).await;
    let (_, html) = page(&app, &cookie, "/admin").await;
    assert!(
        html.contains(r#"<option value="1" selected>1</option>"#),
        "{html}"
    );
    let csrf = csrf_of(&html);
    // A knob out of range, and auto on an instance without a p99 budget, are refused.
    for workers in ["0", "seventeen", "auto"] {
        let refused = post(
            &app,
            &cookie,
            "/admin/backfill/settings",
            &[("csrf", &csrf), ("workers", workers)],
        )
        .await;
        assert_eq!(refused.status(), 422, "workers={workers}");
        let html = refused.text().await.unwrap();
        assert!(html.contains("workers"), "{html}");
    }
    let started = post(
        &app,
        &cookie,
        "/admin/backfill/start",
        &[
            ("csrf", &csrf),
            ("batch_size", "200"),
            ("sleep_ms", "30"),
            ("batch_target_ms", "0"),
            ("workers", "2"),
        ],
    )
    .await;
    assert_eq!(started.status(), 303);
    let mut conn = app.db.conn();
    crate::helpers::eventually("two workers on ranges of their own", || {
        let ranges = backfill::ranges(&mut conn).unwrap();
        ranges
            .iter()
            .filter(|r| !r.is_done() && r.worker.is_some())
            .count()
            == 2
    })
    .await;
    let (_, html) = page(&app, &cookie, "/admin").await;
    assert!(
        html.contains(r#"Workers: <span id="backfill-workers">2</span> (knob: <span id="backfill-workers-setting">2</span>; auto rule: <span id="backfill-workers-rule">zone</span>)"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<option value="2" selected>2</option>"#),
        "{html}"
    );
    for worker in ["worker 1", "worker 2"] {
        assert!(
            html.contains(&format!(r#"<span class="worker-label">{worker}</span>"#)),
            "{worker}: {html}"
        );
    }
    assert!(html.contains("set to 2"), "the reason: {html}");
    let paused = post(&app, &cookie, "/admin/backfill/pause", &[("csrf", &csrf)]).await;
    assert_eq!(paused.status(), 303);
    crate::helpers::eventually("the runner to stop", || {
        crate::helpers::backfill_runner_pids(&mut conn).is_empty()
    })
    .await;
    // Paused: the ranges left wait for the next run.
    let (_, html) = page(&app, &cookie, "/admin").await;
    assert!(
        html.contains(r#"<span class="worker-label">waiting</span>"#),
        "{html}"
    );
    assert!(
        !html.contains(r#"<span class="worker-label">worker"#),
        "{html}"
    );
}
