//! Benchmarks: commands that print figures (never timed tests).
//!
//! `zdm bench backfill --rows N`: the zdm backfill against the single UPDATE a hurried team
//! would run, on two identical tables of N seeded users in a scratch database of their own.
//! Prints rows/s for both, the batch transaction times, the peak RSS, and last
//! `backfill_vs_single_update: R` (the rate ratio).

use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::db::scratch::ScratchDatabase;
use crate::migration::backfill::{self, Direction, Knobs};
use crate::migration::{Phase, runner, state};

pub mod http;
pub mod replicas;

pub type BenchError = Box<dyn std::error::Error + Send + Sync>;

/// The value at quantile `q` (0..=1) of sorted durations.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Peak resident memory (VmHWM) of a process, this one by default, in MiB.
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let process = pid.map_or("self".to_owned(), |pid| pid.to_string());
    let status = std::fs::read_to_string(format!("/proc/{process}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs the benchmark on the server of `database_url` and prints its figures.
pub fn backfill_benchmark(
    database_url: &str,
    rows: u64,
    knobs: Knobs,
    mut say: impl FnMut(&str),
) -> Result<f64, BenchError> {
    say(&format!("seeding {rows} users..."));
    let scratch = ScratchDatabase::seeded(database_url, "zdm_bench", rows, 1)?;
    let mut conn = PgConnection::establish(&scratch.url)?;
    while state::current_phase(&mut conn)? < Phase::DualWrite {
        runner::advance(&mut conn, "bench", None)?;
    }
    // The twin for the single UPDATE: same rows, same indexes. It belongs to no schema
    // module (it exists only here), hence plain SQL.
    conn.batch_execute(
        "CREATE TABLE users_single (LIKE users INCLUDING ALL);
         INSERT INTO users_single SELECT * FROM users;",
    )?;
    // One statement per call: VACUUM cannot run inside the implicit transaction of a batch.
    conn.batch_execute("VACUUM ANALYZE users")?;
    conn.batch_execute("VACUUM ANALYZE users_single")?;
    let checkpoint = |conn: &mut PgConnection| {
        // Start each run with no dirty pages of the other's making (needs superuser; skipped if not).
        let _ = conn.batch_execute("CHECKPOINT");
    };

    checkpoint(&mut conn);
    say("single UPDATE...");
    let started = Instant::now();
    let single_rows = diesel::sql_query(
        "UPDATE users_single
            SET first_name = zdm_name_first(full_name), last_name = zdm_name_last(full_name)
          WHERE first_name IS NULL OR last_name IS NULL
             OR zdm_name_norm(full_name) IS DISTINCT FROM zdm_name_join(first_name, last_name)",
    )
    .execute(&mut conn)?;
    let single_secs = started.elapsed().as_secs_f64();

    // The single UPDATE left a dead version of every row behind; clean it up (untimed) so
    // that autovacuum does not spend the backfill's run on the other table's aftermath.
    conn.batch_execute("VACUUM users_single")?;
    checkpoint(&mut conn);
    say("zdm backfill...");
    let knobs = backfill::set_knobs(&mut conn, knobs)?;
    let mut batch_times = Vec::new();
    let mut batch_sizes = Vec::new();
    let mut last = None::<Instant>;
    let started = Instant::now();
    let done = backfill::run(&mut conn, Direction::Forward, |s| {
        let now = Instant::now();
        if let Some(prev) = last
            && s.state == "running"
        {
            batch_times.push(now - prev);
            batch_sizes.push(s.batch_size);
        }
        last = Some(now);
    })?;
    let backfill_secs = started.elapsed().as_secs_f64();
    batch_times.sort();
    batch_sizes.sort();
    // What each way leaves behind: one big UPDATE doubles the table (every row gets a new
    // version that autovacuum can only reclaim afterwards); batches let it keep up.
    let size = |conn: &mut PgConnection, table: &str| -> QueryResult<String> {
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(&format!(
            "pg_size_pretty(pg_table_size('{table}'))"
        )))
        .get_result(conn)
    };
    let single_size = size(&mut conn, "users_single")?;
    let backfill_size = size(&mut conn, "users")?;
    drop(conn);
    drop(scratch);

    let single_rate = single_rows as f64 / single_secs;
    let backfill_rate = done.rows_updated as f64 / backfill_secs;
    let ratio = backfill_rate / single_rate;
    say(&format!("rows: {rows}"));
    say(&format!(
        "single UPDATE: {single_rows} rows in {single_secs:.2} s = {single_rate:.0} rows/s (one transaction)"
    ));
    let sizing = if knobs.batch_target_ms > 0 {
        format!(
            "sized to {} ms from {}: median {}, range {}..{}",
            knobs.batch_target_ms,
            knobs.batch_size,
            batch_sizes.get(batch_sizes.len() / 2).unwrap_or(&0),
            batch_sizes.first().unwrap_or(&0),
            batch_sizes.last().unwrap_or(&0)
        )
    } else {
        format!("of {}", knobs.batch_size)
    };
    say(&format!(
        "zdm backfill:  {} rows in {backfill_secs:.2} s = {backfill_rate:.0} rows/s ({} batches {sizing}, sleep 0)",
        done.rows_updated, done.batches
    ));
    say(&format!(
        "batch transaction: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ms(quantile(&batch_times, 0.5)),
        ms(quantile(&batch_times, 0.99)),
        ms(batch_times.last().copied().unwrap_or_default())
    ));
    say(&format!(
        "table size afterwards: single UPDATE {single_size}, zdm backfill {backfill_size}"
    ));
    say(&format!(
        "peak RSS of this process: {}",
        peak_rss_mib(None).map_or("unknown".to_owned(), |m| format!("{m:.1} MiB"))
    ));
    say(&format!("backfill_vs_single_update: {ratio:.2}"));
    Ok(ratio)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_by_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&d, 0.5), Duration::from_millis(51));
        assert_eq!(quantile(&d, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }
}
