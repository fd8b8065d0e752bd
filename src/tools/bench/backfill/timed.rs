//! One timed fill of the backfill benchmark, with what the server did meanwhile: its WAL,
//! checkpoints and autovacuums, the table's size afterwards and the VACUUM after it.

use std::time::Instant;

use anyhow::{Context, Result};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::tools::stats::MIB;

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
pub(super) fn index_names(conn: &mut PgConnection, table: &str) -> QueryResult<Vec<String>> {
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
pub(super) fn timed(
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

/// One timed fill as a line of the report.
pub(super) fn line(run: &Timed) -> String {
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
