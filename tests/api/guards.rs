//! What keeps the migration safe: gates that refuse (API, CLI and the migration SQL itself),
//! lock_timeout with retries under a blocking transaction, and schema modules that match the
//! database at their phases.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::deserialize::FromSqlRow;
use diesel::prelude::*;
use diesel::sql_types::{SqlType, Text};
use diesel_migrations::MigrationHarness;
use serde_json::json;
use zdm::domain::Phase;
use zdm::migration::runner::{self, CONTRACT, RunError};
use zdm::migration::schema_migrations::MIGRATIONS;
use zdm::migration::state;
use zdm::schema::{SchemaVersion, expanded, v1, v2};

use crate::helpers::{TestApp, by_hand, error_of};

/// Pretends an instance that applied `phase` is alive (a process the test does not run).
fn fake_instance(conn: &mut PgConnection, id: &str, phase: Phase) {
    conn.batch_execute(&format!(
        "INSERT INTO zdm_instances (id, applied_phase) VALUES ('{id}', '{phase}')
         ON CONFLICT (id) DO UPDATE SET applied_phase = EXCLUDED.applied_phase, last_seen = now()"
    ))
    .unwrap();
}

fn run_migration_sql(conn: &mut PgConnection, name: &str) -> Result<(), String> {
    let migration = diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS)
        .unwrap()
        .into_iter()
        .find(|m| m.name().to_string() == name)
        .unwrap();
    // As an operator would, again after a lock timeout: the gates' sample of
    // pg_stat_statements may meet an instance's heartbeat sampling at the same moment.
    for _ in 0..20 {
        match by_hand(conn, |conn| {
            conn.run_migration(migration.as_ref()).map(drop)
        }) {
            Err(e) if e.contains("within lock_timeout") => continue,
            done => return done,
        }
    }
    Err(format!("{name}: a lock timeout 20 times over"))
}

#[actix_web::test]
async fn a_lagging_instance_holds_every_gate_that_needs_it() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.conn();
    app.walk_to(Phase::Expanded).await;
    fake_instance(&mut conn, "old-deploy-1", Phase::Baseline);
    let refused = app.advance(None).await;
    assert_eq!(refused.status(), 409);
    let error = error_of(refused).await;
    assert!(
        error.contains("instances gate") && error.contains("old-deploy-1 (baseline)"),
        "{error}"
    );
    assert_eq!(app.phase(), Phase::Expanded);

    fake_instance(&mut conn, "old-deploy-1", Phase::Expanded);
    app.walk_to(Phase::DualWrite).await;
    fake_instance(&mut conn, "old-deploy-1", Phase::Expanded);
    let refused = app.admin_post("/api/admin/backfill/start", json!({})).await;
    assert_eq!(
        refused.status(),
        409,
        "no backfill while an instance writes full_name only"
    );
    assert!(error_of(refused).await.contains("old-deploy-1"));
    // The migration SQL checks the same thing, for whoever runs it by hand.
    let err = run_migration_sql(&mut conn, runner::BACKFILLED).unwrap_err();
    assert!(
        err.contains("zdm gate") && err.contains("old-deploy-1"),
        "{err}"
    );
}

