//! `users` without `full_name` (new_only, contracted). In new_only the column still exists
//! but nothing here can name it; the new columns are complete (a validated CHECK guards them)
//! and become NOT NULL at the contract.

diesel::table! {
    users (id) {
        id -> Int8,
        email -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        first_name -> Text,
        last_name -> Text,
    }
}
