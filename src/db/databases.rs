//! Whole databases on a server: created (empty, from a template, or only when missing) and
//! dropped, on a connection to another database of the same server.

use diesel::prelude::*;
use diesel::sql_types::Text;

/// Quotes an SQL identifier (database names cannot be bound as parameters).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Creates the database `name`, empty or as a copy of `template`.
pub fn create(conn: &mut PgConnection, name: &str, template: Option<&str>) -> QueryResult<()> {
    let template = template.map_or(String::new(), |t| format!(" TEMPLATE {}", quote_ident(t)));
    diesel::sql_query(format!("CREATE DATABASE {}{template}", quote_ident(name)))
        .execute(conn)
        .map(|_| ())
}

/// Creates the database `name` when missing.
pub fn create_if_missing(conn: &mut PgConnection, name: &str) -> QueryResult<()> {
    #[derive(QueryableByName)]
    struct Exists {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        exists: bool,
    }
    let found =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(name)
            .get_result::<Exists>(conn)?;
    if found.exists {
        return Ok(());
    }
    create(conn, name, None)
}

/// Drops the database `name` if it exists, ending the sessions still connected to it.
pub fn drop(conn: &mut PgConnection, name: &str) -> QueryResult<()> {
    diesel::sql_query(format!(
        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
        quote_ident(name)
    ))
    .execute(conn)
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("zdm"), "\"zdm\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
