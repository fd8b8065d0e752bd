//! `zdm bench backfill --rows N`: the zdm backfill against the single UPDATE a hurried team
//! would run, on identical copies of N seeded users in a scratch database of their own, in
//! rounds whose order alternates (single first, then backfill first: ABBA), so that a machine
//! whose speed drifts during the run favours neither, with autovacuum off for both tables
//! while they are filled (see `backfill_benchmark`). Prints rows/s for both, the WAL each
//! wrote, the batch transaction times, the peak RSS, and last
//! `backfill_vs_single_update: R` (the rate ratio); with `--workers N` (N > 1) the backfill
//! runs N workers and the last line is `parallel_backfill_vs_single_update: R`.
//!
//! Here: the run, round by round. One timed fill is in `timed`, the figures and their lines
//! in `report`.

mod report;
mod timed;

use std::time::Instant;

use anyhow::{Context, Result, bail};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

pub use self::report::BackfillBenchReport;
pub use self::timed::Timed;
use self::timed::{index_names, line, timed};
use crate::domain::Phase;
use crate::migration::backfill::{self, Direction, Knobs, Throttle};
use crate::migration::{runner, state};
use crate::tools::scratch::ScratchDatabase;

/// What to run: see `backfill_benchmark`.
#[derive(Debug, Clone, Copy)]
pub struct BackfillBenchOptions {
    /// Users in each table.
    pub rows: u64,
    pub rounds: u32,
    /// The backfill's knobs (its sleep should be 0; `workers` a fixed count, one if unset).
    pub knobs: Knobs,
    /// Leave autovacuum on for the filled tables.
    pub autovacuum: bool,
    /// Also fill a copy of the first this many users each way in every round, to compare
    /// each way's rate at `rows` with its rate at this size in the same run.
    pub small_rows: Option<u64>,
    /// Fill tables without the unique index on `lower(email)`: what upkeep of that index
    /// costs each row (every filled row gets a new version, and every index a new entry).
    pub without_email_index: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Side {
    Single,
    Backfill,
}

impl Side {
    /// The table this side fills.
    fn table(self) -> &'static str {
        match self {
            Side::Single => "users_single",
            Side::Backfill => "users",
        }
    }
}

/// One fill: a side, on all the seeded users or on a copy of the first `Some(n)`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Fill {
    side: Side,
    first: Option<u64>,
}

/// How the report names the backfill with `workers` workers.
fn backfill_label(workers: i32) -> String {
    match workers {
        1 => "zdm backfill".to_owned(),
        n => format!("zdm backfill, {n} workers"),
    }
}

impl Fill {
    /// How the report names it.
    fn label(self, workers: i32) -> String {
        let side = match self.side {
            Side::Single => "single UPDATE".to_owned(),
            Side::Backfill => backfill_label(workers),
        };
        match self.first {
            None => side.to_owned(),
            Some(n) => format!("{side} (first {n} rows)"),
        }
    }
}

/// The fills of round `round` (0-based): single first in even rounds, backfill first in odd
/// ones (ABBA), so that a machine speeding up or slowing down steadily during the run
/// favours neither; the small copies' fills, if any, after those in even rounds and before
/// them in odd ones.
fn round_order(round: u32, small_rows: Option<u64>) -> Vec<Fill> {
    let mut fills: Vec<Fill> = [None]
        .into_iter()
        .chain(small_rows.map(Some))
        .flat_map(|first| [Side::Single, Side::Backfill].map(|side| Fill { side, first }))
        .collect();
    if !round.is_multiple_of(2) {
        fills.reverse();
    }
    fills
}

