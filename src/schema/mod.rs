//! Diesel table definitions, one module per schema version of `users`.
//!
//! Code for a phase imports only the module of the schema that phase guarantees, so once
//! `full_name` is gone nothing compiled against a later module can name it. The modules are
//! written by hand (not `diesel print-schema`): each describes one version, not "whatever the
//! database has now".

pub mod state;
pub mod v1;
