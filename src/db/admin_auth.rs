//! Admin sessions, failed admin log-ins and the key the user forms' CSRF tokens are signed
//! with, kept in PostgreSQL: every instance of a fleet sees the same ones, and a restart
//! forgets none.
//!
//! A session is stored under the SHA-256 of its id, never the id itself, so reading the table
//! (a backup, a replica, a log of its rows) gives no one a way in.

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bytea, Double, Nullable, Text};
use sha2::{Digest, Sha256};

use crate::schema::admin::zdm_admin_sessions;

/// A session ends after this long without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A session ends this long after its log-in, however active.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);

/// How many failed log-ins are allowed within `window`, per client address and from all
/// clients together.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub per_client: i64,
    pub overall: i64,
    pub window: Duration,
}

pub const LOGIN_LIMITS: LoginLimits = LoginLimits {
    per_client: 5,
    overall: 30,
    window: Duration::from_secs(60),
};

/// Serialises the check-and-record of failed log-ins across the fleet, so that failures sent
/// to several instances at once cannot all slip under the limit.
const LOGIN_LOCK_KEY: i64 = 0x7a64_6d6c; // "zdml"

fn id_hash(session_id: &str) -> Vec<u8> {
    Sha256::digest(session_id.as_bytes()).to_vec()
}

/// Stores a new session (by the hash of `session_id`) and drops the ones that have ended.
pub fn create_session(
    conn: &mut PgConnection,
    session_id: &str,
    csrf_token: &str,
) -> QueryResult<()> {
    conn.transaction(|conn| {
        diesel::sql_query(
            "DELETE FROM zdm_admin_sessions \
             WHERE expires_at <= now() OR last_seen_at <= now() - make_interval(secs => $1)",
        )
        .bind::<Double, _>(SESSION_IDLE.as_secs_f64())
        .execute(conn)?;
        diesel::sql_query(
            "INSERT INTO zdm_admin_sessions (id_hash, csrf_token, expires_at) \
             VALUES ($1, $2, now() + make_interval(secs => $3))",
        )
        .bind::<Bytea, _>(id_hash(session_id))
        .bind::<Text, _>(csrf_token)
        .bind::<Double, _>(SESSION_LIFETIME.as_secs_f64())
        .execute(conn)
        .map(drop)
    })
}

#[derive(QueryableByName)]
struct CsrfToken {
    #[diesel(sql_type = Text)]
    csrf_token: String,
}

/// The CSRF token of a live session, marking it as used now; `None` when there is no such
/// session or it has ended (idle too long, or past its lifetime).
pub fn touch_session(conn: &mut PgConnection, session_id: &str) -> QueryResult<Option<String>> {
    diesel::sql_query(
        "UPDATE zdm_admin_sessions SET last_seen_at = now() \
         WHERE id_hash = $1 AND expires_at > now() \
           AND last_seen_at > now() - make_interval(secs => $2) \
         RETURNING csrf_token",
    )
    .bind::<Bytea, _>(id_hash(session_id))
    .bind::<Double, _>(SESSION_IDLE.as_secs_f64())
    .get_result::<CsrfToken>(conn)
    .optional()
    .map(|row| row.map(|r| r.csrf_token))
}

/// Ends a session on every instance.
pub fn delete_session(conn: &mut PgConnection, session_id: &str) -> QueryResult<()> {
    diesel::delete(zdm_admin_sessions::table.find(id_hash(session_id)))
        .execute(conn)
        .map(drop)
}

#[derive(QueryableByName)]
struct ServerKey {
    #[diesel(sql_type = Bytea)]
    key: Vec<u8>,
}

/// The key the CSRF tokens of the user pages' forms are signed with: made once per database
/// by its migration, so every instance signs alike and a restart keeps the forms it showed.
pub fn user_form_key(conn: &mut PgConnection) -> QueryResult<Vec<u8>> {
    diesel::sql_query("SELECT key FROM zdm_server_keys WHERE name = 'user_forms'")
        .get_result::<ServerKey>(conn)
        .map(|row| row.key)
}

#[derive(QueryableByName)]
struct LimitCheck {
    /// Seconds until the client is under its limit again (`None`: it is).
    #[diesel(sql_type = Nullable<Double>)]
    client_wait: Option<f64>,
    /// Seconds until all clients together are under the overall limit again.
    #[diesel(sql_type = Nullable<Double>)]
    overall_wait: Option<f64>,
}

/// What PostgreSQL said after a failure: how long the client, and how long everyone, must
/// still wait (`None`: under that limit).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitWaits {
    pub client: Option<Duration>,
    pub everyone: Option<Duration>,
}

impl LimitWaits {
    /// The wait that applies: the longer of the two (`None`: the failure was recorded).
    pub fn longest(&self) -> Option<Duration> {
        self.client.max(self.everyone)
    }
}

/// After a failed log-in of `client`: the waits when the client, or all clients together,
/// already used up the failures `limits` allow (the failure is then not counted), else none,
/// with the failure recorded. Both waits are told apart so an instance can remember which
/// clients to refuse without asking again (`failed_logins`).
pub fn record_failed_login(
    conn: &mut PgConnection,
    client: &str,
    limits: LoginLimits,
) -> QueryResult<LimitWaits> {
    conn.transaction(|conn| {
        diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
            .bind::<BigInt, _>(LOGIN_LOCK_KEY)
            .execute(conn)?;
        let window = limits.window.as_secs_f64();
        diesel::sql_query(
            "DELETE FROM zdm_admin_login_failures WHERE at <= now() - make_interval(secs => $1)",
        )
        .bind::<Double, _>(window)
        .execute(conn)?;
        // The limit-th newest failure is the one whose leaving the window brings the count
        // under the limit.
        let check: LimitCheck = diesel::sql_query(
            "SELECT \
               extract(epoch FROM (SELECT at FROM zdm_admin_login_failures WHERE client = $1 \
                                   ORDER BY at DESC OFFSET $2 - 1 LIMIT 1) \
                                  + make_interval(secs => $4) - now())::float8 AS client_wait, \
               extract(epoch FROM (SELECT at FROM zdm_admin_login_failures \
                                   ORDER BY at DESC OFFSET $3 - 1 LIMIT 1) \
                                  + make_interval(secs => $4) - now())::float8 AS overall_wait",
        )
        .bind::<Text, _>(client)
        .bind::<BigInt, _>(limits.per_client)
        .bind::<BigInt, _>(limits.overall)
        .bind::<Double, _>(window)
        .get_result(conn)?;
        let wait = |secs: Option<f64>| secs.map(|s| Duration::from_secs_f64(s.max(0.0)));
        let waits = LimitWaits {
            client: wait(check.client_wait),
            everyone: wait(check.overall_wait),
        };
        if waits.longest().is_some() {
            return Ok(waits);
        }
        diesel::sql_query("INSERT INTO zdm_admin_login_failures (client) VALUES ($1)")
            .bind::<Text, _>(client)
            .execute(conn)?;
        Ok(waits)
    })
}
