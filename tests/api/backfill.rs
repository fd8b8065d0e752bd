//! The backfill engine against real traffic, real crashes and real concurrency.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::ResponseError;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::{Value, json};
use zdm::domain::Phase;
use zdm::error::AppError;
use zdm::migration::backfill::{self, BackfillError, BackfillState, Direction};
use zdm::migration::control::ControlError;
use zdm::migration::verify;
use zdm::tools::bench::backfill as backfill_bench;

use crate::helpers::{MixedWriters, TestApp};

async fn status(app: &TestApp) -> Value {
    app.admin_status().await["backfill"].clone()
}

#[actix_web::test]
async fn concurrent_v1_and_v2_writers_racing_the_backfill_lose_nothing() {
    let app = TestApp::spawn().await;
    app.seed(20_000);
    app.walk_to(Phase::DualWrite).await;
    let response = app
        .admin_post(
            "/api/admin/backfill/start",
            json!({ "batch_size": 500, "sleep_ms": 5 }),
        )
        .await;
    assert_eq!(response.status(), 202);

    // Writers rename random seeded rows through both APIs while the backfill passes them.
    let mut writers = MixedWriters::new(7);
    loop {
        let running = status(&app).await["state"] == "running";
        writers.write_twenty(&app).await;
        if !running {
            break;
        }
    }
    assert!(writers.writes >= 40);
    let done = status(&app).await;
    assert_eq!(done["state"], "done");
    assert_eq!(done["rows_done"], 20_000);

    let mut conn = app.db.conn();
    let result = verify::verify(&mut conn, Phase::DualWrite).unwrap();
    assert_eq!(result.divergent, 0, "samples {:?}", result.sample_ids);
    writers.assert_intact(&app).await;
}

#[actix_web::test]
async fn a_backfill_killed_with_sigkill_resumes_from_its_checkpoint() {
    let app = TestApp::spawn().await;
    app.seed(60_000);
    app.walk_to(Phase::DualWrite).await;
    let mut child = crate::helpers::zdm_command()
        .args(["backfill", "--batch-size", "1000", "--sleep-ms", "30"])
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let before_kill = app
        .wait_for_backfill("the child to be half-way", |s| {
            s["rows_done"].as_i64().unwrap_or(0) >= 10_000
        })
        .await;
    assert_eq!(before_kill["state"], "running");
    child.kill().unwrap(); // SIGKILL: no chance to clean up
    child.wait().unwrap();

    // The row still says running, but no runner holds the lock: the status says so (once
    // PostgreSQL noticed the process is gone and ended its session).
    let mut conn = app.db.conn();
    crate::helpers::eventually("the runner's session to end", || {
        crate::helpers::backfill_runner_pids(&mut conn).is_empty()
    })
    .await;
    let crashed = backfill::status(&mut conn).unwrap();
    assert_eq!(crashed.state, BackfillState::Interrupted, "{crashed:?}");
    assert_eq!(crashed.error.as_deref(), Some(backfill::NO_RUNNER));
    assert_eq!(status(&app).await["state"], "interrupted");
    assert!(
        crashed.last_id > 0 && crashed.last_id < crashed.max_id,
        "{crashed:?}"
    );
    assert!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent
            > 0
    );

    // The lock died with the process; a new run resumes at the checkpoint.
    let mut first_seen = None;
    let done = backfill::run(&mut conn, Direction::Forward, |s| {
        first_seen.get_or_insert(s.last_id);
    })
    .unwrap();
    assert_eq!(first_seen, Some(crashed.last_id), "resumed, not restarted");
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!(done.rows_done, 60_000);
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}

