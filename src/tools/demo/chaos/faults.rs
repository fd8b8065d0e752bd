//! The faults of a chaos run, struck when the schedule says and ended when they are due: a
//! killed or frozen instance comes back, a killed or paused backfill is resumed by a new
//! process, a transaction in the way commits. Each fault opens a window on the timeline, from
//! when it struck until its effect ended; a 503 within one is the fault's, not a failure.

mod backfill;

use std::process::Child;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::Chaos;
use super::schedule::{Event, What};
use crate::domain::Phase;
use crate::local_pg::LocalPg;
use crate::pgbouncer::PgBouncer;
use crate::tools::demo::fleet::Fleet;
use crate::tools::demo::lived_in::as_role;
use crate::tools::demo::walk::Admin;
use crate::tools::demo::{DemoOptions, FaultWindow, Timeline, blocking, connect, pause};

/// The role of a DBA's report, which reads `full_name` as a client zdm does not know.
pub const REPORT_ROLE: &str = "zdm_chaos_report";

/// What ends a lasting fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// A killed instance started again.
    Restart(usize),
    /// A frozen instance thawed.
    Thaw(usize),
    /// A killed or paused backfill resumed by a new process.
    ResumeBackfill,
    /// The stopped replica started again.
    StartReplica,
}

/// A lasting fault's end, due at `due`, and the window it closes.
struct Pending {
    due: Instant,
    undo: Undo,
    window: usize,
}

/// A fault that runs on a thread of its own (a transaction of another client).
struct Background {
    thread: JoinHandle<Result<()>>,
    window: usize,
    what: String,
}

/// What a chaos run's faults act on, and the faults struck that have not ended yet.
pub(super) struct Faults<'a> {
    fleet: &'a mut Fleet,
    admin: Admin,
    url: &'a str,
    opts: &'a DemoOptions,
    pooler: Option<&'a PgBouncer>,
    pub timeline: &'a mut Timeline,
    /// The primary, which the faults restart and kill, and its standby until promoted.
    server: LocalPg,
    standby: Option<LocalPg>,
    replica: Option<LocalPg>,
    /// The instance that joins late (the fleet's last).
    late: usize,
    backfill: Option<Child>,
    /// When the running backfill process was started (ms of the run).
    backfill_since_ms: u32,
    backfill_started: bool,
    pending: Vec<Pending>,
    background: Vec<Background>,
    /// The faults not struck yet, in order, each with the number of steps before it in the
    /// schedule: it strikes when due once that many steps have begun.
    queue: std::collections::VecDeque<(usize, Event)>,
    /// Steps of the walk begun so far (set by the walk).
    pub steps_begun: usize,
}

