//! The test harness: every test gets its own freshly migrated database, copied from a
//! template, and the real server on a random port. Both go away when the test ends, panics
//! included.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
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
        zdm::tools::demo::fleet::wait_until_healthy(&process.address, within)
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

/// The CSRF cookie test forms send (their field carries `TestApp::form_token`, the token the
/// app signs for it). It has the form of the values the app issues (43 characters of
/// base64url).
pub const FORM_TOKEN: &str = "dGVzdC1mb3JtLXRva2VuLXRlc3QtZm9ybS10b2tlbiE";

/// The admin token of every test app.
pub const ADMIN_TOKEN: &str = "test-admin-token-long-enough-to-pass";

/// The real server on 127.0.0.1:<random port>, against its own database (or one shared with
/// another `TestApp`, to test two instances).
pub struct TestApp {
    pub address: String,
    /// A client that does not follow redirects, so tests see the 303s.
    pub client: reqwest::Client,
    pub instance_id: String,
    /// Where this app looks for `zdm demo` reports (empty at first).
    pub report_dir: PathBuf,
    follower: PhaseFollower,
    // Dropped last: the database goes once nothing of the app uses it.
    pub db: Arc<TestDb>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_on(Arc::new(TestDb::migrated())).await
    }

    /// A second (third...) instance on the same database.
    pub async fn spawn_on(db: Arc<TestDb>) -> Self {
        Self::spawn_with(db, db::PoolLimits::with_size(4)).await
    }

    /// An instance whose web pool has these limits.
    pub async fn spawn_with(db: Arc<TestDb>, limits: db::PoolLimits) -> Self {
        let url = db.url.clone();
        Self::spawn_at(&url, db, limits)
    }

    /// An instance whose sessions run as `role` (see `AppRole`): zdm as production runs it,
    /// an ordinary role that owns users.
    pub async fn spawn_as(db: Arc<TestDb>, role: &AppRole) -> Self {
        let url = role.url(&db.url);
        Self::spawn_at(&url, db, db::PoolLimits::with_size(4))
    }

    pub fn spawn_at(url: &str, db: Arc<TestDb>, limits: db::PoolLimits) -> Self {
        Self::spawn_serving(serve(url, limits), db)
    }

    /// An instance whose requests go through the transaction-mode pooler at `pooled_url`
    /// and whose work that needs a session goes to the test database directly
    /// (`DIRECT_DATABASE_URL`), with a web pool of `size`.
    pub fn spawn_pooled(pooled_url: &str, db: Arc<TestDb>, size: u32) -> Self {
        let served = serve_pooled(pooled_url, &db.url, size);
        Self::spawn_serving(served, db)
    }

    fn spawn_serving(served: (String, PhaseFollower, PathBuf), db: Arc<TestDb>) -> Self {
        let (address, follower, report_dir) = served;
        TestApp {
            address,
            // A kept-alive connection idle for longer than the server keeps it (actix: 5 s)
            // may be closed under a request sent on it (IncompleteMessage): a test that
            // spends seconds in the database between two requests meets that.
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_idle_timeout(Duration::from_secs(2))
                .build()
                .expect("building the HTTP client"),
            instance_id: follower.instance_id.clone(),
            report_dir,
            follower,
            db,
        }
    }

    /// The phase this instance has applied.
    pub fn phase(&self) -> Phase {
        self.follower.applied().get()
    }

    /// This instance's applied phase, its lease and its requests in flight.
    pub fn applied(&self) -> zdm::migration::follower::AppliedPhase {
        self.follower.applied()
    }

    /// Waits (up to 30 s) until this instance runs `phase` and has acknowledged it.
    pub async fn wait_for_phase(&self, phase: Phase) {
        wait_for_acknowledged(&mut self.db.conn(), &self.follower, phase).await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("GET failed")
    }

    /// GET `path` and its body as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.expect("a JSON body")
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST failed")
    }

    pub async fn put_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PUT failed")
    }

    /// Posts a user-page form as a browser would: with the CSRF cookie and its field.
    pub async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut with_token = fields.to_vec();
        let token = self.form_token();
        with_token.push(("csrf", &token));
        self.client
            .post(self.url(path))
            .header("cookie", format!("zdm_csrf={FORM_TOKEN}"))
            .form(&with_token)
            .send()
            .await
            .expect("form POST failed")
    }

    /// The CSRF token the app's form pages give a browser whose cookie is `FORM_TOKEN`.
    pub fn form_token(&self) -> String {
        let key = zdm::db::admin_auth::user_form_key(&mut self.db.conn())
            .expect("reading the user forms' key");
        zdm::secrets::user_form_token(&key, FORM_TOKEN)
    }

    /// Creates a user through the v1 API and returns its id.
    pub async fn create_user(&self, full_name: &str, email: &str) -> i64 {
        let response = self
            .post_json(
                "/api/v1/users",
                &serde_json::json!({ "full_name": full_name, "email": email }),
            )
            .await;
        assert_eq!(response.status(), 201, "creating {email}");
        let body: serde_json::Value = response.json().await.expect("JSON body");
        body["id"].as_i64().expect("an id")
    }
}

