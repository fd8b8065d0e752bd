//! The steps on a lived-in database: zdm as an ordinary role, other roles' clients, another
//! table's `full_name`, views and triggers on the columns a step drops, a statistics reset,
//! a leftover column of the same name, a database's own statement_timeout, and row-level
//! security. Each is something a production database has that the lab set-up had not.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel_migrations::MigrationHarness;
use serde_json::{Value, json};
use zdm::db::databases::quote_ident;
use zdm::domain::Phase;
use zdm::migration::schema_migrations::MIGRATIONS;
use zdm::migration::{gates, state};

use crate::helpers::{AppRole, TestApp, TestDb, error_of, eventually, users_columns};

/// The gate `name` of the next step, as the dashboard and `zdm migrate status` show it.
pub(crate) async fn next_gate(app: &TestApp, name: &str) -> Value {
    let status = app.admin_status().await;
    status["next"]["gates"]
        .as_array()
        .and_then(|gates| gates.iter().find(|g| g["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no {name} gate in {status}"))
}

/// Whether the clients gate of the contract is met now (checking it samples the statistics).
pub(crate) fn clients_gate_met(conn: &mut PgConnection) -> bool {
    gates::advance_gates(conn, Phase::NewOnly)
        .expect("reading the gates")
        .iter()
        .any(|g| g.name == "clients" && g.met)
}

/// The value of a query's one `bigint`.
fn count(conn: &mut PgConnection, sql: &str) -> i64 {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(sql))
        .get_result(conn)
        .unwrap()
}

/// The divergent rows a verification through the admin API counts.
async fn divergent(app: &TestApp) -> i64 {
    let verified: Value = app
        .admin_post("/api/admin/verify", json!({}))
        .await
        .json()
        .await
        .unwrap();
    verified["divergent"]
        .as_i64()
        .unwrap_or_else(|| panic!("no count of divergent rows in {verified}"))
}

pub(crate) async fn contract(app: &TestApp) -> reqwest::Response {
    app.advance(Some("users.full_name")).await
}

pub(crate) async fn assert_refused(response: reqwest::Response, words: &[&str]) -> String {
    assert_eq!(response.status(), 409);
    let error = error_of(response).await;
    for w in words {
        assert!(error.contains(w), "{w:?} not in {error}");
    }
    error
}

#[actix_web::test]
async fn the_clients_gate_is_unknown_until_zdms_role_may_read_every_roles_statements() {
    let db = Arc::new(TestDb::migrated());
    let zdm_role = AppRole::create(&db, "zdm");
    let reporter = AppRole::reader(&db, "reporter");
    let app = TestApp::spawn_as(db.clone(), &zdm_role).await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut conn = db.conn();
    // Long enough that a loaded machine does not outlast it between a use and the check.
    state::set_contract_quiet_secs(&mut conn, 3).unwrap();
    app.walk_to(Phase::NewOnly).await;

    // A reporting client of a role of its own reads full_name.
    let mut report = reporter.conn();
    let read = format!("SELECT full_name FROM users WHERE id = {id}");
    report.batch_execute(&read).unwrap();
    let read_at = Instant::now();
    let (_, entered) = state::phase_and_since(&mut conn).unwrap();
    // Past the quiet window zdm's role has seen no use: it cannot see the report's.
    eventually("the quiet window to pass", || {
        read_at.elapsed() > Duration::from_millis(3500)
            && chrono::Utc::now() - entered > chrono::Duration::milliseconds(3500)
    })
    .await;
    let grant = format!("GRANT pg_read_all_stats TO {}", zdm_role.name);
    let clients = next_gate(&app, "clients").await;
    assert_eq!(clients["met"], false, "{clients}");
    assert!(
        clients["detail"].as_str().unwrap().contains(&grant),
        "{clients}"
    );
    assert_refused(contract(&app).await, &["clients gate", &grant]).await;
    assert_eq!(app.phase(), Phase::NewOnly);
    assert!(users_columns(&mut conn).contains(&"full_name?".to_owned()));

    // With the grant the report's statement is seen, and holds the drop while it runs. (The
    // first sample the grant allows counts every statement it finds as run just now.)
    conn.batch_execute(&grant).unwrap();
    eventually("the statements found at the grant to age out", || {
        clients_gate_met(&mut conn)
    })
    .await;
    report.batch_execute(&read).unwrap();
    assert_refused(
        contract(&app).await,
        &["clients gate", "SELECT full_name FROM users WHERE id ="],
    )
    .await;
    eventually("the report's quiet window to pass", || {
        clients_gate_met(&mut conn)
    })
    .await;
    assert_eq!(contract(&app).await.status(), 200);
}

