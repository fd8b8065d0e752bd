//! The app under test: `TestApp`, the real server on a random port, and what tests ask of it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use zdm::app_state::AppState;
use zdm::db;
use zdm::domain::Phase;
use zdm::migration::follower::PhaseFollower;

use super::{AppRole, TestDb, serve, serve_pooled, wait_for, wait_for_acknowledged};

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
