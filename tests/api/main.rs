//! Integration tests, compiled as one binary: the real server over real HTTP against a real
//! PostgreSQL, one fresh database per test.

mod admin_fleet;
mod admin_input;
mod admin_pages;
mod backfill;
mod backfill_crash;
mod backfill_workers;
mod browser;
mod demo;
mod edges;
mod failover;
mod faults;
mod fencing;
mod fuzz;
mod gate_table;
mod guards;
mod helpers;
mod lived_in;
mod local_pg;
mod metrics;
mod name_rule;
mod others_objects;
mod phases;
mod pooler;
mod reliability;
mod replicas;
mod schema_migrations;
mod security;
mod shutdown;
mod v1_api;
mod v1_pages;
mod v2_pages;
mod writers;