#[actix_web::test]
async fn another_tables_full_name_does_not_hold_the_contract_but_a_join_with_users_does() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.conn();
    conn.batch_execute(
        "CREATE TABLE customers (id bigint PRIMARY KEY, full_name text);
         INSERT INTO customers VALUES (1, 'Grace Hopper');",
    )
    .unwrap();
    state::set_contract_quiet_secs(&mut conn, 5).unwrap();
    app.walk_to(Phase::NewOnly).await;

    // A client of customers reads its own full_name all along.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        let mut customers = app.db.conn();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                customers
                    .batch_execute("SELECT full_name FROM customers WHERE id = 1")
                    .unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // A statement naming both tables cannot be told apart: it counts.
    conn.batch_execute(
        "SELECT c.full_name FROM customers c JOIN users u ON u.id = c.id WHERE c.id = 1",
    )
    .unwrap();
    let error = assert_refused(contract(&app).await, &["clients gate", "JOIN users"]).await;
    assert!(!error.contains("FROM customers WHERE"), "{error}");

    eventually("the clients gate to open while customers is read", || {
        clients_gate_met(&mut conn)
    })
    .await;
    let clients = next_gate(&app, "clients").await;
    assert!(
        !clients["detail"].as_str().unwrap().contains("customers"),
        "{clients}"
    );
    assert_eq!(contract(&app).await.status(), 200);
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
}

#[actix_web::test]
async fn a_view_or_a_trigger_function_using_full_name_holds_the_drop_naming_it() {
    let app = TestApp::spawn().await;
    app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut conn = app.db.conn();
    conn.batch_execute("CREATE VIEW legacy_users AS SELECT id, full_name FROM users")
        .unwrap();
    app.walk_to(Phase::NewOnly).await;

    assert_refused(
        contract(&app).await,
        &["dependencies gate", "view legacy_users"],
    )
    .await;
    let dependencies = next_gate(&app, "dependencies").await;
    assert_eq!(dependencies["met"], false, "{dependencies}");
    // `diesel migration run` refuses the same way: the gates live in the migration's SQL.
    conn.batch_execute("SET zdm.confirm = 'users.full_name'")
        .unwrap();
    let by_hand = crate::helpers::by_hand(&mut conn, |conn| {
        conn.run_pending_migrations(MIGRATIONS).map(drop)
    })
    .unwrap_err();
    assert!(
        by_hand.contains("dependencies gate") && by_hand.contains("view legacy_users"),
        "{by_hand}"
    );
    assert!(users_columns(&mut conn).contains(&"full_name?".to_owned()));
    conn.batch_execute("DROP VIEW legacy_users").unwrap();

    // An audit trigger whose function copies NEW.full_name: PostgreSQL records no dependency,
    // and after the drop every write would fail.
    conn.batch_execute(
        "CREATE TABLE users_audit (user_id bigint, name text);
         CREATE FUNCTION users_audit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO users_audit VALUES (NEW.id, NEW.full_name);
             RETURN NEW;
         END $$;
         CREATE TRIGGER users_audit AFTER INSERT ON users
             FOR EACH ROW EXECUTE FUNCTION users_audit();",
    )
    .unwrap();
    assert_refused(
        contract(&app).await,
        &["dependencies gate", "trigger users_audit on users"],
    )
    .await;
    app.create_user("Grace Hopper", "grace@example.com").await;

    conn.batch_execute("DROP TRIGGER users_audit ON users")
        .unwrap();
    assert_eq!(contract(&app).await.status(), 200);
    app.wait_for_phase(Phase::Contracted).await;
    app.create_user("Katherine Johnson", "katherine@example.com")
        .await;
}

