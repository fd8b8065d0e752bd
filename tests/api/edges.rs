//! Safety at the edges: phase steps taken by hand (`diesel migration run` / `revert`), steps
//! that fail half-way, writes the schema refuses, and any sequence of all of these leaving
//! the schema exactly the phase's.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::MigrationHarness;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::{Value, json};
use zdm::domain::Phase;
use zdm::migration::backfill::{self, BackfillState, Direction, Throttle};
use zdm::migration::follower::PhaseFollower;
use zdm::migration::runner::{self, NEW_ONLY, STEPS};
use zdm::migration::schema_migrations::{self, MIGRATIONS};
use zdm::migration::{gates, state};

use crate::helpers::{
    TestApp, TestDb, WAIT, by_hand, error_of, users_checks, users_columns, wait_for,
};

/// `diesel migration run`: every pending migration in order, until one fails.
fn hand_run(conn: &mut PgConnection) -> Result<(), String> {
    by_hand(conn, |conn| {
        conn.run_pending_migrations(MIGRATIONS).map(drop)
    })
}

/// `diesel migration revert`: the last applied migration.
fn hand_revert(conn: &mut PgConnection) -> Result<(), String> {
    by_hand(conn, |conn| {
        conn.revert_last_migration(MIGRATIONS).map(drop)
    })
}

#[actix_web::test]
async fn a_hand_run_in_dual_write_stops_at_the_backfill_gate_and_a_rollback_keeps_v1_writing() {
    let app = TestApp::spawn().await;
    let unfilled = app.create_user("Ada Lovelace", "ada@example.com").await;
    app.walk_to(Phase::DualWrite).await;
    let mut conn = app.db.conn();

    // A deploy pipeline runs `diesel migration run`: it stops at the step to backfilled,
    // saying what to do, and takes no part of it.
    let err = hand_run(&mut conn).unwrap_err();
    assert!(
        err.contains("backfill gate") && err.contains("`zdm backfill`"),
        "{err}"
    );
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::DualWrite);
    assert!(users_checks(&mut conn).is_empty(), "no guard was added");

    // `diesel migration revert` steps back a phase: to expanded, whose v1 code writes
    // full_name alone.
    hand_revert(&mut conn).unwrap();
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::Expanded);
    app.wait_for_phase(Phase::Expanded).await;
    assert!(users_checks(&mut conn).is_empty());
    app.create_user("Grace Hopper", "grace@example.com").await;
    let renamed = app
        .put_json(
            &format!("/api/v1/users/{unfilled}"),
            &json!({ "full_name": "Augusta Ada King" }),
        )
        .await;
    assert_eq!(renamed.status(), 200);

    // Run again from expanded, it takes one step (to dual_write) and stops at the next gate:
    // the instances have not applied dual_write yet, or the backfill has not run.
    let err = hand_run(&mut conn).unwrap_err();
    assert!(
        err.contains("instances gate") || err.contains("backfill gate"),
        "{err}"
    );
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::DualWrite);
    // The history names who took the steps by hand.
    let history = state::history(&mut conn, 5).unwrap();
    assert_eq!(history[0].to_phase, "dual_write");
    assert!(history[0].actor.starts_with("by hand"), "{history:?}");
    // `zdm migrate status` lists the phase migrations as `diesel migration list` does.
    let status = crate::helpers::zdm_command()
        .args(["migrate", "status"])
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("phase: dual_write"), "{stdout}");
    for (i, step) in STEPS.iter().enumerate() {
        let mark = if i < 2 { "[X]" } else { "[ ]" };
        assert!(stdout.contains(&format!("{mark} {step}")), "{stdout}");
    }
}

