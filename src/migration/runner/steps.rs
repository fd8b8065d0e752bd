//! The phase migrations (`STEPS`, one per step, read from `migrations/9000-*`), which of them
//! are applied, and `apply`, which runs or reverts one as the migration harness would,
//! retrying lock timeouts within `LOCK_WAIT_BUDGET` once the transactions in the way have ended.

use std::time::{Duration, Instant};

use diesel::connection::BoxableConnection;
use diesel::connection::SimpleConnection;
use diesel::migration::{Migration, MigrationMetadata, MigrationName, MigrationSource};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::Text;
use diesel_migrations::MigrationHarness;

use super::super::schema_migrations::MIGRATIONS;
use super::error::{RunError, classify, users_lock_timed_out};
use super::holders::{self, UsersLock};
use crate::domain::Phase;
use crate::migration::state;

/// How long a step keeps trying for its lock on users, its last attempt included: attempts as
/// long as the stored `lock_attempt_ms` (5 ms unless `ZDM_LOCK_ATTEMPT_MS` says otherwise; each
/// is that long a stall for the requests queued behind it, see `lock_attempt_scale`), the
/// pauses between them and the waits for the transactions in the way (`holders`), until this
/// much time has gone.
pub const LOCK_WAIT_BUDGET: Duration = Duration::from_secs(10);

/// How long attempts stay as short as stored: a transaction in the way (a report, a
/// migration of someone else's) usually ends within it.
const SHORT_ATTEMPTS_FOR: Duration = Duration::from_secs(2);

/// By how much an attempt `elapsed` into a step's trying (its waits for the transactions in
/// the way left out) is longer than the stored `lock_attempt_ms`
/// (`zdm.lock_attempt_scale`, which `zdm_lock_attempt()` multiplies by, up to 200 ms): 1 for
/// `SHORT_ATTEMPTS_FOR`, then doubling every second. On a table so busy that some
/// transaction always holds it a little longer than an attempt, the step still gets its lock;
/// behind one long transaction the attempts stay short.
pub fn lock_attempt_scale(elapsed: Duration) -> u32 {
    let Some(over) = elapsed.checked_sub(SHORT_ATTEMPTS_FOR) else {
        return 1;
    };
    1 << (over.as_secs() + 1).min(6)
}

/// The pause after the `n`th lock timeout (from 1): from 25 ms, doubling up to 1 s, jittered
/// down to half of that, so that the requests queued behind an attempt go through before the
/// next, and two steps retrying at once fall out of step.
pub fn lock_retry_pause(n: u32, rng: &mut fastrand::Rng) -> Duration {
    let cap_ms = (25_u64 << n.saturating_sub(1).min(6)).min(1000);
    Duration::from_millis(rng.u64(cap_ms / 2..=cap_ms))
}

/// A phase migration's SQL, read from the files `embed_migrations!` embeds (see
/// `StepMigration`).
struct StepFiles {
    name: &'static str,
    up: &'static str,
    down: &'static str,
}

macro_rules! step_files {
    ($name:literal) => {
        StepFiles {
            name: $name,
            up: include_str!(concat!("../../../migrations/", $name, "/up.sql")),
            down: include_str!(concat!("../../../migrations/", $name, "/down.sql")),
        }
    };
}

const STEP_FILES: [StepFiles; 6] = [
    step_files!("9000-00-01-000000_phase_1_expand"),
    step_files!("9000-00-02-000000_phase_2_dual_write"),
    step_files!("9000-00-03-000000_phase_3_backfilled"),
    step_files!("9000-00-04-000000_phase_4_read_new"),
    step_files!("9000-00-05-000000_phase_5_new_only"),
    step_files!("9000-00-06-000000_phase_6_contract"),
];

pub const EXPAND: &str = STEP_FILES[0].name;
pub const DUAL_WRITE: &str = STEP_FILES[1].name;
pub const BACKFILLED: &str = STEP_FILES[2].name;
pub const READ_NEW: &str = STEP_FILES[3].name;
pub const NEW_ONLY: &str = STEP_FILES[4].name;
pub const CONTRACT: &str = STEP_FILES[5].name;

/// The phase migrations in order: the one at index `i` steps from `Phase::ALL[i]` to the next.
pub const STEPS: [&str; 6] = [EXPAND, DUAL_WRITE, BACKFILLED, READ_NEW, NEW_ONLY, CONTRACT];

/// The phase migration that advances from `from` (and that a rollback to `from` reverts).
pub fn step_migration(from: Phase) -> Option<&'static str> {
    STEPS.get(from.index()).copied()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    Up,
    Down,
}

