//! The SQL migrations under `migrations/`, embedded in the binary.
//!
//! Two kinds live there. Infrastructure migrations (the baseline `users` table, the state
//! tables) are applied by every `zdm serve` at start-up. Phase migrations (their directory
//! name contains `_phase_`) change the schema of `users` on the way to the new columns; only
//! the migration runner applies them, when the phase gates allow, never a plain start-up.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::migration::{Migration, MigrationSource};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::BoxError;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Whether a migration belongs to the phased change of `users` (applied step by step).
pub fn is_phase_migration(name: &str) -> bool {
    name.contains("_phase_")
}

/// Applies every pending infrastructure migration, in order, and no phase migration.
/// Returns the names applied.
pub fn run_infrastructure_migrations(conn: &mut PgConnection) -> Result<Vec<String>, BoxError> {
    let pending = conn.pending_migrations(MIGRATIONS)?;
    let mut applied = Vec::new();
    for migration in pending
        .iter()
        .filter(|m| !is_phase_migration(&m.name().to_string()))
    {
        conn.run_migration(migration.as_ref())?;
        applied.push(migration.name().to_string());
    }
    Ok(applied)
}

/// How long a statement of an infrastructure migration applied at start-up waits for a lock
/// before it gives way.
const LOCK_ATTEMPT_MS: u32 = 500;

/// How long a start-up keeps trying an infrastructure migration that gives way.
const LOCK_WAIT_BUDGET: Duration = Duration::from_secs(600);

/// As `run_infrastructure_migrations`, for a server others use meanwhile: an instance that
/// starts while a step runs (a rolling upgrade of zdm in the middle of a migration). A step
/// holds the phase row for as long as its verify scans `users`; an `ALTER TABLE` of zdm's
/// tables queued behind it would queue every instance's phase read and heartbeat behind
/// itself, past their lease, and the whole fleet would answer 503. So each statement waits
/// at most `LOCK_ATTEMPT_MS` for its lock, and the migration, undone, is tried again after a
/// jittered pause, within `LOCK_WAIT_BUDGET`. A lock timeout is known by PostgreSQL's own
/// words in this server's language, learnt first from one met on purpose
/// (`db::lock_timeout::words`; `url`: the same server, for a second session).
pub fn run_infrastructure_migrations_giving_way(
    conn: &mut PgConnection,
    url: &str,
) -> Result<Vec<String>, BoxError> {
    let pending = conn.pending_migrations(MIGRATIONS)?;
    if pending
        .iter()
        .all(|m| is_phase_migration(&m.name().to_string()))
    {
        return Ok(Vec::new());
    }
    let lock_timeout = match crate::db::lock_timeout::words(conn, url) {
        Ok(words) => words,
        Err(e) => {
            log::warn!("infrastructure migrations wait for their locks ({e})");
            return run_infrastructure_migrations(conn);
        }
    };
    conn.batch_execute(&format!("SET lock_timeout = '{LOCK_ATTEMPT_MS}ms'"))?;
    let started = Instant::now();
    let mut attempts = 0;
    let outcome = loop {
        match run_infrastructure_migrations(conn) {
            Err(e) if e.to_string().contains(&lock_timeout) => {
                attempts += 1;
                if started.elapsed() >= LOCK_WAIT_BUDGET {
                    break Err(e);
                }
                log::warn!(
                    "an infrastructure migration gave way to a lock held elsewhere (a step in progress?), attempt {attempts}: {e}"
                );
                std::thread::sleep(Duration::from_millis(500 + fastrand::u64(0..1000)));
            }
            outcome => break outcome,
        }
    };
    conn.batch_execute("RESET lock_timeout")?;
    outcome
}

/// Every embedded migration's name, in order.
pub fn all_migration_names() -> Result<Vec<String>, BoxError> {
    let mut names: Vec<String> = MigrationSource::<Pg>::migrations(&MIGRATIONS)?
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    names.sort();
    Ok(names)
}
