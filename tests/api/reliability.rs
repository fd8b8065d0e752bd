//! Failure behaviour: stuck queries, an exhausted pool, a database that goes away and comes
//! back. Requests fail fast with 503 and the app recovers by itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::{Value, json};
use zdm::db::PoolLimits;
use zdm::local_pg::LocalPg;
use zdm::migration::schema_migrations;

use crate::helpers::{TableLock, TestApp, TestDb, scratch_cluster, serve};

#[actix_web::test]
async fn a_query_stuck_behind_a_lock_answers_503_within_the_statement_timeout() {
    let limits = PoolLimits {
        statement_timeout: Duration::from_millis(500),
        ..PoolLimits::with_size(4)
    };
    let app = TestApp::spawn_with(Arc::new(TestDb::migrated()), limits).await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let lock = TableLock::take(&app.db.url);
    let started = Instant::now();
    let response = app.get(&format!("/api/v1/users/{id}")).await;
    let waited = started.elapsed();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["error"],
        "The database is unavailable right now; try again in a moment."
    );
    assert!(
        waited < Duration::from_secs(3),
        "gave up after the statement_timeout, not {waited:?}"
    );
    drop(lock);
    assert_eq!(app.get(&format!("/api/v1/users/{id}")).await.status(), 200);
}

#[actix_web::test]
async fn an_exhausted_pool_answers_503_quickly() {
    let limits = PoolLimits {
        checkout_timeout: Duration::from_millis(300),
        statement_timeout: Duration::from_secs(4),
        ..PoolLimits::with_size(1)
    };
    let app = TestApp::spawn_with(Arc::new(TestDb::migrated()), limits).await;
    app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut lock = TableLock::take(&app.db.url);
    // The one connection is now stuck in a query waiting for the lock (a list: reads of one
    // user go through the point-read connection instead)...
    let stuck = {
        let (client, url) = (app.client.clone(), app.url("/api/v1/users"));
        actix_web::rt::spawn(
            async move { client.get(url).send().await.map(|r| r.status().as_u16()) },
        )
    };
    lock.wait_for_a_request().await;
    // ...so the next request finds no free connection and says so at once.
    let started = Instant::now();
    let response = app.get("/healthz").await;
    assert_eq!(response.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "no hanging: {:?}",
        started.elapsed()
    );
    drop(lock);
    assert_eq!(
        stuck.await.unwrap().unwrap(),
        200,
        "the stuck request finishes once the lock goes"
    );
    assert_eq!(app.get("/healthz").await.status(), 200);
}

/// Ends every session of the test's database but the caller's: the pool's connections and the
/// point-read connection die under the app.
fn kill_backends(db: &TestDb) {
    db.conn()
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{}' AND pid <> pg_backend_pid()",
            db.name
        ))
        .unwrap();
}

#[actix_web::test]
async fn killed_connections_cost_no_500_and_no_write() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    kill_backends(&app.db);
    let mut ok = 0;
    for _ in 0..20 {
        let status = app
            .get(&format!("/api/v1/users/{id}"))
            .await
            .status()
            .as_u16();
        assert!(status == 200 || status == 503, "{status}");
        ok += usize::from(status == 200);
    }
    assert!(ok > 0, "the pool replaced the killed connections");

    // Writes sent right after the connections died: each is answered 201/200 and stored, or
    // 503 and not stored at all. None is lost, none half-done, none answered 500. The pool's
    // connections have just answered writes, so the first checkouts skip the ping and meet
    // dead connections.
    // (A round of four at once, again until all four succeed: a connection left dead by the
    // first kill answers 503 once.)
    for round in 0.. {
        assert!(round < 10, "the pool recovered from the first kill");
        let warm_up: Vec<_> = (0..4)
            .map(|_| {
                app.client
                    .put(app.url(&format!("/api/v1/users/{id}")))
                    .json(&json!({ "full_name": "Ada Lovelace" }))
                    .send()
            })
            .collect();
        let mut all_ok = true;
        for response in warm_up {
            let status = response.await.unwrap().status().as_u16();
            assert!(status == 200 || status == 503, "{status}");
            all_ok &= status == 200;
        }
        if all_ok {
            break;
        }
    }
    kill_backends(&app.db);
    let (mut created, mut refused) = (Vec::new(), Vec::new());
    let mut renamed_to = "Ada Lovelace".to_owned();
    for n in 0..20 {
        let email = format!("writer{n}@example.com");
        let create = app
            .post_json(
                "/api/v1/users",
                &json!({ "full_name": format!("Writer {n}"), "email": email }),
            )
            .await
            .status()
            .as_u16();
        match create {
            201 => created.push(email),
            503 => refused.push(email),
            other => panic!("create {n} answered {other}"),
        }
        let name = format!("Ada King {n}");
        let rename = app
            .put_json(
                &format!("/api/v1/users/{id}"),
                &json!({ "full_name": name }),
            )
            .await
            .status()
            .as_u16();
        match rename {
            200 => renamed_to = name,
            503 => {}
            other => panic!("rename {n} answered {other}"),
        }
    }
    assert!(!created.is_empty(), "writes go through again");
    use zdm::schema::v1::users;
    let mut conn = app.db.conn();
    let stored: Vec<String> = users::table
        .filter(users::email.like("writer%"))
        .order(users::id)
        .select(users::email)
        .load(&mut conn)
        .unwrap();
    assert_eq!(
        stored, created,
        "exactly the acknowledged creates are stored (refused: {refused:?})"
    );
    let name: String = users::table
        .find(id)
        .select(users::full_name)
        .first(&mut conn)
        .unwrap();
    assert_eq!(name, renamed_to, "the last acknowledged rename");
}

