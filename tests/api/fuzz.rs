//! Generated hostile input against every parser the app exposes (JSON bodies, form bodies,
//! query strings, paths), in three phases: whatever arrives, the answer is never a 5xx, and a
//! request the app refuses (4xx) stores nothing.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::Value;
use zdm::domain::Phase;

use crate::helpers::{ADMIN_TOKEN, FORM_TOKEN, TestApp};

const KEYS: &[&str] = &[
    "full_name",
    "first_name",
    "last_name",
    "email",
    "csrf",
    "token",
    "confirm",
    "batch_size",
    "sleep_ms",
    "id",
    "x",
];

fn nasty_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        ".{0,40}",
        "[\u{0000}-\u{001F}\u{007F}\u{0085}\u{00A0}\u{2028}\u{202E}\u{FEFF}a-z@. ]{0,30}",
        Just("a".repeat(5000)),
        Just("<script>alert(1)</script>".to_owned()),
        Just("'; DROP TABLE users; --".to_owned()),
        Just("%00%ff%".to_owned()),
        "[a-z]{1,8}@[a-z]{1,8}\\.[a-z]{2,3}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        nasty_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..5).prop_map(
                |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            ),
        ]
    })
}

/// A body as bytes: valid JSON of any shape, or arbitrary text.
fn json_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        nasty_string().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

/// A urlencoded body: known and unknown keys, duplicated keys, raw undecodable bytes; the
/// well-formed ones carry `csrf`, the token of the `FORM_TOKEN` cookie.
fn form_body(csrf: String) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec((proptest::sample::select(KEYS), nasty_string()), 0..6).prop_map(
            move |kv| {
                let mut pairs: Vec<(String, String)> =
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                pairs.push(("csrf".to_owned(), csrf.clone()));
                serde_urlencoded_pairs(&pairs).into_bytes()
            }
        ),
        nasty_string().prop_map(String::into_bytes),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

fn serde_urlencoded_pairs(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn sample<T: std::fmt::Debug>(strategy: &impl Strategy<Value = T>, runner: &mut TestRunner) -> T {
    strategy
        .new_tree(runner)
        .expect("generating a case")
        .current()
}

/// Everything a request could store: every user row, the backfill's settings and the phase.
fn stored(conn: &mut diesel::PgConnection) -> String {
    use diesel::prelude::*;
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "(SELECT coalesce(string_agg(u::text, E'\\n' ORDER BY u.id), '') FROM users u) \
         || E'\\n' || (SELECT b::text FROM zdm_backfill b) \
         || E'\\n' || (SELECT phase FROM zdm_migration_state)",
    ))
    .get_result(conn)
    .expect("reading what is stored")
}

/// Sends `request`; whatever it carried, the answer is never a 5xx, and a refused one (4xx)
/// stored nothing.
async fn send_checked(
    conn: &mut diesel::PgConnection,
    request: reqwest::RequestBuilder,
    what: impl Fn() -> String,
) {
    let before = stored(conn);
    let status = request.send().await.unwrap().status();
    assert!(status.as_u16() < 500, "{} → {status}", what());
    if status.is_client_error() {
        assert_eq!(
            stored(conn),
            before,
            "{} → {status}, yet something was stored",
            what()
        );
    }
}

/// Generated requests against every parser, in `app`'s current phase.
async fn fuzz_every_parser(app: &TestApp, id: i64, runner: &mut TestRunner) -> usize {
    let mut conn = app.db.conn();
    let (json, form, text) = (json_body(), form_body(app.form_token()), nasty_string());
    let json_targets = [
        ("POST", "/api/v1/users".to_owned()),
        ("PUT", format!("/api/v1/users/{id}")),
        ("POST", "/api/v2/users".to_owned()),
        ("PUT", format!("/api/v2/users/{id}")),
        ("POST", "/api/admin/backfill/settings".to_owned()),
    ];
    let form_targets = [
        "/v1/users".to_owned(),
        format!("/v1/users/{id}"),
        "/v2/users".to_owned(),
        format!("/v2/users/{id}"),
        "/admin/login".to_owned(),
    ];
    let mut sent = 0;
    for round in 0..40 {
        for (method, path) in &json_targets {
            let body = sample(&json, runner);
            let request = app
                .client
                .request(method.parse().unwrap(), app.url(path))
                .header(
                    "content-type",
                    if round % 7 == 0 {
                        "text/plain"
                    } else {
                        "application/json"
                    },
                )
                .bearer_auth(ADMIN_TOKEN)
                .body(body.clone());
            send_checked(&mut conn, request, || {
                format!("{method} {path} with {:?}", String::from_utf8_lossy(&body))
            })
            .await;
            sent += 1;
        }
        for path in &form_targets {
            let body = sample(&form, runner);
            let request = app
                .client
                .post(app.url(path))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", format!("zdm_csrf={FORM_TOKEN}"))
                .body(body.clone());
            send_checked(&mut conn, request, || {
                format!("POST {path} with {:?}", String::from_utf8_lossy(&body))
            })
            .await;
            sent += 1;
        }
        let junk = urlencode(&sample(&text, runner));
        for path in [
            format!("/api/v1/users?after_id={junk}&limit={junk}"),
            format!("/api/v2/users?limit={junk}"),
            format!("/v1/users?after_id={junk}&notice={junk}"),
            format!("/api/v1/users/{junk}"),
            format!("/v2/users/{junk}/edit"),
        ] {
            send_checked(&mut conn, app.client.get(app.url(&path)), || {
                format!("GET {path}")
            })
            .await;
            sent += 1;
        }
    }
    sent
}

#[actix_web::test]
async fn no_input_makes_the_app_answer_5xx_or_store_a_refused_request() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut runner = TestRunner::deterministic();
    // Before v2 is released, while both name forms are written, and after full_name is gone.
    for phase in [Phase::Baseline, Phase::DualWrite, Phase::Contracted] {
        app.walk_to(phase).await;
        assert_eq!(
            fuzz_every_parser(&app, id, &mut runner).await,
            40 * 15,
            "in {phase}"
        );
        // Still alive and serving.
        let health: Value = app.get_json("/healthz").await;
        assert_eq!(health["status"], "ok", "in {phase}");
    }
}
