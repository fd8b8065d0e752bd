//! Knowing a lock timeout when PostgreSQL reports one, in whatever language the server
//! speaks: Diesel gives the message, not the SQLSTATE.

use diesel::PgConnection;
use diesel::RunQueryDsl;
use diesel::connection::{Connection, SimpleConnection};

use crate::error::BoxError;

/// PostgreSQL's message for a lock timeout on `conn`, in its server's language: one met on
/// purpose, on an advisory lock held by another session to `url` (the same server). Both
/// locks are a transaction's, so nothing is left held, also behind a transaction-mode pooler;
/// an error where the other session cannot take it (another probe holds it now).
pub fn words(conn: &mut PgConnection, url: &str) -> Result<String, BoxError> {
    const KEY: i64 = 0x7a64_6d5f_776f_7264; // "zdm_word"
    let mut holder = PgConnection::establish(url)?;
    holder.transaction(|holder| {
        let taken: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "pg_try_advisory_xact_lock({KEY})"
        )))
        .get_result(holder)?;
        if !taken {
            return Err("another session holds the probe's advisory lock".into());
        }
        let met = conn.transaction(|conn| {
            conn.batch_execute("SET LOCAL lock_timeout = '1ms'")?;
            conn.batch_execute(&format!("SELECT pg_advisory_xact_lock({KEY})"))
        });
        match met {
            Err(diesel::result::Error::DatabaseError(_, info)) => Ok(info.message().to_owned()),
            Err(e) => Err(e.into()),
            Ok(()) => Err("an advisory lock held by another session was granted".into()),
        }
    })
}

/// Whether `error` is a lock timeout, PostgreSQL's `words` for one (`words`) being known.
pub fn is_lock_timeout(error: &diesel::result::Error, words: &str) -> bool {
    matches!(error, diesel::result::Error::DatabaseError(_, info) if info.message() == words)
}
