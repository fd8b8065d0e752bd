//! Database access: the connection pool and plain synchronous query functions
//! (`fn(&mut PgConnection, ..) -> QueryResult<T>`), free of any HTTP types.

pub mod admin_auth;
pub mod reads;
pub mod users;

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use diesel::PgConnection;
use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, ManageConnection, Pool, PoolError};

pub type DbPool = Pool<Manager>;

/// How recently a connection must have answered a request for its next checkout to skip
/// the `SELECT 1`.
const PROVEN_FOR: Duration = Duration::from_secs(1);

/// A pooled PostgreSQL connection that remembers whether its last request was answered.
pub struct DbConn {
    conn: PgConnection,
    /// When it last answered a request (`mark_proven`); cleared by every checkout.
    proven_at: Option<Instant>,
}

impl DbConn {
    /// The connection just answered: its next checkout within `PROVEN_FOR` skips the ping.
    pub fn mark_proven(&mut self) {
        self.proven_at = Some(Instant::now());
    }
}

impl Deref for DbConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for DbConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// Diesel's r2d2 manager, minus a round trip per request. A connection that dies under a
/// query is noticed by Diesel (libpq no longer knows its transaction state) and dropped by
/// r2d2 when it comes back. One that died while idle in the pool (a database restart, a
/// killed backend) is not known to be dead until it is used, which is why r2d2 pings
/// (`SELECT 1`) at every checkout. Here a checkout pings only connections that have not just
/// proven themselves, which on a busy pool is almost none: an idle one is still checked, so
/// a restart costs no request, and a busy one killed under load costs at most the one
/// request that finds it dead (503: the client may retry).
pub struct Manager(ConnectionManager<PgConnection>);

impl Manager {
    pub fn new(database_url: &str) -> Self {
        Self(ConnectionManager::new(database_url))
    }
}

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConn, Self::Error> {
        Ok(DbConn {
            conn: self.0.connect()?,
            proven_at: None,
        })
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), Self::Error> {
        match conn.proven_at.take() {
            Some(at) if at.elapsed() < PROVEN_FOR => Ok(()),
            _ => self.0.is_valid(&mut conn.conn),
        }
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        self.0.has_broken(&mut conn.conn)
    }
}

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
struct SessionSettings {
    limits: PoolLimits,
    generic_plans: bool,
}

impl CustomizeConnection<DbConn, diesel::r2d2::Error> for SessionSettings {
    fn on_acquire(&self, conn: &mut DbConn) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(&format!(
            "SET statement_timeout = {}; SET idle_in_transaction_session_timeout = {}; {}",
            self.limits.statement_timeout.as_millis(),
            self.limits.idle_in_transaction_timeout.as_millis(),
            if self.generic_plans {
                "SET plan_cache_mode = force_generic_plan"
            } else {
                ""
            }
        ))
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

pub fn build_pool(database_url: &str, limits: PoolLimits) -> Result<DbPool, PoolError> {
    pool_with(database_url, limits, false)
}

/// A pool whose connections plan each prepared statement once and reuse the plan, for
/// queries whose best plan does not depend on their parameters. PostgreSQL would otherwise
/// keep planning `id = ANY($1)` afresh at every execution: it estimates a generic plan for
/// ten ids and a custom one for the actual few, finds the custom one cheaper, and never
/// switches. For the coalesced reads (`reads`), that planning cost as much as the reads.
pub fn build_generic_plan_pool(
    database_url: &str,
    limits: PoolLimits,
) -> Result<DbPool, PoolError> {
    pool_with(database_url, limits, true)
}

fn pool_with(
    database_url: &str,
    limits: PoolLimits,
    generic_plans: bool,
) -> Result<DbPool, PoolError> {
    Pool::builder()
        .max_size(limits.size)
        // Checkouts ask the manager, which pings only connections that have not just proven
        // themselves (see `Manager`).
        .test_on_check_out(true)
        .connection_timeout(limits.checkout_timeout)
        .connection_customizer(Box::new(SessionSettings {
            limits,
            generic_plans,
        }))
        .build(Manager::new(database_url))
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
