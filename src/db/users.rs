//! `users`, read and written the way the current phase prescribes.
//!
//! Every function takes the phase the calling instance has applied and uses only that
//! phase's schema module (`crate::schema`), so a phase that must not touch `full_name` has no
//! way to name it. Each write is one SQL statement: a row is never seen half written.

use diesel::prelude::*;

use crate::domain::Name;
use crate::domain::Phase;
use crate::domain::name_rule::{is_consistent, join_name, split_full_name};
use crate::schema::{SchemaVersion, expanded, v1, v2};

/// A row as stored, whatever the phase; columns the phase's schema lacks are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub id: i64,
    pub email: String,
    pub full_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
}

impl StoredUser {
    /// The name a v1 client sees: `full_name` until reads switch, then the join of the parts.
    pub fn v1_full_name(&self, phase: Phase) -> String {
        if phase >= Phase::ReadNew {
            join_name(
                self.first_name.as_deref().unwrap_or_default(),
                self.last_name.as_deref().unwrap_or_default(),
            )
        } else {
            self.full_name.clone().unwrap_or_default()
        }
    }

    /// The parts a v2 client sees. Before reads switch, the new columns are trusted only where
    /// they agree with `full_name` (invariant [I2]); elsewhere (a row not yet backfilled, or
    /// last written by a lagging v1-only instance) `full_name` is split by the name rule.
    ///
    /// [I2]: crate::migration#invariants
    pub fn v2_name_parts(&self, phase: Phase) -> (String, String) {
        match (&self.full_name, &self.first_name, &self.last_name) {
            (Some(full), Some(first), Some(last))
                if phase >= Phase::ReadNew || is_consistent(full, first, last) =>
            {
                (first.clone(), last.clone())
            }
            (_, Some(first), Some(last)) if phase >= Phase::ReadNew => {
                (first.clone(), last.clone())
            }
            (Some(full), _, _) => split_full_name(full),
            (None, first, last) => (
                first.clone().unwrap_or_default(),
                last.clone().unwrap_or_default(),
            ),
        }
    }
}

type V1Row = (i64, String, String);
type ExpandedRow = (i64, String, Option<String>, Option<String>, Option<String>);
type V2Row = (i64, String, String, String);

fn from_v1((id, email, full_name): V1Row) -> StoredUser {
    StoredUser {
        id,
        email,
        full_name: Some(full_name),
        first_name: None,
        last_name: None,
    }
}

fn from_expanded((id, email, full_name, first_name, last_name): ExpandedRow) -> StoredUser {
    StoredUser {
        id,
        email,
        full_name,
        first_name,
        last_name,
    }
}

fn from_v2((id, email, first_name, last_name): V2Row) -> StoredUser {
    StoredUser {
        id,
        email,
        full_name: None,
        first_name: Some(first_name),
        last_name: Some(last_name),
    }
}

const V1_COLUMNS: (v1::users::id, v1::users::email, v1::users::full_name) =
    (v1::users::id, v1::users::email, v1::users::full_name);
/// `full_name` is read as nullable although it is NOT NULL until new_only: while the fleet
/// moves to new_only, an instance still in read_new reads rows a new_only instance wrote
/// without it (the column allows NULL from that step's migration on).
fn expanded_columns() -> (
    expanded::users::id,
    expanded::users::email,
    diesel::dsl::Nullable<expanded::users::full_name>,
    expanded::users::first_name,
    expanded::users::last_name,
) {
    (
        expanded::users::id,
        expanded::users::email,
        expanded::users::full_name.nullable(),
        expanded::users::first_name,
        expanded::users::last_name,
    )
}
const V2_COLUMNS: (
    v2::users::id,
    v2::users::email,
    v2::users::first_name,
    v2::users::last_name,
) = (
    v2::users::id,
    v2::users::email,
    v2::users::first_name,
    v2::users::last_name,
);

