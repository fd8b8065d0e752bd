//! `zdm demo --chaos --seed S`: the walk and its faults drawn from a seed (`schedule`) and run
//! under the demo's live traffic, on a PostgreSQL of the demo's own that the faults restart
//! and kill. The audit is the demo's own; a 503 while a fault lasts is counted apart, any
//! other failure fails the run, and the seed (or the schedule's file) replays it.
//!
//! Here: the run of a schedule, event by event. A step (an advance, a rollback) is tried
//! again, as an operator would, while a fault keeps it from being taken; meanwhile the faults
//! that last (a frozen instance, a killed one, a paused backfill, a transaction in the way)
//! end when they are due (`faults`).

mod faults;
pub mod schedule;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use self::faults::Faults;
use self::schedule::{Schedule, What};
use super::fleet::Fleet;
use super::report::BackfillRun;
use super::walk::Admin;
use super::{DemoOptions, Timeline, pause};
use crate::domain::Phase;
use crate::local_pg::{LocalPg, ScratchCluster};
use crate::migration::gates::CONTRACT_CONFIRMATION;
use crate::pgbouncer::PgBouncer;
use crate::tools::demo::failover::Failover;
use crate::tools::demo::report::DemoSummary;

/// What a chaos run is given.
#[derive(Debug, Clone)]
pub struct Chaos {
    pub schedule: Schedule,
    /// The same traffic and faults with no migration (`--control`): a finding there is the
    /// harness's, not the migration's.
    pub control: bool,
    /// The demo's own PostgreSQL, which the faults restart and kill.
    pub server: LocalPg,
    /// Its synchronous standby (`--failover`), which a fault promotes.
    pub standby: Option<LocalPg>,
    /// Its streaming replica (`--replicas 1`), which a fault stops.
    pub replica: Option<LocalPg>,
}

/// Rows in each of a chaos run's backfill batches unless given: half the quick run's, so
/// that its backfill lasts the seconds its faults are drawn in (about 7 s at 30,000 rows).
pub const BACKFILL_BATCH: i32 = 500;

/// How long a step is tried again while faults keep it from being taken.
const STEP_PATIENCE: Duration = Duration::from_secs(120);

/// How long the run waits, at the end, for the backfill to finish.
const BACKFILL_PATIENCE: Duration = Duration::from_secs(180);

/// Runs `chaos`'s schedule under the traffic: returns the lock timeouts the steps retried
/// and what the backfill did.
pub(super) async fn walk_chaos(
    fleet: &mut Fleet,
    admin: &Admin,
    url: &str,
    opts: &DemoOptions,
    pooler: Option<&PgBouncer>,
    timeline: &mut Timeline,
    chaos: &Chaos,
) -> Result<(usize, Option<BackfillRun>)> {
    log::warn!(
        "CHAOS: faults are struck on purpose, drawn from seed {} ({} events); replay: {}",
        chaos.schedule.seed,
        chaos.schedule.events.len(),
        replay_hint(opts, &chaos.schedule, chaos.control)
    );
    let mut faults = Faults::new(fleet, admin, url, opts, pooler, timeline, chaos)?;
    if chaos.control {
        faults.timeline.mark(
            "control run: the same traffic and faults, no migration (so v1 clients only, as v2 \
             come with dual_write, and no backfill for its faults to strike)",
        );
    }
    let mut phase = Phase::Baseline;
    let mut lock_timeouts = 0;
    // The steps in order, each at its time or as soon after as the one before lets it; a
    // fault strikes when due once the step before it has begun, also while that step waits.
    let steps = chaos.schedule.events.iter().filter(|e| e.what.is_step());
    for (begun, event) in steps.enumerate() {
        faults.steps_begun = begun;
        faults.until(event.at_ms).await?;
        faults.steps_begun = begun + 1;
        match &event.what {
            What::Advance { to } | What::Rollback { to } if !chaos.control => {
                let to: Phase = to.parse()?;
                if phase == Phase::DualWrite && to == Phase::Backfilled {
                    faults.finish_backfill(BACKFILL_PATIENCE, true).await?;
                }
                lock_timeouts += step(&mut faults, admin, phase, to).await?;
                phase = to;
            }
            What::StartBackfill if !chaos.control => faults.start_backfill()?,
            _ => {}
        }
    }
    faults.steps_begun = usize::MAX;
    faults.strike_the_rest().await?;
    faults.settle().await?;
    let backfill = if faults.backfill_started() {
        Some(faults.finish_backfill(BACKFILL_PATIENCE, false).await?)
    } else {
        None
    };
    faults.dwell(Duration::from_secs(1)).await?;
    Ok((lock_timeouts, backfill))
}

