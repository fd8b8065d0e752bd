//! The steps beside what others made in the database: a function that reads full_name off a
//! row of users, rows of users stored whole in another table, a leftover first_name that
//! holds values or that an index or a trigger already uses, a full_name made after the drop,
//! clients that use full_name without naming it, and roles whose statements are not tracked.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::{Value, json};
use zdm::domain::Phase;
use zdm::migration::state;

use crate::helpers::{AppRole, TestApp, eventually, users_columns};
use crate::lived_in::{assert_refused, clients_gate_met, contract, next_gate};

#[actix_web::test]
async fn a_function_of_a_row_of_users_or_rows_stored_whole_hold_the_drop_naming_them() {
    let app = TestApp::spawn().await;
    app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut conn = app.db.conn();
    // A computed field as PostgREST and others define them: its body reads the column off
    // the row it is given and never names users; PostgreSQL records only the type. And a
    // history of whole rows, kept before the migration.
    conn.batch_execute(
        "CREATE FUNCTION display_name(u users) RETURNS text LANGUAGE sql STABLE
             AS $$ SELECT upper($1.full_name) $$;
         CREATE TABLE users_history (changed_at timestamptz DEFAULT now(), old users);
         INSERT INTO users_history (old) SELECT u FROM users u;",
    )
    .unwrap();
    app.walk_to(Phase::NewOnly).await;

    assert_refused(
        contract(&app).await,
        &[
            "dependencies gate",
            "function display_name(users) (its body names full_name, of the row of users",
            "column users_history.old (it holds whole rows of users)",
        ],
    )
    .await;
    let dependencies = next_gate(&app, "dependencies").await;
    assert_eq!(dependencies["met"], false, "{dependencies}");
    assert!(users_columns(&mut conn).contains(&"full_name?".to_owned()));
    // What the drop would have done to them.
    let kept: String = diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
        "(SELECT (old).full_name FROM users_history LIMIT 1)",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(kept, "Ada Lovelace");

    conn.batch_execute("DROP FUNCTION display_name(users)")
        .unwrap();
    assert_refused(contract(&app).await, &["column users_history.old"]).await;
    conn.batch_execute("DROP TABLE users_history").unwrap();
    assert_eq!(contract(&app).await.status(), 200);
    app.wait_for_phase(Phase::Contracted).await;
}

#[actix_web::test]
async fn the_expand_refuses_a_first_name_that_holds_values_is_used_or_collates_otherwise() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Jean Paul Sartre", "jps@example.com").await;
    let mut conn = app.db.conn();
    // Left by an earlier attempt, as zdm would make it, but holding a value: the backfill
    // would overwrite it and the expand's rollback drop it.
    conn.batch_execute(&format!(
        "ALTER TABLE users ADD COLUMN first_name text;
         UPDATE users SET first_name = 'Countess' WHERE id = {id};"
    ))
    .unwrap();
    let refused = [
        (
            "UPDATE users SET first_name = NULL;
             CREATE UNIQUE INDEX users_first_name_key ON users (first_name);",
            "already used by index users_first_name_key",
        ),
        (
            "DROP INDEX users_first_name_key;
             ALTER TABLE users ALTER COLUMN first_name TYPE text COLLATE \"C\";",
            "users.first_name has the collation \"C\", not the database's",
        ),
        // A sync trigger of an earlier attempt that splits on the last space: it would
        // rewrite every v2 write of a two-word first name.
        (
            "ALTER TABLE users ALTER COLUMN first_name TYPE text COLLATE \"default\";
             CREATE FUNCTION users_sync_names() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 NEW.first_name := regexp_replace(NEW.full_name, '\\s+\\S+$', '');
                 RETURN NEW;
             END $$;
             CREATE TRIGGER users_sync_names BEFORE INSERT OR UPDATE ON users
                 FOR EACH ROW EXECUTE FUNCTION users_sync_names();",
            "trigger users_sync_names on users",
        ),
    ];
    assert_refused(
        app.advance(None).await,
        &["schema gate", "users.first_name already holds values"],
    )
    .await;
    assert_eq!(next_gate(&app, "schema").await["met"], false);
    for (change, named) in refused {
        conn.batch_execute(change).unwrap();
        let error = assert_refused(app.advance(None).await, &["schema gate", named]).await;
        assert!(!error.contains("holds values"), "{error}");
        assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::Baseline);
    }

    // Without the trigger, the empty column is exactly zdm's: it is kept, and a v2 write of
    // a two-word first name is stored as written.
    conn.batch_execute("DROP TRIGGER users_sync_names ON users")
        .unwrap();
    app.walk_to(Phase::DualWrite).await;
    let created: Value = app
        .post_json(
            "/api/v2/users",
            &json!({ "first_name": "Jean Paul", "last_name": "Sartre", "email": "jean@example.com" }),
        )
        .await
        .json()
        .await
        .unwrap();
    let read: Value = app
        .get_json(&format!("/api/v2/users/{}", created["id"]))
        .await;
    assert_eq!(read["first_name"], "Jean Paul", "{read}");
    assert_eq!(read["last_name"], "Sartre", "{read}");
}

