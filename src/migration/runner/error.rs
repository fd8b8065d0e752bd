//! What a step can fail with (`RunError`), and how the errors the phase migrations' SQL
//! raises are told apart (`Raised`, by zdm's own DETAIL) and turned into it (`classify`).

use std::time::Duration;

use super::super::backfill::BackfillError;
use super::super::state::{Action, StateError};
use super::holders::UsersLock;
use crate::domain::Phase;

/// What the SQL of a phase migration raises (`zdm_raise` in migration
/// `2026-12-06-000003_gate_table`), told apart by the DETAIL it raises it with: Diesel hands
/// on the DETAIL, not the SQLSTATE. The message is for people, in words the runner passes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raised {
    /// A gate is unmet, or the phase is not the step's: nothing was changed.
    Refused,
    /// The step found something wrong on its way and undid what it had done.
    Undone,
    /// A lock wait reached lock_timeout; the step may be tried again.
    LockTimeout,
}

impl Raised {
    const ALL: [Raised; 3] = [Raised::Refused, Raised::Undone, Raised::LockTimeout];

    fn detail(self) -> &'static str {
        match self {
            Raised::Refused => "zdm:refused",
            Raised::Undone => "zdm:undone",
            Raised::LockTimeout => "zdm:lock_timeout",
        }
    }

    /// The words the message starts with for someone reading the database's error (psql,
    /// `diesel migration run`); the runner's own error says its kind otherwise.
    fn label(self) -> &'static str {
        match self {
            Raised::Refused => "zdm gate: ",
            Raised::Undone => "zdm step undone: ",
            Raised::LockTimeout => "zdm_lock_timeout: ",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("another migration step is in progress; try again when it has finished")]
    Busy,
    /// The step named the phase it starts from, and the phase is another: someone else (or an
    /// earlier try of the same request) took a step meanwhile.
    #[error("the phase is {phase}, not {expected}: another step was taken since; nothing was done")]
    PhaseMoved { expected: Phase, phase: Phase },
    /// A gate of the step is unmet (checked by the step's SQL): what, and what to do.
    #[error("{0}")]
    Refused(String),
    /// The step found something wrong half-way and undid what it had done.
    #[error("the step was undone: {0}")]
    Undone(String),
    #[error("contracted is the last phase")]
    AtEnd,
    #[error("baseline is the first phase")]
    AtStart,
    #[error(
        "a rollback out of new_only has not finished (full_name is still optional): run rollback again to finish it"
    )]
    UnfinishedRollback,
    #[error(
        "the phase is {phase} but the last applied phase migration is {applied}; revert or apply migrations until they match (`diesel migration list`)"
    )]
    Mismatch { phase: Phase, applied: String },
    #[error(
        "{migration} could not take its lock within lock_timeout in {attempts} attempts over {:.1} s; nothing was applied ({})",
        waited.as_secs_f64(),
        if in_the_way.is_empty() { "a long transaction holds users" } else { in_the_way }
    )]
    LockTimeout {
        migration: String,
        attempts: usize,
        waited: Duration,
        /// The transactions still in its way when it gave up, as this role may see them
        /// (empty if unknown).
        in_the_way: String,
    },
    #[error(
        "instances did not apply {phase} within {secs} s: {waiting}; the phase is {phase}, run rollback again to finish"
    )]
    AckTimeout {
        phase: Phase,
        secs: u64,
        waiting: String,
    },
    #[error(
        "{migration} was canceled by {setting} ({message}); each step sets its own timeouts, so this one came from elsewhere (a role's or the database's setting applied to zdm's session): nothing of the step remains, try again"
    )]
    Canceled {
        migration: String,
        setting: &'static str,
        message: String,
    },
    #[error("migration {migration} failed: {message}")]
    Migration { migration: String, message: String },
    /// The connection died under the step (the server crashed, or the primary was lost in a
    /// failover): the step committed on the server that answers next or not at all, which
    /// only that server can tell (see `settle_interrupted`).
    #[error(
        "the connection to the database was lost during the {} {from} → {to} ({message}); it committed on the server that answers next or not at all: its phase and history say which",
        action.as_str()
    )]
    Interrupted {
        action: Action,
        from: Phase,
        to: Phase,
        message: String,
    },
    #[error(transparent)]
    Backfill(#[from] BackfillError),
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<diesel::result::Error> for RunError {
    fn from(e: diesel::result::Error) -> Self {
        RunError::State(e.into())
    }
}

impl RunError {
    /// Whether the step was refused before anything was changed (a gate, the wrong phase,
    /// another step in progress): recorded as "refused" rather than "failed".
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            RunError::Busy
                | RunError::PhaseMoved { .. }
                | RunError::Refused(_)
                | RunError::AtEnd
                | RunError::AtStart
                | RunError::UnfinishedRollback
                | RunError::Mismatch { .. }
        )
    }

    /// Whether the step may simply be tried again later (the table was busy, an instance
    /// was slow, a backfill was already running).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RunError::LockTimeout { .. }
                | RunError::AckTimeout { .. }
                | RunError::Canceled { .. }
                | RunError::Backfill(BackfillError::AlreadyRunning)
        )
    }

    /// Whether a client should see this as a conflict with the migration's state (409) rather
    /// than a server error: refusals, transient failures and steps that undid themselves.
    pub fn is_conflict(&self) -> bool {
        self.is_refusal() || self.is_transient() || matches!(self, RunError::Undone(_))
    }
}