impl<'a> Faults<'a> {
    pub fn new(
        fleet: &'a mut Fleet,
        admin: &Admin,
        url: &'a str,
        opts: &'a DemoOptions,
        pooler: Option<&'a PgBouncer>,
        timeline: &'a mut Timeline,
        chaos: &Chaos,
    ) -> Result<Self> {
        let mut conn = connect(url)?;
        conn.batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {REPORT_ROLE} LOGIN; \
             EXCEPTION WHEN duplicate_object THEN NULL; END $$; \
             GRANT SELECT ON users TO {REPORT_ROLE};"
        ))
        .context("creating the DBA report's role")?;
        Ok(Self {
            admin: admin.clone(),
            late: fleet.instances.len() - 1,
            fleet,
            url,
            opts,
            pooler,
            timeline,
            server: chaos.server.clone(),
            standby: chaos.standby.clone(),
            replica: chaos.replica.clone(),
            backfill: None,
            backfill_since_ms: 0,
            backfill_started: false,
            pending: Vec::new(),
            background: Vec::new(),
            queue: faults_in_order(&chaos.schedule.events),
            steps_begun: 0,
        })
    }

    /// Runs what is due until `at_ms` after the traffic started.
    pub async fn until(&mut self, at_ms: u32) -> Result<()> {
        while self.timeline.now_ms() < at_ms {
            self.pump().await?;
            let left = at_ms.saturating_sub(self.timeline.now_ms()).min(50);
            pause(f64::from(left) / 1000.0).await;
        }
        // What is due at `at_ms` itself comes first.
        self.pump().await
    }

    pub async fn dwell(&mut self, how_long: Duration) -> Result<()> {
        let at = self.timeline.now_ms() + how_long.as_millis() as u32;
        self.until(at).await
    }

    /// Strikes the faults that are due, ends the lasting ones that are due, and notes the
    /// background ones that ended.
    pub async fn pump(&mut self) -> Result<()> {
        let now = self.timeline.now_ms();
        while let Some((after, event)) = self.queue.front()
            && *after <= self.steps_begun
            && event.at_ms <= now
        {
            let what = event.what.clone();
            self.queue.pop_front();
            self.strike(&what).await?;
        }
        let now = Instant::now();
        while let Some(index) = self.pending.iter().position(|p| p.due <= now) {
            let pending = self.pending.remove(index);
            self.undo(pending).await?;
        }
        while let Some(index) = self.background.iter().position(|b| b.thread.is_finished()) {
            let done = self.background.remove(index);
            let outcome = match done.thread.join() {
                Ok(Ok(())) => "done".to_owned(),
                Ok(Err(e)) => format!("ended with an error: {e:#}"),
                Err(_) => "panicked".to_owned(),
            };
            self.close(done.window, format!("{} {outcome}", done.what));
        }
        Ok(())
    }

    /// Strikes the faults left, each when due (the walk is over).
    pub async fn strike_the_rest(&mut self) -> Result<()> {
        while let Some((_, last)) = self.queue.back() {
            let at = last.at_ms;
            self.until(at).await?;
        }
        Ok(())
    }

    /// Waits (up to `SETTLE_PATIENCE`) until every lasting fault has ended.
    pub async fn settle(&mut self) -> Result<()> {
        let give_up = Instant::now() + SETTLE_PATIENCE;
        while !self.pending.is_empty() || !self.background.is_empty() {
            if Instant::now() > give_up {
                bail!("faults still lasting after {SETTLE_PATIENCE:?}");
            }
            self.pump().await?;
            pause(0.05).await;
        }
        Ok(())
    }

    /// Opens a fault's window (`app_may_503`: see `FaultWindow`) and says so on the
    /// timeline; returns the window.
    fn open(&mut self, label: String, app_may_503: bool) -> usize {
        self.timeline.mark(label);
        self.timeline.fault_windows.push(FaultWindow {
            start_ms: self.timeline.now_ms(),
            end_ms: None,
            app_may_503,
        });
        self.timeline.fault_windows.len() - 1
    }

    fn close(&mut self, window: usize, label: String) {
        self.timeline.fault_windows[window].end_ms = Some(self.timeline.now_ms());
        self.timeline.mark(label);
    }

    fn later(&mut self, after_ms: u32, undo: Undo, window: usize) {
        self.pending.push(Pending {
            due: Instant::now() + Duration::from_millis(u64::from(after_ms)),
            undo,
            window,
        });
    }

    async fn undo(&mut self, pending: Pending) -> Result<()> {
        let label = match pending.undo {
            Undo::Restart(index) => {
                self.fleet.start_again(index).await?;
                format!("{} started again, back in rotation", self.name(index))
            }
            Undo::Thaw(index) => {
                self.fleet.freeze(index, false)?;
                self.fleet.start_again(index).await?;
                format!("SIGCONT to {}, back in rotation", self.name(index))
            }
            Undo::ResumeBackfill => {
                self.spawn_backfill()?;
                "backfill resumed by a new process".to_owned()
            }
            Undo::StartReplica => {
                if let Some(replica) = self.replica.clone() {
                    blocking(move || {
                        LocalPg::ensure_running(&replica.base_dir)
                            .context("starting the replica again")
                    })
                    .await?;
                }
                "the replica is back".to_owned()
            }
        };
        self.close(pending.window, label);
        Ok(())
    }

    fn name(&self, index: usize) -> String {
        self.fleet.instances[index].name.clone()
    }

    /// Whether instance `index` may be taken down: it is up, and not the last one up.
    fn can_take_down(&self, index: usize) -> bool {
        let up = (0..self.fleet.instances.len())
            .filter(|i| self.fleet.is_up(*i))
            .count();
        self.fleet.is_up(index) && up > 1
    }

    /// Strikes the fault `what`, counting it by kind if it could strike.
    async fn strike(&mut self, what: &What) -> Result<()> {
        if self.strike_one(what).await? {
            *self.timeline.faults_struck.entry(what.kind()).or_default() += 1;
        }
        Ok(())
    }

    /// Strikes `what`; false if it could not strike now (see `skip`).
    async fn strike_one(&mut self, what: &What) -> Result<bool> {
        match *what {
            What::KillInstance { .. } | What::FreezeInstance { .. } | What::LateInstance => {
                return self.strike_instance(what).await;
            }
            What::RestartPostgres | What::KillPostgres => self.restart_postgres(what).await?,
            What::RestartPooler => {
                let Some(pooler) = self.pooler else {
                    return self.skip(what, "no pooler in this run");
                };
                let window = self.open("kill -9 of PgBouncer, started again".to_owned(), true);
                pooler.restart().context("restarting PgBouncer")?;
                let give_up = Instant::now() + Duration::from_secs(10);
                while !pooler.is_listening() {
                    if Instant::now() > give_up {
                        bail!("PgBouncer did not listen again within 10 s");
                    }
                    pause(0.02).await;
                }
                self.close(window, "PgBouncer back".to_owned());
            }
            What::Failover => return self.fail_over().await,
            What::StopReplica { for_ms } => {
                let Some(replica) = self.replica.clone() else {
                    return self.skip(what, "no replica in this run");
                };
                if self.pending.iter().any(|p| p.undo == Undo::StartReplica) {
                    return self.skip(what, "the replica is stopped already");
                }
                let window = self.open(format!("the replica stopped for {for_ms} ms"), true);
                blocking(move || replica.stop().context("stopping the replica")).await?;
                self.later(for_ms, Undo::StartReplica, window);
            }
            What::HoldLock { for_ms } => {
                let sql = format!(
                    "BEGIN; SELECT count(*) FROM users; SELECT pg_sleep({}); COMMIT;",
                    f64::from(for_ms) / 1000.0
                );
                let what = format!("a transaction holding users for {for_ms} ms");
                self.in_background(self.url.to_owned(), sql, what);
            }
            What::ReportQuery { for_ms } => {
                let sql = format!(
                    "BEGIN; SELECT count(full_name) FROM users; SELECT pg_sleep({}); COMMIT;",
                    f64::from(for_ms) / 1000.0
                );
                let what = format!("{REPORT_ROLE}'s report reading full_name for {for_ms} ms");
                self.in_background(as_role(self.url, REPORT_ROLE), sql, what);
            }
            What::StatsReset => self.dba("SELECT pg_stat_statements_reset()").await?,
            What::Vacuum => self.dba("VACUUM users").await?,
            ref backfill => return self.strike_backfill(backfill).await,
        }
        Ok(true)
    }

    /// A fault of an instance: `kill -9` (started again when due), `SIGSTOP` (thawed when
    /// due), or one more joining late.
    async fn strike_instance(&mut self, what: &What) -> Result<bool> {
        match *what {
            What::KillInstance { instance, down_ms } => {
                let index = instance as usize;
                if !self.can_take_down(index) {
                    return self.skip(what, "it is down, or the last one up");
                }
                let window = self.open(format!("kill -9 of {}", self.name(index)), false);
                self.fleet.kill(index).await?;
                self.later(down_ms, Undo::Restart(index), window);
            }
            What::FreezeInstance { instance, for_ms } => {
                let index = instance as usize;
                if !self.can_take_down(index) {
                    return self.skip(what, "it is down, or the last one up");
                }
                let window = self.open(
                    format!(
                        "SIGSTOP of {} for {:.1} s",
                        self.name(index),
                        f64::from(for_ms) / 1000.0
                    ),
                    true,
                );
                self.fleet.freeze(index, true)?;
                self.later(for_ms, Undo::Thaw(index), window);
            }
            What::LateInstance => {
                if self.fleet.pid(self.late).is_some() {
                    return self.skip(what, "it runs already");
                }
                self.fleet.start_again(self.late).await?;
                self.timeline.mark(format!(
                    "{} joins late, on the phase the database has",
                    self.name(self.late)
                ));
            }
            _ => bail!("{what:?} is no fault of an instance"),
        }
        Ok(true)
    }

    /// `kill -9` of the primary and its standby promoted, the pooler pointed at it: the
    /// faults that restart or kill PostgreSQL strike the new primary from then on.
    async fn fail_over(&mut self) -> Result<bool> {
        let Some(standby) = self.standby.take() else {
            return self.skip(&What::Failover, "no standby to promote");
        };
        let window = self.open("kill -9 of the primary".to_owned(), true);
        let primary = std::mem::replace(&mut self.server, standby.clone());
        let failover = crate::tools::demo::failover::Failover {
            primary,
            standby,
            synchronous: true,
        };
        let promoted =
            crate::tools::demo::failover::kill_and_promote(&failover, self.pooler).await?;
        self.close(
            window,
            format!(
                "standby promoted after {:.1} s without a primary{}",
                promoted.as_secs_f64(),
                if self.pooler.is_some() {
                    "; the pooler points at it"
                } else {
                    ""
                }
            ),
        );
        Ok(true)
    }

    /// Notes on the timeline a fault the schedule drew that cannot strike now; false: it
    /// did not strike.
    fn skip(&mut self, what: &What, why: &str) -> Result<bool> {
        self.timeline
            .mark(format!("{} skipped: {why}", what.json()));
        Ok(false)
    }

    /// A fast restart, or a `kill -9` and a start (crash recovery), of PostgreSQL.
    async fn restart_postgres(&mut self, what: &What) -> Result<()> {
        let kill = *what == What::KillPostgres;
        let window = self.open(
            if kill {
                "kill -9 of PostgreSQL".to_owned()
            } else {
                "fast restart of PostgreSQL".to_owned()
            },
            true,
        );
        let server = self.server.clone();
        blocking(move || {
            if kill {
                server.kill_postmaster().context("killing PostgreSQL")?;
            } else {
                server.stop().context("stopping PostgreSQL")?;
            }
            // After a kill -9 the old server processes may take a moment to notice their
            // postmaster is gone and let go of the shared memory: start until it works.
            let give_up = Instant::now() + Duration::from_secs(30);
            loop {
                match LocalPg::ensure_running(&server.base_dir) {
                    Ok(_) => return Ok(()),
                    Err(e) if Instant::now() > give_up => {
                        return Err(e).context("starting PostgreSQL again");
                    }
                    Err(e) => log::info!("PostgreSQL did not start yet: {e}"),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .await?;
        self.close(window, "PostgreSQL accepts connections again".to_owned());
        Ok(())
    }

    /// Runs `sql` (a transaction of another client) on a thread of its own, at `url`.
    fn in_background(&mut self, url: String, sql: String, what: String) {
        let window = self.open(format!("{what} starts"), false);
        let thread = std::thread::spawn(move || {
            let mut conn = PgConnection::establish(&url).context("connecting")?;
            conn.batch_execute(&sql).context("running it")?;
            Ok(())
        });
        self.background.push(Background {
            thread,
            window,
            what,
        });
    }

    /// A DBA's job on the scratch database.
    async fn dba(&mut self, sql: &'static str) -> Result<()> {
        let window = self.open(format!("a DBA runs {sql}"), false);
        let url = self.url.to_owned();
        let done = blocking(move || {
            connect(&url)?.batch_execute(sql).context("running it")?;
            Ok(())
        })
        .await;
        let outcome = done.map_or_else(|e| format!("failed: {e:#}"), |()| "done".to_owned());
        self.close(window, format!("{sql} {outcome}"));
        Ok(())
    }

    /// Waits (up to 30 s) until the instances in rotation have applied `phase`, ending the
    /// faults that are due meanwhile.
    pub async fn wait_applied(&mut self, phase: Phase) -> Result<()> {
        let give_up = Instant::now() + Duration::from_secs(30);
        loop {
            let phases = self.fleet.applied_phases().await;
            if phases.iter().all(|p| p.as_deref() == Some(phase.as_str())) {
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!("the instances did not all apply {phase}: {phases:?}");
            }
            self.pump().await?;
            pause(0.05).await;
        }
    }
}

impl Drop for Faults<'_> {
    /// A walk that stopped half-way leaves no backfill process writing under the audit.
    fn drop(&mut self) {
        if let Some(mut child) = self.backfill.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The longest a fault lasts (a freeze of 15 s), with room: `settle` gives up after it.
const SETTLE_PATIENCE: Duration = Duration::from_secs(60);

/// The schedule's faults in order, each with the number of steps before it.
fn faults_in_order(events: &[Event]) -> std::collections::VecDeque<(usize, Event)> {
    let mut steps = 0;
    let mut faults = std::collections::VecDeque::new();
    for event in events {
        if event.what.is_step() {
            steps += 1;
        } else {
            faults.push_back((steps, event.clone()));
        }
    }
    faults
}
