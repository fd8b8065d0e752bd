//! The test harness: every test gets its own freshly migrated database, copied from a
//! template, and the real server on a random port. Both go away when the test ends, panics
//! included. The app itself is in `app`, what tests do to the database behind its back in
//! `database`, the roles it is used as in `roles`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use zdm::app_state::AppState;
use zdm::db::databases::{self, quote_ident};
use zdm::db::{self, with_database};
use zdm::domain::Phase;
use zdm::fnv::Fnv1a;
use zdm::local_pg::{LocalPg, ScratchCluster};
use zdm::migration::follower::PhaseFollower;
use zdm::migration::schema_migrations;
use zdm::tools::scratch::ScratchDatabase;

mod app;
mod database;
mod roles;

pub use app::*;
pub use database::*;
pub use roles::*;

/// Test databases are named `zdm_test_<pid>_<n>` (see `ScratchDatabase::create`) so a later
/// run can tell a leftover of a crashed run (its process is gone) from a database another
/// running process still uses.
const TEST_DB_PREFIX: &str = "zdm_test";
/// Any stable number: serialises template set-up across test processes.
const TEMPLATE_LOCK_KEY: i64 = 0x7a64_6d74;

static SERVER: OnceLock<Server> = OnceLock::new();
/// Numbers the folders and roles the tests make, unique within this process.
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The PostgreSQL server the tests use and the template they copy.
struct Server {
    /// `TEST_DATABASE_URL` / `DATABASE_URL`, or the private cluster's URL, for any database.
    base_url: String,
    template: String,
}

/// The `zdm` binary as the tests start it: without the settings of whoever runs the tests
/// (every `ZDM_*` variable, the database URLs and the admin token), so that a test sets what
/// it needs and a shell's exports change nothing. The test's own process reads none of
/// them: it builds its configuration in code.
pub fn zdm_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_zdm"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| {
            name.starts_with("ZDM_")
                || [
                    "DATABASE_URL",
                    "DIRECT_DATABASE_URL",
                    "DATABASE_REPLICA_URLS",
                    "ADMIN_TOKEN",
                ]
                .contains(&name)
        }) {
            command.env_remove(name);
        }
    }
    command
}

/// A real `zdm serve` process, started as an operator starts it (its own binary, its own
/// settings, nothing of the caller's shell); stopped when dropped.
pub struct ServeProcess {
    pub address: String,
    child: std::process::Child,
}

impl ServeProcess {
    /// Starts `zdm serve` on `port` with the tests' admin token and `env` (its database among
    /// them: `DATABASE_URL`, or `ZDM_DATA_DIR` for a private cluster), and returns once
    /// `/healthz` answers 200, waiting up to `within` (a private cluster's first start runs
    /// initdb).
    pub async fn start(port: u16, env: &[(&str, &str)], within: Duration) -> Self {
        let child = zdm_command()
            .arg("serve")
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .env("ZDM_BIND", format!("127.0.0.1:{port}"))
            .env("ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting zdm serve");
        let process = ServeProcess {
            address: format!("http://127.0.0.1:{port}"),
            child,
        };
        let pid = Some(process.child.id());
        zdm::tools::demo::fleet::wait_until_healthy(&process.address, pid, within)
            .await
            .expect("zdm serve came up");
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) -> nix::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal)
    }

    /// Waits until the process has exited, and how it ended.
    pub async fn exited(&mut self) -> std::process::ExitStatus {
        let child = &mut self.child;
        wait_for("zdm serve to exit", WAIT, async || {
            child
                .try_wait()
                .expect("reading the process's state")
                .ok_or_else(|| "still running".to_owned())
        })
        .await
    }

    /// SIGTERM, and waits for the process to exit.
    pub fn stop(mut self) {
        let _ = self.signal(nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        // A test may have left it stopped (SIGSTOP): it must run to be killed and reaped.
        let _ = self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn server() -> &'static Server {
    SERVER.get_or_init(|| {
        let _ = env_logger::builder().is_test(true).try_init();
        let base_url = std::env::var("TEST_DATABASE_URL")
            .or_else(|_| std::env::var("DATABASE_URL"))
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| {
                LocalPg::ensure_running(&project_dir().join(".zdm"))
                    .expect("starting the private PostgreSQL for the tests")
                    .url("postgres")
            });
        let template = prepare_template(&base_url);
        Server { base_url, template }
    })
}

#[derive(QueryableByName)]
struct Name {
    #[diesel(sql_type = Text)]
    datname: String,
}

fn database_names(conn: &mut PgConnection, like: &str) -> Vec<String> {
    diesel::sql_query("SELECT datname FROM pg_database WHERE datname LIKE $1")
        .bind::<Text, _>(like)
        .load::<Name>(conn)
        .expect("listing databases")
        .into_iter()
        .map(|n| n.datname)
        .collect()
}

