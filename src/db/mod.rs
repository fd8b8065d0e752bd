//! Database access: the connection pool and plain synchronous query functions
//! (`fn(&mut PgConnection, ..) -> QueryResult<T>`), free of any HTTP types.

pub mod admin_auth;
pub mod databases;
pub mod lock_timeout;
pub mod reads;
pub mod users;

use std::ops::{Deref, DerefMut};
use std::time::{Duration, Instant};

use diesel::PgConnection;
use diesel::connection::{CacheSize, Connection, SimpleConnection};
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
///
/// Behind a transaction-mode pooler (`through_pooler`), a connection's statements may run on a
/// different server session each transaction, shared with other clients: Diesel's named
/// prepared statements would meet one another's names there ("prepared statement
/// \"__diesel_stmt_1\" already exists") or be missing. With its statement cache off, Diesel
/// sends each statement unnamed (parse, bind and execute in one round trip).
pub struct Manager {
    inner: ConnectionManager<PgConnection>,
    through_pooler: bool,
}

impl Manager {
    pub fn new(database_url: &str) -> Self {
        Self::with(database_url, false)
    }

    fn with(database_url: &str, through_pooler: bool) -> Self {
        Self {
            inner: ConnectionManager::new(database_url),
            through_pooler,
        }
    }
}

impl ManageConnection for Manager {
    type Connection = DbConn;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<DbConn, Self::Error> {
        let mut conn = self.inner.connect()?;
        if self.through_pooler {
            conn.set_prepared_statement_cache_size(CacheSize::Disabled);
        }
        Ok(DbConn {
            conn,
            proven_at: None,
        })
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), Self::Error> {
        match conn.proven_at.take() {
            Some(at) if at.elapsed() < PROVEN_FOR => Ok(()),
            _ => self.inner.is_valid(&mut conn.conn),
        }
    }

    fn has_broken(&self, conn: &mut DbConn) -> bool {
        self.inner.has_broken(&mut conn.conn)
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
    /// Whether the URL is a transaction-mode pooler (`DIRECT_DATABASE_URL` is set): then
    /// nothing relies on the session. No named prepared statements (see `Manager`), and no
    /// session `SET` at checkout, which would change the server session of whichever client
    /// gets it next: the timeouts above come from the pooled role's own settings instead
    /// (`ALTER ROLE … SET statement_timeout`, see the README), and generic plans are not
    /// forced.
    pub through_pooler: bool,
}

impl PoolLimits {
    pub fn with_size(size: u32) -> Self {
        Self {
            size,
            checkout_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(10),
            through_pooler: false,
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
        if self.limits.through_pooler {
            return Ok(());
        }
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

/// A session of zdm's own to the server itself (`DIRECT_DATABASE_URL`, or the one URL), for
/// the work that bounds its own statements: the steps, the backfill's runner and workers,
/// verify. A role's or a database's `statement_timeout` (a DBA's guard rail) would cancel
/// their scans and their bookkeeping half-way, so the session has none; each backfill batch
/// sets its own.
pub fn session(url: &str) -> diesel::ConnectionResult<PgConnection> {
    let mut conn = PgConnection::establish(url)?;
    conn.batch_execute("SET statement_timeout = 0")
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
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
        .build(Manager::with(database_url, limits.through_pooler))
}

/// Which URL serves what, as the dashboard and `zdm migrate status` show it: hosts, ports and
/// the database, never a user or a password.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Connections {
    /// Where requests go (`DATABASE_URL`).
    pub requests: String,
    /// Where the work that needs a session goes: migrations, the steps, the backfill, verify
    /// (`DIRECT_DATABASE_URL`, else `DATABASE_URL`).
    pub sessions: String,
    /// Whether requests go through a transaction-mode pooler (`DIRECT_DATABASE_URL` is set).
    pub pooled: bool,
}

impl Connections {
    pub fn new(requests_url: &str, direct_url: Option<&str>) -> Self {
        Self {
            requests: describe_url(requests_url),
            sessions: describe_url(direct_url.unwrap_or(requests_url)),
            pooled: direct_url.is_some(),
        }
    }
}

/// The parts of a PostgreSQL URL (`postgres://user:password@hosts/database?params`) that zdm
/// reads, for showing it and for putting a pooler in front of its server.
pub struct PgUrl<'a> {
    /// The user before the `@`, if any (without its password).
    pub user: Option<&'a str>,
    /// `host:port[,host:port…]` after the `@` (empty where `host=` names a socket folder).
    pub hosts: &'a str,
    pub database: &'a str,
    query: &'a str,
}

impl<'a> PgUrl<'a> {
    pub fn parse(url: &'a str) -> Self {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let rest = base.split_once("://").map_or(base, |(_, rest)| rest);
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        let (user, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (userinfo.split(':').next(), hosts),
            None => (None, authority),
        };
        Self {
            user,
            hosts,
            database,
            query,
        }
    }

