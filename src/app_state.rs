//! What every request handler can reach: built once at start-up, shared by all workers.

use crate::db::DbPool;
use crate::migration::follower::AppliedPhase;

#[derive(Clone)]
pub struct AppState {
    pub pool: DbPool,
    /// For work that needs a connection of its own (advisory locks held for minutes).
    pub database_url: String,
    /// The phase this instance has applied (kept current by the phase follower).
    pub phase: AppliedPhase,
    /// This instance's name in `zdm_instances` and in the history.
    pub instance_id: String,
    /// The Bearer token of the admin API.
    pub admin_token: String,
}
