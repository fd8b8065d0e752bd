//! Settings, read once from the environment (and `.env`) and passed down; nothing global, so
//! tests can run several apps against several databases in one process.

use std::path::PathBuf;

use crate::local_pg::{LocalPg, LocalPgError};
use crate::migration::backfill::AutoRule;
use crate::trusted_proxies::TrustedProxies;

/// The database the app uses when it starts its own private PostgreSQL.
pub const APP_DATABASE: &str = "zdm";

/// The most streaming replicas of the private PostgreSQL one set-up starts (`ZDM_REPLICAS`,
/// `zdm demo --replicas`).
pub const MAX_PRIVATE_REPLICAS: usize = 8;

#[derive(Debug, Clone)]
pub struct Config {
    /// `DATABASE_URL`: an existing server to use. Unset → the private cluster in `data_dir`.
    pub database_url: Option<String>,
    /// `DIRECT_DATABASE_URL`: a session to the server itself, for the work that needs one
    /// (migrations, the step runner, the backfill, verify). When set, `DATABASE_URL` is taken
    /// for a transaction-mode pooler, and nothing on it relies on a session (DESIGN §6).
    pub direct_database_url: Option<String>,
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
    /// `ZDM_BACKFILL_MAX_P99_RATIO` (unset: off; not with `ZDM_BACKFILL_MAX_P99_MS`): the same
    /// budget relative to the instances' own p99 when a backfill run starts (1.5: half as
    /// slow again).
    pub backfill_max_p99_ratio: Option<f64>,
    /// `ZDM_BACKFILL_AUTO_RULE` (`zone` or `aimd`; unset: zone): how auto workers move their
    /// count within the budget.
    pub backfill_auto_rule: AutoRule,
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
    /// `ZDM_LOCK_ATTEMPT_MS` (unset: as stored, 5 on a new database): how long each attempt
    /// of a step waits for its lock on users (its lock_timeout), a stall for the requests
    /// queued behind it. Written to the database at start, where the steps' SQL reads it.
    pub lock_attempt_ms: Option<i32>,
}

/// The database to use, as `Config::resolve_database` found or made it.
pub struct ResolvedDatabase {
    /// What requests use (a pooler when `direct_url` is set).
    pub url: String,
    /// `DIRECT_DATABASE_URL`, if set.
    pub direct_url: Option<String>,
    /// Streaming replicas of the private primary (`ZDM_REPLICAS`).
    pub replica_urls: Vec<String>,
    /// The private clusters in use, replicas before their primary, each saying whether this
    /// process started it (none with `DATABASE_URL`).
    pub private: Vec<LocalPg>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} must be {expected}, got {value:?}")]
    Invalid {
        name: &'static str,
        expected: &'static str,
        value: String,
    },
    #[error(
        "{name} is set, but faults are demo-only: `zdm demo --fault …` injects them into the \
         instances it starts, and no environment variable switches one on; unset {name}"
    )]
    FaultVariable { name: String },
}

/// What `ZDM_BACKFILL_AUTO_RULE` accepts, said where it is refused.
const AUTO_RULE_EXPECTED: &str = "\"zone\" (one worker at a time, a dead band, halving only over the budget) or \"aimd\" (one more while within the budget, half as many when over)";

/// The environment variable `name`, unless unset or blank.
fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The environment variable `name` through `parse`: `None` when unset, an error naming the
/// variable and what it must be (`expected`) when `parse` refuses its value.
fn parse_env<T>(
    name: &'static str,
    expected: &'static str,
    parse: impl FnOnce(&str) -> Option<T>,
) -> Result<Option<T>, ConfigError> {
    var(name)
        .map(|value| {
            parse(value.trim()).ok_or(ConfigError::Invalid {
                name,
                expected,
                value,
            })
        })
        .transpose()
}

/// A parser of a number within `range`.
fn number<T: std::str::FromStr + PartialOrd>(
    range: std::ops::RangeInclusive<T>,
) -> impl FnOnce(&str) -> Option<T> {
    move |value| value.parse::<T>().ok().filter(|n| range.contains(n))
}

impl ResolvedDatabase {
    /// Where the work that needs a session goes: `DIRECT_DATABASE_URL`, else `DATABASE_URL`.
    pub fn session_url(&self) -> &str {
        self.direct_url.as_deref().unwrap_or(&self.url)
    }
}