#[actix_web::test]
async fn the_rollback_of_the_expand_is_held_by_a_view_of_the_new_columns() {
    let app = TestApp::spawn().await;
    app.walk_to(Phase::Expanded).await;
    let mut conn = app.db.conn();
    conn.batch_execute("CREATE VIEW first_names AS SELECT id, first_name FROM users")
        .unwrap();
    assert_refused(
        app.rollback().await,
        &["dependencies gate", "view first_names"],
    )
    .await;
    assert!(users_columns(&mut conn).contains(&"first_name?".to_owned()));
    conn.batch_execute("DROP VIEW first_names").unwrap();
    assert_eq!(app.rollback().await.status(), 200);
}

#[actix_web::test]
async fn a_dependency_made_after_the_gates_looked_is_a_409_in_postgresqls_words() {
    let app = TestApp::spawn().await;
    app.walk_to(Phase::NewOnly).await;
    let mut conn = app.db.conn();
    // The view appears between the gates and the DROP: here, a gate that saw nothing.
    conn.batch_execute(
        "CREATE VIEW legacy_users AS SELECT id, full_name FROM users;
         CREATE OR REPLACE FUNCTION zdm_dependencies_gate(columns text[])
         RETURNS TABLE (name text, met boolean, detail text)
         LANGUAGE sql AS $$ SELECT 'dependencies', true, 'nothing seen' $$;",
    )
    .unwrap();
    assert_refused(contract(&app).await, &["dependencies gate", "legacy_users"]).await;
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::NewOnly);
    assert!(users_columns(&mut conn).contains(&"full_name?".to_owned()));
    let last = &state::history(&mut conn, 1).unwrap()[0];
    assert_eq!(last.outcome, "refused", "{last:?}");
}

#[actix_web::test]
async fn a_use_after_the_statistics_were_reset_holds_the_contract() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut conn = app.db.conn();
    // Long enough that a loaded machine does not outlast it between a use and the check.
    state::set_contract_quiet_secs(&mut conn, 5).unwrap();
    app.walk_to(Phase::NewOnly).await;

    let mut legacy = app.db.conn();
    let read = format!("SELECT full_name FROM users WHERE id = {id}");
    for _ in 0..8 {
        legacy.batch_execute(&read).unwrap();
    }
    assert!(!clients_gate_met(&mut conn));
    eventually("the legacy client's quiet window to pass", || {
        clients_gate_met(&mut conn)
    })
    .await;

    // A monitoring job resets this database's statistics; the client reads once more: one
    // call where zdm last saw eight.
    conn.batch_execute(
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
    )
    .unwrap();
    legacy.batch_execute(&read).unwrap();
    assert_refused(
        contract(&app).await,
        &["clients gate", "SELECT full_name FROM users WHERE id ="],
    )
    .await;
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::NewOnly);

    // Reset again with the client quiet: the statement leaves the statistics, and a use just
    // before it left cannot be ruled out. (Evicted meanwhile by other databases' statements,
    // it already counted as a use when it left: the reset must find it there, so the client
    // reads once more and the quiet window is waited out again.)
    loop {
        eventually("the quiet window to pass again", || {
            clients_gate_met(&mut conn)
        })
        .await;
        let tracked = count(
            &mut conn,
            "(SELECT count(*) FROM pg_stat_statements
               WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND query LIKE 'SELECT full_name FROM users WHERE id =%')",
        );
        if tracked > 0 {
            break;
        }
        legacy.batch_execute(&read).unwrap();
    }
    conn.batch_execute(
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0)",
    )
    .unwrap();
    let clients = next_gate(&app, "clients").await;
    assert_eq!(clients["met"], false, "{clients}");
    assert!(
        clients["detail"]
            .as_str()
            .unwrap()
            .contains("left pg_stat_statements"),
        "{clients}"
    );
}

