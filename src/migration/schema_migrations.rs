//! The SQL migrations under `migrations/`, embedded in the binary.
//!
//! Two kinds live there. Infrastructure migrations (the baseline `users` table, the state
//! tables) are applied by every `zdm serve` at start-up. Phase migrations (their directory
//! name contains `_phase_`) change the schema of `users` on the way to the new columns; only
//! the migration runner applies them, when the phase gates allow, never a plain start-up.

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

/// Every embedded migration's name, in order.
pub fn all_migration_names() -> Result<Vec<String>, BoxError> {
    let mut names: Vec<String> = MigrationSource::<Pg>::migrations(&MIGRATIONS)?
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    names.sort();
    Ok(names)
}
