//! The migration's own bookkeeping tables; they exist in every phase.

diesel::table! {
    zdm_migration_state (singleton) {
        singleton -> Bool,
        phase -> Text,
        changed_at -> Timestamptz,
    }
}

diesel::table! {
    zdm_migration_history (id) {
        id -> Int8,
        action -> Text,
        from_phase -> Text,
        to_phase -> Text,
        actor -> Text,
        outcome -> Text,
        detail -> Nullable<Text>,
        at -> Timestamptz,
    }
}