#[actix_web::test]
async fn the_expand_and_every_step_refuse_name_columns_zdm_did_not_make() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.conn();
    // A leftover of an earlier attempt.
    conn.batch_execute("ALTER TABLE users ADD COLUMN first_name varchar(4)")
        .unwrap();
    let error = assert_refused(
        app.advance(None).await,
        &[
            "schema gate",
            "users.first_name is character varying(4), not text",
        ],
    )
    .await;
    assert!(!error.contains("users.last_name"), "{error}");
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::Baseline);
    let schema = next_gate(&app, "schema").await;
    assert_eq!(schema["met"], false, "{schema}");

    // One exactly as zdm makes it is kept.
    conn.batch_execute(
        "ALTER TABLE users DROP COLUMN first_name;
         ALTER TABLE users ADD COLUMN first_name text;",
    )
    .unwrap();
    app.walk_to(Phase::DualWrite).await;
    app.create_user("Bartholomew Longname", "bart@example.com")
        .await;

    // A constraint added on the way holds the next step, named.
    conn.batch_execute(
        "ALTER TABLE users ADD CONSTRAINT short_last_name CHECK (char_length(last_name) < 40)",
    )
    .unwrap();
    app.backfill_to_the_end().await;
    assert_refused(
        app.advance(None).await,
        &[
            "schema gate",
            "users.last_name has a constraint zdm did not make: short_last_name",
        ],
    )
    .await;
    conn.batch_execute("ALTER TABLE users DROP CONSTRAINT short_last_name")
        .unwrap();
    assert_eq!(app.advance(None).await.status(), 200);
}

#[actix_web::test]
async fn a_databases_timeouts_do_not_cancel_a_steps_scans_or_the_backfill() {
    let app = TestApp::spawn().await;
    app.walk_to(Phase::DualWrite).await;
    let mut conn = app.db.conn();
    // Enough rows that a scan of them takes longer than the guard rail below: in agreement
    // already, and a tenth of them still to fill.
    conn.batch_execute(
        "INSERT INTO users (full_name, email, first_name, last_name)
         SELECT 'User ' || g, 'user' || g || '@example.com', 'User', g::text
           FROM generate_series(1, 400000) AS g;
         UPDATE users SET first_name = NULL, last_name = NULL WHERE id % 10 = 0;",
    )
    .unwrap();
    // A DBA's guard rails, for every new session of the database.
    conn.batch_execute(&format!(
        "ALTER DATABASE {} SET statement_timeout = '100ms';
         ALTER DATABASE {0} SET idle_in_transaction_session_timeout = '1s';",
        quote_ident(&app.db.name)
    ))
    .unwrap();
    let mut guarded = app.db.conn();
    let scan: Result<usize, _> =
        diesel::sql_query("SELECT zdm_verify_names('dual_write')").execute(&mut guarded);
    assert!(
        scan.is_err(),
        "a scan of the table must outlast the guard rail for this test to mean anything"
    );

    // The backfill's sessions, the step to backfilled (its guard validated, then a verify)
    // and the step to read_new (a verify).
    app.backfill_to_the_end().await;
    for to in [Phase::Backfilled, Phase::ReadNew] {
        let response = app.advance(None).await;
        assert_eq!(
            response.status(),
            200,
            "to {to}: {}",
            error_of(response).await
        );
        app.wait_for_phase(to).await;
    }
    let verified = app.admin_post("/api/admin/verify", json!({})).await;
    assert_eq!(verified.status(), 200);
}