#[actix_web::test]
async fn the_contract_is_refused_before_its_gate_by_api_cli_and_sql() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.conn();
    app.walk_to(Phase::ReadNew).await;

    // The SQL refuses in read_new, whoever runs it (diesel migration run, psql...).
    let err = run_migration_sql(&mut conn, CONTRACT).unwrap_err();
    assert!(
        err.contains(
            "zdm gate: this migration steps from new_only to contracted, but the phase is read_new"
        ),
        "{err}"
    );

    app.walk_to(Phase::NewOnly).await;
    // In new_only, but without the typed confirmation: still refused.
    let err = run_migration_sql(&mut conn, CONTRACT).unwrap_err();
    assert!(err.contains("confirmation gate"), "{err}");

    // An instance still at read_new holds the contract, through the API...
    fake_instance(&mut conn, "slow-deploy", Phase::ReadNew);
    let refused = app.advance(Some("users.full_name")).await;
    assert_eq!(refused.status(), 409);
    assert!(error_of(refused).await.contains("slow-deploy (read_new)"));
    // ...and through the CLI, which exits non-zero saying why.
    let cli = crate::helpers::zdm_command()
        .args(["migrate", "advance", "--confirm", "users.full_name"])
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert!(
        stderr.contains("instances gate") && stderr.contains("slow-deploy"),
        "{stderr}"
    );
    // The CLI without the typed confirmation is refused too.
    conn.batch_execute("DELETE FROM zdm_instances WHERE id = 'slow-deploy'")
        .unwrap();
    // It says so once, in its own words: the flag to pass, not the dashboard's field.
    let cli = crate::helpers::zdm_command()
        .args(["migrate", "advance"])
        .env("DATABASE_URL", &app.db.url)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!cli.status.success());
    let stderr = String::from_utf8_lossy(&cli.stderr);
    assert_eq!(stderr.matches("confirmation gate").count(), 1, "{stderr}");
    assert!(
        stderr.contains("pass --confirm users.full_name to confirm dropping the column"),
        "{stderr}"
    );

    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::NewOnly);
    let columns: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'full_name')",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(columns, 1, "full_name is still there");

    // With the CLI and the confirmation, it goes through.
    let cli = crate::helpers::zdm_command()
        .args(["migrate", "advance", "--confirm", "users.full_name"])
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    assert!(String::from_utf8_lossy(&cli.stdout).contains("advanced new_only → contracted"));
    app.wait_for_phase(Phase::Contracted).await;
}

/// Holds ACCESS SHARE on `users` (like a long report query) until dropped... or committed.
struct Blocker(PgConnection);

impl Blocker {
    fn start(url: &str) -> Self {
        let mut conn = PgConnection::establish(url).unwrap();
        conn.batch_execute("BEGIN; SELECT count(*) FROM users;")
            .unwrap();
        Blocker(conn)
    }

    /// Whether a lock on `users` in this database waits (for this blocker, or behind a step
    /// that does), or a step waits for this blocker to end.
    fn someone_waits(&mut self) -> bool {
        runner::someone_waits_on_users(&mut self.0).expect("reading pg_locks and pg_stat_activity")
    }

    fn release(mut self) {
        self.0.batch_execute("COMMIT").unwrap();
    }
}

/// Runs `step` (a runner call on its own connection) while a transaction blocks `users`,
/// reading through the API meanwhile; releases the blocker `hold` after the step is first
/// seen waiting for it (so a loaded machine cannot make the step miss it). Returns the
/// step's result and the slowest read seen.
async fn step_under_blocker(
    app: &TestApp,
    user_id: i64,
    hold: Duration,
    step: fn(&mut PgConnection) -> Result<runner::Transition, RunError>,
) -> (Result<runner::Transition, RunError>, Duration) {
    let blocker = Blocker::start(&app.db.url);
    let url = app.db.url.clone();
    let worker = std::thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        step(&mut conn)
    });
    let mut waiting_since: Option<Instant> = None;
    let mut slowest = Duration::ZERO;
    let mut blocker = Some(blocker);
    while !worker.is_finished() {
        if waiting_since.is_none() && blocker.as_mut().is_some_and(Blocker::someone_waits) {
            waiting_since = Some(Instant::now());
        }
        if waiting_since.is_some_and(|since| since.elapsed() >= hold)
            && let Some(b) = blocker.take()
        {
            b.release();
        }
        let t = Instant::now();
        let response = app.get(&format!("/api/v1/users/{user_id}")).await;
        assert_eq!(
            response.status(),
            200,
            "reads keep working while the DDL waits"
        );
        slowest = slowest.max(t.elapsed());
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    drop(blocker);
    (worker.join().unwrap(), slowest)
}

