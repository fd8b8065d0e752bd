//! The backfill with several workers: racing writers, a `kill -9` of its runner, the count
//! changed while it runs, and auto mode under a budget no request can meet.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::{Value, json};
use zdm::domain::Phase;
use zdm::migration::backfill::{
    self, AutoRule, BackfillState, Direction, Knobs, Throttle, Workers,
};
use zdm::migration::verify;
use zdm::tools::bench::backfill as backfill_bench;

use crate::helpers::{MixedWriters, TestApp, eventually};

async fn status(app: &TestApp) -> Value {
    app.admin_status().await["backfill"].clone()
}

/// The workers on a range not done yet, as the status shows them.
fn busy_workers(backfill: &Value) -> Vec<i64> {
    let mut workers: Vec<i64> = backfill["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["last_id"].as_i64() < r["end_id"].as_i64())
        .filter_map(|r| r["worker"].as_i64())
        .collect();
    workers.sort_unstable();
    workers.dedup();
    workers
}

/// Counts every update of a row of `users` from now on, in a table of the test's own
/// (`updates_seen`), written by a trigger in the updating transaction: a batch rolled back
/// leaves no count. The backfill is told to let it fire (its `triggers` gate).
fn count_updates(conn: &mut PgConnection) {
    conn.batch_execute(
        "CREATE TABLE updates_seen (id BIGINT NOT NULL);
         CREATE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO updates_seen VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER count_update AFTER UPDATE ON users
            FOR EACH ROW EXECUTE FUNCTION count_update();
         UPDATE zdm_backfill SET triggers = 'fire';",
    )
    .unwrap();
}

/// (updates counted, rows updated at least once).
fn updates_seen(conn: &mut PgConnection) -> (i64, i64) {
    diesel::select(diesel::dsl::sql::<(
        diesel::sql_types::BigInt,
        diesel::sql_types::BigInt,
    )>(
        "(SELECT count(*) FROM updates_seen), (SELECT count(DISTINCT id) FROM updates_seen)",
    ))
    .get_result(conn)
    .unwrap()
}

/// Ranges as stored: (start_id, last_id, end_id), in key order.
fn stored_ranges(conn: &mut PgConnection) -> Vec<(i64, i64, i64)> {
    backfill::ranges(conn)
        .unwrap()
        .into_iter()
        .map(|r| (r.start_id, r.last_id, r.end_id))
        .collect()
}

#[actix_web::test]
async fn several_workers_racing_v1_and_v2_writers_lose_nothing() {
    let app = TestApp::spawn().await;
    app.seed(20_000);
    app.walk_to(Phase::DualWrite).await;
    let response = app
        .admin_post(
            "/api/admin/backfill/start",
            json!({ "batch_size": 400, "sleep_ms": 5, "workers": 3 }),
        )
        .await;
    assert_eq!(response.status(), 202);
    let started: Value = response.json().await.unwrap();
    assert_eq!(started["workers"], 3, "{started}");
    assert_eq!(started["workers_setting"], 3);

    // Writers rename random seeded rows through both APIs while the workers pass them.
    let mut writers = MixedWriters::new(11);
    let mut workers_seen = Vec::new();
    let mut metrics_seen = false;
    loop {
        let now = status(&app).await;
        let running = now["state"] == "running";
        for w in busy_workers(&now) {
            if !workers_seen.contains(&w) {
                workers_seen.push(w);
            }
        }
        if running && !metrics_seen {
            let metrics = app.get("/metrics").await.text().await.unwrap();
            metrics_seen = metrics.contains("zdm_backfill_workers 3");
        }
        writers.write_twenty(&app).await;
        if !running {
            break;
        }
    }
    assert!(writers.writes >= 40);
    workers_seen.sort_unstable();
    assert_eq!(workers_seen, [1, 2, 3], "three workers ran at once");
    assert!(metrics_seen, "/metrics showed zdm_backfill_workers 3");
    let done = status(&app).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["rows_done"], 20_000, "every row passed once: {done}");

    let mut conn = app.db.conn();
    let result = verify::verify(&mut conn, Phase::DualWrite).unwrap();
    assert_eq!(result.divergent, 0, "samples {:?}", result.sample_ids);
    writers.assert_intact(&app).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("zdm_backfill_workers 0"), "none runs now");
}

