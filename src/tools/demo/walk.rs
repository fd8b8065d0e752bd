//! The driver's two walks through the migration, made while the clients send their traffic:
//! zdm's, through the admin API of the first instance with its faults on the way (a long
//! transaction in the way of the expand and the contract, a rolling restart, a `kill -9` of
//! the backfill, a failover with `--failover`), and the naive one-step migration.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::failover::fail_over;
use super::fleet::Fleet;
use super::report::BackfillRun;
use super::{DemoOptions, Timeline, blocking, connect, pause};
use crate::domain::Phase;
use crate::migration::gates::CONTRACT_CONFIRMATION;
use crate::migration::{backfill, state};
use crate::pgbouncer::PgBouncer;

/// The admin API of the instances in rotation (the first one up).
#[derive(Clone)]
pub(super) struct Admin {
    http: reqwest::Client,
    rotation: super::fleet::Rotation,
    token: String,
}

impl Admin {
    /// The admin API of the fleet, with a timeout long enough for a step that waits for its
    /// gates and its locks.
    pub(super) fn of(fleet: &Fleet) -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .context("building the HTTP client of the admin API")?,
            rotation: fleet.rotation.clone(),
            token: fleet.admin_token().to_owned(),
        })
    }

    /// The first instance in rotation, waiting (up to `UNAVAILABLE_PATIENCE`) while none is.
    async fn base(&self) -> Result<String> {
        let give_up = Instant::now() + UNAVAILABLE_PATIENCE;
        loop {
            if let Some(url) = (0..self.rotation.urls.len())
                .find(|i| self.rotation.is_up(*i))
                .map(|i| self.rotation.urls[i].clone())
            {
                return Ok(url);
            }
            if Instant::now() > give_up {
                bail!("no instance in rotation for {UNAVAILABLE_PATIENCE:?}");
            }
            pause(0.1).await;
        }
    }

    /// POSTs `body` to `path`: the answer's status and body. An instance that does not
    /// answer (a fault took it down) counts as 503: the load balancer's answer.
    async fn send(&self, path: &str, body: &Value) -> Result<(StatusCode, Value)> {
        let base = self.base().await?;
        let sent = Instant::now();
        let response = match self
            .http
            .post(format!("{base}{path}"))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
        {
            Err(e) if self.rotation.lost_to_a_fault(&base, sent) => {
                log::info!("POST {path}: {base} was lost to a fault ({e})");
                return Ok((StatusCode::SERVICE_UNAVAILABLE, Value::Null));
            }
            answer => answer.with_context(|| format!("sending POST {path}"))?,
        };
        let status = response.status();
        Ok((status, response.json().await.unwrap_or_default()))
    }

    pub(super) async fn post(&self, path: &str, body: Value) -> Result<Value> {
        match self.send(path, &body).await? {
            (status, body) if status.is_success() => Ok(body),
            (status, body) => bail!("{path} answered {status}: {}", body["error"]),
        }
    }

    /// The migration's status (`GET /api/admin/migration`).
    async fn status(&self) -> Result<Value> {
        let response = self
            .http
            .get(format!("{}/api/admin/migration", self.base().await?))
            .bearer_auth(&self.token)
            .send()
            .await
            .context("sending GET /api/admin/migration")?;
        let status = response.status();
        if !status.is_success() {
            bail!("/api/admin/migration answered {status}");
        }
        response
            .json()
            .await
            .context("reading the migration's status")
    }

    /// Waits, as a careful operator does, until the next step's gate `name` is met (at most
    /// `patience`), and says so on the timeline.
    async fn wait_for_gate(&self, name: &str, patience: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            let status = self.status().await?;
            let gate = status["next"]["gates"]
                .as_array()
                .and_then(|gates| gates.iter().find(|g| g["name"] == name).cloned());
            match gate {
                Some(gate) if gate["met"] == true => return Ok(()),
                Some(gate) if started.elapsed() > patience => {
                    bail!(
                        "the {name} gate stayed unmet for {patience:?}: {}",
                        gate["detail"]
                    )
                }
                None => return Ok(()),
                Some(_) => pause(0.1).await,
            }
        }
    }

    async fn rollback(&self) -> Result<usize> {
        let body = self
            .post("/api/admin/migration/rollback", json!({}))
            .await?;
        Ok(body["transition"]["lock_timeouts"].as_u64().unwrap_or(0) as usize)
    }

    /// Advances from `from`, trying again while the instance answers 503 (no primary for
    /// now), as an operator would. Naming `from` makes that safe: a step that committed before
    /// its answer was lost is not taken twice, and the phase shows it was taken.
    pub(super) async fn advance(&self, from: Phase, confirm: Option<&str>) -> Result<usize> {
        let to = from.next().context("advancing past the last phase")?;
        self.step("advance", from, to, confirm).await
    }

    /// Rolls back from `from` to `to`, as `advance` advances: `to` is `from`'s previous
    /// phase, or `from` itself (read_new) to finish a rollback out of new_only that stopped
    /// half-way.
    pub(super) async fn rollback_from(&self, from: Phase, to: Phase) -> Result<usize> {
        self.step("rollback", from, to, None).await
    }

    /// The stored phase, and whether the step into it finished: a rollback out of new_only
    /// can stop half-way, with the phase read_new and new_only's migration still applied
    /// (`zdm migrate rollback` again finishes it).
    pub(super) async fn position(&self) -> Result<(Phase, bool)> {
        let status = self.status().await?;
        let applied = status["migrations"]
            .as_array()
            .map_or(0, |m| m.iter().filter(|m| m["applied"] == true).count());
        let phase: Phase = status["phase"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("the status names no phase: {status}"))?;
        Ok((phase, applied == phase.index()))
    }

    /// Whether the migration is at `phase`, the step into it finished.
    pub(super) async fn is_at(&self, phase: Phase) -> Result<bool> {
        Ok(self.position().await? == (phase, true))
    }

    /// The step `action` (advance, rollback) from `from` to `to`: its lock timeouts retried.
    async fn step(
        &self,
        action: &str,
        from: Phase,
        to: Phase,
        confirm: Option<&str>,
    ) -> Result<usize> {
        let path = format!("/api/admin/migration/{action}");
        let mut body = json!({ "from": from.as_str() });
        if let Some(confirm) = confirm {
            body["confirm"] = json!(confirm);
        }
        let give_up = Instant::now() + UNAVAILABLE_PATIENCE;
        let mut unavailable = false;
        loop {
            let (status, answer) = self.send(&path, &body).await?;
            if status.is_success() {
                return Ok(answer["transition"]["lock_timeouts"].as_u64().unwrap_or(0) as usize);
            }
            if status == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < give_up {
                unavailable = true;
                pause(0.25).await;
                continue;
            }
            if unavailable && self.is_at(to).await.unwrap_or(false) {
                return Ok(0);
            }
            bail!("{path} answered {status}: {}", answer["error"]);
        }
    }
}

