//! Building and running the HTTP server. The caller binds the listener, so tests can bind
//! port 0 and run the real server.

use std::net::TcpListener;

use actix_web::body::MessageBody;
use actix_web::dev::Server;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::{DefaultHeaders, Next, from_fn};
use actix_web::{App, HttpServer, web};

use crate::app_state::AppState;
use crate::config::Config;
use crate::db::reads::UserReads;
use crate::db::{self, DbPool};
use crate::local_pg::LocalPg;
use crate::migration::backfill;
use crate::migration::control::BackfillSettings;
use crate::migration::follower::PhaseFollower;
use crate::migration::schema_migrations;
use crate::routes;

/// What start-up and the commands fail with: any error, reported by the caller.
pub use crate::error::BoxError as StartupError;

/// The log target of the one line per request.
const ACCESS_LOG: &str = "zdm::access";

/// The server on an already bound listener.
pub fn run(listener: TcpListener, state: AppState) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(routes::fence))
            .wrap(from_fn(routes::remember_write_position))
            .wrap(from_fn(observe))
            .wrap(security_headers())
            .app_data(state.clone())
            .configure(routes::configure)
    })
    .listen(listener)?
    .run();
    Ok(server)
}

/// Gives every request an id (the caller's `X-Request-Id` when it is a sane one, else a new
/// one), returns it in the answer for the log line and the client, counts the request in the
/// metrics by its route pattern (never the raw path, which would explode the label set), and
/// logs it at info level (`zdm::access`), building the line only when that level is on.
/// The body is read first (`routes::body`), and the time measured is the app's alone, from a
/// complete request to its answer.
async fn observe(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            std::iter::repeat_with(fastrand::alphanumeric)
                .take(16)
                .collect()
        });
    // Both labels come from closed sets: the app's own route patterns, and the standard
    // methods (`Metrics::observe_request` turns any other into `OTHER`).
    let route = req
        .match_pattern()
        .unwrap_or_else(|| crate::metrics::UNMATCHED_ROUTE.to_owned());
    let method = crate::metrics::method_label(req.method().as_str());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let access = log::log_enabled!(target: ACCESS_LOG, log::Level::Info).then(|| {
        format!(
            "{} \"{} {}\"",
            req.peer_addr()
                .map_or("-".to_owned(), |a| a.ip().to_string()),
            req.method(),
            req.uri()
        )
    });
    let body = routes::body::read_whole(&mut req).await;
    let started = std::time::Instant::now();
    let handled = body.is_ok();
    let mut response = match body {
        Ok(()) => next.call(req).await?.map_into_left_body(),
        Err(refusal) => req.into_response(refusal).map_into_right_body(),
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static("x-request-id"), value);
    }
    let elapsed = started.elapsed();
    match metrics {
        Some(metrics) if handled => metrics.observe_request(
            &route,
            method,
            response.status().as_u16(),
            elapsed.as_secs_f64(),
        ),
        Some(metrics) => metrics.count_request(&route, method, response.status().as_u16()),
        None => {}
    }
    if let Some(access) = access {
        log::info!(
            target: ACCESS_LOG,
            "{access} {} {:.3}ms id={id}",
            response.status().as_u16(),
            elapsed.as_secs_f64() * 1000.0
        );
    }
    Ok(response)
}

/// Headers on every answer: no inline script, no framing, no MIME sniffing.
fn security_headers() -> DefaultHeaders {
    DefaultHeaders::new()
        .add((
            "Content-Security-Policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
        ))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("Referrer-Policy", "same-origin"))
}

/// A migrated database.
pub struct Database {
    /// What requests use: `DATABASE_URL` (a pooler when `DIRECT_DATABASE_URL` is set).
    pub url: String,
    /// Where the work that needs a session goes (see `ResolvedDatabase::session_url`).
    pub session_url: String,
    /// Streaming replicas the private set-up started (`ZDM_REPLICAS`).
    pub replica_urls: Vec<String>,
    /// The private clusters in use, replicas first (see `ResolvedDatabase::private`).
    pub private: Vec<LocalPg>,
}

