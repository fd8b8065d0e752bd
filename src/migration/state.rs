//! Reading the phase every instance follows.

use diesel::prelude::*;

use super::Phase;
use crate::schema::state::zdm_migration_state;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
    #[error("the stored phase is invalid: {0}")]
    Corrupt(#[from] super::phase::UnknownPhase),
}

/// The phase stored in the database.
pub fn current_phase(conn: &mut PgConnection) -> Result<Phase, StateError> {
    let name: String = zdm_migration_state::table
        .select(zdm_migration_state::phase)
        .first(conn)?;
    Ok(name.parse()?)
}
