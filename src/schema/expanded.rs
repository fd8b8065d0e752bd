//! `users` while both name forms exist and are kept in step (dual_write to read_new):
//! `full_name` plus the new, still nullable `first_name` and `last_name`.

diesel::table! {
    users (id) {
        id -> Int8,
        full_name -> Text,
        email -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        first_name -> Nullable<Text>,
        last_name -> Nullable<Text>,
    }
}