#[actix_web::test]
async fn a_runner_with_three_workers_killed_with_sigkill_resumes_with_no_gap() {
    let app = TestApp::spawn().await;
    app.seed(60_000);
    app.walk_to(Phase::DualWrite).await;
    let mut conn = app.db.conn();
    count_updates(&mut conn);
    let mut child = crate::helpers::zdm_command()
        .args([
            "backfill",
            "--workers",
            "3",
            "--batch-size",
            "500",
            "--sleep-ms",
            "0",
        ])
        .env("DATABASE_URL", &app.db.url)
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let before_kill = app
        .wait_for_backfill("three workers, well under way", |s| {
            s["rows_done"].as_i64().unwrap_or(0) >= 15_000 && busy_workers(s).len() == 3
        })
        .await;
    assert_eq!(before_kill["state"], "running");
    child.kill().unwrap(); // SIGKILL, to the child this test started
    child.wait().unwrap();
    // Its sessions end once PostgreSQL notices the process is gone.
    eventually("the runner's session to end", || {
        crate::helpers::backfill_runner_pids(&mut conn).is_empty()
    })
    .await;

    let crashed = backfill::status(&mut conn).unwrap();
    assert_eq!(crashed.state, BackfillState::Interrupted, "{crashed:?}");
    // The ranges still cover every id once, and every checkpoint claims only rows its
    // batches filled: no gap behind any of them.
    let ranges = stored_ranges(&mut conn);
    assert!(ranges.len() >= 3, "{ranges:?}");
    assert_eq!(ranges[0].0, 0, "from the first id: {ranges:?}");
    assert_eq!(ranges.last().unwrap().2, 60_000, "{ranges:?}");
    assert!(
        ranges.windows(2).all(|w| w[0].2 == w[1].0),
        "disjoint and contiguous: {ranges:?}"
    );
    let unfilled_behind_checkpoints: i64 =
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "(SELECT count(*) FROM users u JOIN zdm_backfill_ranges r \
            ON u.id > r.start_id AND u.id <= r.last_id WHERE u.first_name IS NULL)",
        ))
        .get_result(&mut conn)
        .unwrap();
    assert_eq!(unfilled_behind_checkpoints, 0);
    let open = ranges.iter().filter(|r| r.1 < r.2).count();
    assert!(open >= 2, "stopped mid-way in several ranges: {ranges:?}");
    let (counted, _) = updates_seen(&mut conn);
    assert_eq!(
        counted, crashed.rows_updated,
        "what the counters say was done"
    );
    assert!(crashed.rows_done < 60_000);

    // A new runner, three workers again, resumes every range at its checkpoint.
    let mut starts = Vec::new();
    let done = backfill::run_workers(
        &mut conn,
        Some(&app.db.url),
        Direction::Forward,
        &mut Throttle::none(),
        |_| {},
        |batch| starts.push((batch.range_no, batch.from)),
    )
    .unwrap();
    for (start, checkpoint, _) in ranges.iter().filter(|r| r.1 < r.2) {
        assert!(
            starts.iter().any(|(_, from)| from == checkpoint),
            "the range from {start} resumed at its checkpoint {checkpoint}: {starts:?}"
        );
    }
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!(done.rows_done, 60_000, "no row passed twice or skipped");
    assert_eq!(done.rows_updated, 60_000);
    assert_eq!(updates_seen(&mut conn), (60_000, 60_000), "each row once");
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}

