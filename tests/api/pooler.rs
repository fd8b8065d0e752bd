//! zdm behind a transaction-mode pooler (a real PgBouncer with two server connections per
//! database, so that every server connection is shared between clients), as production runs
//! it: requests through the pooler, the work that needs a session on a direct connection.

use std::sync::Arc;

use serde_json::{Value, json};
use zdm::domain::Phase;

use diesel::connection::SimpleConnection;

use crate::helpers::{AppRole, TestApp, TestDb, error_of, eventually, pgbouncer};

/// Concurrent v1 (and, from dual_write on, v2) creates and reads on every instance: none may
/// answer 5xx. Returns the ids created.
async fn burst(apps: &[&TestApp], phase: Phase, round: usize) -> Vec<i64> {
    let mut requests = Vec::new();
    for (i, app) in apps.iter().enumerate() {
        for n in 0..12 {
            let email = format!("r{round}-a{i}-n{n}@example.com");
            let (path, body) = if phase >= Phase::DualWrite && n % 2 == 1 {
                (
                    "/api/v2/users",
                    json!({ "first_name": "Ada", "last_name": format!("L{n}"), "email": email }),
                )
            } else {
                (
                    "/api/v1/users",
                    json!({ "full_name": format!("Ada L{n}"), "email": email }),
                )
            };
            requests.push(async move {
                let created = app.post_json(path, &body).await;
                let status = created.status().as_u16();
                let body: Value = created.json().await.unwrap_or_default();
                let id = body["id"].as_i64();
                let read = match id {
                    Some(id) => app
                        .get(&format!("/api/v1/users/{id}"))
                        .await
                        .status()
                        .as_u16(),
                    None => 0,
                };
                let list = app.get("/api/v1/users?limit=5").await.status().as_u16();
                (status, read, list, id, body)
            });
        }
    }
    let results = futures_util::future::join_all(requests).await;
    for (status, read, list, _, body) in &results {
        assert_eq!(
            (*status, *read, *list),
            (201, 200, 200),
            "in {phase} behind the pooler: {body}"
        );
    }
    results.into_iter().filter_map(|r| r.3).collect()
}

#[actix_web::test]
async fn two_instances_walk_every_phase_and_back_through_a_transaction_pooler() {
    let db = Arc::new(TestDb::migrated());
    // Requests as a role with only the grants the README gives it, through a pooler with two
    // server connections; the steps, the backfill and verify on direct sessions.
    let web = AppRole::pooled(&db);
    let bouncer = pgbouncer(2, &[&web.name]);
    let url = bouncer.url(&db.name, &web.name);
    let a = TestApp::spawn_pooled(&url, db.clone(), 4);
    let b = TestApp::spawn_pooled(&url, db.clone(), 4);
    a.seed(3000);
    let apps = [&a, &b];
    // The status says which URL serves what, without the role's name.
    let connections = a.admin_status().await["connections"].clone();
    assert_eq!(connections["pooled"], true, "{connections}");
    assert!(
        connections["requests"].as_str().unwrap().contains(":6432/"),
        "{connections}"
    );
    assert!(
        !connections.to_string().contains(&web.name),
        "{connections}"
    );
    let mut round = 0;
    let mut ids = Vec::new();

    // Two operators press "Advance" at once on two instances: one step.
    let from = json!({ "from": "baseline" });
    let (first, second) = futures_util::future::join(
        a.admin_post("/api/admin/migration/advance", from.clone()),
        b.admin_post("/api/admin/migration/advance", from),
    )
    .await;
    let mut statuses = [first.status().as_u16(), second.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409]);
    a.wait_for_phase(Phase::Expanded).await;

    for phase in Phase::ALL {
        if phase > Phase::Expanded {
            if phase == Phase::Backfilled {
                // The backfill with three workers while both instances take requests.
                let started = a
                    .admin_post(
                        "/api/admin/backfill/start",
                        json!({ "batch_size": 200, "workers": 3 }),
                    )
                    .await;
                assert_eq!(started.status(), 202);
                let started: Value = started.json().await.unwrap();
                assert_eq!(started["workers"], 3, "{started}");
                round += 1;
                ids.extend(burst(&apps, Phase::DualWrite, round).await);
                backfill_done(&a).await;
            }
            a.walk_to(phase).await;
            b.wait_for_phase(phase).await;
        }
        round += 1;
        ids.extend(burst(&apps, phase, round).await);
    }
    for phase in Phase::ALL.iter().rev().skip(1) {
        let rolled = b.rollback().await;
        assert_eq!(
            rolled.status(),
            200,
            "back to {phase}: {}",
            rolled.text().await.unwrap()
        );
        a.wait_for_phase(*phase).await;
        b.wait_for_phase(*phase).await;
        round += 1;
        ids.extend(burst(&apps, *phase, round).await);
    }
    // Every acknowledged write is there.
    for id in ids {
        assert_eq!(
            a.get(&format!("/api/v1/users/{id}")).await.status(),
            200,
            "user {id}"
        );
    }
}

