//! What the admin API and the dashboard take from a client: a step that names the phase it
//! starts from, and bodies that are refused rather than half understood.

use std::sync::Arc;

use reqwest::header::COOKIE;
use serde_json::json;
use zdm::domain::Phase;
use zdm::migration::state;

use crate::admin_pages::{csrf_of, log_in, page};
use crate::helpers::{ADMIN_TOKEN, TestApp, TestDb, error_of};

/// The outcomes of the history's steps (advances and rollbacks), newest first.
fn step_outcomes(app: &TestApp) -> Vec<(String, String, String)> {
    state::history(&mut app.db.conn(), 100)
        .unwrap()
        .into_iter()
        .filter(|h| h.action == "advance" || h.action == "rollback")
        .map(|h| (h.action, h.to_phase, h.outcome))
        .collect()
}

#[actix_web::test]
async fn many_advances_from_the_same_phase_take_one_step_and_tell_the_others_where_it_is() {
    let db = Arc::new(TestDb::migrated());
    let a = TestApp::spawn_on(db.clone()).await;
    let b = TestApp::spawn_on(db).await;
    // Twelve operators (or retries) on two instances, each pressing "Advance" once on a page
    // that showed baseline.
    let presses = (0..12).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        app.admin_post(
            "/api/admin/migration/advance",
            json!({ "from": "baseline" }),
        )
    });
    let responses = futures_util::future::join_all(presses).await;
    let mut stepped = 0;
    for response in responses {
        match response.status().as_u16() {
            200 => stepped += 1,
            409 => {
                let error = error_of(response).await;
                assert!(
                    error.contains("expanded") && error.contains("baseline"),
                    "a stale press says where the migration is: {error}"
                );
            }
            other => panic!("unexpected {other}: {}", response.text().await.unwrap()),
        }
    }
    assert_eq!(stepped, 1, "exactly one step");
    a.wait_for_phase(Phase::Expanded).await;
    b.wait_for_phase(Phase::Expanded).await;
    assert_eq!(
        step_outcomes(&a),
        [("advance".into(), "expanded".into(), "done".into())],
        "one step done, nothing recorded as failed"
    );

    // A rollback that names a phase the migration has left takes no step either.
    let stale = a
        .admin_post(
            "/api/admin/migration/rollback",
            json!({ "from": "dual_write" }),
        )
        .await;
    assert_eq!(stale.status(), 409);
    assert!(error_of(stale).await.contains("the phase is expanded"));
    let right = a
        .admin_post(
            "/api/admin/migration/rollback",
            json!({ "from": "expanded" }),
        )
        .await;
    assert_eq!(right.status(), 200);
    a.wait_for_phase(Phase::Baseline).await;

    // A phase that does not exist is a bad field, not a step.
    let response = a
        .admin_post(
            "/api/admin/migration/advance",
            json!({ "from": "dual-write" }),
        )
        .await;
    assert_eq!(response.status(), 422);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["field"], "from", "{error}");

    // Without `from`, a step goes from wherever the migration is, as before.
    assert_eq!(a.advance(None).await.status(), 200);
    a.wait_for_phase(Phase::Expanded).await;
    assert!(
        step_outcomes(&a)
            .iter()
            .all(|(_, _, outcome)| outcome == "done")
    );
}

#[actix_web::test]
async fn the_dashboard_sends_the_phase_it_showed_and_a_stale_form_takes_no_step() {
    let app = TestApp::spawn().await;
    let cookie = log_in(&app).await;
    let (_, dashboard) = page(&app, &cookie, "/admin").await;
    assert!(
        dashboard.contains(r#"name="from" value="baseline""#),
        "both step forms carry the phase shown"
    );
    let csrf = csrf_of(&dashboard);
    let press = || {
        app.client
            .post(app.url("/admin/advance"))
            .header(COOKIE, &cookie)
            .form(&[("csrf", csrf.as_str()), ("from", "baseline")])
            .send()
    };
    assert_eq!(press().await.unwrap().status(), 303);
    app.wait_for_phase(Phase::Expanded).await;
    // The same form sent again (a double click, a resubmitted page) is refused, saying where
    // the migration is.
    let again = press().await.unwrap();
    assert_eq!(again.status(), 409);
    let text = again.text().await.unwrap();
    assert!(text.contains("the phase is expanded"), "{text}");
    assert_eq!(app.phase(), Phase::Expanded);
    let stale_rollback = app
        .client
        .post(app.url("/admin/rollback"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str()), ("from", "dual_write")])
        .send()
        .await
        .unwrap();
    assert_eq!(stale_rollback.status(), 409);
    assert_eq!(app.phase(), Phase::Expanded);
    assert_eq!(
        step_outcomes(&app),
        [("advance".into(), "expanded".into(), "done".into())]
    );
}

