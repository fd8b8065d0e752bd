//! zdm: a zero-downtime PostgreSQL schema migration you can run, watch and measure.
//!
//! The invariants the code names I1–I8 are listed in [`migration`](crate::migration#invariants).

pub mod app_state;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod failed_logins;
pub mod faults;
pub mod fnv;
pub mod local_pg;
pub mod metrics;
pub mod migration;
pub mod pgbouncer;
pub mod replicas;
pub mod routes;
pub mod schema;
pub mod secrets;
pub mod startup;
pub mod tools;
pub mod trusted_proxies;
