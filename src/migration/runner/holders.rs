//! The transactions a step's DDL on `users` met (`holders`), and waiting for them to end
//! without queueing for the lock (`wait_for`).
//!
//! Every DDL of a phase migration wants ACCESS EXCLUSIVE on `users`, which conflicts with any
//! lock on it: when an attempt meets its short `lock_timeout`, the transactions holding (or
//! queued for) a lock on `users` at that moment are what it met. Attempting again while they
//! last only queues every request behind the DDL once more, for nothing: one long report
//! would cost the users a stall per retry. So the step waits, outside the queue, until those
//! transactions have ended, and only then attempts again. Transactions that began since are
//! not waited for: on a table never free, the next attempt (longer after 2 s, see
//! `lock_attempt_scale`) still gets its turn.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Array, Text};

/// How often a waiting step looks whether the transactions it met have ended: how late it
/// attempts again after they did.
const POLL: Duration = Duration::from_millis(10);

/// The step's session's `application_name` while it waits, so that whoever reads
/// `pg_stat_activity` sees why zdm's session sits idle.
pub const WAITING: &str = "zdm step: waiting for the transactions holding users to end";

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = Text)]
    transaction: String,
}

/// The transactions, other than this session's, that hold or wait for a lock on `users`
/// (their `virtualtransaction`: a pooled session's next transaction is another).
pub fn holders(conn: &mut PgConnection) -> QueryResult<Vec<String>> {
    Ok(diesel::sql_query(
        "SELECT DISTINCT virtualtransaction AS transaction FROM pg_locks \
          WHERE locktype = 'relation' AND relation = to_regclass('users') \
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
            AND pid IS DISTINCT FROM pg_backend_pid()",
    )
    .load::<Holder>(conn)?
    .into_iter()
    .map(|h| h.transaction)
    .collect())
}

/// Waits until none of `those` transactions holds or waits for a lock on `users` any more
/// (true), or `until` has come while one still does (false).
pub fn wait_for(conn: &mut PgConnection, those: &[String], until: Instant) -> QueryResult<bool> {
    if those.is_empty() {
        return Ok(true);
    }
    let named: String = diesel::select(diesel::dsl::sql::<Text>(
        "current_setting('application_name')",
    ))
    .get_result(conn)?;
    set_application_name(conn, WAITING)?;
    let ended = poll(conn, those, until);
    set_application_name(conn, &named)?;
    ended
}

/// Whether a step's session (of any database of the cluster) waits in `wait_for`, as it
/// names itself in `pg_stat_activity`: a transaction in a step's way may see it there, not
/// in `pg_locks`, once the step's first short attempt has given up.
pub fn a_step_waits(conn: &mut PgConnection) -> QueryResult<bool> {
    // Inside a transaction (the one in the step's way), pg_stat_activity is read once and
    // kept until it ends: drop that copy, or the step would never be seen waiting.
    diesel::sql_query("SELECT pg_stat_clear_snapshot()").execute(conn)?;
    diesel::select(
        diesel::dsl::sql::<diesel::sql_types::Bool>(
            "EXISTS (SELECT FROM pg_stat_activity WHERE application_name = ",
        )
        .bind::<Text, _>(WAITING)
        .sql(")"),
    )
    .get_result(conn)
}

fn poll(conn: &mut PgConnection, those: &[String], until: Instant) -> QueryResult<bool> {
    loop {
        let left: i64 = diesel::select(
            diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "count(*) FROM pg_locks \
              WHERE locktype = 'relation' AND relation = to_regclass('users') \
                AND virtualtransaction = ANY(",
            )
            .bind::<Array<Text>, _>(those)
            .sql(")"),
        )
        .get_result(conn)?;
        if left == 0 {
            return Ok(true);
        }
        if Instant::now() + POLL > until {
            return Ok(false);
        }
        std::thread::sleep(POLL);
    }
}

fn set_application_name(conn: &mut PgConnection, name: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT set_config('application_name', $1, false)")
        .bind::<Text, _>(name)
        .execute(conn)
        .map(drop)
}
