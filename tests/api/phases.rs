//! The migration end to end: two real instances on one database walk every phase forward and
//! every allowed step back, writing and reading through both APIs at each phase.

use std::collections::BTreeMap;
use std::sync::Arc;

use diesel::prelude::*;
use serde_json::{Value, json};
use zdm::domain::Phase;
use zdm::domain::name_rule::{join_name, normalize_whitespace, split_full_name};

use crate::helpers::{TestApp, users_columns};

/// What every acknowledged write says a user must read back as.
#[derive(Debug, Clone)]
struct Expected {
    full_name: String,
    parts: (String, String),
    email: String,
}

#[derive(Default)]
struct Ledger {
    users: BTreeMap<i64, Expected>,
    deleted: Vec<i64>,
    counter: usize,
}

impl Ledger {
    fn email(&mut self) -> String {
        self.counter += 1;
        format!("user{}@example.com", self.counter)
    }

    async fn v1_create(&mut self, app: &TestApp, full_name: &str) -> i64 {
        let email = self.email();
        let response = app
            .post_json(
                "/api/v1/users",
                &json!({ "full_name": full_name, "email": email }),
            )
            .await;
        assert_eq!(response.status(), 201, "v1 create in {}", app.phase());
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap();
        self.users.insert(
            id,
            Expected {
                full_name: normalize_whitespace(full_name),
                parts: split_full_name(full_name),
                email,
            },
        );
        id
    }

    async fn v1_rename(&mut self, app: &TestApp, id: i64, full_name: &str) {
        let response = app
            .put_json(
                &format!("/api/v1/users/{id}"),
                &json!({ "full_name": full_name }),
            )
            .await;
        assert_eq!(response.status(), 200, "v1 update in {}", app.phase());
        let user = self.users.get_mut(&id).unwrap();
        user.full_name = normalize_whitespace(full_name);
        user.parts = split_full_name(full_name);
    }

    async fn v2_create(&mut self, app: &TestApp, first: &str, last: &str) -> i64 {
        let email = self.email();
        let response = app
            .post_json(
                "/api/v2/users",
                &json!({ "first_name": first, "last_name": last, "email": email }),
            )
            .await;
        assert_eq!(response.status(), 201, "v2 create in {}", app.phase());
        let id = response.json::<Value>().await.unwrap()["id"]
            .as_i64()
            .unwrap();
        self.users.insert(
            id,
            Expected {
                full_name: join_name(first, last),
                parts: (first.to_owned(), last.to_owned()),
                email,
            },
        );
        id
    }

    async fn v2_rename(&mut self, app: &TestApp, id: i64, first: &str, last: &str) {
        let response = app
            .put_json(
                &format!("/api/v2/users/{id}"),
                &json!({ "first_name": first, "last_name": last }),
            )
            .await;
        assert_eq!(response.status(), 200, "v2 update in {}", app.phase());
        let user = self.users.get_mut(&id).unwrap();
        user.full_name = join_name(first, last);
        user.parts = (first.to_owned(), last.to_owned());
    }

