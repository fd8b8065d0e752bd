-- A new table only: no other session can hold a lock on it.
-- squawk-ignore-file require-lock-timeout

-- Keys the server signs with, shared by every instance and kept across restarts, made here
-- once per database. `user_forms` binds the CSRF token of the user pages' forms to the
-- browser's `zdm_csrf` cookie: the token is an HMAC of the cookie under this key, so a
-- cookie of the client's own choosing, repeated in the form, is refused.
CREATE TABLE zdm_server_keys (
    name TEXT PRIMARY KEY,
    key BYTEA NOT NULL CHECK (octet_length(key) = 32)
);

-- 32 bytes from two version-4 UUIDs (244 bits of PostgreSQL's strong random source).
INSERT INTO zdm_server_keys (name, key)
VALUES ('user_forms', sha256(uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid())));
