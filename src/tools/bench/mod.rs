//! Benchmarks: commands that print figures (never timed tests).
//!
//! `zdm bench backfill --rows N`: the zdm backfill against the single UPDATE a hurried team
//! would run, on identical copies of N seeded users in a scratch database of their own, in
//! rounds whose order alternates (single first, then backfill first: ABBA), so that a machine
//! whose speed drifts during the run favours neither, with autovacuum off for both tables
//! while they are filled (see `backfill_benchmark`). Prints rows/s for both, the WAL each
//! wrote, the batch transaction times, the peak RSS, and last
//! `backfill_vs_single_update: R` (the rate ratio); with `--workers N` (N > 1) the backfill
//! runs N workers and the last line is `parallel_backfill_vs_single_update: R`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::domain::Phase;
use crate::migration::backfill::{self, BackfillStatus, Direction, Knobs, Throttle};
use crate::migration::{runner, state};
use crate::tools::scratch::ScratchDatabase;

pub mod http;
pub mod replicas;

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

/// Bytes in a MiB.
pub(crate) const MIB: f64 = 1024.0 * 1024.0;

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What one timed fill did.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Rows the fill changed.
    pub rows: u64,
    pub secs: f64,
    /// WAL the server wrote meanwhile, in bytes (all of it, autovacuum's included).
    pub wal_bytes: i64,
    /// Checkpoints the server made meanwhile (None where its statistics cannot be read).
    pub checkpoints: Option<i64>,
    /// The size of the filled table right afterwards (`pg_table_size`: without its indexes),
    /// in bytes.
    pub table_bytes: i64,
    /// How many indexes the table had during the fill, as the server had them.
    pub indexes: usize,
    /// Whether autovacuum could run on the table during the fill, as the server had it (the
    /// `autovacuum` setting and the table's `autovacuum_enabled`).
    pub autovacuum_on: bool,
    /// Autovacuum runs the server finished on the table during the fill: the backfill's
    /// committed batches leave dead rows it may clean up meanwhile; the single UPDATE's become
    /// dead only when it commits.
    pub autovacuums: i64,
    /// How long a VACUUM of the table took right after the fill (not part of `secs`): the
    /// cleanup each way leaves behind.
    pub vacuum_secs: f64,
}

impl Timed {
    pub fn rate(&self) -> f64 {
        self.rows as f64 / self.secs
    }
}

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

/// The figures of one run of the benchmark.
#[derive(Debug, Default)]
pub struct BackfillBenchReport {
    /// One per round, in the order they ran.
    pub single: Vec<Timed>,
    pub backfill: Vec<Timed>,
    /// The same on the copies of the first `small_rows` users (empty without).
    pub small_single: Vec<Timed>,
    pub small_backfill: Vec<Timed>,
    /// The backfill's batch transaction times, all rounds (not the small copies), sorted.
    pub batch_times: Vec<Duration>,
    /// The sizes those batches had, sorted.
    pub batch_sizes: Vec<i32>,
    /// The backfill's workers.
    pub workers: i32,
    /// The ranges each full-size backfill fill ended with (its key range split among the
    /// workers, and split again as they ran out of work), one per round.
    pub ranges: Vec<usize>,
}

impl BackfillBenchReport {
    /// Every timed fill, the single UPDATE's then the backfill's, the small copies' last.
    pub fn fills(&self) -> impl Iterator<Item = &Timed> {
        self.single
            .iter()
            .chain(&self.backfill)
            .chain(&self.small_single)
            .chain(&self.small_backfill)
    }

    /// Where the figures of `fill` go.
    fn runs_of(&mut self, fill: Fill) -> &mut Vec<Timed> {
        match (fill.side, fill.first) {
            (Side::Single, None) => &mut self.single,
            (Side::Backfill, None) => &mut self.backfill,
            (Side::Single, Some(_)) => &mut self.small_single,
            (Side::Backfill, Some(_)) => &mut self.small_backfill,
        }
    }