/// The segment a step's DDL waits in, if it takes a lock on `users`.
fn ddl_segment(from: Phase, to: Phase) -> Option<&'static str> {
    match (from, to) {
        (Phase::Baseline, Phase::Expanded) => Some("expanding"),
        (Phase::NewOnly, Phase::Contracted) => Some("contracting"),
        (Phase::Contracted, Phase::NewOnly) => Some("re-adding full_name"),
        _ => None,
    }
}

/// Takes the step from `from` to `to` (an advance or a rollback of one phase), trying again
/// while faults keep it from being taken, then waits until the instances in rotation apply
/// `to`. Returns the lock timeouts it retried.
async fn step(faults: &mut Faults<'_>, admin: &Admin, from: Phase, to: Phase) -> Result<usize> {
    let advance = to > from;
    let action = if advance { "advance" } else { "rollback" };
    if let Some(segment) = ddl_segment(from, to) {
        faults.timeline.enter(segment);
    }
    let give_up = Instant::now() + STEP_PATIENCE;
    let mut lock_timeouts = 0;
    let mut wait = false;
    loop {
        if wait {
            if Instant::now() > give_up {
                bail!("{action} from {from} to {to}: not taken within {STEP_PATIENCE:?}");
            }
            faults.dwell(Duration::from_secs(1)).await?;
        }
        wait = true;
        // Where the migration is before each try: a try whose answer was lost may have
        // taken the step, and a rollback out of new_only may have stopped half-way (it is
        // then finished from where it stopped).
        let sent_from = match admin.position().await {
            Ok((phase, true)) if phase == to => break,
            Ok((phase, false)) if phase == to && !advance => to,
            Ok((phase, _)) if phase == from => from,
            Ok((phase, finished)) => {
                bail!(
                    "{action} from {from} to {to}: the migration is at {phase} (finished: {finished})"
                )
            }
            Err(e) => {
                faults
                    .timeline
                    .mark(format!("no status ({e:#}): tried again"));
                continue;
            }
        };
        let admin_now = admin.clone();
        let taking = actix_web::rt::spawn(async move {
            let confirm = (to == Phase::Contracted).then_some(CONTRACT_CONFIRMATION);
            match advance {
                true => admin_now.advance(from, confirm).await,
                false => admin_now.rollback_from(sent_from, to).await,
            }
        });
        while !taking.is_finished() {
            faults.pump().await?;
            pause(0.05).await;
        }
        // Taken: the next look at the position ends the loop (or finishes a rollback that
        // stopped half-way).
        match taking.await.context("a step of the walk panicked")? {
            Ok(retried) => {
                lock_timeouts += retried;
                wait = false;
            }
            Err(e) => faults
                .timeline
                .mark(format!("{action} to {to} not taken ({e:#}): tried again")),
        }
    }
    faults.wait_applied(to).await?;
    if to == Phase::DualWrite {
        faults
            .timeline
            .control
            .v2_enabled
            .store(true, std::sync::atomic::Ordering::Release);
    }
    let name = if advance {
        to.as_str().to_owned()
    } else {
        format!("{to} (rolled back)")
    };
    faults.timeline.enter(&name);
    Ok(lock_timeouts)
}