#[actix_web::test]
async fn the_drops_client_gate_sees_a_client_behind_the_pooler() {
    let db = Arc::new(TestDb::migrated());
    let web = AppRole::pooled(&db);
    let reporter = AppRole::reader(&db, "reporter");
    let bouncer = pgbouncer(2, &[&web.name]);
    let url = bouncer.url(&db.name, &web.name);
    let app = TestApp::spawn_pooled(&url, db.clone(), 4);
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut conn = db.conn();
    zdm::migration::state::set_contract_quiet_secs(&mut conn, 3).unwrap();
    app.walk_to(Phase::NewOnly).await;

    // A report of a role of its own reads full_name: the heartbeats (through the pooler, as
    // the pooled role) and the step (direct) both see it.
    let mut report = reporter.conn();
    report
        .batch_execute(&format!("SELECT full_name FROM users WHERE id = {id}"))
        .unwrap();
    let refused = app.advance(Some("users.full_name")).await;
    assert_eq!(refused.status(), 409);
    let error = error_of(refused).await;
    assert!(
        error.contains("clients gate") && error.contains("SELECT full_name FROM users"),
        "{error}"
    );
    eventually("the quiet window to pass", || {
        zdm::migration::gates::advance_gates(&mut conn, Phase::NewOnly)
            .unwrap()
            .iter()
            .any(|g| g.name == "clients" && g.met)
    })
    .await;
    assert_eq!(app.advance(Some("users.full_name")).await.status(), 200);
}

/// Waits until the backfill has run to the end.
async fn backfill_done(app: &TestApp) {
    app.wait_for_backfill("the backfill to finish", |backfill| {
        assert!(
            matches!(
                backfill["state"].as_str(),
                Some("done" | "running" | "throttled")
            ),
            "the backfill stopped short: {backfill}"
        );
        backfill["state"] == "done"
    })
    .await;
}

/// A change of the backfill's settings is checked as the role that runs the batches (the
/// direct one), not as the pooled role the requests use: "skip" the triggers is allowed to
/// a role that may set session_replication_role, which the pooled role may not.
#[actix_web::test]
async fn a_settings_change_is_checked_as_the_role_that_runs_the_batches() {
    let db = Arc::new(TestDb::migrated());
    let web = AppRole::pooled(&db);
    let bouncer = pgbouncer(2, &[&web.name]);
    let url = bouncer.url(&db.name, &web.name);
    let app = TestApp::spawn_pooled(&url, db.clone(), 4);
    app.seed(200);
    let mut conn = db.conn();
    conn.batch_execute(
        "CREATE FUNCTION users_touched() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RETURN NEW; END $$;
         CREATE TRIGGER users_touched BEFORE UPDATE ON users
             FOR EACH ROW EXECUTE FUNCTION users_touched();",
    )
    .unwrap();
    app.walk_to(Phase::DualWrite).await;
    let changed = app
        .admin_post(
            "/api/admin/backfill/settings",
            serde_json::json!({ "triggers": "skip" }),
        )
        .await;
    let status = changed.status();
    assert_eq!(status, 200, "{}", error_of(changed).await);
    assert_eq!(
        app.admin_status().await["backfill"]["triggers"],
        "skip",
        "the choice is stored"
    );
}
