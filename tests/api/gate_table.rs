//! The gate table in SQL (`zdm_gate_table`), what is written both in SQL and in Rust (the
//! phases, the live window), and how zdm's SQL raises its refusals.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{Array, Double, Integer, Nullable, Text};
use zdm::domain::Phase;
use zdm::migration::follower::LIVE_WINDOW;
use zdm::migration::gates::Gate;
use zdm::migration::state;

use crate::helpers::TestDb;

/// The names of the gates of `step` from `from`, in the order they are checked and shown.
fn gate_names(conn: &mut PgConnection, step: &str, from: Phase) -> Vec<String> {
    diesel::sql_query("SELECT name, met, detail FROM zdm_gates($1, $2, 'stored')")
        .bind::<Text, _>(step)
        .bind::<Text, _>(from.as_str())
        .load::<Gate>(conn)
        .unwrap_or_else(|e| panic!("the gates of {step} from {from}: {e}"))
        .into_iter()
        .map(|g| g.name)
        .collect()
}

/// The gates a step checks from a phase, by name.
type PhaseGates = (Phase, Vec<&'static str>);

#[test]
fn every_step_checks_its_gates_from_every_phase_in_order() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    // The gates read the columns of the phases they check (here with no step taken).
    conn.batch_execute("ALTER TABLE users ADD COLUMN first_name TEXT, ADD COLUMN last_name TEXT")
        .unwrap();
    fn every_phase(names: &[&'static str]) -> Vec<PhaseGates> {
        Phase::ALL.iter().map(|p| (*p, names.to_vec())).collect()
    }
    let expected: Vec<(&str, Vec<PhaseGates>)> = vec![
        (
            "advance",
            vec![
                (Phase::Baseline, vec!["schema"]),
                (Phase::Expanded, vec!["schema", "instances"]),
                (
                    Phase::DualWrite,
                    vec!["schema", "row security", "instances", "backfill", "verify"],
                ),
                (Phase::Backfilled, vec!["schema", "row security", "verify"]),
                (
                    Phase::ReadNew,
                    vec!["schema", "row security", "instances", "verify"],
                ),
                (
                    Phase::NewOnly,
                    vec![
                        "schema",
                        "instances",
                        "dependencies",
                        "clients",
                        "confirmation",
                    ],
                ),
                (Phase::Contracted, vec!["schema"]),
            ],
        ),
        (
            "rollback",
            vec![
                (Phase::Baseline, vec!["schema"]),
                (Phase::Expanded, vec!["schema", "instances", "dependencies"]),
                (Phase::DualWrite, vec!["schema"]),
                (Phase::Backfilled, vec!["schema"]),
                (Phase::ReadNew, vec!["schema"]),
                (Phase::NewOnly, vec!["schema", "row security"]),
                (Phase::Contracted, vec!["schema"]),
            ],
        ),
        (
            "refill",
            every_phase(&["row security", "instances", "reverse backfill"]),
        ),
        (
            "backfill",
            every_phase(&["row security", "phase", "instances", "triggers"]),
        ),
        ("verify", every_phase(&["row security"])),
    ];
    for (step, by_phase) in expected {
        for (from, names) in by_phase {
            assert_eq!(
                gate_names(&mut conn, step, from),
                names,
                "{step} from {from}"
            );
        }
    }
    // A step the table does not know is an error, not a step without gates.
    let err = diesel::sql_query("SELECT name, met, detail FROM zdm_gates('advnace', 'baseline')")
        .load::<Gate>(&mut conn)
        .unwrap_err();
    assert!(err.to_string().contains("no step advnace"), "{err}");
}

#[test]
fn the_backfill_phase_gate_names_the_phases_it_runs_in() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    let gates: Vec<Gate> =
        diesel::sql_query("SELECT name, met, detail FROM zdm_gates('backfill', 'expanded')")
            .load(&mut conn)
            .unwrap();
    let phase = gates.iter().find(|g| g.name == "phase").unwrap();
    assert!(!phase.met);
    assert_eq!(
        phase.detail,
        "the backfill runs in dual_write, backfilled or read_new; the phase is expanded"
    );
}

#[derive(QueryableByName)]
struct Phases {
    #[diesel(sql_type = Array<Text>)]
    phases: Vec<String>,
}

#[derive(QueryableByName)]
struct Index {
    #[diesel(sql_type = Nullable<Integer>)]
    index: Option<i32>,
}