/// One chaos run of `schedule` on a PostgreSQL of its own under `base` (with a standby or a
/// replica as the schedule's set-up asks), removed afterwards.
pub fn run_seed(
    base: &Path,
    opts: &DemoOptions,
    schedule: Schedule,
    control: bool,
) -> anyhow::Result<DemoSummary> {
    // With a failover: a primary and a synchronous standby, reached by a multi-host URL.
    let (mut cluster, server, standby, url) = if schedule.setup.failover {
        let (cluster, failover, url) = Failover::start(base, true)?;
        (cluster, failover.primary, Some(failover.standby), url)
    } else {
        let cluster = ScratchCluster::new(base.to_owned());
        let server = cluster
            .primary()
            .context("starting the chaos run's PostgreSQL")?;
        let url = server.url("postgres");
        (cluster, server, None, url)
    };
    let mut opts = opts.clone();
    let replica = if schedule.setup.replicas {
        let replica = cluster
            .replica(&server)
            .context("starting the chaos run's replica")?;
        opts.replica_servers = vec![replica.url("postgres")];
        Some(replica)
    } else {
        None
    };
    opts.chaos = Some(Chaos {
        schedule,
        control,
        server,
        standby,
        replica,
    });
    let summary = actix_web::rt::System::new().block_on(super::run(&url, opts));
    drop(cluster);
    summary
}

/// The summary of a run the harness could not finish (a cluster that would not start, a
/// report it could not write): failed, naming its seed, how to replay it and why.
pub fn harness_failure(
    opts: &DemoOptions,
    schedule: Schedule,
    control: bool,
    error: &anyhow::Error,
) -> DemoSummary {
    DemoSummary {
        mode: "zdm".to_owned(),
        seed: Some(schedule.seed),
        replay: Some(replay_hint(opts, &schedule, control)),
        walk_error: Some(format!("the run could not finish: {error:#}")),
        schedule: Some(schedule),
        control,
        passed: false,
        ..DemoSummary::default()
    }
}

/// The command that replays a chaos run of `opts`: its seed (or the schedule's file it was
/// read from) with the options that shape the run where they are not the quick run's.
pub fn replay_hint(opts: &DemoOptions, schedule: &Schedule, control: bool) -> String {
    let quick = DemoOptions {
        backfill_batch: BACKFILL_BATCH,
        ..DemoOptions::quick(Default::default())
    };
    let mut command = match &opts.schedule_file {
        Some(file) => format!("zdm demo --chaos --schedule {}", file.display()),
        None => format!("zdm demo --chaos --seed {}", schedule.seed),
    };
    let numbers = [
        ("--rows", opts.rows, quick.rows),
        ("--clients", opts.clients as u64, quick.clients as u64),
        (
            "--write-percent",
            u64::from(opts.write_percent),
            u64::from(quick.write_percent),
        ),
        (
            "--backfill-batch",
            opts.backfill_batch as u64,
            quick.backfill_batch as u64,
        ),
        (
            "--backfill-sleep-ms",
            opts.backfill_sleep_ms as u64,
            quick.backfill_sleep_ms as u64,
        ),
    ];
    for (flag, value, default) in numbers {
        if value != default {
            command.push_str(&format!(" {flag} {value}"));
        }
    }
    if let Some(workers) = opts.backfill_workers {
        command.push_str(&format!(" --backfill-workers {workers}"));
    }
    for (on, flag) in [
        (control, " --control"),
        (schedule.setup.pooler, " --pooler"),
        (schedule.setup.failover, " --failover"),
        (schedule.setup.replicas, " --replicas 1"),
    ] {
        if on {
            command.push_str(flag);
        }
    }
    if let Some(fault) = opts.fault {
        command.push_str(&format!(" --fault {}", fault.name()));
    }
    command
}

/// Reads a schedule written by `--schedule-out`.
pub fn read_schedule(path: &std::path::Path) -> Result<Schedule> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the schedule {}", path.display()))?;
    let schedule: Schedule = serde_json::from_str(&text)
        .with_context(|| format!("reading the schedule {} as JSON", path.display()))?;
    if schedule.setup.instances == 0 {
        bail!("the schedule {} names no instances", path.display());
    }
    Ok(schedule)
}