#[actix_web::test]
async fn changing_workers_one_three_two_mid_run_updates_every_row_exactly_once() {
    let app = TestApp::spawn().await;
    app.seed(30_000);
    app.walk_to(Phase::DualWrite).await;
    let mut conn = app.db.conn();
    count_updates(&mut conn);

    // The knob's edges, before anything runs.
    for (body, code) in [
        (json!({ "workers": 0 }), 422),
        (json!({ "workers": 17 }), 422),
        (json!({ "workers": "many" }), 400),
        // This instance has no p99 budget.
        (json!({ "workers": "auto" }), 422),
    ] {
        let refused = app.admin_post("/api/admin/backfill/settings", body).await;
        assert_eq!(refused.status(), code);
        let error = crate::helpers::error_of(refused).await;
        assert!(error.contains("workers"), "{error}");
    }

    let started = app
        .admin_post(
            "/api/admin/backfill/start",
            json!({ "batch_size": 300, "sleep_ms": 10, "workers": 1 }),
        )
        .await;
    assert_eq!(started.status(), 202);
    app.wait_for_backfill("a few batches of one worker", |s| {
        s["batches"].as_i64().unwrap_or(0) >= 5
    })
    .await;
    assert_eq!(busy_workers(&status(&app).await), [1]);

    let three = app
        .admin_post("/api/admin/backfill/settings", json!({ "workers": 3 }))
        .await;
    assert_eq!(three.status(), 200);
    let at_three = app
        .wait_for_backfill("three workers on ranges of their own", |s| {
            s["workers"] == 3 && busy_workers(s) == [1, 2, 3]
        })
        .await;
    let batches_at_three = at_three["batches"].as_i64().unwrap();
    app.wait_for_backfill("the three to run batches", |s| {
        s["batches"].as_i64().unwrap() >= batches_at_three + 6
    })
    .await;

    let two = app
        .admin_post("/api/admin/backfill/settings", json!({ "workers": 2 }))
        .await;
    assert_eq!(two.status(), 200);
    app.wait_for_backfill("two workers", |s| {
        s["workers"] == 2 && busy_workers(s).iter().all(|w| *w <= 2)
    })
    .await;
    let done = app
        .wait_for_backfill("the end", |s| s["state"] == "done")
        .await;

    assert_eq!(done["rows_done"], 30_000, "every row passed once: {done}");
    assert_eq!(done["rows_updated"], 30_000, "{done}");
    assert_eq!(
        updates_seen(&mut conn),
        (30_000, 30_000),
        "every row needing repair was updated, and only once"
    );
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
    let changes: Vec<(Option<i64>, i64)> = done["worker_changes"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|c| (c["previous"].as_i64(), c["workers"].as_i64().unwrap()))
        .collect();
    assert_eq!(changes, [(None, 1), (Some(1), 3), (Some(3), 2)]);
    assert!(
        done["worker_changes"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("set to 2")
    );
}

#[actix_web::test]
async fn auto_workers_under_a_budget_no_request_can_meet_stay_at_one_and_wait() {
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
    // Eight clients reading without pause keep every heartbeat's p99 report coming (see
    // backfill::the_backfill_waits_while_requests_are_slower_than_its_p99_limit).
    let traffic = Arc::new(AtomicBool::new(true));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (traffic, address) = (Arc::clone(&traffic), address.clone());
            actix_web::rt::spawn(async move {
                let client = reqwest::Client::new();
                while traffic.load(Ordering::Relaxed) {
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
    eventually("a p99 in a heartbeat", || {
        zdm::migration::state::live_instances(&mut conn)
            .unwrap()
            .iter()
            .any(|i| i.recent_p99_ms.is_some())
    })
    .await;
    // Auto mode, with a budget no request can meet; the runner could open more connections.
    let runner = auto_under_a_budget(&db.url, 0.001, AutoRule::default());
    let waiting =
        crate::helpers::wait_until_throttled(&mut conn, "the backfill to wait for the requests")
            .await;
    assert_eq!(waiting.workers, 1);
    assert!(waiting.workers_auto);
    // It stays so while the instance keeps reporting, well past the time auto mode takes to
    // add a worker when the requests allow it (two seconds).
    let throttled_at = waiting.updated_at;
    let mut reports = 0;
    eventually("four more seconds of p99 reports", || {
        let live = zdm::migration::state::live_instances(&mut conn).unwrap();
        let status = backfill::status(&mut conn).unwrap();
        assert_eq!(status.state, BackfillState::Throttled, "{status:?}");
        assert_eq!(status.workers, 1, "{status:?}");
        assert_eq!(
            status.rows_done, waiting.rows_done,
            "no batch while it waits"
        );
        reports += live.iter().filter(|i| i.recent_p99_ms.is_some()).count();
        live.iter()
            .any(|i| (i.last_seen - throttled_at).num_milliseconds() > 4000)
    })
    .await;
    assert!(reports > 0);
    assert!(
        backfill::worker_changes(&mut conn, 100)
            .unwrap()
            .iter()
            .all(|c| c.workers == 1),
        "never more than one worker while the budget was unmet"
    );
    // Traffic stops: no instance reports a p99 any more, and the backfill finishes.
    traffic.store(false, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let (done, _) = runner.join().unwrap();
    let done = done.unwrap();
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!(done.rows_done, 3000);
    assert_eq!(
        verify::verify(&mut conn, Phase::DualWrite)
            .unwrap()
            .divergent,
        0
    );
}

#[test]
fn workers_that_cannot_connect_leave_the_work_to_those_that_can() {
    let (db, mut conn) = seeded_at_dual_write(5000);
    backfill::set_knobs(
        &mut conn,
        Knobs::fixed(200, 0).with_workers(Workers::Fixed(3)),
    )
    .unwrap();
    // Workers beyond the first connect to a database that does not exist.
    let nowhere = format!("{}_nowhere", db.url);
    let done = backfill::run_workers(
        &mut conn,
        Some(&nowhere),
        Direction::Forward,
        &mut Throttle::none(),
        |_| {},
        |_| {},
    )
    .unwrap();
    assert_eq!(done.state, BackfillState::Done);
    assert_eq!((done.rows_done, done.rows_updated), (5000, 5000));
    assert_eq!(done.workers, 1);
    let why = done.workers_reason.unwrap_or_default();
    assert!(why.starts_with("worker 2 could not connect"), "{why}");
}

/// `zdm bench backfill --workers 2`: every round fills every row both ways, the backfill
/// with two workers, and the report ends with the parallel ratio.
#[test]
fn the_benchmark_runs_the_backfill_with_workers_and_ends_with_the_parallel_ratio() {
    let mut lines = Vec::new();
    let options = backfill_bench::BackfillBenchOptions {
        rows: 4000,
        rounds: 2,
        knobs: Knobs::fixed(250, 0).with_workers(Workers::Fixed(2)),
        autovacuum: false,
        small_rows: None,
        without_email_index: false,
    };
    let report =
        backfill_bench::backfill_benchmark(&crate::helpers::server_url(), options, |line| {
            lines.push(line.to_owned())
        })
        .unwrap();
    assert_eq!(report.workers, 2);
    let rows: Vec<u64> = report.backfill.iter().map(|t| t.rows).collect();
    assert_eq!(rows, [4000, 4000]);
    // 4,000 rows in batches of 250 (a range split near the end adds a shorter one).
    assert!(
        report.batch_times.len() >= 32,
        "{}",
        report.batch_times.len()
    );
    assert!(report.ranges.iter().all(|n| *n >= 2), "{:?}", report.ranges);
    assert!(
        report
            .order
            .contains(&"round 1: zdm backfill, 2 workers".to_owned())
    );
    // The line a script reads comes last.
    let last = lines.last().unwrap();
    let ratio: f64 = last
        .strip_prefix("parallel_backfill_vs_single_update: ")
        .unwrap()
        .parse()
        .unwrap();
    assert!((ratio - report.ratio()).abs() < 0.01, "{last}");
}

/// Every batch holds the backfill's status row FOR SHARE, and PostgreSQL lets a new share
/// lock past an update waiting for that row while nobody holds more than a share lock. With
/// workers starting batches back to back, a pause or a change of the knobs could wait behind
/// them until its statement_timeout (a 503, the backfill still running): they hold new
/// batches back instead. Here twelve connections take the row as batches do, back to back.
#[actix_web::test]
async fn a_pause_and_a_knob_change_get_past_batches_that_start_back_to_back() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.conn();
    // Running, with its runner's lock held (so that reading the status changes nothing).
    let mut runner = app.db.conn();
    diesel::sql_query(format!("SELECT pg_advisory_lock({})", backfill::LOCK_KEY))
        .execute(&mut runner)
        .unwrap();
    conn.batch_execute("UPDATE zdm_backfill SET state = 'running'")
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let batches: Vec<_> = (0..12)
        .map(|_| {
            let (url, stop) = (app.db.url.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                while !stop.load(Ordering::Acquire) {
                    conn.batch_execute(
                        "BEGIN; SELECT 1 FROM zdm_backfill FOR SHARE; SELECT pg_sleep(0.04); COMMIT",
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    eventually("the batches to hold the row", || {
        diesel::sql_query(
            "SELECT 1 AS one FROM pg_locks WHERE relation = 'zdm_backfill'::regclass AND mode = 'RowShareLock' AND granted",
        )
        .execute(&mut conn)
        .unwrap()
            >= 2
    })
    .await;

    // A batch in flight lasts 40 ms: far less than this.
    conn.batch_execute("SET statement_timeout = '1s'").unwrap();
    let knobs = Knobs {
        sleep_ms: Some(7),
        ..Default::default()
    };
    let changed = backfill::set_knobs(&mut conn, knobs);
    let paused = backfill::request_stop(&mut conn, BackfillState::Paused);
    stop.store(true, Ordering::Release);
    for batch in batches {
        batch.join().unwrap();
    }
    assert_eq!(changed.expect("the knobs changed").0.sleep_ms, 7);
    assert_eq!(
        paused.expect("the pause got through").0.state,
        BackfillState::Paused
    );
}

/// Under a p99 budget, batches sized by time aim at no longer than the budget (a batch's WAL
/// is what the users' commits wait for): the same fill, from batches of 1,000 toward 40 ms,
/// runs far smaller batches with a budget of 1 ms than with none.
#[test]
fn under_a_p99_budget_batches_sized_by_time_stay_short() {
    let median_batch = |budget: Option<f64>| {
        let (_db, mut conn) = seeded_at_dual_write(20_000);
        let sized = Knobs {
            batch_target_ms: Some(40),
            ..Knobs::fixed(1000, 0)
        };
        backfill::set_knobs(&mut conn, sized).unwrap();
        // No instance reports a p99 here, so the budget never makes the backfill wait.
        let mut throttle = Throttle::new(Vec::new(), i64::MAX).with_request_p99_limit(budget);
        let mut sizes = Vec::new();
        let done = backfill::run_workers(
            &mut conn,
            None,
            Direction::Forward,
            &mut throttle,
            |_| {},
            |batch| sizes.push(batch.size),
        )
        .unwrap();
        assert_eq!(done.state, BackfillState::Done);
        assert_eq!(done.rows_updated, 20_000);
        sizes.sort_unstable();
        sizes[sizes.len() / 2]
    };
    let free = median_batch(None);
    let budgeted = median_batch(Some(1.0));
    assert!(
        budgeted * 4 < free,
        "median batch of {budgeted} rows under a 1 ms budget, {free} without"
    );
}

/// Auto mode adds a worker only once every reading has stayed within the budget for 2 s, also
/// after its one worker waited for the throttle: the runner's own looks (every 250 ms) need
/// not see the reports over the budget that the waiting worker saw. An instance's heartbeat
/// is written here (over the budget, then within), so that the switch is known to the
/// millisecond.
#[test]
fn after_a_throttled_wait_auto_mode_adds_a_worker_only_after_two_calm_seconds() {
    let (db, mut conn) = seeded_at_dual_write(150_000);
    conn.batch_execute(
        "INSERT INTO zdm_instances (id, applied_phase, started_at, last_seen, recent_p99_ms)
         VALUES ('reporter', 'dual_write', now(), now(), 10.0)",
    )
    .unwrap();
    let calm = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = {
        let (url, calm, stop) = (db.url.clone(), calm.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            while !stop.load(Ordering::Acquire) {
                let p99 = if calm.load(Ordering::Acquire) {
                    1.0
                } else {
                    10.0
                };
                conn.batch_execute(&format!(
                    "UPDATE zdm_instances SET last_seen = now(), recent_p99_ms = {p99}"
                ))
                .unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let runner = auto_under_a_budget(&db.url, 2.0, AutoRule::Aimd);
    // Waiting for the throttle well past the 2 s auto mode waits before adding a worker.
    let started = Instant::now();
    let throttled = loop {
        let status = backfill::status(&mut conn).unwrap();
        if status.state == BackfillState::Throttled {
            break Instant::now();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "{status:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    while throttled.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let calm_from: chrono::DateTime<chrono::Utc> =
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Timestamptz>("now()"))
            .get_result(&mut conn)
            .unwrap();
    calm.store(true, Ordering::Release);
    let done = runner
        .join()
        .unwrap()
        .0
        .expect("the backfill ran to the end");
    stop.store(true, Ordering::Release);
    reporter.join().unwrap();
    assert_eq!(done.state, BackfillState::Done);
    let changes = backfill::worker_changes(&mut conn, 100).unwrap();
    let added = changes
        .iter()
        .rev()
        .find(|c| c.previous.is_some_and(|p| c.workers > p))
        .expect("a worker was added once the requests were fast");
    let after = (added.at - calm_from).num_milliseconds();
    assert!(
        after >= 1500,
        "a worker was added {after} ms after the last report over the budget: {changes:?}"
    );
}

/// The budget is the users' p99 across the fleet, from the instances' histograms summed, not
/// the slowest instance's: one instance that answered 20 requests, 5 of them in 2-4 ms, reads
/// 3.9 ms alone, but beside one that answered 1,000 within 1 ms the users' p99 is under 1 ms,
/// within a 2-ms budget, and the backfill runs through. The same instance reporting only its
/// p99 (an older version) counts with it: the backfill waits, naming it, until it is gone.
#[test]
fn the_budget_is_the_users_p99_across_the_fleet_not_the_slowest_instances() {
    let fleet = |small_histogram: bool| {
        let (db, mut conn) = seeded_at_dual_write(20_000);
        let small = if small_histogram {
            "'{0.001,0.002,0.004}', '{15,15,20,20}'"
        } else {
            "NULL, NULL"
        };
        conn.batch_execute(&format!(
            "INSERT INTO zdm_instances (id, applied_phase, started_at, last_seen, recent_p99_ms,
                                        recent_latency_le, recent_latency_counts)
             VALUES ('busy', 'dual_write', now(), now(), 0.99, '{{0.001,0.002,0.004}}',
                     '{{1000,1000,1000,1000}}'),
                    ('small', 'dual_write', now(), now(), 3.92, {small})"
        ))
        .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let heartbeats = {
            let (url, stop) = (db.url.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                while !stop.load(Ordering::Acquire) {
                    conn.batch_execute("UPDATE zdm_instances SET last_seen = now()")
                        .unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        let runner = {
            let url = db.url.clone();
            std::thread::spawn(move || {
                let mut conn = PgConnection::establish(&url).unwrap();
                backfill::set_knobs(&mut conn, Knobs::fixed(500, 0)).unwrap();
                let mut throttle =
                    Throttle::new(Vec::new(), i64::MAX).with_request_p99_limit(Some(2.0));
                let mut waited = None;
                let done = backfill::run_workers(
                    &mut conn,
                    None,
                    Direction::Forward,
                    &mut throttle,
                    |s| {
                        if s.state == BackfillState::Throttled {
                            waited = waited.take().or(s.throttle_reason.clone());
                        }
                    },
                    |_| {},
                );
                (done, waited)
            })
        };
        (db, conn, stop, heartbeats, runner)
    };

    // Waits (a minute at most) for the backfill to reach `state`, never passing by `not`.
    let reaches = |conn: &mut PgConnection, state: BackfillState, not: BackfillState| {
        let started = Instant::now();
        loop {
            let status = backfill::status(conn).unwrap();
            assert_ne!(status.state, not, "{status:?}");
            if status.state == state {
                return;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{status:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let (_db, mut conn, stop, heartbeats, runner) = fleet(true);
    reaches(&mut conn, BackfillState::Done, BackfillState::Throttled);
    let (done, waited) = runner.join().unwrap();
    stop.store(true, Ordering::Release);
    heartbeats.join().unwrap();
    assert_eq!(done.unwrap().rows_updated, 20_000);
    assert_eq!(waited, None, "the users' p99 was within the budget");

    let (_db, mut conn, stop, heartbeats, runner) = fleet(false);
    reaches(&mut conn, BackfillState::Throttled, BackfillState::Done);
    conn.batch_execute("DELETE FROM zdm_instances WHERE id = 'small'")
        .unwrap();
    let (done, waited) = runner.join().unwrap();
    stop.store(true, Ordering::Release);
    heartbeats.join().unwrap();
    assert_eq!(done.unwrap().rows_updated, 20_000);
    assert_eq!(
        waited.as_deref(),
        Some("requests' p99 of 3.9 ms is above the limit of 2.0 ms")
    );
}

/// A worker added while batches are sized by time begins at the size the others reached,
/// not at the knob's size again (under a budget, a first batch of 5,000 rows is what the
/// budget's cap is there to avoid).
#[test]
fn a_worker_added_under_a_budget_starts_with_the_short_batches_of_the_others() {
    let (db, mut conn) = seeded_at_dual_write(60_000);
    let knobs = Knobs {
        batch_target_ms: Some(40),
        ..Knobs::fixed(5000, 0).with_workers(Workers::Fixed(1))
    };
    backfill::set_knobs(&mut conn, knobs).unwrap();
    let (batches_tx, batches) = std::sync::mpsc::channel();
    let runner = {
        let url = db.url.clone();
        std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).unwrap();
            // No instance reports a p99 here, so the budget never makes the backfill wait.
            let mut throttle =
                Throttle::new(Vec::new(), i64::MAX).with_request_p99_limit(Some(1.0));
            backfill::run_workers(
                &mut conn,
                Some(&url),
                Direction::Forward,
                &mut throttle,
                |_| {},
                |b| {
                    let _ = batches_tx.send((b.worker, b.size));
                },
            )
        })
    };
    let next = || {
        batches
            .recv_timeout(Duration::from_secs(30))
            .expect("a batch")
    };
    let mut first_worker = Vec::new();
    while first_worker.len() < 15 {
        first_worker.push(next().1);
    }
    assert_eq!(first_worker[0], 5000);
    let reached = *first_worker.last().unwrap();
    assert!(
        reached < 1000,
        "worker 1's batches shrank: {first_worker:?}"
    );
    backfill::set_knobs(
        &mut conn,
        Knobs {
            workers: Some(Workers::Fixed(2)),
            ..Knobs::default()
        },
    )
    .unwrap();
    let second_first = loop {
        let (worker, size) = next();
        if worker == 2 {
            break size;
        }
    };
    assert!(
        second_first <= 1000,
        "worker 2's first batch: {second_first} rows (worker 1 had reached {reached})"
    );
    let done = runner.join().unwrap().unwrap();
    assert_eq!(done.state, BackfillState::Done);
}

/// A database of its own with `rows` seeded users, walked to dual_write by hand (no instance
/// runs, so the steps' gates about instances hold), and a connection to it.
fn seeded_at_dual_write(rows: u64) -> (crate::helpers::TestDb, PgConnection) {
    let db = crate::helpers::TestDb::migrated();
    let mut conn = db.conn();
    zdm::tools::seed::seed_users(&mut conn, Phase::Baseline, rows, 5, |_| {}).unwrap();
    while zdm::migration::state::current_phase(&mut conn).unwrap() < Phase::DualWrite {
        zdm::migration::runner::advance(&mut conn, "test", None).unwrap();
    }
    (db, conn)
}

/// The backfill in auto mode under a p99 budget of `budget_ms`, by `rule`, in batches of
/// 100, on a thread of its own (more workers connect to `url`): how it ended, and the most
/// workers it ran at once.
fn auto_under_a_budget(
    url: &str,
    budget_ms: f64,
    rule: AutoRule,
) -> std::thread::JoinHandle<(
    Result<backfill::BackfillStatus, backfill::BackfillError>,
    i32,
)> {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut conn = PgConnection::establish(&url).unwrap();
        backfill::set_knobs(&mut conn, Knobs::fixed(100, 0).with_workers(Workers::Auto)).unwrap();
        let mut throttle = Throttle::new(Vec::new(), i64::MAX)
            .with_request_p99_limit(Some(budget_ms))
            .with_auto_rule(rule);
        let mut most = 0;
        let done = backfill::run_workers(
            &mut conn,
            Some(&url),
            Direction::Forward,
            &mut throttle,
            |s| most = most.max(s.workers),
            |_| {},
        );
        (done, most)
    })
}

/// A relative budget (`ZDM_BACKFILL_MAX_P99_RATIO`) is fixed when the run starts, from the
/// instances' own p99 then, and the run's record says so: 1.5 × 4 ms here. A run paused
/// (or crashed) and resumed while the p99 is ten times that keeps its budget: measured again
/// then, it would be 60 ms, and the backfill would go on at any cost to the users. A run
/// started afresh measures again.
#[test]
fn a_relative_budget_is_fixed_from_the_instances_p99_when_the_run_starts() {
    let (db, mut conn) = seeded_at_dual_write(5_000);
    conn.batch_execute(
        "INSERT INTO zdm_instances (id, applied_phase, started_at, last_seen, recent_p99_ms)
         VALUES ('reporter', 'dual_write', now(), now(), 4.0)",
    )
    .unwrap();
    let knobs = Knobs {
        batch_size: Some(100),
        ..Default::default()
    };
    backfill::set_knobs(&mut conn, knobs).unwrap();
    let run = |conn: &mut PgConnection, on_batch: &mut dyn FnMut()| {
        let mut throttle = Throttle::new(Vec::new(), i64::MAX).with_request_p99_ratio(Some(1.5));
        let end = backfill::run_workers(
            conn,
            None,
            Direction::Forward,
            &mut throttle,
            |_| {},
            |_| on_batch(),
        )
        .unwrap();
        // The newest change: this run's first count (none follows with one worker).
        let changes = backfill::worker_changes(conn, 1).unwrap();
        let first = changes.first().expect("the run's first count is recorded");
        (end.state, throttle.max_request_p99_ms, first.reason.clone())
    };
    // Paused after its first batch, by another client.
    let mut other = db.conn();
    let (state, budget, reason) = run(&mut conn, &mut || {
        backfill::request_stop(&mut other, BackfillState::Paused).unwrap();
    });
    assert_eq!(state, BackfillState::Paused);
    assert_eq!(budget, Some(6.0));
    assert!(
        reason.contains("p99 budget 6.00 ms: 1.5 × the instances' 4.00 ms when the run started"),
        "{reason}"
    );
    // The users' p99 is 40 ms now: the resumed run keeps 6 ms.
    let reporting = |conn: &mut PgConnection, p99: f64| {
        conn.batch_execute(&format!(
            "UPDATE zdm_instances SET last_seen = now(), recent_p99_ms = {p99}"
        ))
        .unwrap();
    };
    reporting(&mut conn, 40.0);
    let (state, budget, reason) = run(&mut conn, &mut || {});
    assert_eq!(state, BackfillState::Done);
    assert_eq!(budget, Some(6.0), "{reason}");
    assert!(
        reason.contains("kept from the run's first start"),
        "{reason}"
    );
    // A run started afresh (once this one is done) measures again.
    reporting(&mut conn, 40.0);
    let (state, budget, _) = run(&mut conn, &mut || {});
    assert_eq!(state, BackfillState::Done);
    assert_eq!(budget, Some(60.0));
}

/// The rule auto mode runs by (`ZDM_BACKFILL_AUTO_RULE`) is the one the status shows and
/// every change of the count names: each rule in turn, with no instance reporting (no slow
/// request), so that both add workers (batches of 100 with 20 ms between them, so that the
/// run lasts past the first 2 s).
#[test]
fn the_configured_auto_rule_is_the_one_recorded() {
    for rule in [AutoRule::Zone, AutoRule::Aimd] {
        let (db, mut conn) = seeded_at_dual_write(20_000);
        backfill::set_knobs(&mut conn, Knobs::fixed(100, 20).with_workers(Workers::Auto)).unwrap();
        let mut throttle = Throttle::new(Vec::new(), i64::MAX)
            .with_request_p99_limit(Some(5.0))
            .with_auto_rule(rule);
        let done = backfill::run_workers(
            &mut conn,
            Some(&db.url),
            Direction::Forward,
            &mut throttle,
            |_| {},
            |_| {},
        )
        .unwrap();
        assert_eq!(done.state, BackfillState::Done);
        assert_eq!(done.workers_rule.as_deref(), Some(rule.as_str()));
        let changes = backfill::worker_changes(&mut conn, 100).unwrap();
        let (first, later) = changes.split_last().unwrap();
        assert!(
            first.reason.starts_with(&format!("auto ({rule} rule): ")),
            "{first:?}"
        );
        assert!(!later.is_empty(), "{rule}: auto mode added no worker");
        for change in later {
            assert!(
                change.reason.starts_with(&format!("{rule}: ")),
                "{change:?}"
            );
        }
        let status: Value = serde_json::to_value(backfill::status(&mut conn).unwrap()).unwrap();
        assert_eq!(status["workers_rule"], rule.as_str());
    }
}
