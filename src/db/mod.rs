//! Database access: the connection pool and plain synchronous query functions
//! (`fn(&mut PgConnection, ..) -> QueryResult<T>`), free of any HTTP types.

pub mod users;

use std::time::Duration;

use diesel::PgConnection;
use diesel::r2d2::{ConnectionManager, Pool, PoolError};

pub type DbPool = Pool<ConnectionManager<PgConnection>>;

/// How long a request waits for a free connection before it answers 503.
pub const POOL_CHECKOUT_TIMEOUT: Duration = Duration::from_secs(5);

pub fn build_pool(database_url: &str, size: u32) -> Result<DbPool, PoolError> {
    Pool::builder()
        .max_size(size)
        .connection_timeout(POOL_CHECKOUT_TIMEOUT)
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