/// Inserts a user; the name goes to the columns the phase writes.
pub fn insert_user(
    conn: &mut PgConnection,
    phase: Phase,
    name: &Name,
    email: &str,
) -> QueryResult<StoredUser> {
    match SchemaVersion::for_phase(phase) {
        SchemaVersion::V1 => {
            use v1::users::dsl;
            diesel::insert_into(dsl::users)
                .values((dsl::full_name.eq(name.full_name()), dsl::email.eq(email)))
                .returning(V1_COLUMNS)
                .get_result(conn)
                .map(from_v1)
        }
        SchemaVersion::Expanded => {
            use expanded::users::dsl;
            let (first, last) = name.parts();
            diesel::insert_into(dsl::users)
                .values((
                    dsl::full_name.eq(name.full_name()),
                    dsl::first_name.eq(first),
                    dsl::last_name.eq(last),
                    dsl::email.eq(email),
                ))
                .returning(expanded_columns())
                .get_result(conn)
                .map(from_expanded)
        }
        SchemaVersion::V2 => {
            use v2::users::dsl;
            let (first, last) = name.parts();
            diesel::insert_into(dsl::users)
                .values((
                    dsl::first_name.eq(first),
                    dsl::last_name.eq(last),
                    dsl::email.eq(email),
                ))
                .returning(V2_COLUMNS)
                .get_result(conn)
                .map(from_v2)
        }
    }
}

pub fn find_user(conn: &mut PgConnection, phase: Phase, id: i64) -> QueryResult<StoredUser> {
    match SchemaVersion::for_phase(phase) {
        SchemaVersion::V1 => v1::users::table
            .find(id)
            .select(V1_COLUMNS)
            .first(conn)
            .map(from_v1),
        SchemaVersion::Expanded => expanded::users::table
            .find(id)
            .select(expanded_columns())
            .first(conn)
            .map(from_expanded),
        SchemaVersion::V2 => v2::users::table
            .find(id)
            .select(V2_COLUMNS)
            .first(conn)
            .map(from_v2),
    }
}

/// One page of users with ids above `after_id`, by id (keyset paging: constant cost per page
/// however deep the client goes).
pub fn list_users(
    conn: &mut PgConnection,
    phase: Phase,
    after_id: i64,
    limit: i64,
) -> QueryResult<Vec<StoredUser>> {
    match SchemaVersion::for_phase(phase) {
        SchemaVersion::V1 => v1::users::table
            .filter(v1::users::id.gt(after_id))
            .order(v1::users::id)
            .limit(limit)
            .select(V1_COLUMNS)
            .load(conn)
            .map(|rows| rows.into_iter().map(from_v1).collect()),
        SchemaVersion::Expanded => expanded::users::table
            .filter(expanded::users::id.gt(after_id))
            .order(expanded::users::id)
            .limit(limit)
            .select(expanded_columns())
            .load(conn)
            .map(|rows| rows.into_iter().map(from_expanded).collect()),
        SchemaVersion::V2 => v2::users::table
            .filter(v2::users::id.gt(after_id))
            .order(v2::users::id)
            .limit(limit)
            .select(V2_COLUMNS)
            .load(conn)
            .map(|rows| rows.into_iter().map(from_v2).collect()),
    }
}

#[derive(AsChangeset)]
#[diesel(table_name = v1::users)]
struct V1Changes {
    full_name: Option<String>,
    email: Option<String>,
}

#[derive(AsChangeset)]
#[diesel(table_name = expanded::users)]
struct ExpandedChanges {
    full_name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
}

#[derive(AsChangeset)]
#[diesel(table_name = v2::users)]
struct V2Changes {
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
}