    async fn delete(&mut self, app: &TestApp, id: i64) {
        let response = app
            .client
            .delete(app.url(&format!("/api/v1/users/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204);
        self.users.remove(&id);
        self.deleted.push(id);
    }

    /// Some of everything a client does in this phase, spread over both instances.
    async fn write_some(&mut self, a: &TestApp, b: &TestApp) {
        let ada = self.v1_create(a, "  Ada \u{00A0}  Lovelace ").await;
        let grace = self.v1_create(b, "Grace Brewster Murray Hopper").await;
        self.v1_create(a, "Cher").await;
        self.v1_rename(b, ada, "Augusta Ada King").await;
        if a.phase().v2_released() {
            let mary = self.v2_create(b, "Mary Ann", "Smith").await;
            self.v2_create(a, "Prince", "").await;
            self.v2_rename(a, grace, "Grace", "Hopper").await;
            self.v1_rename(b, mary, "Mary Ann Jones").await;
            let twice = self.v2_create(a, "Jean-Luc", "Picard").await;
            self.v2_rename(b, twice, "Jean Luc", "Picard").await;
        }
        self.delete(b, grace).await;
    }

    /// Every acknowledged write reads back, through both APIs, from both instances (I3).
    async fn check(&self, apps: &[&TestApp]) {
        for app in apps {
            let phase = app.phase();
            for (id, expected) in &self.users {
                let v1: Value = app.get_json(&format!("/api/v1/users/{id}")).await;
                assert_eq!(
                    v1["full_name"],
                    expected.full_name.as_str(),
                    "v1 read of {id} in {phase}"
                );
                assert_eq!(v1["email"], expected.email.as_str());
                let v2 = app.get(&format!("/api/v2/users/{id}")).await;
                if phase.v2_released() {
                    let v2: Value = v2.json().await.unwrap();
                    assert_eq!(
                        v2["first_name"],
                        expected.parts.0.as_str(),
                        "v2 read of {id} in {phase}"
                    );
                    assert_eq!(
                        v2["last_name"],
                        expected.parts.1.as_str(),
                        "v2 read of {id} in {phase}"
                    );
                } else {
                    assert_eq!(v2.status(), 404, "v2 is not released in {phase}");
                }
            }
            for id in &self.deleted {
                assert_eq!(app.get(&format!("/api/v1/users/{id}")).await.status(), 404);
            }
        }
    }
}

async fn step(apps: &[&TestApp], response: reqwest::Response, to: Phase) {
    let status = response.status();
    let body = response.text().await.unwrap();
    assert_eq!(status, 200, "moving to {to}: {body}");
    for app in apps {
        app.wait_for_phase(to).await;
    }
}

async fn divergent(app: &TestApp) -> i64 {
    let response = app.admin_post("/api/admin/verify", json!({})).await;
    assert_eq!(response.status(), 200);
    response.json::<Value>().await.unwrap()["divergent"]
        .as_i64()
        .unwrap()
}

#[actix_web::test]
async fn two_instances_walk_every_phase_forward_and_back_without_losing_a_write() {
    let a = TestApp::spawn().await;
    let b = TestApp::spawn_on(Arc::clone(&a.db)).await;
    let apps = [&a, &b];
    let mut conn = a.db.conn();
    let mut ledger = Ledger::default();
    let base = ["created_at", "email", "full_name", "id", "updated_at"];

    // baseline
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    assert_eq!(users_columns(&mut conn), base);

    // expanded, back to baseline, and forward again
    step(&apps, a.advance(None).await, Phase::Expanded).await;
    assert_eq!(
        users_columns(&mut conn),
        [
            "created_at",
            "email",
            "first_name?",
            "full_name",
            "id",
            "last_name?",
            "updated_at"
        ]
    );
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    step(&apps, b.rollback().await, Phase::Baseline).await;
    assert_eq!(
        users_columns(&mut conn),
        base,
        "the empty columns are dropped"
    );
    ledger.check(&apps).await;
    step(&apps, b.advance(None).await, Phase::Expanded).await;

    // dual_write: v2 is released; both APIs write both forms
    step(&apps, a.advance(None).await, Phase::DualWrite).await;
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    step(&apps, a.rollback().await, Phase::Expanded).await;
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    step(&apps, a.advance(None).await, Phase::DualWrite).await;

    // backfilled: refused until the backfill ran and verify says 0
    let refused = a.advance(None).await;
    assert_eq!(refused.status(), 409);
    let error = refused.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("backfill gate"), "{error}");
    assert!(
        divergent(&a).await > 0,
        "rows written before dual_write are not filled yet"
    );
    a.backfill_to_the_end().await;
    assert_eq!(divergent(&b).await, 0);
    step(&apps, b.advance(None).await, Phase::Backfilled).await;
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    assert_eq!(divergent(&a).await, 0, "I2 holds in backfilled");
    step(&apps, a.rollback().await, Phase::DualWrite).await;
    step(&apps, a.advance(None).await, Phase::Backfilled).await;

    // read_new
    step(&apps, a.advance(None).await, Phase::ReadNew).await;
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    assert_eq!(divergent(&b).await, 0, "I2 holds in read_new");
    step(&apps, b.rollback().await, Phase::Backfilled).await;
    ledger.check(&apps).await;
    step(&apps, b.advance(None).await, Phase::ReadNew).await;

    // new_only: full_name is no longer written...
    step(&apps, a.advance(None).await, Phase::NewOnly).await;
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    let stale: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM users WHERE full_name IS DISTINCT FROM zdm_name_join(first_name, last_name))",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert!(stale > 0, "writes in new_only leave full_name behind");
    // ...so rolling back refills it (the reverse backfill) and makes it required again.
    step(&apps, a.rollback().await, Phase::ReadNew).await;
    let stale: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM users WHERE full_name IS DISTINCT FROM zdm_name_join(first_name, last_name))",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(stale, 0, "the reverse backfill refilled full_name");
    assert!(
        users_columns(&mut conn).contains(&"full_name".to_owned()),
        "full_name is NOT NULL again"
    );
    assert_eq!(divergent(&a).await, 0);
    ledger.check(&apps).await;
    step(&apps, a.advance(None).await, Phase::NewOnly).await;
    ledger.write_some(&a, &b).await;