/// Gives `fill` its side's table afresh, a copy of `users_seed` (of its first users only, for
/// a small copy), and settles the database, so that every fill starts from the same state
/// whichever side ran before it: the other side's table emptied too (its dead rows dropped,
/// not left to VACUUM), every table vacuumed and analysed, and a checkpoint taken.
/// Autovacuum stays off for the table unless `autovacuum`.
fn rebuild(conn: &mut PgConnection, fill: Fill, autovacuum: bool) -> Result<()> {
    // The single UPDATE's twin belongs to no schema module (it exists only here), hence
    // plain SQL. Same columns, constraints and indexes as users.
    conn.batch_execute(
        "DROP TABLE IF EXISTS users_single;
         TRUNCATE users;
         CREATE TABLE users_single (LIKE users INCLUDING ALL);",
    )
    .context("emptying users and making users_single afresh")?;
    let table = fill.side.table();
    // The first n by users_seed's primary key, or all in the order they were copied in.
    let first = fill
        .first
        .map_or(String::new(), |n| format!(" ORDER BY id LIMIT {n}"));
    conn.batch_execute(&format!(
        "INSERT INTO {table} SELECT * FROM users_seed{first};
         ALTER TABLE {table} SET (autovacuum_enabled = {autovacuum});"
    ))
    .with_context(|| format!("copying users_seed into {table}"))?;
    // One statement per call: VACUUM cannot run inside the implicit transaction of a batch.
    conn.batch_execute("VACUUM ANALYZE")
        .context("vacuuming the database")?;
    // Needs superuser; skipped if not.
    let _ = conn.batch_execute("CHECKPOINT");
    Ok(())
}

/// Runs the benchmark on the server of `database_url` in `rounds` rounds and prints its
/// figures. Each round fills a fresh copy of the same seeded table once each way; the order
/// alternates (see `round_order`), and each side's rate is its rows over its time across
/// all rounds.
///
/// Unless `autovacuum`, autovacuum is off for both tables during the fills. Left on, it may
/// run on the backfill's table while the backfill runs (its batches commit, leaving dead
/// rows) but never on the single UPDATE's (whose dead rows appear when it commits): the
/// backfill's time would then include cleanup that the single UPDATE's leaves for later,
/// and on a small machine whether it runs inside a fill is luck (the autovacuum launcher
/// looks once a minute). Off, both sides do the same work while timed, and the VACUUM timed
/// after each fill is the whole of its cleanup.
///
/// With `small_rows`, every round also fills a copy of the first `small_rows` users each way,
/// and the report gives each way's rate on all rows against its rate on those: how much a
/// bigger table costs, measured in the same run and so free of the machine's drift.
///
/// With `without_email_index`, the unique index on `lower(email)` is dropped before the
/// tables are copied: the fills then show what its upkeep costs each row.
pub fn backfill_benchmark(
    database_url: &str,
    options: BackfillBenchOptions,
    mut say: impl FnMut(&str),
) -> Result<BackfillBenchReport> {
    let BackfillBenchOptions {
        rows, small_rows, ..
    } = options;
    if let Some(small) = small_rows
        && small >= rows
    {
        bail!("--small-rows ({small}) must be below --rows ({rows}): it sizes the smaller copy");
    }
    say(&format!("seeding {rows} users..."));
    say(if options.autovacuum {
        "autovacuum: on (it may run on the backfill's table during its fill, never on the single UPDATE's)"
    } else {
        "autovacuum: off for both tables during the fills (--autovacuum to leave it on); each fill's cleanup is the VACUUM timed after it"
    });
    let scratch = ScratchDatabase::seeded(database_url, "zdm_bench", rows, 1)?;
    let mut conn = PgConnection::establish(&scratch.url)
        .with_context(|| format!("connecting to the scratch database {}", scratch.name))?;
    let index_names = prepare(&mut conn, options.without_email_index, &mut say)?;
    let (knobs, _) =
        backfill::set_knobs(&mut conn, options.knobs).context("setting the backfill's knobs")?;
    let mut report = BackfillBenchReport {
        workers: knobs.workers_wanted,
        index_names,
        ..BackfillBenchReport::default()
    };
    for round in 0..options.rounds {
        run_round(
            &mut conn,
            &scratch.url,
            round,
            &options,
            &mut report,
            &mut say,
        )?;
    }
    report.batch_times.sort();
    report.batch_sizes.sort();
    drop(conn);
    drop(scratch);
    report.print(&options, &knobs, &mut say);
    Ok(report)
}