#[actix_web::test]
async fn the_drops_undo_refuses_a_full_name_someone_else_made_meanwhile() {
    let app = TestApp::spawn().await;
    app.create_user("Ada Lovelace", "ada@example.com").await;
    app.walk_to(Phase::Contracted).await;
    let mut conn = app.db.conn();
    // ADD COLUMN IF NOT EXISTS would keep it, and once the instances write full_name again
    // every write would fail: a generated column takes no value.
    conn.batch_execute(
        "ALTER TABLE users ADD COLUMN full_name text
             GENERATED ALWAYS AS (first_name || ' ' || last_name) STORED",
    )
    .unwrap();
    assert_refused(
        app.rollback().await,
        &[
            "schema gate",
            "users.full_name has a default or is generated",
        ],
    )
    .await;
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::Contracted);

    conn.batch_execute("ALTER TABLE users DROP COLUMN full_name")
        .unwrap();
    assert_eq!(app.rollback().await.status(), 200);
    app.wait_for_phase(Phase::NewOnly).await;
    app.create_user("Grace Hopper", "grace@example.com").await;
}

/// Waits until the contract's clients gate is met, as a quiet client lets it be.
async fn quiet(conn: &mut PgConnection) {
    eventually("the clients gate to be met", || clients_gate_met(conn)).await;
}

#[actix_web::test]
async fn a_client_using_full_name_without_naming_it_holds_the_contract() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut conn = app.db.conn();
    // Long enough that a loaded machine does not outlast it between a use and the check.
    state::set_contract_quiet_secs(&mut conn, 3).unwrap();
    app.walk_to(Phase::NewOnly).await;
    let reporter = AppRole::reader(&app.db, "reporter");
    let mut report = reporter.conn();
    let uses = [
        (format!("SELECT * FROM users WHERE id = {id}"), "SELECT *"),
        (
            format!("SELECT u.id, u.* FROM users u WHERE u.id = {id}"),
            "u.*",
        ),
        ("TABLE users".to_owned(), "TABLE users"),
        (
            "PREPARE legacy AS SELECT full_name FROM users WHERE id = $1".to_owned()
                + &format!("; EXECUTE legacy({id}); DEALLOCATE legacy"),
            "PREPARE legacy",
        ),
        (
            format!("EXPLAIN ANALYZE SELECT full_name FROM users WHERE id = {id}"),
            "EXPLAIN ANALYZE",
        ),
        // Tagged as sqlcommenter and marginalia tag them: the comments go, the use stays.
        (
            format!("/* app=web */ SELECT full_name FROM users WHERE id = {id} /* trace=abc */"),
            "app=web",
        ),
    ];
    for (statement, named) in uses {
        quiet(&mut conn).await;
        report.batch_execute(&statement).unwrap();
        assert_refused(contract(&app).await, &["clients gate", named]).await;
    }
    // An existence check and a star over another table read no full_name.
    quiet(&mut conn).await;
    report
        .batch_execute(&format!(
            "SELECT EXISTS (SELECT * FROM users WHERE id = {id});
             SELECT * FROM pg_class WHERE relname IN (SELECT 'users' FROM users LIMIT 1);"
        ))
        .unwrap();
    assert!(
        clients_gate_met(&mut conn),
        "{}",
        next_gate(&app, "clients").await
    );

    // A role whose statements are not tracked could use it unseen: the gate cannot know.
    quiet(&mut conn).await;
    let untracked = format!(
        "ALTER ROLE {} SET pg_stat_statements.track = none",
        reporter.name
    );
    conn.batch_execute(&untracked).unwrap();
    let clients = next_gate(&app, "clients").await;
    assert_eq!(clients["met"], false, "{clients}");
    let detail = clients["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("role {}", reporter.name)) && detail.contains("unknown"),
        "{clients}"
    );
    assert_refused(contract(&app).await, &["clients gate", "does not track"]).await;
    conn.batch_execute(&format!("ALTER ROLE {} RESET ALL", reporter.name))
        .unwrap();
    quiet(&mut conn).await;
    assert_eq!(contract(&app).await.status(), 200);
    app.wait_for_phase(Phase::Contracted).await;
}

/// The instance's heartbeats sample pg_stat_statements as its own role. One that sees only
/// its own statements must not take another role's for gone: the gate, checked by a role
/// that sees them all, would then count a use at every heartbeat and never open.
#[actix_web::test]
async fn an_instances_role_that_sees_only_its_own_statements_does_not_hold_the_contract() {
    let db = std::sync::Arc::new(crate::helpers::TestDb::migrated());
    let instance_role = AppRole::create(&db, "instance");
    let app = TestApp::spawn_as(db.clone(), &instance_role).await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let mut conn = db.conn();
    state::set_contract_quiet_secs(&mut conn, 2).unwrap();
    app.walk_to(Phase::NewOnly).await;
    // Another role reads full_name once: the gate, checked by a role that sees every role's
    // statements, counts it...
    let reporter = AppRole::reader(&db, "reporter");
    reporter
        .conn()
        .batch_execute(&format!("SELECT full_name FROM users WHERE id = {id}"))
        .unwrap();
    assert!(!clients_gate_met(&mut conn));
    // ...and opens once the quiet window has passed, while the instance beats on.
    let opened = Instant::now();
    quiet(&mut conn).await;
    let instance_beats = || {
        let mut conn = db.conn();
        state::live_instances(&mut conn).unwrap()[0].last_seen
    };
    let seen = instance_beats();
    eventually("two more heartbeats of the instance", || {
        instance_beats() > seen + chrono::Duration::seconds(2)
    })
    .await;
    let gates = zdm::migration::gates::advance_gates(&mut conn, Phase::NewOnly).unwrap();
    let clients = gates.iter().find(|g| g.name == "clients").unwrap();
    assert!(clients.met, "{clients:?}");
    assert!(opened.elapsed() > Duration::from_secs(2));
}