#[actix_web::test]
async fn a_step_to_backfilled_that_finds_a_bad_row_undoes_itself() {
    let app = TestApp::spawn().await;
    let broken = app.create_user("Ada Lovelace", "ada@example.com").await;
    app.create_user("Grace Hopper", "grace@example.com").await;
    app.walk_to(Phase::DualWrite).await;
    app.backfill_to_the_end().await;
    let mut conn = app.db.conn();

    // Behind zdm's back, a script gives a row a first name that disagrees with full_name: the
    // guard validates, the verification that follows it does not, and the guard goes again.
    conn.batch_execute(&format!(
        "UPDATE users SET first_name = 'Someone' WHERE id = {broken}"
    ))
    .unwrap();
    let refused = app.advance(None).await;
    assert_eq!(refused.status(), 409);
    let error = error_of(refused).await;
    assert!(
        error.contains("verify gate") && error.contains("was removed"),
        "{error}"
    );
    assert!(
        users_checks(&mut conn).is_empty(),
        "nothing of the step remains"
    );
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::DualWrite);
    let last = &state::history(&mut conn, 1).unwrap()[0];
    assert_eq!(
        (last.to_phase.as_str(), last.outcome.as_str()),
        ("backfilled", "failed")
    );
    assert!(
        last.detail
            .as_deref()
            .unwrap_or_default()
            .contains("undone"),
        "{last:?}"
    );

    // Another script empties a last name: VALIDATE itself fails, and the guard goes again.
    app.backfill_to_the_end().await;
    conn.batch_execute(&format!(
        "UPDATE users SET last_name = NULL WHERE id = {broken}"
    ))
    .unwrap();
    let err = hand_run(&mut conn).unwrap_err();
    assert!(
        err.contains("VALIDATE CONSTRAINT users_names_present found rows"),
        "{err}"
    );
    assert!(
        users_checks(&mut conn).is_empty(),
        "nothing of the step remains"
    );
    // v1 and v2 keep writing meanwhile.
    app.create_user("Alan Turing", "alan@example.com").await;

    app.backfill_to_the_end().await;
    let advanced = app.advance(None).await;
    assert_eq!(advanced.status(), 200);
    assert_eq!(users_checks(&mut conn), ["users_names_present"]);
}

#[actix_web::test]
async fn a_write_the_schema_refuses_answers_503_naming_the_constraint() {
    let app = TestApp::spawn().await;
    app.walk_to(Phase::Backfilled).await;
    // An instance that has not heard of the phases since expanded: its v1 create writes
    // full_name alone, which the validated guard refuses.
    let (late, handle) = TestApp::spawn_stuck(Arc::clone(&app.db), Phase::Expanded).await;
    let response = app
        .client
        .post(format!("{late}/api/v1/users"))
        .json(&json!({ "full_name": "Ada Lovelace", "email": "ada@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let error = error_of(response).await;
    assert!(error.contains("users_names_present"), "{error}");
    handle.stop(false).await;
}

#[test]
fn diesel_migration_revert_steps_back_a_phase_and_never_reverts_infrastructure_past_baseline() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    conn.run_next_migration(MIGRATIONS).unwrap();
    conn.run_next_migration(MIGRATIONS).unwrap();
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::DualWrite);
    assert_eq!(
        runner::last_applied_step(&mut conn).unwrap(),
        Some(STEPS[1])
    );

    hand_revert(&mut conn).unwrap();
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::Expanded);
    assert!(users_columns(&mut conn).contains(&"first_name?".to_owned()));
    hand_revert(&mut conn).unwrap();
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::Baseline);
    assert!(!users_columns(&mut conn).contains(&"first_name?".to_owned()));

    // A phase past baseline with no phase migration recorded (set by hand): reverting would
    // reach the infrastructure the app needs, and it refuses.
    conn.batch_execute("UPDATE zdm_migration_state SET phase = 'expanded'")
        .unwrap();
    let err = hand_revert(&mut conn).unwrap_err();
    assert!(err.contains("reverted only at baseline"), "{err}");
}

#[test]
fn a_database_with_the_old_phase_versions_is_adopted_at_start_up() {
    let db = TestDb::empty();
    let mut conn = db.conn();
    // The infrastructure as it was before the phase migrations moved to their own range.
    let before: Vec<String> = schema_migrations::all_migration_names()
        .unwrap()
        .into_iter()
        .take_while(|name| !name.starts_with("2026-11-30"))
        .collect();
    for _ in &before {
        conn.run_next_migration(MIGRATIONS).unwrap();
    }
    // Three phase steps taken under the old versions (expand, add check, validate check).
    conn.batch_execute(
        "INSERT INTO __diesel_schema_migrations (version)
         VALUES ('20261124100001'), ('20261124100002'), ('20261124100003');
         UPDATE zdm_migration_state SET phase = 'read_new';",
    )
    .unwrap();
    schema_migrations::run_infrastructure_migrations(&mut conn).unwrap();
    assert_eq!(
        runner::last_applied_step(&mut conn).unwrap(),
        Some(runner::READ_NEW)
    );
    for step in &STEPS[..4] {
        assert!(runner::is_applied(&mut conn, step).unwrap(), "{step}");
    }
    for step in &STEPS[4..] {
        assert!(!runner::is_applied(&mut conn, step).unwrap(), "{step}");
    }
}

