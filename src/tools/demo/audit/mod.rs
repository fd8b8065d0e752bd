//! The audit after the traffic. It reads the table through its own SQL and judges it with its
//! own oracle (`super::oracle`), never with the app's code:
//!
//! - every row a client wrote must read back, in both APIs and in the phase the run ended
//!   in, as the last write that client saw acknowledged (I3); a row that does not is a lost
//!   write, counted under the phase the write was sent in;
//! - every read a client checked during the run must have shown its last acknowledged write
//!   (the clients log the ones that did not: stale reads);
//! - the table must satisfy the phase's invariant (I2), row by row;
//! - every seeded row no client wrote must be as it was before the traffic: its id, its
//!   normalised name as the phase exposes it and its email, checked row by row against
//!   digests taken before the traffic (and summed into one checksum for the report).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::str::FromStr;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use super::oracle::{Row, Sent, norm};
use crate::domain::Phase;

/// A state a client expects a row in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowState {
    /// As seeded: no write of the client's took effect.
    Seeded,
    Written(Sent),
    Deleted,
}

/// What a client last saw acknowledged for a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    /// The states the row may be in: one after an acknowledged write; the state before and
    /// the one after when the answer was lost (either is fine, anything else is not).
    pub states: Vec<RowState>,
    /// The segment of the run (see `report::Segment`) the last write was sent in.
    pub segment: usize,
}

/// A read that did not show the reader's last acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleRead {
    pub id: i64,
    pub segment: usize,
    pub expected: String,
    pub seen: String,
}

/// One client's record of the run.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub rows: HashMap<i64, Acknowledged>,
    pub stale_reads: Vec<StaleRead>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditResult {
    /// The phase the run ended in, and the audit read in.
    pub phase: String,
    /// Rows checked against their last acknowledged write.
    pub rows_checked: usize,
    /// Rows whose stored values are not the last acknowledged ones.
    pub lost_writes: usize,
    /// The same, by the segment the lost write was sent in.
    pub lost_writes_by_phase: BTreeMap<String, usize>,
    /// Acknowledged writes from before a promotion that the new primary lacks, with an
    /// asynchronous standby: PostgreSQL allows their loss there, so they are counted here and
    /// not in `lost_writes` (see `RunRecord::async_promotion`).
    pub lost_to_async_replication: usize,
    /// Reads during the run that did not show the reader's last acknowledged write.
    pub stale_reads: usize,
    /// Rows breaking the phase's invariant (I2), by the audit's own check.
    pub divergent: usize,
    /// Up to 10 of them.
    pub divergent_ids: Vec<i64>,
    /// Writes whose answer was lost and which may have gone either way.
    pub uncertain: usize,
    /// Seeded rows no client wrote, checked against their digest from before the traffic.
    pub untouched_rows: usize,
    /// Those that changed (or disappeared).
    pub untouched_altered: usize,
    /// The untouched rows' digests summed, before the traffic and at the end.
    pub untouched_checksum_before: String,
    pub untouched_checksum_after: String,
    /// Up to 10 findings of each kind, with what was expected and found.
    pub examples: Vec<String>,
}

impl AuditResult {
    /// Whether the audit found anything wrong.
    pub fn found_anything(&self) -> bool {
        self.lost_writes + self.stale_reads + self.divergent + self.untouched_altered > 0
    }
}

/// Digests of a seeded row's exposed name (normalised) and email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Digest {
    name: u64,
    email: u64,
}

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

impl Digest {
    fn of(row: &Row, phase: Phase) -> Self {
        Self {
            name: hash_of(norm(&row.v1_name(phase))),
            email: hash_of(&row.email),
        }
    }

    fn with_id(self, id: i64) -> u64 {
        hash_of((id, self.name, self.email))
    }
}

/// The seeded rows, as digests, taken before the traffic.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    rows: HashMap<i64, Digest>,
}

impl Snapshot {
    pub fn of(phase: Phase, rows: &[Row]) -> Self {
        Self {
            rows: rows.iter().map(|r| (r.id, Digest::of(r, phase))).collect(),
        }
    }

