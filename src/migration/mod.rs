//! The zero-downtime migration: its phases, the state every instance follows, and the
//! embedded schema migrations.

pub mod phase;
pub mod schema_migrations;
pub mod state;

pub use phase::Phase;