/// The schema a phase promises: `users`' columns (`?` for nullable) and CHECKs. A rollback
/// out of new_only that has moved the phase back but not yet required full_name again has
/// new_only's schema.
fn expected_schema(phase: Phase, leaving_new_only: bool) -> (Vec<String>, Vec<String>) {
    let names = phase >= Phase::Expanded;
    let full_name = if phase == Phase::Contracted {
        None
    } else if phase == Phase::NewOnly || leaving_new_only {
        Some("full_name?")
    } else {
        Some("full_name")
    };
    let parts = match phase {
        Phase::Contracted => ["first_name", "last_name"],
        _ => ["first_name?", "last_name?"],
    };
    let mut columns = vec!["created_at", "email", "id", "updated_at"];
    columns.extend(full_name);
    if names {
        columns.extend(parts);
    }
    columns.sort();
    let checks = if (Phase::Backfilled..=Phase::NewOnly).contains(&phase) {
        vec!["users_names_present".to_owned()]
    } else {
        vec![]
    };
    (columns.into_iter().map(str::to_owned).collect(), checks)
}

#[derive(Debug, Clone, Copy)]
enum Op {
    /// `zdm migrate advance` (with the contract's confirmation).
    Advance,
    /// `zdm migrate rollback`.
    Rollback,
    /// `diesel migration run`.
    HandRun,
    /// `diesel migration revert`, while a phase step is applied.
    HandRevert,
    /// The forward backfill, where its gates allow.
    Backfill,
    /// A script writes behind zdm's back: a row whose first name disagrees with full_name
    /// (a forced failure of the next verification).
    BreakRow,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => Just(Op::Advance),
            3 => Just(Op::HandRun),
            2 => Just(Op::Rollback),
            2 => Just(Op::HandRevert),
            2 => Just(Op::Backfill),
            1 => Just(Op::BreakRow),
        ],
        1..16,
    )
}

/// Waits until the instance of `follower` has acknowledged the stored phase (this test runs
/// outside any runtime, so it starts one to wait in).
fn settle(conn: &mut PgConnection, follower: &PhaseFollower) {
    actix_web::rt::System::new().block_on(wait_for(
        "the instance to acknowledge the stored phase",
        WAIT,
        async || {
            let phase = state::current_phase(conn).unwrap();
            let live = state::live_instances(conn).unwrap();
            let applied = follower.applied().get();
            if applied == phase && live.iter().all(|i| i.phase() == Some(phase)) {
                Ok(())
            } else {
                Err(format!(
                    "the stored phase is {phase}, the instance runs {applied}"
                ))
            }
        },
    ))
}

/// Only a refusal or a step that undid itself may stop a step; anything else is a bug.
fn assert_refused(what: &str, error: &str) {
    assert!(
        error.contains("zdm gate")
            || error.contains("zdm step undone")
            || error.contains("refused"),
        "{what} failed in an unexpected way: {error}"
    );
}

fn apply(conn: &mut PgConnection, op: Op) {
    let phase = state::current_phase(conn).unwrap();
    match op {
        Op::Advance => {
            if let Err(e) = runner::advance(conn, "test", Some("users.full_name")) {
                assert!(e.is_conflict(), "advance from {phase}: {e}");
            }
        }
        Op::Rollback => {
            if let Err(e) = runner::rollback(conn, "test", None, &mut Throttle::none()) {
                assert!(e.is_conflict(), "rollback from {phase}: {e}");
            }
        }
        Op::HandRun => {
            conn.batch_execute("SET zdm.confirm = 'users.full_name'")
                .unwrap();
            if let Err(e) = hand_run(conn) {
                assert_refused("diesel migration run", &e);
            }
            conn.batch_execute("RESET zdm.confirm").unwrap();
        }
        Op::HandRevert => {
            if runner::last_applied_step(conn).unwrap().is_some()
                && let Err(e) = hand_revert(conn)
            {
                assert_refused("diesel migration revert", &e);
            }
        }
        Op::Backfill => {
            if gates::backfill_gates(conn, phase)
                .unwrap()
                .iter()
                .all(|g| g.met)
            {
                let done = backfill::run(conn, Direction::Forward, |_| {}).unwrap();
                assert_eq!(done.state, BackfillState::Done);
            }
        }
        Op::BreakRow => {
            if (Phase::Expanded..=Phase::NewOnly).contains(&phase) {
                conn.batch_execute(
                    "UPDATE users SET first_name = 'Broken' WHERE id = (SELECT min(id) FROM users)",
                )
                .unwrap();
            }
        }
    }
}