/// The longest a read may wait while a step waits for a lock: an attempt's lock_timeout
/// (5 ms, after which the DDL gives up its place in the queue) plus a second for
/// scheduling on a loaded two-core machine. The blocker holds `BLOCKED_FOR`, well above it:
/// a step queued without a lock_timeout would hold the reads up for all of it.
const MAX_READ_STALL: Duration = Duration::from_millis(5 + 1000);
const BLOCKED_FOR: Duration = Duration::from_millis(3000);

/// A step met the 3-s blocker and waited for it to end instead of queueing behind it again
/// after each pause (which came to 8 attempts or more in 3 s): one attempt, and at most two
/// more that met a request's transaction on a loaded machine.
fn assert_met_the_blocker_without_queueing_again(lock_timeouts: usize) {
    assert!(
        (1..=3).contains(&lock_timeouts),
        "{lock_timeouts} lock timeouts: each was a stall for the users"
    );
}

#[actix_web::test]
async fn expand_and_contract_give_up_within_lock_timeout_then_retry_past_a_long_transaction() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;

    // Blocked for 3 s: the expand times out, waits for the blocker to end outside the lock
    // queue, and succeeds then; reads are held up about one attempt at a time (5 ms; the
    // bound allows for a loaded machine).
    let (result, slowest) = step_under_blocker(&app, id, BLOCKED_FOR, |conn| {
        runner::advance(conn, "test", None)
    })
    .await;
    assert!(
        slowest <= MAX_READ_STALL,
        "reads stalled {slowest:?}, more than one lock_timeout"
    );
    let transition = result.expect("the expand succeeds after the blocker");
    assert_met_the_blocker_without_queueing_again(transition.lock_timeouts);
    app.wait_for_phase(Phase::Expanded).await;

    app.walk_to(Phase::NewOnly).await;
    let mut conn = app.db.conn();
    zdm::migration::verify::verify(&mut conn, Phase::NewOnly).unwrap();
    let (result, slowest) = step_under_blocker(&app, id, BLOCKED_FOR, |conn| {
        runner::advance(conn, "test", Some("users.full_name"))
    })
    .await;
    assert_met_the_blocker_without_queueing_again(
        result
            .expect("the contract succeeds after the blocker")
            .lock_timeouts,
    );
    assert!(
        slowest <= MAX_READ_STALL,
        "reads stalled {slowest:?}, more than one lock_timeout"
    );
    app.wait_for_phase(Phase::Contracted).await;
}

/// Two clients that each read `users` in 30-ms transactions back to back, half a cycle apart
/// on one clock (so that they cannot drift into step), until `stop`: at every moment one of
/// them holds the table, so no attempt of 5 ms finds it free. Returns once both have held it.
fn never_free(
    url: &str,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    const CYCLE: Duration = Duration::from_millis(30);
    let ready = std::sync::Arc::new(std::sync::Barrier::new(3));
    let readers = (0..2u32)
        .map(|i| {
            let (url, stop, ready) = (url.to_owned(), stop.clone(), ready.clone());
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                let start = Instant::now() + Duration::from_millis(100) + CYCLE * i / 2;
                let mut k = 0;
                ready.wait();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let ends = start + CYCLE * (k + 1);
                    std::thread::sleep((ends - CYCLE).saturating_duration_since(Instant::now()));
                    conn.batch_execute("BEGIN; SELECT count(*) FROM users;")
                        .unwrap();
                    std::thread::sleep(ends.saturating_duration_since(Instant::now()));
                    conn.batch_execute("COMMIT").unwrap();
                    k += 1;
                }
            })
        })
        .collect();
    ready.wait();
    let mut conn = PgConnection::establish(url).unwrap();
    let both: fn(&mut PgConnection) -> bool = |conn| {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "(SELECT count(DISTINCT pid) = 2 FROM pg_locks WHERE granted \
              AND relation = 'users'::regclass AND mode = 'AccessShareLock' \
              AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        ))
        .get_result(conn)
        .unwrap()
    };
    let give_up = Instant::now() + Duration::from_secs(30);
    while !both(&mut conn) {
        assert!(
            Instant::now() < give_up,
            "the two readers never held users at once"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    readers
}

#[actix_web::test]
async fn a_table_never_free_for_an_attempt_still_lets_the_step_through() {
    let app = TestApp::spawn().await;
    app.create_user("Ada Lovelace", "ada@example.com").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers = never_free(&app.db.url, &stop);
    let url = app.db.url.clone();
    let step = std::thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        runner::advance(&mut conn, "test", None)
    });
    // The step waits out each reader it met, but not the ones begun since: after 2 s of
    // trying, its attempts grow past a reader's 30 ms and one gets the lock.
    let result = actix_web::rt::task::spawn_blocking(move || step.join().unwrap())
        .await
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    readers.into_iter().for_each(|r| r.join().unwrap());
    let transition = result.expect("the expand gets through a table never free for 5 ms");
    assert!(transition.lock_timeouts >= 2, "{transition:?}");
    app.wait_for_phase(Phase::Expanded).await;
}

