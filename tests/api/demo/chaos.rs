//! `zdm demo --chaos`: the walk and its faults drawn from a seed, under the demo's traffic,
//! on a PostgreSQL of the run's own. Three fixed seeds must hold; the control run (the same
//! traffic and faults, no migration) must pass too; and with a loss injected on purpose the
//! audit must still catch it under chaos, and the schedule must replay from its file.

use serde_json::Value;

/// A chaos run with its own data folder (the run's PostgreSQL lives there).
fn chaos_run(name: &str, args: &[&str]) -> super::Run {
    let data_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("demo-chaos-{name}-{}", std::process::id()));
    let mut all = vec!["--chaos"];
    all.extend_from_slice(args);
    let run = super::run_demo_with(name, &all, &[("ZDM_DATA_DIR", data_dir.as_os_str())]);
    let _ = std::fs::remove_dir_all(&data_dir);
    run
}

/// The seeds CI runs: between them a rollback and its re-advance, the undo after the drop,
/// a walk that ends before the contract, and (on a machine of ordinary speed) every fault.
const SEEDS: u64 = 3;
const FIRST_SEED: u64 = 103;

#[test]
fn three_fixed_seeds_hold_under_chaos_behind_a_pooler() {
    let first = FIRST_SEED.to_string();
    let runs = SEEDS.to_string();
    let run = chaos_run("seeds", &["--seed", &first, "--runs", &runs, "--pooler"]);
    let (summary, output) = (&run.summary, &run.output);
    assert!(run.passed, "{output}");
    assert_eq!(summary["failed_seeds"], serde_json::json!([]), "{output}");
    let runs = summary["runs"].as_array().unwrap();
    assert_eq!(runs.len() as u64, SEEDS, "{output}");
    for (seed, run) in (FIRST_SEED..).zip(runs) {
        assert_eq!(run["seed"], seed);
        assert_eq!(run["passed"], true, "seed {seed}: {output}");
        assert_eq!(run["failed_requests"], 0, "seed {seed}: {output}");
        assert_eq!(run["lost_writes"], 0, "seed {seed}: {output}");
        assert_eq!(run["divergent_rows"], 0, "seed {seed}: {output}");
        assert_eq!(
            run["unavailable_outside_faults"], 0,
            "seed {seed}: {output}"
        );
        assert!(run["faults_injected"].as_u64().unwrap() > 0, "seed {seed}");
        assert!(run["requests"].as_u64().unwrap() > 1000, "seed {seed}");
        // The audit judged the table where the walk ended, which the schedule says.
        let schedule = &run["schedule"];
        let last_step = schedule["events"]
            .as_array()
            .unwrap()
            .iter()
            .rfind(|e| e["kind"] == "advance" || e["kind"] == "rollback")
            .unwrap();
        assert_eq!(run["audit"]["phase"], last_step["to"], "seed {seed}");
    }
    // One walk ends before the contract, one undoes the drop (contracted → new_only).
    assert!(runs.iter().any(|r| r["audit"]["phase"] != "contracted"));
    assert!(runs.iter().any(|r| {
        r["schedule"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "rollback" && e["to"] == "new_only")
    }));
    // Every kind of fault struck (not only drawn: one that cannot strike is skipped).
    let struck: Vec<&str> = runs
        .iter()
        .flat_map(|r| r["faults_struck"].as_object().unwrap().keys())
        .map(String::as_str)
        .collect();
    // (Those that strike whatever the timing; an instance already down, or a backfill not
    // running, skips the others, so of those only one of each family is asked for.)
    for kind in [
        "kill_postgres",
        "restart_postgres",
        "restart_pooler",
        "hold_lock",
    ] {
        assert!(struck.contains(&kind), "{kind} in {struck:?}");
    }
    for family in [
        &["kill_instance", "freeze_instance"][..],
        &[
            "kill_backfill",
            "pause_backfill",
            "backfill_workers",
            "backfill_batch",
        ],
    ] {
        assert!(
            family.iter().any(|k| struck.contains(k)),
            "{family:?} in {struck:?}"
        );
    }
}

