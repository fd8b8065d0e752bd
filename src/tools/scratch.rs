//! Scratch databases: a database of its own next to the app's, made for one run of a tool
//! (`zdm demo`, `zdm bench`) or one test, and dropped when the run ends, however it ends.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::db::{databases, with_database};

pub struct ScratchDatabase {
    server_url: String,
    pub name: String,
    /// The URL of the scratch database.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `<prefix>_<pid>_<n>` on the server `server_url` points to: `n` counts the
    /// scratch databases this process made, so two runs in one process (tests running in
    /// parallel threads) never share one, and the first to finish cannot drop the other's;
    /// the process id tells a leftover of a killed run from a database still in use.
    pub fn create(server_url: &str, prefix: &str) -> anyhow::Result<Self> {
        Self::create_from(server_url, prefix, None)
    }

    /// As `create`, as a copy of the database `template` when given.
    pub fn create_from(
        server_url: &str,
        prefix: &str,
        template: Option<&str>,
    ) -> anyhow::Result<Self> {
        static MADE: AtomicU32 = AtomicU32::new(0);
        let n = MADE.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}_{}_{n}", std::process::id());
        let mut admin = PgConnection::establish(server_url).with_context(|| {
            format!("connecting to the server to create the scratch database {name}")
        })?;
        // A leftover of a killed process that had the same id is no one's any more.
        databases::drop(&mut admin, &name)
            .and_then(|()| databases::create(&mut admin, &name, template))
            .with_context(|| format!("creating the scratch database {name}"))?;
        Ok(Self {
            url: with_database(server_url, &name),
            server_url: server_url.to_owned(),
            name,
        })
    }

    /// A scratch database with the infrastructure migrations applied and `rows` users seeded
    /// the way baseline writes them, analysed and ready for a measured run.
    pub fn seeded(
        server_url: &str,
        prefix: &str,
        rows: u64,
        rng_seed: u64,
    ) -> anyhow::Result<Self> {
        let scratch = Self::create(server_url, prefix)?;
        let name = &scratch.name;
        let mut conn = PgConnection::establish(&scratch.url)
            .with_context(|| format!("connecting to the scratch database {name}"))?;
        crate::migration::schema_migrations::run_infrastructure_migrations(&mut conn)
            .map_err(anyhow::Error::from_boxed)
            .with_context(|| format!("migrating the scratch database {name}"))?;
        crate::tools::seed::seed_users(
            &mut conn,
            crate::domain::Phase::Baseline,
            rows,
            rng_seed,
            |_| {},
        )
        .with_context(|| format!("seeding the scratch database {name}"))?;
        conn.batch_execute("VACUUM ANALYZE users")
            .with_context(|| format!("analysing the scratch database {name}"))?;
        Ok(scratch)
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        // Never panics: this also runs while a failed run or test unwinds.
        let dropped = PgConnection::establish(&self.server_url)
            .map_err(|e| e.to_string())
            .and_then(|mut conn| databases::drop(&mut conn, &self.name).map_err(|e| e.to_string()));
        if let Err(e) = dropped {
            log::warn!("could not drop the scratch database {}: {e}", self.name);
        }
    }
}