#[actix_web::test]
async fn only_one_backfill_runs_at_a_time() {
    let app = TestApp::spawn().await;
    app.seed(20_000);
    app.walk_to(Phase::DualWrite).await;
    let response = app
        .admin_post(
            "/api/admin/backfill/start",
            json!({ "batch_size": 200, "sleep_ms": 20 }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let second = app.admin_post("/api/admin/backfill/start", json!({})).await;
    assert_eq!(second.status(), 409);
    let error = second.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("already running"), "{error}");
    let mut conn = app.db.conn();
    assert!(matches!(
        backfill::run(&mut conn, Direction::Forward, |_| {}),
        Err(BackfillError::AlreadyRunning)
    ));
    let cancelled = app
        .admin_post("/api/admin/backfill/cancel", json!({}))
        .await;
    assert_eq!(cancelled.status(), 200);
    app.wait_for_backfill("the cancel", |s| s["state"] == "cancelled")
        .await;
}

#[actix_web::test]
async fn pause_resume_and_a_batch_size_change_while_running() {
    let app = TestApp::spawn().await;
    app.seed(30_000);
    app.walk_to(Phase::DualWrite).await;
    app.admin_post(
        "/api/admin/backfill/start",
        json!({ "batch_size": 250, "sleep_ms": 10 }),
    )
    .await;
    app.wait_for_backfill("some batches", |s| s["batches"].as_i64().unwrap_or(0) >= 4)
        .await;
    let paused = app.admin_post("/api/admin/backfill/pause", json!({})).await;
    assert_eq!(paused.status(), 200);
    let held = app
        .wait_for_backfill("the pause", |s| s["state"] == "paused")
        .await;
    // Once its runner has let go of the lock, nothing can move it any more.
    let mut conn = app.db.conn();
    crate::helpers::eventually("the runner to stop", || {
        crate::helpers::backfill_runner_pids(&mut conn).is_empty()
    })
    .await;
    let still = status(&app).await;
    assert_eq!(
        still["last_id"], held["last_id"],
        "a paused backfill does not move"
    );
    assert_eq!(still["state"], "paused");

    let resumed = app
        .admin_post("/api/admin/backfill/resume", json!({}))
        .await;
    assert_eq!(resumed.status(), 202);
    let before = app
        .wait_for_backfill("progress after resume", |s| {
            s["state"] == "running" && s["last_id"].as_i64() > held["last_id"].as_i64()
        })
        .await;
    assert!(
        before["rows_done"].as_i64().unwrap() > held["rows_done"].as_i64().unwrap(),
        "it continued"
    );
    let changed = app
        .admin_post(
            "/api/admin/backfill/settings",
            json!({ "batch_size": 5000, "sleep_ms": 0 }),
        )
        .await;
    assert_eq!(changed.status(), 200);
    let started = Instant::now();
    let done = app
        .wait_for_backfill("the end", |s| s["state"] == "done")
        .await;
    let rows_after = done["rows_done"].as_i64().unwrap() - before["rows_done"].as_i64().unwrap();
    let batches_after = done["batches"].as_i64().unwrap() - before["batches"].as_i64().unwrap();
    assert!(
        rows_after / batches_after.max(1) > 250,
        "bigger batches after the change: {rows_after} rows in {batches_after} batches ({:?})",
        started.elapsed()
    );
    assert_eq!(done["rows_done"], 30_000);
    let bad = app
        .admin_post("/api/admin/backfill/settings", json!({ "batch_size": 0 }))
        .await;
    assert_eq!(bad.status(), 422);
}

#[actix_web::test]
async fn batches_follow_a_target_time_unless_a_batch_size_alone_is_given() {
    let app = TestApp::spawn().await;
    app.seed(20_000);
    app.walk_to(Phase::DualWrite).await;
    let run = |knobs: Value| {
        let app = &app;
        async move {
            let started = app.admin_post("/api/admin/backfill/start", knobs).await;
            assert_eq!(started.status(), 202);
            app.wait_for_backfill("the end", |s| s["state"] == "done")
                .await
        }
    };

    // Filling 4,000 rows takes far longer than 1 ms anywhere: the batches shrink.
    let shrunk = run(json!({ "batch_size": 4000, "batch_target_ms": 1, "sleep_ms": 0 })).await;
    assert_eq!(shrunk["rows_updated"], 20_000);
    assert_eq!(shrunk["batch_target_ms"], 1);
    assert!(
        shrunk["batch_size"].as_i64().unwrap() < 4000,
        "smaller batches: {shrunk}"
    );

    // Scanning 10 filled rows takes far less than 500 ms: they grow, so far fewer batches.
    let grown = run(json!({ "batch_size": 10, "batch_target_ms": 500 })).await;
    assert_eq!(grown["rows_done"], 20_000);
    assert!(
        grown["batch_size"].as_i64().unwrap() > 10,
        "bigger: {grown}"
    );
    assert!(grown["batches"].as_i64().unwrap() < 100, "{grown}");

    // A batch size alone is kept as given.
    let fixed = run(json!({ "batch_size": 300 })).await;
    assert_eq!(fixed["batch_target_ms"], 0);
    assert_eq!(fixed["batch_size"], 300);
    assert_eq!(fixed["batches"], 67);

    let bad = app
        .admin_post(
            "/api/admin/backfill/settings",
            json!({ "batch_target_ms": -5 }),
        )
        .await;
    assert_eq!(bad.status(), 422);
}

#[actix_web::test]
async fn writes_of_a_lagging_instance_are_caught_by_verify_and_repaired_by_a_rerun() {
    let app = TestApp::spawn().await;
    let id = app.create_user("Ada Lovelace", "ada@example.com").await;
    app.walk_to(Phase::DualWrite).await;
    app.backfill_to_the_end().await;
    let mut conn = app.db.conn();
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );

    // An old instance, still on expanded code, renames the user: full_name only.
    let (stuck, handle) = TestApp::spawn_stuck(Arc::clone(&app.db), Phase::Expanded).await;
    let response = app
        .client
        .put(format!("{stuck}/api/v1/users/{id}"))
        .json(&json!({ "full_name": "Augusta Ada King" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    handle.stop(false).await;

    let result = verify::verify(&mut conn, Phase::DualWrite).unwrap();
    assert_eq!(result.divergent, 1);
    assert_eq!(result.sample_ids, [id]);
    let refused = app.advance(None).await;
    assert_eq!(refused.status(), 409, "the gate sees the divergence");
    // Until repaired, v2 reads the split of full_name, not the stale parts.
    let v2: Value = app.get_json(&format!("/api/v2/users/{id}")).await;
    assert_eq!(
        (v2["first_name"].as_str(), v2["last_name"].as_str()),
        (Some("Augusta"), Some("Ada King"))
    );

    app.backfill_to_the_end().await;
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
    let (first, last): (Option<String>, Option<String>) = {
        use zdm::schema::expanded::users;
        users::table
            .find(id)
            .select((users::first_name, users::last_name))
            .first(&mut conn)
            .unwrap()
    };
    assert_eq!(
        (first.as_deref(), last.as_deref()),
        (Some("Augusta"), Some("Ada King"))
    );
    let response = app.advance(None).await;
    assert_eq!(response.status(), 200);
}

/// Terminates the session of this database's backfill runner, as a database restart does.
fn cut_off_the_runner(conn: &mut PgConnection) {
    let runners = crate::helpers::backfill_runner_pids(conn);
    assert_eq!(runners.len(), 1, "one runner holds the backfill lock");
    let killed: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "pg_terminate_backend({})",
        runners[0]
    )))
    .get_result(conn)
    .unwrap();
    assert!(killed);
}