/// After every operation: the schema is exactly the stored phase's, and the applied phase
/// migrations are exactly those of the steps up to it (`diesel migration list` agrees with
/// `zdm migrate status`).
fn check(conn: &mut PgConnection, after: &[Op]) -> (Phase, bool) {
    let phase = state::current_phase(conn).unwrap();
    let leaving_new_only = phase == Phase::ReadNew && runner::is_applied(conn, NEW_ONLY).unwrap();
    let (columns, checks) = expected_schema(phase, leaving_new_only);
    assert_eq!(
        users_columns(conn),
        columns,
        "columns at {phase} after {after:?}"
    );
    assert_eq!(
        users_checks(conn),
        checks,
        "checks at {phase} after {after:?}"
    );
    let steps = phase.index() + usize::from(leaving_new_only);
    for (i, step) in STEPS.iter().enumerate() {
        assert_eq!(
            runner::is_applied(conn, step).unwrap(),
            i < steps,
            "{step} at {phase} after {after:?}"
        );
    }
    (phase, leaving_new_only)
}

#[test]
fn any_sequence_of_steps_hand_runs_and_failures_leaves_exactly_the_phases_schema() {
    // A fixed seed: the same sequences every run, so the coverage asserted below is no luck.
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 24,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
    );
    let visited = Mutex::new(BTreeSet::new());
    runner
        .run(&ops(), |ops| {
            let db = TestDb::migrated();
            let mut conn = db.conn();
            zdm::tools::seed::seed_users(&mut conn, Phase::Baseline, 40, 7, |_| {}).unwrap();
            let pool = zdm::db::build_pool(&db.url, zdm::db::PoolLimits::with_size(2)).unwrap();
            let follower = PhaseFollower::start(pool, Duration::from_millis(20)).unwrap();
            for (i, op) in ops.iter().enumerate() {
                apply(&mut conn, *op);
                settle(&mut conn, &follower);
                let reached = check(&mut conn, &ops[..=i]);
                visited.lock().unwrap().insert(reached);
            }
            drop(follower);
            Ok(())
        })
        .unwrap();
    // The sequences reached every phase, and the rollback out of new_only stopped half-way.
    let visited = visited.into_inner().unwrap();
    for phase in Phase::ALL {
        assert!(visited.contains(&(phase, false)), "never reached {phase}");
    }
    assert!(visited.contains(&(Phase::ReadNew, true)), "{visited:?}");
}

#[actix_web::test]
async fn the_reverse_backfill_of_a_rollback_waits_for_slow_requests() {
    let app = TestApp::spawn().await;
    app.seed(300);
    app.walk_to(Phase::NewOnly).await;
    let mut conn = app.db.conn();
    // Another instance reports slow user requests (it dual-writes already, so the rollback
    // does not wait for it to switch).
    conn.batch_execute(
        "INSERT INTO zdm_instances (id, applied_phase, recent_p99_ms)
         VALUES ('slow-instance', 'read_new', 900)",
    )
    .unwrap();
    let url = app.db.url.clone();
    let rollback = std::thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        runner::rollback(
            &mut conn,
            "test",
            None,
            &mut Throttle::none().with_request_p99_limit(Some(50.0)),
        )
    });
    crate::helpers::eventually("the reverse backfill to wait for the slow requests", || {
        conn.batch_execute("UPDATE zdm_instances SET last_seen = now() WHERE id = 'slow-instance'")
            .unwrap();
        let status = backfill::status(&mut conn).unwrap();
        status.direction == Direction::Reverse && status.state == BackfillState::Throttled
    })
    .await;
    let waiting = backfill::status(&mut conn).unwrap();
    assert_eq!(
        waiting.rows_updated, 0,
        "no batch ran while requests were slow"
    );
    assert!(
        waiting
            .throttle_reason
            .as_deref()
            .unwrap_or_default()
            .contains("p99"),
        "{waiting:?}"
    );

    conn.batch_execute("DELETE FROM zdm_instances WHERE id = 'slow-instance'")
        .unwrap();
    let transition = rollback.join().unwrap().unwrap();
    assert_eq!(transition.to, Phase::ReadNew);
    assert!(users_columns(&mut conn).contains(&"full_name".to_owned()));
}

