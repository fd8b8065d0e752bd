//! A failover underneath the app, each time on a private cluster of the test's own: a primary
//! with a synchronous streaming standby, the app connected through a libpq multi-host URL
//! (`target_session_attrs=read-write`), the primary's postmaster killed with SIGKILL and the
//! standby promoted with `pg_ctl promote`, as an HA manager would. Each test runs twice: with
//! the app on the multi-host URL, and with its requests through a PgBouncer in transaction
//! mode (two server connections) in front of the primary, which the test, as the HA
//! manager's hook does, points at the new primary once it is promoted; the work that needs a
//! session goes direct, on the multi-host URL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use zdm::domain::Phase;
use zdm::local_pg::{LocalPg, ScratchCluster};
use zdm::migration::{backfill, schema_migrations, verify};
use zdm::pgbouncer::{PgBouncer, Upstream};

use crate::helpers::{ADMIN_TOKEN, eventually, scratch_cluster};
use crate::writers::{
    Stored, Tally, admin_status, answer_of, assert_every_acknowledged_write_is_there, start_writers,
};

/// A primary with a synchronous standby, a database `zdm` seeded with `users` rows in
/// baseline, and the multi-host URL that reaches whichever of the two accepts writes.
fn cluster_with_a_synchronous_standby(
    name: &str,
    users: u64,
) -> (ScratchCluster, LocalPg, LocalPg, String) {
    let mut cluster = scratch_cluster(name);
    let primary = cluster.primary().unwrap();
    primary.create_database_if_missing("zdm").unwrap();
    {
        let mut conn = PgConnection::establish(&primary.url("zdm")).unwrap();
        schema_migrations::run_infrastructure_migrations(&mut conn).unwrap();
        zdm::migration::state::set_contract_quiet_secs(&mut conn, 0).unwrap();
        zdm::tools::seed::seed_users(&mut conn, Phase::Baseline, users, 11, |_| {}).unwrap();
    }
    let standby = cluster.synchronous_standby(&primary).unwrap();
    let url = LocalPg::multi_host_url(&[&primary, &standby], "zdm");
    (cluster, primary, standby, url)
}

/// Acknowledged new users: email and name. A rename can be overwritten by a later one; a
/// new user lost in a failover stays lost, so these show any loss.
type Created = Arc<Mutex<Vec<(String, Stored)>>>;

