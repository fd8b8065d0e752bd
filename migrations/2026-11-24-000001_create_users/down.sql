-- Undoes the baseline: only for development databases, never part of the phased change.
-- squawk-ignore-file ban-drop-table, require-lock-timeout
DROP TABLE users;