#[actix_web::test]
async fn a_backfill_cut_off_from_the_database_reconnects_and_resumes_by_itself() {
    let app = TestApp::spawn().await;
    app.seed(30_000);
    app.walk_to(Phase::DualWrite).await;
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let runner = {
        let (url, first) = (app.db.url.clone(), app.db.conn());
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            backfill::set_knobs(&mut conn, backfill::Knobs::fixed(500, 20)).unwrap();
            backfill::run_riding_out(
                first,
                &url,
                Direction::Forward,
                &mut backfill::Throttle::none(),
                &backfill::RideOut::default(),
                |s| seen_tx.send((s.last_id, s.batches)).unwrap(),
            )
        })
    };
    while seen_rx.recv().unwrap().1 < 5 {}
    let mut conn = app.db.conn();
    cut_off_the_runner(&mut conn);

    // Nobody restarts it: it reconnects and finishes, from its checkpoint, not from the start.
    let done = runner.join().unwrap().unwrap();
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!(done.rows_done, 30_000, "no row scanned twice or skipped");
    let checkpoints: Vec<i64> = seen_rx.try_iter().map(|(last_id, _)| last_id).collect();
    assert!(
        checkpoints.windows(2).all(|w| w[0] <= w[1]),
        "resumed, not restarted: {checkpoints:?}"
    );
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}

