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

diesel::table! {
    zdm_instances (id) {
        id -> Text,
        applied_phase -> Text,
        started_at -> Timestamptz,
        last_seen -> Timestamptz,
        recent_p99_ms -> Nullable<Double>,
        recent_latency_le -> Nullable<Array<Double>>,
        recent_latency_counts -> Nullable<Array<Int8>>,
    }
}

diesel::table! {
    zdm_verify (singleton) {
        singleton -> Bool,
        divergent -> Int8,
        sample_ids -> Array<Int8>,
        phase -> Text,
        checked_at -> Timestamptz,
    }
}

diesel::table! {
    zdm_backfill (singleton) {
        singleton -> Bool,
        direction -> Text,
        state -> Text,
        last_id -> Int8,
        max_id -> Int8,
        rows_done -> Int8,
        rows_updated -> Int8,
        rows_total -> Int8,
        batches -> Int8,
        batch_size -> Int4,
        sleep_ms -> Int4,
        started_at -> Nullable<Timestamptz>,
        updated_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        error -> Nullable<Text>,
        replica_lag_bytes -> Int8,
        throttle_reason -> Nullable<Text>,
        batch_target_ms -> Int4,
        workers -> Int4,
        workers_wanted -> Int4,
        workers_auto -> Bool,
        workers_reason -> Nullable<Text>,
        workers_changed_at -> Nullable<Timestamptz>,
        workers_rule -> Nullable<Text>,
        quiet_p99_ms -> Nullable<Float8>,
        triggers -> Nullable<Text>,
    }
}

diesel::table! {
    zdm_backfill_ranges (range_no) {
        range_no -> Int4,
        start_id -> Int8,
        last_id -> Int8,
        end_id -> Int8,
        worker -> Nullable<Int4>,
        rows_done -> Int8,
        rows_updated -> Int8,
        batches -> Int8,
        batch_size -> Int4,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    zdm_backfill_worker_changes (id) {
        id -> Int8,
        at -> Timestamptz,
        workers -> Int4,
        previous -> Nullable<Int4>,
        reason -> Text,
    }
}