#[test]
fn every_transaction_of_a_phase_migration_that_locks_users_sets_lock_timeout() {
    let dir = crate::helpers::project_dir().join("migrations");
    let mut checked = 0;
    for step in STEPS {
        for file in ["up.sql", "down.sql"] {
            let sql = std::fs::read_to_string(dir.join(step).join(file)).unwrap();
            // A file that manages its own transactions is split at each BEGIN; else the whole
            // file is one transaction.
            for transaction in sql.split("\nBEGIN;") {
                let locks_users = ["ALTER TABLE", "zdm_validate_or_drop("]
                    .iter()
                    .any(|statement| transaction.contains(statement));
                if locks_users {
                    checked += 1;
                    assert!(
                        transaction.contains("SET LOCAL lock_timeout")
                            && transaction.contains("SELECT zdm_lock_attempt();"),
                        "{step}/{file}: a transaction locks users without the stored lock_timeout:\n{transaction}"
                    );
                }
            }
        }
    }
    assert!(checked >= 12, "{checked}");
}

/// The contract's gates as the status shows them.
async fn contract_gates(app: &TestApp) -> Vec<Value> {
    let status = app.admin_status().await;
    status["next"]["gates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn gate<'a>(gates: &'a [Value], name: &str) -> &'a Value {
    gates
        .iter()
        .find(|g| g["name"] == name)
        .unwrap_or_else(|| panic!("no {name} gate in {gates:?}"))
}

#[actix_web::test]
async fn a_divergent_row_in_read_new_holds_back_new_only_until_repaired() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    app.walk_to(Phase::ReadNew).await;
    // A script renames the user behind the new columns' back: without the gate, this write
    // would reach the drop unnoticed, and be lost there.
    let mut conn = app.db.conn();
    conn.batch_execute(&format!(
        "UPDATE users SET full_name = 'Augusta Ada King' WHERE id = {id}"
    ))
    .unwrap();
    let refused = app.advance(None).await;
    assert_eq!(refused.status(), 409);
    let error = error_of(refused).await;
    assert!(
        error.contains("verify gate") && error.contains(&id.to_string()),
        "{error}"
    );
    // The dashboard and `migrate status` show it (the refused step stored its verification).
    let verify = gate(&contract_gates(&app).await, "verify").clone();
    assert_eq!(verify["met"], false, "{verify}");
    assert_eq!(app.phase(), Phase::ReadNew);

    // The backfill repairs it (full_name is the newer write), and new_only may go.
    app.backfill_to_the_end().await;
    assert_eq!(app.advance(None).await.status(), 200);
    let v2: Value = app.get_json(&format!("/api/v2/users/{id}")).await;
    assert_eq!(
        (v2["first_name"].as_str(), v2["last_name"].as_str()),
        (Some("Augusta"), Some("Ada King"))
    );
}

#[actix_web::test]
async fn a_client_still_reading_full_name_holds_back_the_contract_until_a_quiet_window() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut conn = app.db.conn();
    zdm::migration::state::set_contract_quiet_secs(&mut conn, 3).unwrap();
    app.walk_to(Phase::NewOnly).await;

    // A report zdm does not know of, in a psql session, still reads full_name.
    let mut report = app.db.conn();
    report
        .batch_execute("SET application_name = 'psql'")
        .unwrap();
    let read_full_name = |report: &mut PgConnection| {
        report
            .batch_execute(&format!("SELECT full_name FROM users WHERE id = {id}"))
            .unwrap();
    };
    read_full_name(&mut report);
    let refused = app.advance(Some("users.full_name")).await;
    assert_eq!(refused.status(), 409);
    let error = error_of(refused).await;
    assert!(
        error.contains("clients gate") && error.contains("SELECT full_name FROM users WHERE id ="),
        "{error}"
    );
    let clients = gate(&contract_gates(&app).await, "clients").clone();
    assert_eq!(clients["met"], false, "{clients}");
    assert_eq!(app.phase(), Phase::NewOnly);
    assert!(users_columns(&mut conn).contains(&"full_name?".to_owned()));

    // Each new use starts the window again; once the report has stopped for 3 s, the
    // contract goes ahead.
    read_full_name(&mut report);
    crate::helpers::eventually("the quiet window to pass", || {
        gates::advance_gates(&mut conn, Phase::NewOnly)
            .unwrap()
            .iter()
            .any(|g| g.name == "clients" && g.met)
    })
    .await;
    let contracted = app.advance(Some("users.full_name")).await;
    assert_eq!(contracted.status(), 200, "{}", error_of(contracted).await);
}