    /// Each way's rate on all rows over its rate on the small copies: (backfill, single).
    pub fn size_ratios(&self) -> Option<(f64, f64)> {
        if self.small_backfill.is_empty() {
            return None;
        }
        Some((
            Self::rate(&self.backfill) / Self::rate(&self.small_backfill),
            Self::rate(&self.single) / Self::rate(&self.small_single),
        ))
    }

    /// Total rows over total time: each side's rate across all its rounds.
    fn rate(runs: &[Timed]) -> f64 {
        Self::rows_per_s(runs, |t| t.secs)
    }

    /// Total rows over the total of `secs` of each run.
    fn rows_per_s(runs: &[Timed], secs: impl Fn(&Timed) -> f64) -> f64 {
        let rows: u64 = runs.iter().map(|t| t.rows).sum();
        rows as f64 / runs.iter().map(secs).sum::<f64>()
    }

    /// `backfill_vs_single_update`: the backfill's rate over the single UPDATE's.
    pub fn ratio(&self) -> f64 {
        Self::rate(&self.backfill) / Self::rate(&self.single)
    }

    /// Total rows over the total time of the fills and the VACUUMs after them.
    fn rate_with_vacuum(runs: &[Timed]) -> f64 {
        Self::rows_per_s(runs, |t| t.secs + t.vacuum_secs)
    }

    /// As `ratio`, counting the VACUUM after each fill: the ratio of the work each way
    /// causes until its table is settled, whenever autovacuum happened to run.
    pub fn ratio_with_vacuum(&self) -> f64 {
        Self::rate_with_vacuum(&self.backfill) / Self::rate_with_vacuum(&self.single)
    }
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

/// The value of one bigint SQL expression, as the server computes it now.
fn select_i64(conn: &mut PgConnection, expression: &str) -> QueryResult<i64> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(expression)).get_result(conn)
}

/// The server's WAL position, in bytes.
fn wal_position(conn: &mut PgConnection) -> QueryResult<i64> {
    select_i64(conn, "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
}

/// Checkpoints the server has made since its statistics were reset. PostgreSQL 17 moved the
/// counters to pg_stat_checkpointer; the view is chosen by version, as a query naming one
/// that does not exist fails (and lands in the server's log) even in an untaken branch.
fn checkpoint_count(conn: &mut PgConnection) -> Option<i64> {
    let version = select_i64(conn, "current_setting('server_version_num')::bigint").ok()?;
    let counters = if version >= 170_000 {
        "(SELECT num_timed + num_requested FROM pg_stat_checkpointer)"
    } else {
        "(SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter)"
    };
    select_i64(conn, counters).ok()
}

/// The autovacuum runs the server has finished on `table`.
fn autovacuum_count(conn: &mut PgConnection, table: &str) -> QueryResult<i64> {
    select_i64(
        conn,
        &format!(
            "(SELECT autovacuum_count FROM pg_stat_user_tables WHERE relid = '{table}'::regclass)"
        ),
    )
}

/// The indexes on `table`, by name.
fn index_names(conn: &mut PgConnection, table: &str) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct Index {
        #[diesel(sql_type = diesel::sql_types::Text)]
        name: String,
    }
    let indexes: Vec<Index> = diesel::sql_query(format!(
        "SELECT indexrelid::regclass::text AS name FROM pg_index
          WHERE indrelid = '{table}'::regclass ORDER BY name"
    ))
    .load(conn)?;
    Ok(indexes.into_iter().map(|i| i.name).collect())
}

/// Whether autovacuum may run on `table`: on for the server and not turned off for the table.
fn autovacuum_on(conn: &mut PgConnection, table: &str) -> QueryResult<bool> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "current_setting('autovacuum')::bool
         AND coalesce((SELECT option_value::bool
                         FROM pg_class, pg_options_to_table(reloptions)
                        WHERE oid = '{table}'::regclass AND option_name = 'autovacuum_enabled'),
                      true)"
    )))
    .get_result(conn)
}

