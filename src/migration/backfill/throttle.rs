//! Waiting before a batch: for streaming replicas to replay, and for the users' requests to
//! be fast enough; and what the runner's auto mode reads to pick the number of workers.

use std::time::{Duration, Instant};

use diesel::dsl::now;
use diesel::prelude::*;

use super::auto::{AutoRule, Reading};
use super::status::{BackfillStatus, status};
use super::{BackfillError, BackfillState};
use crate::metrics::{InstanceLatency, LatencyWindow, REPORT_WINDOW, fleet_p99_ms};
use crate::schema::state::zdm_backfill;

/// Replica-lag throttling: streaming replicas replay the backfill's WAL; a backfill that
/// writes faster than they replay makes every read from them stale. Before each batch the
/// backfill measures each replica's replay lag (bytes of WAL between the primary's current
/// position and the replica's replay position) and, while any is above the limit or cannot be
/// reached, waits in the state `throttled`, saying why.
///
/// It can also watch the requests: with a p99 limit, it waits while the users' p99 across the
/// live instances (their last heartbeats' histograms summed, see `follower` and
/// `metrics::fleet_p99_ms`) is above the limit, or while a live instance has stopped
/// reporting.
///
/// One throttle serves every worker of a runner (behind a lock): one worker waits, the others
/// queue behind it.
pub struct Throttle {
    replicas: Vec<(String, Option<PgConnection>)>,
    pub max_lag_bytes: i64,
    pub max_request_p99_ms: Option<f64>,
    /// A budget relative to the instances' own p99 when a run starts
    /// (`ZDM_BACKFILL_MAX_P99_RATIO`): `resolve_budget` turns it into `max_request_p99_ms`.
    pub max_request_p99_ratio: Option<f64>,
    /// The users' p99 the live instances reported when the run started (`resolve_budget`),
    /// with a budget: where the zone rule's headroom begins.
    pub quiet_p99_ms: Option<f64>,
    /// How auto mode moves the number of workers.
    pub auto_rule: AutoRule,
    /// When this throttle last stored `running`: within `RESTATE_EVERY` it is not stored
    /// again, so that workers checking before each batch do not queue on the status row.
    stored_running: Option<Instant>,
}

/// Instances whose latency reports are recent enough to act on. Each instance's last report
/// counts (one every 0.5 s while it reports) until it is this old: a heartbeat can be seconds
/// late on a loaded machine, its connection waiting behind the requests. A live instance
/// silent for longer holds the batches (`silent_instance`): no report from it is not "no
/// traffic".
const LATENCY_REPORT_WINDOW_SECS: u32 = 5;

/// How often a throttled backfill looks again.
pub(super) const THROTTLE_POLL: Duration = Duration::from_millis(200);

/// How often a clear throttle stores `running` again (with the lag it measured).
const RESTATE_EVERY: Duration = Duration::from_secs(1);

/// A heartbeat reports the requests of the `metrics::REPORT_WINDOW` before it: a report
/// stored this long after a change of the number of workers covers only requests made after
/// it (the margin: between reading the histogram and storing the heartbeat).
pub(super) const REPORT_COVERS: Duration = REPORT_WINDOW.saturating_add(Duration::from_millis(200));

/// How long a run that has a budget reads the users' p99 before its first batch: some 20
/// readings, so that a moment (on the demo, an instance restarted 1.5 s before) is a minority
/// of them. Measured on the demo, the median was 0.78–1.06 × the run's quiet phases' p99 (11
/// runs). It had been 1.06–1.61 × (8 runs) while the demo itself opened a connection 20 times
/// a second to watch the backfill's progress, in the very seconds the runner read its p99:
/// what a run starts from is the load around it, whoever adds it.
const QUIET_SAMPLING: Duration = Duration::from_secs(5);