#[actix_web::test]
async fn a_backfill_that_may_not_wait_for_the_database_records_failed_with_the_error() {
    let app = TestApp::spawn().await;
    app.seed(30_000);
    app.walk_to(Phase::DualWrite).await;
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let runner = {
        let (url, first) = (app.db.url.clone(), app.db.conn());
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            backfill::set_knobs(&mut conn, backfill::Knobs::fixed(500, 20)).unwrap();
            backfill::run_riding_out(
                first,
                &url,
                Direction::Forward,
                &mut backfill::Throttle::none(),
                &backfill::RideOut::new(Duration::ZERO),
                |s| seen_tx.send(s.batches).unwrap(),
            )
        })
    };
    while seen_rx.recv().unwrap() < 5 {}
    let mut conn = app.db.conn();
    cut_off_the_runner(&mut conn);
    let gave_up = runner.join().unwrap();
    let Err(gave_up @ BackfillError::GaveUp { .. }) = gave_up else {
        panic!("it gave up: {gave_up:?}");
    };
    // A client that started it is told the database is unavailable, and when to try again,
    // as for any database that cannot be reached (not that the request clashes with a state).
    let answer = AppError::from(ControlError::Backfill(gave_up)).error_response();
    assert_eq!(answer.status(), 503);
    let retry_after = answer
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap());
    assert_eq!(retry_after, Some("1"));

    let cut = backfill::status(&mut conn).unwrap();
    assert_eq!(cut.state, BackfillState::Failed);
    let error = cut.error.clone().unwrap_or_default();
    assert!(
        error.starts_with("the database was unreachable for") && error.contains("connection"),
        "{error}"
    );
    assert!(cut.last_id > 0 && cut.last_id < cut.max_id);
    let mut first_seen = None;
    let done = backfill::run(&mut conn, Direction::Forward, |s| {
        first_seen.get_or_insert(s.last_id);
    })
    .unwrap();
    assert_eq!(first_seen, Some(cut.last_id));
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}

#[actix_web::test]
async fn the_backfill_waits_while_requests_are_slower_than_its_p99_limit() {
    let db = crate::helpers::TestDb::migrated();
    let (address, follower, _) = crate::helpers::serve_with(
        &db.url,
        zdm::db::PoolLimits::with_size(4),
        Default::default(),
        Vec::new(),
    );
    let mut conn = db.conn();
    zdm::tools::seed::seed_users(&mut conn, Phase::Baseline, 3000, 3, |_| {}).unwrap();
    crate::helpers::advance_served(&mut conn, &follower, Phase::DualWrite).await;
    // An instance reports a p99 only for a heartbeat with at least MIN_REQUESTS_FOR_P99
    // requests since the one before: eight clients reading without pause keep every heartbeat
    // above that however slow each request is, where one client, on a loaded machine, did not.
    let traffic = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (traffic, address) = (Arc::clone(&traffic), address.clone());
            actix_web::rt::spawn(async move {
                let client = reqwest::Client::new();
                while traffic.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = fastrand::i64(1..=3000);
                    let response = client
                        .get(format!("{address}/api/v1/users/{id}"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 200);
                }
            })
        })
        .collect();
    // Users are being served, and the instance reports their p99 with its heartbeats...
    crate::helpers::eventually("a p99 in a heartbeat", || {
        zdm::migration::state::live_instances(&mut conn)
            .unwrap()
            .iter()
            .any(|i| i.recent_p99_ms.is_some())
    })
    .await;
    // ...so with a limit no request can meet, the backfill must wait.
    let worker = {
        let url = db.url.clone();
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            backfill::set_knobs(&mut conn, backfill::Knobs::fixed(100, 0)).unwrap();
            let mut throttle =
                backfill::Throttle::new(Vec::new(), i64::MAX).with_request_p99_limit(Some(0.001));
            backfill::run_throttled(&mut conn, Direction::Forward, &mut throttle, |_| {})
        })
    };
    let waiting =
        crate::helpers::wait_until_throttled(&mut conn, "the backfill to wait for the requests")
            .await;
    assert!(
        waiting
            .throttle_reason
            .as_deref()
            .unwrap_or_default()
            .contains("p99"),
        "{waiting:?}"
    );
    assert!(
        waiting.rows_done < 3000,
        "it did not run through meanwhile: {waiting:?}"
    );
    // Traffic stops: no instance reports a p99 any more, and the backfill finishes.
    traffic.store(false, std::sync::atomic::Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let done = worker.join().unwrap().unwrap();
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}

/// The rows each of `runs` changed, in order.
fn rows_of(runs: &[backfill_bench::Timed]) -> Vec<u64> {
    runs.iter().map(|t| t.rows).collect()
}

