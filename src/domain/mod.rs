//! The bottom layer, using nothing else of the crate: validated input (handlers turn raw
//! form and JSON fields into these types first, so the rest of the code never sees an
//! unchecked string), the name rule, and the `Phase` of the migration, a core concept every
//! other layer names.

pub mod email;
pub mod full_name;
pub mod name_parts;
pub mod name_rule;
mod phase;
pub mod user;

pub use email::Email;
pub use full_name::FullName;
pub use name_parts::NameParts;
// Private module: `crate::domain::Phase` is the one path the phases are named by.
pub use phase::{Phase, UnknownPhase};
pub use user::{Name, NewUser, UserChanges};

/// Why a field was rejected; becomes a 422 naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    pub field: &'static str,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}
