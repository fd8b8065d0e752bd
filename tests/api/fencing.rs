//! No stale phase (I8): an instance that has not read the phase within its lease serves no
//! phase-dependent request, and an instance acknowledges a new phase only once the requests
//! begun under the old one have finished.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use zdm::domain::Phase;
use zdm::migration::{runner, state};

use crate::helpers::{ServeProcess, TestApp, WAIT, eventually, free_port, wait_for_every_instance};

/// Whether every thread of process `pid` is stopped: SIGSTOP arrives asynchronously, and a
/// thread still running could accept a request (and start its timers) before it stops.
fn stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('T'))
        })
    })
}

/// The instance ids the database counts as live.
fn live_ids(conn: &mut PgConnection) -> Vec<String> {
    state::live_instances(conn)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect()
}

#[actix_web::test]
async fn an_instance_frozen_past_its_lease_serves_no_stale_code_when_it_thaws() {
    let a = TestApp::spawn().await;
    let mut conn = a.db.conn();
    a.walk_to(Phase::ReadNew).await;
    let b = ServeProcess::start(
        free_port(),
        &[("DATABASE_URL", &a.db.url), ("ZDM_POOL_SIZE", "4")],
        WAIT,
    )
    .await;
    wait_for_every_instance(&mut conn).await;
    let b_id = live_ids(&mut conn)
        .into_iter()
        .find(|id| *id != a.instance_id)
        .unwrap();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let created: Value = client
        .post(format!("{}/api/v1/users", b.address))
        .json(&json!({ "full_name": "Ada Lovelace", "email": "ada@example.com" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ada = created["id"].as_i64().unwrap();

    // B freezes (a stop-the-world pause, a suspended VM). Requests queue on its socket, each
    // on a connection of its own (an idle kept-alive one would time out during the freeze).
    b.signal(Signal::SIGSTOP).unwrap();
    eventually("B to be stopped", || stopped(b.pid())).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut queued = Vec::new();
    for i in 0..4 {
        let (client, address) = (client.clone(), b.address.clone());
        queued.push(actix_web::rt::spawn(async move {
            let create = client
                .post(format!("{address}/api/v1/users"))
                .json(&json!({ "full_name": format!("Late Writer{i}"), "email": format!("late{i}@example.com") }))
                .send()
                .await
                .unwrap();
            let read = client
                .get(format!("{address}/api/v1/users/{ada}"))
                .send()
                .await
                .unwrap();
            (create.status().as_u16(), read.status().as_u16())
        }));
    }
    // Past the live window the gates stop waiting for B, and A walks to the contract.
    eventually("B to drop out of the live instances", || {
        !live_ids(&mut conn).contains(&b_id)
    })
    .await;
    a.walk_to(Phase::Contracted).await;

    // B thaws while the phase cannot be read (the row is locked, as a partition would cut
    // it off): its lease is long gone, so it serves nothing until it has read the phase.
    let mut blocker = a.db.conn();
    blocker
        .batch_execute("BEGIN; LOCK TABLE zdm_migration_state IN ACCESS EXCLUSIVE MODE;")
        .unwrap();
    b.signal(Signal::SIGCONT).unwrap();
    for request in queued {
        // 503 from the fence. A request whose head actix-web reads first thing after the thaw
        // may instead get its 408: actix-web's clock (a cached "now") was frozen too, so the
        // request timer it starts is already out. Either way no handler runs; never a 500 from
        // read_new code meeting the contracted table, never a 2xx.
        let (create, read) = request.await.unwrap();
        for status in [create, read] {
            assert!(
                [503, 408].contains(&status),
                "a thawed instance with a stale lease refuses, it answered {status}"
            );
        }
    }
    blocker.batch_execute("COMMIT").unwrap();

    // Once it has read the phase, B serves contracted code.
    eventually("B to acknowledge contracted", || {
        state::live_instances(&mut conn)
            .unwrap()
            .iter()
            .any(|i| i.id == b_id && i.phase() == Some(Phase::Contracted))
    })
    .await;
    let after = client
        .post(format!("{}/api/v1/users", b.address))
        .json(&json!({ "full_name": "Grace Hopper", "email": "grace@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 201);
    let ada_now: Value = client
        .get(format!("{}/api/v1/users/{ada}", b.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ada_now["full_name"], "Ada Lovelace",
        "the write before the freeze"
    );
    let late: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM users WHERE email LIKE 'late%')",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(late, 0, "no refused write was stored");
}

#[actix_web::test]
async fn a_request_begun_under_backfilled_holds_the_acknowledgement_of_read_new_and_the_next_gate()
{
    // Statements may wait longer than the test's lock (the default would cancel at 5 s).
    let limits = zdm::db::PoolLimits {
        statement_timeout: Duration::from_secs(60),
        ..zdm::db::PoolLimits::with_size(4)
    };
    let app = TestApp::spawn_with(
        std::sync::Arc::new(crate::helpers::TestDb::migrated()),
        limits,
    )
    .await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    app.walk_to(Phase::Backfilled).await;
    let mut conn = app.db.conn();

    // A slow request: a v1 rename, running backfilled's code, waits for a row another
    // transaction holds.
    let mut holder = app.db.conn();
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT id FROM users WHERE id = {id} FOR UPDATE;"
        ))
        .unwrap();
    let rename = {
        let (client, url) = (app.client.clone(), app.url(&format!("/api/v1/users/{id}")));
        actix_web::rt::spawn(async move {
            client
                .put(url)
                .json(&json!({ "full_name": "Augusta Ada King" }))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let applied = app.applied();
    eventually("the slow request to begin", || applied.in_flight() == 1).await;

    // The step to read_new changes no schema, so the waiting request does not hold it up.
    runner::advance(&mut conn, "test", None).unwrap();
    eventually("the instance to switch to read_new", || {
        app.phase() == Phase::ReadNew
    })
    .await;
    // It keeps beating, and keeps saying backfilled while the request runs.
    let seen = |conn: &mut PgConnection| {
        state::live_instances(conn)
            .unwrap()
            .into_iter()
            .find(|i| i.id == app.instance_id)
            .unwrap()
    };
    let first = seen(&mut conn).last_seen;
    eventually("a heartbeat after the switch", || {
        seen(&mut conn).last_seen > first
    })
    .await;
    assert_eq!(seen(&mut conn).applied_phase, "backfilled");
    let refused = app.advance(None).await;
    assert_eq!(refused.status(), 409);
    let error = refused.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        error.contains(&format!("{} (backfilled)", app.instance_id)),
        "{error}"
    );

    // The request ends; then the instance acknowledges, and the next step may go.
    holder.batch_execute("COMMIT").unwrap();
    assert_eq!(rename.await.unwrap(), 200);
    app.wait_for_phase(Phase::ReadNew).await;
    assert_eq!(app.advance(None).await.status(), 200);
}
