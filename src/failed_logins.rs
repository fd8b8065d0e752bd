//! The failed log-in limit as one instance holds it in memory: which clients PostgreSQL last
//! said are over the limit, and until when, and a turn for recording failures.
//!
//! The limit itself is counted in PostgreSQL for the whole fleet
//! (`db::admin_auth::record_failed_login`). This front keeps a flood of wrong tokens from
//! costing the instance a pooled connection per request: a client already over the limit is
//! answered from memory, and the failures that do reach the database are recorded one at a
//! time, so a flood waits for one connection instead of taking every one the users need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use crate::db::admin_auth::LimitWaits;

/// Shared by all the workers of an instance (cloning shares it).
#[derive(Clone, Default)]
pub struct FailedLogins(Arc<Inner>);

#[derive(Default)]
struct Inner {
    over: Mutex<OverLimit>,
    turn: tokio::sync::Mutex<()>,
}

/// The ends of the waits PostgreSQL reported. Only clients that reached the limit are here,
/// and the overall limit caps how many can within a window, so the map stays small; ended
/// entries go at the next insertion.
#[derive(Default)]
struct OverLimit {
    clients: HashMap<String, Instant>,
    everyone: Option<Instant>,
}

impl FailedLogins {
    /// How long `client` must still wait, as far as this instance knows, without asking
    /// PostgreSQL: `None` means ask it.
    pub fn wait_of(&self, client: &str) -> Option<Duration> {
        let over = self.over();
        let now = Instant::now();
        [over.clients.get(client).copied(), over.everyone]
            .into_iter()
            .flatten()
            .filter(|until| *until > now)
            .max()
            .map(|until| until - now)
    }

    /// Remembers what PostgreSQL said after a failure of `client`.
    pub fn remember(&self, client: &str, waits: LimitWaits) {
        let now = Instant::now();
        let mut over = self.over();
        if let Some(wait) = waits.everyone {
            over.everyone = over.everyone.max(Some(now + wait));
        }
        if let Some(wait) = waits.client {
            over.clients.retain(|_, until| *until > now);
            let until = over.clients.entry(client.to_owned()).or_insert(now);
            *until = (*until).max(now + wait);
        }
    }

    /// This instance's turn to record a failure in PostgreSQL, held while it does: failures
    /// arriving together queue here, in memory, and each looks again at `wait_of` once its
    /// turn comes, since the one before may have learnt that its client is over the limit.
    pub async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.turn.lock().await
    }

    fn over(&self) -> std::sync::MutexGuard<'_, OverLimit> {
        self.0
            .over
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_waits_for_its_own_limit_or_everyone_s() {
        let limits = FailedLogins::default();
        assert_eq!(limits.wait_of("198.51.100.1"), None);
        limits.remember(
            "198.51.100.1",
            LimitWaits {
                client: Some(Duration::from_secs(30)),
                everyone: None,
            },
        );
        let wait = limits.wait_of("198.51.100.1").unwrap();
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30));
        assert_eq!(limits.wait_of("198.51.100.2"), None, "another client");
        limits.remember(
            "198.51.100.2",
            LimitWaits {
                client: None,
                everyone: Some(Duration::from_secs(50)),
            },
        );
        assert!(limits.wait_of("198.51.100.3").unwrap() > Duration::from_secs(49));
        assert!(limits.wait_of("198.51.100.1").unwrap() > Duration::from_secs(49));
    }

    #[test]
    fn a_wait_ends() {
        let limits = FailedLogins::default();
        let over = LimitWaits {
            client: Some(Duration::ZERO),
            everyone: Some(Duration::ZERO),
        };
        limits.remember("198.51.100.1", over);
        assert_eq!(limits.wait_of("198.51.100.1"), None);
    }
}
