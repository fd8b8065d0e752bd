//! `zdm demo --failover`: the demo on a primary and a synchronous standby of its own; mid-
//! backfill the primary is killed with SIGKILL and the standby promoted, with the requests
//! through a real PgBouncer that the demo, as an HA manager's hook would, points at the new
//! primary. The run must hold as the plain one does: 503s while no primary answers are
//! counted apart, nothing else fails, no acknowledged write is lost, and the walk goes on to
//! contracted on the new primary.

#[test]
fn the_quick_demo_holds_through_a_failover_behind_a_pooler() {
    // The demo's primary and standby live in a data folder of this test's own.
    let data_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("demo-failover-{}", std::process::id()));
    let run = super::run_demo_with(
        "failover",
        &["--failover", "--pooler"],
        &[("ZDM_DATA_DIR", data_dir.as_os_str())],
    );
    let _ = std::fs::remove_dir_all(&data_dir);
    let (summary, output) = (&run.summary, &run.output);
    assert!(run.passed, "{output}");
    assert_eq!(summary["pooler"], "pgbouncer transaction", "{output}");
    let failover = &summary["failover"];
    assert_eq!(failover["standby"], "synchronous", "{output}");
    // The HA manager's detection alone takes a second.
    assert!(
        failover["seconds_without_primary"]
            .as_f64()
            .is_some_and(|s| s >= 1.0),
        "{output}"
    );
    assert_eq!(failover["lost_to_async_replication"], 0, "{output}");
    assert_eq!(summary["failed_requests"], 0, "{output}");
    assert_eq!(summary["lost_writes"], 0, "{output}");
    assert_eq!(summary["divergent_rows"], 0, "{output}");
    assert_eq!(summary["audit"]["phase"], "contracted", "{output}");
    assert!(
        summary["p99_ms_by_phase"]["failover"].as_f64().is_some(),
        "the outage is a segment of its own: {output}"
    );
    let faults: Vec<&str> = summary["faults"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["label"].as_str())
        .collect();
    for what in ["kill -9 of the primary", "standby promoted"] {
        assert!(
            faults.iter().any(|label| label.contains(what)),
            "{what}: {faults:?}"
        );
    }
    assert!(
        summary["requests"].as_u64().is_some_and(|n| n > 1000),
        "{output}"
    );
}