#[actix_web::test]
async fn row_level_security_that_hides_rows_refuses_the_backfill_and_verify() {
    let db = Arc::new(TestDb::migrated());
    let zdm_role = AppRole::create(&db, "zdm");
    let app = TestApp::spawn_as(db.clone(), &zdm_role).await;
    for n in 0..4 {
        app.create_user(&format!("Tenant User{n}"), &format!("t{n}@example.com"))
            .await;
    }
    app.walk_to(Phase::DualWrite).await;
    let mut conn = db.conn();
    // A multi-tenant database: zdm's role matches the policy for half the rows.
    conn.batch_execute(
        "ALTER TABLE users ENABLE ROW LEVEL SECURITY;
         ALTER TABLE users FORCE ROW LEVEL SECURITY;
         CREATE POLICY tenant_even ON users USING (id % 2 = 0);",
    )
    .unwrap();
    let bypass = format!("ALTER ROLE {} BYPASSRLS", zdm_role.name);
    let started = app.admin_post("/api/admin/backfill/start", json!({})).await;
    assert_refused(started, &["row security gate", "tenant_even", &bypass]).await;
    assert_refused(
        app.admin_post("/api/admin/verify", json!({})).await,
        &["row security gate", "tenant_even"],
    )
    .await;
    let status = app.admin_status().await;
    assert_ne!(status["backfill"]["state"], "done", "{status}");

    // The grant it names lets both see every row.
    conn.batch_execute(&bypass).unwrap();
    app.backfill_to_the_end().await;
    assert_eq!(divergent(&app).await, 0);
    assert_eq!(app.advance(None).await.status(), 200);
    let filled = count(
        &mut conn,
        "(SELECT count(*) FROM users WHERE first_name IS NOT NULL)",
    );
    assert_eq!(filled, 4);
}

/// A trigger of users that counts, in a table of the test's own (`touched`), each row an
/// update of users fires it for: `users_touch`, as an `updated_at` trigger or an audit would
/// (whichever role updates).
fn count_touches(conn: &mut PgConnection) {
    conn.batch_execute(
        "CREATE TABLE touched (id bigint);
         GRANT INSERT ON touched TO PUBLIC;
         CREATE FUNCTION users_touch() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO touched VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER users_touch BEFORE UPDATE ON users
             FOR EACH ROW EXECUTE FUNCTION users_touch();",
    )
    .unwrap();
}

async fn start_backfill(app: &TestApp, knobs: Value) -> reqwest::Response {
    app.admin_post("/api/admin/backfill/start", knobs).await
}

