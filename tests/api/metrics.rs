//! `/metrics` and request ids: scrape after traffic and see the counters move.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use zdm::domain::Phase;

use crate::helpers::{TableLock, TestApp};

/// The value of the first sample line starting with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(app: &TestApp) -> String {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

#[actix_web::test]
async fn metrics_count_requests_and_follow_the_migration() {
    let app = TestApp::spawn().await;
    let before = scrape(&app).await;
    let ok_reads =
        r#"zdm_http_requests_total{method="GET",route="/api/v1/users/{id}",status="200"}"#;
    assert_eq!(sample(&before, ok_reads), None, "no reads yet");
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    for _ in 0..3 {
        assert_eq!(app.get(&format!("/api/v1/users/{id}")).await.status(), 200);
    }
    assert_eq!(app.get("/api/v1/users/999999").await.status(), 404);
    let after = scrape(&app).await;
    assert_eq!(
        sample(&after, ok_reads),
        Some(3.0),
        "counted by route pattern, not raw path"
    );
    assert_eq!(
        sample(
            &after,
            r#"zdm_http_requests_total{method="GET",route="/api/v1/users/{id}",status="404"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            r#"zdm_http_request_duration_seconds_count{method="GET",route="/api/v1/users/{id}"}"#
        ),
        Some(4.0)
    );
    assert!(
        sample(&after, r#"zdm_user_reads_total{server="primary"}"#).unwrap() >= 4.0,
        "reads counted by the server that answered"
    );
    assert_eq!(
        sample(&after, r#"zdm_user_reads_total{server="replica"}"#),
        Some(0.0),
        "no replicas here"
    );
    assert_eq!(sample(&after, r#"zdm_phase{phase="baseline"}"#), Some(1.0));
    assert_eq!(sample(&after, "zdm_database_up"), Some(1.0));
    // Every connection of the pool (4) is either idle or in use.
    let pool = |text: &str| {
        (
            sample(text, "zdm_db_pool_connections_idle").unwrap(),
            sample(text, "zdm_db_pool_connections_in_use").unwrap(),
        )
    };
    let (idle, in_use) = pool(&after);
    assert_eq!(idle + in_use, 4.0, "idle {idle}, in use {in_use}");
    // Two list requests stuck behind a table lock hold two of them.
    let lock = TableLock::take(&app.db.url);
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let (client, url) = (app.client.clone(), app.url("/api/v1/users"));
            actix_web::rt::spawn(async move { client.get(url).send().await.unwrap().status() })
        })
        .collect();
    let mut conn = app.db.conn();
    crate::helpers::eventually("two requests queued behind the lock", || {
        let waiting: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'users'::regclass \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        ))
        .get_result(&mut conn)
        .unwrap();
        waiting >= 2
    })
    .await;
    let (idle, in_use) = pool(&scrape(&app).await);
    assert!(in_use >= 2.0, "idle {idle}, in use {in_use}");
    assert_eq!(idle + in_use, 4.0);
    drop(lock);
    for request in stuck {
        assert_eq!(request.await.unwrap(), 200);
    }

    app.seed(3000);
    app.walk_to(Phase::DualWrite).await;
    app.backfill_to_the_end().await;
    app.admin_post("/api/admin/verify", serde_json::json!({}))
        .await;
    let later = scrape(&app).await;
    assert_eq!(
        sample(&later, r#"zdm_phase{phase="dual_write"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&later, r#"zdm_phase{phase="baseline"}"#), Some(0.0));
    assert_eq!(
        sample(&later, r#"zdm_backfill_state{state="done"}"#),
        Some(1.0)
    );
    assert!(sample(&later, "zdm_backfill_rows_done").unwrap() >= 3000.0);
    assert!(sample(&later, "zdm_backfill_batches").unwrap() >= 1.0);
    assert_eq!(sample(&later, "zdm_verify_divergent_rows"), Some(0.0));
    assert_eq!(
        sample(&later, "zdm_migration_lock_timeout_retries_total"),
        Some(0.0),
        "no step met a lock"
    );
}

#[actix_web::test]
async fn the_lock_timeout_counter_rises_when_a_step_meets_a_lock() {
    let app = TestApp::spawn().await;
    let retries = "zdm_migration_lock_timeout_retries_total";
    assert_eq!(sample(&scrape(&app).await, retries), Some(0.0));

    // A long transaction reads users while the expand is asked for.
    let mut blocker = app.db.conn();
    blocker
        .batch_execute("BEGIN; SELECT count(*) FROM users;")
        .unwrap();
    let advance = {
        let (client, url) = (app.client.clone(), app.url("/api/admin/migration/advance"));
        actix_web::rt::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            (
                response.status(),
                response.json::<serde_json::Value>().await.unwrap(),
            )
        })
    };
    // The blocker goes once the step has given up at least once: it then waits for the
    // blocker to end.
    let mut monitor = app.db.conn();
    crate::helpers::eventually("the expand to wait after a lock timeout", || {
        zdm::migration::runner::a_step_waits_for_lock_holders(&mut monitor)
            .expect("reading pg_stat_activity")
    })
    .await;
    blocker.batch_execute("COMMIT").unwrap();
    let (status, body) = advance.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let met = body["transition"]["lock_timeouts"].as_f64().unwrap();
    assert!(met >= 1.0, "{body}");
    assert_eq!(
        sample(&scrape(&app).await, retries),
        Some(met),
        "the counter rose by the lock timeouts the step met"
    );
}

#[actix_web::test]
async fn every_answer_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let a = app.get("/healthz").await.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let b = app.get("/no/such/page").await.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(a.len(), 16);
    assert_ne!(a, b);
    let echoed = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "trace-42")
        .send()
        .await
        .unwrap();
    assert_eq!(
        echoed.headers()["x-request-id"],
        "trace-42",
        "a caller's id is kept"
    );
    let replaced = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "<script>")
        .send()
        .await
        .unwrap();
    assert_ne!(
        replaced.headers()["x-request-id"],
        "<script>",
        "an odd one is replaced"
    );
}