#[actix_web::test]
async fn without_pg_stat_statements_the_contract_needs_without_client_check() {
    let app = TestApp::spawn().await;
    app.walk_to(Phase::NewOnly).await;
    let mut conn = app.db.conn();
    conn.batch_execute("DROP EXTENSION pg_stat_statements")
        .unwrap();

    let clients = gate(&contract_gates(&app).await, "clients").clone();
    assert_eq!(clients["met"], false);
    assert!(
        clients["detail"]
            .as_str()
            .unwrap()
            .starts_with("unknown: install pg_stat_statements"),
        "{clients}"
    );
    let refused = app.advance(Some("users.full_name")).await;
    assert_eq!(refused.status(), 409);
    assert!(error_of(refused).await.contains("clients gate"));

    let contracted = app
        .admin_post(
            "/api/admin/migration/advance",
            json!({ "confirm": "users.full_name", "without_client_check": true }),
        )
        .await;
    assert_eq!(contracted.status(), 200);
    let last = &state::history(&mut conn, 1).unwrap()[0];
    assert_eq!(
        (last.to_phase.as_str(), last.outcome.as_str()),
        ("contracted", "done")
    );
    assert_eq!(last.detail.as_deref(), Some("without_client_check"));
}

/// The rollback out of new_only moves the phase back first, then refills full_name and makes
/// it required again. Interrupted in between (its connection lost while the reverse backfill
/// waits), it is told as stopped half-way, not as done; run again, it finishes.
#[actix_web::test]
async fn a_rollback_out_of_new_only_interrupted_half_way_is_not_told_as_done() {
    let app = TestApp::spawn().await;
    app.seed(300);
    app.walk_to(Phase::NewOnly).await;
    let mut conn = app.db.conn();
    // Another instance reports slow requests: the reverse backfill waits in `throttled`.
    let slow = "INSERT INTO zdm_instances (id, applied_phase, recent_p99_ms)
                VALUES ('slow-instance', 'read_new', 900)
                ON CONFLICT (id) DO UPDATE SET last_seen = now()";
    conn.batch_execute(slow).unwrap();
    let url = app.db.url.clone();
    let rollback = std::thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        let outcome = runner::rollback(
            &mut conn,
            "test",
            None,
            &mut Throttle::none().with_request_p99_limit(Some(50.0)),
        );
        zdm::migration::control::settle_step(&url, outcome, "test", Duration::from_secs(30))
    });
    crate::helpers::eventually("the reverse backfill to wait for the slow requests", || {
        conn.batch_execute(slow).unwrap();
        let status = backfill::status(&mut conn).unwrap();
        status.direction == Direction::Reverse && status.state == BackfillState::Throttled
    })
    .await;
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::ReadNew);
    // Its connection is lost (a restart, a proxy, a DBA's pg_terminate_backend).
    conn.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_locks
          WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .unwrap();
    let told = rollback.join().unwrap().unwrap_err();
    assert!(
        matches!(told, runner::RunError::Interrupted { .. }),
        "{told}"
    );
    let last = &state::history(&mut conn, 1).unwrap()[0];
    assert_eq!(last.outcome, "failed", "{last:?}");
    assert!(
        last.detail
            .as_deref()
            .unwrap_or_default()
            .contains("half-way"),
        "{last:?}"
    );
    assert!(users_columns(&mut conn).contains(&"full_name?".to_owned()));

    // Run again without the slow instance, it refills full_name and requires it again.
    conn.batch_execute("DELETE FROM zdm_instances WHERE id = 'slow-instance'")
        .unwrap();
    let transition = runner::rollback(&mut conn, "test", None, &mut Throttle::none()).unwrap();
    assert_eq!(transition.to, Phase::ReadNew);
    assert!(users_columns(&mut conn).contains(&"full_name".to_owned()));
}