/// Brings the freshly seeded scratch database to dual_write (where the backfill runs), drops
/// the email index if asked, and copies the seeded users into `users_seed`, the source of
/// every fill. Returns the indexes each filled table will have.
fn prepare(
    conn: &mut PgConnection,
    without_email_index: bool,
    say: &mut impl FnMut(&str),
) -> Result<Vec<String>> {
    while state::current_phase(conn).context("reading the phase")? < Phase::DualWrite {
        runner::advance(conn, "bench", None).context("advancing to dual_write")?;
    }
    if without_email_index {
        // Before the copies: the single UPDATE's table copies its indexes from users.
        conn.batch_execute("DROP INDEX users_email_key")
            .context("dropping users_email_key")?;
    }
    let indexes = index_names(conn, "users").context("listing the indexes of users")?;
    say(&format!(
        "indexes on each filled table: {}{}",
        indexes.join(", "),
        if without_email_index {
            " (users_email_key dropped: --without-email-index)"
        } else {
            ""
        }
    ));
    // The source every round copies from, so that each fill starts from the same rows.
    conn.batch_execute(
        "CREATE TABLE users_seed AS SELECT * FROM users ORDER BY id;
         ALTER TABLE users_seed ADD PRIMARY KEY (id);",
    )
    .context("copying the seeded users into users_seed")?;
    Ok(indexes)
}

/// The fills of round `round` (see `round_order`), each on its table made afresh, into
/// `report`, each followed by its line (and the backfill's by its rate along the table).
fn run_round(
    conn: &mut PgConnection,
    url: &str,
    round: u32,
    options: &BackfillBenchOptions,
    report: &mut BackfillBenchReport,
    say: &mut impl FnMut(&str),
) -> Result<()> {
    for fill in round_order(round, options.small_rows) {
        let label = format!("round {}: {}", round + 1, fill.label(report.workers));
        rebuild(conn, fill, options.autovacuum)
            .with_context(|| format!("preparing the table of {label}"))?;
        say(&format!("{label}..."));
        report.order.push(label.clone());
        let (run, along_the_table) = match fill.side {
            Side::Single => (single_update(conn).with_context(|| label.clone())?, None),
            Side::Backfill => {
                let (run, rates) =
                    zdm_backfill(conn, url, fill, report).with_context(|| label.clone())?;
                (run, Some(rates))
            }
        };
        say(&format!("{label}  {}", line(&run)));
        if let Some(rates) = along_the_table {
            let tenths: Vec<String> = rates
                .iter()
                .map(|rate| format!("{:.1}", rate / 1000.0))
                .collect();
            say(&format!(
                "{label} by tenth of the table, thousand rows/s: {}",
                tenths.join(", ")
            ));
            if fill.first.is_none() {
                report.rates_by_tenth.push(rates);
            }
        }
        report.runs_of(fill).push(run);
    }
    Ok(())
}

/// The single UPDATE a hurried team would run, timed: all of `users_single` in one
/// transaction.
fn single_update(conn: &mut PgConnection) -> Result<Timed> {
    timed(conn, Side::Single.table(), |conn| {
        let rows = diesel::sql_query(
            "UPDATE users_single
                SET first_name = zdm_name_first(full_name),
                    last_name = zdm_name_last(full_name)
              WHERE first_name IS NULL OR last_name IS NULL
                 OR zdm_name_norm(full_name)
                    IS DISTINCT FROM zdm_name_join(first_name, last_name)",
        )
        .execute(conn)
        .context("running the single UPDATE")?;
        Ok(rows as u64)
    })
}

