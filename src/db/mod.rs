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
