//! A chaos run's schedule: the walk through the migration (advances, rollbacks of one or two
//! steps, re-advances) and the faults that strike on the way, drawn from a seed. Pure: the
//! same seed draws the same schedule on any machine (`fastrand`'s generator is fixed and only
//! fixed-width draws are used), and the schedule is JSON, so a failing run replays exactly
//! from its seed or from its file.

use serde::{Deserialize, Serialize};

use crate::domain::Phase;

/// What the run is set up with, which decides the faults it can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// Instances started at the beginning (a late one may join).
    pub instances: u32,
    /// Whether a PgBouncer stands in front (its restart is then a fault).
    pub pooler: bool,
    /// Whether the server has a synchronous standby (its promotion is then a fault).
    #[serde(default)]
    pub failover: bool,
    /// Whether the instances read from a streaming replica, which the backfill waits for
    /// (its stop is then a fault).
    #[serde(default)]
    pub replicas: bool,
}

/// A chaos run's walk and faults, in the order of their times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub seed: u64,
    pub setup: Setup,
    /// In order; `at_ms` never decreases.
    pub events: Vec<Event>,
}

/// One thing the run does, at `at_ms` after the traffic started (or as soon after as the
/// steps before it let it: a step waits for its gates and its locks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: u32,
    #[serde(flatten)]
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// A step forward to `to`.
    Advance { to: String },
    /// A step back to `to`.
    Rollback { to: String },
    /// The backfill starts, as a process of its own.
    StartBackfill,
    /// `kill -9` of the backfill's process; a new one resumes it after `down_ms`.
    KillBackfill { down_ms: u32 },
    /// The backfill's workers set to `workers` while it runs.
    BackfillWorkers { workers: u32 },
    /// The backfill's batch size set to `rows` while it runs.
    BackfillBatch { rows: u32 },
    /// The backfill paused for `for_ms`, then resumed by a new process.
    PauseBackfill { for_ms: u32 },
    /// `kill -9` of an instance (out of the load balancer at once), started again after
    /// `down_ms`.
    KillInstance { instance: u32, down_ms: u32 },
    /// `SIGSTOP` of an instance for `for_ms`, then `SIGCONT`.
    FreezeInstance { instance: u32, for_ms: u32 },
    /// One more instance joins the load balancer, learning the phase from the database.
    LateInstance,
    /// A fast shutdown and start of PostgreSQL.
    RestartPostgres,
    /// `kill -9` of PostgreSQL's postmaster, then a start (crash recovery).
    KillPostgres,
    /// A transaction of another client holding `users` (ACCESS SHARE) for `for_ms`: in the
    /// way of a step's DDL.
    HoldLock { for_ms: u32 },
    /// A DBA's job: `pg_stat_statements_reset()`.
    StatsReset,
    /// A DBA's job: `VACUUM users`.
    Vacuum,
    /// A report of another role reading `full_name` (while it exists) for `for_ms`.
    ReportQuery { for_ms: u32 },
    /// A restart of the PgBouncer in front.
    RestartPooler,
    /// `kill -9` of the primary and, a second later, the standby promoted (the pooler
    /// pointed at it), as an HA manager does.
    Failover,
    /// The streaming replica stopped (fast shutdown) for `for_ms`, then started again.
    StopReplica { for_ms: u32 },
}