impl Config {
    /// Reads `.env` (if present) and then the process environment, which wins.
    pub fn from_env() -> Result<Self, ConfigError> {
        let _ = dotenvy::dotenv();
        Self::refuse_fault_variables()?;
        let secs = std::time::Duration::from_secs;
        Ok(Self {
            database_url: var("DATABASE_URL"),
            direct_database_url: match (var("DIRECT_DATABASE_URL"), var("DATABASE_URL")) {
                (Some(_), None) => {
                    return Err(ConfigError::Invalid {
                        name: "DIRECT_DATABASE_URL",
                        expected: "set only with DATABASE_URL (the pooler it bypasses)",
                        value: "set".to_owned(),
                    });
                }
                (direct, _) => direct,
            },
            bind: var("ZDM_BIND").unwrap_or_else(|| "127.0.0.1:8080".to_owned()),
            data_dir: PathBuf::from(var("ZDM_DATA_DIR").unwrap_or_else(|| ".zdm".to_owned())),
            pool_size: parse_env("ZDM_POOL_SIZE", "a number from 1 to 500", number(1..=500))?
                .unwrap_or(16),
            statement_timeout_ms: parse_env(
                "ZDM_STATEMENT_TIMEOUT_MS",
                "a number of milliseconds from 100 to 600000",
                number(100..=600_000),
            )?
            .unwrap_or(5000),
            admin_token: var("ADMIN_TOKEN"),
            phase_poll: std::time::Duration::from_millis(250),
            replica_urls: var("DATABASE_REPLICA_URLS")
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|u| !u.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            replica_max_lag_bytes: parse_env(
                "ZDM_REPLICA_MAX_LAG_BYTES",
                "a positive number of bytes",
                number(1..=i64::MAX),
            )?
            .unwrap_or(crate::replicas::DEFAULT_MAX_LAG_BYTES),
            backfill_max_p99_ms: Self::backfill_max_p99_ms()?,
            backfill_max_p99_ratio: Self::backfill_max_p99_ratio()?,
            backfill_auto_rule: parse_env("ZDM_BACKFILL_AUTO_RULE", AUTO_RULE_EXPECTED, |v| {
                v.parse().ok()
            })?
            .unwrap_or_default(),
            backfill_ride_out: parse_env(
                "ZDM_BACKFILL_RIDE_OUT_SECS",
                "a number of seconds from 0 to 86400",
                number(0..=86_400),
            )?
            .map_or(crate::migration::backfill::DEFAULT_RIDE_OUT, secs),
            private_replicas: parse_env(
                "ZDM_REPLICAS",
                "a number from 0 to 8",
                number(0..=MAX_PRIVATE_REPLICAS),
            )?
            .unwrap_or(0),
            read_from_replicas: var("ZDM_READ_FROM_REPLICAS").is_none_or(|v| v != "0"),
            trusted_proxies: parse_env(
                "ZDM_TRUSTED_PROXIES",
                "comma-separated CIDRs such as 10.0.0.0/8,192.0.2.7/32",
                |v| TrustedProxies::parse(v).ok(),
            )?
            .unwrap_or_default(),
            contract_quiet_secs: parse_env(
                "ZDM_CONTRACT_QUIET_SECS",
                "a number of seconds from 0 to 86400",
                number(0..=86_400),
            )?,
            lock_attempt_ms: parse_env(
                "ZDM_LOCK_ATTEMPT_MS",
                "a number of milliseconds from 1 to 10000",
                number(1..=10_000),
            )?,
        })
    }

