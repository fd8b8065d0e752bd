//! Verification: counts the rows that break the invariant of the current phase, keeps a few
//! of their ids, and stores the result where the gates (and the contract migration's SQL)
//! read it.
//!
//! - dual_write, backfilled, read_new: invariant [I2], `norm(full_name) = join(first, last)`
//!   with both parts present. Its negation is exactly the backfill's repair condition.
//! - new_only, contracted: `full_name` is no longer maintained, so what matters is that every
//!   row has both new columns (the data the contract keeps).
//! - baseline, expanded: nothing to verify yet (nobody writes the new columns).
//!
//! [I2]: crate::migration#invariants

use chrono::{DateTime, Utc};
use diesel::dsl::now;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::Bool;
use serde::Serialize;

use super::gates::{self, GateStep};
use super::name_sql::{zdm_name_join, zdm_name_norm};
use crate::domain::Phase;
use crate::schema::state::zdm_verify;
use crate::schema::{SchemaVersion, expanded, v2};

/// How many divergent ids a verification keeps as examples.
pub const SAMPLE_SIZE: i64 = 10;

#[derive(Debug, Clone, PartialEq, Eq, Queryable, Serialize)]
pub struct VerifyResult {
    pub divergent: i64,
    pub sample_ids: Vec<i64>,
    pub phase: String,
    pub checked_at: DateTime<Utc>,
}

/// The I2 repair condition: rows whose new columns are missing or disagree with `full_name`.
pub fn needs_repair() -> Box<dyn BoxableExpression<expanded::users::table, Pg, SqlType = Bool>> {
    use expanded::users::dsl::*;
    Box::new(
        first_name
            .is_null()
            .or(last_name.is_null())
            .or(zdm_name_norm(full_name).is_distinct_from(zdm_name_join(first_name, last_name))),
    )
}

fn incomplete() -> Box<dyn BoxableExpression<v2::users::table, Pg, SqlType = Bool>> {
    use v2::users::dsl::*;
    Box::new(first_name.is_null().or(last_name.is_null()))
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("nothing to verify in phase {0}: the new columns are not written before dual_write")]
    NotApplicable(Phase),
    /// A gate of verification is unmet (row-level security could hide rows from it).
    #[error("{name} gate: {detail}")]
    GateUnmet { name: String, detail: String },
    #[error(transparent)]
    Database(#[from] diesel::result::Error),
}

/// Verifies the whole table for `phase` and stores the result. Refused where a gate of
/// verification is unmet: a count of the rows it can see is no count of the table. The scan
/// runs without a statement_timeout, whatever the role's or the database's default: it lets
/// traffic through, and a DBA's guard rail would cancel it half-way on a large table.
pub fn verify(conn: &mut PgConnection, phase: Phase) -> Result<VerifyResult, VerifyError> {
    if let Some(unmet) = gates::gates(conn, GateStep::Verify, phase)?
        .into_iter()
        .find(|g| !g.met)
    {
        return Err(VerifyError::GateUnmet {
            name: unmet.name,
            detail: unmet.detail,
        });
    }
    conn.transaction(|conn| {
        diesel::sql_query("SET LOCAL statement_timeout = 0").execute(conn)?;
        verify_all(conn, phase)
    })
}

fn verify_all(conn: &mut PgConnection, phase: Phase) -> Result<VerifyResult, VerifyError> {
    let (divergent, sample_ids) = match SchemaVersion::for_phase(phase) {
        SchemaVersion::V1 => return Err(VerifyError::NotApplicable(phase)),
        // I2, written once in SQL (`zdm_verify_names`), where the phase migrations verify too;
        // it stores its result itself.
        SchemaVersion::Expanded => {
            diesel::sql_query("SELECT zdm_verify_names($1)")
                .bind::<diesel::sql_types::Text, _>(phase.as_str())
                .execute(conn)?;
            return Ok(latest(conn)?.ok_or(diesel::result::Error::NotFound)?);
        }
        SchemaVersion::V2 => {
            use v2::users::dsl::*;
            let count: i64 = users.filter(incomplete()).count().get_result(conn)?;
            let sample: Vec<i64> = users
                .filter(incomplete())
                .select(id)
                .order(id)
                .limit(SAMPLE_SIZE)
                .load(conn)?;
            (count, sample)
        }
    };
    let result: VerifyResult = diesel::insert_into(zdm_verify::table)
        .values((
            zdm_verify::divergent.eq(divergent),
            zdm_verify::sample_ids.eq(&sample_ids),
            zdm_verify::phase.eq(phase.as_str()),
            zdm_verify::checked_at.eq(now),
        ))
        .on_conflict(zdm_verify::singleton)
        .do_update()
        .set((
            zdm_verify::divergent.eq(divergent),
            zdm_verify::sample_ids.eq(&sample_ids),
            zdm_verify::phase.eq(phase.as_str()),
            zdm_verify::checked_at.eq(now),
        ))
        .returning((
            zdm_verify::divergent,
            zdm_verify::sample_ids,
            zdm_verify::phase,
            zdm_verify::checked_at,
        ))
        .get_result(conn)?;
    Ok(result)
}

/// The stored result, if any verification ran.
pub fn latest(conn: &mut PgConnection) -> QueryResult<Option<VerifyResult>> {
    zdm_verify::table
        .select((
            zdm_verify::divergent,
            zdm_verify::sample_ids,
            zdm_verify::phase,
            zdm_verify::checked_at,
        ))
        .first(conn)
        .optional()
}