#[test]
fn the_sql_knows_the_phases_of_rust_in_the_same_order() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    let rust: Vec<&str> = Phase::ALL.iter().map(|p| p.as_str()).collect();
    let sql = diesel::sql_query("SELECT zdm_phases() AS phases")
        .get_result::<Phases>(&mut conn)
        .unwrap()
        .phases;
    assert_eq!(sql, rust);
    for (i, phase) in Phase::ALL.iter().enumerate() {
        let index = diesel::sql_query("SELECT zdm_phase_index($1) AS index")
            .bind::<Text, _>(phase.as_str())
            .get_result::<Index>(&mut conn)
            .unwrap()
            .index;
        assert_eq!(index, Some(i as i32), "{phase}");
    }
    // The state table's CHECK takes every phase, and nothing else.
    conn.transaction::<(), DieselError, _>(|conn| {
        for phase in Phase::ALL {
            diesel::sql_query("UPDATE zdm_migration_state SET phase = $1")
                .bind::<Text, _>(phase.as_str())
                .execute(conn)
                .unwrap_or_else(|e| panic!("{phase}: {e}"));
        }
        Err(DieselError::RollbackTransaction)
    })
    .unwrap_err();
    let err = diesel::sql_query("UPDATE zdm_migration_state SET phase = 'dual-write'")
        .execute(&mut conn)
        .unwrap_err();
    assert!(
        matches!(
            err,
            DieselError::DatabaseError(DatabaseErrorKind::CheckViolation, _)
        ),
        "{err}"
    );
}

#[derive(QueryableByName)]
struct Seconds {
    #[diesel(sql_type = Double)]
    seconds: f64,
}

#[test]
fn the_sql_live_window_is_rusts_and_decides_who_is_live() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    let seconds = diesel::sql_query(
        "SELECT extract(epoch FROM zdm_live_window())::double precision AS seconds",
    )
    .get_result::<Seconds>(&mut conn)
    .unwrap()
    .seconds;
    assert_eq!(Duration::from_secs_f64(seconds), LIVE_WINDOW);
    let window = LIVE_WINDOW.as_secs();
    conn.batch_execute(&format!(
        "INSERT INTO zdm_instances (id, applied_phase, last_seen) VALUES
           ('inside', 'baseline', now() - interval '{inside} seconds'),
           ('outside', 'baseline', now() - interval '{outside} seconds')",
        inside = window - 1,
        outside = window + 1,
    ))
    .unwrap();
    let live: Vec<String> = state::live_instances(&mut conn)
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert_eq!(live, ["inside"]);
}

/// Runs `sql` in a block that swallows the SQLSTATE `code` only: Ok when `sql` raised it.
fn raises_sqlstate(conn: &mut PgConnection, sql: &str, code: &str) -> Result<(), String> {
    conn.batch_execute(&format!(
        "DO $$ BEGIN {sql}; RAISE EXCEPTION 'nothing was raised'; \
         EXCEPTION WHEN SQLSTATE '{code}' THEN NULL; END $$"
    ))
    .map_err(|e| e.to_string())
}

#[test]
fn zdms_refusals_carry_a_sqlstate_and_a_detail_of_their_own_and_keep_their_words() {
    let db = TestDb::migrated();
    let mut conn = db.conn();
    let wrong_phase = "PERFORM zdm_begin_step('advance', 'expanded', 'dual_write')";
    raises_sqlstate(&mut conn, wrong_phase, "ZD001").unwrap();
    conn.batch_execute("SET zdm.step_failure = 'VALIDATE CONSTRAINT found rows'")
        .unwrap();
    raises_sqlstate(&mut conn, "PERFORM zdm_require_no_step_failure()", "ZD002").unwrap();
    raises_sqlstate(&mut conn, "PERFORM zdm_lock_timeout('a test')", "55P03").unwrap();

    let err = diesel::sql_query("SELECT zdm_begin_step('advance', 'expanded', 'dual_write')")
        .execute(&mut conn)
        .unwrap_err();
    let DieselError::DatabaseError(_, info) = err else {
        panic!("{err:?}")
    };
    assert_eq!(info.details(), Some("zdm:refused"));
    assert_eq!(
        info.message(),
        "zdm gate: this migration steps from expanded to dual_write, but the phase is baseline"
    );
    assert_eq!(
        info.hint(),
        Some(
            "Run the migrations in order: `diesel migration run` and `revert` take one step each, as `zdm migrate advance` and `rollback` do."
        )
    );
}