#[actix_web::test]
async fn the_cli_takes_a_step_only_from_the_phase_it_names() {
    let app = TestApp::spawn().await;
    let zdm = |args: &[&str]| {
        crate::helpers::zdm_command()
            .args(args)
            .env("DATABASE_URL", &app.db.url)
            .env("RUST_LOG", "error")
            .output()
            .unwrap()
    };
    let stale = zdm(&["migrate", "advance", "--from", "expanded"]);
    assert!(!stale.status.success());
    let stderr = String::from_utf8_lossy(&stale.stderr);
    assert!(stderr.contains("the phase is baseline"), "{stderr}");
    assert_eq!(app.phase(), Phase::Baseline);

    let ok = zdm(&["migrate", "advance", "--from", "baseline"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    app.wait_for_phase(Phase::Expanded).await;
    let stale = zdm(&["migrate", "rollback", "--from", "baseline"]);
    assert!(!stale.status.success());
    assert_eq!(app.phase(), Phase::Expanded);
    let unknown = zdm(&["migrate", "rollback", "--from", "nowhere"]);
    assert!(!unknown.status.success());
    assert_eq!(app.phase(), Phase::Expanded);
    let ok = zdm(&["migrate", "rollback", "--from", "expanded"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    app.wait_for_phase(Phase::Baseline).await;
}

/// POSTs `body` as it is (not re-encoded) to the admin API with the token.
async fn admin_raw(app: &TestApp, path: &str, body: &str) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// The `field` of a 422, after checking that it is one.
async fn refused_field(response: reqwest::Response, what: &str) -> String {
    assert_eq!(response.status(), 422, "{what}");
    let error: serde_json::Value = response.json().await.unwrap();
    error["field"].as_str().unwrap_or_default().to_owned()
}

/// Nothing in the history but what the walk to the test's phase did: no failed step, no
/// action asked.
fn assert_nothing_recorded_since(app: &TestApp, before: usize) {
    let history = state::history(&mut app.db.conn(), 1000).unwrap();
    assert!(history.iter().all(|h| h.outcome != "failed"), "{history:?}");
    assert_eq!(
        history.len(),
        before,
        "{:?}",
        &history[..history.len() - before]
    );
}

#[actix_web::test]
async fn a_nul_byte_in_an_admin_text_field_is_a_bad_field_and_records_nothing() {
    let app = TestApp::spawn().await;
    app.walk_to(Phase::DualWrite).await;
    let before = state::history(&mut app.db.conn(), 1000).unwrap().len();
    for (path, body, field) in [
        (
            "/api/admin/migration/advance",
            r#"{"confirm":"users.full_name\u0000"}"#,
            "confirm",
        ),
        (
            "/api/admin/migration/advance",
            r#"{"from":"dual_write\u0000"}"#,
            "from",
        ),
        (
            "/api/admin/migration/rollback",
            r#"{"from":"dual_write\u0000"}"#,
            "from",
        ),
        (
            "/api/admin/backfill/start",
            r#"{"workers":"auto\u0000"}"#,
            "workers",
        ),
        (
            "/api/admin/backfill/settings",
            r#"{"workers":"2\u0000"}"#,
            "workers",
        ),
    ] {
        let response = admin_raw(&app, path, body).await;
        assert_eq!(refused_field(response, body).await, field, "{path} {body}");
    }
    // The dashboard's forms alike.
    let cookie = log_in(&app).await;
    let (_, dashboard) = page(&app, &cookie, "/admin").await;
    let csrf = csrf_of(&dashboard);
    for (path, fields, field) in [
        ("/admin/advance", "confirm=users.full_name%00", "confirm"),
        ("/admin/advance", "from=dual_write%00", "from"),
        ("/admin/rollback", "from=dual_write%00", "from"),
        ("/admin/backfill/start", "workers=auto%00", "workers"),
        (
            "/admin/backfill/settings",
            "batch_size=100%00",
            "batch_size",
        ),
    ] {
        let response = app
            .client
            .post(app.url(path))
            .header(COOKIE, &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}&{fields}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 422, "{path} {fields}");
        let text = response.text().await.unwrap();
        assert!(text.contains(field), "{path} {fields}: {text}");
    }
    // The token and the CSRF token are compared, never stored: a NUL is just a wrong one.
    let token_and_nul = format!("token={ADMIN_TOKEN}%00");
    for (path, body, cookie, status) in [
        ("/admin/login", token_and_nul.as_str(), "", 401),
        ("/admin/advance", "csrf=%00", cookie.as_str(), 403),
    ] {
        let response = app
            .client
            .post(app.url(path))
            .header(COOKIE, cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path} {body}");
    }
    assert_eq!(app.phase(), Phase::DualWrite);
    assert_eq!(app.admin_status().await["backfill"]["state"], "idle");
    assert_nothing_recorded_since(&app, before);
}

#[actix_web::test]
async fn unknown_fields_and_positional_bodies_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    app.walk_to(Phase::DualWrite).await;
    let before = state::history(&mut app.db.conn(), 1000).unwrap().len();
    let knobs = |status: serde_json::Value| {
        let b = &status["backfill"];
        (b["batch_size"].clone(), b["sleep_ms"].clone())
    };
    let stored = knobs(app.admin_status().await);
    assert!(stored.0.is_i64() && stored.1.is_i64(), "{stored:?}");
    let mut cases = vec![
        (
            "/api/admin/migration/advance",
            r#"{"withoutClientCheck":true}"#,
            "withoutClientCheck",
        ),
        (
            "/api/admin/migration/rollback",
            r#"{"confirm":"users.full_name"}"#,
            "confirm",
        ),
        (
            "/api/admin/backfill/settings",
            r#"{"sleepms":5000}"#,
            "sleepms",
        ),
        ("/api/admin/backfill/pause", r#"{"now":true}"#, "now"),
        ("/api/admin/backfill/cancel", r#"{"now":true}"#, "now"),
        ("/api/admin/verify", r#"{"phase":"baseline"}"#, "phase"),
    ];
    for path in ["/api/admin/backfill/start", "/api/admin/backfill/resume"] {
        cases.push((path, r#"{"batchsize":0}"#, "batchsize"));
        cases.push((path, r#"{"batch_size ":0}"#, "batch_size "));
        cases.push((path, r#"{"Batch_Size":0}"#, "Batch_Size"));
        cases.push((path, r#"{"batch_size":10,"sleepms":0}"#, "sleepms"));
    }
    for path in [
        "/api/admin/backfill/start",
        "/api/admin/backfill/settings",
        "/api/admin/migration/advance",
    ] {
        cases.push((path, "[777,3,41,2]", "body"));
        cases.push((path, "null", "body"));
        cases.push((path, r#""batch_size""#, "body"));
    }
    for (path, body, field) in cases {
        let response = admin_raw(&app, path, body).await;
        assert_eq!(refused_field(response, body).await, field, "{path} {body}");
    }
    assert_eq!(app.phase(), Phase::DualWrite);
    let status = app.admin_status().await;
    assert_eq!(status["backfill"]["state"], "idle");
    assert_eq!(knobs(status), stored, "no knob was set");
    assert_nothing_recorded_since(&app, before);

    // Empty bodies and empty objects are still what they were: the stored knobs.
    for body in ["", " ", "{}"] {
        let response = admin_raw(&app, "/api/admin/backfill/settings", body).await;
        assert_eq!(response.status(), 200, "{body:?}");
    }
    let empty = app
        .client
        .post(app.url("/api/admin/verify"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 200);
}

#[actix_web::test]
async fn the_bearer_scheme_and_the_json_media_type_are_case_insensitive() {
    let app = TestApp::spawn().await;
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let response = app
            .client
            .get(app.url("/api/admin/migration"))
            .header("authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let response = app
        .client
        .post(app.url("/api/admin/migration/advance"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "Application/JSON; charset=UTF-8")
        .body(r#"{"from":"baseline"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    app.wait_for_phase(Phase::Expanded).await;
    let response = app
        .client
        .post(app.url("/api/v1/users"))
        .header("content-type", "Application/JSON")
        .body(r#"{"full_name":"Ada Lovelace","email":"ada@example.com"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
}