/// How often it reads them meanwhile.
const QUIET_SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// The users' p99 before a run's first batch, where its budget starts from: the median of
/// the fleet's p99 (`fleet_recent_p99`), read every `QUIET_SAMPLE_EVERY` for
/// `QUIET_SAMPLING`, and the number of readings. Measured on the demo (`--quick`, two shared
/// cores), a single reading when the run started said 20 ms where the quiet phases' p99 was
/// 5 ms, so the relative budget became 30 ms. `None` at once where no instance reports a p99.
fn quiet_p99(conn: &mut PgConnection) -> QueryResult<Option<(f64, usize)>> {
    let Some(first) = fleet_recent_p99(conn)? else {
        return Ok(None);
    };
    let mut seen = vec![first];
    let until = Instant::now() + QUIET_SAMPLING;
    while Instant::now() < until {
        std::thread::sleep(QUIET_SAMPLE_EVERY);
        seen.extend(fleet_recent_p99(conn)?);
    }
    seen.sort_by(f64::total_cmp);
    Ok(Some((seen[seen.len() / 2], seen.len())))
}

/// The quiet p99 noted when the interrupted run of `direction` that this one resumes started.
fn kept_quiet_p99(
    conn: &mut PgConnection,
    direction: super::Direction,
) -> QueryResult<Option<f64>> {
    let stored = super::status::stored_status(conn)?;
    let resumes = stored.state.is_resumable() && stored.direction == direction;
    Ok(stored.quiet_p99_ms.filter(|_| resumes))
}

/// What a live instance reported with its last heartbeat, how long ago, and whether it came
/// `REPORT_COVERS` after the number of workers last changed (so covers only requests made
/// since).
#[derive(QueryableByName)]
struct Report {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
    recent_p99_ms: Option<f64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::Double>>)]
    recent_latency_le: Option<Vec<f64>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Array<diesel::sql_types::Int8>>)]
    recent_latency_counts: Option<Vec<i64>>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    fresh: bool,
    /// Since its last heartbeat, by the database's clock.
    #[diesel(sql_type = diesel::sql_types::Double)]
    silent_secs: f64,
}

impl Report {
    /// Whether its report is recent enough to act on (`LATENCY_REPORT_WINDOW_SECS`).
    fn is_recent(&self) -> bool {
        self.silent_secs < f64::from(LATENCY_REPORT_WINDOW_SECS)
    }
}

/// The live instances' last reports (`zdm_live_window()`), the longest silent first.
fn live_reports(conn: &mut PgConnection) -> QueryResult<Vec<Report>> {
    diesel::sql_query(format!(
        "SELECT id, recent_p99_ms, recent_latency_le, recent_latency_counts,
                last_seen > coalesce((SELECT workers_changed_at FROM zdm_backfill), '-infinity')
                            + interval '{} milliseconds' AS fresh,
                extract(epoch FROM now() - last_seen)::float8 AS silent_secs
           FROM zdm_instances
          WHERE last_seen > now() - zdm_live_window()
          ORDER BY last_seen",
        REPORT_COVERS.as_millis()
    ))
    .load(conn)
}

/// Of `reports`, the live instance silent the longest past `LATENCY_REPORT_WINDOW_SECS`, if
/// any. A serving instance reports every 0.5 s, with traffic or without, and an instance that
/// stops cleanly leaves the table; one silent this long is frozen, killed or too loaded to
/// reach the database, and stays live (`zdm_live_window()`) a few seconds more. Its requests
/// may be the slowest of all, so its silence must not read as no traffic.
fn silent_instance(reports: &[Report]) -> Option<&Report> {
    reports.first().filter(|report| !report.is_recent())
}

/// The users' p99 across `reports` (`metrics::fleet_p99_ms`).
fn fleet_p99<'a>(reports: impl Iterator<Item = &'a Report>) -> Option<f64> {
    let latencies: Vec<InstanceLatency> = reports
        .map(|report| InstanceLatency {
            p99_ms: report.recent_p99_ms,
            window: report
                .recent_latency_le
                .clone()
                .zip(report.recent_latency_counts.clone())
                .map(|(le, counts)| LatencyWindow { le, counts }),
        })
        .collect();
    fleet_p99_ms(&latencies)
}