/// Times `fill` of `table`, which returns the rows it changed, with the server's WAL,
/// checkpoints and autovacuums meanwhile, the table's size afterwards, and then the VACUUM
/// that cleans up after it.
fn timed(
    conn: &mut PgConnection,
    table: &str,
    fill: impl FnOnce(&mut PgConnection) -> Result<u64>,
) -> Result<Timed> {
    let wal_before = wal_position(conn).context("reading the WAL position before the fill")?;
    let checkpoints_before = checkpoint_count(conn);
    let autovacuums_before = autovacuum_count(conn, table)
        .with_context(|| format!("counting the autovacuums of {table}"))?;
    let autovacuum_on = autovacuum_on(conn, table)
        .with_context(|| format!("reading whether autovacuum may run on {table}"))?;
    let indexes = index_names(conn, table)
        .with_context(|| format!("listing the indexes of {table}"))?
        .len();
    let started = Instant::now();
    let rows = fill(conn)?;
    let secs = started.elapsed().as_secs_f64();
    let checkpoints = checkpoint_count(conn)
        .zip(checkpoints_before)
        .map(|(after, before)| after - before);
    let wal_bytes =
        wal_position(conn).context("reading the WAL position after the fill")? - wal_before;
    let autovacuums = autovacuum_count(conn, table)
        .with_context(|| format!("counting the autovacuums of {table} after the fill"))?
        - autovacuums_before;
    let table_bytes = select_i64(conn, &format!("pg_table_size('{table}')"))
        .with_context(|| format!("reading the size of {table}"))?;
    let vacuum_started = Instant::now();
    conn.batch_execute(&format!("VACUUM {table}"))
        .with_context(|| format!("vacuuming {table} after the fill"))?;
    Ok(Timed {
        rows,
        secs,
        wal_bytes,
        checkpoints,
        table_bytes,
        indexes,
        autovacuum_on,
        autovacuums,
        vacuum_secs: vacuum_started.elapsed().as_secs_f64(),
    })
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
    prepare(&mut conn, options.without_email_index, &mut say)?;
    let (knobs, _) =
        backfill::set_knobs(&mut conn, options.knobs).context("setting the backfill's knobs")?;
    let mut report = BackfillBenchReport {
        workers: knobs.workers_wanted,
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
/// every fill.
fn prepare(
    conn: &mut PgConnection,
    without_email_index: bool,
    say: &mut impl FnMut(&str),
) -> Result<()> {
    while state::current_phase(conn).context("reading the phase")? < Phase::DualWrite {
        runner::advance(conn, "bench", None).context("advancing to dual_write")?;
    }
    if without_email_index {
        // Before the copies: the single UPDATE's table copies its indexes from users.
        conn.batch_execute("DROP INDEX users_email_key")
            .context("dropping users_email_key")?;
    }
    say(&format!(
        "indexes on each filled table: {}{}",
        index_names(conn, "users")
            .context("listing the indexes of users")?
            .join(", "),
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
    .context("copying the seeded users into users_seed")
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

impl BackfillBenchReport {
    /// Prints the figures of the run: each side's rate, the backfill's batches, what each way
    /// leaves behind, and last the rate ratio (the line a script reads). `knobs`: the
    /// backfill's, as it ran with them.
    fn print(
        &self,
        options: &BackfillBenchOptions,
        knobs: &BackfillStatus,
        say: &mut impl FnMut(&str),
    ) {
        let rows = options.rows;
        say(&format!("rows: {rows}"));
        say(&format!(
            "single UPDATE: {} (one transaction each)",
            rate_across_rounds(&self.single)
        ));
        say(&self.backfill_summary(knobs));
        let ratios: Vec<String> = self
            .backfill
            .iter()
            .zip(&self.single)
            .map(|(b, s)| format!("{:.2}", b.rate() / s.rate()))
            .collect();
        say(&format!("ratio by round: {}", ratios.join(", ")));
        say(&format!(
            "with the VACUUM after each fill: single UPDATE {:.0} rows/s, zdm backfill {:.0} rows/s, ratio {:.2}",
            Self::rate_with_vacuum(&self.single),
            Self::rate_with_vacuum(&self.backfill),
            self.ratio_with_vacuum()
        ));
        let times = &self.batch_times;
        say(&format!(
            "batch transaction: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            ms(quantile(times, 0.5)),
            ms(quantile(times, 0.99)),
            ms(times.last().copied().unwrap_or_default())
        ));
        // What each way leaves behind: one big UPDATE doubles the table (every row gets a new
        // version that autovacuum can only reclaim afterwards); batches let it keep up.
        let mib = |runs: &[Timed]| runs.last().map_or(0.0, |t| t.table_bytes as f64 / MIB);
        say(&format!(
            "table size afterwards (last round): single UPDATE {:.0} MiB, zdm backfill {:.0} MiB",
            mib(&self.single),
            mib(&self.backfill)
        ));
        if let (Some(small), Some((backfill_ratio, single_ratio))) =
            (options.small_rows, self.size_ratios())
        {
            say(&format!(
                "first {small} rows: single UPDATE {}, zdm backfill {}",
                rate_across_rounds(&self.small_single),
                rate_across_rounds(&self.small_backfill)
            ));
            say(&format!(
                "rate at {rows} rows against {small}: zdm backfill {backfill_ratio:.2}, single UPDATE {single_ratio:.2}"
            ));
        }
        say(&format!(
            "peak RSS of this process: {}",
            peak_rss_mib(None).map_or("unknown".to_owned(), |m| format!("{m:.1} MiB"))
        ));
        let ratio_name = if self.workers > 1 {
            "parallel_backfill_vs_single_update"
        } else {
            "backfill_vs_single_update"
        };
        say(&format!("{ratio_name}: {:.2}", self.ratio()));
    }

    /// The backfill's line: its rate, its batches and how it sized them (to a target time,
    /// or fixed), the ranges each round ended with.
    fn backfill_summary(&self, knobs: &BackfillStatus) -> String {
        let sizes = &self.batch_sizes;
        let sizing = if knobs.batch_target_ms > 0 {
            format!(
                "sized to {} ms from {}: median {}, range {}..{}",
                knobs.batch_target_ms,
                knobs.batch_size,
                sizes.get(sizes.len() / 2).unwrap_or(&0),
                sizes.first().unwrap_or(&0),
                sizes.last().unwrap_or(&0)
            )
        } else {
            format!("of {}", knobs.batch_size)
        };
        let ranges = self
            .ranges
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{}:  {} ({} batches {sizing}, sleep 0; ranges by round: {ranges})",
            backfill_label(self.workers),
            rate_across_rounds(&self.backfill),
            self.batch_times.len()
        )
    }
}

/// A side's rate across all its rounds, as the report gives it.
fn rate_across_rounds(runs: &[Timed]) -> String {
    let secs: f64 = runs.iter().map(|t| t.secs).sum();
    let rounds = match runs.len() {
        1 => "1 round".to_owned(),
        n => format!("{n} rounds"),
    };
    format!(
        "{:.0} rows/s ({rounds}, {secs:.1} s)",
        BackfillBenchReport::rate(runs)
    )
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

/// One timed fill as a line of the report.
fn line(run: &Timed) -> String {
    let checkpoints = run
        .checkpoints
        .map_or("unknown".to_owned(), |n| n.to_string());
    let autovacuums = if run.autovacuum_on {
        format!("autovacuums {}", run.autovacuums)
    } else {
        "autovacuum off".to_owned()
    };
    format!(
        "{} rows in {:.2} s = {:.0} rows/s; WAL {:.0} MiB ({:.0} B/row), checkpoints {checkpoints}, \
         {autovacuums}; VACUUM afterwards {:.2} s",
        run.rows,
        run.secs,
        run.rate(),
        run.wal_bytes as f64 / MIB,
        run.wal_bytes as f64 / run.rows.max(1) as f64,
        run.vacuum_secs
    )
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