/// A name for the current migrations: the template is rebuilt whenever one changes.
fn migrations_fingerprint() -> u64 {
    let mut files: Vec<PathBuf> = Vec::new();
    let mut dirs = vec![project_dir().join("migrations")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("reading migrations/") {
            let path = entry.expect("reading migrations/").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hash = Fnv1a::default();
    for file in files {
        let bytes = std::fs::read(&file).expect("reading a migration");
        let name = file.strip_prefix(project_dir()).unwrap_or(&file);
        hash.write(name.as_os_str().as_encoded_bytes());
        hash.write(&bytes);
    }
    hash.finish()
}

/// Builds (once per set of migrations) a database with the infrastructure migrations applied,
/// and clears leftovers of crashed runs. Runs under an advisory lock, so parallel test
/// processes build it once.
fn prepare_template(base_url: &str) -> String {
    let template = format!("zdm_tpl_{:016x}", migrations_fingerprint());
    let building = format!("{template}_building");
    let mut conn = PgConnection::establish(base_url).expect("connecting to the test server");
    diesel::sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut conn)
        .expect("taking the template lock");

    for leftover in database_names(&mut conn, &format!("{TEST_DB_PREFIX}_%")) {
        let pid = leftover
            .strip_prefix(&format!("{TEST_DB_PREFIX}_"))
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        let alive = pid.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            databases::drop(&mut conn, &leftover).expect("dropping a leftover test database");
        }
    }
    for old in database_names(&mut conn, "zdm_tpl_%") {
        if old != template {
            databases::drop(&mut conn, &old).expect("dropping an outdated template");
        }
    }
    if database_names(&mut conn, &template).is_empty() {
        databases::drop(&mut conn, &building).expect("dropping a half-built template");
        databases::create(&mut conn, &building, None).expect("creating the template");
        {
            let mut tpl = PgConnection::establish(&with_database(base_url, &building))
                .expect("connecting to the template");
            schema_migrations::run_infrastructure_migrations(&mut tpl)
                .expect("migrating the template");
            // Tests that walk to contracted do not wait out the contract's quiet window; the
            // tests of the client check set one of their own.
            zdm::migration::state::set_contract_quiet_secs(&mut tpl, 0)
                .expect("setting the quiet window");
        }
        diesel::sql_query(format!(
            "ALTER DATABASE {} RENAME TO {}",
            quote_ident(&building),
            quote_ident(&template)
        ))
        .execute(&mut conn)
        .expect("publishing the template");
    }
    diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(TEMPLATE_LOCK_KEY)
        .execute(&mut conn)
        .expect("releasing the template lock");
    template
}

/// A database of one test's own, dropped (connections and all) when this value goes away.
pub struct TestDb {
    pub name: String,
    pub url: String,
    _scratch: ScratchDatabase,
}

impl TestDb {
    /// A copy of the migrated template.
    pub fn migrated() -> Self {
        Self::create(Some(&server().template))
    }

    /// A database with no tables at all, for stepping through migrations by hand.
    pub fn empty() -> Self {
        Self::create(None)
    }

    fn create(template: Option<&str>) -> Self {
        let scratch = ScratchDatabase::create_from(&server().base_url, TEST_DB_PREFIX, template)
            .expect("creating a test database");
        TestDb {
            name: scratch.name.clone(),
            url: scratch.url.clone(),
            _scratch: scratch,
        }
    }

    pub fn conn(&self) -> PgConnection {
        PgConnection::establish(&self.url).expect("connecting to the test database")
    }
}

/// Starts the real server against `url` on a random port: its address, its phase follower
/// (the instance lives as long as it does) and its report folder.
pub fn serve(url: &str, limits: db::PoolLimits) -> (String, PhaseFollower, PathBuf) {
    serve_with(url, limits, Default::default(), Vec::new())
}

/// How long a test waits for something before it fails: long enough for a loaded machine,
/// and only ever spent when the thing does not happen.
pub const WAIT: Duration = Duration::from_secs(30);