/// `zdm bench backfill` compares like with like: in every round each side fills every row of
/// its own fresh copy, with autovacuum off for both tables, and the report ends with the
/// ratio.
#[test]
fn the_benchmark_fills_every_row_both_ways_in_every_round() {
    let mut lines = Vec::new();
    let options = backfill_bench::BackfillBenchOptions {
        rows: 3000,
        rounds: 2,
        knobs: backfill::Knobs::fixed(400, 0),
        autovacuum: false,
        small_rows: None,
        without_email_index: false,
    };
    let report =
        backfill_bench::backfill_benchmark(&crate::helpers::server_url(), options, |line| {
            lines.push(line.to_owned())
        })
        .unwrap();
    // As the server had it during each fill, not as asked.
    assert!(
        report
            .fills()
            .all(|t| !t.autovacuum_on && t.autovacuums == 0 && t.indexes == 2)
    );
    assert_eq!(report.index_names, ["users_email_key", "users_pkey"]);
    // The backfill's rate along its table, one list per round: a tenth of 3,000 rows is 300
    // and every batch of 400 ends one, two of them (at 1,200 and 2,400) two at once.
    assert_eq!(report.rates_by_tenth.len(), 2);
    assert!(
        report
            .rates_by_tenth
            .iter()
            .all(|rates| rates.len() == 8 && rates.iter().all(|r| *r > 0.0)),
        "{:?}",
        report.rates_by_tenth
    );
    assert_eq!(rows_of(&report.single), [3000, 3000]);
    assert_eq!(rows_of(&report.backfill), [3000, 3000]);
    // 3,000 rows in batches of 400: 8 per round.
    assert_eq!(report.batch_times.len(), 16);
    assert!(
        report
            .fills()
            .all(|t| t.wal_bytes > 0 && t.secs > 0.0 && t.table_bytes > 0 && t.vacuum_secs > 0.0)
    );
    assert!(report.ratio_with_vacuum() > 0.0);
    assert_eq!(
        report.order,
        [
            "round 1: single UPDATE",
            "round 1: zdm backfill",
            "round 2: zdm backfill",
            "round 2: single UPDATE",
        ]
    );
    // The last line is the one a script reads: the ratio, as the report has it.
    let last = lines.last().unwrap();
    let ratio: f64 = last
        .strip_prefix("backfill_vs_single_update: ")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (ratio - report.ratio()).abs() < 0.01,
        "{last} vs {}",
        report.ratio()
    );
}

/// `--autovacuum` leaves autovacuum as the server has it for both tables during the fills;
/// `--small-rows M` adds a fill of the first M users each way to every round and compares
/// each way's rates at the two sizes; `--without-email-index` fills tables that have only
/// their primary key.
#[test]
fn the_benchmark_can_leave_autovacuum_on_compare_two_sizes_and_drop_the_email_index() {
    let url = crate::helpers::server_url();
    let mut conn = diesel::PgConnection::establish(&url).unwrap();
    let server_autovacuum: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "current_setting('autovacuum')::bool",
    ))
    .get_result(&mut conn)
    .unwrap();
    let options = backfill_bench::BackfillBenchOptions {
        rows: 500,
        rounds: 1,
        knobs: backfill::Knobs::fixed(400, 0),
        autovacuum: true,
        small_rows: Some(200),
        without_email_index: true,
    };
    let mut lines = Vec::new();
    let report =
        backfill_bench::backfill_benchmark(&url, options, |line| lines.push(line.to_owned()))
            .unwrap();
    assert!(
        report
            .fills()
            .all(|t| t.autovacuum_on == server_autovacuum && t.indexes == 1)
    );
    assert_eq!(report.index_names, ["users_pkey"]);
    assert_eq!(rows_of(&report.single), [500]);
    assert_eq!(rows_of(&report.backfill), [500]);
    assert_eq!(rows_of(&report.small_single), [200]);
    assert_eq!(rows_of(&report.small_backfill), [200]);
    // Only the full-size fills' batches: 400 and 100 rows.
    assert_eq!(report.batch_times.len(), 2);
    let (backfill_ratio, single_ratio) = report.size_ratios().unwrap();
    assert!(backfill_ratio > 0.0 && single_ratio > 0.0);
    // The line a script reads comes last.
    assert_eq!(
        lines.last().unwrap().split_once(": ").unwrap().0,
        "backfill_vs_single_update"
    );

    // The smaller copy must be smaller; refused before anything is seeded.
    let too_big = backfill_bench::BackfillBenchOptions {
        small_rows: Some(500),
        ..options
    };
    let err = backfill_bench::backfill_benchmark(&url, too_big, |_| ()).unwrap_err();
    assert!(
        err.to_string().contains("must be below --rows (500)"),
        "{err}"
    );
}

