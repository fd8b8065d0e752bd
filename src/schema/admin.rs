//! The admin log-in's tables: sessions and failed log-ins, shared by every instance.

diesel::table! {
    zdm_admin_sessions (id_hash) {
        id_hash -> Bytea,
        csrf_token -> Text,
        created_at -> Timestamptz,
        last_seen_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    zdm_admin_login_failures (id) {
        id -> Int8,
        client -> Text,
        at -> Timestamptz,
    }
}