/// The one way the tests wait: asks `check` every 20 ms until it answers `Ok`, and fails the
/// test once `within` has passed, naming `what` it waited for and what `check` saw last
/// (its `Err`). Never a fixed sleep: on a slow machine a test waits longer, not wrongly.
pub async fn wait_for<T>(
    what: &str,
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) => assert!(
                started.elapsed() < within,
                "waited {within:?} for {what}; last seen: {seen}"
            ),
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// [`wait_for`] a condition that holds or not, for up to [`WAIT`].
pub async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    wait_for(what, WAIT, async || {
        if done() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await
}

/// Waits until the instance of `follower` runs `phase` and has said so in its heartbeat,
/// which is what the gates read (it switches first and acknowledges right after).
pub async fn wait_for_acknowledged(
    conn: &mut PgConnection,
    follower: &PhaseFollower,
    phase: Phase,
) {
    use zdm::schema::state::zdm_instances;
    let what = format!("instance {} to acknowledge {phase}", follower.instance_id);
    wait_for(&what, WAIT, async || {
        let acknowledged: Option<String> = zdm_instances::table
            .find(&follower.instance_id)
            .select(zdm_instances::applied_phase)
            .first(conn)
            .optional()
            .expect("reading the heartbeat");
        let applied = follower.applied().get();
        if applied == phase && acknowledged.as_deref() == Some(phase.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "it runs {applied}, its heartbeat says {acknowledged:?}"
            ))
        }
    })
    .await
}

/// Waits until every live instance has applied the stored phase, the gate a next step
/// checks: for instances in other processes, where there is no follower to ask.
pub async fn wait_for_every_instance(conn: &mut PgConnection) {
    use zdm::migration::state;
    eventually("every live instance to apply the stored phase", || {
        let phase = state::current_phase(conn).expect("reading the phase");
        let live = state::live_instances(conn).expect("reading the instances");
        !live.is_empty() && live.iter().all(|i| i.phase() == Some(phase))
    })
    .await;
}

/// Advances the stored phase a step at a time up to `to`, each step once the instance of
/// `follower` has acknowledged the one before.
pub async fn advance_served(conn: &mut PgConnection, follower: &PhaseFollower, to: Phase) {
    while zdm::migration::state::current_phase(conn).expect("reading the phase") < to {
        let next = zdm::migration::runner::advance(conn, "test", None)
            .expect("advancing")
            .to;
        wait_for_acknowledged(conn, follower, next).await;
    }
}

/// As `serve`, with user reads allowed on these replicas and the backfill throttled on
/// `throttle_replicas`.
pub fn serve_with(
    url: &str,
    limits: db::PoolLimits,
    read_replicas: zdm::replicas::ReadReplicas,
    throttle_replicas: Vec<String>,
) -> (String, PhaseFollower, PathBuf) {
    serve_full(url, None, limits, read_replicas, throttle_replicas)
}

/// As `serve_with`, with the requests through a transaction-mode pooler at `pooled_url`
/// and the work that needs a session on `direct_url` (`DIRECT_DATABASE_URL`).
pub fn serve_pooled(
    pooled_url: &str,
    direct_url: &str,
    size: u32,
) -> (String, PhaseFollower, PathBuf) {
    let limits = db::PoolLimits {
        through_pooler: true,
        ..db::PoolLimits::with_size(size)
    };
    serve_full(
        pooled_url,
        Some(direct_url),
        limits,
        Default::default(),
        Vec::new(),
    )
}

fn serve_full(
    url: &str,
    session_url: Option<&str>,
    limits: db::PoolLimits,
    read_replicas: zdm::replicas::ReadReplicas,
    throttle_replicas: Vec<String>,
) -> (String, PhaseFollower, PathBuf) {
    let pool = db::build_pool(url, limits).expect("building the pool");
    let metrics = std::sync::Arc::new(zdm::metrics::Metrics::new().expect("metrics"));
    let follower = PhaseFollower::start_reporting(
        pool.clone(),
        Duration::from_millis(50),
        metrics.latency_reporter(),
    )
    .expect("following the phase");
    let report_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reports-{}", follower.instance_id));
    let mut builder = AppState::builder(url, pool, follower.applied(), &follower.instance_id);
    if let Some(session_url) = session_url {
        builder = builder.session_url(session_url);
    }
    let state = builder
        .admin_token(ADMIN_TOKEN)
        .metrics(metrics)
        .report_dir(report_dir.clone())
        .throttle_replicas(throttle_replicas, 4 * 1024 * 1024)
        .read_replicas(read_replicas)
        .user_reads_limits(limits)
        .build()
        .expect("building the app state");
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a random port");
    let port = listener.local_addr().expect("reading the port").port();
    let server = zdm::startup::run(listener, state).expect("starting the server");
    actix_web::rt::spawn(server);
    (format!("http://127.0.0.1:{port}"), follower, report_dir)
}

/// The URL of the test server's maintenance database (for tools that create their own
/// scratch databases, like `zdm demo`).
pub fn server_url() -> String {
    server().base_url.clone()
}

/// A scratch cluster (primary and replicas) under the test binary's temporary folder,
/// stopped and removed when dropped.
pub fn scratch_cluster(name: &str) -> ScratchCluster {
    ScratchCluster::new(
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pg-{name}-{}", std::process::id())),
    )
}
