//! The audit after the traffic: every row a client touched must read back, in the phase the
//! run ended in, as the last write that client saw acknowledged (I3), and the table must
//! satisfy that phase's invariant (I2 or completeness, as verify checks it).

use std::collections::HashMap;

use diesel::prelude::*;

use super::traffic::{Expected, Values};
use crate::db::users::{self, StoredUser};
use crate::migration::{Phase, verify};

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AuditResult {
    /// The phase the run ended in, and the audit read in.
    pub phase: String,
    /// Rows checked (each touched by an acknowledged write).
    pub rows_checked: usize,
    /// Rows whose stored values are not the last acknowledged ones.
    pub lost_writes: usize,
    /// Up to 10 of them, with what was expected and found.
    pub examples: Vec<String>,
    /// Rows breaking the phase's invariant (verify).
    pub divergent: i64,
    /// Writes whose answer was lost and which may have gone either way.
    pub uncertain: usize,
}

/// Whether the row (as both API versions would read it) holds `expected`.
fn holds(found: Option<&StoredUser>, expected: Option<&Values>, phase: Phase) -> bool {
    match (found, expected) {
        (None, None) => true,
        (Some(user), Some(v)) => {
            let v1_sees = user.v1_full_name(phase);
            let v2_sees = user.v2_name_parts(phase);
            v1_sees == v.full_name
                && v2_sees == v.parts
                && (v.email.is_empty() || user.email == v.email)
        }
        _ => false,
    }
}

pub fn audit(
    conn: &mut PgConnection,
    phase: Phase,
    ledgers: &[HashMap<i64, Expected>],
) -> QueryResult<AuditResult> {
    let mut result = AuditResult {
        phase: phase.as_str().to_owned(),
        ..AuditResult::default()
    };
    let ids: Vec<i64> = ledgers.iter().flat_map(|l| l.keys().copied()).collect();
    let mut stored: HashMap<i64, StoredUser> = HashMap::new();
    for chunk in ids.chunks(10_000) {
        stored.extend(
            users::find_users(conn, phase, chunk)?
                .into_iter()
                .map(|u| (u.id, u)),
        );
    }
    for ledger in ledgers {
        for (id, expected) in ledger {
            result.rows_checked += 1;
            let found = stored.get(id);
            let ok = match expected {
                Expected::Present(v) => holds(found, Some(v), phase),
                Expected::Deleted => found.is_none(),
                Expected::EitherOf(candidates) => {
                    result.uncertain += 1;
                    candidates.iter().any(|c| holds(found, c.as_ref(), phase))
                }
            };
            if !ok {
                result.lost_writes += 1;
                if result.examples.len() < 10 {
                    result
                        .examples
                        .push(format!("id {id}: expected {expected:?}, found {found:?}"));
                }
            }
        }
    }
    result.divergent = match verify::verify(conn, phase) {
        Ok(v) => v.divergent,
        Err(verify::VerifyError::NotApplicable(_)) => 0,
        Err(verify::VerifyError::Database(e)) => return Err(e),
    };
    Ok(result)
}