/// The exposition's series (every sample line without its value).
fn series(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ').map(|(key, _)| key))
        .collect()
}

#[actix_web::test]
async fn invented_methods_and_paths_do_not_grow_the_metrics() {
    let app = TestApp::spawn().await;
    let invented = |i: usize| {
        reqwest::Method::from_bytes(format!("X{i}{}", "M".repeat(2000)).as_bytes()).unwrap()
    };
    let send = |method: reqwest::Method, path: String| {
        let request = app.client.request(method, app.url(&path));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // One of each kind first, so that every label combination they produce exists.
    assert_eq!(send(invented(0), "/".to_owned()).await, 404);
    assert_eq!(send(invented(1), "/no/such/0".to_owned()).await, 404);
    assert_eq!(
        send(reqwest::Method::GET, "/no/such/1".to_owned()).await,
        404
    );
    assert_eq!(
        send(reqwest::Method::GET, "/api/v1/users/1".to_owned()).await,
        404
    );
    scrape(&app).await;
    let before = scrape(&app).await;
    assert!(before.contains(r#"method="OTHER",route="unmatched",status="404""#));

    for i in 2..40 {
        assert_eq!(send(invented(i), "/".to_owned()).await, 404);
        assert_eq!(send(invented(i), format!("/no/such/{i}")).await, 404);
        let path = format!("/{}/{i}", "p".repeat(1000));
        assert_eq!(send(reqwest::Method::GET, path).await, 404);
        let path = format!("/api/v1/users/{}", 1000 + i);
        assert_eq!(send(reqwest::Method::GET, path).await, 404);
    }
    let after = scrape(&app).await;
    assert_eq!(series(&before), series(&after), "no new series");
    assert!(
        after.len() < before.len() + 200,
        "only counts changed: {} bytes, then {}",
        before.len(),
        after.len()
    );
    assert!(!after.contains("MMMM") && !after.contains("pppp"));
}
