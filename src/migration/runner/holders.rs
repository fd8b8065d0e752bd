//! The transactions in the way of a step's DDL on `users` (`holders`), and waiting for them
//! to end without queueing for the lock (`wait_for`).
//!
//! When an attempt meets its short `lock_timeout`, the transactions that then hold (or await)
//! a lock on `users` in a mode that conflicts with the DDL's (`UsersLock`) are, give or take
//! one begun in that instant, what it met. Attempting again while they last only queues every
//! request behind the DDL once more, for nothing: one long report would cost the users a
//! stall per retry. So the step waits, outside the queue, until those transactions have
//! ended, and only then attempts again. Transactions begun since are not waited for: on a
//! table never free, the next attempt (longer after 2 s of trying, see `lock_attempt_scale`)
//! still gets its turn.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{Array, Text};

/// How often a waiting step looks first whether the transactions it met have ended, doubling
/// up to `POLL_AT_MOST`: reading pg_locks takes every lock partition for a moment, so a long
/// wait looks less often.
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_AT_MOST: Duration = Duration::from_millis(100);

/// The step's session's `application_name` while it waits, so that whoever reads
/// `pg_stat_activity` sees why zdm's session sits idle.
pub const WAITING: &str = "zdm step: waiting for the transactions in its way to end";

/// The lock on `users` a DDL of a phase migration waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsersLock {
    /// ALTER TABLE's ADD/DROP/ALTER: every lock on `users` is in its way, a report's too.
    AccessExclusive,
    /// VALIDATE CONSTRAINT's: reads and writes are not in its way; VACUUM, ANALYZE, an index
    /// build and other DDL are.
    ShareUpdateExclusive,
}

impl UsersLock {
    /// The lock the DDL a lock timeout names waits for (`what` of `zdm_lock_timeout(what)`,
    /// the DDL's own words); none for a lock on zdm's own rows (the phase row, the sample).
    pub fn of(what: &str) -> Option<UsersLock> {
        if what.starts_with("VALIDATE CONSTRAINT") {
            Some(UsersLock::ShareUpdateExclusive)
        } else if ["ADD ", "DROP ", "ALTER "]
            .iter()
            .any(|ddl| what.starts_with(ddl))
        {
            Some(UsersLock::AccessExclusive)
        } else {
            None
        }
    }

    /// The modes (as pg_locks names them) that conflict with this one.
    fn in_the_way(self) -> Vec<&'static str> {
        const ALL: [&str; 8] = [
            "AccessShareLock",
            "RowShareLock",
            "RowExclusiveLock",
            "ShareUpdateExclusiveLock",
            "ShareLock",
            "ShareRowExclusiveLock",
            "ExclusiveLock",
            "AccessExclusiveLock",
        ];
        match self {
            UsersLock::AccessExclusive => ALL.to_vec(),
            UsersLock::ShareUpdateExclusive => ALL[3..].to_vec(),
        }
    }
}

#[derive(QueryableByName)]
struct Holder {
    #[diesel(sql_type = Text)]
    transaction: String,
}

/// The transactions, other than this session's, that hold or await a lock on `users` that
/// conflicts with `lock` (their `virtualtransaction`: a pooled session's next transaction is
/// another).
pub fn holders(conn: &mut PgConnection, lock: UsersLock) -> QueryResult<Vec<String>> {
    Ok(diesel::sql_query(
        "SELECT DISTINCT virtualtransaction AS transaction FROM pg_locks \
          WHERE locktype = 'relation' AND relation = to_regclass('users') \
            AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
            AND pid IS DISTINCT FROM pg_backend_pid() AND mode = ANY($1)",
    )
    .bind::<Array<Text>, _>(lock.in_the_way())
    .load::<Holder>(conn)?
    .into_iter()
    .map(|h| h.transaction)
    .collect())
}

/// Waits until none of `those` transactions holds or awaits a lock on `users` in `lock`'s way
/// any more (true), or `until` has come while one still does (false).
pub fn wait_for(
    conn: &mut PgConnection,
    lock: UsersLock,
    those: &[String],
    until: Instant,
) -> QueryResult<bool> {
    if those.is_empty() {
        return Ok(true);
    }
    let named: String = diesel::select(diesel::dsl::sql::<Text>(
        "current_setting('application_name')",
    ))
    .get_result(conn)?;
    set_application_name(conn, WAITING)?;
    let ended = poll(conn, lock, those, until);
    set_application_name(conn, &named)?;
    ended
}

#[derive(QueryableByName)]
struct InTheWay {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    pid: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    waits: bool,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    kind: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    role: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
    state: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    secs: Option<f64>,
}

impl std::fmt::Display for InTheWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Some(pid) = self.pid else {
            return write!(f, "a prepared transaction");
        };
        let mut seen: Vec<String> = Vec::new();
        // Autovacuum and other server processes: their kind says more than a role.
        seen.extend(self.kind.clone().filter(|k| k != "client backend"));
        seen.extend(self.role.as_ref().map(|role| format!("role {role}")));
        seen.extend(self.state.clone());
        seen.extend(
            self.secs
                .map(|secs| format!("its transaction {secs:.1} s old")),
        );
        if self.waits {
            seen.push("itself awaiting a lock on users".to_owned());
        }
        write!(f, "pid {pid}")?;
        if !seen.is_empty() {
            write!(f, " ({})", seen.join(", "))?;
        }
        Ok(())
    }
}

