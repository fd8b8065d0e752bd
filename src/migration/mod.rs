//! The zero-downtime migration: the state every instance follows, the gates between phases,
//! the runner that moves them, the backfill and verification, and the embedded schema
//! migrations. The phases themselves are `crate::domain::Phase`, the one path they are
//! named by.

pub mod advisory_lock;
pub mod backfill;
pub mod control;
pub mod follower;
pub mod gates;
pub mod name_sql;
pub mod runner;
pub mod schema_migrations;
pub mod state;
pub mod status;
pub mod verify;
