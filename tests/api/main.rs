//! Integration tests, compiled as one binary: the real server over real HTTP against a real
//! PostgreSQL, one fresh database per test.

mod admin_pages;
mod backfill;
mod demo;
mod guards;
mod helpers;
mod local_pg;
mod name_rule;
mod phases;
mod schema_migrations;
mod v1_api;
mod v1_pages;
mod v2_pages;
