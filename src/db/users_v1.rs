//! `users` through the v1 schema: one `full_name` column.

use diesel::prelude::*;
use serde::Serialize;

use crate::schema::v1::users;

#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = users)]
pub struct UserV1 {
    pub id: i64,
    pub full_name: String,
    pub email: String,
}

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = users)]
// Every column is always given, which also lets `COPY` (the seed) use this struct.
#[diesel(treat_none_as_default_value = false)]
pub struct NewUserV1 {
    pub full_name: String,
    pub email: String,
}

/// Fields to change; `None` leaves a column as it is.
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct UserChangesV1 {
    pub full_name: Option<String>,
    pub email: Option<String>,
}

pub fn insert_user(conn: &mut PgConnection, new: &NewUserV1) -> QueryResult<UserV1> {
    diesel::insert_into(users::table)
        .values(new)
        .returning(UserV1::as_returning())
        .get_result(conn)
}

pub fn find_user(conn: &mut PgConnection, id: i64) -> QueryResult<UserV1> {
    users::table
        .find(id)
        .select(UserV1::as_select())
        .first(conn)
}

/// One page of users with ids above `after_id`, by id (keyset paging: constant cost per page
/// however deep the client goes).
pub fn list_users(conn: &mut PgConnection, after_id: i64, limit: i64) -> QueryResult<Vec<UserV1>> {
    users::table
        .filter(users::id.gt(after_id))
        .order(users::id)
        .limit(limit)
        .select(UserV1::as_select())
        .load(conn)
}

pub fn update_user(
    conn: &mut PgConnection,
    id: i64,
    changes: &UserChangesV1,
) -> QueryResult<UserV1> {
    diesel::update(users::table.find(id))
        .set((changes, users::updated_at.eq(diesel::dsl::now)))
        .returning(UserV1::as_returning())
        .get_result(conn)
}

/// Deletes the user; `NotFound` when there was none.
pub fn delete_user(conn: &mut PgConnection, id: i64) -> QueryResult<()> {
    match diesel::delete(users::table.find(id)).execute(conn)? {
        0 => Err(diesel::result::Error::NotFound),
        _ => Ok(()),
    }
}

pub fn count_users(conn: &mut PgConnection) -> QueryResult<i64> {
    users::table.count().get_result(conn)
}