#[actix_web::test]
async fn new_only_retries_past_a_long_transaction_in_both_directions() {
    // Its migrations run their own BEGIN ... COMMIT: a lock timeout must not leave an aborted
    // transaction behind for the retry to trip over.
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    app.walk_to(Phase::ReadNew).await;
    let (result, _) = step_under_blocker(&app, id, Duration::from_millis(700), |conn| {
        runner::advance(conn, "test", None)
    })
    .await;
    let transition = result.expect("new_only is reached after the blocker");
    assert_eq!(transition.to, Phase::NewOnly);
    assert!(transition.lock_timeouts >= 1, "it met the blocker");
    app.wait_for_phase(Phase::NewOnly).await;

    let (result, _) = step_under_blocker(&app, id, Duration::from_millis(700), |conn| {
        runner::rollback(
            conn,
            "test",
            None,
            &mut zdm::migration::backfill::Throttle::none(),
        )
    })
    .await;
    let transition = result.expect("the rollback succeeds after the blocker");
    assert_eq!(transition.to, Phase::ReadNew);
    assert!(transition.lock_timeouts >= 1, "it met the blocker");
}

#[actix_web::test]
async fn a_lock_timeout_is_retried_whatever_the_servers_language() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let (result, _) = step_under_blocker(&app, id, Duration::from_millis(700), |conn| {
        // The server answers this session in German where it has the locale (.ci/run makes
        // it); PostgreSQL's own message for a lock timeout is then German too.
        if conn
            .batch_execute("SET lc_messages = 'de_DE.UTF-8'")
            .is_ok()
        {
            let err = conn.batch_execute("SELECT 1/0").unwrap_err().to_string();
            assert!(err.contains("Division durch Null"), "{err}");
        } else {
            println!("the server has no German locale: the step runs in its default language");
        }
        runner::advance(conn, "test", None)
    })
    .await;
    let transition = result.expect("the expand succeeds after the blocker");
    assert!(
        transition.lock_timeouts >= 1,
        "it met the blocker and retried"
    );
}

#[actix_web::test]
async fn the_users_wait_as_long_as_an_attempt_of_the_stored_length() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    // Attempts of 1.5 s (ZDM_LOCK_ATTEMPT_MS=1500) instead of 5 ms: a read that comes while
    // the DDL waits queues behind it for the whole attempt.
    let (result, slowest) = step_under_blocker(&app, id, Duration::from_millis(300), |conn| {
        state::set_lock_attempt_ms(conn, 1500).unwrap();
        runner::advance(conn, "test", None)
    })
    .await;
    result.expect("the expand succeeds once the blocker ends");
    assert!(
        slowest >= Duration::from_millis(1400),
        "a read waited {slowest:?}, not the attempt's 1.5 s"
    );
}

