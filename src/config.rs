//! Settings, read once from the environment (and `.env`) and passed down; nothing global, so
//! tests can run several apps against several databases in one process.

use std::path::PathBuf;

use crate::local_pg::{LocalPg, LocalPgError};
use crate::trusted_proxies::TrustedProxies;

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
    /// `ZDM_BACKFILL_MAX_P99_MS` (unset: off): the user requests' p99, as the instances
    /// report it, above which the backfill waits.
    pub backfill_max_p99_ms: Option<f64>,
    /// `ZDM_BACKFILL_RIDE_OUT_SECS` (default 60): how long a backfill that lost the database
    /// keeps reconnecting before it gives up.
    pub backfill_ride_out: std::time::Duration,
    /// `ZDM_REPLICAS`: streaming replicas of the private PostgreSQL to start (with
    /// `DATABASE_URL` unset).
    pub private_replicas: usize,
    /// `ZDM_READ_FROM_REPLICAS` (default on when replicas are configured): user reads may go
    /// to the replicas.
    pub read_from_replicas: bool,
    /// `ZDM_TRUSTED_PROXIES`: CIDRs of the reverse proxies whose `X-Forwarded-For` and
    /// `X-Forwarded-Proto` are believed; unset, none are.
    pub trusted_proxies: TrustedProxies,
    /// `ZDM_CONTRACT_QUIET_SECS` (unset: as stored, 300 on a new database): how long no client
    /// may have used `users.full_name` before the contract. Written to the database at start,
    /// where the contract's gate (SQL) reads it.
    pub contract_quiet_secs: Option<i32>,
    /// `ZDM_FAULT_*`: faults to inject (`zdm demo --fault`); none in normal use.
    pub faults: crate::faults::Faults,
}

/// The database to use, as `Config::resolve_database` found or made it.
pub struct ResolvedDatabase {
    pub url: String,
    /// Streaming replicas of the private primary (`ZDM_REPLICAS`).
    pub replica_urls: Vec<String>,
    /// Clusters this process started, replicas before their primary.
    pub started: Vec<LocalPg>,
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
        let backfill_max_p99_ms = match var("ZDM_BACKFILL_MAX_P99_MS") {
            None => None,
            Some(v) => Some(
                v.parse::<f64>()
                    .ok()
                    .filter(|ms| ms.is_finite() && *ms > 0.0)
                    .ok_or(ConfigError::Invalid {
                        name: "ZDM_BACKFILL_MAX_P99_MS",
                        expected: "a positive number of milliseconds",
                        value: v,
                    })?,
            ),
        };
        let contract_quiet_secs = match var("ZDM_CONTRACT_QUIET_SECS") {
            None => None,
            Some(v) => Some(
                v.parse::<i32>()
                    .ok()
                    .filter(|n| (0..=86_400).contains(n))
                    .ok_or(ConfigError::Invalid {
                        name: "ZDM_CONTRACT_QUIET_SECS",
                        expected: "a number of seconds from 0 to 86400",
                        value: v,
                    })?,
            ),
        };
        let trusted_proxies = match var("ZDM_TRUSTED_PROXIES") {
            None => TrustedProxies::default(),
            Some(v) => TrustedProxies::parse(&v).map_err(|_| ConfigError::Invalid {
                name: "ZDM_TRUSTED_PROXIES",
                expected: "comma-separated CIDRs such as 10.0.0.0/8,192.0.2.7/32",
                value: v,
            })?,
        };
        let backfill_ride_out = match var("ZDM_BACKFILL_RIDE_OUT_SECS") {
            None => crate::migration::backfill::DEFAULT_RIDE_OUT,
            Some(v) => std::time::Duration::from_secs(
                v.parse::<u64>().ok().filter(|secs| *secs <= 86_400).ok_or(
                    ConfigError::Invalid {
                        name: "ZDM_BACKFILL_RIDE_OUT_SECS",
                        expected: "a number of seconds from 0 to 86400",
                        value: v,
                    },
                )?,
            ),
        };
        Ok(Self {
            contract_quiet_secs,
            trusted_proxies,
            backfill_max_p99_ms,
            backfill_ride_out,
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
            private_replicas: match var("ZDM_REPLICAS") {
                None => 0,
                Some(v) => {
                    v.parse::<usize>()
                        .ok()
                        .filter(|n| *n <= 8)
                        .ok_or(ConfigError::Invalid {
                            name: "ZDM_REPLICAS",
                            expected: "a number from 0 to 8",
                            value: v,
                        })?
                }
            },
            statement_timeout_ms,
            database_url: var("DATABASE_URL"),
            bind: var("ZDM_BIND").unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
            data_dir: var("ZDM_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(".zdm")),
            pool_size,
            admin_token: var("ADMIN_TOKEN"),
            phase_poll: std::time::Duration::from_millis(250),
            faults: crate::faults::Faults::new(
                var(crate::faults::LAGGING_V1_WRITES_ENV).is_some_and(|v| v == "1"),
                match var(crate::faults::LOSE_WRITES_ENV) {
                    None => None,
                    Some(v) => Some(v.parse::<u64>().ok().filter(|n| *n > 0).ok_or(
                        ConfigError::Invalid {
                            name: crate::faults::LOSE_WRITES_ENV,
                            expected: "a positive number (lose every Nth update)",
                            value: v,
                        },
                    )?),
                },
            ),
        })
    }

    /// The limits of the web pool's connections.
    pub fn pool_limits(&self) -> crate::db::PoolLimits {
        crate::db::PoolLimits {
            statement_timeout: std::time::Duration::from_millis(self.statement_timeout_ms),
            ..crate::db::PoolLimits::with_size(self.pool_size)
        }
    }

    /// Where `zdm demo` writes its reports.
    pub fn report_dir(&self) -> PathBuf {
        self.data_dir.join("reports")
    }

    /// The URL of the app database: `DATABASE_URL` as given, or the private cluster, started
    /// and with its `zdm` database created when needed.
    pub fn resolve_database_url(&self) -> Result<String, LocalPgError> {
        Ok(self.resolve_database()?.url)
    }

    /// The app database, with what the private set-up made: the URLs of its streaming
    /// replicas (`ZDM_REPLICAS`), and the clusters this call started (so the caller can stop
    /// them again when it exits; replicas first).
    pub fn resolve_database(&self) -> Result<ResolvedDatabase, LocalPgError> {
        if let Some(url) = &self.database_url {
            return Ok(ResolvedDatabase {
                url: url.clone(),
                replica_urls: Vec::new(),
                started: Vec::new(),
            });
        }
        let pg = LocalPg::ensure_running(&self.data_dir)?;
        pg.create_database_if_missing(APP_DATABASE)?;
        let mut started = Vec::new();
        let mut replica_urls = Vec::new();
        for index in 1..=self.private_replicas {
            let replica = pg.ensure_replica(index)?;
            replica_urls.push(replica.url(APP_DATABASE));
            if replica.started_here {
                started.push(replica);
            }
        }
        let url = pg.url(APP_DATABASE);
        if pg.started_here {
            started.push(pg);
        }
        Ok(ResolvedDatabase {
            url,
            replica_urls,
            started,
        })
    }
}