    // contracted: needs the typed confirmation
    let refused = b.advance(None).await;
    assert_eq!(refused.status(), 409);
    let error = refused.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("confirmation gate"), "{error}");
    let refused = b.advance(Some("users.fullname")).await;
    assert_eq!(refused.status(), 409, "a mistyped confirmation is refused");
    step(
        &apps,
        b.advance(Some("users.full_name")).await,
        Phase::Contracted,
    )
    .await;
    assert_eq!(
        users_columns(&mut conn),
        [
            "created_at",
            "email",
            "first_name",
            "id",
            "last_name",
            "updated_at"
        ]
    );
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    let v1 = a.get("/api/v1/users").await;
    assert!(
        v1.headers()["deprecation"]
            .to_str()
            .unwrap()
            .starts_with('@')
    );
    assert!(v1.headers()["sunset"].to_str().unwrap().ends_with("GMT"));
    assert!(
        a.get("/api/v2/users")
            .await
            .headers()
            .get("deprecation")
            .is_none()
    );

    // The drop undone: back to new_only (full_name re-added, empty), on to read_new (refilled
    // by the reverse backfill), with writers in every phase; then forward again.
    step(&apps, a.rollback().await, Phase::NewOnly).await;
    assert!(users_columns(&mut conn).contains(&"full_name?".to_owned()));
    assert!(
        a.get("/api/v1/users")
            .await
            .headers()
            .get("deprecation")
            .is_none(),
        "v1 is no longer deprecated once full_name is back"
    );
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    step(&apps, b.rollback().await, Phase::ReadNew).await;
    assert!(users_columns(&mut conn).contains(&"full_name".to_owned()));
    let unjoined: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM users WHERE full_name IS DISTINCT FROM zdm_name_join(first_name, last_name))",
    ))
    .get_result(&mut conn)
    .unwrap();
    assert_eq!(
        unjoined, 0,
        "full_name is the join of the parts on every row"
    );
    assert_eq!(divergent(&a).await, 0);
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;
    step(&apps, a.advance(None).await, Phase::NewOnly).await;
    step(
        &apps,
        b.advance(Some("users.full_name")).await,
        Phase::Contracted,
    )
    .await;
    ledger.write_some(&a, &b).await;
    ledger.check(&apps).await;

    // The history names every step, who took it and how it ended.
    let status = a.admin_status().await;
    let history = status["history"].as_array().unwrap();
    let done: Vec<(String, String)> = history
        .iter()
        .rev()
        .filter(|h| h["outcome"] == "done")
        .map(|h| {
            (
                h["action"].as_str().unwrap().to_owned(),
                h["to_phase"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        done.first().unwrap(),
        &("advance".to_owned(), "expanded".to_owned())
    );
    assert_eq!(
        done.last().unwrap(),
        &("advance".to_owned(), "contracted".to_owned())
    );
    assert!(done.contains(&("rollback".to_owned(), "read_new".to_owned())));
    assert!(done.contains(&("rollback".to_owned(), "new_only".to_owned())));
    assert!(history.iter().any(|h| h["outcome"] == "refused"));
    assert!(
        history
            .iter()
            .all(|h| h["actor"] == format!("api@{}", a.instance_id)
                || h["actor"] == format!("api@{}", b.instance_id))
    );
}

#[actix_web::test]
async fn the_admin_api_needs_the_token() {
    let app = TestApp::spawn().await;
    let no_token = app
        .client
        .get(app.url("/api/admin/migration"))
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    assert_eq!(no_token.headers()["www-authenticate"], "Bearer");
    let wrong = app
        .client
        .post(app.url("/api/admin/migration/advance"))
        .bearer_auth("test-admin-tokem")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(app.phase(), Phase::Baseline, "nothing moved");
    let status = app.admin_status().await;
    assert_eq!(status["phase"], "baseline");
    assert_eq!(status["next"]["phase"], "expanded");
    assert_eq!(status["backfill"]["state"], "idle");
    assert_eq!(status["instances"][0]["id"], app.instance_id.as_str());
}

/// While the fleet moves to new_only, an instance still in read_new serves rows that a
/// new_only instance already wrote without `full_name`.
#[actix_web::test]
async fn an_instance_still_in_read_new_serves_rows_written_without_full_name() {
    let app = TestApp::spawn().await;
    app.walk_to(Phase::NewOnly).await;
    let created = app
        .post_json(
            "/api/v2/users",
            &json!({ "first_name": "Mary Ann", "last_name": "Smith", "email": "mas@example.com" }),
        )
        .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();

    let (late, handle) = TestApp::spawn_stuck(Arc::clone(&app.db), Phase::ReadNew).await;
    let get = |path: String| app.client.get(format!("{late}{path}")).send();
    let v1 = get(format!("/api/v1/users/{id}")).await.unwrap();
    assert_eq!(v1.status(), 200);
    assert_eq!(
        v1.json::<Value>().await.unwrap()["full_name"],
        "Mary Ann Smith"
    );
    let v2 = get(format!("/api/v2/users/{id}")).await.unwrap();
    assert_eq!(v2.status(), 200);
    assert_eq!(v2.json::<Value>().await.unwrap()["first_name"], "Mary Ann");
    let list = get("/api/v1/users".to_owned()).await.unwrap();
    assert_eq!(list.status(), 200);
    let page = get(format!("/v1/users/{id}/edit")).await.unwrap();
    assert_eq!(page.status(), 200);
    // An email-only change returns the row as stored, full_name still absent.
    let renamed = app
        .client
        .put(format!("{late}/api/v2/users/{id}"))
        .json(&json!({ "email": "mary@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    handle.stop(false).await;
}

/// Found by `zdm demo --chaos --seed 18 --pooler`: rolled back from new_only (the reverse
/// backfill) down to dual_write, the advance to backfilled was refused with "the backfill is
/// done … run it to the end". The forward backfill must indeed run again (the gate asks for
/// it), and the refusal now says so; once it has run, the step is taken.
#[actix_web::test]
async fn after_a_rollback_through_the_reverse_backfill_the_gate_asks_for_the_forward_one() {
    let a = TestApp::spawn().await;
    a.seed(200);
    a.walk_to(Phase::NewOnly).await;
    for to in [Phase::ReadNew, Phase::Backfilled, Phase::DualWrite] {
        step(&[&a], a.rollback().await, to).await;
    }
    let refused = a.advance(None).await;
    assert_eq!(refused.status(), 409);
    let body = refused.text().await.unwrap();
    assert!(
        body.contains("the last backfill is the reverse one")
            && body.contains("run the forward backfill again"),
        "{body}"
    );
    a.backfill_to_the_end().await;
    step(&[&a], a.advance(None).await, Phase::Backfilled).await;
}