/// A phase migration as the harness runs it (in a transaction unless its metadata says not,
/// recorded in `__diesel_schema_migrations`), with its SQL sent by this module: the harness's
/// own error keeps only the message of what the SQL raised, this one Diesel's error with its
/// DETAIL (see `Raised`). The SQL is the same file's, read at build time.
struct StepMigration {
    embedded: Box<dyn Migration<Pg>>,
    files: &'static StepFiles,
}

impl Migration<Pg> for StepMigration {
    fn run(&self, conn: &mut dyn BoxableConnection<Pg>) -> diesel::migration::Result<()> {
        Ok(conn.batch_execute(self.files.up)?)
    }

    fn revert(&self, conn: &mut dyn BoxableConnection<Pg>) -> diesel::migration::Result<()> {
        Ok(conn.batch_execute(self.files.down)?)
    }

    fn metadata(&self) -> &dyn MigrationMetadata {
        self.embedded.metadata()
    }

    fn name(&self) -> &dyn MigrationName {
        self.embedded.name()
    }
}

fn find_migration(name: &str) -> Result<StepMigration, RunError> {
    let not_found = |message: String| RunError::Migration {
        migration: name.to_owned(),
        message,
    };
    let files = STEP_FILES
        .iter()
        .find(|files| files.name == name)
        .ok_or_else(|| not_found("not a phase migration".to_owned()))?;
    let embedded = MigrationSource::<Pg>::migrations(&MIGRATIONS)
        .map_err(|e| not_found(e.to_string()))?
        .into_iter()
        .find(|m| m.name().to_string() == name)
        .ok_or_else(|| not_found("not embedded in this binary".to_owned()))?;
    Ok(StepMigration { embedded, files })
}

fn version_of(name: &str) -> String {
    name.split('_').next().unwrap_or(name).replace('-', "")
}

/// Whether the phase migration `name` is applied.
pub fn is_applied(conn: &mut PgConnection, name: &str) -> Result<bool, RunError> {
    Ok(applied_steps(conn)?.contains(&name))
}

/// The phase migrations applied, in order. Read with a plain SELECT, not diesel's harness,
/// which first creates its bookkeeping table if missing: a role with no DDL rights (the
/// requests' behind a pooler) shows the status too.
pub fn applied_steps(conn: &mut PgConnection) -> QueryResult<Vec<&'static str>> {
    let applied: Vec<String> = diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
        .load::<AppliedVersion>(conn)?
        .into_iter()
        .map(|v| v.version)
        .collect();
    Ok(STEPS
        .into_iter()
        .filter(|name| applied.contains(&version_of(name)))
        .collect())
}

#[derive(QueryableByName)]
struct AppliedVersion {
    #[diesel(sql_type = Text)]
    version: String,
}

/// The last phase migration applied (what a revert would undo), if any.
pub fn last_applied_step(conn: &mut PgConnection) -> Result<Option<&'static str>, RunError> {
    Ok(applied_steps(conn)?.last().copied())
}

/// Applies (or reverts) one phase migration, retrying lock timeouts within `LOCK_WAIT_BUDGET`:
/// after a jittered pause (`lock_retry_pause`), and once the transactions its DDL met on
/// users have ended (`holders`).
/// Nothing happens if it is already applied (reverted). Returns the lock timeouts met.
pub(super) fn apply(conn: &mut PgConnection, name: &str, step: Step) -> Result<usize, RunError> {
    let applied = is_applied(conn, name)?;
    if applied == (step == Step::Up) {
        return Ok(0);
    }
    let migration = find_migration(name)?;
    let mut retries = Retries::new(name, longest_lock_wait(state::lock_attempt_ms(conn)?));
    loop {
        if retries.lock_timeouts > 0 {
            diesel::sql_query(
                "SELECT set_config('zdm.retries', $1, false), \
                        set_config('zdm.lock_attempt_scale', $2, false)",
            )
            .bind::<Text, _>(retries.to_string())
            .bind::<Text, _>(lock_attempt_scale(retries.trying()).to_string())
            .execute(conn)?;
        }
        let attempt = Instant::now();
        let result = match step {
            Step::Up => conn.run_migration(&migration).map(drop),
            Step::Down => conn.revert_migration(&migration).map(drop),
        };
        let Err(e) = result else {
            log::info!(
                "{} {name}",
                if step == Step::Up {
                    "applied"
                } else {
                    "reverted"
                }
            );
            return Ok(retries.lock_timeouts);
        };
        // A migration that manages its own transactions (BEGIN ... COMMIT in its file) leaves
        // its failed transaction open: end it, or the retry (and whatever uses this
        // connection next) meets "current transaction is aborted". Without one open,
        // PostgreSQL only warns.
        let _ = conn.batch_execute("ROLLBACK");
        match classify(name, e.as_ref()) {
            Some(RunError::LockTimeout { .. }) => {
                let lock = users_lock_timed_out(e.as_ref());
                retries.wait_to_retry(conn, attempt.elapsed(), lock)?;
            }
            Some(refused_or_undone) => return Err(refused_or_undone),
            None => {
                return Err(RunError::Migration {
                    migration: name.to_owned(),
                    message: e.to_string(),
                });
            }
        }
    }
}

