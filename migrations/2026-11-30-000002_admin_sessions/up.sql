-- New tables only: no other session can hold a lock on them, nor write to them while their
-- indexes build.
-- squawk-ignore-file require-lock-timeout, require-concurrent-index-creation

-- Logged-in admin page sessions, shared by every instance and kept across restarts. The
-- session id itself is never stored, only its SHA-256: a copy of this table lets no one in.
CREATE TABLE zdm_admin_sessions (
    id_hash BYTEA PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    -- The token every form of the session must carry back.
    csrf_token TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The absolute end, whatever the activity.
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX zdm_admin_sessions_expires_at ON zdm_admin_sessions (expires_at);

-- Failed admin log-ins (the log-in form and the Bearer API alike), for the fleet-wide limit:
-- one row per failure, by client address, kept for the limit's window.
CREATE TABLE zdm_admin_login_failures (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    client TEXT NOT NULL,
    at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX zdm_admin_login_failures_at ON zdm_admin_login_failures (at);
CREATE INDEX zdm_admin_login_failures_client_at ON zdm_admin_login_failures (client, at);
