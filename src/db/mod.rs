//! Database access: the connection pool and plain synchronous query functions
//! (`fn(&mut PgConnection, ..) -> QueryResult<T>`), free of any HTTP types.

pub mod scratch;
pub mod users;

use std::time::Duration;

use diesel::PgConnection;
use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PoolError};

pub type DbPool = Pool<ConnectionManager<PgConnection>>;

/// Limits every web connection lives under, so a stuck query or a forgotten transaction
/// turns into a quick error instead of a request that hangs and a pool that drains.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    pub size: u32,
    /// How long a request waits for a free connection before it answers 503.
    pub checkout_timeout: Duration,
    /// `statement_timeout` of every pooled connection.
    pub statement_timeout: Duration,
    /// `idle_in_transaction_session_timeout` of every pooled connection.
    pub idle_in_transaction_timeout: Duration,
}

impl PoolLimits {
    pub fn with_size(size: u32) -> Self {
        Self {
            size,
            checkout_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
struct SessionLimits(PoolLimits);

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for SessionLimits {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}",
            self.0.statement_timeout.as_millis(),
            self.0.idle_in_transaction_timeout.as_millis()
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub fn build_pool(database_url: &str, limits: PoolLimits) -> Result<DbPool, PoolError> {
    Pool::builder()
        .max_size(limits.size)
        // Keep r2d2's `SELECT 1` before every checkout. It costs a round trip per request
        // (skipping it served 18–22 % more reads in `zdm bench http`), but Diesel's pool
        // manager cannot tell a dead PgConnection from a live one, so without it a backend
        // killed by a database restart would stay in the pool and fail request after request.
        .test_on_check_out(true)
        .connection_timeout(limits.checkout_timeout)
        .connection_customizer(Box::new(SessionLimits(limits)))
        .build(ConnectionManager::new(database_url))
}

/// `url` with its database replaced by `database` (for tools that create databases of their
/// own next to the app's: the tests, the benchmark).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| i + authority_start);
    let mut out = format!("{}/{}", &base[..path_start], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_only_the_database() {
        assert_eq!(
            with_database("postgres://u:p@host:5432/app?sslmode=disable", "other"),
            "postgres://u:p@host:5432/other?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres:///zdm?host=/tmp/x&port=5432", "t"),
            "postgres:///t?host=/tmp/x&port=5432"
        );
        assert_eq!(with_database("postgres://host", "t"), "postgres://host/t");
    }
}
