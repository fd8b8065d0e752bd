//! `zdm bench pacing`: interleaved demo runs, auto workers against one worker under a
//! relative p99 budget, each run's figures and each side's, as a user reads them.

use std::process::Output;

use serde_json::Value;

use crate::helpers::{server_url, zdm_command};

fn bench_pacing(args: &[&str], out: &std::path::Path) -> Output {
    zdm_command()
        .env("DATABASE_URL", server_url())
        .env("RUST_LOG", "warn")
        .args(["bench", "pacing", "--out"])
        .arg(out)
        .args(args)
        .output()
        .unwrap()
}

/// One run of each side: both run the demo to the end under the budget, each run's line and
/// summary are there, and the closing lines compare the sides and give the DDL stall.
#[test]
fn the_pacing_bench_runs_each_side_and_compares_them() {
    let out = std::env::temp_dir().join(format!("zdm-bench-pacing-{}", std::process::id()));
    let output = bench_pacing(&["--runs", "1", "--rows", "20000"], &out);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let said = format!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{said}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[1].starts_with("run 1 of 2: zone: p99 during the backfill"),
        "{said}"
    );
    assert!(
        lines[2].starts_with("run 2 of 2: one: p99 during the backfill"),
        "{said}"
    );
    assert!(
        lines[1].ends_with("passed") && lines[2].ends_with("passed"),
        "{said}"
    );
    assert!(
        lines[3].starts_with("zone: ")
            && lines[3].contains(" of 1 runs within 1.5 × the quiet phases' p99"),
        "{said}"
    );
    assert!(lines[3].ends_with("× one worker's"), "{said}");
    assert!(lines[4].starts_with("one: "), "{said}");
    assert!(lines[5].starts_with("DDL stall"), "{said}");
    for (file, workers) in [
        ("1-zone.json", "auto (zone rule)"),
        ("2-one.json", "set to 1"),
    ] {
        let summary: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join(file)).unwrap()).unwrap();
        assert_eq!(summary["passed"], true, "{file}");
        let first = &summary["backfill"]["worker_changes"][0]["reason"];
        assert!(
            first.as_str().is_some_and(|r| r.starts_with(workers)),
            "{file}: {first}"
        );
        assert!(
            summary["backfill"]["quiet_p99_ms"].as_f64().is_some(),
            "{file}: the run read its budget's base"
        );
    }
    std::fs::remove_dir_all(&out).unwrap();
}

/// A budget no run could hold or start under, or a rule named twice, is refused before any
/// run, saying why.
#[test]
fn the_pacing_bench_refuses_a_budget_it_cannot_run_under() {
    let out = std::env::temp_dir().join(format!("zdm-bench-pacing-refused-{}", std::process::id()));
    for (args, says) in [
        (&["--ratio", "1"][..], "--ratio 1 is no budget to run under"),
        (
            &["--ratio", "0.5"][..],
            "--ratio 0.5 is no budget to run under",
        ),
        (
            &["--ratio", "NaN"][..],
            "--ratio NaN is no budget to run under",
        ),
        (
            &["--ratio", "101"][..],
            "--ratio 101 is no budget to run under",
        ),
        (&["--rules", "zone,zone"][..], "--rules names zone twice"),
    ] {
        let output = bench_pacing(args, &out);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?}: nothing was run");
    }
}
