//! The backfill against a database that goes away under it, each time on a private cluster of
//! the test's own: PostgreSQL's postmaster killed with SIGKILL mid-backfill while clients
//! write, then restarted; and a database that stays away longer than the backfill waits.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::json;
use zdm::domain::Phase;
use zdm::local_pg::LocalPg;
use zdm::migration::backfill::{self, BackfillError, BackfillState, Direction, RideOut, Throttle};
use zdm::migration::{schema_migrations, verify};

use crate::helpers::{ADMIN_TOKEN, scratch_cluster, try_backfill_runner_pids};
use crate::writers::{
    Tally, admin_status, assert_every_acknowledged_write_is_there, start_writers,
};

/// Starts the cluster under `base` again after a crash. PostgreSQL refuses to start while
/// processes of the killed server still hold its shared memory (they notice the postmaster is
/// gone and exit shortly), so this tries until it starts, for up to 60 s.
async fn restart(base: PathBuf) -> LocalPg {
    actix_web::rt::task::spawn_blocking(move || {
        let started = Instant::now();
        loop {
            match LocalPg::ensure_running(&base) {
                Ok(pg) => return pg,
                Err(e) => assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "PostgreSQL did not start again: {e}"
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap()
}

/// A seeded database in dual_write on the scratch cluster `pg`, served by a real app.
async fn served_in_dual_write(
    pg: &LocalPg,
    users: u64,
) -> (String, zdm::migration::follower::PhaseFollower, String) {
    pg.create_database_if_missing("zdm").unwrap();
    let url = pg.url("zdm");
    let mut conn = PgConnection::establish(&url).unwrap();
    schema_migrations::run_infrastructure_migrations(&mut conn).unwrap();
    zdm::tools::seed::seed_users(&mut conn, Phase::Baseline, users, 11, |_| {}).unwrap();
    let (address, follower, _) = crate::helpers::serve_with(
        &url,
        zdm::db::PoolLimits::with_size(4),
        Default::default(),
        Vec::new(),
    );
    crate::helpers::advance_served(&mut conn, &follower, Phase::DualWrite).await;
    (address, follower, url)
}

/// Whether a runner holds the backfill's lock, read on `conn` (reconnected to `url` when
/// needed); `None` while the database cannot be reached.
fn runner_holds_the_lock(conn: &mut Option<PgConnection>, url: &str) -> Option<bool> {
    if conn.is_none() {
        *conn = PgConnection::establish(url).ok();
    }
    match try_backfill_runner_pids(conn.as_mut()?) {
        Ok(pids) => Some(!pids.is_empty()),
        Err(_) => {
            *conn = None;
            None
        }
    }
}

#[actix_web::test]
async fn a_backfill_rides_out_a_postmaster_killed_with_sigkill_and_finishes_by_itself() {
    let _ = env_logger::builder().is_test(true).try_init();
    let cluster = scratch_cluster("backfill-crash");
    let pg = cluster.primary().unwrap();
    let rows = 60_000;
    let (address, _follower, url) = served_in_dual_write(&pg, rows).await;
    let client = reqwest::Client::new();
    let status = {
        let (client, address) = (client.clone(), address.clone());
        move || {
            let (client, address) = (client.clone(), address.clone());
            async move { Some(admin_status(&client, &address).await?["backfill"].clone()) }
        }
    };

    // Clients rename users of their own through both APIs the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(HashMap::new()));
    let tally = Arc::new(Tally::default());
    let writers = start_writers(&address, 4, &stop, &log, &tally, "Crash");
    // A watcher holds every status shown, by the API and by the same status function read
    // straight from the database (which sees the database back first), to whether a runner
    // held the lock just before and just after it.
    let monitor = {
        let (stop, url, status) = (Arc::clone(&stop), url.clone(), status.clone());
        actix_web::rt::spawn(async move {
            let mut conn = None;
            let mut lies = Vec::new();
            let mut states = Vec::<String>::new();
            while !stop.load(Ordering::Relaxed) {
                let before = runner_holds_the_lock(&mut conn, &url);
                let direct = conn
                    .as_mut()
                    .and_then(|c| backfill::status(c).ok())
                    .map(|s| format!("{} (read directly)", s.state));
                let api = status()
                    .await
                    .map(|s| format!("{} (API)", s["state"].as_str().unwrap_or_default()));
                let after = runner_holds_the_lock(&mut conn, &url);
                for shown in [direct, api].into_iter().flatten() {
                    let state = shown.split(' ').next().unwrap_or_default();
                    if matches!(state, "running" | "throttled")
                        && before == Some(false)
                        && after == Some(false)
                    {
                        lies.push(shown.clone());
                    }
                    if !states.contains(&shown) {
                        states.push(shown);
                    }
                }
                actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            }
            (lies, states)
        })
    };

    let started = client
        .post(format!("{address}/api/admin/backfill/start"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "batch_size": 500, "sleep_ms": 10, "batch_target_ms": 0 }))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), 202);
    let mut seen_before = 0;
    crate::helpers::eventually("20 batches", || {
        let mut conn = PgConnection::establish(&url).unwrap();
        let now = backfill::status(&mut conn).unwrap();
        seen_before = now.last_id;
        now.batches >= 20
    })
    .await;
    assert!(
        tally.acknowledged.load(Ordering::Relaxed) > 0,
        "the clients write"
    );

    // SIGKILL to the postmaster: its server processes go down with it, nothing is flushed.
    pg.kill_postmaster().unwrap();
    let acknowledged_before_restart = tally.acknowledged.load(Ordering::Relaxed);
    let pg = restart(cluster.base.clone()).await;
    assert!(pg.started_here, "the killed server was started again");

    // The first look, before the runner is likely back: the status is not `running` unless a
    // runner holds the lock.
    let mut conn = PgConnection::establish(&url).unwrap();
    let runner_before = !crate::helpers::backfill_runner_pids(&mut conn).is_empty();
    let first_look = backfill::status(&mut conn).unwrap();
    let runner_after = !crate::helpers::backfill_runner_pids(&mut conn).is_empty();
    assert!(
        runner_before || runner_after || first_look.state != BackfillState::Running,
        "no runner holds the lock, yet the status says running: {first_look:?}"
    );

    // A crash loses only whole batches, each with its checkpoint: every row up to the
    // checkpoint it recovered (of each range: one here) is filled, and no row is half-filled.
    let (recovered, unfilled, half_filled): (i64, i64, i64) = diesel::select(diesel::dsl::sql::<(
        diesel::sql_types::BigInt,
        diesel::sql_types::BigInt,
        diesel::sql_types::BigInt,
    )>(
        "(SELECT min(last_id) FROM zdm_backfill_ranges WHERE last_id < end_id), \
             (SELECT count(*) FROM users u JOIN zdm_backfill_ranges r \
                ON u.id > r.start_id AND u.id <= r.last_id \
                WHERE u.first_name IS NULL OR zdm_name_norm(u.full_name) \
                     IS DISTINCT FROM zdm_name_join(u.first_name, u.last_name)), \
             (SELECT count(*) FROM users WHERE (first_name IS NULL) <> (last_name IS NULL))",
    ))
    .get_result(&mut conn)
    .unwrap();
    println!("checkpoint: at least {seen_before} before the kill, {recovered} after the restart");
    assert!(recovered > 0, "batches committed before the crash survive");
    assert_eq!(
        unfilled, 0,
        "the recovered checkpoint claims only rows its batches filled"
    );
    assert_eq!(half_filled, 0, "no row is half-filled");

    // Nobody presses anything: the runner reconnects and finishes by itself.
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        assert!(
            Instant::now() < deadline,
            "the backfill did not finish by itself"
        );
        if let Some(now) = status().await {
            assert_ne!(now["state"], "failed", "{now}");
            if now["state"] == "done" {
                break now;
            }
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        tally.acknowledged.load(Ordering::Relaxed) > acknowledged_before_restart,
        "the clients wrote again after the restart"
    );
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let (lies, states) = monitor.await.unwrap();
    println!("backfill states shown: {states:?}");
    assert!(
        lies.is_empty(),
        "the status said running while no runner held the lock: {lies:?}"
    );
    assert_eq!(done["rows_total"], rows);
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );

    // Every answer was 200 or 503 (or none, while the database was gone), and every
    // acknowledged write is there (or one sent after it whose answer was lost).
    let others = tally.others.lock().unwrap().clone();
    assert!(others.is_empty(), "writes answered otherwise: {others:?}");
    assert_every_acknowledged_write_is_there(&mut conn, &log.lock().unwrap());
    drop(conn);
}

