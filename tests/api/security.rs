//! Hostile requests: forged form posts, guessed admin tokens, markup in names, and the
//! headers every answer carries.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Duration;

use diesel::RunQueryDsl;
use reqwest::header::{COOKIE, SET_COOKIE};
use zdm::db::PoolLimits;

use crate::admin_pages::{csrf_of, log_in, page};
use crate::helpers::{ADMIN_TOKEN, FORM_TOKEN, TestApp, TestDb};

#[actix_web::test]
async fn form_pages_hand_out_a_csrf_token_in_an_httponly_strict_cookie() {
    let app = TestApp::spawn().await;
    let response = app.get("/v1/users/new").await;
    let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("zdm_csrf="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let value = cookie
        .trim_start_matches("zdm_csrf=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert!(
        zdm::secrets::is_secret_form(&value),
        "256 bits from the OS CSPRNG, as 43 characters of base64url: {value}"
    );
    // The form's token is the cookie signed with the server's key, not the cookie itself.
    let key = zdm::db::admin_auth::user_form_key(&mut app.db.conn()).unwrap();
    let token = zdm::secrets::user_form_token(&key, &value);
    assert_ne!(token, value);
    let field = |token: &str| format!(r#"<input type="hidden" name="csrf" value="{token}">"#);
    let page = response.text().await.unwrap();
    assert!(page.contains(&field(&token)), "{page}");
    assert!(!page.contains(&value), "the cookie stays out of the page");

    // A browser that already has the cookie keeps it, and its token.
    let again = app
        .client
        .get(app.url("/v1/users/new"))
        .header(COOKIE, format!("zdm_csrf={value}"))
        .send()
        .await
        .unwrap();
    assert!(again.headers().get(SET_COOKIE).is_none());
    assert!(again.text().await.unwrap().contains(&field(&token)));
}

#[actix_web::test]
async fn forged_form_posts_are_refused_with_403() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let fields = [("full_name", "Mallory"), ("email", "mallory@example.com")];
    let token = app.form_token();
    let with_token = [
        ("full_name", "Mallory"),
        ("email", "mallory@example.com"),
        ("csrf", &token),
    ];
    let cookie = format!("zdm_csrf={FORM_TOKEN}");
    // A token zdm signed, for the cookie of another browser (the forger's own).
    let (other_cookie, other_token) = {
        let page = app.get("/v1/users/new").await;
        let cookie = page.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        let cookie = cookie.split(';').next().unwrap().to_owned();
        (
            cookie,
            crate::admin_pages::csrf_of(&page.text().await.unwrap()),
        )
    };
    assert!(other_cookie.starts_with("zdm_csrf="), "{other_cookie}");
    let attempts = [
        // no token at all
        app.client.post(app.url("/v1/users")).form(&fields),
        // a field without the cookie
        app.client.post(app.url("/v1/users")).form(&with_token),
        // a cookie and a different field
        app.client
            .post(app.url("/v1/users"))
            .header(COOKIE, format!("zdm_csrf={}", "x".repeat(40)))
            .form(&with_token),
        // a planted cookie that is not a token of ours, repeated in the field
        app.client
            .post(app.url("/v1/users"))
            .header(COOKIE, "zdm_csrf=!")
            .form(&[
                ("full_name", "Mallory"),
                ("email", "m@example.com"),
                ("csrf", "!"),
            ]),
        app.client
            .post(app.url("/v1/users"))
            .header(COOKIE, format!("zdm_csrf={}", "x".repeat(40)))
            .form(&[
                ("full_name", "Mallory"),
                ("email", "m@example.com"),
                ("csrf", &"x".repeat(40)),
            ]),
        // a planted cookie of the form zdm issues, repeated in the field
        app.client
            .post(app.url("/v1/users"))
            .header(COOKIE, &cookie)
            .form(&[
                ("full_name", "Mallory"),
                ("email", "m@example.com"),
                ("csrf", FORM_TOKEN),
            ]),
        // a token zdm signed for another cookie
        app.client
            .post(app.url("/v1/users"))
            .header(COOKIE, &cookie)
            .form(&[
                ("full_name", "Mallory"),
                ("email", "m@example.com"),
                ("csrf", &other_token),
            ]),
        // right token, but sent by another site
        app.client
            .post(app.url(&format!("/v1/users/{id}")))
            .header(COOKIE, &cookie)
            .header("sec-fetch-site", "cross-site")
            .form(&with_token),
        app.client
            .post(app.url(&format!("/v1/users/{id}/delete")))
            .header(COOKIE, &cookie)
            .header("origin", "https://evil.example")
            .form(&[("csrf", &token)]),
    ];
    for attempt in attempts {
        let response = attempt.send().await.unwrap();
        assert_eq!(response.status(), 403);
        assert!(
            response
                .text()
                .await
                .unwrap()
                .contains("This form was refused")
        );
    }
    let list = app.get("/v1/users").await.text().await.unwrap();
    assert!(!list.contains("Mallory"), "nothing was written");
    assert!(list.contains("Ada Lovelace"), "nothing was deleted");

    // The same post from our own page goes through.
    let ok = app
        .client
        .post(app.url("/v1/users"))
        .header(COOKIE, &cookie)
        .header("origin", &app.address)
        .header("sec-fetch-site", "same-origin")
        .form(&with_token)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 303);
    // And so does the other browser's, with its own cookie.
    let theirs = app
        .client
        .post(app.url("/v1/users"))
        .header(COOKIE, &other_cookie)
        .form(&[
            ("full_name", "Grace Hopper"),
            ("email", "grace@example.com"),
            ("csrf", &other_token),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(theirs.status(), 303);

    // Admin forms check the origin as well as their session token.
    let login = app
        .client
        .post(app.url("/admin/login"))
        .header("sec-fetch-site", "cross-site")
        .form(&[("token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 403);
}

#[actix_web::test]
async fn every_answer_carries_the_security_headers() {
    let app = TestApp::spawn().await;
    for path in [
        "/",
        "/v1/users",
        "/v1/users/new",
        "/api/v1/users",
        "/no/such/page",
        "/admin/login",
    ] {
        let response = app.get(path).await;
        let headers = response.headers();
        let csp = headers["content-security-policy"].to_str().unwrap();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(headers["referrer-policy"], "same-origin", "{path}");
    }
    let login = app.get("/admin/login").await;
    assert_eq!(login.headers()["cache-control"], "no-store");
}

#[actix_web::test]
async fn guessing_the_admin_token_is_rate_limited() {
    let app = TestApp::spawn().await;
    let mut statuses = Vec::new();
    for i in 0..7 {
        let response = app
            .post_form("/admin/login", &[("token", &format!("guess-{i}"))])
            .await;
        statuses.push(response.status().as_u16());
        if response.status() == 429 {
            let retry: u64 = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=60).contains(&retry), "{retry}");
        }
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    let right = app
        .post_form("/admin/login", &[("token", ADMIN_TOKEN)])
        .await;
    assert_eq!(
        right.status(),
        303,
        "the right token is never held up by the limit on failures"
    );
}

/// An admin form takes only the token stored with its own session: not another session's,
/// not a user form's.
#[actix_web::test]
async fn admin_forms_take_only_the_token_of_their_own_session() {
    let app = TestApp::spawn().await;
    let (mine, theirs) = (log_in(&app).await, log_in(&app).await);
    let csrf_of_session = |cookie: String| {
        let app = &app;
        async move { csrf_of(&page(app, &cookie, "/admin").await.1) }
    };
    let (my_token, their_token) = (
        csrf_of_session(mine.clone()).await,
        csrf_of_session(theirs.clone()).await,
    );
    assert_ne!(my_token, their_token);
    let log_out = |cookies: String, csrf: String| {
        let request = app
            .client
            .post(app.url("/admin/logout"))
            .header(COOKIE, cookies)
            .form(&[("csrf", csrf)]);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(log_out(mine.clone(), their_token).await, 403);
    assert_eq!(
        log_out(format!("{mine}; zdm_csrf={FORM_TOKEN}"), app.form_token()).await,
        403
    );
    assert_eq!(log_out(mine.clone(), FORM_TOKEN.to_owned()).await, 403);
    assert_eq!(page(&app, &mine, "/admin").await.0, 200, "still logged in");
    assert_eq!(log_out(mine.clone(), my_token).await, 303);
    assert_eq!(page(&app, &mine, "/admin").await.0, 303, "logged out");
}

/// A client over its limit that keeps sending wrong tokens is refused from memory: the users
/// of the instance, on a web pool of one connection that makes them wait at most 200 ms,
/// never get a 503 while it floods.
#[actix_web::test]
async fn a_flood_of_wrong_tokens_over_the_limit_does_not_reach_the_users() {
    let limits = PoolLimits {
        checkout_timeout: Duration::from_millis(200),
        ..PoolLimits::with_size(1)
    };
    let app = TestApp::spawn_with(Arc::new(TestDb::migrated()), limits).await;
    app.create_user("Ada Lovelace", "ada@example.com").await;
    let wrong = || {
        let request = app
            .client
            .get(app.url("/api/admin/status"))
            .bearer_auth("wrong-token");
        async move { request.send().await.map_or(0, |r| r.status().as_u16()) }
    };
    let mut first = Vec::new();
    for _ in 0..6 {
        first.push(wrong().await);
    }
    assert_eq!(first, [401, 401, 401, 401, 401, 429]);

    // 200 clients' connections, each sending 10 wrong tokens one after the other, and 4
    // users listing users until the flood is over.
    let flood_done = Cell::new(false);
    let flood = async {
        let statuses: Vec<u16> = futures_util::future::join_all((0..200).map(|_| async {
            let mut statuses = Vec::new();
            for _ in 0..10 {
                statuses.push(wrong().await);
            }
            statuses
        }))
        .await
        .concat();
        flood_done.set(true);
        statuses
    };
    let user = || async {
        let mut statuses = Vec::new();
        while !flood_done.get() || statuses.len() < 5 {
            statuses.push(app.get("/api/v1/users").await.status().as_u16());
        }
        statuses
    };
    let users = futures_util::future::join_all((0..4).map(|_| user()));
    let (flood, users) = futures_util::future::join(flood, users).await;
    let users = users.concat();
    let count = |statuses: &[u16], status| statuses.iter().filter(|&&s| s == status).count();
    assert_eq!(
        count(&users, 200),
        users.len(),
        "every user request answered (503s: {})",
        count(&users, 503)
    );
    assert_eq!(
        count(&flood, 429),
        flood.len(),
        "every wrong token refused as over the limit (503s: {})",
        count(&flood, 503)
    );
}

#[actix_web::test]
async fn admin_bodies_are_read_only_after_authentication_and_never_half_understood() {
    let app = TestApp::spawn().await;
    app.walk_to(zdm::domain::Phase::DualWrite).await;
    let bad = r#"{"batch_size":"not-a-number"}"#;
    // Without the token: 401 whatever the body, and nothing of it echoed.
    for token in [None, Some("wrong")] {
        let mut request = app
            .client
            .post(app.url("/api/admin/backfill/start"))
            .header("content-type", "application/json")
            .body(bad);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let text = response.text().await.unwrap();
        assert!(
            !text.contains("not-a-number") && !text.contains("batch_size"),
            "{text}"
        );
    }
    // With it, a body that does not parse is refused, naming the field, and nothing starts.
    for path in ["/api/admin/backfill/start", "/api/admin/backfill/settings"] {
        let response = app
            .client
            .post(app.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{path}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("batch_size"),
            "{error}"
        );
    }
    for (body, status) in [("{", 400), ("[1]", 422), ("{} trailing", 400)] {
        let response = app
            .client
            .post(app.url("/api/admin/backfill/start"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{body}");
    }
    let response = app
        .client
        .post(app.url("/api/admin/backfill/start"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body(r#"{"batch_size":10}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert_eq!(app.admin_status().await["backfill"]["state"], "idle");
    // An empty body keeps the defaults.
    let response = app
        .client
        .post(app.url("/api/admin/backfill/start"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
}

#[actix_web::test]
async fn admin_answers_are_never_cached() {
    let app = TestApp::spawn().await;
    let status = app
        .client
        .get(app.url("/api/admin/migration"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), 200);
    assert_eq!(status.headers()["cache-control"], "no-store");
    for (path, expected) in [
        ("/api/admin/migration", 401),
        ("/api/admin/no-such", 401),
        ("/admin/status.json", 401),
        ("/admin", 303),
    ] {
        let response = app.get(path).await;
        assert_eq!(response.status(), expected, "{path}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
    }
    let forms = [("/admin/advance", 401), ("/admin/logout", 401)];
    for (path, expected) in forms {
        let response = app
            .client
            .post(app.url(path))
            .form(&[("csrf", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{path}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{path}");
    }
    let cookie = crate::admin_pages::log_in(&app).await;
    let forged = app
        .client
        .post(app.url("/admin/advance"))
        .header(COOKIE, &cookie)
        .form(&[("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(forged.headers()["cache-control"], "no-store");
}

/// Sends a POST of `body` (declared whole in Content-Length) to `address`, pausing `pause`
/// after each of `pieces` equal pieces, and returns the answer's status line and how long it
/// took from the first byte, on a thread of its own (it blocks).
async fn post_slowly(
    address: &str,
    path: &'static str,
    content_type: &'static str,
    body: String,
    pieces: usize,
    pause: std::time::Duration,
) -> (String, std::time::Duration) {
    use std::io::{Read, Write};
    let host = address.trim_start_matches("http://").to_owned();
    actix_web::rt::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&host).unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let started = std::time::Instant::now();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n\
             Cookie: zdm_csrf={FORM_TOKEN}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        let piece = body.len().div_ceil(pieces);
        for chunk in body.as_bytes().chunks(piece) {
            // The server may have answered and closed already: stop writing then.
            if stream.write_all(chunk).is_err() {
                break;
            }
            std::thread::sleep(pause);
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer).into_owned();
        (
            text.lines().next().unwrap_or_default().to_owned(),
            started.elapsed(),
        )
    })
    .await
    .unwrap()
}

#[actix_web::test]
async fn a_body_that_arrives_too_slowly_is_cut_off() {
    let app = TestApp::spawn().await;
    // 16 KB, a piece every second: it would take over a minute.
    let body = format!(
        "{{\"full_name\":\"{}\",\"email\":\"slow@example.com\"}}",
        "a".repeat(16_000)
    );
    let (status, took) = post_slowly(
        &app.address,
        "/api/v1/users",
        "application/json",
        body,
        64,
        std::time::Duration::from_secs(1),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 408 Request Timeout");
    assert!(
        took < std::time::Duration::from_secs(15),
        "answered and closed after the 5 s allowed for the body, not after {took:?}"
    );
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(
        r#"zdm_http_requests_total{method="POST",route="/api/v1/users",status="408"} 1"#
    ));
}

#[actix_web::test]
async fn the_latency_the_backfill_watches_leaves_out_a_slow_client() {
    let app = TestApp::spawn().await;
    let body = r#"{"full_name":"Slow Client","email":"slow@example.com"}"#.to_owned();
    let (status, _) = post_slowly(
        &app.address,
        "/api/v1/users",
        "application/json",
        body,
        2,
        std::time::Duration::from_millis(1500),
    )
    .await;
    assert_eq!(status, "HTTP/1.1 201 Created");
    let metrics = app.get("/metrics").await.text().await.unwrap();
    let sample = |prefix: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert_eq!(sample("zdm_user_request_duration_seconds_count"), Some(1.0));
    assert_eq!(
        sample(r#"zdm_user_request_duration_seconds_bucket{le="1"}"#),
        Some(1.0),
        "the handler's time, not the 1.5 s the client took: {metrics}"
    );
}

#[actix_web::test]
async fn forms_with_invalid_utf8_are_refused_like_json() {
    let app = TestApp::spawn().await;
    let token = app.form_token();
    // Media types are case-insensitive, for the form parser and for this check alike.
    for content_type in [
        "application/x-www-form-urlencoded",
        "Application/X-WWW-Form-URLEncoded",
    ] {
        let response = app
            .client
            .post(app.url("/v1/users"))
            .header("content-type", content_type)
            .header(COOKIE, format!("zdm_csrf={FORM_TOKEN}"))
            .body(format!(
                "full_name=A%ff%feB&email=utf8%40example.com&csrf={token}"
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{content_type}");
        assert!(response.text().await.unwrap().contains("not valid UTF-8"));
    }
    let json = app
        .client
        .post(app.url("/api/v1/users"))
        .header("content-type", "application/json")
        .body(b"{\"full_name\":\"A\xff\xfeB\",\"email\":\"utf8@example.com\"}".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 400, "as the JSON API does");
    let list = app.get("/api/v1/users").await.text().await.unwrap();
    assert!(
        !list.contains("utf8@example.com"),
        "nothing was stored: {list}"
    );
}

#[actix_web::test]
async fn names_with_bidirectional_overrides_are_refused_but_emoji_joiners_kept() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            "/api/v1/users",
            &serde_json::json!({ "full_name": "Ada \u{202E}ecalevoL", "email": "rlo@example.com" }),
        )
        .await;
    assert_eq!(response.status(), 422);
    let error: serde_json::Value = response.json().await.unwrap();
    assert_eq!(error["field"], "full_name");
    let form = app
        .post_form(
            "/v1/users",
            &[
                ("full_name", "\u{2066}Ada\u{2069}"),
                ("email", "lri@example.com"),
            ],
        )
        .await;
    assert_eq!(form.status(), 422);
    let ok = app
        .post_json(
            "/api/v1/users",
            &serde_json::json!({ "full_name": "Ada 👩\u{200D}💻", "email": "zwj@example.com" }),
        )
        .await;
    assert_eq!(ok.status(), 201);
    let stored: serde_json::Value = ok.json().await.unwrap();
    assert_eq!(stored["full_name"], "Ada 👩\u{200D}💻");

    app.walk_to(zdm::domain::Phase::DualWrite).await;
    let v2 = app
        .post_json(
            "/api/v2/users",
            &serde_json::json!({
                "first_name": "Ada",
                "last_name": "\u{202D}Lovelace",
                "email": "lro@example.com"
            }),
        )
        .await;
    assert_eq!(v2.status(), 422);
    let error: serde_json::Value = v2.json().await.unwrap();
    assert_eq!(error["field"], "last_name");
}

#[actix_web::test]
async fn look_alike_and_quoted_emails_do_not_get_round_uniqueness() {
    let app = TestApp::spawn().await;
    app.create_user("Kelvin", "kelvin@example.com").await;
    for (look_alike, status) in [
        ("\u{212A}elvin@example.com", 409), // Kelvin sign
        ("k\u{FF45}lvin@example.com", 409), // fullwidth e
        ("KELVIN@example.com", 409),
        ("k\u{0435}lvin@example.com", 422), // Cyrillic e
        ("\"kelvin\"@example.com", 422),
    ] {
        let response = app
            .post_json(
                "/api/v1/users",
                &serde_json::json!({ "full_name": "Mallory", "email": look_alike }),
            )
            .await;
        assert_eq!(response.status(), status, "{look_alike}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["field"], "email", "{look_alike}");
    }
    let response = app
        .post_json(
            "/api/v1/users",
            &serde_json::json!({ "full_name": "Zoë", "email": "Zo\u{00CB}@Example.com" }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let stored: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        stored["email"], "zo\u{00EB}@example.com",
        "stored canonical"
    );
}

#[actix_web::test]
async fn the_home_page_never_counts_a_big_table() {
    let app = TestApp::spawn().await;
    let count = |page: String| {
        page.split(r#"<span id="user-count">"#)
            .nth(1)
            .and_then(|rest| rest.split('<').next())
            .expect("the user count")
            .to_owned()
    };
    app.create_user("Ada Lovelace", "ada@example.com").await;
    assert_eq!(count(app.get("/").await.text().await.unwrap()), "1");
    app.seed(10_050);
    let mut conn = app.db.conn();
    diesel::sql_query("ANALYZE users")
        .execute(&mut conn)
        .unwrap();
    // Above 10,000 rows the page shows the planner's estimate instead of counting them all.
    let shown = count(app.get("/").await.text().await.unwrap());
    assert!(shown.starts_with("about 10,0"), "{shown}");
}

#[actix_web::test]
async fn names_of_invisible_characters_only_are_blank() {
    let app = TestApp::spawn().await;
    app.walk_to(zdm::domain::Phase::DualWrite).await;
    let invisible = [
        "\u{200B}",
        "\u{FEFF}",
        "\u{2060}",
        "\u{00AD}",
        "\u{3164}",
        "\u{115F}",
        "\u{180E}",
        "\u{061C}",
        "\u{200E}",
        "\u{200B} \u{FEFF}",
    ];
    for (i, name) in invisible.into_iter().enumerate() {
        let email = format!("invisible{i}@example.com");
        let v1 = app
            .post_json(
                "/api/v1/users",
                &serde_json::json!({ "full_name": name, "email": email }),
            )
            .await;
        assert_eq!(v1.status(), 422, "{name:?}");
        let error: serde_json::Value = v1.json().await.unwrap();
        assert_eq!(error["field"], "full_name", "{name:?}");
        let form = app
            .post_form("/v1/users", &[("full_name", name), ("email", &email)])
            .await;
        assert_eq!(form.status(), 422, "{name:?}");
        for (first, last, field) in [(name, "Smith", "first_name"), ("Ada", name, "last_name")] {
            let v2 = app
                .post_json(
                    "/api/v2/users",
                    &serde_json::json!({ "first_name": first, "last_name": last, "email": email }),
                )
                .await;
            assert_eq!(v2.status(), 422, "{first:?} {last:?}");
            let error: serde_json::Value = v2.json().await.unwrap();
            assert_eq!(error["field"], field, "{first:?} {last:?}");
            let form = app
                .post_form(
                    "/v2/users",
                    &[
                        ("first_name", first),
                        ("last_name", last),
                        ("email", &email),
                    ],
                )
                .await;
            assert_eq!(form.status(), 422, "{first:?} {last:?}");
        }
    }
    let list = app.get_json("/api/v1/users").await;
    assert_eq!(list["users"].as_array().unwrap().len(), 0, "{list}");
    // A visible name keeps its invisible joiners and marks.
    let ok = app
        .post_json(
            "/api/v1/users",
            &serde_json::json!({ "full_name": "Ada\u{00AD}line 👩\u{200D}💻", "email": "ok@example.com" }),
        )
        .await;
    assert_eq!(ok.status(), 201);
}