/// A client that signs up new users, through v1 and v2 in turn, until `stop`, recording the
/// ones answered 201 in `created` and every answer in `tally`.
async fn creator(
    address: String,
    tag: usize,
    stop: Arc<AtomicBool>,
    created: Created,
    tally: Arc<Tally>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let email = format!("new{tag}.{n}@example.com");
        let (path, body, stored) = if n % 2 == 0 {
            let full = format!("Signup{tag} N{n} Failover");
            (
                format!("{address}/api/v1/users"),
                json!({ "full_name": full, "email": email }),
                (
                    full,
                    Some(format!("Signup{tag}")),
                    Some(format!("N{n} Failover")),
                ),
            )
        } else {
            let (first, last) = (format!("Mary Ann{n}"), format!("S{tag}"));
            (
                format!("{address}/api/v2/users"),
                json!({ "first_name": first, "last_name": last, "email": email }),
                (format!("{first} {last}"), Some(first), Some(last)),
            )
        };
        let status = client
            .post(&path)
            .json(&body)
            .send()
            .await
            .map(|r| answer_of(&r, &tally));
        match status {
            Ok(201) => {
                created.lock().unwrap().push((email, stored));
                tally.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
            Ok(503) => {
                tally.unavailable.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => tally.others.lock().unwrap().push(format!("{other} {path}")),
            Err(_) => {
                tally.no_answer.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !matches!(status, Ok(201)) {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every acknowledged new user is on `conn`'s server with its name.
fn assert_every_acknowledged_user_is_there(conn: &mut PgConnection, created: &[(String, Stored)]) {
    use zdm::schema::expanded::users;
    let emails: Vec<&str> = created.iter().map(|(email, _)| email.as_str()).collect();
    let stored: HashMap<String, Stored> = users::table
        .filter(users::email.eq_any(&emails))
        .select((
            users::email,
            (users::full_name, users::first_name, users::last_name),
        ))
        .load::<(String, Stored)>(conn)
        .unwrap()
        .into_iter()
        .collect();
    let lost: Vec<&str> = created
        .iter()
        .filter(|(email, name)| stored.get(email) != Some(name))
        .map(|(email, _)| email.as_str())
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged new users are not on the new primary as acknowledged: {lost:?}",
        lost.len(),
        created.len()
    );
}

/// A PgBouncer in transaction mode in front of `primary`, with two server connections, in a
/// folder named after the test.
fn pooler_in_front_of(primary: &LocalPg, name: &str) -> PgBouncer {
    let (upstream, user) = Upstream::from_url(&primary.url("zdm"), 2).unwrap();
    let dir = std::env::temp_dir().join(format!("zdm-pgb-{name}-{}", std::process::id()));
    PgBouncer::start(&dir, &upstream, &[&user]).expect("starting pgbouncer")
}

/// An instance walked to dual_write: on `url` (the multi-host URL), or with its requests
/// through `pooler`. Its address, its follower (the instance lives as long as it does) and
/// a connection of the test's own on `url`.
async fn served_in_dual_write(
    url: &str,
    pooler: Option<&PgBouncer>,
) -> (
    String,
    zdm::migration::follower::PhaseFollower,
    PgConnection,
) {
    let (address, follower, _) = match pooler {
        Some(pooler) => {
            let user = zdm::db::PgUrl::parse(url)
                .param("user")
                .expect("the URL names its user");
            crate::helpers::serve_pooled(&pooler.url("zdm", &user), url, 4)
        }
        None => crate::helpers::serve_with(
            url,
            zdm::db::PoolLimits::with_size(4),
            Default::default(),
            Vec::new(),
        ),
    };
    let mut conn = PgConnection::establish(url).unwrap();
    crate::helpers::advance_served(&mut conn, &follower, Phase::DualWrite).await;
    (address, follower, conn)
}

/// Promotes the standby, as an HA manager would, and points the pooler (if any) at it, as
/// the HA manager's hook would.
async fn fail_over_to(standby: &LocalPg, pooler: Option<&PgBouncer>) {
    promote(standby).await;
    if let Some(pooler) = pooler {
        pooler.retarget(&standby.url("zdm")).unwrap();
    }
}

/// Kills the primary's postmaster with SIGKILL (its server processes go down with it,
/// nothing is flushed) and waits until it is gone; returns when it was killed.
async fn kill_the_primary(primary: &LocalPg) -> Instant {
    let killed = Instant::now();
    let primary = primary.clone();
    actix_web::rt::task::spawn_blocking(move || primary.kill_postmaster())
        .await
        .unwrap()
        .unwrap();
    killed
}

/// The standby's WAL receiver, stopped (SIGSTOP) until this value goes: the standby neither
/// takes nor confirms the primary's WAL. Let go (SIGCONT) also when a test fails, so that
/// nothing waits for it forever.
struct FrozenReceiver(Pid);

impl FrozenReceiver {
    fn freeze(standby: &LocalPg) -> Self {
        let receiver = Pid::from_raw(wal_receiver_pid(standby));
        kill(receiver, Signal::SIGSTOP).unwrap();
        FrozenReceiver(receiver)
    }

    /// Kills it: what it received but had not flushed is gone, as on a cut link.
    fn cut(self) {
        kill(self.0, Signal::SIGKILL).unwrap();
    }
}

impl Drop for FrozenReceiver {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// The standby's WAL receiver, the process that takes the primary's WAL and confirms it.
fn wal_receiver_pid(standby: &LocalPg) -> i32 {
    let mut conn = PgConnection::establish(&standby.url("zdm")).unwrap();
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
        "(SELECT pid FROM pg_stat_wal_receiver)",
    ))
    .get_result(&mut conn)
    .unwrap()
}

/// Promotes the standby, as an HA manager would.
async fn promote(standby: &LocalPg) {
    let standby = standby.clone();
    actix_web::rt::task::spawn_blocking(move || standby.promote())
        .await
        .unwrap()
        .unwrap();
}

#[actix_web::test]
async fn a_failover_mid_backfill_loses_no_acknowledged_write_and_the_backfill_finishes_by_itself() {
    failover_mid_backfill("failover", false).await;
}

#[actix_web::test]
async fn through_a_pooler_a_failover_mid_backfill_loses_no_acknowledged_write() {
    failover_mid_backfill("failover-pooled", true).await;
}

async fn failover_mid_backfill(name: &str, through_pooler: bool) {
    let _ = env_logger::builder().is_test(true).try_init();
    let rows = 100_000;
    let (_cluster, primary, standby, url) = cluster_with_a_synchronous_standby(name, rows);
    let pooler = through_pooler.then(|| pooler_in_front_of(&primary, name));
    let (address, _follower, conn) = served_in_dual_write(&url, pooler.as_ref()).await;
    drop(conn);
    let client = reqwest::Client::new();

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(HashMap::new()));
    let tally = Arc::new(Tally::default());
    let mut writers = start_writers(&address, 3, &stop, &log, &tally, "Failover");
    let created: Created = Default::default();
    writers.push(actix_web::rt::spawn(creator(
        address.clone(),
        1,
        Arc::clone(&stop),
        Arc::clone(&created),
        Arc::clone(&tally),
    )));

    let started = client
        .post(format!("{address}/api/admin/backfill/start"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "batch_size": 500, "sleep_ms": 20, "batch_target_ms": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let primary_url = primary.url("zdm");
    let mut before = None;
    eventually("20 batches", || {
        let mut conn = PgConnection::establish(&primary_url).unwrap();
        let now = backfill::status(&mut conn).unwrap();
        let enough = now.batches >= 20;
        before = Some(now);
        enough
    })
    .await;
    let before = before.unwrap();
    assert!(
        before.last_id < before.max_id,
        "the backfill is mid-way when the primary dies: {before:?}"
    );
    assert!(
        tally.acknowledged.load(Ordering::Relaxed) > 0,
        "the clients write"
    );

    // The standby stops confirming (its WAL receiver is frozen): a synchronous commit waits,
    // committed on the primary but not acknowledged, until the primary dies under it. (An
    // asynchronous standby would let the primary acknowledge writes it never receives: the
    // wait ends after 200 of them, and the check below finds them lost.)
    let receiver = FrozenReceiver::freeze(&standby);
    let acknowledged_before_the_stall = tally.acknowledged.load(Ordering::Relaxed);
    let mut watch = PgConnection::establish(&primary_url).unwrap();
    eventually("a write waiting for the standby's confirmation", || {
        tally.acknowledged.load(Ordering::Relaxed) > acknowledged_before_the_stall + 200
            || diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
                "EXISTS (SELECT FROM pg_stat_activity WHERE wait_event = 'SyncRep' \
                 AND datname = current_database())",
            ))
            .get_result(&mut watch)
            .unwrap()
    })
    .await;
    drop(watch);
    let acknowledged_in_the_stall =
        tally.acknowledged.load(Ordering::Relaxed) - acknowledged_before_the_stall;
    let killed = kill_the_primary(&primary).await;
    receiver.cut();
    // The HA manager notices: by then the clients have met the outage.
    eventually("a client to meet the outage", || {
        tally.unavailable.load(Ordering::Relaxed) + tally.no_answer.load(Ordering::Relaxed) > 0
    })
    .await;
    fail_over_to(&standby, pooler.as_ref()).await;
    let without_primary = killed.elapsed();
    let acknowledged_at_promotion = tally.acknowledged.load(Ordering::Relaxed);

    // Nobody presses anything: the runner reconnects to the new primary and finishes.
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        assert!(
            Instant::now() < deadline,
            "the backfill did not finish by itself"
        );
        if let Some(now) = admin_status(&client, &address).await {
            assert_ne!(now["backfill"]["state"], "failed", "{now}");
            if now["backfill"]["state"] == "done" {
                break now["backfill"].clone();
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    eventually("the clients to write again on the new primary", || {
        tally.acknowledged.load(Ordering::Relaxed) > acknowledged_at_promotion + 100
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    println!(
        "failover: {} writes acknowledged ({acknowledged_in_the_stall} while the standby was frozen), {} × 503, {:.1} s without a primary; backfill resumed from id {} of {}",
        tally.acknowledged.load(Ordering::Relaxed),
        tally.unavailable.load(Ordering::Relaxed),
        without_primary.as_secs_f64(),
        before.last_id,
        before.max_id
    );
    let others = tally.others.lock().unwrap().clone();
    assert!(
        others.is_empty(),
        "answers other than 200 and 503: {others:?}"
    );
    assert_eq!(
        tally
            .unavailable_without_retry_after
            .load(Ordering::Relaxed),
        0,
        "503s without Retry-After"
    );
    assert_eq!(
        tally.no_answer.load(Ordering::Relaxed),
        0,
        "requests left without an answer"
    );
    assert!(
        done["rows_total"].as_u64().unwrap() >= rows,
        "the backfill went over every seeded row: {done}"
    );

    // On the new primary itself: every acknowledged write, and the names agree everywhere.
    let mut conn = PgConnection::establish(&standby.url("zdm")).unwrap();
    assert_every_acknowledged_write_is_there(&mut conn, &log.lock().unwrap());
    assert_every_acknowledged_user_is_there(&mut conn, &created.lock().unwrap());
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );

    // And the walk goes on from there.
    let advanced = client
        .post(format!("{address}/api/admin/migration/advance"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "from": "dual_write" }))
        .send()
        .await
        .unwrap();
    let status = advanced.status();
    assert_eq!(status, 200, "{}", advanced.text().await.unwrap_or_default());
    assert_eq!(
        zdm::migration::state::current_phase(&mut conn).unwrap(),
        Phase::Backfilled
    );
}

#[actix_web::test]
async fn a_step_in_flight_when_the_primary_dies_committed_on_the_new_primary_or_not_at_all() {
    step_in_flight("failover-step", StepBy::Api).await;
}

#[actix_web::test]
async fn through_a_pooler_a_step_in_flight_when_the_primary_dies_committed_or_not_at_all() {
    step_in_flight("failover-step-pooled", StepBy::ApiThroughPooler).await;
}

#[actix_web::test]
async fn a_cli_step_in_flight_when_the_primary_dies_is_settled_on_the_new_primary() {
    step_in_flight("failover-step-cli", StepBy::Cli).await;
}

/// Who takes the step the primary dies under.
#[derive(Clone, Copy, PartialEq)]
enum StepBy {
    /// The admin API of an instance on the multi-host URL...
    Api,
    /// ... of one whose requests go through a pooler...
    ApiThroughPooler,
    /// ... or `zdm migrate advance` on the multi-host URL.
    Cli,
}

/// The step to backfilled, as `by` takes it: whether it succeeded, and what it answered.
fn start_step(
    by: StepBy,
    address: &str,
    url: &str,
) -> actix_web::rt::task::JoinHandle<(bool, String)> {
    let (address, url) = (address.to_owned(), url.to_owned());
    if by == StepBy::Cli {
        return actix_web::rt::task::spawn_blocking(move || {
            let out = crate::helpers::zdm_command()
                .env("DATABASE_URL", &url)
                .args(["migrate", "advance", "--from", "dual_write"])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            (out.status.success(), text)
        });
    }
    actix_web::rt::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("{address}/api/admin/migration/advance"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "from": "dual_write" }))
            .timeout(Duration::from_secs(120))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        // Not committed: a 503 (never a 500).
        assert!(matches!(status, 200 | 503), "the step answered {status}");
        (status == 200, response.text().await.unwrap())
    })
}

async fn step_in_flight(name: &str, by: StepBy) {
    let _ = env_logger::builder().is_test(true).try_init();
    let (_cluster, primary, standby, url) = cluster_with_a_synchronous_standby(name, 20_000);
    let pooler = (by == StepBy::ApiThroughPooler).then(|| pooler_in_front_of(&primary, name));
    let (address, follower, mut conn) = served_in_dual_write(&url, pooler.as_ref()).await;
    backfill::run(&mut conn, backfill::Direction::Forward, |_| {}).unwrap();
    drop(conn);

    // The step to backfilled starts while the standby does not confirm: its first part
    // commits on the primary and waits for the standby when the primary dies.
    let receiver = FrozenReceiver::freeze(&standby);
    let step = start_step(by, &address, &url);
    let mut watch = PgConnection::establish(&primary.url("zdm")).unwrap();
    eventually("the step waiting for the standby's confirmation", || {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
            // (pg_stat_activity keeps the first kilobyte of the step's file: its header)
            "EXISTS (SELECT FROM pg_stat_activity WHERE wait_event = 'SyncRep' \
             AND query LIKE '%Step 3, dual_write → backfilled%')",
        ))
        .get_result(&mut watch)
        .unwrap()
    })
    .await;
    drop(watch);
    kill_the_primary(&primary).await;
    receiver.cut();
    fail_over_to(&standby, pooler.as_ref()).await;

    // Not committed on the new primary: the step says so (the API with a 503, never a
    // 500), and the history of the new primary says it failed and why.
    let (succeeded, answer) = step.await.unwrap();
    assert!(!succeeded, "{answer}");
    if by == StepBy::Cli {
        assert!(
            answer.contains("connection to the database was lost"),
            "the command says its connection was lost: {answer}"
        );
    }
    let mut conn = PgConnection::establish(&standby.url("zdm")).unwrap();
    assert_eq!(
        zdm::migration::state::current_phase(&mut conn).unwrap(),
        Phase::DualWrite
    );
    let last = zdm::migration::state::history(&mut conn, 1)
        .unwrap()
        .remove(0);
    assert_eq!(
        (
            last.action.as_str(),
            last.from_phase.as_str(),
            last.to_phase.as_str(),
            last.outcome.as_str()
        ),
        ("advance", "dual_write", "backfilled", "failed"),
        "{last:?}"
    );
    let detail = last.detail.unwrap_or_default();
    assert!(
        detail.contains("connection to the database was lost")
            && detail.contains("the phase is dual_write"),
        "{detail}"
    );

    // A retry takes the step on the new primary, and a rollback undoes it.
    let client = reqwest::Client::new();
    for (path, from, to) in [
        ("advance", "dual_write", Phase::Backfilled),
        ("rollback", "backfilled", Phase::DualWrite),
    ] {
        let response = client
            .post(format!("{address}/api/admin/migration/{path}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&json!({ "from": from }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        assert_eq!(
            status,
            200,
            "{path}: {}",
            response.text().await.unwrap_or_default()
        );
        assert_eq!(zdm::migration::state::current_phase(&mut conn).unwrap(), to);
        crate::helpers::wait_for_acknowledged(&mut conn, &follower, to).await;
    }
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}
