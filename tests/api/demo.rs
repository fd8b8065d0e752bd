//! `zdm demo --quick` end to end: it must hold (0 failed, 0 lost, nothing altered), and the
//! proof must be able to fail: with a fault injected on purpose, or a row altered behind the
//! demo's back, its audit must say so and the run must exit non-zero.
//!
//! The runs meant to fail use 1-second phases: long enough for the damage to happen in every
//! phase, short enough to keep the suite quick.

mod chaos;
mod failover;
mod pacing;
mod report;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use serde_json::Value;

use crate::helpers::{scratch_cluster, server_url};

/// What a demo run left behind.
struct Run {
    passed: bool,
    summary: Value,
    /// Its output, and the instances' logs.
    output: String,
    /// The first instance's log.
    app_a_log: String,
}

fn demo_command(name: &str, args: &[&str]) -> (Command, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("zdm-demo-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut command = crate::helpers::zdm_command();
    command
        .env("DATABASE_URL", server_url())
        .env("RUST_LOG", "warn")
        .args(["demo", "--quick", "--json-out"])
        .arg(dir.join("summary.json"))
        .arg("--report-dir")
        .arg(&dir)
        .args(args);
    (command, dir)
}

/// Reads what the run in `dir` left, and removes the folder.
fn finish(dir: std::path::PathBuf, output: Output) -> Run {
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("summary.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    // One report per mode and fault: a run meant to fail leaves the proof's report alone.
    let mode = summary["mode"].as_str().unwrap_or("");
    // A chaos run's (or the last of `--runs`): passed or failed under its seed.
    let chaos = summary["runs"]
        .as_array()
        .and_then(|runs| runs.last())
        .unwrap_or(&summary);
    let expected = match (
        summary["injected_fault"].as_str(),
        summary["failover"]["standby"].as_str(),
    ) {
        _ if chaos["seed"].is_u64() => {
            let fault = chaos["injected_fault"]
                .as_str()
                .map(|f| format!("-{f}"))
                .unwrap_or_default();
            let control = if chaos["control"] == true {
                "-control"
            } else {
                ""
            };
            match chaos["passed"] == true {
                true => format!("demo-chaos{control}{fault}.html"),
                false => format!("demo-chaos{control}{fault}-seed-{}.html", chaos["seed"]),
            }
        }
        (Some(fault), _) => format!("demo-{mode}-{fault}.html"),
        (None, Some("synchronous")) => format!("demo-{mode}-failover.html"),
        (None, Some(standby)) => format!("demo-{mode}-failover-{standby}.html"),
        (None, None) => format!("demo-{mode}.html"),
    };
    let reports: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".html"))
        .collect();
    assert_eq!(
        reports,
        std::slice::from_ref(&expected),
        "the run's one report"
    );
    let report = std::fs::read_to_string(dir.join(&expected)).unwrap_or_default();
    assert!(report.contains("<svg"), "the HTML report has its chart");
    let app_a_log = std::fs::read_to_string(dir.join("app-a.log")).unwrap_or_default();
    // A failed demo's instance logs go into the output (and so into the assertion message).
    let mut logs = String::new();
    if !output.status.success() {
        for app in ["app-a.log", "app-b.log"] {
            let text = std::fs::read_to_string(dir.join(app)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            logs.push_str(&format!("\n--- {app} (last lines)\n"));
            for line in tail.into_iter().rev() {
                logs.push_str(line);
                logs.push('\n');
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    Run {
        passed: output.status.success(),
        summary,
        output: format!(
            "{}\n{}{logs}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
        app_a_log,
    }
}

fn run_demo(name: &str, args: &[&str]) -> Run {
    run_demo_with(name, args, &[])
}

/// `run_demo` with more environment for the demo.
fn run_demo_with(name: &str, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Run {
    let (mut command, dir) = demo_command(name, args);
    let output = command.envs(env.iter().copied()).output().unwrap();
    finish(dir, output)
}

/// The whole walk forward to contracted, and back to read_new (the contract undone), under
/// the same traffic and the same audit, with the requests through a real PgBouncer in
/// transaction mode (as production runs it), the backfill in auto workers under a relative
/// p99 budget.
#[test]
fn the_quick_demo_holds_zero_downtime_forward_and_back_behind_a_pooler() {
    let run = run_demo_with(
        "clean",
        &[
            "--undo",
            "--pooler",
            "--backfill-batch",
            "250",
            "--backfill-workers",
            "auto",
        ],
        &[("ZDM_BACKFILL_MAX_P99_RATIO", "1.5".as_ref())],
    );
    let (summary, output) = (&run.summary, &run.output);
    assert!(run.passed, "{output}");
    assert_eq!(summary["mode"], "zdm");
    assert_eq!(summary["undo"], true);
    assert_eq!(summary["pooler"], "pgbouncer transaction", "{output}");
    // The audit judged the table as read_new has it, after the reverse backfill.
    assert_eq!(summary["audit"]["phase"], "read_new", "{output}");
    assert_eq!(summary["injected_fault"], Value::Null);
    assert_eq!(summary["failed_requests"], 0, "{output}");
    assert_eq!(summary["stale_reads"], 0, "{output}");
    assert_eq!(summary["lost_writes"], 0, "{output}");
    assert_eq!(summary["divergent_rows"], 0, "{output}");
    assert_eq!(summary["untouched_rows_altered"], 0, "{output}");
    assert!(summary["requests"].as_u64().unwrap() > 1000);
    for phase in [
        "baseline",
        "expanded",
        "dual_write",
        "backfill",
        "backfilled",
        "read_new",
        "new_only",
        "contracted",
        "new_only (undo)",
        "reverse backfill (undo)",
        "read_new (undo)",
    ] {
        assert!(
            summary["p99_ms_by_phase"][phase]
                .as_f64()
                .is_some_and(|p99| p99 > 0.0),
            "{phase} was measured: {output}"
        );
    }
    // The instances' own histograms measured the same phases.
    for phase in ["baseline", "backfill", "contracted"] {
        assert!(
            summary["server_p99_ms_by_phase"][phase]
                .as_f64()
                .is_some_and(|p99| p99 > 0.0),
            "{phase} was measured by the instances: {output}"
        );
    }
    // The budget's base, noted as the run started, and the backfill's p99 against it.
    assert!(
        summary["backfill"]["quiet_p99_ms"]
            .as_f64()
            .is_some_and(|ms| ms > 0.0),
        "{output}"
    );
    for ratio in [
        "server_backfill_p99_vs_quiet",
        "server_backfill_p99_vs_run_start",
        "server_ddl_p99_vs_quiet",
    ] {
        assert!(
            summary[ratio].as_f64().is_some_and(|r| r > 0.0),
            "{ratio}: {output}"
        );
    }
    assert!(
        summary["lock_timeouts_retried"].as_u64().unwrap() >= 1,
        "the long transaction was met"
    );
    // The backfill's counts of workers, each with its reason, the first one its run's.
    let changes = summary["backfill"]["worker_changes"].as_array().unwrap();
    assert!(
        changes.first().is_some_and(
            |c| c["workers"] == 1 && c["reason"].as_str().is_some_and(|r| !r.is_empty())
        ),
        "{changes:?}"
    );
    let audit = &summary["audit"];
    assert!(audit["rows_checked"].as_u64().unwrap() > 100);
    assert_eq!(audit["stale_reads"], 0);
    // The last tenth of the seeded rows is never written, and most others are not either.
    assert!(audit["untouched_rows"].as_u64().unwrap() > 3000, "{audit}");
    assert_eq!(
        audit["untouched_checksum_before"],
        audit["untouched_checksum_after"]
    );
    assert!(output.contains("kill -9 of the backfill process"));
    // The machine's load beside the latency, in every phase of a second or more.
    if cfg!(target_os = "linux") {
        assert!(summary["cpus"].as_f64().is_some(), "the CPUs were counted");
        for segment in summary["segments"].as_array().unwrap() {
            if segment["seconds"].as_f64().unwrap() >= 1.0 {
                let busy = segment["cpu_busy_cores"].as_f64();
                assert!(busy.is_some_and(|b| b > 0.0), "cpu measured in {segment}");
            }
        }
        assert!(output.contains("CPUs kept busy"), "{output}");
    }
    // `--backfill-batch 250`: the seeded rows took a batch per 250 at least.
    let backfill = &summary["backfill"];
    let (rows, batches) = (
        backfill["rows"].as_u64().unwrap_or(0),
        backfill["batches"].as_u64().unwrap_or(0),
    );
    assert!(rows >= 30_000 && batches >= rows / 250, "{output}");
    assert!(!output.contains("FAULT"), "no fault unless asked: {output}");
}

#[test]
fn with_writes_lost_on_purpose_the_audit_finds_them_and_the_demo_fails() {
    let run = run_demo(
        "lose-writes",
        &["--fault", "lose-writes", "--phase-secs", "1"],
    );
    let (summary, output) = (&run.summary, &run.output);
    assert!(!run.passed, "the demo must fail: {output}");
    assert_eq!(summary["injected_fault"], "lose-writes");
    assert!(
        output.contains("FAULT INJECTED ON PURPOSE (lose-writes)"),
        "the demo says so loudly: {output}"
    );
    assert!(
        run.app_a_log
            .contains("FAULT INJECTION ON (--inject-fault lose-writes=20)"),
        "the instance says so loudly: {}",
        run.app_a_log
    );
    assert_eq!(
        summary["walk_error"],
        Value::Null,
        "the migration itself went through: {output}"
    );
    let lost = summary["lost_writes"].as_u64().unwrap_or(0);
    assert!(lost > 0, "the audit found the lost writes: {output}");
    assert_eq!(summary["audit"]["lost_writes"], lost);
    let by_phase = summary["audit"]["lost_writes_by_phase"]
        .as_object()
        .unwrap();
    assert_eq!(
        by_phase.values().filter_map(Value::as_u64).sum::<u64>(),
        lost
    );
    assert!(
        by_phase.len() >= 3,
        "losses were found in several phases: {output}"
    );
    assert!(output.contains("lost write: id "), "{output}");
    // The reads that missed a lost write are counted as what they are, not as failures.
    assert_eq!(summary["stale_reads"], summary["audit"]["stale_reads"]);
    assert!(output.contains("INJECTED FAULT: lose-writes"), "{output}");
}

#[test]
fn with_dual_write_broken_on_purpose_the_audit_fails() {
    let run = run_demo(
        "lagging-v1",
        &["--fault", "lagging-v1", "--phase-secs", "1"],
    );
    let (summary, output) = (&run.summary, &run.output);
    assert!(!run.passed, "the demo must fail: {output}");
    assert_eq!(summary["injected_fault"], "lagging-v1");
    assert!(
        run.app_a_log
            .contains("FAULT INJECTION ON (--inject-fault lagging-v1)"),
        "{}",
        run.app_a_log
    );
    let divergent = summary["divergent_rows"].as_u64().unwrap_or(0);
    let lost = summary["lost_writes"].as_u64().unwrap_or(0);
    assert!(
        divergent > 0 || lost > 0,
        "the audit saw the damage: {output}"
    );
    assert_eq!(summary["audit"]["divergent"], divergent);
}

#[test]
fn a_fault_variable_is_refused_and_the_flag_named_instead() {
    // The old variable switches nothing on: the demo refuses it before anything starts.
    let (mut command, dir) = demo_command("fault-env", &[]);
    let output = command
        .env("ZDM_FAULT_LAGGING_V1_WRITES", "1")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ZDM_FAULT_LAGGING_V1_WRITES is set, but faults are demo-only")
            && stderr.contains("zdm demo --fault"),
        "{stderr}"
    );
}

#[derive(QueryableByName)]
struct StoredPhase {
    #[diesel(sql_type = Text)]
    phase: String,
}

/// Waits (up to two minutes) until the demo run by `child` has left baseline, which it does
/// only after it took its snapshot of the seeded rows; returns a connection to its database.
fn connect_once_past_baseline(child: &mut Child) -> PgConnection {
    let url = zdm::db::with_database(&server_url(), &format!("zdm_demo_{}_0", child.id()));
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the demo did not leave baseline within two minutes"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the demo ended before leaving baseline"
        );
        if let Ok(mut conn) = PgConnection::establish(&url)
            && let Ok(stored) = diesel::sql_query("SELECT phase FROM zdm_migration_state")
                .get_result::<StoredPhase>(&mut conn)
            && stored.phase != "baseline"
        {
            return conn;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rows_altered_behind_the_demos_back_fail_its_checksum() {
    let rows: i64 = 30_000;
    let (mut command, dir) = demo_command(
        "altered",
        &["--rows", &rows.to_string(), "--phase-secs", "1"],
    );
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut conn = connect_once_past_baseline(&mut child);
    // Two seeded rows no client writes: one gets another name (its columns kept consistent,
    // so only the checksum can tell), the other another email.
    let (renamed, readdressed) = (rows, rows - 1);
    assert!(renamed - 1 > zdm::tools::demo::traffic::last_owned_seeded_id(rows));
    conn.batch_execute("SET lock_timeout = '5s'").unwrap();
    diesel::sql_query(
        "UPDATE users SET full_name = 'Altered Behind-Back',
           first_name = CASE WHEN first_name IS NULL THEN NULL ELSE 'Altered' END,
           last_name = CASE WHEN last_name IS NULL THEN NULL ELSE 'Behind-Back' END
         WHERE id = $1",
    )
    .bind::<BigInt, _>(renamed)
    .execute(&mut conn)
    .expect("renaming a seeded row (before the contract)");
    diesel::sql_query("UPDATE users SET email = 'altered@example.org' WHERE id = $1")
        .bind::<BigInt, _>(readdressed)
        .execute(&mut conn)
        .unwrap();
    drop(conn);
    let run = finish(dir, child.wait_with_output().unwrap());
    let (summary, output) = (&run.summary, &run.output);
    assert!(!run.passed, "the demo must fail: {output}");
    assert_eq!(summary["untouched_rows_altered"], 2, "{output}");
    assert_ne!(
        summary["audit"]["untouched_checksum_before"],
        summary["audit"]["untouched_checksum_after"]
    );
    for id in [renamed, readdressed] {
        assert!(
            output.contains(&format!("untouched row altered: id {id}:")),
            "{output}"
        );
    }
    // Nothing else was wrong: the checksum alone failed the run.
    assert_eq!(summary["walk_error"], Value::Null, "{output}");
    assert_eq!(summary["failed_requests"], 0, "{output}");
    assert_eq!(summary["lost_writes"], 0, "{output}");
    assert_eq!(summary["divergent_rows"], 0, "{output}");
}

#[test]
fn the_quick_demo_holds_with_a_streaming_replica() {
    // `--replicas 1` starts a private primary and a replica (here a scratch one, stopped and
    // removed at the end); the instances read from the replica, the backfill throttles on it.
    let mut cluster = scratch_cluster("demo-replicas");
    let (mut command, dir) = demo_command("replicas", &["--replicas", "1"]);
    command
        .env_remove("DATABASE_URL")
        .env("ZDM_DATA_DIR", &cluster.base);
    let output = command.output().unwrap();
    let run = finish(dir, output);
    if let Ok(primary) = cluster.primary() {
        let _ = cluster.replica(&primary);
    }
    let (summary, output) = (&run.summary, &run.output);
    assert!(run.passed, "{output}");
    assert_eq!(summary["failed_requests"], 0, "{output}");
    assert_eq!(summary["lost_writes"], 0, "{output}");
    assert_eq!(summary["replicas"], 1);
    assert!(
        summary["replica_reads"].as_u64().unwrap() > 100,
        "the replica answered reads: {output}"
    );
    assert!(output.contains("answered"), "{output}");
}