    /// `ZDM_BACKFILL_MAX_P99_MS`.
    fn backfill_max_p99_ms() -> Result<Option<f64>, ConfigError> {
        parse_env(
            "ZDM_BACKFILL_MAX_P99_MS",
            "a positive number of milliseconds",
            |v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|ms| ms.is_finite() && *ms > 0.0)
            },
        )
    }

    /// `ZDM_BACKFILL_MAX_P99_RATIO`, refused beside `ZDM_BACKFILL_MAX_P99_MS`.
    fn backfill_max_p99_ratio() -> Result<Option<f64>, ConfigError> {
        parse_env(
            "ZDM_BACKFILL_MAX_P99_RATIO",
            "a ratio from 1 to 100 (1.5: the users' p99 half as slow again as before the backfill), without ZDM_BACKFILL_MAX_P99_MS",
            |v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|r| (1.0..=100.0).contains(r))
                    .filter(|_| var("ZDM_BACKFILL_MAX_P99_MS").is_none())
            },
        )
    }

    /// Refuses a fault variable (`ZDM_FAULT_*`, in the environment or `.env`): faults are
    /// switched on only by the demo, for the instances it starts, so a production process
    /// that inherited one is misconfigured, and saying so at start beats running without the
    /// fault someone asked for, or with it.
    fn refuse_fault_variables() -> Result<(), ConfigError> {
        match std::env::vars_os()
            .filter_map(|(name, _)| name.into_string().ok())
            .find(|name| name.starts_with(crate::faults::FAULT_ENV_PREFIX) && var(name).is_some())
        {
            Some(name) => Err(ConfigError::FaultVariable { name }),
            None => Ok(()),
        }
    }

    /// The limits of the web pool's connections.
    pub fn pool_limits(&self) -> crate::db::PoolLimits {
        crate::db::PoolLimits {
            statement_timeout: std::time::Duration::from_millis(self.statement_timeout_ms),
            through_pooler: self.direct_database_url.is_some(),
            ..crate::db::PoolLimits::with_size(self.pool_size)
        }
    }

    /// What a backfill this process runs waits for (`replica_urls`: the configured replicas and
    /// those the private set-up started) and how long it rides out a lost database.
    pub fn backfill_settings(
        &self,
        replica_urls: Vec<String>,
    ) -> crate::migration::control::BackfillSettings {
        crate::migration::control::BackfillSettings {
            replica_urls,
            max_lag_bytes: self.replica_max_lag_bytes,
            max_p99_ms: self.backfill_max_p99_ms,
            max_p99_ratio: self.backfill_max_p99_ratio,
            auto_rule: self.backfill_auto_rule,
            ride_out: crate::migration::backfill::RideOut::new(self.backfill_ride_out),
        }
    }

    /// Where `zdm demo` writes its reports.
    pub fn report_dir(&self) -> PathBuf {
        self.data_dir.join("reports")
    }

    /// The app database, with what the private set-up made: the URLs of its streaming
    /// replicas (`ZDM_REPLICAS`), and the private clusters in use (so the caller can stop
    /// those it started when it exits, or say that they keep running; replicas first).
    pub fn resolve_database(&self) -> Result<ResolvedDatabase, LocalPgError> {
        if let Some(url) = &self.database_url {
            return Ok(ResolvedDatabase {
                url: url.clone(),
                direct_url: self.direct_database_url.clone(),
                replica_urls: Vec::new(),
                private: Vec::new(),
            });
        }
        let pg = LocalPg::ensure_running(&self.data_dir)?;
        pg.create_database_if_missing(APP_DATABASE)?;
        let mut private = Vec::new();
        for index in 1..=self.private_replicas {
            private.push(pg.ensure_replica(index)?);
        }
        let replica_urls = private.iter().map(|r| r.url(APP_DATABASE)).collect();
        let url = pg.url(APP_DATABASE);
        private.push(pg);
        Ok(ResolvedDatabase {
            url,
            direct_url: None,
            replica_urls,
            private,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_out_of_range_names_its_variable_and_what_it_must_be() {
        assert_eq!(number(1..=500)("16"), Some(16_u32));
        assert_eq!(number(1..=500)("0"), None::<u32>);
        assert_eq!(number(1..=500)("many"), None::<u32>);
        // A variable no test sets: unset is None, not an error.
        let unset = parse_env("ZDM_TEST_UNSET_VARIABLE", "anything", number(0..=1_u8));
        assert!(matches!(unset, Ok(None)));
        let err = ConfigError::Invalid {
            name: "ZDM_POOL_SIZE",
            expected: "a number from 1 to 500",
            value: "0".to_owned(),
        };
        assert_eq!(
            err.to_string(),
            "ZDM_POOL_SIZE must be a number from 1 to 500, got \"0\""
        );
    }

    #[test]
    fn an_auto_rule_is_zone_or_aimd_and_a_bad_one_is_refused_by_name() {
        let parse = |v: &str| v.parse::<AutoRule>().ok();
        assert_eq!(parse("zone"), Some(AutoRule::Zone));
        assert_eq!(parse("aimd"), Some(AutoRule::Aimd));
        assert_eq!(parse("halving"), None);
        let err = ConfigError::Invalid {
            name: "ZDM_BACKFILL_AUTO_RULE",
            expected: AUTO_RULE_EXPECTED,
            value: "halving".to_owned(),
        };
        assert!(
            err.to_string()
                .starts_with("ZDM_BACKFILL_AUTO_RULE must be \"zone\" (one worker at a time"),
            "{err}"
        );
    }
}
