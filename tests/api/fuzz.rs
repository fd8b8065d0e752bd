//! Generated hostile input against every parser the app exposes (JSON bodies, form bodies,
//! query strings, paths): whatever arrives, the answer is never a 5xx.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::Value;
use zdm::migration::Phase;

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

/// A urlencoded body: known and unknown keys, duplicated keys, raw undecodable bytes.
fn form_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec((proptest::sample::select(KEYS), nasty_string()), 0..6).prop_map(
            |kv| {
                let mut pairs: Vec<(String, String)> =
                    kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                pairs.push(("csrf".to_owned(), FORM_TOKEN.to_owned()));
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

#[actix_web::test]
async fn no_input_makes_the_app_answer_5xx() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    app.walk_to(Phase::DualWrite).await; // v2 is released, so its parsers are reached too
    let mut runner = TestRunner::deterministic();
    let (json, form, text) = (json_body(), form_body(), nasty_string());
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
    for round in 0..60 {
        for (method, path) in &json_targets {
            let body = sample(&json, &mut runner);
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
            let status = request.send().await.unwrap().status();
            assert!(
                status.as_u16() < 500,
                "{method} {path} with {:?} → {status}",
                String::from_utf8_lossy(&body)
            );
            sent += 1;
        }
        for path in &form_targets {
            let body = sample(&form, &mut runner);
            let status = app
                .client
                .post(app.url(path))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", format!("zdm_csrf={FORM_TOKEN}"))
                .body(body.clone())
                .send()
                .await
                .unwrap()
                .status();
            assert!(
                status.as_u16() < 500,
                "POST {path} with {:?} → {status}",
                String::from_utf8_lossy(&body)
            );
            sent += 1;
        }
        let junk = urlencode(&sample(&text, &mut runner));
        for path in [
            format!("/api/v1/users?after_id={junk}&limit={junk}"),
            format!("/api/v2/users?limit={junk}"),
            format!("/v1/users?after_id={junk}&notice={junk}"),
            format!("/api/v1/users/{junk}"),
            format!("/v2/users/{junk}/edit"),
        ] {
            let status = app.get(&path).await.status();
            assert!(status.as_u16() < 500, "GET {path} → {status}");
            sent += 1;
        }
    }
    assert_eq!(sent, 60 * 15);
    // Still alive and serving.
    let health: Value = app.get("/healthz").await.json().await.unwrap();
    assert_eq!(health["status"], "ok");
}