impl TestApp {
    /// POST to the admin API with the token.
    pub async fn admin_post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin POST failed")
    }

    pub async fn admin_status(&self) -> serde_json::Value {
        let response = self
            .client
            .get(self.url("/api/admin/migration"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("admin GET failed");
        assert_eq!(response.status(), 200);
        response.json().await.expect("a JSON status")
    }

    /// Waits until the backfill's status (as `GET /api/admin/migration` shows it) meets
    /// `done`, and returns it; a backfill that failed fails the test at once. Up to 60 s: a
    /// backfill under racing writers on a loaded machine takes its time.
    pub async fn wait_for_backfill(
        &self,
        what: &str,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        wait_for(what, Duration::from_secs(60), async || {
            let backfill = self.admin_status().await["backfill"].clone();
            assert_ne!(
                backfill["state"], "failed",
                "the backfill failed: {backfill}"
            );
            if done(&backfill) {
                Ok(backfill)
            } else {
                Err(backfill.to_string())
            }
        })
        .await
    }

    /// Asks the admin API to advance (with the contract's confirmation, if given); does not
    /// wait for the instance to apply the result (`wait_for_phase` does).
    pub async fn advance(&self, confirm: Option<&str>) -> reqwest::Response {
        let body = match confirm {
            Some(c) => serde_json::json!({ "confirm": c }),
            None => serde_json::json!({}),
        };
        self.admin_post("/api/admin/migration/advance", body).await
    }

    pub async fn rollback(&self) -> reqwest::Response {
        self.admin_post("/api/admin/migration/rollback", serde_json::json!({}))
            .await
    }

    /// Runs the backfill through the admin API and waits until it is done.
    pub async fn backfill_to_the_end(&self) {
        let response = self
            .admin_post("/api/admin/backfill/start", serde_json::json!({}))
            .await;
        assert_eq!(
            response.status(),
            202,
            "{}",
            response.text().await.unwrap_or_default()
        );
        self.wait_for_backfill("the backfill to finish", |backfill| {
            assert!(
                matches!(backfill["state"].as_str(), Some("done" | "running")),
                "the backfill stopped short: {backfill}"
            );
            backfill["state"] == "done"
        })
        .await;
    }
}

impl TestApp {
    /// Advances through the admin API (running the backfill and confirming the contract on
    /// the way) until this instance has applied `target`.
    pub async fn walk_to(&self, target: Phase) {
        while self.phase() < target {
            let from = self.phase();
            if from == Phase::DualWrite {
                self.backfill_to_the_end().await;
            }
            let confirm = (from == Phase::NewOnly).then_some("users.full_name");
            let response = self.advance(confirm).await;
            let status = response.status();
            assert_eq!(
                status,
                200,
                "advancing from {from}: {}",
                response.text().await.unwrap_or_default()
            );
            self.wait_for_phase(from.next().unwrap()).await;
        }
    }
}

impl TestApp {
    /// An instance stuck on `phase` that never hears of a change and sends no heartbeat: an
    /// old deploy the gates cannot see (a partitioned host, a forgotten process).
    pub async fn spawn_stuck(
        db: Arc<TestDb>,
        phase: Phase,
    ) -> (String, actix_web::dev::ServerHandle) {
        let pool =
            db::build_pool(&db.url, db::PoolLimits::with_size(2)).expect("building the pool");
        let phase = zdm::migration::follower::AppliedPhase::new(phase, 0);
        let state = AppState::builder(&db.url, pool, phase, "stuck")
            .admin_token(ADMIN_TOKEN)
            .report_dir(std::env::temp_dir().join("zdm-stuck-reports"))
            .build()
            .expect("building the app state");
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a random port");
        let port = listener.local_addr().expect("reading the port").port();
        let server = zdm::startup::run(listener, state).expect("starting the server");
        let handle = server.handle();
        actix_web::rt::spawn(server);
        (format!("http://127.0.0.1:{port}"), handle)
    }

    /// Loads `count` users the way the current phase writes them.
    pub fn seed(&self, count: u64) {
        let mut conn = self.db.conn();
        zdm::tools::seed::seed_users(&mut conn, self.phase(), count, 42, |_| {}).expect("seeding");
    }
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

/// Holds ACCESS EXCLUSIVE on `users` until dropped: every query on it waits.
pub struct TableLock {
    conn: PgConnection,
}

impl TableLock {
    pub fn take(url: &str) -> Self {
        let mut conn = PgConnection::establish(url).unwrap();
        conn.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE;")
            .unwrap();
        TableLock { conn }
    }

    /// Returns once a request's query is queued behind the lock. A backfill's batches queue
    /// too; they are told apart by the runner's advisory lock.
    pub async fn wait_for_a_request(&mut self) {
        let conn = &mut self.conn;
        eventually("a request queued behind the lock", || {
            waits_on_users(
                conn,
                "w.pid NOT IN (SELECT pid FROM pg_locks WHERE locktype = 'advisory')",
            )
        })
        .await;
    }
}

/// Whether a query in this connection's database waits for a lock on `users` and meets
/// `condition` (SQL on the waiting lock `w`; `TRUE` for any). pg_locks lists every
/// database of the cluster, and the tests beside this one have a `users` table too.
pub fn waits_on_users(conn: &mut PgConnection, condition: &str) -> bool {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "EXISTS (SELECT FROM pg_locks w WHERE NOT w.granted AND w.relation = 'users'::regclass \
         AND w.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ({condition}))"
    )))
    .get_result(conn)
    .expect("reading pg_locks")
}