/// A knob out of range is refused as such (422, naming it) before anything waits for the
/// database: also while the database is gone.
#[actix_web::test]
async fn a_bad_knob_is_refused_as_such_while_the_database_is_down() {
    // A pool that waits 4 s for a connection: an answer that waited for one shows.
    let limits = zdm::db::PoolLimits {
        checkout_timeout: Duration::from_secs(4),
        ..zdm::db::PoolLimits::with_size(4)
    };
    let app = TestApp::spawn_with(Arc::new(crate::helpers::TestDb::migrated()), limits).await;
    let mut server = PgConnection::establish(&crate::helpers::server_url()).unwrap();
    diesel::sql_query(format!("DROP DATABASE \"{}\" WITH (FORCE)", app.db.name))
        .execute(&mut server)
        .unwrap();
    for path in ["start", "resume", "settings"] {
        let asked = Instant::now();
        let bad = app
            .admin_post(
                &format!("/api/admin/backfill/{path}"),
                json!({ "batch_size": 0 }),
            )
            .await;
        assert_eq!(bad.status(), 422, "{path}");
        // Told before anything waited for a connection.
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "{path}: {:?}",
            asked.elapsed()
        );
        let error = crate::helpers::error_of(bad).await;
        assert!(error.contains("batch_size"), "{path}: {error}");
    }
    assert!(
        PgConnection::establish(&app.db.url).is_err(),
        "the database is gone"
    );
}

/// How long since instance `id` last reported, by the database's clock.
fn silent_secs(conn: &mut PgConnection, id: &str) -> f64 {
    use diesel::dsl::sql;
    use zdm::schema::state::zdm_instances;
    zdm_instances::table
        .find(id)
        .select(sql::<diesel::sql_types::Double>(
            "extract(epoch FROM now() - last_seen)::float8",
        ))
        .first(conn)
        .unwrap()
}

/// A live instance that has stopped reporting holds a backfill under a p99 budget: a frozen
/// (or killed, or overloaded) instance reports nothing, and its silence is not "no traffic".
#[actix_web::test]
async fn a_live_instance_that_stopped_reporting_holds_a_backfill_under_a_p99_budget() {
    use crate::helpers::{ServeProcess, WAIT, eventually, free_port, wait_for_every_instance};
    use nix::sys::signal::Signal;

    let db = crate::helpers::TestDb::migrated();
    let mut conn = db.conn();
    zdm::tools::seed::seed_users(&mut conn, Phase::Baseline, 1000, 3, |_| {}).unwrap();
    let instance = ServeProcess::start(
        free_port(),
        &[("DATABASE_URL", &db.url), ("ZDM_POOL_SIZE", "4")],
        WAIT,
    )
    .await;
    while zdm::migration::state::current_phase(&mut conn).unwrap() < Phase::DualWrite {
        wait_for_every_instance(&mut conn).await;
        zdm::migration::runner::advance(&mut conn, "test", None).unwrap();
    }
    wait_for_every_instance(&mut conn).await;
    let id = zdm::migration::state::live_instances(&mut conn).unwrap()[0]
        .id
        .clone();
    // A backfill under a budget any request meets (only silence can hold it), a batch of
    // 100 rows a second.
    let worker = {
        let url = db.url.clone();
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            backfill::set_knobs(&mut conn, backfill::Knobs::fixed(100, 1000)).unwrap();
            let mut throttle =
                backfill::Throttle::new(Vec::new(), i64::MAX).with_request_p99_limit(Some(1000.0));
            backfill::run_throttled(&mut conn, Direction::Forward, &mut throttle, |_| {})
        })
    };
    eventually("a first batch", || {
        backfill::status(&mut conn).unwrap().rows_done > 0
    })
    .await;
    // The instance freezes. Past the 5 s its reports count for, it is live for 5 s more, and
    // the backfill waits.
    instance.signal(Signal::SIGSTOP).unwrap();
    let waiting = crate::helpers::wait_until_throttled(
        &mut conn,
        "the backfill to wait for the silent instance",
    )
    .await;
    let reason = waiting.throttle_reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains(&id) && reason.contains("has not reported"),
        "{waiting:?}"
    );
    assert!(silent_secs(&mut conn, &id) > 5.0);
    // It thaws and reports again: the backfill goes on and fills every row.
    instance.signal(Signal::SIGCONT).unwrap();
    let done = worker.join().unwrap().unwrap();
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!(done.rows_updated, 1000);
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}

