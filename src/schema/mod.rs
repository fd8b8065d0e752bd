//! Diesel table definitions, one module per schema version of `users`.
//!
//! Code for a phase imports only the module of the schema that phase guarantees, so once
//! `full_name` is gone nothing compiled against a later module can name it. The modules are
//! written by hand (not `diesel print-schema`): each describes one version, not "whatever the
//! database has now".
//!
//! | module     | phases                          | name columns                                   |
//! |------------|---------------------------------|------------------------------------------------|
//! | `v1`       | baseline, expanded              | `full_name`                                    |
//! | `expanded` | dual_write, backfilled, read_new | `full_name`, `first_name`?, `last_name`?      |
//! | `v2`       | new_only, contracted            | `first_name`, `last_name` (no `full_name`)     |

pub mod admin;
pub mod expanded;
pub mod state;
pub mod v1;
pub mod v2;

use crate::domain::Phase;

/// The schema module a phase's code uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaVersion {
    V1,
    Expanded,
    V2,
}

impl SchemaVersion {
    pub fn for_phase(phase: Phase) -> Self {
        match phase {
            Phase::Baseline | Phase::Expanded => SchemaVersion::V1,
            Phase::DualWrite | Phase::Backfilled | Phase::ReadNew => SchemaVersion::Expanded,
            Phase::NewOnly | Phase::Contracted => SchemaVersion::V2,
        }
    }
}
