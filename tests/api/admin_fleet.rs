//! One fleet, one admin: sessions and the limit on failed log-ins live in PostgreSQL, so they
//! hold on every instance and across restarts.

use std::sync::Arc;

use diesel::prelude::*;
use diesel::sql_types::{Bytea, Text};
use reqwest::header::{COOKIE, SET_COOKIE};
use sha2::{Digest, Sha256};

use crate::admin_pages::{csrf_of, log_in, page};
use crate::helpers::{ADMIN_TOKEN, ServeProcess, TestApp, TestDb, WAIT, free_port};

#[actix_web::test]
async fn a_log_in_on_one_instance_holds_on_the_other_and_a_log_out_ends_it_on_both() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(Arc::clone(&a.db)).await;
    let cookie = log_in(&a).await;

    let (status, dashboard) = page(&b, &cookie, "/admin").await;
    assert_eq!(status, 200, "the session made on A is one on B");
    let csrf = csrf_of(&dashboard);
    assert_eq!(page(&b, &cookie, "/admin/status.json").await.0, 200);

    // An action on B is recorded with the session that asked.
    let response = b
        .client
        .post(b.url("/admin/advance"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let history = a.admin_status().await["history"].clone();
    let id = cookie.split_once('=').unwrap().1;
    assert_eq!(
        history[0]["actor"],
        format!("session:{}@{}", &id[..8], b.instance_id)
    );
    a.wait_for_phase(zdm::domain::Phase::Expanded).await;
    a.rollback().await;
    let history = a.admin_status().await["history"].clone();
    assert_eq!(history[0]["actor"], format!("api@{}", a.instance_id));

    let response = b
        .client
        .post(b.url("/admin/logout"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let (status, _) = page(&a, &cookie, "/admin").await;
    assert_eq!(status, 303, "logged out on B is logged out on A");
    assert_eq!(page(&a, &cookie, "/admin/status.json").await.0, 401);
}

#[actix_web::test]
async fn the_session_id_is_stored_only_as_its_hash() {
    let app = TestApp::spawn().await;
    let cookie = log_in(&app).await;
    let id = cookie.split_once('=').unwrap().1.to_owned();
    assert!(zdm::secrets::is_secret_form(&id), "{id}");

    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Bytea)]
        id_hash: Vec<u8>,
        #[diesel(sql_type = Text)]
        whole_row: String,
    }
    let rows: Vec<Row> =
        diesel::sql_query("SELECT id_hash, s::text AS whole_row FROM zdm_admin_sessions s")
            .load(&mut app.db.conn())
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id_hash, Sha256::digest(id.as_bytes()).to_vec());
    assert!(
        !rows[0].whole_row.contains(&id) && !rows[0].whole_row.contains(&id[..16]),
        "the id itself is nowhere in the row: {}",
        rows[0].whole_row
    );
}

#[actix_web::test]
async fn sessions_end_after_30_idle_minutes_or_12_hours_on_every_instance() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(Arc::clone(&a.db)).await;
    let mut conn = a.db.conn();
    for (aged, what) in [
        (
            "last_seen_at = now() - interval '31 minutes'",
            "idle for 31 minutes",
        ),
        (
            "created_at = now() - interval '13 hours', expires_at = now() - interval '1 hour'",
            "past its 12 hours, though used a moment ago",
        ),
    ] {
        let cookie = log_in(&a).await;
        assert_eq!(page(&b, &cookie, "/admin").await.0, 200);
        // Still alive 29 minutes after its last request.
        diesel::sql_query(
            "UPDATE zdm_admin_sessions SET last_seen_at = now() - interval '29 minutes'",
        )
        .execute(&mut conn)
        .unwrap();
        assert_eq!(page(&a, &cookie, "/admin").await.0, 200, "{what}");
        diesel::sql_query(format!("UPDATE zdm_admin_sessions SET {aged}"))
            .execute(&mut conn)
            .unwrap();
        for app in [&a, &b] {
            assert_eq!(page(app, &cookie, "/admin").await.0, 303, "{what}");
            assert_eq!(page(app, &cookie, "/admin/status.json").await.0, 401);
        }
    }
}

/// Sends a wrong token, through the log-in form or the Bearer API.
async fn guess(app: &TestApp, form: bool, i: usize) -> reqwest::Response {
    if form {
        app.post_form("/admin/login", &[("token", &format!("guess-{i}"))])
            .await
    } else {
        app.client
            .get(app.url("/api/admin/migration"))
            .bearer_auth(format!("guess-{i}"))
            .send()
            .await
            .unwrap()
    }
}