#[derive(QueryableByName)]
struct Column {
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    nullable: bool,
}

/// `users`' columns as `name` or `name?` (nullable), sorted.
pub fn users_columns(conn: &mut PgConnection) -> Vec<String> {
    let columns: Vec<Column> = diesel::sql_query(
        "SELECT column_name::text, is_nullable = 'YES' AS nullable FROM information_schema.columns
          WHERE table_name = 'users' AND table_schema = current_schema() ORDER BY column_name",
    )
    .load(conn)
    .expect("reading users' columns");
    columns
        .into_iter()
        .map(|c| {
            if c.nullable {
                format!("{}?", c.column_name)
            } else {
                c.column_name
            }
        })
        .collect()
}

#[derive(QueryableByName)]
struct Check {
    #[diesel(sql_type = Text)]
    check: String,
}

/// `users`' CHECK constraints as `name` or `name (not valid)`, sorted.
pub fn users_checks(conn: &mut PgConnection) -> Vec<String> {
    let checks: Vec<Check> = diesel::sql_query(
        "SELECT conname || CASE WHEN convalidated THEN '' ELSE ' (not valid)' END AS check
           FROM pg_constraint WHERE conrelid = 'users'::regclass AND contype = 'c' ORDER BY 1",
    )
    .load(conn)
    .expect("reading users' checks");
    checks.into_iter().map(|c| c.check).collect()
}

