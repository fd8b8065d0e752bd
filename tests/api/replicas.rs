//! The backfill against a real streaming replica: without the throttle its replay lag runs
//! away, with it the lag stays near the limit, and a replica that stops makes the backfill
//! wait (in the state `throttled`) instead of failing.

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use zdm::domain::Phase;
use zdm::local_pg::{LocalPg, ScratchCluster};
use zdm::migration::backfill::{self, BackfillState, Direction, Throttle};
use zdm::migration::follower::PhaseFollower;
use zdm::migration::{schema_migrations, verify};
use zdm::tools::bench::replicas;

use crate::helpers::{WAIT, scratch_cluster, wait_for};

/// A scratch primary and a streaming replica that applies WAL one second late: like one
/// that is far away, or busy.
fn with_slow_replica(name: &str) -> (ScratchCluster, LocalPg, LocalPg) {
    let mut cluster = scratch_cluster(name);
    let primary = cluster.primary().unwrap();
    let replica = cluster.replica(&primary).unwrap();
    replicas::delay_replay(&replica, 1000).unwrap();
    (cluster, primary, replica)
}

/// An instance serving `app_url` whose user reads may go to `replica`, returned once the
/// replica has replayed everything the primary (`conn`) has written so far.
async fn serve_reading_from(
    app_url: &str,
    replica: &LocalPg,
    conn: &mut PgConnection,
) -> (String, PhaseFollower, zdm::replicas::ReadReplicas) {
    let limits = zdm::db::PoolLimits::with_size(4);
    let readers = zdm::replicas::ReadReplicas::start(&[replica.url("zdm")], limits);
    let (address, follower, _) =
        crate::helpers::serve_with(app_url, limits, readers.clone(), Vec::new());
    let everything = zdm::replicas::current_lsn(conn).unwrap();
    crate::helpers::eventually("the replica to catch up", || {
        readers.pick(everything).is_some()
    })
    .await;
    (address, follower, readers)
}

#[test]
fn the_backfill_keeps_a_slow_replica_within_its_lag_limit_and_waits_for_a_stopped_one() {
    let (_cluster, primary, replica) = with_slow_replica("throttle");

    // The figures `zdm bench replicas` prints, measured by the same code.
    let opts = replicas::ReplicaBenchOptions::default();
    let limit = opts.max_lag_bytes;
    let figures = replicas::measure(&primary, &replica, &opts, |line| println!("{line}")).unwrap();
    let (free, throttled) = (
        figures.without_throttle.largest_lag_bytes,
        figures.with_throttle.largest_lag_bytes,
    );
    assert!(
        free > limit,
        "without the throttle the lag exceeds the limit: {free}"
    );
    // The throttle checks before each batch, so the lag may pass the limit by one batch's WAL.
    assert!(
        throttled < limit + 2 * 1024 * 1024,
        "with it the lag stays near the limit: {throttled}"
    );
    assert!(figures.with_throttle.waits > 0, "the throttle waited");
    assert_eq!(figures.with_throttle.rows_updated, opts.rows as i64);

    // A replica that stops mid-backfill: the backfill waits, says why, and finishes once the
    // replica is back.
    let third = replicas::prepared_database(&primary, "third", 30_000).unwrap();
    let worker = {
        let (url, replica_url) = (third.clone(), replica.url("third"));
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            backfill::set_knobs(&mut conn, backfill::Knobs::fixed(500, 10)).unwrap();
            backfill::run_throttled(
                &mut conn,
                Direction::Forward,
                &mut Throttle::new(vec![replica_url], limit),
                |_| {},
            )
        })
    };
    let mut conn = PgConnection::establish(&third).unwrap();
    let started = Instant::now();
    while backfill::status(&mut conn).unwrap().batches < 3 {
        assert!(started.elapsed() < Duration::from_secs(30), "no batches");
        std::thread::sleep(Duration::from_millis(20));
    }
    replica.stop().unwrap();
    // It may have been waiting for the replica's lag already: wait for the new reason.
    let stopped = Instant::now();
    let waiting = loop {
        let status = backfill::status(&mut conn).unwrap();
        let reason = status.throttle_reason.as_deref().unwrap_or_default();
        if status.state == BackfillState::Throttled && reason.contains("cannot be reached") {
            break status;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(30),
            "the backfill waits for the stopped replica: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        backfill::status(&mut conn).unwrap().last_id,
        waiting.last_id,
        "no batch while it waits"
    );
    primary.ensure_replica(1).unwrap();
    let done = worker.join().unwrap().unwrap();
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!(done.throttle_reason, None);
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}

