//! A PostgreSQL session advisory lock held for a scope: one runner at a time across every
//! instance and process. PostgreSQL releases it by itself if the holder's session dies, so a
//! crashed runner never leaves it behind.

use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool};

pub struct AdvisoryLock<'a> {
    conn: &'a mut PgConnection,
    key: i64,
}

impl<'a> AdvisoryLock<'a> {
    /// Takes the lock if nobody holds it; `None` if someone does.
    pub fn try_acquire(conn: &'a mut PgConnection, key: i64) -> QueryResult<Option<Self>> {
        let got: bool = diesel::select(
            sql::<Bool>("pg_try_advisory_lock(")
                .bind::<BigInt, _>(key)
                .sql(")"),
        )
        .get_result(conn)?;
        Ok(got.then_some(Self { conn, key }))
    }

    /// The session holding the lock, for the work done under it.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
    }
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
