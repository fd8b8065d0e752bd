//! Settings, read once from the environment (and `.env`) and passed down; nothing global, so
//! tests can run several apps against several databases in one process.

use std::path::PathBuf;

use crate::local_pg::{LocalPg, LocalPgError};

/// The database the app uses when it starts its own private PostgreSQL.
pub const APP_DATABASE: &str = "zdm";

#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: an existing server to use. Unset → the private cluster in `data_dir`.
    pub database_url: Option<String>,
    /// `ZDM_BIND`: address the HTTP server listens on.
    pub bind: String,
    /// `ZDM_DATA_DIR`: where the private cluster lives (git-ignored `.zdm` by default).
    pub data_dir: PathBuf,
    /// `ZDM_POOL_SIZE`: connections in the web pool.
    pub pool_size: u32,
    /// `ZDM_STATEMENT_TIMEOUT_MS`: the longest a request's query may run.
    pub statement_timeout_ms: u64,
    /// `ADMIN_TOKEN`: the admin API's Bearer token. Unset → one is generated at start.
    pub admin_token: Option<String>,
    /// How often an instance checks the stored phase.
    pub phase_poll: std::time::Duration,
    /// `DATABASE_REPLICA_URLS`: streaming replicas (comma-separated) whose replay lag throttles
    /// the backfill.
    pub replica_urls: Vec<String>,
    /// `ZDM_REPLICA_MAX_LAG_BYTES`: the replay lag above which the backfill waits.
    pub replica_max_lag_bytes: i64,
    /// `ZDM_READ_FROM_REPLICAS` (default on when replicas are configured): user reads may go
    /// to the replicas.
    pub read_from_replicas: bool,
    /// See `AppState::fault_lagging_v1_writes`.
    pub fault_lagging_v1_writes: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} must be {expected}, got {value:?}")]
    Invalid {
        name: &'static str,
        expected: &'static str,
        value: String,
    },
}

impl Config {
    /// Reads `.env` (if present) and then the process environment, which wins.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let pool_size = match var("ZDM_POOL_SIZE") {
            None => 16,
            Some(v) => v
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or(ConfigError::Invalid {
                    name: "ZDM_POOL_SIZE",
                    expected: "a number from 1 to 500",
                    value: v,
                })?,
        };
        let statement_timeout_ms = match var("ZDM_STATEMENT_TIMEOUT_MS") {
            None => 5000,
            Some(v) => v
                .parse::<u64>()
                .ok()
                .filter(|n| (100..=600_000).contains(n))
                .ok_or(ConfigError::Invalid {
                    name: "ZDM_STATEMENT_TIMEOUT_MS",
                    expected: "a number of milliseconds from 100 to 600000",
                    value: v,
                })?,
        };
        let replica_max_lag_bytes = match var("ZDM_REPLICA_MAX_LAG_BYTES") {
            None => 16 * 1024 * 1024,
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(ConfigError::Invalid {
                    name: "ZDM_REPLICA_MAX_LAG_BYTES",
                    expected: "a positive number of bytes",
                    value: v,
                })?,
        };
        Ok(Self {
            replica_urls: var("DATABASE_REPLICA_URLS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            replica_max_lag_bytes,
            read_from_replicas: var("ZDM_READ_FROM_REPLICAS").is_none_or(|v| v != "0"),
            statement_timeout_ms,
            database_url: var("DATABASE_URL"),
            bind: var("ZDM_BIND").unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
            data_dir: var("ZDM_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".zdm")),
            pool_size,
            admin_token: var("ADMIN_TOKEN"),
            phase_poll: std::time::Duration::from_millis(250),
            fault_lagging_v1_writes: var(crate::demo::FAULT_LAGGING_V1_WRITES)
                .is_some_and(|v| v == "1"),
        })
    }

    /// The limits of the web pool's connections.
    pub fn pool_limits(&self) -> crate::db::PoolLimits {
        crate::db::PoolLimits {
            statement_timeout: std::time::Duration::from_millis(self.statement_timeout_ms),
            ..crate::db::PoolLimits::with_size(self.pool_size)
        }
    }

    /// The backfill's replica-lag throttle for the configured replicas (none: no throttle).
    pub fn replica_throttle(&self) -> crate::migration::backfill::ReplicaThrottle {
        crate::migration::backfill::ReplicaThrottle::new(
            self.replica_urls.clone(),
            self.replica_max_lag_bytes,
        )
    }

    /// Where `zdm demo` writes its reports.
    pub fn report_dir(&self) -> PathBuf {
        self.data_dir.join("reports")
    }

    /// The URL of the app database: `DATABASE_URL` as given, or the private cluster, started
    /// and with its `zdm` database created when needed.
    pub fn resolve_database_url(&self) -> Result<String, LocalPgError> {
        Ok(self.resolve_database()?.0)
    }

    /// As `resolve_database_url`, with the private cluster when this call started it (so the
    /// caller can stop it again when it exits).
    pub fn resolve_database(&self) -> Result<(String, Option<LocalPg>), LocalPgError> {
        if let Some(url) = &self.database_url {
            return Ok((url.clone(), None));
        }
        let pg = LocalPg::ensure_running(&self.data_dir)?;
        pg.create_database_if_missing(APP_DATABASE)?;
        let url = pg.url(APP_DATABASE);
        Ok((url, pg.started_here.then_some(pg)))
    }
}