/// Changes the given fields (`None` leaves a field alone) in one UPDATE.
pub fn update_user(
    conn: &mut PgConnection,
    phase: Phase,
    id: i64,
    name: Option<&Name>,
    email: Option<&str>,
) -> QueryResult<StoredUser> {
    let email = email.map(str::to_owned);
    let parts = name.map(Name::parts);
    match SchemaVersion::for_phase(phase) {
        SchemaVersion::V1 => {
            use v1::users::dsl;
            let changes = V1Changes {
                full_name: name.map(Name::full_name),
                email,
            };
            diesel::update(dsl::users.find(id))
                .set((&changes, dsl::updated_at.eq(diesel::dsl::now)))
                .returning(V1_COLUMNS)
                .get_result(conn)
                .map(from_v1)
        }
        SchemaVersion::Expanded => {
            use expanded::users::dsl;
            let (first_name, last_name) = parts.unzip();
            let changes = ExpandedChanges {
                full_name: name.map(Name::full_name),
                first_name,
                last_name,
                email,
            };
            diesel::update(dsl::users.find(id))
                .set((&changes, dsl::updated_at.eq(diesel::dsl::now)))
                .returning(expanded_columns())
                .get_result(conn)
                .map(from_expanded)
        }
        SchemaVersion::V2 => {
            use v2::users::dsl;
            let (first_name, last_name) = parts.unzip();
            let changes = V2Changes {
                first_name,
                last_name,
                email,
            };
            diesel::update(dsl::users.find(id))
                .set((&changes, dsl::updated_at.eq(diesel::dsl::now)))
                .returning(V2_COLUMNS)
                .get_result(conn)
                .map(from_v2)
        }
    }
}

/// Deletes the user; `NotFound` when there was none. The same in every phase.
pub fn delete_user(conn: &mut PgConnection, id: i64) -> QueryResult<()> {
    match diesel::delete(v2::users::table.find(id)).execute(conn)? {
        0 => Err(diesel::result::Error::NotFound),
        _ => Ok(()),
    }
}

/// How many users there are, as far as it is cheap to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserCount {
    /// Counted.
    Exact(i64),
    /// The planner's estimate (from the last VACUUM or ANALYZE).
    About(i64),
    /// More than this many, and no estimate yet.
    MoreThan(i64),
}

/// Counts up to `exact_up_to` rows (reading at most one more), and beyond that takes the
/// planner's estimate, so the cost stays the same at 10 M rows as at 10 thousand. Names no
/// column, so it is the same in every phase.
pub fn count_users_cheaply(conn: &mut PgConnection, exact_up_to: i64) -> QueryResult<UserCount> {
    use diesel::sql_types::BigInt;
    let counted: i64 = diesel::select(
        diesel::dsl::sql::<BigInt>("(SELECT count(*) FROM (SELECT FROM users LIMIT ")
            .bind::<BigInt, _>(exact_up_to + 1)
            .sql(") AS first_rows)"),
    )
    .get_result(conn)?;
    if counted <= exact_up_to {
        return Ok(UserCount::Exact(counted));
    }
    let estimate: f32 = diesel::select(diesel::dsl::sql::<diesel::sql_types::Float>(
        "(SELECT reltuples FROM pg_class WHERE oid = 'users'::regclass)",
    ))
    .get_result(conn)?;
    let estimate = estimate.round() as i64;
    Ok(if estimate > exact_up_to {
        UserCount::About(estimate)
    } else {
        UserCount::MoreThan(exact_up_to)
    })
}

/// The users with these ids that exist (for audits; order not kept).
pub fn find_users(
    conn: &mut PgConnection,
    phase: Phase,
    ids: &[i64],
) -> QueryResult<Vec<StoredUser>> {
    match SchemaVersion::for_phase(phase) {
        SchemaVersion::V1 => v1::users::table
            .filter(v1::users::id.eq_any(ids))
            .select(V1_COLUMNS)
            .load(conn)
            .map(|rows| rows.into_iter().map(from_v1).collect()),
        SchemaVersion::Expanded => expanded::users::table
            .filter(expanded::users::id.eq_any(ids))
            .select(expanded_columns())
            .load(conn)
            .map(|rows| rows.into_iter().map(from_expanded).collect()),
        SchemaVersion::V2 => v2::users::table
            .filter(v2::users::id.eq_any(ids))
            .select(V2_COLUMNS)
            .load(conn)
            .map(|rows| rows.into_iter().map(from_v2).collect()),
    }
}