/// The users' p99 across the live instances, from what they reported with their last
/// heartbeats (those recent enough).
fn fleet_recent_p99(conn: &mut PgConnection) -> QueryResult<Option<f64>> {
    Ok(fleet_p99(
        live_reports(conn)?.iter().filter(|r| r.is_recent()),
    ))
}

impl Throttle {
    pub fn none() -> Self {
        Self::new(Vec::new(), i64::MAX)
    }

    pub fn new(replica_urls: Vec<String>, max_lag_bytes: i64) -> Self {
        Self {
            replicas: replica_urls.into_iter().map(|url| (url, None)).collect(),
            max_lag_bytes,
            max_request_p99_ms: None,
            max_request_p99_ratio: None,
            quiet_p99_ms: None,
            auto_rule: AutoRule::default(),
            stored_running: None,
        }
    }

    /// Also waits while the requests' p99 is above `ms` (`None`: does not watch them).
    pub fn with_request_p99_limit(mut self, ms: Option<f64>) -> Self {
        self.max_request_p99_ms = ms;
        self
    }

    /// Also waits while the requests' p99 is above `ratio` times theirs when the run starts
    /// (`None`: no relative budget). See `resolve_budget`.
    pub fn with_request_p99_ratio(mut self, ratio: Option<f64>) -> Self {
        self.max_request_p99_ratio = ratio;
        self
    }

    /// Auto mode moves the number of workers by `rule`.
    pub fn with_auto_rule(mut self, rule: AutoRule) -> Self {
        self.auto_rule = rule;
        self
    }

    /// With a budget, notes the instances' p99 when the run starts (`quiet_p99_ms`, see
    /// `quiet_p99`); a run of `direction` that resumes an interrupted one keeps the p99 noted
    /// when that one started (measured again now, it would be measured in the aftermath of
    /// whatever interrupted it: the database's restart, say, not the users' quiet). With a
    /// relative budget, sets this run's limit: the ratio times that p99, before any batch of
    /// the run. Returns what it was set from, for the run's record (`None` without a relative
    /// budget). Where no instance reported a p99 (no traffic), there is no limit: nothing to
    /// keep it within.
    pub(super) fn resolve_budget(
        &mut self,
        conn: &mut PgConnection,
        direction: super::Direction,
    ) -> QueryResult<Option<String>> {
        let budgeted = self.max_request_p99_ratio.is_some() || self.max_request_p99_ms.is_some();
        // The stored run is read only under a budget: without one there is nothing to keep.
        let quiet = if !budgeted {
            None
        } else if let Some(kept) = kept_quiet_p99(conn, direction)? {
            Some((kept, None))
        } else {
            quiet_p99(conn)?.map(|(p99, readings)| (p99, Some(readings)))
        };
        self.quiet_p99_ms = quiet.map(|(p99, _)| p99);
        let Some(ratio) = self.max_request_p99_ratio else {
            return Ok(None);
        };
        let note = match quiet {
            Some((p99, readings)) => {
                let limit = ratio * p99;
                self.max_request_p99_ms = Some(limit);
                let from = match readings {
                    Some(readings) => format!(
                        "the median of {readings} readings over {} s",
                        QUIET_SAMPLING.as_secs()
                    ),
                    None => "kept from the run's first start: it resumes".to_owned(),
                };
                format!(
                    "p99 budget {limit:.2} ms: {ratio} × the instances' {p99:.2} ms when the run started ({from})"
                )
            }
            None => {
                self.max_request_p99_ms = None;
                format!(
                    "no p99 budget: no instance reported its requests' p99 when the run started (ratio {ratio})"
                )
            }
        };
        Ok(Some(note))
    }