/// The zdm backfill of `users` to the end, timed, its workers connecting to `url`; with its
/// rate through each tenth of the table. A full-size fill's batches and ranges go into
/// `report` (a small copy's would blur them).
fn zdm_backfill(
    conn: &mut PgConnection,
    url: &str,
    fill: Fill,
    report: &mut BackfillBenchReport,
) -> Result<(Timed, Vec<f64>)> {
    let full_size = fill.first.is_none();
    // Rows scanned by the time each batch ended, for the backfill's rate along the table.
    let mut progress = vec![(Instant::now(), 0)];
    let run = timed(conn, Side::Backfill.table(), |conn| {
        let done = backfill::run_workers(
            conn,
            Some(url),
            Direction::Forward,
            &mut Throttle::none(),
            |s| {
                if s.state == backfill::BackfillState::Running {
                    progress.push((Instant::now(), s.rows_done));
                }
            },
            |batch| {
                if full_size {
                    report.batch_times.push(batch.took);
                    report.batch_sizes.push(batch.size);
                }
            },
        )
        .context("running the zdm backfill")?;
        Ok(done.rows_updated as u64)
    })?;
    if full_size {
        let ranges = backfill::ranges(conn).context("reading the backfill's ranges")?;
        report.ranges.push(ranges.len());
    }
    Ok((run, rates_by_tenth(&progress)))
}

/// The rate through each tenth of a run, from the rows done (scanned) at successive moments,
/// the first when it started: whether it slows down as it goes. A tenth ends at the first
/// moment at or past it, so a tenth that ends where the one before it did (a batch spanning
/// both) is merged into the next.
fn rates_by_tenth(progress: &[(Instant, i64)]) -> Vec<f64> {
    let (Some(&(mut since, mut from)), Some(&(_, total))) = (progress.first(), progress.last())
    else {
        return Vec::new();
    };
    let mut rates = Vec::new();
    for tenth in 1..=10 {
        let Some(&(at, rows)) = progress
            .iter()
            .find(|(_, rows)| *rows * 10 >= total * tenth)
        else {
            break;
        };
        if rows > from && at > since {
            rates.push((rows - from) as f64 / (at - since).as_secs_f64());
            (since, from) = (at, rows);
        }
    }
    rates
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rates_by_tenth_follow_the_run_and_merge_tenths_one_batch_spans() {
        let start = Instant::now();
        let at = |ms: u64, rows: i64| (start + Duration::from_millis(ms), rows);
        // 100 rows a second for the first half, then 50.
        let even: Vec<_> = (0..=10)
            .map(|i| {
                let ms = if i <= 5 {
                    i * 1000
                } else {
                    5000 + (i - 5) * 2000
                };
                at(ms, i as i64 * 100)
            })
            .collect();
        let rates = rates_by_tenth(&even);
        assert_eq!(rates.len(), 10);
        assert!(
            rates[..5].iter().all(|r| (r - 100.0).abs() < 1e-6),
            "{rates:?}"
        );
        assert!(
            rates[5..].iter().all(|r| (r - 50.0).abs() < 1e-6),
            "{rates:?}"
        );
        // Two batches of 500 rows: the first five tenths end with the first batch.
        let two = [at(0, 0), at(1000, 500), at(3000, 1000)];
        assert_eq!(rates_by_tenth(&two), [500.0, 250.0]);
        assert!(rates_by_tenth(&[]).is_empty());
    }

    #[test]
    fn rounds_alternate_which_side_goes_first() {
        let firsts: Vec<Side> = (0..4).map(|r| round_order(r, None)[0].side).collect();
        assert_eq!(
            firsts,
            [Side::Single, Side::Backfill, Side::Single, Side::Backfill]
        );
        for r in 0..4 {
            assert_ne!(round_order(r, None)[0], round_order(r, None)[1]);
        }
        let labels = |r| {
            round_order(r, Some(10))
                .into_iter()
                .map(|f| f.label(1))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            labels(0),
            [
                "single UPDATE",
                "zdm backfill",
                "single UPDATE (first 10 rows)",
                "zdm backfill (first 10 rows)"
            ]
        );
        assert_eq!(
            labels(1),
            [
                "zdm backfill (first 10 rows)",
                "single UPDATE (first 10 rows)",
                "zdm backfill",
                "single UPDATE"
            ]
        );
    }
}
