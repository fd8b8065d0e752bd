-- Removes the tables the up migration created: every admin is logged out.
-- squawk-ignore-file ban-drop-table, require-lock-timeout
DROP TABLE zdm_admin_login_failures;
DROP TABLE zdm_admin_sessions;
