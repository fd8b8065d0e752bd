//! The SQL migrations, stepped through one by one from an empty database.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_migrations::MigrationHarness;
use zdm::domain::Phase;
use zdm::migration::schema_migrations::{self, MIGRATIONS, is_phase_migration};
use zdm::migration::state;

use crate::helpers::TestDb;

#[derive(QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Item {
    #[diesel(sql_type = Text)]
    item: String,
}

/// Everything a migration can add: tables and columns, indexes, constraints, functions and
/// triggers (diesel's own bookkeeping table left out).
fn schema_snapshot(conn: &mut PgConnection) -> Vec<String> {
    let sql = "
        SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' null=' || is_nullable
               || ' default=' || coalesce(column_default, '') AS item
          FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name <> '__diesel_schema_migrations'
        UNION ALL
        SELECT 'index ' || indexdef FROM pg_indexes
         WHERE schemaname = 'public' AND tablename <> '__diesel_schema_migrations'
        UNION ALL
        SELECT 'constraint ' || conrelid::regclass || ' ' || pg_get_constraintdef(oid) FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace AND conrelid::regclass::text <> '__diesel_schema_migrations'
        UNION ALL
        SELECT 'function ' || proname || ' ' || prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace
        UNION ALL
        SELECT 'trigger ' || tgname FROM pg_trigger WHERE NOT tgisinternal";
    let mut items: Vec<Item> = diesel::sql_query(sql)
        .load(conn)
        .expect("reading the schema");
    items.sort();
    items.into_iter().map(|i| i.item).collect()
}

/// Meets what the step of migration `name` needs beyond the phase (there are no instances
/// here): a finished backfill before the step to backfilled, the typed confirmation and no
/// quiet window before the contract.
fn meet_gates_of(conn: &mut PgConnection, name: &str) {
    if name.contains("_phase_3_") {
        conn.batch_execute("UPDATE zdm_backfill SET state = 'done', direction = 'forward'")
            .expect("marking the backfill done");
    } else if name.contains("_phase_6_") {
        conn.batch_execute(
            "SET zdm.confirm = 'users.full_name';
             UPDATE zdm_migration_state SET contract_quiet_secs = 0;",
        )
        .expect("confirming the contract");
    }
}

/// The stored phase, or "-" before the state table exists.
fn stored_phase(conn: &mut PgConnection) -> String {
    let exists: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "to_regclass('zdm_migration_state') IS NOT NULL",
    ))
    .get_result(conn)
    .expect("looking for the state table");
    if !exists {
        return "-".to_owned();
    }
    state::current_phase(conn)
        .expect("reading the phase")
        .to_string()
}

#[test]
fn every_down_migration_undoes_its_up_migration() {
    let db = TestDb::empty();
    let mut conn = db.conn();
    let names = schema_migrations::all_migration_names().unwrap();
    assert!(!names.is_empty());
    for name in names {
        meet_gates_of(&mut conn, &name);
        let before = (schema_snapshot(&mut conn), stored_phase(&mut conn));
        conn.run_next_migration(MIGRATIONS)
            .unwrap_or_else(|e| panic!("{name} up: {e}"));
        let after = (schema_snapshot(&mut conn), stored_phase(&mut conn));
        assert_ne!(
            before, after,
            "{name} changes the schema or takes a phase step"
        );
        conn.revert_last_migration(MIGRATIONS)
            .unwrap_or_else(|e| panic!("{name} down: {e}"));
        assert_eq!(
            (schema_snapshot(&mut conn), stored_phase(&mut conn)),
            before,
            "{name}: down.sql restores the schema and the phase"
        );
        conn.run_next_migration(MIGRATIONS)
            .unwrap_or_else(|e| panic!("{name} up again: {e}"));
    }
}