    /// Why the requests say wait, if they do: the users' p99 across the live instances, or a
    /// live instance that has stopped reporting it.
    fn slow_requests(&self, conn: &mut PgConnection) -> QueryResult<Option<String>> {
        let Some(limit) = self.max_request_p99_ms else {
            return Ok(None);
        };
        let reports = live_reports(conn)?;
        if let Some(p99) =
            fleet_p99(reports.iter().filter(|r| r.is_recent())).filter(|p99| *p99 > limit)
        {
            return Ok(Some(format!(
                "requests' p99 of {p99:.1} ms is above the limit of {limit:.1} ms"
            )));
        }
        Ok(silent_instance(&reports).map(|silent| {
            format!(
                "instance {} has not reported its requests' p99 for {:.1} s: they may be slow",
                silent.id, silent.silent_secs
            )
        }))
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
            let inserted = crate::replicas::current_lsn(primary).map_err(|e| e.to_string())?;
            let lag = inserted.saturating_sub(replayed) as i64;
            largest = largest.max(lag);
        }
        Ok(largest)
    }

    /// Whether it watches anything at all.
    pub(super) fn watches(&self) -> bool {
        !self.replicas.is_empty()
            || self.max_request_p99_ms.is_some()
            || self.max_request_p99_ratio.is_some()
    }

    /// What auto mode decides on: the replicas' lag (or why it cannot be measured), and the
    /// users' p99 across the live instances whose reports cover only requests made since the
    /// number of workers last changed.
    pub(super) fn reading(&mut self, conn: &mut PgConnection) -> QueryResult<Reading> {
        let lag = self.largest_lag(conn);
        let reports = live_reports(conn)?;
        let recent = || reports.iter().filter(|report| report.is_recent());
        let fresh = recent().filter(|report| report.fresh);
        Ok(Reading {
            p99_ms: fleet_p99(fresh.clone()),
            fresh_reports: fresh.count() as i64,
            live_instances: recent().count() as i64,
            lag,
        })
    }

    /// Returns once the replicas are within the limit and the requests are fast enough
    /// (state `running`), as soon as the backfill was paused or cancelled meanwhile, or when
    /// `stop` says so (the runner ends). `progress` sees the row as stored while it waits.
    pub(super) fn wait_until_clear(
        &mut self,
        conn: &mut PgConnection,
        mut current: BackfillStatus,
        stop: &dyn Fn() -> bool,
        progress: &mut dyn FnMut(&BackfillStatus),
    ) -> Result<BackfillStatus, BackfillError> {
        if !self.watches() {
            return Ok(current);
        }
        loop {
            if stop() {
                return Ok(current);
            }
            let measured = self.largest_lag(conn);
            let (mut state, lag, mut reason) = match &measured {
                Ok(lag) if *lag <= self.max_lag_bytes => (BackfillState::Running, *lag, None),
                Ok(lag) => (
                    BackfillState::Throttled,
                    *lag,
                    Some(format!(
                        "replica lag {lag} bytes is above the limit of {} bytes",
                        self.max_lag_bytes
                    )),
                ),
                Err(why) => (
                    BackfillState::Throttled,
                    current.replica_lag_bytes,
                    Some(why.clone()),
                ),
            };
            if state == BackfillState::Running
                && let Some(why) = self.slow_requests(conn)?
            {
                (state, reason) = (BackfillState::Throttled, Some(why));
            }
            if state == BackfillState::Running
                && self
                    .stored_running
                    .is_some_and(|at| at.elapsed() < RESTATE_EVERY)
            {
                // Stored as running a moment ago; a pause since then shows in the batch.
                current.state = BackfillState::Running;
                return Ok(current);
            }
            // Only a running (or throttled) backfill changes state here, or one a reader marked
            // interrupted just before this runner took the lock: a pause or cancel asked for
            // meanwhile wins.
            let updated: Option<BackfillStatus> = diesel::update(
                zdm_backfill::table
                    .filter(zdm_backfill::state.eq_any(BackfillState::ACTIVE_OR_INTERRUPTED)),
            )
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
            if state == BackfillState::Running {
                self.stored_running = Some(Instant::now());
                return Ok(current);
            }
            self.stored_running = None;
            log::debug!(
                "backfill throttled: {}",
                reason.as_deref().unwrap_or_default()
            );
            progress(&current);
            std::thread::sleep(THROTTLE_POLL);
        }
    }
}
