//! `users` as the baseline migration creates it: one `full_name` column.

diesel::table! {
    users (id) {
        id -> Int8,
        full_name -> Text,
        email -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}
