//! Hostile requests: forged form posts, guessed admin tokens, markup in names, and the
//! headers every answer carries.

use reqwest::header::{COOKIE, SET_COOKIE};

use crate::helpers::{ADMIN_TOKEN, FORM_TOKEN, TestApp};

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
    let token = cookie
        .trim_start_matches("zdm_csrf=")
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = response.text().await.unwrap();
    assert!(page.contains(&format!(
        r#"<input type="hidden" name="csrf" value="{token}">"#
    )));
    assert!(
        zdm::secrets::is_secret_form(&token),
        "256 bits from the OS CSPRNG, as 43 characters of base64url: {token}"
    );

    // A browser that already has the cookie keeps it.
    let again = app
        .client
        .get(app.url("/v1/users/new"))
        .header(COOKIE, format!("zdm_csrf={token}"))
        .send()
        .await
        .unwrap();
    assert!(again.headers().get(SET_COOKIE).is_none());
    assert!(again.text().await.unwrap().contains(&token));
}

#[actix_web::test]
async fn forged_form_posts_are_refused_with_403() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let fields = [("full_name", "Mallory"), ("email", "mallory@example.com")];
    let with_token = [
        ("full_name", "Mallory"),
        ("email", "mallory@example.com"),
        ("csrf", FORM_TOKEN),
    ];
    let cookie = format!("zdm_csrf={FORM_TOKEN}");
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
            .form(&[("csrf", FORM_TOKEN)]),
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

#[actix_web::test]
async fn admin_bodies_are_read_only_after_authentication_and_never_half_understood() {
    let app = TestApp::spawn().await;
    app.walk_to(zdm::migration::Phase::DualWrite).await;
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
    for (body, status) in [("{", 400), ("[1]", 400), ("{} trailing", 400)] {
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
    let cookie = crate::admin_fleet::log_in(&app).await;
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