#[actix_web::test]
async fn a_trigger_of_users_holds_the_backfill_until_told_whether_it_fires() {
    let app = TestApp::spawn().await;
    app.seed(2_000);
    app.walk_to(Phase::DualWrite).await;
    let mut conn = app.db.conn();
    count_touches(&mut conn);
    // One on another column: the backfill's updates do not fire it.
    conn.batch_execute(
        "CREATE TRIGGER users_email_changed AFTER UPDATE OF email ON users
             FOR EACH ROW EXECUTE FUNCTION users_touch();",
    )
    .unwrap();

    // Every row of the table would fire it: the backfill waits for the operator's word.
    let words = [
        "triggers gate",
        "1 trigger(s)",
        "users_touch (BEFORE UPDATE FOR EACH ROW)",
        "\"fire\"",
        "\"skip\"",
    ];
    let refusal = assert_refused(start_backfill(&app, json!({})).await, &words).await;
    assert!(!refusal.contains("users_email_changed"), "{refusal}");
    // The dashboard and `zdm migrate status` show it before anyone clicks.
    let status = app.admin_status().await;
    let gate = status["backfill_gates"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == "triggers").cloned())
        .unwrap_or_else(|| panic!("no triggers gate in {status}"));
    assert_eq!(gate["met"], false, "{gate}");
    assert_eq!(count(&mut conn, "(SELECT count(*) FROM touched)"), 0);
    assert_eq!(
        count(
            &mut conn,
            "(SELECT count(*) FROM users WHERE first_name IS NULL)"
        ),
        2_000
    );

    // Told to let it fire, it fires for every row the backfill fills; the history says who
    // chose so. A run under way keeps its choice.
    let slow = json!({ "triggers": "fire", "batch_size": 100, "sleep_ms": 100 });
    assert_eq!(start_backfill(&app, slow).await.status(), 202);
    app.wait_for_backfill("a few batches", |b| b["rows_done"].as_i64() >= Some(200))
        .await;
    let paused = app.admin_post("/api/admin/backfill/pause", json!({})).await;
    assert_eq!(paused.status(), 200);
    let skip = app
        .admin_post(
            "/api/admin/backfill/settings",
            json!({ "triggers": "skip" }),
        )
        .await;
    assert_eq!(skip.status(), 422);
    assert!(error_of(skip).await.contains("keeps that"));
    eventually("the runner to stop", || {
        crate::helpers::backfill_runner_pids(&mut conn).is_empty()
    })
    .await;
    let fast = json!({ "sleep_ms": 0, "batch_size": 1000 });
    let resumed = start_backfill(&app, fast).await;
    assert_eq!(resumed.status(), 202, "{}", error_of(resumed).await);
    app.wait_for_backfill("the backfill to finish", |b| b["state"] == "done")
        .await;
    assert_eq!(
        count(&mut conn, "(SELECT count(DISTINCT id) FROM touched)"),
        2_000
    );
    let status = app.admin_status().await;
    assert_eq!(status["backfill"]["triggers"], "fire", "{status}");
    let asked = status["history"].as_array().unwrap();
    assert!(
        asked
            .iter()
            .any(|h| h["detail"] == "start (triggers \"fire\")"),
        "{asked:?}"
    );
}

#[actix_web::test]
async fn skipping_the_triggers_fills_every_row_and_fires_none_that_can_be_skipped() {
    let db = Arc::new(TestDb::migrated());
    let zdm_role = AppRole::create(&db, "zdm");
    let app = TestApp::spawn_as(db.clone(), &zdm_role).await;
    app.seed(2_000);
    app.walk_to(Phase::DualWrite).await;
    let mut conn = db.conn();
    count_touches(&mut conn);
    conn.batch_execute(
        "CREATE FUNCTION users_always() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RETURN NEW; END $$;
         CREATE TRIGGER users_always AFTER UPDATE ON users
             FOR EACH ROW EXECUTE FUNCTION users_always();
         ALTER TABLE users ENABLE ALWAYS TRIGGER users_always;",
    )
    .unwrap();
    let skip = json!({ "triggers": "skip" });

    // An ordinary role may not set session_replication_role: "skip" is refused, naming the
    // grant, at the start and as a setting.
    let grant = format!(
        "GRANT SET ON PARAMETER session_replication_role TO {}",
        zdm_role.name
    );
    assert_refused(
        start_backfill(&app, skip.clone()).await,
        &["triggers gate", &grant],
    )
    .await;
    let refused = app
        .admin_post("/api/admin/backfill/settings", skip.clone())
        .await;
    assert_refused(refused, &["cannot change the backfill's settings", &grant]).await;
    assert_eq!(
        app.admin_status().await["backfill"]["triggers"],
        Value::Null
    );

    // The grant exists from PostgreSQL 15 on; before, only a superuser may skip them.
    if count(&mut conn, "current_setting('server_version_num')::bigint") < 150_000 {
        return;
    }
    // With the grant, a trigger set to fire always is still named.
    conn.batch_execute(&grant).unwrap();
    assert_refused(
        start_backfill(&app, skip.clone()).await,
        &[
            "users_always (AFTER UPDATE FOR EACH ROW, ENABLE ALWAYS)",
            "even with",
        ],
    )
    .await;
    conn.batch_execute("DROP TRIGGER users_always ON users")
        .unwrap();
    assert_eq!(start_backfill(&app, skip).await.status(), 202);
    app.wait_for_backfill("the backfill to finish", |b| b["state"] == "done")
        .await;
    assert_eq!(count(&mut conn, "(SELECT count(*) FROM touched)"), 0);
    assert_eq!(divergent(&app).await, 0);
    // The users' own updates still fire it.
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let renamed = app
        .put_json(
            &format!("/api/v1/users/{id}"),
            &json!({ "full_name": "Augusta King" }),
        )
        .await;
    assert_eq!(renamed.status(), 200);
    assert_eq!(count(&mut conn, "(SELECT count(*) FROM touched)"), 1);
}