#[test]
fn a_backfill_gives_up_on_a_database_gone_longer_than_it_waits_and_resumes_later() {
    let _ = env_logger::builder().is_test(true).try_init();
    let cluster = scratch_cluster("backfill-gone");
    let pg = cluster.primary().unwrap();
    pg.create_database_if_missing("zdm").unwrap();
    let url = pg.url("zdm");
    let mut conn = PgConnection::establish(&url).unwrap();
    schema_migrations::run_infrastructure_migrations(&mut conn).unwrap();
    zdm::tools::seed::seed_users(&mut conn, Phase::Baseline, 20_000, 5, |_| {}).unwrap();
    while zdm::migration::state::current_phase(&mut conn).unwrap() < Phase::DualWrite {
        zdm::migration::runner::advance(&mut conn, "test", None).unwrap();
    }
    backfill::set_knobs(&mut conn, backfill::Knobs::fixed(200, 10)).unwrap();
    let (batches_tx, batches_rx) = std::sync::mpsc::channel();
    let runner = {
        let (url, first) = (url.clone(), PgConnection::establish(&url).unwrap());
        std::thread::spawn(move || {
            backfill::run_riding_out(
                first,
                &url,
                Direction::Forward,
                &mut Throttle::none(),
                &RideOut::new(Duration::from_secs(2)),
                |s| {
                    let _ = batches_tx.send(s.batches);
                },
            )
        })
    };
    while batches_rx.recv().unwrap() < 5 {}
    drop(conn);
    pg.stop().unwrap();

    // Gone for longer than the 2 s it waits: it gives up, saying why.
    let outcome = runner.join().unwrap();
    let Err(BackfillError::GaveUp { waited, .. }) = outcome else {
        panic!("it gave up: {outcome:?}");
    };
    assert!(waited >= Duration::from_secs(2), "{waited:?}");

    // Back later: with no runner holding the lock, the status is not `running`.
    let pg = LocalPg::ensure_running(Path::new(&cluster.base)).unwrap();
    let mut conn = PgConnection::establish(&pg.url("zdm")).unwrap();
    let after = backfill::status(&mut conn).unwrap();
    assert_eq!(after.state, BackfillState::Interrupted, "{after:?}");
    assert_eq!(after.error.as_deref(), Some(backfill::NO_RUNNER));
    assert!(
        after.last_id > 0 && after.last_id < after.max_id,
        "{after:?}"
    );
    let done = backfill::run(&mut conn, Direction::Forward, |_| {}).unwrap();
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}