impl What {
    /// Its `kind`, as the JSON names it (`kill_instance`).
    pub fn kind(&self) -> String {
        serde_json::to_value(self).unwrap_or_default()["kind"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The event as JSON, for the timeline's marks.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Whether this is a step of the migration (not a fault).
    pub fn is_step(&self) -> bool {
        matches!(
            self,
            What::Advance { .. } | What::Rollback { .. } | What::StartBackfill
        )
    }
}

/// How long the run dwells in a phase before its next step, at most (from `MIN_DWELL_MS`).
const MAX_DWELL_MS: u32 = 2_500;
const MIN_DWELL_MS: u32 = 800;
/// Rollbacks a walk makes at most.
const MAX_ROLLBACKS: u32 = 2;

/// Draws the schedule of `seed` for `setup`: the walk from baseline with its dwell times, its
/// rollbacks and where it ends, then the faults at random moments of it.
pub fn draw(seed: u64, setup: Setup) -> Schedule {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut events = walk(&mut rng);
    let end_ms = events.last().map_or(10_000, |e| e.at_ms + MAX_DWELL_MS);
    let mut faults = backfill_faults(&mut rng, &events);
    faults.extend(lock_holders(&mut rng, &events));
    faults.extend(faults_anywhere(&mut rng, setup, end_ms));
    if setup.failover {
        // One promotion: there is one standby.
        faults.push(Event {
            at_ms: rng.u32(1_000..end_ms),
            what: What::Failover,
        });
    }
    if setup.replicas {
        for _ in 0..rng.u32(1..=2) {
            faults.push(Event {
                at_ms: rng.u32(1_000..end_ms),
                what: What::StopReplica {
                    for_ms: rng.u32(500..=5_000),
                },
            });
        }
    }
    events.extend(faults);
    // Stable: a fault drawn for the moment of a step comes after it.
    events.sort_by_key(|e| e.at_ms);
    Schedule {
        seed,
        setup,
        events,
    }
}

/// How long the walk stays in a phase before its next step.
fn dwell(rng: &mut fastrand::Rng) -> u32 {
    rng.u32(MIN_DWELL_MS..=MAX_DWELL_MS)
}

/// The walk: forward from baseline, now and then back one or two steps (never below
/// dual_write: the v2 clients are out from there on) and forward again, the undo after the
/// drop included; ending at contracted, or one time in four at an earlier phase from
/// dual_write on.
fn walk(rng: &mut fastrand::Rng) -> Vec<Event> {
    let end = if rng.u32(0..4) == 0 {
        [
            Phase::DualWrite,
            Phase::Backfilled,
            Phase::ReadNew,
            Phase::NewOnly,
        ][rng.u32(0..4) as usize]
    } else {
        Phase::Contracted
    };
    let mut rollbacks = rng.u32(0..=MAX_ROLLBACKS);
    let mut at = dwell(rng);
    let mut phase = Phase::Baseline;
    let mut events = Vec::new();
    let step = |events: &mut Vec<Event>, what: What, at: &mut u32, rng: &mut fastrand::Rng| {
        events.push(Event { at_ms: *at, what });
        *at += dwell(rng);
    };
    loop {
        let back = rollbacks > 0 && phase > Phase::DualWrite && rng.u32(0..3) == 0;
        if back {
            rollbacks -= 1;
            let steps = if phase > Phase::Backfilled && rng.bool() {
                2
            } else {
                1
            };
            for _ in 0..steps {
                let Some(to) = phase.previous() else { break };
                step(
                    &mut events,
                    What::Rollback {
                        to: to.as_str().to_owned(),
                    },
                    &mut at,
                    rng,
                );
                phase = to;
            }
            continue;
        }
        if phase == end && rollbacks == 0 {
            return events;
        }
        let Some(to) = phase.next() else {
            // At contracted with rollbacks left but none drawn: the walk ends here.
            return events;
        };
        step(
            &mut events,
            What::Advance {
                to: to.as_str().to_owned(),
            },
            &mut at,
            rng,
        );
        if to == Phase::DualWrite && phase == Phase::Expanded {
            let started = at - MIN_DWELL_MS / 2;
            events.push(Event {
                at_ms: started,
                what: What::StartBackfill,
            });
            // The backfill needs a while: its faults land in it.
            at += 4_000;
        }
        phase = to;
    }
}

/// Faults of the backfill while it runs: from its start to the step that needs it done.
fn backfill_faults(rng: &mut fastrand::Rng, walk: &[Event]) -> Vec<Event> {
    let Some(start) = walk.iter().find(|e| e.what == What::StartBackfill) else {
        return Vec::new();
    };
    let mut faults = Vec::new();
    for _ in 0..rng.u32(1..=3) {
        let what = match rng.u32(0..4) {
            0 => What::KillBackfill {
                down_ms: rng.u32(200..=2_000),
            },
            1 => What::BackfillWorkers {
                workers: [1, 4][rng.u32(0..2) as usize],
            },
            2 => What::BackfillBatch {
                rows: [200, 500, 2_000][rng.u32(0..3) as usize],
            },
            _ => What::PauseBackfill {
                for_ms: rng.u32(300..=2_000),
            },
        };
        faults.push(Event {
            at_ms: start.at_ms + rng.u32(100..=3_000),
            what,
        });
    }
    faults
}

/// A transaction in the way of a DDL step (the expand, the contract, the undo's re-add), one
/// time in two, starting just before it.
fn lock_holders(rng: &mut fastrand::Rng, walk: &[Event]) -> Vec<Event> {
    let ddl = |what: &What| match what {
        What::Advance { to } => to == "expanded" || to == "contracted",
        What::Rollback { to } => to == "new_only",
        _ => false,
    };
    let mut holders = Vec::new();
    for step in walk.iter().filter(|e| ddl(&e.what)) {
        if rng.bool() {
            holders.push(Event {
                at_ms: step.at_ms.saturating_sub(rng.u32(0..=300)),
                what: What::HoldLock {
                    for_ms: rng.u32(200..=3_000),
                },
            });
        }
    }
    holders
}

/// Faults at any moment of the run.
fn faults_anywhere(rng: &mut fastrand::Rng, setup: Setup, end_ms: u32) -> Vec<Event> {
    let mut faults = Vec::new();
    let mut late_instance = false;
    for _ in 0..rng.u32(3..=6) {
        let instance = rng.u32(0..setup.instances);
        let what = match rng.u32(0..9) {
            0 => What::KillInstance {
                instance,
                down_ms: rng.u32(200..=3_000),
            },
            1 => What::FreezeInstance {
                instance,
                for_ms: rng.u32(500..=15_000),
            },
            2 if !late_instance => {
                late_instance = true;
                What::LateInstance
            }
            3 => What::RestartPostgres,
            4 => What::KillPostgres,
            5 => What::StatsReset,
            6 => What::Vacuum,
            7 if setup.pooler => What::RestartPooler,
            _ => What::ReportQuery {
                for_ms: rng.u32(500..=5_000),
            },
        };
        faults.push(Event {
            at_ms: rng.u32(500..end_ms),
            what,
        });
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The FNV-1a hash of seed 42's schedule as JSON (`SETUP`).
    const PINNED_SEED_42: u64 = 1_721_836_601_345_986_817;

    const SETUP: Setup = Setup {
        instances: 2,
        pooler: true,
        failover: true,
        replicas: true,
    };

    /// The phases the walk of `schedule` passes through, starting at baseline; fails on a
    /// step that is not one step from where the walk is.
    fn phases(schedule: &Schedule) -> Vec<Phase> {
        let mut phase = Phase::Baseline;
        let mut seen = vec![phase];
        for event in &schedule.events {
            let (to, expected) = match &event.what {
                What::Advance { to } => (to, phase.next()),
                What::Rollback { to } => (to, phase.previous()),
                _ => continue,
            };
            let to: Phase = to.parse().unwrap();
            assert_eq!(Some(to), expected, "seed {}: {event:?}", schedule.seed);
            phase = to;
            seen.push(phase);
        }
        seen
    }

    #[test]
    fn the_same_seed_draws_the_same_schedule_and_it_survives_json() {
        let schedule = draw(42, SETUP);
        assert_eq!(schedule, draw(42, SETUP));
        assert_ne!(schedule, draw(43, SETUP));
        let json = serde_json::to_string(&schedule).unwrap();
        let back: Schedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, schedule);
        // The whole schedule of seed 42, pinned: a change to the drawing, or to the
        // generator's stream (a new fastrand), must show here, as it breaks every replay.
        let pinned = crate::fnv::Fnv1a::of(json.as_bytes());
        assert_eq!(pinned, PINNED_SEED_42, "seed 42 now draws {json}");
    }

    #[test]
    fn every_walk_moves_one_step_at_a_time_never_below_dual_write_once_there() {
        for seed in 0..500 {
            let schedule = draw(seed, SETUP);
            let walked = phases(&schedule);
            let last = *walked.last().unwrap();
            assert!(last >= Phase::DualWrite, "seed {seed} ends at {last}");
            let first_dual_write = walked.iter().position(|p| *p == Phase::DualWrite).unwrap();
            assert!(
                walked[first_dual_write..]
                    .iter()
                    .all(|p| *p >= Phase::DualWrite),
                "seed {seed}: {walked:?}"
            );
            let starts = schedule
                .events
                .iter()
                .filter(|e| e.what == What::StartBackfill)
                .count();
            assert_eq!(starts, 1, "seed {seed}");
            assert!(
                schedule.events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms),
                "seed {seed}"
            );
        }
    }

    #[test]
    fn across_seeds_the_walks_roll_back_undo_the_drop_and_end_early_and_every_fault_is_drawn() {
        let schedules: Vec<Schedule> = (0..200).map(|seed| draw(seed, SETUP)).collect();
        let walks: Vec<Vec<Phase>> = schedules.iter().map(phases).collect();
        assert!(
            walks
                .iter()
                .any(|w| w.contains(&Phase::Contracted) && *w.last().unwrap() != Phase::Contracted)
        );
        assert!(walks.iter().any(|w| !w.contains(&Phase::Contracted)));
        assert!(walks.iter().any(|w| {
            w.windows(2)
                .any(|p| p[1] == Phase::Backfilled && p[0] == Phase::ReadNew)
        }));
        let kinds: std::collections::BTreeSet<String> = schedules
            .iter()
            .flat_map(|s| &s.events)
            .map(|e| e.what.kind())
            .collect();
        assert_eq!(kinds.len(), 19, "every kind of event: {kinds:?}");
        let plain = Setup {
            instances: 2,
            pooler: false,
            failover: false,
            replicas: false,
        };
        let only = |kind: What| move |s: &Schedule| s.events.iter().any(|e| e.what == kind);
        assert!(
            !(0..200)
                .map(|seed| draw(seed, plain))
                .any(|s| only(What::RestartPooler)(&s))
        );
        assert!(
            !(0..200)
                .map(|seed| draw(seed, plain))
                .any(|s| only(What::Failover)(&s))
        );
        // A setup's own faults are drawn after the others: the rest of the schedule is the
        // same with them or without.
        let with_all = draw(9, SETUP);
        let without: Vec<&Event> = with_all
            .events
            .iter()
            .filter(|e| !matches!(e.what, What::Failover | What::StopReplica { .. }))
            .collect();
        let pooled = draw(
            9,
            Setup {
                pooler: true,
                ..plain
            },
        );
        assert_eq!(without, pooled.events.iter().collect::<Vec<_>>());
    }
}
