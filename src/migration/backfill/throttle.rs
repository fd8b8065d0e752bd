//! Waiting before a batch: for streaming replicas to replay, and for the users' requests to
//! be fast enough.

use std::time::Duration;

use diesel::dsl::now;
use diesel::prelude::*;

use super::BackfillError;
use super::status::{BackfillStatus, status};
use crate::schema::state::{zdm_backfill, zdm_instances};

/// Replica-lag throttling: streaming replicas replay the backfill's WAL; a backfill that
/// writes faster than they replay makes every read from them stale. Before each batch the
/// backfill measures each replica's replay lag (bytes of WAL between the primary's current
/// position and the replica's replay position) and, while any is above the limit or cannot be
/// reached, waits in the state `throttled`, saying why.
///
/// It can also watch the requests: with a p99 limit, it waits while any live instance
/// reported (with its last heartbeat, see `follower`) a p99 above the limit for the user
/// requests it answered just before.
pub struct Throttle {
    replicas: Vec<(String, Option<PgConnection>)>,
    pub max_lag_bytes: i64,
    pub max_request_p99_ms: Option<f64>,
}

/// Instances whose latency reports are recent enough to act on.
const LATENCY_REPORT_WINDOW_SECS: u32 = 2;

/// How often a throttled backfill looks again.
const THROTTLE_POLL: Duration = Duration::from_millis(200);

impl Throttle {
    pub fn none() -> Self {
        Self::new(Vec::new(), i64::MAX)
    }

    pub fn new(replica_urls: Vec<String>, max_lag_bytes: i64) -> Self {
        Self {
            replicas: replica_urls.into_iter().map(|url| (url, None)).collect(),
            max_lag_bytes,
            max_request_p99_ms: None,
        }
    }

    /// Also waits while the requests' p99 is above `ms` (`None`: does not watch them).
    pub fn with_request_p99_limit(mut self, ms: Option<f64>) -> Self {
        self.max_request_p99_ms = ms;
        self
    }

    /// Why the requests say wait, if they do: the worst p99 the live instances reported.
    fn slow_requests(&self, conn: &mut PgConnection) -> QueryResult<Option<String>> {
        let Some(limit) = self.max_request_p99_ms else {
            return Ok(None);
        };
        let recent = diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
            "last_seen > now() - interval '{LATENCY_REPORT_WINDOW_SECS} seconds'"
        ));
        let worst: Option<f64> = zdm_instances::table
            .filter(recent)
            .select(diesel::dsl::max(zdm_instances::recent_p99_ms))
            .first(conn)?;
        Ok(worst
            .filter(|p99| *p99 > limit)
            .map(|p99| format!("requests' p99 of {p99:.1} ms is above the limit of {limit:.1} ms")))
    }

    /// The largest replay lag in bytes, or why it cannot be measured.
    fn largest_lag(&mut self, primary: &mut PgConnection) -> Result<i64, String> {
        let mut largest = 0;
        for (index, (url, conn)) in self.replicas.iter_mut().enumerate() {
            if conn.is_none() {
                *conn = PgConnection::establish(url).ok();
            }
            let Some(replica) = conn.as_mut() else {
                return Err(format!("replica {} cannot be reached", index + 1));
            };
            let replayed = match crate::replicas::replayed_lsn(replica) {
                Ok(lsn) => lsn,
                Err(_) => {
                    *conn = None;
                    return Err(format!("replica {} cannot be reached", index + 1));
                }
            };
            let Some(replayed) = replayed else {
                return Err(format!(
                    "replica {} is not replaying (is it a standby?)",
                    index + 1
                ));
            };
            let written = crate::replicas::current_lsn(primary).map_err(|e| e.to_string())?;
            let lag = written.saturating_sub(replayed) as i64;
            largest = largest.max(lag);
        }
        Ok(largest)
    }

    /// Returns once the replicas are within the limit and the requests are fast enough
    /// (state `running`), or as soon as the backfill was paused or cancelled meanwhile.
    pub(super) fn wait_until_clear(
        &mut self,
        conn: &mut PgConnection,
        mut current: BackfillStatus,
        progress: &mut impl FnMut(&BackfillStatus),
    ) -> Result<BackfillStatus, BackfillError> {
        if self.replicas.is_empty() && self.max_request_p99_ms.is_none() {
            return Ok(current);
        }
        loop {
            let measured = self.largest_lag(conn);
            let (mut state, lag, mut reason) = match &measured {
                Ok(lag) if *lag <= self.max_lag_bytes => ("running", *lag, None),
                Ok(lag) => (
                    "throttled",
                    *lag,
                    Some(format!(
                        "replica lag {lag} bytes is above the limit of {} bytes",
                        self.max_lag_bytes
                    )),
                ),
                Err(why) => ("throttled", current.replica_lag_bytes, Some(why.clone())),
            };
            if state == "running"
                && let Some(why) = self.slow_requests(conn)?
            {
                (state, reason) = ("throttled", Some(why));
            }
            // Only a running (or throttled) backfill changes state here, or one a reader marked
            // interrupted just before this runner took the lock: a pause or cancel asked for
            // meanwhile wins.
            let updated: Option<BackfillStatus> =
                diesel::update(zdm_backfill::table.filter(zdm_backfill::state.eq_any([
                    "running",
                    "throttled",
                    "interrupted",
                ])))
                .set((
                    zdm_backfill::state.eq(state),
                    zdm_backfill::replica_lag_bytes.eq(lag),
                    zdm_backfill::throttle_reason.eq(&reason),
                    zdm_backfill::updated_at.eq(now),
                ))
                .get_result(conn)
                .optional()?;
            current = match updated {
                Some(status) => status,
                None => return Ok(status(conn)?),
            };
            if state == "running" {
                return Ok(current);
            }
            log::debug!(
                "backfill throttled: {}",
                reason.as_deref().unwrap_or_default()
            );
            progress(&current);
            std::thread::sleep(THROTTLE_POLL);
        }
    }
}
