//! `zdm demo --quick` end to end: it must hold (0 failed, 0 lost), and with dual-write
//! broken on purpose its audit must say so.

use std::process::Command;

use serde_json::Value;

use crate::helpers::{scratch_cluster, server_url};

fn run_demo(extra_env: &[(&str, &str)]) -> (bool, Value, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zdm"));
    command
        .env("DATABASE_URL", server_url())
        .envs(extra_env.iter().copied());
    run_demo_with(command, &format!("{}", extra_env.len()), &[])
}

/// Runs `command` (a `zdm` with its environment) as `demo --quick` with `args`; returns whether it
/// passed, its JSON summary and its output.
fn run_demo_with(mut command: Command, name: &str, args: &[&str]) -> (bool, Value, String) {
    let dir = std::env::temp_dir().join(format!("zdm-demo-test-{}-{name}", std::process::id()));
    let json = dir.join("summary.json");
    std::fs::create_dir_all(&dir).unwrap();
    let output = command
        .args(["demo", "--quick", "--json-out"])
        .arg(&json)
        .arg("--report-dir")
        .arg(&dir)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default())
        .unwrap_or_default();
    let report = std::fs::read_to_string(dir.join("demo-latest.html")).unwrap_or_default();
    assert!(report.contains("<svg"), "the HTML report has its chart");
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
    (
        output.status.success(),
        summary,
        format!(
            "{stdout}\n{}{logs}",
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[test]
fn the_quick_demo_holds_zero_downtime() {
    let (ok, summary, output) = run_demo(&[]);
    assert!(ok, "{output}");
    assert_eq!(summary["mode"], "zdm");
    assert_eq!(summary["failed_requests"], 0, "{output}");
    assert_eq!(summary["lost_writes"], 0, "{output}");
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
    ] {
        assert!(
            summary["p99_ms_by_phase"][phase].as_f64().unwrap() > 0.0,
            "{phase} was measured"
        );
    }
    assert!(
        summary["lock_timeouts_retried"].as_u64().unwrap() >= 1,
        "the long transaction was met"
    );
    assert!(summary["audit"]["rows_checked"].as_u64().unwrap() > 100);
    assert!(output.contains("kill -9 of the backfill process"));
}

#[test]
fn with_dual_write_broken_the_audit_fails() {
    let (ok, summary, output) = run_demo(&[("ZDM_FAULT_LAGGING_V1_WRITES", "1")]);
    assert!(!ok, "the demo must fail: {output}");
    let lost = summary["lost_writes"].as_u64().unwrap_or(0);
    let divergent = summary["audit"]["divergent"].as_i64().unwrap_or(0);
    assert!(
        lost > 0 || divergent > 0,
        "the audit saw the damage: {output}"
    );
}

#[test]
fn the_quick_demo_holds_with_a_streaming_replica() {
    // `--replicas 1` starts a private primary and a replica (here a scratch one, stopped and
    // removed at the end); the instances read from the replica, the backfill throttles on it.
    let mut cluster = scratch_cluster("demo-replicas");
    let mut command = Command::new(env!("CARGO_BIN_EXE_zdm"));
    command
        .env_remove("DATABASE_URL")
        .env("ZDM_DATA_DIR", &cluster.base);
    let (ok, summary, output) = run_demo_with(command, "replicas", &["--replicas", "1"]);
    if let Ok(primary) = cluster.primary() {
        let _ = cluster.replica(&primary);
    }
    assert!(ok, "{output}");
    assert_eq!(summary["failed_requests"], 0, "{output}");
    assert_eq!(summary["lost_writes"], 0, "{output}");
    assert_eq!(summary["replicas"], 1);
    assert!(
        summary["replica_reads"].as_u64().unwrap() > 100,
        "the replica answered reads: {output}"
    );
    assert!(output.contains("answered"), "{output}");
}