#[test]
fn start_up_applies_the_infrastructure_migrations_once_and_no_phase_migration() {
    let db = TestDb::empty();
    let mut conn = db.conn();
    let applied = schema_migrations::run_infrastructure_migrations(&mut conn).unwrap();
    let expected: Vec<String> = schema_migrations::all_migration_names()
        .unwrap()
        .into_iter()
        .filter(|name| !is_phase_migration(name))
        .collect();
    assert_eq!(applied, expected);
    assert!(applied.iter().all(|name| !is_phase_migration(name)));
    assert!(
        schema_migrations::run_infrastructure_migrations(&mut conn)
            .unwrap()
            .is_empty()
    );
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::Baseline);
}

#[test]
fn the_phase_history_is_append_only() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    diesel::sql_query(
        "INSERT INTO zdm_migration_history (action, from_phase, to_phase, actor, outcome)
         VALUES ('advance', 'baseline', 'expanded', 'test', 'ok')",
    )
    .execute(&mut conn)
    .expect("appending works");
    for refused in [
        "UPDATE zdm_migration_history SET outcome = 'forged'",
        "DELETE FROM zdm_migration_history",
        "TRUNCATE zdm_migration_history",
    ] {
        let err = diesel::sql_query(refused).execute(&mut conn).unwrap_err();
        assert!(err.to_string().contains("append-only"), "{refused}: {err}");
    }
    let err = diesel::sql_query("UPDATE zdm_migration_state SET phase = 'teleported'")
        .execute(&mut conn)
        .unwrap_err();
    assert!(err.to_string().contains("check constraint"), "{err}");
}

/// A zdm instance of a newer version starts while a step runs (a rolling upgrade in the
/// middle of a migration): its infrastructure migrations `ALTER` zdm's tables, which the
/// step holds. Queued behind the step, the `ALTER` would queue every instance's phase read
/// behind itself past their lease; instead it gives way again and again, and goes through
/// once the step is done.
#[actix_web::test]
async fn an_infrastructure_migration_at_start_up_gives_way_to_a_step_in_progress() {
    let db = TestDb::empty();
    let mut conn = db.conn();
    // The server as an older zdm left it: everything before a migration that alters the
    // phase table.
    let altering = "2026-12-06-000004_lock_attempts";
    for migration in conn.pending_migrations(MIGRATIONS).unwrap() {
        let name = migration.name().to_string();
        if name.as_str() < altering {
            conn.run_migration(migration.as_ref()).unwrap();
        }
    }
    // A step in progress holds the phase row (a fresh verify of every row, say).
    let mut step = db.conn();
    step.batch_execute("BEGIN; SELECT phase FROM zdm_migration_state FOR UPDATE")
        .unwrap();
    let url = db.url.clone();
    let starting = std::thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        schema_migrations::run_infrastructure_migrations_giving_way(&mut conn, &url)
            .map_err(|e| e.to_string())
    });
    // The instances go on reading the phase (within a statement_timeout shorter than their
    // lease) while the new one's ALTER waits for the step, time and again.
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let instance = {
        let (reading, mut conn) = (reading.clone(), db.conn());
        std::thread::spawn(move || {
            conn.batch_execute("SET statement_timeout = '3s'").unwrap();
            let mut reads = 0;
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                conn.batch_execute("SELECT phase FROM zdm_migration_state")?;
                reads += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok::<_, diesel::result::Error>(reads)
        })
    };
    let mut waits = std::collections::BTreeSet::new();
    crate::helpers::eventually(
        "the new instance's ALTER to wait for the step 3 times",
        || {
            assert!(
                !starting.is_finished(),
                "it ended while the step held its lock"
            );
            let waiting: Vec<Item> = diesel::sql_query(
                "SELECT query_start::text AS item FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE '%ALTER TABLE zdm_migration_state%'",
            )
            .load(&mut conn)
            .unwrap();
            waits.extend(waiting);
            waits.len() >= 3
        },
    )
    .await;
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let reads = instance
        .join()
        .unwrap()
        .expect("every phase read of the instances");
    assert!(reads > 0);
    step.batch_execute("COMMIT").unwrap();
    let applied = starting.join().unwrap().unwrap();
    assert!(applied.iter().any(|name| name == altering), "{applied:?}");
    assert!(
        conn.pending_migrations(MIGRATIONS)
            .unwrap()
            .iter()
            .all(|m| { is_phase_migration(&m.name().to_string()) })
    );
}