/// The `error` of a JSON error answer.
pub async fn error_of(response: reqwest::Response) -> String {
    response
        .json::<serde_json::Value>()
        .await
        .expect("a JSON error")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Runs migrations as a person would (`diesel migration run`, `revert`, psql): the error as
/// text. A migration that manages its own transactions leaves a failed one open; it is ended
/// here (the diesel CLI exits instead).
pub fn by_hand<T>(
    conn: &mut PgConnection,
    run: impl FnOnce(&mut PgConnection) -> diesel::migration::Result<T>,
) -> Result<(), String> {
    let outcome = run(conn).map(drop).map_err(|e| e.to_string());
    let _ = conn.batch_execute("ROLLBACK");
    outcome
}

/// The sessions holding the backfill's advisory lock in this connection's database (the
/// runner, if one runs). pg_locks lists every database of the cluster, and the tests beside
/// this one hold the same key in theirs.
pub fn backfill_runner_pids(conn: &mut PgConnection) -> Vec<i32> {
    try_backfill_runner_pids(conn).expect("reading pg_locks")
}

/// As `backfill_runner_pids`, for a database that may be gone.
pub fn try_backfill_runner_pids(conn: &mut PgConnection) -> QueryResult<Vec<i32>> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(&format!(
        "pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid = 0 AND objid = {} AND objsubid = 1 \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        zdm::migration::backfill::LOCK_KEY
    )))
    .load(conn)
}

/// Writers that rename random seeded rows (ids 1..=20,000) through both APIs, v1 and v2 in
/// turn, and remember what each row must end with. v2 names are chosen so that split(join)
/// differs ("Mary Ann" + "Smith"), so a backfill that overwrites a v2 write shows.
pub struct MixedWriters {
    rng: fastrand::Rng,
    pub writes: usize,
    expected: std::collections::HashMap<i64, (String, String)>,
}

impl MixedWriters {
    pub fn new(seed: u64) -> Self {
        Self {
            rng: fastrand::Rng::with_seed(seed),
            writes: 0,
            expected: Default::default(),
        }
    }

    /// Twenty writes, each answered 200.
    pub async fn write_twenty(&mut self, app: &TestApp) {
        for _ in 0..20 {
            let id = self.rng.i64(1..=20_000);
            let n = self.writes;
            self.writes += 1;
            let (path, body, parts) = if n.is_multiple_of(2) {
                let full = format!("Writer{n} Van Der Test");
                (
                    format!("/api/v1/users/{id}"),
                    serde_json::json!({ "full_name": full }),
                    (format!("Writer{n}"), "Van Der Test".to_owned()),
                )
            } else {
                let (first, last) = (format!("Mary Ann{n}"), "Smith".to_owned());
                (
                    format!("/api/v2/users/{id}"),
                    serde_json::json!({ "first_name": first, "last_name": last }),
                    (first, last),
                )
            };
            let response = app.put_json(&path, &body).await;
            assert_eq!(response.status(), 200, "write {n} to {path}");
            self.expected.insert(id, parts);
        }
    }

    /// Every acknowledged write reads back through both APIs as written last.
    pub async fn assert_intact(&self, app: &TestApp) {
        for (id, (first, last)) in &self.expected {
            let v2: serde_json::Value = app.get_json(&format!("/api/v2/users/{id}")).await;
            assert_eq!(
                (
                    v2["first_name"].as_str().unwrap(),
                    v2["last_name"].as_str().unwrap()
                ),
                (first.as_str(), last.as_str())
            );
            let v1: serde_json::Value = app.get_json(&format!("/api/v1/users/{id}")).await;
            assert_eq!(v1["full_name"], format!("{first} {last}"));
        }
    }
}

/// What the README grants the role of `DATABASE_URL` behind a pooler, and nothing more.
pub const POOLED_ROLE_GRANTS: &str = "
    GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role};
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role};
    GRANT pg_read_all_stats TO {role};";

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
        Self::with_grants(
            db,
            suffix,
            "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role};
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {role};
             ALTER TABLE users OWNER TO {role};
             DO $$ BEGIN
                 EXECUTE format('ALTER DATABASE %I OWNER TO {role}', current_database());
             END $$;",
        )
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