/// The lock on users that `error`, a lock timeout raised by `zdm_lock_timeout`, names its DDL
/// as waiting for; none for a lock timeout on zdm's own rows (the phase row, the sample).
pub(super) fn users_lock_timed_out(error: &(dyn std::error::Error + 'static)) -> Option<UsersLock> {
    match raised(error) {
        Some((Raised::LockTimeout, what)) => UsersLock::of(&what),
        _ => None,
    }
}

/// What zdm's SQL raised in `error` or any of its causes, and its message for people.
fn raised(error: &(dyn std::error::Error + 'static)) -> Option<(Raised, String)> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(diesel::result::Error::DatabaseError(_, info)) =
            e.downcast_ref::<diesel::result::Error>()
        {
            let kind = Raised::ALL
                .into_iter()
                .find(|kind| info.details() == Some(kind.detail()))?;
            let message = info.message();
            let message = message.strip_prefix(kind.label()).unwrap_or(message);
            return Some((kind, message.trim().to_owned()));
        }
        current = e.source();
    }
    None
}

/// Whether an error is a lock wait that reached lock_timeout. Only zdm's own DETAIL counts
/// (see `zdm_lock_timeout` in the SQL): PostgreSQL's message follows the server's
/// `lc_messages`.
pub fn is_lock_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(raised(error), Some((Raised::LockTimeout, _)))
}

/// The setting whose timeout canceled a statement or ended the session, where one did.
/// PostgreSQL's own message is matched (Diesel exposes no SQLSTATE for it), as for requests.
fn timeout_setting(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut texts = Vec::new();
    let mut current = Some(error);
    while let Some(e) = current {
        texts.push(e.to_string());
        current = e.source();
    }
    [
        ("statement timeout", "statement_timeout"),
        (
            "idle-in-transaction timeout",
            "idle_in_transaction_session_timeout",
        ),
    ]
    .into_iter()
    .find(|(words, _)| texts.iter().any(|text| text.contains(words)))
    .map(|(_, setting)| setting)
}

/// A refusal, an undone step, a lock timeout, or a step canceled by a timeout, as the SQL
/// of `migration` raised it.
pub(super) fn classify(
    migration: &str,
    error: &(dyn std::error::Error + 'static),
) -> Option<RunError> {
    match raised(error) {
        Some((Raised::Refused, message)) => return Some(RunError::Refused(message)),
        Some((Raised::Undone, message)) => return Some(RunError::Undone(message)),
        Some((Raised::LockTimeout, _)) | None => {}
    }
    if let Some(setting) = timeout_setting(error) {
        return Some(RunError::Canceled {
            migration: migration.to_owned(),
            setting,
            message: error.to_string(),
        });
    }
    is_lock_timeout(error).then(|| RunError::LockTimeout {
        migration: migration.to_owned(),
        attempts: 1,
        waited: Duration::ZERO,
        in_the_way: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::steps::{BACKFILLED, EXPAND};
    use super::*;

    /// What PostgreSQL reports of an error: its message and DETAIL.
    struct Reported {
        message: &'static str,
        detail: Option<&'static str>,
    }

    impl diesel::result::DatabaseErrorInformation for Reported {
        fn message(&self) -> &str {
            self.message
        }
        fn details(&self) -> Option<&str> {
            self.detail
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    /// The error as the migration harness hands it on (boxed).
    fn reported(
        message: &'static str,
        detail: Option<&'static str>,
    ) -> Box<dyn std::error::Error + Send + Sync> {
        Box::new(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::Unknown,
            Box::new(Reported { message, detail }),
        ))
    }

    #[test]
    fn a_lock_timeout_is_known_by_zdms_detail_not_the_servers_words() {
        let zdms = "zdm_lock_timeout: ADD COLUMN could not take its lock within lock_timeout";
        assert!(is_lock_timeout(
            reported(zdms, Some("zdm:lock_timeout")).as_ref()
        ));
        // PostgreSQL's own message, in English or in German, or zdm's words without its
        // DETAIL: not relied on.
        for message in [
            "canceling statement due to lock timeout",
            "storniere Anfrage wegen Zeitüberschreitung einer Sperre",
            zdms,
        ] {
            assert!(
                !is_lock_timeout(reported(message, None).as_ref()),
                "{message}"
            );
        }
    }

    #[test]
    fn refusals_and_undone_steps_are_known_by_their_detail_and_keep_their_words() {
        let refusal = reported(
            "zdm gate: cannot advance from expanded: instances gate: waiting for instance(s) to apply expanded or later: a (baseline)",
            Some("zdm:refused"),
        );
        match classify(EXPAND, refusal.as_ref()) {
            Some(RunError::Refused(message)) => assert_eq!(
                message,
                "cannot advance from expanded: instances gate: waiting for instance(s) to apply expanded or later: a (baseline)"
            ),
            other => panic!("{other:?}"),
        }
        let undone = reported(
            "zdm step undone: VALIDATE CONSTRAINT users_names_present found rows that break it",
            Some("zdm:undone"),
        );
        assert!(matches!(
            classify(BACKFILLED, undone.as_ref()),
            Some(RunError::Undone(m)) if m.starts_with("VALIDATE CONSTRAINT")
        ));
        // The same words raised by anything else (a user's own trigger, say) are no refusal.
        let imitation = reported("zdm gate: cannot advance", None);
        assert!(classify(EXPAND, imitation.as_ref()).is_none());
    }
}