/// Creates a user through the v1 API of the server at `address`; returns its id.
async fn create_grace(client: &reqwest::Client, address: &str) -> i64 {
    let created = client
        .post(format!("{address}/api/v1/users"))
        .json(&json!({ "full_name": "Grace Hopper", "email": "grace@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap()
}

#[actix_web::test]
async fn dead_connections_cost_no_request_when_idle_and_at_most_one_each_when_busy() {
    let db = TestDb::migrated();
    let (address, _follower, _) = serve(&db.url, PoolLimits::with_size(4));
    let client = reqwest::Client::new();
    let id = create_grace(&client, &address).await;
    let read = || client.get(format!("{address}/api/v1/users/{id}")).send();
    let warm_up = || async {
        let reads: Vec<_> = (0..8).map(|_| read()).collect();
        for response in reads {
            assert_eq!(response.await.unwrap().status(), 200);
        }
    };

    // Idle connections are pinged at checkout: the dead ones are replaced unseen.
    warm_up().await;
    actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
    kill_backends(&db);
    for _ in 0..10 {
        assert_eq!(
            read().await.unwrap().status(),
            200,
            "idle: no request fails"
        );
    }

    // Busy connections skip the ping (they answered a moment ago): one found dead answers
    // 503 once and leaves the pool. Reads of one user all go through the one point-read
    // connection, so at most the first read after the kill fails.
    warm_up().await;
    kill_backends(&db);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let status = read().await.unwrap().status().as_u16();
        assert!(status == 200 || status == 503, "{status}");
        statuses.push(status);
    }
    assert!(
        statuses[1..].iter().all(|s| *s == 200),
        "one dead reader connection, at most one failure: {statuses:?}"
    );
    for _ in 0..10 {
        assert_eq!(
            read().await.unwrap().status(),
            200,
            "no dead connection left"
        );
    }
}

#[actix_web::test]
async fn a_database_outage_answers_503_and_the_app_recovers_by_itself() {
    let cluster = scratch_cluster("outage");
    let base = cluster.base.clone();
    let pg = cluster.primary().unwrap();
    pg.create_database_if_missing("zdm").unwrap();
    let url = pg.url("zdm");
    schema_migrations::run_infrastructure_migrations(&mut PgConnection::establish(&url).unwrap())
        .unwrap();
    let (address, _follower, _) = serve(&url, PoolLimits::with_size(4));
    let client = reqwest::Client::new();
    let id = create_grace(&client, &address).await;

    pg.stop().unwrap();
    for request in [
        client.get(format!("{address}/api/v1/users/{id}")),
        client
            .post(format!("{address}/api/v1/users"))
            .json(&json!({ "full_name": "X", "email": "x@example.com" })),
        client.get(format!("{address}/v1/users")),
    ] {
        let started = Instant::now();
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 503);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "failed fast: {:?}",
            started.elapsed()
        );
    }

    LocalPg::ensure_running(&base).unwrap();
    let mut recovered = false;
    for _ in 0..100 {
        let response = client
            .get(format!("{address}/api/v1/users/{id}"))
            .send()
            .await
            .unwrap();
        if response.status() == 200 {
            assert_eq!(
                response.json::<Value>().await.unwrap()["full_name"],
                "Grace Hopper",
                "the write survived"
            );
            recovered = true;
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the app came back by itself");
    drop(cluster);
}

#[test]
fn a_transaction_left_idle_on_a_pooled_connection_is_ended_by_the_server() {
    let db = TestDb::migrated();
    let limits = PoolLimits {
        statement_timeout: Duration::from_millis(1234),
        idle_in_transaction_timeout: Duration::from_millis(300),
        ..PoolLimits::with_size(1)
    };
    let pool = zdm::db::build_pool(&db.url, limits).unwrap();
    let mut conn = pool.get().unwrap();
    #[derive(QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement_timeout: String,
    }
    let setting: Setting = diesel::sql_query("SHOW statement_timeout")
        .get_result(&mut **conn)
        .unwrap();
    assert_eq!(setting.statement_timeout, "1234ms");
    let pid: i32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "pg_backend_pid()",
    ))
    .get_result(&mut **conn)
    .unwrap();
    // A forgotten transaction (a bug, a crashed handler) would hold its locks forever...
    conn.batch_execute("BEGIN; SELECT count(*) FROM users;")
        .unwrap();
    // ...but the server ends the session, releasing them (watched from another session:
    // a query on this one would restart its idle time).
    let mut watcher = db.conn();
    let started = Instant::now();
    loop {
        let alive: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
            "count(*) FROM pg_stat_activity WHERE pid = {pid}"
        )))
        .get_result(&mut watcher)
        .unwrap();
        if alive == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the idle transaction was not ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        conn.batch_execute("SELECT 1").is_err(),
        "the idle transaction was ended"
    );
}