#[test]
fn the_control_run_passes_and_an_injected_loss_is_caught_on_the_replayed_schedule() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chaos-schedule-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("schedule.json");
    let file_arg = file.to_str().unwrap();

    // The same traffic and faults with no migration: nothing to find, and nothing found.
    let control = chaos_run(
        "control",
        &["--seed", "5", "--control", "--schedule-out", file_arg],
    );
    let (summary, output) = (&control.summary, &control.output);
    assert!(control.passed, "{output}");
    assert_eq!(summary["control"], true);
    assert_eq!(summary["audit"]["phase"], "baseline", "{output}");
    assert_eq!(summary["lost_writes"], 0, "{output}");
    assert!(summary["faults_injected"].as_u64().unwrap() > 0, "{output}");
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(
        summary["schedule"], written,
        "the run ran the schedule it wrote"
    );

    // The same schedule replayed from its file, with app-a losing updates on purpose: the
    // audit must catch it, and the run must say how to replay it.
    let lossy = chaos_run("lossy", &["--schedule", file_arg, "--fault", "lose-writes"]);
    let (summary, output) = (&lossy.summary, &lossy.output);
    assert!(
        !lossy.passed,
        "the injected loss must fail the run: {output}"
    );
    assert_eq!(summary["schedule"], written, "replayed exactly");
    assert!(summary["lost_writes"].as_u64().unwrap() > 0, "{output}");
    assert!(
        output.contains(&format!(
            "zdm demo --chaos --schedule {file_arg} --fault lose-writes"
        )),
        "the failure names the command that replays it: {output}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With a standby, a promotion is among the faults; with a replica, its stop.
#[test]
fn a_seed_with_a_failover_and_one_with_a_replica_stopped_hold() {
    for (name, args, fault) in [
        (
            "failover",
            ["--failover", "--pooler"],
            "standby promoted after",
        ),
        ("replica", ["--replicas", "1"], "the replica stopped for"),
    ] {
        let run = chaos_run(name, &[&["--seed", "2"], &args[..]].concat());
        let (summary, output) = (&run.summary, &run.output);
        assert!(run.passed, "{name}: {output}");
        assert_eq!(summary["lost_writes"], 0, "{name}: {output}");
        assert_eq!(summary["failed_requests"], 0, "{name}: {output}");
        let struck = summary["faults"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["label"].as_str().unwrap().contains(fault));
        assert!(struck, "{name}: {fault}: {output}");
    }
}

/// Seed 18 (`--pooler`) found this: down from new_only through the reverse backfill to
/// dual_write, then forward again. The gate asks for the forward backfill to run again, as an
/// operator would once told; the run must get to backfilled. Its schedule, without the faults
/// that did not matter (a PgBouncer and a PostgreSQL restart), replayed from a file.
#[test]
fn seed_18_replayed_down_through_the_reverse_backfill_and_forward_again() {
    let steps = [
        ("advance", "expanded"),
        ("advance", "dual_write"),
        ("start_backfill", ""),
        ("advance", "backfilled"),
        ("advance", "read_new"),
        ("advance", "new_only"),
        ("rollback", "read_new"),
        ("rollback", "backfilled"),
        ("rollback", "dual_write"),
        ("advance", "backfilled"),
    ];
    let events: Vec<Value> = (1..)
        .zip(steps)
        .map(|(i, (kind, to))| match to {
            "" => serde_json::json!({ "at_ms": i * 1000, "kind": kind }),
            to => serde_json::json!({ "at_ms": i * 1000, "kind": kind, "to": to }),
        })
        .collect();
    let schedule = serde_json::json!({
        "seed": 18,
        "setup": { "instances": 2, "pooler": false },
        "events": events,
    });
    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("chaos-seed-18-{}.json", std::process::id()));
    std::fs::write(&file, schedule.to_string()).unwrap();
    let run = chaos_run("seed-18", &["--schedule", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    let (summary, output) = (&run.summary, &run.output);
    assert!(run.passed, "{output}");
    assert_eq!(summary["audit"]["phase"], "backfilled", "{output}");
    let marks: Vec<&str> = summary["faults"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["label"].as_str())
        .collect();
    assert!(
        marks
            .iter()
            .any(|m| m.contains("the forward one runs again")),
        "{marks:?}"
    );
}