    /// Reads the whole table (see `read_table`) and keeps its digests.
    pub fn take(conn: &mut PgConnection) -> QueryResult<Self> {
        let (phase, rows) = read_table(conn)?;
        Ok(Self::of(phase, &rows))
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[derive(QueryableByName)]
struct ColumnName {
    #[diesel(sql_type = Text)]
    column_name: String,
}

#[derive(QueryableByName)]
struct PhaseName {
    #[diesel(sql_type = Text)]
    phase: String,
}

/// Rows read per query.
const READ_BATCH: i64 = 10_000;

/// The stored phase and every row of `users`, read in one repeatable-read snapshot with SQL
/// of the audit's own (the name columns the table has, NULL for those it lacks).
pub fn read_table(conn: &mut PgConnection) -> QueryResult<(Phase, Vec<Row>)> {
    conn.build_transaction()
        .repeatable_read()
        .read_only()
        .run(|conn| {
            let phase_name = diesel::sql_query("SELECT phase FROM zdm_migration_state")
                .get_result::<PhaseName>(conn)?
                .phase;
            let phase = Phase::from_str(&phase_name).map_err(|_| {
                diesel::result::Error::DeserializationError(
                    format!("unknown phase {phase_name:?}").into(),
                )
            })?;
            let present: HashSet<String> = diesel::sql_query(
                "SELECT column_name::text AS column_name FROM information_schema.columns \
                 WHERE table_schema = current_schema() AND table_name = 'users'",
            )
            .load::<ColumnName>(conn)?
            .into_iter()
            .map(|c| c.column_name)
            .collect();
            let column = |name: &str| {
                if present.contains(name) {
                    name.to_owned()
                } else {
                    format!("NULL::text AS {name}")
                }
            };
            let query = format!(
                "SELECT id, email, {}, {}, {} FROM users WHERE id > $1 ORDER BY id LIMIT $2",
                column("full_name"),
                column("first_name"),
                column("last_name"),
            );
            let mut rows: Vec<Row> = Vec::new();
            loop {
                let after = rows.last().map_or(i64::MIN, |r| r.id);
                let batch: Vec<Row> = diesel::sql_query(&query)
                    .bind::<BigInt, _>(after)
                    .bind::<BigInt, _>(READ_BATCH)
                    .load(conn)?;
                let done = (batch.len() as i64) < READ_BATCH;
                rows.extend(batch);
                if done {
                    return Ok((phase, rows));
                }
            }
        })
}

/// Whether a row found (or not) is in `state`.
fn holds(phase: Phase, found: Option<&Row>, state: &RowState, seeded: Option<&Digest>) -> bool {
    match (state, found) {
        (RowState::Deleted, found) => found.is_none(),
        (_, None) => false,
        (RowState::Seeded, Some(row)) => seeded == Some(&Digest::of(row, phase)),
        (RowState::Written(sent), Some(row)) => {
            let email_holds = match sent.email() {
                Some(email) => row.email == email,
                None => seeded.is_some_and(|d| d.email == hash_of(&row.email)),
            };
            row.v1_name(phase) == sent.v1_name()
                && row.v2_name(phase).is_none_or(|v2| v2 == sent.v2_name())
                && email_holds
        }
    }
}

fn found_text(found: Option<&Row>, phase: Phase) -> String {
    match found {
        None => "no row".to_owned(),
        Some(row) => format!(
            "v1 {:?}, v2 {:?}, email {:?}",
            row.v1_name(phase),
            row.v2_name(phase),
            row.email
        ),
    }
}

fn expected_text(states: &[RowState]) -> String {
    let one = |state: &RowState| match state {
        RowState::Seeded => "as seeded".to_owned(),
        RowState::Deleted => "deleted".to_owned(),
        RowState::Written(sent) => format!(
            "v1 {:?}, v2 {:?}{}",
            sent.v1_name(),
            sent.v2_name(),
            sent.email()
                .map(|e| format!(", email {e:?}"))
                .unwrap_or_default()
        ),
    };
    states.iter().map(one).collect::<Vec<_>>().join(" or ")
}

/// What the audit knows of the run besides the table.
pub struct RunRecord<'a> {
    /// The clients' ledgers.
    pub ledgers: &'a [Ledger],
    /// The seeded rows, taken before the traffic.
    pub seeded: &'a Snapshot,
    /// The names of the run's segments, which the ledgers refer to by index.
    pub segment_names: &'a [String],
    /// Whether the backfill ran to the end (from then on every row has the new columns).
    pub backfilled: bool,
    /// With a failover to an asynchronous standby, the segment in which the standby was
    /// promoted: a write last acknowledged in it or before may be missing without zdm being
    /// at fault. None otherwise (every acknowledged write must then be there).
    pub async_promotion: Option<usize>,
}

impl RunRecord<'_> {
    fn segment_name(&self, segment: usize) -> String {
        self.segment_names
            .get(segment)
            .cloned()
            .unwrap_or_else(|| format!("segment {segment}"))
    }
}

/// Up to this many examples of each kind of finding go into the result.
const EXAMPLES: usize = 10;

/// The table as the audit read it: its rows by id, and the phase it was read in (which says
/// what each API reads from a row).
struct Table<'a> {
    phase: Phase,
    by_id: HashMap<i64, &'a Row>,
}