#[actix_web::test]
async fn a_blocker_longer_than_the_lock_wait_budget_fails_the_step_cleanly() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    let (result, _) = step_under_blocker(&app, id, Duration::from_secs(60), |conn| {
        runner::advance(conn, "test", None)
    })
    .await;
    match result {
        Err(
            e @ RunError::LockTimeout {
                attempts, waited, ..
            },
        ) => {
            // One attempt, then a wait outside the lock queue until the budget is spent (not
            // an attempt, and a stall for the users, after every pause).
            assert_eq!(attempts, 1);
            // The operator learns who is in the way: the blocker, idle in its transaction.
            let said = e.to_string();
            assert!(
                said.contains("in its way: pid ") && said.contains("idle in transaction"),
                "{said}"
            );
            assert!(
                waited >= runner::LOCK_WAIT_BUDGET / 2 && waited <= runner::LOCK_WAIT_BUDGET,
                "{waited:?}"
            );
        }
        other => panic!("expected a lock timeout, got {other:?}"),
    }
    let mut conn = app.db.conn();
    assert_eq!(state::current_phase(&mut conn).unwrap(), Phase::Baseline);
    assert!(
        !runner::is_applied(&mut conn, runner::EXPAND).unwrap(),
        "nothing half-applied"
    );
    let history = state::history(&mut conn, 1).unwrap();
    assert_eq!(history[0].outcome, "failed");
    assert!(
        history[0]
            .detail
            .as_deref()
            .unwrap_or_default()
            .contains("lock_timeout")
    );
}

trait Nullability {
    const NULLABLE: bool;
}
impl Nullability for diesel::sql_types::is_nullable::IsNullable {
    const NULLABLE: bool = true;
}
impl Nullability for diesel::sql_types::is_nullable::NotNull {
    const NULLABLE: bool = false;
}

/// A module column as `name` or `name?`, read from its Diesel declaration.
fn declared<C>() -> String
where
    C: Column + Expression,
    C::SqlType: SqlType,
    <C::SqlType as SqlType>::IsNull: Nullability,
{
    let nullable = <<C::SqlType as SqlType>::IsNull as Nullability>::NULLABLE;
    format!("{}{}", C::NAME, if nullable { "?" } else { "" })
}

fn module_columns(version: SchemaVersion) -> Vec<String> {
    let mut columns = match version {
        SchemaVersion::V1 => vec![
            declared::<v1::users::id>(),
            declared::<v1::users::full_name>(),
            declared::<v1::users::email>(),
            declared::<v1::users::created_at>(),
            declared::<v1::users::updated_at>(),
        ],
        SchemaVersion::Expanded => vec![
            declared::<expanded::users::id>(),
            declared::<expanded::users::full_name>(),
            declared::<expanded::users::email>(),
            declared::<expanded::users::created_at>(),
            declared::<expanded::users::updated_at>(),
            declared::<expanded::users::first_name>(),
            declared::<expanded::users::last_name>(),
        ],
        SchemaVersion::V2 => vec![
            declared::<v2::users::id>(),
            declared::<v2::users::email>(),
            declared::<v2::users::created_at>(),
            declared::<v2::users::updated_at>(),
            declared::<v2::users::first_name>(),
            declared::<v2::users::last_name>(),
        ],
    };
    columns.sort();
    columns
}

#[derive(QueryableByName)]
struct DbColumn {
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    is_nullable: String,
}

fn database_columns(conn: &mut PgConnection) -> Vec<String> {
    let mut columns: Vec<String> = diesel::sql_query(
        "SELECT column_name::text, is_nullable::text FROM information_schema.columns WHERE table_name = 'users'",
    )
    .load::<DbColumn>(conn)
    .unwrap()
    .into_iter()
    .map(|c| format!("{}{}", c.column_name, if c.is_nullable == "YES" { "?" } else { "" }))
    .collect();
    columns.sort();
    columns
}