#[test]
fn every_transaction_of_a_phase_migration_sets_its_own_statement_timeout() {
    let dir = crate::helpers::project_dir().join("migrations");
    let mut checked = 0;
    for step in zdm::migration::runner::STEPS {
        for file in ["up.sql", "down.sql"] {
            let sql = std::fs::read_to_string(dir.join(step).join(file)).unwrap();
            for transaction in sql.split("\nBEGIN;").filter(|t| t.contains("SELECT zdm_")) {
                checked += 1;
                assert!(
                    transaction.contains("SET LOCAL statement_timeout = 0"),
                    "{step}/{file}: a transaction runs under the session's statement_timeout:\n{transaction}"
                );
            }
        }
    }
    assert!(checked >= 18, "{checked}");
}

/// Whether the contract's step (the migration's SQL on the runner's session) waits for a lock.
fn contract_waits_for_a_lock(conn: &mut PgConnection) -> bool {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock' AND query LIKE '%zdm_begin_step(''advance'', ''new_only''%')",
    ))
    .get_result(conn)
    .unwrap()
}

#[actix_web::test]
async fn a_sample_that_meets_the_steps_lock_timeout_is_retried_not_taken_for_a_missing_extension() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    app.walk_to(Phase::NewOnly).await;
    let mut conn = app.db.conn();
    let read = format!("SELECT full_name FROM users WHERE id = {id}");
    conn.batch_execute(&read).unwrap();
    assert!(clients_gate_met(&mut conn), "the quiet window is 0 s here");

    // A session holds the sampled statement's row while the client reads again, so the
    // contract's sample must wait for that row, past the step's lock_timeout.
    let mut holder = app.db.conn();
    holder
        .batch_execute("BEGIN; SELECT * FROM zdm_column_use FOR UPDATE")
        .unwrap();
    conn.batch_execute(&read).unwrap();
    let contract = {
        let app_address = app.address.clone();
        let client = app.client.clone();
        actix_web::rt::spawn(async move {
            client
                .post(format!("{app_address}/api/admin/migration/advance"))
                .bearer_auth(crate::helpers::ADMIN_TOKEN)
                .json(&json!({ "confirm": "users.full_name" }))
                .send()
                .await
                .unwrap()
        })
    };
    // Once the step's first try waited and gave up, the row is let go.
    eventually("the contract to wait for the row", || {
        contract_waits_for_a_lock(&mut conn)
    })
    .await;
    eventually("the contract's first try to give up", || {
        !contract_waits_for_a_lock(&mut conn)
    })
    .await;
    holder.batch_execute("ROLLBACK").unwrap();
    let contracted = contract.await.unwrap();
    assert_eq!(contracted.status(), 200, "{}", error_of(contracted).await);
    let last = &state::history(&mut conn, 1).unwrap()[0];
    assert!(
        last.detail
            .as_deref()
            .unwrap_or_default()
            .contains("lock timeout(s) retried"),
        "{last:?}"
    );
}
