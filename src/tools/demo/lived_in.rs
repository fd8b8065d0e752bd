//! A chaos run's database as production has it. Its instances and backfill use the roles the
//! README's "Grants" give zdm: one that owns `users` and the database (the steps, the backfill,
//! the migrations at start) and, behind the pooler, one with only the grants the requests
//! need; the run's own PostgreSQL lets them log in without a password, and the run's driver,
//! audit and faults keep the superuser. Other clients' objects live on `users` too: a report's
//! view and a trigger recording sign-ups, neither using a name column.

use anyhow::{Context, Result};
use diesel::connection::SimpleConnection;

use super::connect;
use crate::db::databases::quote_ident;
use crate::db::with_database;

/// What the README grants and sets the role of `DATABASE_URL` behind a pooler, and nothing
/// more: DML on the tables, the sequences, the statistics its heartbeats sample, and the
/// timeouts a pooled session cannot set for itself. (The README's default privileges, for
/// tables zdm makes later, are left out: the steps make none.)
pub const POOLED_ROLE_GRANTS: &str = "
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
    GRANT pg_read_all_stats TO {role};
    ALTER ROLE {role} SET statement_timeout = '5s';
    ALTER ROLE {role} SET idle_in_transaction_session_timeout = '10s';";

/// What makes a role zdm's own, as the README has it: it owns the database (so it may create
/// in its schema) and `users`, and may use zdm's tables (made by the superuser, as the scratch
/// database was seeded). The README also grants it `pg_read_all_stats` (`RunRoles` does).
pub const OWNER_ROLE_GRANTS: &str = "
    GRANT ALL ON ALL TABLES IN SCHEMA public TO {role};
    GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role};
    ALTER TABLE users OWNER TO {role};
    DO $$ BEGIN
        EXECUTE format('ALTER DATABASE %I OWNER TO {role}', current_database());
    END $$;";

/// Others' objects on `users`: a view of the columns zdm does not change, and a trigger that
/// records each sign-up in a table of its own (it names no name column, so neither the drop
/// nor the backfill waits for it). Made before the grants, which then cover its table.
const OTHERS_OBJECTS: &str = "
    CREATE VIEW users_contacts AS SELECT id, email FROM users;
    CREATE TABLE users_signups (user_id bigint NOT NULL, email text NOT NULL,
                                at timestamptz NOT NULL DEFAULT now());
    CREATE FUNCTION users_signup() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO users_signups (user_id, email) VALUES (NEW.id, NEW.email);
        RETURN NEW;
    END $$;
    CREATE TRIGGER users_signup AFTER INSERT ON users
        FOR EACH ROW EXECUTE FUNCTION users_signup();";

/// The two roles of a scratch database, dropped (with what they own) when this goes away.
pub struct RunRoles {
    /// The scratch database's URL, as the superuser.
    url: String,
    /// Owns `users`: the steps, the backfill and the migrations run as it.
    pub owner: String,
    /// The requests' role behind the pooler.
    pub requests: String,
}

impl RunRoles {
    /// Makes others' objects, then `<database>_owner` and `<database>_web`, for the scratch
    /// database `database` at `url` (as the superuser).
    pub fn create(url: &str, database: &str) -> Result<Self> {
        let roles = RunRoles {
            url: url.to_owned(),
            owner: format!("{database}_owner"),
            requests: format!("{database}_web"),
        };
        let mut conn = connect(url)?;
        conn.batch_execute(OTHERS_OBJECTS)
            .context("making others' view and trigger on users")?;
        let owner_grants = format!("{OWNER_ROLE_GRANTS} GRANT pg_read_all_stats TO {{role}};");
        for (role, grants) in [
            (&roles.owner, owner_grants.as_str()),
            (&roles.requests, POOLED_ROLE_GRANTS),
        ] {
            let quoted = quote_ident(role);
            conn.batch_execute(&format!(
                "CREATE ROLE {quoted} LOGIN; {}",
                grants.replace("{role}", &quoted)
            ))
            .with_context(|| format!("creating the role {role}"))?;
        }
        Ok(roles)
    }
}

impl Drop for RunRoles {
    /// What each owns in the scratch database goes back to the superuser (the database too),
    /// then it is dropped. Never panics, and waits at most a few seconds for a lock: this also
    /// runs when a run failed, with a fault perhaps still holding `users`.
    fn drop(&mut self) {
        for role in [&self.owner, &self.requests] {
            let quoted = quote_ident(role);
            let given_back = connect(&self.url).and_then(|mut conn| {
                conn.batch_execute(&format!(
                    "SET lock_timeout = '5s'; \
                     REASSIGN OWNED BY {quoted} TO CURRENT_USER; DROP OWNED BY {quoted};"
                ))
                .context("giving back what it owns")
            });
            let dropped = connect(&with_database(&self.url, "postgres")).and_then(|mut conn| {
                conn.batch_execute(&format!("DROP ROLE IF EXISTS {quoted}"))
                    .context("dropping it")
            });
            if let (Err(e), _) | (_, Err(e)) = (given_back, dropped) {
                log::warn!("the run's role {role}: {e:#}");
            }
        }
    }
}

/// `url` with its `user` parameter set to `role`.
pub fn as_role(url: &str, role: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("user="))
        .map(str::to_owned)
        .collect();
    params.push(format!("user={role}"));
    format!("{base}?{}", params.join("&"))
}