#[actix_web::test]
async fn failed_log_ins_spread_over_two_instances_and_both_doors_are_limited_together() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(Arc::clone(&a.db)).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let app = if i % 2 == 0 { &a } else { &b };
        let response = guess(app, i % 3 == 0, i).await;
        let status = response.status().as_u16();
        if status == 429 {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
            assert_eq!(response.headers()["cache-control"], "no-store");
        }
        statuses.push(status);
    }
    assert_eq!(statuses, [[401; 5].as_slice(), &[429; 7]].concat());

    // The right token is never held up, on either door or instance.
    assert!(!log_in(&b).await.is_empty());
    let status = a
        .client
        .get(a.url("/api/admin/migration"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    // A request with no token at all is refused without counting.
    assert_eq!(a.get("/api/admin/migration").await.status(), 401);
}

#[actix_web::test]
async fn a_session_and_the_failures_survive_a_restart_of_the_instance() {
    let db = TestDb::migrated();
    let port = free_port();
    let server = ServeProcess::start(
        port,
        &[("DATABASE_URL", &db.url), ("ZDM_POOL_SIZE", "2")],
        WAIT,
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let response = client
        .post(url("/admin/login"))
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    let cookie = response.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    for i in 0..5 {
        let response = client
            .post(url("/admin/login"))
            .form(&[("token", format!("guess-{i}"))])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    server.stop();

    let _server = ServeProcess::start(
        port,
        &[("DATABASE_URL", &db.url), ("ZDM_POOL_SIZE", "2")],
        WAIT,
    )
    .await;
    let dashboard = client
        .get(url("/admin"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), 200, "still logged in after the restart");
    let response = client
        .post(url("/admin/login"))
        .form(&[("token", "guess-5")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429, "the failures were not forgotten");
}

fn set_cookie_named<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
}

#[actix_web::test]
async fn x_forwarded_headers_from_an_untrusted_peer_are_ignored() {
    let app = TestApp::spawn().await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let response = app
            .client
            .post(app.url("/admin/login"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .form(&[("token", "guess")])
            .send()
            .await
            .unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(
        statuses,
        [401, 401, 401, 401, 401, 429],
        "counted under the peer's address, whatever the header says"
    );
    let page = app
        .client
        .get(app.url("/v1/users/new"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let cookie = set_cookie_named(&page, "zdm_csrf").expect("the plain cookie");
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(set_cookie_named(&page, "__Host-zdm_csrf").is_none());
}

#[actix_web::test]
async fn behind_a_trusted_proxy_limits_count_the_forwarded_client_and_cookies_follow_https() {
    let db = TestDb::migrated();
    let server = ServeProcess::start(
        free_port(),
        &[
            ("DATABASE_URL", &db.url),
            ("ZDM_POOL_SIZE", "2"),
            ("ZDM_TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
        WAIT,
    )
    .await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |path: &str| format!("{}{path}", server.address);
    let guess = |from: String| {
        let request = client
            .post(url("/admin/login"))
            .header("x-forwarded-for", from)
            .form(&[("token", "guess")]);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // The client writes what it likes left of the proxy's entry; only the entry counts.
    let mut first = Vec::new();
    for i in 0..6 {
        first.push(guess(format!("10.9.9.{i}, 198.51.100.1")).await);
    }
    assert_eq!(first, [401, 401, 401, 401, 401, 429]);
    assert_eq!(
        guess("198.51.100.2".to_owned()).await,
        401,
        "another client"
    );
    // 30 failures from all clients together close the door for everyone with a wrong token.
    for _ in 0..4 {
        assert_eq!(guess("198.51.100.2".to_owned()).await, 401);
    }
    for client in 3..7 {
        for _ in 0..5 {
            assert_eq!(guess(format!("198.51.100.{client}")).await, 401);
        }
    }
    assert_eq!(guess("198.51.100.7".to_owned()).await, 429, "overall limit");

    // The right token still gets in; over HTTPS (as the proxy says) the cookie is __Host-.
    let login = client
        .post(url("/admin/login"))
        .header("x-forwarded-for", "198.51.100.1")
        .header("x-forwarded-proto", "https")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 303);
    let cookie = set_cookie_named(&login, "__Host-zdm_admin")
        .expect("a __Host- session cookie")
        .to_owned();
    assert!(
        cookie.contains("Secure") && cookie.contains("Path=/"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let dashboard = client
        .get(url("/admin"))
        .header(COOKIE, &pair)
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(dashboard.status(), 200);
    let page = client
        .get(url("/v1/users/new"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let csrf = set_cookie_named(&page, "__Host-zdm_csrf").expect("a __Host- CSRF cookie");
    assert!(csrf.contains("Secure"), "{csrf}");
}

#[actix_web::test]
async fn logging_in_again_ends_the_previous_session_of_that_browser() {
    let app = TestApp::spawn().await;
    let first = log_in(&app).await;
    let log_in_with = |cookie: &str, token: &str| {
        app.client
            .post(app.url("/admin/login"))
            .header(COOKIE, cookie.to_owned())
            .form(&[("token", token)])
            .send()
    };
    // A wrong token while logged in changes nothing.
    let wrong = log_in_with(&first, "guess").await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(page(&app, &first, "/admin/status.json").await.0, 200);

    let again = log_in_with(&first, ADMIN_TOKEN).await.unwrap();
    assert_eq!(again.status(), 303);
    let second = set_cookie_named(&again, "zdm_admin")
        .expect("a new session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(second, first);
    assert_eq!(page(&app, &second, "/admin/status.json").await.0, 200);
    assert_eq!(
        page(&app, &first, "/admin/status.json").await.0,
        401,
        "the session the browser held before is over"
    );
}
