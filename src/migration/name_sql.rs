//! The SQL side of the name rule (`zdm_name_*` functions, created by the
//! `name_rule_and_coordination` migration), declared for Diesel. The Rust side is
//! `crate::domain::name_rule`; a differential property test holds them equal.

use diesel::sql_types::{Nullable, Text};

diesel::define_sql_function! {
    /// Whitespace normalisation: runs of Unicode White_Space → one space, trimmed.
    fn zdm_name_norm(s: Text) -> Text;
}

diesel::define_sql_function! {
    /// The first name of a full name.
    fn zdm_name_first(s: Text) -> Text;
}

diesel::define_sql_function! {
    /// The last name of a full name ('' for a single word).
    fn zdm_name_last(s: Text) -> Text;
}

diesel::define_sql_function! {
    /// The full name of the parts (NULL parts count as empty).
    fn zdm_name_join(first_name: Nullable<Text>, last_name: Nullable<Text>) -> Text;
}