/// How long a step is tried again while the instance answers 503.
const UNAVAILABLE_PATIENCE: Duration = Duration::from_secs(60);

/// How long the long transaction waits for the step it stands in the way of to reach it.
const BLOCKER_WAITS_FOR_THE_STEP: Duration = Duration::from_secs(60);

/// Holds ACCESS SHARE on `users` (a long report query) on its own thread: from before this
/// returns until `hold` after a lock on `users` was first seen waiting behind it. Counted from
/// then, not from its start, so the step it stands in the way of meets it however late that
/// step starts on a loaded machine.
async fn long_transaction(
    url: String,
    hold: Duration,
) -> Result<std::thread::JoinHandle<Result<()>>> {
    let (held_tx, held_rx) = std::sync::mpsc::sync_channel::<()>(1);
    let blocker = std::thread::spawn(move || {
        let mut conn =
            PgConnection::establish(&url).context("connecting for the long transaction")?;
        conn.batch_execute("BEGIN; SELECT count(*) FROM users;")
            .context("starting the long transaction")?;
        let _ = held_tx.send(());
        let give_up = Instant::now() + BLOCKER_WAITS_FOR_THE_STEP;
        while !crate::migration::runner::someone_waits_on_users(&mut conn)
            .context("looking for a lock waiting on users")?
        {
            if Instant::now() >= give_up {
                bail!("nothing waited for the long transaction");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(hold);
        conn.batch_execute("COMMIT")
            .context("committing the long transaction")
    });
    let held = blocking(move || Ok(held_rx.recv().is_ok())).await?;
    if !held {
        // The thread ended before it held the lock: its error says why.
        return Err(match blocker.join() {
            Ok(Err(e)) => e,
            _ => anyhow!("the long transaction did not start"),
        });
    }
    Ok(blocker)
}

/// Advances under a long transaction holding `users`: the short lock_timeout, and the step's
/// wait outside the lock queue for the transaction to end, keep the traffic flowing.
async fn advance_past_a_long_transaction(
    admin: &Admin,
    url: &str,
    timeline: &mut Timeline,
    (from, confirm): (Phase, Option<&str>),
    what: &str,
) -> Result<usize> {
    timeline.enter(&format!("{what}ing"));
    timeline.mark(format!(
        "long transaction holds users (1.5 s) during the {what}"
    ));
    let blocker = long_transaction(url.to_owned(), Duration::from_millis(1500)).await?;
    let lock_timeouts = admin
        .advance(from, confirm)
        .await
        .with_context(|| format!("{what}ing past a long transaction"))?;
    blocker
        .join()
        .map_err(|_| anyhow!("the long transaction panicked"))??;
    timeline.mark(format!(
        "{what} done after {lock_timeouts} lock timeout(s) retried"
    ));
    Ok(lock_timeouts)
}

pub(super) fn backfill_status(url: &str) -> Result<backfill::BackfillStatus> {
    backfill::status(&mut connect(url)?).context("reading the backfill's progress")
}

/// The backfill's run as it ended, with each change of its worker count.
pub(super) fn finished_backfill(url: &str) -> Result<BackfillRun> {
    let mut conn = connect(url)?;
    let changes = backfill::worker_changes(&mut conn, 1000)
        .context("reading the changes of the worker count")?;
    let done = backfill::status(&mut conn).context("reading the backfill's progress")?;
    Ok(BackfillRun::of(&done, changes))
}

/// Starts `zdm backfill` as a child process on the database of `url`, with the demo's knobs
/// and the instances' common environment, without the fault variables this process may have
/// inherited (a fault is injected into instances, never into the backfill).
pub(super) fn start_backfill_process(url: &str, opts: &DemoOptions) -> Result<Child> {
    let workers = opts
        .backfill_workers
        .map(|w| vec!["--workers".to_owned(), w.to_string()])
        .unwrap_or_default();
    let sizing = opts
        .backfill_batch_target_ms
        .map(|ms| vec!["--batch-target-ms".to_owned(), ms.to_string()])
        .unwrap_or_default();
    let exe = std::env::current_exe().context("finding the zdm executable")?;
    Command::new(exe)
        .args([
            "backfill",
            "--batch-size",
            &opts.backfill_batch.to_string(),
            "--sleep-ms",
            &opts.backfill_sleep_ms.to_string(),
        ])
        .args(&workers)
        .args(&sizing)
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .envs(
            opts.instance_env
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a backfill process")
}

/// How often the demo looks at the backfill's progress while it waits for a share of it, on
/// one connection kept for the wait. Opening one per look, 20 a second, cost the shared cores
/// enough to lift the instances' p99 in the very seconds a run reads its budget from.
const PROGRESS_POLL: Duration = Duration::from_millis(200);

/// Waits until `fifths` fifths of the backfill of `url` are done, or fails if `child`, which
/// runs it, ends before; gives `child` back, and the share done (in percent) it last read.
async fn wait_until_fifths_done(url: &str, mut child: Child, fifths: i64) -> Result<(Child, i64)> {
    let url = url.to_owned();
    blocking(move || {
        let mut conn = connect(&url)?;
        loop {
            std::thread::sleep(PROGRESS_POLL);
            let status = backfill::status(&mut conn).context("reading the backfill's progress")?;
            if status.rows_total > 0 && status.rows_done * 5 >= status.rows_total * fifths {
                return Ok((child, status.rows_done * 100 / status.rows_total));
            }
            if let Some(exit) = child
                .try_wait()
                .context("checking on the backfill process")?
            {
                bail!("the backfill ended early: {exit}");
            }
        }
    })
    .await
}

/// Runs the backfill as a child process, kills it with SIGKILL part-way, and resumes it
/// with a new one; with `--failover`, the primary dies under the resumed one at ~70 % and
/// it goes on, by itself, on the promoted standby. Returns what the whole backfill did.
async fn backfill_with_a_crash(
    url: &str,
    opts: &DemoOptions,
    pooler: Option<&PgBouncer>,
    timeline: &mut Timeline,
) -> Result<BackfillRun> {
    timeline.mark("backfill starts (child process)");
    let child = start_backfill_process(url, opts)?;
    let (mut child, done) = wait_until_fifths_done(url, child, 2).await?;
    child.kill().context("killing the backfill process")?;
    child
        .wait()
        .context("waiting for the killed backfill process")?;
    // Read before the kill: on a small table the backfill may go further first.
    timeline.mark(format!("kill -9 of the backfill process at {done} %"));
    pause(0.5).await;
    timeline.mark("backfill resumed by a new process");
    let mut child = start_backfill_process(url, opts)?;
    if let Some(failover) = &opts.failover {
        child = wait_until_fifths_done(url, child, 3).await?.0;
        fail_over(failover, pooler, timeline)
            .await
            .context("the failover")?;
        timeline.enter("backfill");
    }
    let exit = blocking(move || {
        child
            .wait()
            .context("waiting for the resumed backfill process")
    })
    .await?;
    if !exit.success() {
        bail!("the resumed backfill failed: {exit}");
    }
    let url = url.to_owned();
    let run = blocking(move || finished_backfill(&url)).await?;
    // The number of workers through the resumed run, oldest first (auto mode changes it).
    timeline.mark(format!(
        "backfill done: {} rows in {} batches; workers {}",
        run.rows,
        run.batches,
        run.worker_counts()
    ));
    Ok(run)
}

/// The zdm walk, baseline to contracted, with the faults.
pub(super) async fn walk_zdm(
    fleet: &mut Fleet,
    admin: &Admin,
    url: &str,
    opts: &DemoOptions,
    pooler: Option<&PgBouncer>,
    timeline: &mut Timeline,
) -> Result<(usize, Option<BackfillRun>)> {
    let mut lock_timeouts = 0;
    pause(opts.phase_secs).await;

    lock_timeouts +=
        advance_past_a_long_transaction(admin, url, timeline, (Phase::Baseline, None), "expand")
            .await?;
    fleet.wait_applied("expanded").await?;
    timeline.enter("expanded");
    pause(opts.phase_secs).await;

    admin
        .advance(Phase::Expanded, None)
        .await
        .context("advancing to dual_write")?;
    fleet.wait_applied("dual_write").await?;
    timeline.control.v2_enabled.store(true, Ordering::Release);
    timeline.enter("dual_write");
    pause(opts.phase_secs / 2.0).await;
    timeline.mark("rolling restart of app-b");
    let took = fleet
        .rolling_restart(1)
        .await
        .context("the rolling restart of app-b")?;
    timeline.mark(format!(
        "app-b back in rotation after {:.1} s",
        took.as_secs_f64()
    ));
    pause(opts.phase_secs / 2.0).await;

    timeline.enter("backfill");
    let backfill = backfill_with_a_crash(url, opts, pooler, timeline)
        .await
        .context("the backfill with a crash")?;
    timeline.backfilled = true;
    timeline.enter("dual_write");
    pause(opts.phase_secs / 3.0).await;

    for to in [Phase::Backfilled, Phase::ReadNew, Phase::NewOnly] {
        let from = to.previous().context("a phase after baseline")?;
        admin
            .advance(from, None)
            .await
            .with_context(|| format!("advancing to {to}"))?;
        fleet.wait_applied(to.as_str()).await?;
        timeline.enter(to.as_str());
        pause(opts.phase_secs).await;
    }
    // The contract waits until no client has used full_name for the quiet window: the
    // instances' read_new statements count as used until new_only has been watched that long.
    admin
        .wait_for_gate("clients", Duration::from_secs(60))
        .await
        .context("waiting for the contract's quiet window")?;
    lock_timeouts += advance_past_a_long_transaction(
        admin,
        url,
        timeline,
        (Phase::NewOnly, Some(CONTRACT_CONFIRMATION)),
        "contract",
    )
    .await?;
    fleet.wait_applied("contracted").await?;
    timeline.enter("contracted");
    pause(opts.phase_secs).await;
    if opts.undo {
        lock_timeouts += undo_the_contract(fleet, admin, opts, timeline).await?;
    }
    Ok((lock_timeouts, Some(backfill)))
}

/// The drop undone under the same traffic: contracted → new_only re-adds full_name (empty;
/// new_only code does not read it), then new_only → read_new moves the phase back, waits for
/// every instance to dual-write and refills full_name by the reverse backfill. The segments
/// of this way back are named `… (undo)`.
async fn undo_the_contract(
    fleet: &mut Fleet,
    admin: &Admin,
    opts: &DemoOptions,
    timeline: &mut Timeline,
) -> Result<usize> {
    timeline.mark("undo: roll back the contract (full_name re-added)");
    let mut lock_timeouts = admin
        .rollback()
        .await
        .context("rolling the contract back")?;
    fleet.wait_applied("new_only").await?;
    timeline.enter("new_only (undo)");
    pause(opts.phase_secs).await;
    timeline.enter("reverse backfill (undo)");
    timeline.mark("undo: roll back to read_new (reverse backfill refills full_name)");
    lock_timeouts += admin.rollback().await.context("rolling back to read_new")?;
    fleet.wait_applied("read_new").await?;
    timeline.enter("read_new (undo)");
    pause(opts.phase_secs).await;
    Ok(lock_timeouts)
}

/// What a hurried team ships: one transaction that adds the columns, fills them with one
/// UPDATE and drops full_name, with the new code deployed to every instance at once.
pub(super) async fn walk_naive(
    fleet: &mut Fleet,
    url: &str,
    opts: &DemoOptions,
    timeline: &mut Timeline,
) -> Result<()> {
    pause(opts.phase_secs).await;
    timeline.enter("naive_ddl");
    timeline.mark("one transaction: ADD COLUMN, UPDATE every row, DROP COLUMN full_name");
    let url_owned = url.to_owned();
    blocking(move || {
        let mut conn = connect(&url_owned)?;
        conn.batch_execute(
            "BEGIN;
             ALTER TABLE users ADD COLUMN first_name TEXT, ADD COLUMN last_name TEXT;
             UPDATE users SET first_name = zdm_name_first(full_name), last_name = zdm_name_last(full_name);
             ALTER TABLE users DROP COLUMN full_name;
             ALTER TABLE users ALTER COLUMN first_name SET NOT NULL, ALTER COLUMN last_name SET NOT NULL;
             COMMIT;",
        )
        .context("running the one-step migration")?;
        deploy_new_code_everywhere(&mut conn).context("deploying the new code everywhere")?;
        Ok(())
    })
    .await?;
    timeline.mark("new code deployed to every instance at once");
    fleet.wait_applied("contracted").await?;
    timeline.control.v2_enabled.store(true, Ordering::Release);
    timeline.enter("contracted");
    pause(opts.phase_secs).await;
    Ok(())
}

/// "Deploys the new code": every instance follows the stored phase, so setting it to
/// contracted switches them all within a poll interval. The phase moves as the engine moves
/// it, only without any of its steps or gates: that is the point of the naive walk.
fn deploy_new_code_everywhere(conn: &mut PgConnection) -> QueryResult<()> {
    state::set_phase(
        conn,
        state::Action::Advance,
        Phase::Baseline,
        Phase::Contracted,
        "demo --naive",
        Some("one-step migration"),
    )
}