/// Every column the module selects loads, with the module's types, at this phase.
fn module_loads(conn: &mut PgConnection, version: SchemaVersion) -> QueryResult<usize> {
    fn load<T: diesel::Table, R: FromSqlRow<T::SqlType, diesel::pg::Pg> + 'static>(
        _table: T,
        rows: QueryResult<Vec<R>>,
    ) -> QueryResult<usize> {
        rows.map(|r| r.len())
    }
    match version {
        SchemaVersion::V1 => load(
            v1::users::table,
            v1::users::table.select(v1::users::all_columns).load::<(
                i64,
                String,
                String,
                chrono::DateTime<chrono::Utc>,
                chrono::DateTime<chrono::Utc>,
            )>(conn),
        ),
        SchemaVersion::Expanded => load(
            expanded::users::table,
            expanded::users::table
                .select(expanded::users::all_columns)
                .load::<(
                    i64,
                    String,
                    String,
                    chrono::DateTime<chrono::Utc>,
                    chrono::DateTime<chrono::Utc>,
                    Option<String>,
                    Option<String>,
                )>(conn),
        ),
        SchemaVersion::V2 => load(
            v2::users::table,
            v2::users::table.select(v2::users::all_columns).load::<(
                i64,
                String,
                chrono::DateTime<chrono::Utc>,
                chrono::DateTime<chrono::Utc>,
                String,
                String,
            )>(conn),
        ),
    }
}

#[actix_web::test]
async fn each_schema_module_matches_the_database_at_its_phases() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.conn();
    app.create_user("Ada Lovelace", "ada@example.com").await;
    for phase in Phase::ALL {
        app.walk_to(phase).await;
        app.create_user(
            &format!("Someone in {phase}"),
            &format!("{phase}@example.com"),
        )
        .await;
        let version = SchemaVersion::for_phase(phase);
        let module = module_columns(version);
        let database = database_columns(&mut conn);
        match (version, phase) {
            // In new_only full_name still exists (optional, unused) and the new columns are
            // nullable in the catalogue but guaranteed by the validated users_names_present.
            (SchemaVersion::V2, Phase::NewOnly) => {
                assert_eq!(
                    database,
                    [
                        "created_at",
                        "email",
                        "first_name?",
                        "full_name?",
                        "id",
                        "last_name?",
                        "updated_at"
                    ]
                );
                let validated: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
                    "(SELECT convalidated FROM pg_constraint WHERE conname = 'users_names_present')",
                ))
                .get_result(&mut conn)
                .unwrap();
                assert!(validated);
            }
            // In expanded the v1 module ignores the new, unwritten columns.
            (SchemaVersion::V1, Phase::Expanded) => {
                assert_eq!(
                    database,
                    [
                        "created_at",
                        "email",
                        "first_name?",
                        "full_name",
                        "id",
                        "last_name?",
                        "updated_at"
                    ]
                );
                assert!(module.iter().all(|c| database.contains(c)));
            }
            _ => assert_eq!(module, database, "the {version:?} module in {phase}"),
        }
        assert_eq!(
            module_loads(&mut conn, version).unwrap(),
            2 + phase.index(),
            "{version:?} loads in {phase}"
        );
    }
    assert!(
        !module_columns(SchemaVersion::V2)
            .iter()
            .any(|c| c.starts_with("full_name"))
    );
}

/// `zdm migrate status` shows the gates as the dashboard does: the verification the step
/// runs itself as such (↻), not as unmet, and a backfill never started as not started, not
/// as "0/0 rows".
#[actix_web::test]
async fn migrate_status_shows_the_gates_as_the_dashboard_does() {
    let app = TestApp::spawn().await;
    app.walk_to(Phase::DualWrite).await;
    let out = crate::helpers::zdm_command()
        .args(["migrate", "status"])
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("[↻] verify: no verification in this phase yet"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[✗] backfill: the backfill has not started yet"),
        "{stdout}"
    );
    assert!(stdout.contains("backfill: not started yet"), "{stdout}");
    assert!(!stdout.contains("0/0 rows"), "{stdout}");
}