/// The `zdm_lsn` cookie a write answer sets.
fn position_cookie(response: &reqwest::Response) -> String {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("zdm_lsn="))
        .and_then(|v| v.split(';').next())
        .expect("a write answer carries the write position")
        .to_owned()
}

#[actix_web::test]
async fn reads_go_to_a_replica_that_is_recent_enough_and_a_client_reads_its_own_writes() {
    let (_cluster, primary, replica) = with_slow_replica("reads");
    primary.create_database_if_missing("zdm").unwrap();
    let url = primary.url("zdm");
    let mut conn = PgConnection::establish(&url).unwrap();
    schema_migrations::run_infrastructure_migrations(&mut conn).unwrap();

    // Until the replica has replayed the schema and this instance's phase, every read goes
    // to the primary.
    let (address, follower, _readers) = serve_reading_from(&url, &replica, &mut conn).await;
    let client = reqwest::Client::new();
    // The replica stops replaying here, so the write below stays unreplayed for as long as
    // the test needs it to, however slow the machine (its 1 s delay alone is a race).
    let mut replica_conn = PgConnection::establish(&replica.url("postgres")).unwrap();
    replica_conn
        .batch_execute("SELECT pg_wal_replay_pause()")
        .unwrap();

    let created = client
        .post(format!("{address}/api/v1/users"))
        .json(&serde_json::json!({ "full_name": "Ada Lovelace", "email": "ada@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let cookie = position_cookie(&created);
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    let path = format!("{address}/api/v1/users/{id}");

    // The writer reads its own write at once (the replica has not replayed it: the primary).
    let own = client
        .get(&path)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200, "read-your-writes");
    // Another client is served by the replica, which has not replayed the write yet...
    assert_eq!(
        client.get(&path).send().await.unwrap().status(),
        404,
        "served by the lagging replica"
    );
    // ...and sees it once the replica has.
    replica_conn
        .batch_execute("SELECT pg_wal_replay_resume()")
        .unwrap();
    wait_for(
        "other clients to see the write after replay",
        WAIT,
        async || match client.get(&path).send().await.unwrap().status() {
            reqwest::StatusCode::OK => Ok(()),
            other => Err(other.to_string()),
        },
    )
    .await;

    // A phase switch is read from the primary until the replica has the new schema: v2 reads
    // (first_name, last_name) right after dual_write never hit a replica without the columns.
    crate::helpers::advance_served(&mut conn, &follower, Phase::DualWrite).await;
    for _ in 0..20 {
        let v2 = client
            .get(format!("{address}/api/v2/users/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(v2.status(), 200);
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[actix_web::test]
async fn a_throttled_backfill_says_so_in_the_api_the_metrics_and_the_dashboard() {
    let db = crate::helpers::TestDb::migrated();
    // A replica that is not there: the backfill must wait for it, and say why.
    let gone = "postgres:///zdm?host=/nonexistent-zdm-socket&port=5432&user=postgres".to_owned();
    let (address, follower, _) = crate::helpers::serve_with(
        &db.url,
        zdm::db::PoolLimits::with_size(4),
        Default::default(),
        vec![gone],
    );
    let mut conn = db.conn();
    zdm::tools::seed::seed_users(&mut conn, Phase::Baseline, 2000, 9, |_| {}).unwrap();
    crate::helpers::advance_served(&mut conn, &follower, Phase::DualWrite).await;
    let client = reqwest::Client::new();
    let admin = |path: &str| {
        client
            .post(format!("{address}{path}"))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
    };
    assert_eq!(
        admin("/api/admin/backfill/start")
            .send()
            .await
            .unwrap()
            .status(),
        202
    );
    let mut status = serde_json::Value::Null;
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(30) {
        status = client
            .get(format!("{address}/api/admin/migration"))
            .bearer_auth(crate::helpers::ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if status["backfill"]["state"] == "throttled" {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status["backfill"]["state"], "throttled", "{status}");
    assert_eq!(
        status["backfill"]["throttle_reason"],
        "replica 1 cannot be reached"
    );
    assert_eq!(
        status["backfill"]["rows_done"], 0,
        "no batch runs while it waits"
    );
    let metrics = client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("zdm_backfill_state{state=\"throttled\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("zdm_backfill_replica_lag_bytes"));
    // The dashboard shows it too.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = no_redirects
        .post(format!("{address}/admin/login"))
        .form(&[("token", crate::helpers::ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = no_redirects
        .get(format!("{address}/admin"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("Waiting for the replicas: replica 1 cannot be reached"),
        "{page}"
    );
    assert!(
        admin("/api/admin/backfill/cancel")
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
}

#[actix_web::test]
async fn a_write_whose_position_cannot_be_read_sends_its_clients_reads_to_the_primary() {
    let (_cluster, primary, replica) = with_slow_replica("unknown-position");
    primary.create_database_if_missing("zdm").unwrap();
    let url = primary.url("zdm");
    let mut conn = PgConnection::establish(&url).unwrap();
    schema_migrations::run_infrastructure_migrations(&mut conn).unwrap();
    // The app under a role of its own, not a superuser, so that a right can be taken away.
    diesel::connection::SimpleConnection::batch_execute(
        &mut conn,
        "CREATE ROLE zdm_app LOGIN;
         GRANT ALL ON ALL TABLES IN SCHEMA public TO zdm_app;
         GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO zdm_app;",
    )
    .unwrap();
    let app_url = url.replace("user=postgres", "user=zdm_app");
    let (address, _follower, _readers) = serve_reading_from(&app_url, &replica, &mut conn).await;

    // From now on the app cannot read the primary's WAL position after a write.
    diesel::connection::SimpleConnection::batch_execute(
        &mut conn,
        "REVOKE EXECUTE ON FUNCTION pg_current_wal_insert_lsn() FROM PUBLIC",
    )
    .unwrap();
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{address}/api/v1/users"))
        .json(&serde_json::json!({ "full_name": "Ada Lovelace", "email": "ada@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let cookie = position_cookie(&created);
    assert_eq!(
        cookie,
        format!("zdm_lsn={}", zdm::replicas::UNKNOWN_POSITION),
        "a position no replica reaches"
    );
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    // The writer's read goes to the primary (the replica replays a second late) and finds it.
    let own = client
        .get(format!("{address}/api/v1/users/{id}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(
        own.status(),
        200,
        "read-your-writes without a known position"
    );
}

/// Under `synchronous_commit = off` (a database's or a role's setting) a write is answered
/// before the WAL writer has written its commit: the position its answer carries must be
/// past that commit, or a replica that has replayed up to it still lacks the write, and the
/// writer's next read there misses it.
#[actix_web::test]
async fn a_replica_past_a_writes_position_has_the_write_under_asynchronous_commit() {
    let mut cluster = scratch_cluster("async-commit");
    let primary = cluster.primary().unwrap();
    let replica = cluster.replica(&primary).unwrap();
    primary.create_database_if_missing("zdm").unwrap();
    let url = primary.url("zdm");
    let mut conn = PgConnection::establish(&url).unwrap();
    schema_migrations::run_infrastructure_migrations(&mut conn).unwrap();
    // The WAL writer wakes at most every 10 s, so an asynchronous commit waits that long to
    // be written (unless a page of WAL fills first).
    for statement in [
        "ALTER DATABASE zdm SET synchronous_commit = off",
        "ALTER SYSTEM SET wal_writer_delay = '10s'",
        "SELECT pg_reload_conf()",
    ] {
        conn.batch_execute(statement).unwrap();
    }
    let (address, _follower, readers) = serve_reading_from(&url, &replica, &mut conn).await;
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{address}/api/v1/users"))
        .json(&serde_json::json!({ "full_name": "Ada Lovelace", "email": "ada@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let cookie = position_cookie(&created);
    let position: u64 = cookie.trim_start_matches("zdm_lsn=").parse().unwrap();
    let id = created.json::<serde_json::Value>().await.unwrap()["id"]
        .as_i64()
        .unwrap();
    crate::helpers::eventually("the replica to replay past the write's position", || {
        readers.pick(position).is_some()
    })
    .await;
    let mut on_replica = PgConnection::establish(&replica.url("zdm")).unwrap();
    let there: i64 = zdm::schema::v1::users::table
        .filter(zdm::schema::v1::users::id.eq(id))
        .count()
        .get_result(&mut on_replica)
        .unwrap();
    assert_eq!(there, 1, "the replica past {position} lacks the write");
    // The writer reads it (wherever the read goes).
    let own = client
        .get(format!("{address}/api/v1/users/{id}"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(own.status(), 200);
}
