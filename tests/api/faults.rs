//! Fault injection is the demo's alone: a production process that inherited a fault variable
//! must not lose writes because of it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestDb};

#[derive(QueryableByName)]
struct StoredName {
    #[diesel(sql_type = Text)]
    full_name: String,
}

/// With `ZDM_FAULT_LOSE_WRITES=2` in its environment, a plain `zdm serve` loses no update it
/// answers as done: it refuses to start, naming the variable, before it answers anything.
#[actix_web::test]
async fn a_plain_serve_with_a_fault_variable_loses_no_acknowledged_write() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    let id: i64 = diesel::sql_query(
        "INSERT INTO users (full_name, email) VALUES ('Ada Lovelace', 'ada@example.org') \
         RETURNING id",
    )
    .get_result::<Id>(&mut conn)
    .unwrap()
    .id;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = crate::helpers::zdm_command()
        .arg("serve")
        .env("DATABASE_URL", &db.url)
        .env("ZDM_BIND", format!("127.0.0.1:{port}"))
        .env("ADMIN_TOKEN", ADMIN_TOKEN)
        .env("ZDM_POOL_SIZE", "2")
        .env("RUST_LOG", "warn")
        .env("ZDM_FAULT_LOSE_WRITES", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Until it exits: every update it acknowledges must be in the database.
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/api/v1/users/{id}");
    let started = Instant::now();
    let mut acknowledged = 0;
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!(
                "zdm serve kept running with ZDM_FAULT_LOSE_WRITES set ({acknowledged} updates acknowledged, none lost)"
            );
        }
        let name = format!("Ada Update {acknowledged}");
        let sent = client
            .put(&url)
            .json(&json!({ "full_name": name }))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            let stored = diesel::sql_query("SELECT full_name FROM users WHERE id = $1")
                .bind::<BigInt, _>(id)
                .get_result::<StoredName>(&mut conn)
                .unwrap();
            if stored.full_name != name {
                let _ = child.kill();
                panic!(
                    "update {acknowledged} was acknowledged and lost: stored {:?}, sent {name:?}",
                    stored.full_name
                );
            }
            acknowledged += 1;
        } else {
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ZDM_FAULT_LOSE_WRITES") && stderr.contains("zdm demo --fault"),
        "the refusal names the variable and where faults come from: {stderr}"
    );
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: i64,
}
