//! Reads from streaming replicas, never staler than the reader may see.
//!
//! A read may go to a replica only if that replica has replayed past
//! - the moment this instance switched to its phase (so the replica has the schema the
//!   phase's code reads: after the expand, say, it has `first_name`), and
//! - the client's own last write, remembered in a `zdm_lsn` cookie set on every successful
//!   write (read-your-writes).
//!
//! Otherwise the read goes to the primary. We route rather than wait: a read never blocks on
//! a slow replica. A background thread reads each replica's replay position every 100 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use diesel::prelude::*;
use diesel::r2d2::Pool;
use diesel::sql_types::{Nullable, Text};

use crate::db::{DbPool, Manager};

/// The cookie that carries a client's last write position.
pub const COOKIE: &str = "zdm_lsn";

/// The position a write answer carries when the primary's could not be read: no replica
/// reaches it, so the client's reads go to the primary.
pub const UNKNOWN_POSITION: u64 = u64::MAX;

/// The replay lag above which the backfill waits, unless configured
/// (`ZDM_REPLICA_MAX_LAG_BYTES`).
pub const DEFAULT_MAX_LAG_BYTES: i64 = 16 * 1024 * 1024;
const POLL: Duration = Duration::from_millis(100);

/// A WAL position (`16/B374D848`) as a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    Some((u64::from_str_radix(high, 16).ok()? << 32) | u64::from_str_radix(low, 16).ok()?)
}

/// The primary's current WAL position: where its next record goes, so past every commit so
/// far. Not the position written (`pg_current_wal_lsn()`): under `synchronous_commit = off` (a
/// database's or a role's setting) a commit is answered before the WAL writer writes it, and
/// a replica replayed up to the written position lacks it.
pub fn current_lsn(conn: &mut PgConnection) -> QueryResult<u64> {
    let text: String = diesel::select(diesel::dsl::sql::<Text>(
        "pg_current_wal_insert_lsn()::text",
    ))
    .get_result(conn)?;
    Ok(parse_lsn(&text).unwrap_or(0))
}

/// How far a replica has replayed the primary's WAL (`None`: it is not replaying, so not a
/// standby).
pub fn replayed_lsn(conn: &mut PgConnection) -> QueryResult<Option<u64>> {
    let text: Option<String> = diesel::select(diesel::dsl::sql::<Nullable<Text>>(
        "pg_last_wal_replay_lsn()::text",
    ))
    .get_result(conn)?;
    Ok(text.as_deref().and_then(parse_lsn))
}

struct Replica {
    pool: DbPool,
    /// Replayed WAL position; 0 while unknown or unreachable.
    replayed: AtomicU64,
}

/// The replicas reads may use (none: every read goes to the primary).
#[derive(Clone, Default)]
pub struct ReadReplicas {
    replicas: Arc<Vec<Replica>>,
    stop: Arc<AtomicBool>,
}

impl ReadReplicas {
    /// Pools for `urls` (connections are made lazily, so a replica that is down does not keep
    /// the app from starting) and the thread that follows their replay positions.
    pub fn start(urls: &[String], limits: crate::db::PoolLimits) -> Self {
        let replicas: Vec<Replica> = urls
            .iter()
            .map(|url| Replica {
                pool: Pool::builder()
                    .max_size(limits.size)
                    .min_idle(Some(0))
                    .connection_timeout(limits.checkout_timeout)
                    .build_unchecked(Manager::new(url)),
                replayed: AtomicU64::new(0),
            })
            .collect();
        let this = Self {
            replicas: Arc::new(replicas),
            stop: Arc::new(AtomicBool::new(false)),
        };
        if !this.replicas.is_empty() {
            let follower = this.clone();
            std::thread::Builder::new()
                .name("zdm-replica-positions".to_owned())
                .spawn(move || follower.follow())
                .ok();
        }
        this
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    fn follow(&self) {
        while !self.stop.load(Ordering::Acquire) {
            for replica in self.replicas.iter() {
                let position = replica
                    .pool
                    .get()
                    .ok()
                    .and_then(|mut conn| replayed_lsn(&mut conn).ok().flatten())
                    .unwrap_or(0);
                replica.replayed.store(position, Ordering::Release);
            }
            std::thread::sleep(POLL);
        }
    }

    /// A replica that has replayed past `required`, if any (`None`: read from the primary).
    pub fn pick(&self, required: u64) -> Option<&DbPool> {
        let ready: Vec<&Replica> = self
            .replicas
            .iter()
            .filter(|r| {
                let replayed = r.replayed.load(Ordering::Acquire);
                replayed > 0 && replayed >= required
            })
            .collect();
        if ready.is_empty() {
            return None;
        }
        Some(&ready[fastrand::usize(..ready.len())].pool)
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::parse_lsn;

    #[test]
    fn lsns_compare_as_numbers() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert!(parse_lsn("1/FFFFFFFF") < parse_lsn("2/0"));
        assert_eq!(parse_lsn("nonsense"), None);
    }
}
