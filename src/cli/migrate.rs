//! `zdm migrate status|advance|rollback`: one step of the migration, through the same gates
//! and runner as the admin API, then where the migration stands.

use clap::Subcommand;
use diesel::PgConnection;

use super::{CLI_ACTOR, Connected, connect};
use crate::config::Config;
use crate::domain::Phase;
use crate::migration::control;
use crate::migration::runner::{Consent, RunError};
use crate::startup::StartupError;

#[derive(Debug, Subcommand)]
pub(super) enum MigrateAction {
    /// The phase, the gates of the next step, the backfill, verify, instances and history.
    Status,
    /// Advance one phase if its gates are met.
    Advance {
        /// Only if the phase is still this one (as `migrate status` showed it): a command
        /// repeated after its step went through takes no second step.
        #[arg(long, value_name = "PHASE")]
        from: Option<Phase>,
        /// Required to contract: `--confirm users.full_name` (the column dropped).
        #[arg(long)]
        confirm: Option<String>,
        /// Contract although pg_stat_statements cannot tell whether a client zdm does not run
        /// still uses full_name (recorded in the history).
        #[arg(long)]
        without_client_check: bool,
    },
    /// Roll back one phase where the data allows.
    Rollback {
        /// Only if the phase is still this one, as for `advance`.
        #[arg(long, value_name = "PHASE")]
        from: Option<Phase>,
    },
}

impl MigrateAction {
    /// Does the action, then prints where the migration stands.
    pub(super) fn run(self, config: &Config) -> Result<(), StartupError> {
        let Connected {
            mut conn,
            url,
            settings,
            connections,
        } = connect(config)?;
        // A step whose connection dies under it (a failover) is settled on the server that
        // answers next: it committed there or not at all, and the history says which.
        let settled =
            |outcome| control::settle_step(&url, outcome, CLI_ACTOR, control::SETTLE_WAIT);
        let stepped = match self {
            MigrateAction::Status => false,
            MigrateAction::Advance {
                from,
                confirm,
                without_client_check,
            } => {
                let consent = Consent {
                    confirm: confirm.as_deref(),
                    without_client_check,
                };
                let t = settled(control::advance(&mut conn, CLI_ACTOR, from, &consent))
                    .map_err(in_cli_words)?;
                println!("advanced {} → {}", t.from, t.to);
                true
            }
            MigrateAction::Rollback { from } => {
                let t = settled(control::rollback(&mut conn, CLI_ACTOR, from, &settings))?;
                println!("rolled back {} → {}", t.from, t.to);
                true
            }
        };
        if stepped {
            // The step's own connection may be the one a failover ended.
            conn = crate::db::session(&url)?;
        }
        print_status(&mut conn, connections)
    }
}

/// A refused advance as the command line says it: the confirmation gate speaks the
/// dashboard's words (type `users.full_name` into its field), where here it is a flag.
fn in_cli_words(err: RunError) -> StartupError {
    match err {
        RunError::Refused(why) => why
            .replace(
                "type `users.full_name` to confirm",
                "pass --confirm users.full_name to confirm",
            )
            .into(),
        other => other.into(),
    }
}

fn print_status(
    conn: &mut PgConnection,
    connections: crate::db::Connections,
) -> Result<(), StartupError> {
    let status = control::status(conn)?;
    println!(
        "requests: {}{}; migrations, steps, backfill and verify: {}",
        connections.requests,
        if connections.pooled {
            " (a transaction-mode pooler)"
        } else {
            ""
        },
        connections.sessions
    );
    println!(
        "phase: {} (since {})",
        status.phase,
        status.phase_since.format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!("       {}", status.phase.summary());
    println!("phase migrations (as `diesel migration list` shows them):");
    for m in &status.migrations {
        println!("  [{}] {}", if m.applied { "X" } else { " " }, m.name);
    }
    if let Some(next) = &status.next {
        println!("next:  {}", next.phase);
        for gate in crate::migration::shown_gates::next_gates(&status) {
            println!("  [{}] {}: {}", gate.symbol, gate.name, gate.detail);
        }
    }
    print_backfill(&status.backfill);
    let unmet = crate::migration::shown_gates::unmet_backfill_gates(&status);
    if !unmet.is_empty() {
        println!("  to start it:");
        for gate in unmet {
            println!("  [{}] {}: {}", gate.symbol, gate.name, gate.detail);
        }
    }
    match &status.verify {
        Some(v) => println!(
            "verify: {} divergent in {} at {}{}",
            v.divergent,
            v.phase,
            v.checked_at.format("%H:%M:%S"),
            if v.sample_ids.is_empty() {
                String::new()
            } else {
                format!(", e.g. ids {:?}", v.sample_ids)
            }
        ),
        None => println!("verify: never run"),
    }
    println!("instances: {}", status.instances.len());
    for i in &status.instances {
        println!(
            "  {} applied {} (seen {})",
            i.id,
            i.applied_phase,
            i.last_seen.format("%H:%M:%S")
        );
    }
    Ok(())
}

/// The backfill's lines of `migrate status`: its state and rate, its workers, and the ranges
/// still to fill.
fn print_backfill(backfill: &crate::migration::status::BackfillView) {
    let b = &backfill.status;
    if b.state == crate::migration::backfill::BackfillState::Idle && b.rows_total == 0 {
        println!("backfill: not started yet (zdm backfill, or Start on the dashboard)");
    } else {
        println!(
            "backfill: {} ({}), {}/{} rows, {} filled, {:.0} rows/s",
            b.state, b.direction, b.rows_done, b.rows_total, b.rows_updated, backfill.rows_per_s
        );
    }
    println!(
        "  workers: {} (set: {}; auto rule: {}){}",
        b.workers,
        b.workers_setting(),
        b.workers_rule.as_deref().unwrap_or("not recorded yet"),
        b.workers_reason
            .as_deref()
            .map_or(String::new(), |why| format!(": {why}"))
    );
    for r in backfill.ranges.iter().filter(|r| !r.is_done()) {
        println!(
            "  range {}: ids {}..={} at {} ({:.0} %){}",
            r.range_no,
            r.start_id + 1,
            r.end_id,
            r.last_id,
            r.percent(),
            r.worker.map_or(String::new(), |w| format!(", worker {w}"))
        );
    }
}
