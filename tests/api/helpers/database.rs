//! What tests do to and read from the database behind the app's back: a lock held on
//! `users`, its columns and checks, migrations run by hand, the backfill runners' sessions,
//! writers that remember what each row must end with.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::Text;

use super::{TestApp, eventually};

/// Holds ACCESS EXCLUSIVE on `users` until dropped: every query on it waits.
pub struct TableLock {
    conn: PgConnection,
}

impl TableLock {
    pub fn take(url: &str) -> Self {
        let mut conn = PgConnection::establish(url).unwrap();
        conn.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE;")
            .unwrap();
        TableLock { conn }
    }

    /// Returns once a request's query is queued behind the lock. A backfill's batches queue
    /// too; they are told apart by the runner's advisory lock.
    pub async fn wait_for_a_request(&mut self) {
        let conn = &mut self.conn;
        eventually("a request queued behind the lock", || {
            waits_on_users(
                conn,
                "w.pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')",
            )
        })
        .await;
    }
}

/// Whether a query in this connection's database waits for a lock on `users` and meets
/// `condition` (SQL on the waiting lock `w`; `TRUE` for any). pg_locks lists every
/// database of the cluster, and the tests beside this one have a `users` table too.
pub fn waits_on_users(conn: &mut PgConnection, condition: &str) -> bool {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "EXISTS (SELECT FROM pg_locks w WHERE NOT w.granted AND w.relation = 'users'::regclass \
         AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ({condition}))"
    )))
    .get_result(conn)
    .expect("reading pg_locks")
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    nullable: bool,
}

/// `users`' columns as `name` or `name?` (nullable), sorted.
pub fn users_columns(conn: &mut PgConnection) -> Vec<String> {
    let columns: Vec<Column> = diesel::sql_query(
        "SELECT column_name::text, is_nullable = 'YES' AS nullable FROM information_schema.columns
          WHERE table_name = 'users' AND table_schema = current_schema() ORDER BY column_name",
    )
    .load(conn)
    .expect("reading users' columns");
    columns
        .into_iter()
        .map(|c| {
            if c.nullable {
                format!("{}?", c.column_name)
            } else {
                c.column_name
            }
        })
        .collect()
}

#[derive(QueryableByName)]
struct Check {
    #[diesel(sql_type = Text)]
    check: String,
}

/// `users`' CHECK constraints as `name` or `name (not valid)`, sorted.
pub fn users_checks(conn: &mut PgConnection) -> Vec<String> {
    let checks: Vec<Check> = diesel::sql_query(
        "SELECT conname || CASE WHEN convalidated THEN '' ELSE ' (not valid)' END AS check
           FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype = 'c' ORDER BY 1",
    )
    .load(conn)
    .expect("reading users' checks");
    checks.into_iter().map(|c| c.check).collect()
}

/// Runs migrations as a person would (`diesel migration run`, `revert`, psql): the error as
/// text. A migration that manages its own transactions leaves a failed one open; it is ended
/// here (the diesel CLI exits instead).
pub fn by_hand<T>(
    conn: &mut PgConnection,
    run: impl FnOnce(&mut PgConnection) -> diesel::migration::Result<T>,
) -> Result<(), String> {
    let outcome = run(conn).map(drop).map_err(|e| e.to_string());
    let _ = conn.batch_execute("ROLLBACK");
    outcome
}

/// The sessions holding the backfill's advisory lock in this connection's database (the
/// runner, if one runs). pg_locks lists every database of the cluster, and the tests beside
/// this one hold the same key in theirs.
pub fn backfill_runner_pids(conn: &mut PgConnection) -> Vec<i32> {
    try_backfill_runner_pids(conn).expect("reading pg_locks")
}

/// As `backfill_runner_pids`, for a database that may be gone.
pub fn try_backfill_runner_pids(conn: &mut PgConnection) -> QueryResult<Vec<i32>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(&format!(
        "pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid = 0 AND objid = {} AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        zdm::migration::backfill::LOCK_KEY
    )))
    .load(conn)
}

/// Writers that rename random seeded rows (ids 1..=20,000) through both APIs, v1 and v2 in
/// turn, and remember what each row must end with. v2 names are chosen so that split(join)
/// differs ("Mary Ann" + "Smith"), so a backfill that overwrites a v2 write shows.
pub struct MixedWriters {
    rng: fastrand::Rng,
    pub writes: usize,
    expected: std::collections::HashMap<i64, (String, String)>,
}

impl MixedWriters {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            writes: 0,
            expected: Default::default(),
        }
    }

    /// Twenty writes, each answered 200.
    pub async fn write_twenty(&mut self, app: &TestApp) {
        for _ in 0..20 {
            let id = self.rng.i64(1..=20_000);
            let n = self.writes;
            self.writes += 1;
            let (path, body, parts) = if n.is_multiple_of(2) {
                let full = format!("Writer{n} Van Der Test");
                (
                    format!("/api/v1/users/{id}"),
                    serde_json::json!({ "full_name": full }),
                    (format!("Writer{n}"), "Van Der Test".to_owned()),
                )
            } else {
                let (first, last) = (format!("Mary Ann{n}"), "Smith".to_owned());
                (
                    format!("/api/v2/users/{id}"),
                    serde_json::json!({ "first_name": first, "last_name": last }),
                    (first, last),
                )
            };
            let response = app.put_json(&path, &body).await;
            assert_eq!(response.status(), 200, "write {n} to {path}");
            self.expected.insert(id, parts);
        }
    }

    /// Every acknowledged write reads back through both APIs as written last.
    pub async fn assert_intact(&self, app: &TestApp) {
        for (id, (first, last)) in &self.expected {
            let v2: serde_json::Value = app.get_json(&format!("/api/v2/users/{id}")).await;
            assert_eq!(
                (
                    v2["first_name"].as_str().unwrap(),
                    v2["last_name"].as_str().unwrap()
                ),
                (first.as_str(), last.as_str())
            );
            let v1: serde_json::Value = app.get_json(&format!("/api/v1/users/{id}")).await;
            assert_eq!(v1["full_name"], format!("{first} {last}"));
        }
    }
}

/// Waits until the backfill stores `throttled` (`what` is waited for), failing at once if it
/// runs through to `done` meanwhile, and returns the status it stored.
pub async fn wait_until_throttled(
    conn: &mut PgConnection,
    what: &str,
) -> zdm::migration::backfill::BackfillStatus {
    use zdm::migration::backfill::{self, BackfillState};
    let mut waiting = None;
    eventually(what, || {
        let status = backfill::status(conn).unwrap();
        assert_ne!(
            status.state,
            BackfillState::Done,
            "it ran through: {status:?}"
        );
        waiting = (status.state == BackfillState::Throttled).then_some(status);
        waiting.is_some()
    })
    .await;
    waiting.unwrap()
}