impl Database {
    /// The replicas the configuration names and those the private set-up started.
    pub fn all_replica_urls(&self, config: &Config) -> Vec<String> {
        config
            .replica_urls
            .iter()
            .chain(&self.replica_urls)
            .cloned()
            .collect()
    }
}

/// How an instance's `AppState` is made, by the server and by the tests alike (so the tests
/// run the production wiring, and a new field is one edit here): what every instance must
/// have, and the rest with the defaults of a plain instance, changed by the setters. The
/// server applies its configuration with `configured`; the tests set what they need with
/// the setters instead, so they skip what only the environment gives (the trusted proxies,
/// the replicas, the backfill's limits and ride-out, the report folder) unless they set it.
pub struct AppStateBuilder {
    database_url: String,
    session_url: Option<String>,
    pool: DbPool,
    phase: crate::migration::follower::AppliedPhase,
    instance_id: String,
    admin_token: String,
    trusted_proxies: crate::trusted_proxies::TrustedProxies,
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
    report_dir: std::path::PathBuf,
    backfill: BackfillSettings,
    read_replicas: crate::replicas::ReadReplicas,
    user_reads_limits: crate::db::PoolLimits,
    faults: crate::faults::Faults,
}

impl AppState {
    pub fn builder(
        database_url: &str,
        pool: DbPool,
        phase: crate::migration::follower::AppliedPhase,
        instance_id: &str,
    ) -> AppStateBuilder {
        AppStateBuilder {
            database_url: database_url.to_owned(),
            session_url: None,
            pool,
            phase,
            instance_id: instance_id.to_owned(),
            admin_token: String::new(),
            trusted_proxies: Default::default(),
            metrics: None,
            report_dir: std::path::PathBuf::from(".zdm/reports"),
            backfill: BackfillSettings {
                max_lag_bytes: crate::replicas::DEFAULT_MAX_LAG_BYTES,
                ..Default::default()
            },
            read_replicas: Default::default(),
            user_reads_limits: crate::db::PoolLimits::with_size(1),
            faults: Default::default(),
        }
    }
}

impl AppStateBuilder {
    /// Everything `zdm serve` takes from its configuration; `replica_urls` are all the
    /// replicas (configured and started), which the backfill waits for and, unless
    /// `ZDM_READ_FROM_REPLICAS=0`, the user reads may go to.
    pub fn configured(mut self, config: &Config, replica_urls: Vec<String>) -> Self {
        self.trusted_proxies = config.trusted_proxies.clone();
        self.report_dir = config.report_dir();
        self.backfill = config.backfill_settings(replica_urls.clone());
        if config.read_from_replicas {
            self.read_replicas =
                crate::replicas::ReadReplicas::start(&replica_urls, config.pool_limits());
        }
        self.user_reads_limits = config.pool_limits();
        self
    }

    /// Where the work that needs a session goes (`DIRECT_DATABASE_URL`), when the pool's URL
    /// is a transaction-mode pooler; unset, the pool's URL serves both.
    pub fn session_url(mut self, url: impl Into<String>) -> Self {
        self.session_url = Some(url.into());
        self
    }