/// How long the longest attempt waits for its lock, unless the stored one is longer: the cap
/// `zdm_lock_attempt()` puts on attempts grown by `lock_attempt_scale`.
const LONGEST_ATTEMPT_MS: u16 = 200;

/// The longest an attempt's DDL waits for its lock, with `lock_attempt_ms` stored:
/// `LONGEST_ATTEMPT_MS`, or that if longer.
fn longest_lock_wait(lock_attempt_ms: i32) -> Duration {
    let ms = u64::try_from(lock_attempt_ms).unwrap_or(0);
    Duration::from_millis(ms.max(u64::from(LONGEST_ATTEMPT_MS)))
}

/// A step's lock timeouts so far, and what it waited.
struct Retries<'a> {
    name: &'a str,
    started: Instant,
    lock_timeouts: usize,
    /// The longest an attempt's DDL can wait for its lock (`longest_lock_wait`).
    longest_lock_wait: Duration,
    /// The longest wait for the lock of an attempt that met its lock timeout so far.
    longest_attempt: Duration,
    /// How long it waited for the transactions its DDL met to end.
    waited_for_holders: Duration,
    /// How long its attempts worked before their DDL waited for the lock: the gates, a
    /// fresh verify among them, which reads every row of users (seconds on a big table)
    /// and stalls no one.
    worked: Duration,
    rng: fastrand::Rng,
}

impl<'a> Retries<'a> {
    fn new(name: &'a str, longest_lock_wait: Duration) -> Self {
        Retries {
            name,
            started: Instant::now(),
            lock_timeouts: 0,
            longest_lock_wait,
            longest_attempt: Duration::ZERO,
            waited_for_holders: Duration::ZERO,
            worked: Duration::ZERO,
            rng: fastrand::Rng::new(),
        }
    }

    /// How long the step has tried, its waits for the transactions in the way and its work
    /// left out: what an attempt's length grows with (`lock_attempt_scale`).
    fn trying(&self) -> Duration {
        self.started
            .elapsed()
            .saturating_sub(self.waited_for_holders + self.worked)
    }

    /// Counts an attempt that met its lock timeout after `took`: its DDL's wait for the lock
    /// (at most `longest_lock_wait`), and its work before.
    fn count_attempt(&mut self, took: Duration) {
        let waited = took.min(self.longest_lock_wait);
        self.lock_timeouts += 1;
        self.longest_attempt = self.longest_attempt.max(waited);
        self.worked += took - waited;
    }

    /// When the next attempt must start by to end within the budget, its work left out, if it
    /// can: its wait for the lock is at most four times the longest so far (attempts double
    /// each second of trying past `SHORT_ATTEMPTS_FOR`, and between two attempts trying grows
    /// by a pause, at most 1 s, and an attempt).
    fn deadline(&self) -> Option<Instant> {
        (self.started + LOCK_WAIT_BUDGET + self.worked).checked_sub(4 * self.longest_attempt)
    }

