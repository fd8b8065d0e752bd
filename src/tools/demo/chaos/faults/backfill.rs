//! The backfill's side of a chaos run: its process started, killed, paused and resumed, its
//! knobs changed while it runs, and the wait until it is done.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{Faults, Undo};
use crate::migration::backfill::{BackfillState, Direction};
use crate::tools::demo::chaos::schedule::What;
use crate::tools::demo::report::BackfillRun;
use crate::tools::demo::walk::{backfill_status, finished_backfill, start_backfill_process};
use crate::tools::demo::{FAULT_AFTERMATH_MS, blocking, pause};

impl Faults<'_> {
    /// A fault of the running backfill: `kill -9` of its process (resumed when due), a pause
    /// (resumed when due), a change of its workers or batch size.
    pub(super) async fn strike_backfill(&mut self, what: &What) -> Result<bool> {
        let running = match self.backfill.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        };
        if !running {
            return self.skip(what, "no backfill process runs");
        }
        match *what {
            What::KillBackfill { down_ms } => {
                let window = self.open("kill -9 of the backfill process".to_owned(), false);
                if let Some(mut child) = self.backfill.take() {
                    child.kill().context("killing the backfill process")?;
                    child.wait().context("waiting for the killed backfill")?;
                }
                self.later(down_ms, Undo::ResumeBackfill, window);
            }
            What::PauseBackfill { for_ms } => {
                let window = self.open(format!("backfill paused for {for_ms} ms"), false);
                let answer = self
                    .admin
                    .post("/api/admin/backfill/pause", json!({}))
                    .await;
                if let Err(e) = answer {
                    // Not started yet, or done: the process goes on (or ends) by itself.
                    self.close(window, format!("the pause was refused: {e:#}"));
                    return Ok(true);
                }
                self.wait_for_backfill_exit(Duration::from_secs(30)).await?;
                self.later(for_ms, Undo::ResumeBackfill, window);
            }
            What::BackfillWorkers { workers } => {
                return Ok(self.settings(json!({ "workers": workers }), what).await);
            }
            What::BackfillBatch { rows } => {
                return Ok(self.settings(json!({ "batch_size": rows }), what).await);
            }
            _ => bail!("{what:?} is no fault of the backfill"),
        }
        Ok(true)
    }

    /// Changes the running backfill's knobs through the admin API; false if refused.
    async fn settings(&mut self, knobs: Value, what: &What) -> bool {
        let answer = self
            .admin
            .post("/api/admin/backfill/settings", knobs.clone())
            .await;
        let changed = answer.is_ok();
        self.timeline.mark(match answer {
            Ok(_) => format!("backfill knobs changed while it runs: {knobs}"),
            Err(e) => format!("{} refused: {e:#}", what.json()),
        });
        changed
    }

    async fn wait_for_backfill_exit(&mut self, within: Duration) -> Result<()> {
        let give_up = Instant::now() + within;
        while let Some(child) = self.backfill.as_mut() {
            if child
                .try_wait()
                .context("checking on the backfill")?
                .is_some()
            {
                self.backfill = None;
                break;
            }
            if Instant::now() > give_up {
                bail!("the paused backfill's process did not end within {within:?}");
            }
            pause(0.05).await;
        }
        Ok(())
    }

    /// The walk's step that starts the backfill, as a process of its own.
    pub fn start_backfill(&mut self) -> Result<()> {
        self.timeline.enter("backfill");
        self.timeline.mark("backfill starts (child process)");
        self.spawn_backfill()?;
        self.backfill_started = true;
        Ok(())
    }

    pub(super) fn spawn_backfill(&mut self) -> Result<()> {
        // As an operator would run it: with the instances' settings and roles.
        let url = self.fleet.database_url().to_owned();
        self.backfill = Some(start_backfill_process(&url, self.opts)?);
        self.backfill_since_ms = self.timeline.now_ms();
        Ok(())
    }

    /// Whether a fault that may take the database away (see `FaultWindow::app_may_503`) met
    /// the backfill process started at `since_ms`.
    fn database_fault_since(&self, since_ms: u32) -> bool {
        self.timeline.fault_windows.iter().any(|w| {
            w.app_may_503
                && w.end_ms
                    .is_none_or(|end| end + FAULT_AFTERMATH_MS >= since_ms)
        })
    }

    /// Whether the walk started the backfill.
    pub fn backfill_started(&self) -> bool {
        self.backfill_started
    }

    /// Waits until the backfill is done, resuming it (as an operator would) whenever its
    /// process ended before: killed, failed, or out of patience with a database that went
    /// away. A pause the schedule made ends when it is due. Fails after `patience`.
    /// `forward_only`: only a forward backfill counts (before the step to backfilled, whose
    /// gate asks for it); else the reverse one of a rollback out of new_only does too.
    pub async fn finish_backfill(
        &mut self,
        patience: Duration,
        forward_only: bool,
    ) -> Result<BackfillRun> {
        let give_up = Instant::now() + patience;
        loop {
            self.pump().await?;
            if Instant::now() > give_up {
                bail!("the backfill was not done after {patience:?}");
            }
            let resuming = self.pending.iter().any(|p| p.undo == Undo::ResumeBackfill);
            let exit = match self.backfill.as_mut() {
                Some(child) => child.try_wait().context("checking on the backfill")?,
                None => None,
            };
            let running = self.backfill.is_some() && exit.is_none();
            if resuming || running {
                pause(0.1).await;
                continue;
            }
            // A process that ended by itself (not killed, not paused by the schedule).
            let ended_by_itself = self.backfill.take().is_some();
            let url = self.url.to_owned();
            let status = match blocking(move || backfill_status(&url)).await {
                Ok(status) => status,
                Err(_) => {
                    pause(0.2).await;
                    continue;
                }
            };
            // A forward backfill done; the reverse one of a rollback out of new_only does not
            // count (the gate asks for the forward one again).
            let forward = status.direction == Direction::Forward || !forward_only;
            if status.state == BackfillState::Done && forward {
                // Read again with its changes of the worker count; a database away meanwhile
                // (a fault) is waited for, as above.
                let url = self.url.to_owned();
                let Ok(run) = blocking(move || finished_backfill(&url)).await else {
                    pause(0.2).await;
                    continue;
                };
                self.backfill = None;
                self.timeline.backfilled = true;
                return Ok(run);
            }
            // Refused to start (its gates: an instance, frozen say, not dual-writing yet): it
            // is tried again, as an operator would. One that ran and stopped short, with no
            // fault of the database to blame, fails the run.
            let refused = matches!(status.state, BackfillState::Idle | BackfillState::Cancelled);
            let stopped_short = ended_by_itself
                && !refused
                && status.state != BackfillState::Paused
                && !self.database_fault_since(self.backfill_since_ms);
            if stopped_short {
                bail!(
                    "the backfill's process ended by itself ({}) with the backfill {}, and no fault took the database away meanwhile: {}",
                    exit.map_or("gone".to_owned(), |e| e.to_string()),
                    status.state,
                    status.error.as_deref().unwrap_or("no error recorded")
                );
            }
            let why = match (forward, refused) {
                (false, _) => "the last backfill was the reverse one: the forward one runs again",
                (true, true) => "the backfill did not start (a gate refused): tried again",
                (true, false) => {
                    "the backfill's process ended (a fault met it): a new one resumes it"
                }
            };
            self.timeline
                .mark(format!("{why}; the backfill was {}", status.state));
            if refused {
                self.dwell(Duration::from_secs(1)).await?;
            }
            self.spawn_backfill()?;
        }
    }
}