/// Those of `those` still holding or awaiting a lock on `users`, for the error a step gives
/// up with: "in its way: pid 4711 (role report, idle in transaction, its transaction 12.3 s
/// old)". What a role without `pg_read_all_stats` may not see of another role's session is
/// left out.
pub fn describe(conn: &mut PgConnection, those: &[String]) -> QueryResult<String> {
    let each: Vec<String> = diesel::sql_query(
        "SELECT min(l.pid) AS pid, bool_or(NOT l.granted) AS waits, \
                min(a.backend_type) AS kind, min(a.usename::text) AS role, \
                min(a.state) AS state, \
                extract(epoch FROM now() - min(a.xact_start))::float8 AS secs \
           FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
          WHERE l.locktype = 'relation' AND l.relation = to_regclass('users') \
            AND l.virtualtransaction = ANY($1) \
          GROUP BY l.virtualtransaction ORDER BY 1",
    )
    .bind::<Array<Text>, _>(those)
    .load::<InTheWay>(conn)?
    .iter()
    .map(InTheWay::to_string)
    .collect();
    Ok(if each.is_empty() {
        String::new()
    } else {
        format!("in its way: {}", each.join("; "))
    })
}

/// Whether anything in this database is held up behind the transactions on `users`: a lock
/// request queued for it (pg_locks lists the whole cluster), or a step waiting them out
/// (`a_step_waits`: its first attempt, 5 ms, may come and go between two looks). What a
/// transaction in a step's way watches before it ends.
pub fn someone_waits_on_users(conn: &mut PgConnection) -> QueryResult<bool> {
    let queued: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "EXISTS (SELECT FROM pg_locks WHERE NOT granted AND relation = 'users'::regclass \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
    ))
    .get_result(conn)?;
    Ok(queued || a_step_waits(conn)?)
}

/// Whether a step's session waits in `wait_for` in this database, as it names itself in
/// `pg_stat_activity`: a transaction in a step's way may see it there, not in `pg_locks`,
/// once the step's first short attempt has given up.
pub fn a_step_waits(conn: &mut PgConnection) -> QueryResult<bool> {
    // Inside a transaction (the one in the step's way), pg_stat_activity is read once and
    // kept until it ends: drop that copy, or the step would never be seen waiting.
    diesel::sql_query("SELECT pg_stat_clear_snapshot()").execute(conn)?;
    diesel::select(
        diesel::dsl::sql::<diesel::sql_types::Bool>(
            "EXISTS (SELECT FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = ",
        )
        .bind::<Text, _>(WAITING)
        .sql(")"),
    )
    .get_result(conn)
}

fn poll(
    conn: &mut PgConnection,
    lock: UsersLock,
    those: &[String],
    until: Instant,
) -> QueryResult<bool> {
    let mut every = POLL_FIRST;
    loop {
        let left: i64 = diesel::select(
            diesel::dsl::sql::<diesel::sql_types::BigInt>(
                "count(*) FROM pg_locks \
              WHERE locktype = 'relation' AND relation = to_regclass('users') \
                AND mode = ANY(",
            )
            .bind::<Array<Text>, _>(lock.in_the_way())
            .sql(") AND virtualtransaction = ANY(")
            .bind::<Array<Text>, _>(those)
            .sql(")"),
        )
        .get_result(conn)?;
        if left == 0 {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= until {
            return Ok(false);
        }
        std::thread::sleep(every.min(until - now));
        every = (every * 2).min(POLL_AT_MOST);
    }
}

fn set_application_name(conn: &mut PgConnection, name: &str) -> QueryResult<()> {
    diesel::sql_query("SELECT set_config('application_name', $1, false)")
        .bind::<Text, _>(name)
        .execute(conn)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `zdm_lock_timeout('…')` of the migrations names a DDL on users, whose lock is
    /// told from its words, or one of zdm's own rows ("the …"), which is not on users.
    #[test]
    fn every_lock_timeout_of_the_migrations_is_told_on_users_or_not() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if !path.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(path).unwrap() {
                let sql = std::fs::read_to_string(file.unwrap().path()).unwrap();
                for (at, _) in sql.match_indices("zdm_lock_timeout(") {
                    if sql[..at].ends_with("FUNCTION ") {
                        continue;
                    }
                    let call = &sql[at + "zdm_lock_timeout(".len()..];
                    // The runner tells the lock from the call's words: they must be a literal.
                    let what = call.strip_prefix('\'').unwrap_or_else(|| {
                        panic!(
                            "not a literal: {}",
                            call.chars().take(40).collect::<String>()
                        )
                    });
                    let what = &what[..what.find('\'').unwrap()];
                    let lock = UsersLock::of(what);
                    assert_eq!(lock.is_none(), what.starts_with("the "), "{what}");
                    if what.starts_with("VALIDATE") {
                        assert_eq!(lock, Some(UsersLock::ShareUpdateExclusive));
                    }
                    seen += 1;
                }
            }
        }
        assert!(seen >= 15, "{seen} calls found");
    }

    #[test]
    fn a_validate_waits_for_neither_reads_nor_writes() {
        let modes = UsersLock::ShareUpdateExclusive.in_the_way();
        for light in ["AccessShareLock", "RowShareLock", "RowExclusiveLock"] {
            assert!(!modes.contains(&light), "{light}");
            assert!(UsersLock::AccessExclusive.in_the_way().contains(&light));
        }
        assert!(modes.contains(&"ShareUpdateExclusiveLock"));
    }
}