    /// The query parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(|v| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
    }
}

/// `host:port/database` of a PostgreSQL URL (each host of a multi-host one; a socket folder
/// given as `host=`), without its user, password or other parameters.
pub fn describe_url(url: &str) -> String {
    let parts = PgUrl::parse(url);
    let database = parts
        .param("dbname")
        .unwrap_or_else(|| parts.database.to_owned());
    let hosts = if parts.hosts.is_empty() {
        pair_hosts_and_ports(
            parts.param("host").as_deref().unwrap_or("localhost"),
            parts.param("port").as_deref().unwrap_or("5432"),
        )
    } else {
        parts.hosts.to_owned()
    };
    format!("{hosts}/{database}")
}

/// `host:port` of each server of libpq's `host=` and `port=` lists (`host=a,b&port=1,2`:
/// `a:1,b:2`); a single port serves every host, as in libpq.
fn pair_hosts_and_ports(hosts: &str, ports: &str) -> String {
    let ports: Vec<&str> = ports.split(',').collect();
    hosts
        .split(',')
        .enumerate()
        .map(|(i, host)| {
            let port = if ports.len() == 1 {
                ports[0]
            } else {
                ports.get(i).copied().unwrap_or("5432")
            };
            format!("{host}:{port}")
        })
        .collect::<Vec<_>>()
        .join(",")
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
    use super::{describe_url, with_database};

    #[test]
    fn a_url_is_described_without_its_user_or_password() {
        assert_eq!(
            describe_url("postgres://zdm_web:s3cret@10.0.0.5:6432/zdm?sslmode=require"),
            "10.0.0.5:6432/zdm"
        );
        assert_eq!(
            describe_url(
                "postgres://u:p@127.0.0.1:5440,127.0.0.1:5441/zdm?target_session_attrs=read-write"
            ),
            "127.0.0.1:5440,127.0.0.1:5441/zdm"
        );
        assert_eq!(
            describe_url("postgres:///zdm?host=%2Ftmp%2Fpg&port=5432&user=postgres&password=x"),
            "/tmp/pg:5432/zdm"
        );
        assert!(!describe_url("postgresql://a:b@h/d").contains('b'));
        assert_eq!(
            describe_url(
                "postgres:///zdm?host=%2Fa%2Frun,%2Fb%2Frun&port=5432,5433&user=postgres&target_session_attrs=read-write"
            ),
            "/a/run:5432,/b/run:5433/zdm"
        );
        assert_eq!(
            describe_url("postgres:///zdm?host=/a,/b&port=5432"),
            "/a:5432,/b:5432/zdm"
        );
    }

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
        assert_eq!(
            with_database(
                "postgres:///zdm?host=/a,/b&port=5432,5432&target_session_attrs=read-write",
                "t"
            ),
            "postgres:///t?host=/a,/b&port=5432,5432&target_session_attrs=read-write"
        );
        assert_eq!(
            with_database(
                "postgres://u@h1:5440,h2:5441/zdm?target_session_attrs=read-write",
                "t"
            ),
            "postgres://u@h1:5440,h2:5441/t?target_session_attrs=read-write"
        );
    }
}