/// Judges the table (`rows`, read in `phase`) against the record of the run.
pub fn judge(phase: Phase, rows: &[Row], record: &RunRecord) -> AuditResult {
    let table = Table {
        phase,
        by_id: rows.iter().map(|r| (r.id, r)).collect(),
    };
    let mut result = AuditResult {
        phase: phase.as_str().to_owned(),
        ..AuditResult::default()
    };
    let mut examples = check_acknowledged_writes(&table, record, &mut result);
    examples.extend(check_reads(record, &mut result));
    examples.extend(check_consistency(
        phase,
        rows,
        record.backfilled,
        &mut result,
    ));
    examples.extend(check_untouched_rows(&table, record, &mut result));
    result.examples = examples;
    result
}

/// I3: every row a client wrote holds the last write it saw acknowledged (or, where the
/// answer was lost, one of the two states it may be in). Returns examples of lost writes.
fn check_acknowledged_writes(
    table: &Table,
    record: &RunRecord,
    result: &mut AuditResult,
) -> Vec<String> {
    let mut examples = Vec::new();
    for (id, acknowledged) in record.ledgers.iter().flat_map(|l| &l.rows) {
        result.rows_checked += 1;
        if acknowledged.states.len() > 1 {
            result.uncertain += 1;
        }
        let found = table.by_id.get(id).copied();
        let digest = record.seeded.rows.get(id);
        if acknowledged
            .states
            .iter()
            .any(|state| holds(table.phase, found, state, digest))
        {
            continue;
        }
        if record
            .async_promotion
            .is_some_and(|promoted| acknowledged.segment <= promoted)
        {
            result.lost_to_async_replication += 1;
            continue;
        }
        result.lost_writes += 1;
        let name = record.segment_name(acknowledged.segment);
        if examples.len() < EXAMPLES {
            examples.push(format!(
                "lost write: id {id} (written in {name}): expected {}, found {}",
                expected_text(&acknowledged.states),
                found_text(found, table.phase)
            ));
        }
        *result.lost_writes_by_phase.entry(name).or_default() += 1;
    }
    examples
}

/// The reads the clients logged as stale during the run. Returns examples of them.
fn check_reads(record: &RunRecord, result: &mut AuditResult) -> Vec<String> {
    let stale = || record.ledgers.iter().flat_map(|l| &l.stale_reads);
    result.stale_reads = stale().count();
    stale()
        .take(EXAMPLES)
        .map(|s| {
            format!(
                "stale read: id {} in {}: expected {}, saw {}",
                s.id,
                record.segment_name(s.segment),
                s.expected,
                s.seen
            )
        })
        .collect()
}

/// I2, row by row, as `phase` defines it. Returns examples of divergent rows.
fn check_consistency(
    phase: Phase,
    rows: &[Row],
    backfilled: bool,
    result: &mut AuditResult,
) -> Vec<String> {
    let divergent: Vec<&Row> = rows
        .iter()
        .filter(|r| r.diverges(phase, backfilled))
        .collect();
    result.divergent = divergent.len();
    result.divergent_ids = divergent.iter().take(EXAMPLES).map(|r| r.id).collect();
    divergent
        .iter()
        .take(EXAMPLES)
        .map(|r| {
            format!(
                "divergent row: id {}: full_name {:?}, first_name {:?}, last_name {:?}",
                r.id, r.full_name, r.first_name, r.last_name
            )
        })
        .collect()
}

/// Every seeded row no client wrote still has the digest it had before the traffic; their
/// digests summed, before and now, make the report's checksums. Returns examples of rows
/// altered (or gone).
fn check_untouched_rows(
    table: &Table,
    record: &RunRecord,
    result: &mut AuditResult,
) -> Vec<String> {
    let touched: HashSet<i64> = record
        .ledgers
        .iter()
        .flat_map(|l| l.rows.keys().copied())
        .collect();
    let mut untouched: Vec<(&i64, &Digest)> = record
        .seeded
        .rows
        .iter()
        .filter(|(id, _)| !touched.contains(id))
        .collect();
    untouched.sort_unstable_by_key(|(id, _)| **id);
    let mut examples = Vec::new();
    let (mut before, mut after) = (0u64, 0u64);
    for (id, digest) in untouched {
        result.untouched_rows += 1;
        before = before.wrapping_add(digest.with_id(*id));
        let found = table.by_id.get(id).copied();
        let now = found.map(|row| Digest::of(row, table.phase));
        after = after.wrapping_add(now.map_or(0, |d| d.with_id(*id)));
        if now != Some(*digest) {
            result.untouched_altered += 1;
            if result.untouched_altered <= EXAMPLES {
                examples.push(format!(
                    "untouched row altered: id {id}: now {}",
                    found_text(found, table.phase)
                ));
            }
        }
    }
    result.untouched_checksum_before = format!("{before:016x}");
    result.untouched_checksum_after = format!("{after:016x}");
    examples
}

/// Reads the table and judges it (see `judge`).
pub fn audit(conn: &mut PgConnection, record: &RunRecord) -> QueryResult<AuditResult> {
    let (phase, rows) = read_table(conn)?;
    Ok(judge(phase, &rows, record))
}

#[cfg(test)]
mod tests;
