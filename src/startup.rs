//! Building and running the HTTP server. The caller binds the listener, so tests can bind
//! port 0 and run the real server.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::{DefaultHeaders, Logger};
use actix_web::{App, HttpServer, web};

use crate::app_state::AppState;
use crate::config::Config;
use crate::db::{self, DbPool};
use crate::local_pg::LocalPg;
use crate::migration::backfill;
use crate::migration::follower::PhaseFollower;
use crate::migration::schema_migrations;
use crate::routes;

pub type StartupError = Box<dyn std::error::Error + Send + Sync>;

/// The server on an already bound listener.
pub fn run(listener: TcpListener, state: AppState) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .wrap(security_headers())
            .wrap(Logger::new(r#"%a "%r" %s %b %Dms"#))
            .app_data(state.clone())
            .configure(routes::configure)
    })
    .listen(listener)?
    .run();
    Ok(server)
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

/// A connected, migrated database.
pub struct Database {
    pub url: String,
    pub pool: DbPool,
    /// The private PostgreSQL, when this process started it.
    pub started: Option<LocalPg>,
}

/// Connects (starting the private PostgreSQL when `DATABASE_URL` is unset) and applies the
/// infrastructure migrations; phase migrations are left to the migration runner.
pub fn prepare_database(config: &Config) -> Result<Database, StartupError> {
    let (url, started) = config.resolve_database()?;
    let pool = db::build_pool(&url, config.pool_limits())?;
    let mut conn = pool.get()?;
    for name in schema_migrations::run_infrastructure_migrations(&mut conn)? {
        log::info!("applied migration {name}");
    }
    Ok(Database { url, pool, started })
}

/// A random admin token, for when none is configured.
pub fn generate_token() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(32)
        .collect()
}

/// `zdm serve`: runs until SIGINT/SIGTERM.
pub async fn serve(config: Config) -> Result<(), StartupError> {
    let database = prepare_database(&config)?;
    let follower = PhaseFollower::start(database.pool.clone(), config.phase_poll)?;
    let admin_token = config.admin_token.clone().unwrap_or_else(|| {
        let token = generate_token();
        println!("ADMIN_TOKEN was not set; this run's admin token is: {token}");
        token
    });
    let state = AppState {
        pool: database.pool,
        database_url: database.url,
        phase: follower.applied(),
        instance_id: follower.instance_id.clone(),
        admin_token,
        sessions: Default::default(),
        login_limiter: Default::default(),
        backfill_thread: Default::default(),
        report_dir: config.report_dir(),
        fault_lagging_v1_writes: config.fault_lagging_v1_writes,
    };
    if state.fault_lagging_v1_writes {
        log::warn!("fault injection on: v1 writes skip the new columns (a broken dual-write)");
    }
    let listener = TcpListener::bind(&config.bind)
        .map_err(|e| format!("cannot listen on {} (ZDM_BIND): {e}", config.bind))?;
    log::info!("zdm is listening on http://{}", listener.local_addr()?);
    // SIGTERM or SIGINT: the server stops taking connections and lets requests in flight
    // finish (actix-web's graceful shutdown), then this process winds down what it runs.
    run(listener, state.clone())?.await?;
    stop_backfill(&state);
    drop(follower);
    if let Some(pg) = database.started {
        log::info!("stopping the private PostgreSQL this process started");
        pg.stop()?;
    }
    Ok(())
}

/// Pauses a backfill this process runs and waits for its batch in flight to commit, so it
/// stops at a batch boundary (and resumes there on the next start).
fn stop_backfill(state: &AppState) {
    let Some(thread) = state.backfill_thread.take_running() else {
        return;
    };
    log::info!("pausing the backfill at its next batch boundary");
    let paused = state
        .pool
        .get()
        .map_err(|e| e.to_string())
        .and_then(|mut conn| {
            backfill::request_stop(&mut conn, "paused").map_err(|e| e.to_string())
        });
    if let Err(e) = paused {
        log::warn!("could not pause the backfill: {e}");
    }
    if thread.join().is_err() {
        log::warn!("the backfill thread panicked");
    }
}
