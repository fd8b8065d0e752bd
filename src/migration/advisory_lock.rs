//! A PostgreSQL session advisory lock held for a scope: one runner at a time across every
//! instance and process. PostgreSQL releases it by itself if the holder's session dies, so a
//! crashed runner never leaves it behind.

use std::time::{Duration, Instant};

use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};

/// How often `acquire_within` asks again.
const POLL: Duration = Duration::from_millis(50);

pub struct AdvisoryLock<'a> {
    conn: &'a mut PgConnection,
    key: i64,
}

impl<'a> AdvisoryLock<'a> {
    /// Takes the lock if nobody holds it; `None` if someone does.
    pub fn try_acquire(conn: &'a mut PgConnection, key: i64) -> QueryResult<Option<Self>> {
        let got = try_lock(conn, key)?;
        Ok(got.then_some(Self { conn, key }))
    }

    /// Takes the lock once its holder lets go, waiting up to `timeout`; `None` if it is still
    /// held by then. Asks again every 50 ms rather than queueing in `pg_advisory_lock`, so
    /// that no session setting (lock_timeout) has to be changed and restored.
    pub fn acquire_within(
        conn: &'a mut PgConnection,
        key: i64,
        timeout: Duration,
    ) -> QueryResult<Option<Self>> {
        let started = Instant::now();
        loop {
            if try_lock(conn, key)? {
                return Ok(Some(Self { conn, key }));
            }
            if started.elapsed() >= timeout {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// The session holding the lock, for the work done under it.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
    }
}

fn try_lock(conn: &mut PgConnection, key: i64) -> QueryResult<bool> {
    diesel::select(
        sql::<Bool>("pg_try_advisory_lock(")
            .bind::<BigInt, _>(key)
            .sql(")"),
    )
    .get_result(conn)
}

impl Drop for AdvisoryLock<'_> {
    fn drop(&mut self) {
        let _ = diesel::select(
            sql::<Bool>("pg_advisory_unlock(")
                .bind::<BigInt, _>(self.key)
                .sql(")"),
        )
        .get_result::<bool>(self.conn);
    }
}