    /// After an attempt of `took` met its lock timeout (waiting for `lock` on users, if it was
    /// a DDL's on users): pauses, then waits for the transactions in that lock's way to end;
    /// an error if the budget would not hold the next attempt.
    fn wait_to_retry(
        &mut self,
        conn: &mut PgConnection,
        took: Duration,
        lock: Option<UsersLock>,
    ) -> Result<(), RunError> {
        // Read before the pause: the transactions the attempt met (and any begun in between),
        // not those begun during the pause. Without them, the pause alone (as on zdm's rows).
        let met = lock.map_or_else(Vec::new, |lock| {
            holders::holders(conn, lock).unwrap_or_else(|e| {
                log::warn!("{}: reading the locks on users: {e}", self.name);
                Vec::new()
            })
        });
        self.count_attempt(took);
        let pause = lock_retry_pause(self.lock_timeouts as u32, &mut self.rng);
        // The next attempt must end within the budget too (counting the pause alone, a step
        // gave up after 10.06 s of a 10-s budget).
        let Some(deadline) = self.deadline().filter(|d| Instant::now() + pause <= *d) else {
            return Err(self.gave_up_behind(conn, &met));
        };
        log::warn!(
            "{}: lock timeout (attempt {}), retrying in {pause:?}{}",
            self.name,
            self.lock_timeouts,
            if met.is_empty() {
                String::new()
            } else {
                format!(" once {} transaction(s) in the way have ended", met.len())
            }
        );
        std::thread::sleep(pause);
        let waiting = Instant::now();
        let ended = lock.map_or(Ok(true), |lock| {
            holders::wait_for(conn, lock, &met, deadline)
        });
        let ended = ended.unwrap_or_else(|e| {
            log::warn!("{}: waiting for the locks on users: {e}", self.name);
            true
        });
        self.waited_for_holders += waiting.elapsed();
        if ended {
            Ok(())
        } else {
            Err(self.gave_up_behind(conn, &met))
        }
    }

    /// The error the step gives up with, naming those of the transactions it `met` still in
    /// its way.
    fn gave_up_behind(&self, conn: &mut PgConnection, met: &[String]) -> RunError {
        RunError::LockTimeout {
            migration: self.name.to_owned(),
            attempts: self.lock_timeouts,
            waited: self.started.elapsed(),
            in_the_way: holders::describe(conn, met).unwrap_or_default(),
        }
    }
}

/// What the history says of them.
impl std::fmt::Display for Retries<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} lock timeout(s) retried over {:.2} s",
            self.lock_timeouts,
            self.started.elapsed().as_secs_f64()
        )?;
        if !self.waited_for_holders.is_zero() {
            write!(
                f,
                ", {:.2} s of it waiting for the transactions in its way to end",
                self.waited_for_holders.as_secs_f64()
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_retry_pauses_grow_from_25_ms_to_1_s_jittered_down_to_half() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..200 {
            let mut ms = |n| lock_retry_pause(n, &mut rng).as_millis();
            assert!((12..=25).contains(&ms(1)));
            assert!((50..=100).contains(&ms(3)));
            assert!((400..=800).contains(&ms(6)));
            assert!((500..=1000).contains(&ms(7)));
            assert!((500..=1000).contains(&ms(40)));
        }
    }

    #[test]
    fn attempts_stay_short_for_two_seconds_then_double_every_second() {
        let scale = |ms| lock_attempt_scale(Duration::from_millis(ms));
        assert_eq!((scale(0), scale(1999)), (1, 1));
        assert_eq!((scale(2000), scale(2999), scale(3000)), (2, 2, 4));
        assert_eq!((scale(6500), scale(60_000)), (32, 64));
    }

    #[test]
    fn the_budget_bounds_the_waits_for_the_lock_not_the_gates_work() {
        let mut retries = Retries::new("step", longest_lock_wait(5));
        assert_eq!(retries.longest_lock_wait, Duration::from_millis(200));
        // An attempt whose fresh verify read a big table for 3 s, then met its 5-ms lock
        // timeout: 3 s of work, which stalls no one, and there is time for another attempt.
        retries.count_attempt(Duration::from_millis(3005));
        assert_eq!(retries.worked, Duration::from_millis(2805));
        assert_eq!(retries.longest_attempt, Duration::from_millis(200));
        let left = retries.deadline().unwrap() - Instant::now();
        assert!(left > Duration::from_secs(10), "{left:?}");
        assert!(retries.trying() < Duration::from_secs(1));
        // A stored attempt longer than 200 ms is the cap.
        assert_eq!(longest_lock_wait(1500), Duration::from_millis(1500));
    }

    #[test]
    fn every_phase_step_has_its_migration_in_order() {
        assert_eq!(STEPS.len(), Phase::ALL.len() - 1);
        for (i, name) in STEPS.iter().enumerate() {
            assert!(name.contains(&format!("_phase_{}_", i + 1)), "{name}");
            assert_eq!(step_migration(Phase::ALL[i]), Some(*name));
        }
        assert_eq!(step_migration(Phase::Contracted), None);
        let names = super::super::super::schema_migrations::all_migration_names().unwrap();
        assert_eq!(&names[names.len() - STEPS.len()..], &STEPS);
    }
}