    /// The Bearer token of the admin API and the password of the pages (empty: none opens).
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = token.into();
        self
    }

    /// The metrics this instance counts into (the phase follower reports from the same);
    /// fresh ones unless given.
    pub fn metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub fn report_dir(mut self, dir: std::path::PathBuf) -> Self {
        self.report_dir = dir;
        self
    }

    /// The replicas whose replay lag the backfills this instance runs wait for, and the limit.
    pub fn throttle_replicas(mut self, urls: Vec<String>, max_lag_bytes: i64) -> Self {
        self.backfill.replica_urls = urls;
        self.backfill.max_lag_bytes = max_lag_bytes;
        self
    }

    /// The replicas user reads may go to.
    pub fn read_replicas(mut self, replicas: crate::replicas::ReadReplicas) -> Self {
        self.read_replicas = replicas;
        self
    }

    /// Faults to inject (`zdm serve --inject-fault`, which only the demo passes).
    pub fn faults(mut self, faults: crate::faults::Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The limits of the coalesced point reads' connection.
    pub fn user_reads_limits(mut self, limits: crate::db::PoolLimits) -> Self {
        self.user_reads_limits = limits;
        self
    }

    /// The state, with the coalesced point reads started.
    pub fn build(self) -> Result<AppState, StartupError> {
        let metrics = match self.metrics {
            Some(metrics) => metrics,
            None => std::sync::Arc::new(crate::metrics::Metrics::new()?),
        };
        Ok(AppState {
            user_reads: UserReads::start(&self.database_url, self.user_reads_limits)?,
            pool: self.pool,
            connections: crate::db::Connections::new(
                &self.database_url,
                self.session_url.as_deref(),
            ),
            session_url: self.session_url.unwrap_or(self.database_url),
            phase: self.phase,
            instance_id: self.instance_id,
            admin_token: self.admin_token,
            trusted_proxies: self.trusted_proxies,
            backfill_thread: Default::default(),
            metrics,
            report_dir: self.report_dir,
            backfill: self.backfill,
            read_replicas: self.read_replicas,
            faults: self.faults,
            failed_logins: Default::default(),
            user_form_key: Default::default(),
        })
    }
}

/// Connects (starting the private PostgreSQL when `DATABASE_URL` is unset) and applies the
/// infrastructure migrations; phase migrations are left to the migration runner.
pub fn prepare_database(config: &Config) -> Result<Database, StartupError> {
    let resolved = config.resolve_database()?;
    let session_url = resolved.session_url().to_owned();
    // Migrations need a session (diesel's bookkeeping, DDL, advisory locks).
    let mut conn = <diesel::PgConnection as diesel::Connection>::establish(&session_url)?;
    for name in
        schema_migrations::run_infrastructure_migrations_giving_way(&mut conn, &session_url)?
    {
        log::info!("applied migration {name}");
    }
    if let Some(secs) = config.contract_quiet_secs {
        crate::migration::state::set_contract_quiet_secs(&mut conn, secs)?;
    }
    if let Some(ms) = config.lock_attempt_ms {
        crate::migration::state::set_lock_attempt_ms(&mut conn, ms)?;
    }
    Ok(Database {
        url: resolved.url,
        session_url,
        replica_urls: resolved.replica_urls,
        private: resolved.private,
    })
}

/// Says, on stderr, that the private PostgreSQL servers of `clusters` keep running after this
/// process ends (`how` they came to run) and how to stop them: nothing else would tell.
pub fn say_left_running(clusters: &[LocalPg], how: &str) {
    for pg in clusters {
        eprintln!(
            "note: the private PostgreSQL in {} {how} and keeps running; `zdm db stop` stops it",
            pg.base_dir.display()
        );
    }
}

/// A configured admin token shorter than this draws a warning at start: 22 random base64
/// characters carry about 128 bits.
const MIN_ADMIN_TOKEN_CHARS: usize = 22;

/// A random admin token (256 bits from the OS CSPRNG), for when none is configured.
pub fn generate_token() -> String {
    crate::secrets::new_secret().expect("the operating system gives no random bytes")
}

