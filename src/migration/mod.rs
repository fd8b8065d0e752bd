//! The zero-downtime migration: the state every instance follows, the gates between phases,
//! the runner that moves them, the backfill and verification, and the embedded schema
//! migrations. The phases themselves are `crate::domain::Phase`, the one path they are
//! named by.
//!
//! # Invariants
//!
//! What the migration keeps true, named I1–I8 in comments across the crate, the tests and
//! the SQL (DESIGN.md §2 has the full text):
//!
//! - **I1 one rule.** One split/join rule for names, and the SQL the backfill uses agrees
//!   with the Rust of dual-write on every input (`crate::domain::name_rule`, `name_sql`).
//! - **I2 consistency.** In backfilled and read_new, and in dual_write for every row written
//!   or backfilled since, `norm(full_name) = join(first_name, last_name)` on every row; the
//!   backfill's repair condition is exactly its negation (`verify`, `zdm_verify_names`).
//! - **I3 no lost write.** Every write acknowledged to a client is visible afterwards with
//!   its values, in every phase, across backfill, rollback, crash and restart (the demo's
//!   audit checks it).
//! - **I4 short locks.** Every DDL runs with a short `lock_timeout` and is retried with
//!   backoff; none rewrites the table; NOT NULL comes from a validated CHECK (`runner`, the
//!   phase migrations).
//! - **I5 short transactions.** No backfill transaction covers more than one batch; the
//!   checkpoint commits with its batch, and a killed backfill resumes from it (`backfill`).
//! - **I6 no premature contract.** Nothing drops full_name before every live instance has
//!   applied new_only and verify finds 0 divergent rows; the contract's SQL refuses by itself
//!   (`gates`).
//! - **I7 schema modules.** One Diesel `table!` module per schema version, and each phase's
//!   code uses only its own (`crate::schema`).
//! - **I8 no stale phase.** An instance serves phase-dependent code only while its lease on
//!   the phase is fresh, and acknowledges a new phase only once every request begun under the
//!   old one has finished (`follower`).

pub mod advisory_lock;
pub mod backfill;
pub mod control;
pub mod follower;
pub mod gates;
pub mod name_sql;
pub mod runner;
pub mod schema_migrations;
pub mod shown_gates;
pub mod state;
pub mod status;
pub mod verify;