/// Two operators change different knobs at once: both changes stay. Each change keeps the
/// knobs it was not given as they are stored once it holds the lock, not as they were before
/// it waited for it.
#[actix_web::test]
async fn two_settings_changes_at_once_keep_both() {
    let db = crate::helpers::TestDb::migrated();
    let mut conn = db.conn();
    // Another session holds the lock every change takes, so both changes wait at once.
    let mut holder = db.conn();
    holder
        .batch_execute("BEGIN; LOCK TABLE zdm_backfill IN EXCLUSIVE MODE")
        .unwrap();
    let change = |knobs: backfill::Knobs| {
        let url = db.url.clone();
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            backfill::set_knobs(&mut conn, knobs).map(|(status, _)| status)
        })
    };
    let slower = change(backfill::Knobs::sleep(250));
    let bigger = change(backfill::Knobs {
        batch_size: Some(777),
        ..backfill::Knobs::default()
    });
    crate::helpers::eventually("both changes to wait for the lock", || {
        let waiting: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM pg_locks
               WHERE relation = 'zdm_backfill'::regclass AND NOT granted
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
        ))
        .get_result(&mut conn)
        .unwrap();
        waiting == 2
    })
    .await;
    holder.batch_execute("COMMIT").unwrap();
    slower.join().unwrap().unwrap();
    bigger.join().unwrap().unwrap();
    let stored = backfill::status(&mut conn).unwrap();
    assert_eq!(
        (stored.sleep_ms, stored.batch_size),
        (250, 777),
        "{stored:?}"
    );
}

/// A transaction of another client, left open, holds a row the backfill must fill. A batch
/// that waited for it would hold the rows it had already filled meanwhile, and users writing
/// them would wait with it, up to its 5-s statement_timeout, after which the run failed. It
/// gives way instead: the users' writes go through, and once the row is free the run ends.
#[actix_web::test]
async fn a_batch_gives_way_to_a_row_held_by_a_transaction_left_open() {
    let app = TestApp::spawn().await;
    app.seed(3000);
    app.walk_to(Phase::DualWrite).await;
    let mut holder = app.db.conn();
    holder
        .batch_execute("BEGIN; SELECT id FROM users WHERE id = 500 FOR UPDATE")
        .unwrap();
    let started = app
        .admin_post(
            "/api/admin/backfill/start",
            json!({ "batch_size": 1000, "sleep_ms": 0, "workers": 1 }),
        )
        .await;
    assert_eq!(started.status(), 202);
    // The first batch meets the held row (each attempt a wait of its own).
    let mut conn = app.db.conn();
    let mut attempts = std::collections::BTreeSet::new();
    let mut waits = |conn: &mut PgConnection| {
        let waiting: Vec<String> = diesel::select(diesel::dsl::sql::<
            diesel::sql_types::Array<diesel::sql_types::Text>,
        >(
            "ARRAY(SELECT query_start::text FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'
                      AND query LIKE 'UPDATE \"users\"%')",
        ))
        .get_result(conn)
        .unwrap();
        attempts.extend(waiting);
        attempts.len()
    };
    crate::helpers::eventually("the first batch to meet the held row", || {
        waits(&mut conn) >= 1
    })
    .await;
    // A user writes a row of that batch, within a statement_timeout shorter than the
    // batch's: it is not held behind the batch.
    let mut user = app.db.conn();
    user.batch_execute(
        "SET statement_timeout = '2s';
         UPDATE users SET full_name = 'Ada Byron', first_name = 'Ada', last_name = 'Byron'
          WHERE id = 10;",
    )
    .expect("a user's write of a row the batch had filled");
    // The batch is tried again and again meanwhile; the run does not fail.
    crate::helpers::eventually("the batch to meet the held row 3 times", || {
        waits(&mut conn) >= 3
    })
    .await;
    assert_ne!(app.admin_status().await["backfill"]["state"], "failed");
    // The row is free: the run goes on by itself and ends.
    holder.batch_execute("COMMIT").unwrap();
    app.wait_for_backfill("the backfill to finish", |b| b["state"] == "done")
        .await;
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}