/// `zdm serve`: runs until SIGINT/SIGTERM, with `faults` injected (none but in the demo's
/// instances).
pub async fn serve(config: Config, faults: crate::faults::Faults) -> Result<(), StartupError> {
    let database = prepare_database(&config)?;
    let pool = db::build_pool(&database.url, config.pool_limits())?;
    let replica_urls = database.all_replica_urls(&config);
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new()?);
    let follower = PhaseFollower::start_reporting(
        pool.clone(),
        config.phase_poll,
        metrics.latency_reporter(),
    )?;
    if let Some(token) = &config.admin_token
        && token.chars().count() < MIN_ADMIN_TOKEN_CHARS
    {
        log::warn!(
            "ADMIN_TOKEN is shorter than {MIN_ADMIN_TOKEN_CHARS} characters: the limit on failed \
             log-ins never refuses the right token, so it cannot stop a patient guesser; use a \
             long random token (leave ADMIN_TOKEN unset once to have one generated)"
        );
    }
    let admin_token = config.admin_token.clone().unwrap_or_else(|| {
        let token = generate_token();
        println!("ADMIN_TOKEN was not set; this run's admin token is: {token}");
        token
    });
    if config.direct_database_url.is_some() {
        warn_without_statement_timeout(&pool);
    }
    let state = AppState::builder(
        &database.url,
        pool,
        follower.applied(),
        &follower.instance_id,
    )
    .session_url(database.session_url.clone())
    .configured(&config, replica_urls)
    .admin_token(admin_token)
    .metrics(metrics)
    .faults(faults)
    .build()?;
    state.faults.warn_if_on();
    let listener = TcpListener::bind(&config.bind)
        .map_err(|e| format!("cannot listen on {} (ZDM_BIND): {e}", config.bind))?;
    log::info!("zdm is listening on http://{}", listener.local_addr()?);
    // SIGTERM or SIGINT: the server stops taking connections and lets requests in flight
    // finish (actix-web's graceful shutdown), then this process winds down what it runs.
    run(listener, state.clone())?.await?;
    stop_backfill(&state);
    state.read_replicas.stop();
    drop(follower);
    let mut left_running = Vec::new();
    for pg in database.private {
        if !pg.started_here {
            left_running.push(pg);
            continue;
        }
        log::info!(
            "stopping the private PostgreSQL this process started ({})",
            pg.base_dir.display()
        );
        pg.stop()?;
    }
    say_left_running(&left_running, "was running before this process started");
    Ok(())
}

/// Behind a transaction-mode pooler the web pool sets no session settings (they would change
/// the server session of whichever client gets it next): its requests' `statement_timeout`
/// is the pooled role's own. Says so at start when that is none.
fn warn_without_statement_timeout(pool: &DbPool) {
    #[derive(diesel::QueryableByName)]
    struct Setting {
        #[diesel(sql_type = diesel::sql_types::Text)]
        statement_timeout: String,
    }
    let setting = pool.get().map_err(|e| e.to_string()).and_then(|mut conn| {
        use diesel::RunQueryDsl;
        diesel::sql_query("SHOW statement_timeout")
            .get_result::<Setting>(&mut **conn)
            .map_err(|e| e.to_string())
    });
    match setting {
        Ok(s) if s.statement_timeout == "0" => log::warn!(
            "DATABASE_URL's role has no statement_timeout, and behind a pooler zdm sets none \
             per session: give the role one (ALTER ROLE … SET statement_timeout = '5s'; \
             SET idle_in_transaction_session_timeout = '10s')"
        ),
        Ok(_) => {}
        Err(e) => log::warn!("could not read the pooled role's statement_timeout: {e}"),
    }
}

/// Pauses a backfill this process runs and waits for its batch in flight to commit, so it
/// stops at a batch boundary (and resumes there on the next start).
fn stop_backfill(state: &AppState) {
    // A runner waiting for a lost database stops waiting.
    state.backfill.ride_out.stop();
    let Some(thread) = state.backfill_thread.take_running() else {
        return;
    };
    log::info!("pausing the backfill at its next batch boundary");
    let paused = state
        .pool
        .get()
        .map_err(|e| e.to_string())
        .and_then(|mut conn| {
            backfill::request_stop(&mut conn, backfill::BackfillState::Paused)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = paused {
        log::warn!("could not pause the backfill: {e}");
    }
    if thread.join().is_err() {
        log::warn!("the backfill thread panicked");
    }
}
