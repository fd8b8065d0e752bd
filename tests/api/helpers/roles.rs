//! The roles a test's database is used as in production: an ordinary owner, a reader, the
//! pooled role with only the README's grants, and a PgBouncer in front of them.

use std::sync::atomic::Ordering;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use zdm::db::databases::quote_ident;
use zdm::tools::demo::lived_in::{OWNER_ROLE_GRANTS, POOLED_ROLE_GRANTS};

use super::{COUNTER, TestDb, server};

/// An ordinary role of a test's own (no superuser, no BYPASSRLS, not pg_read_all_stats) that
/// owns the database and users and may use zdm's tables, as an application role does in
/// production. Sessions
/// take it with `-c role=…`, so the test server's own user needs no password for it. Dropped
/// with what it owns when this value goes away.
pub struct AppRole {
    pub name: String,
    db_url: String,
}

impl AppRole {
    pub fn create(db: &TestDb, suffix: &str) -> Self {
        Self::with_grants(db, suffix, OWNER_ROLE_GRANTS)
    }

    /// A role that may only read users: a reporting client's.
    pub fn reader(db: &TestDb, suffix: &str) -> Self {
        Self::with_grants(db, suffix, "GRANT SELECT ON users TO {role};")
    }

    /// The role of the requests behind a pooler, with only the grants the README gives it:
    /// DML on the tables, the sequences, and the statistics its heartbeats sample. It logs in
    /// (through the pooler) as itself.
    pub fn pooled(db: &TestDb) -> Self {
        let role = Self::with_grants(db, "web", POOLED_ROLE_GRANTS);
        db.conn()
            .batch_execute(&format!("ALTER ROLE {} LOGIN", quote_ident(&role.name)))
            .expect("letting the pooled role log in");
        role
    }

    fn with_grants(db: &TestDb, suffix: &str, grants: &str) -> Self {
        let name = format!("{}_{suffix}", db.name);
        let role = quote_ident(&name);
        db.conn()
            .batch_execute(&format!(
                "CREATE ROLE {role} NOLOGIN; {}",
                grants.replace("{role}", &role)
            ))
            .expect("creating a role");
        AppRole {
            name,
            db_url: db.url.clone(),
        }
    }

    /// A session of the test database running as this role.
    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url(&self.db_url)).expect("connecting as the role")
    }

    /// `url` with its sessions running as this role.
    pub fn url(&self, url: &str) -> String {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-c%20role%3D{}", self.name)
    }
}

impl Drop for AppRole {
    fn drop(&mut self) {
        // Never panic here: this also runs while a failed test unwinds.
        let dropped = PgConnection::establish(&self.db_url)
            .map_err(|e| e.to_string())
            .and_then(|mut conn| {
                conn.batch_execute(&format!(
                    "REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}; DROP ROLE {role};",
                    role = quote_ident(&self.name)
                ))
                .map_err(|e| e.to_string())
            });
        if let Err(e) = dropped {
            eprintln!("could not drop role {}: {e}", self.name);
        }
    }
}

/// A PgBouncer of a test's own in transaction mode in front of the test server, with
/// `server_connections` per database and user (fewer than the instances' pools together, so
/// that server connections are certainly shared between clients), letting in the server's
/// user and `roles`.
pub fn pgbouncer(server_connections: u32, roles: &[&str]) -> zdm::pgbouncer::PgBouncer {
    let (upstream, user) =
        zdm::pgbouncer::Upstream::from_url(&server().base_url, server_connections)
            .expect("the pooler tests need a server named by host and port");
    let dir = std::env::temp_dir().join(format!(
        "zdm-pgb-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let mut users = vec![user.as_str()];
    users.extend_from_slice(roles);
    zdm::pgbouncer::PgBouncer::start(&dir, &upstream, &users).expect("starting pgbouncer")
}
