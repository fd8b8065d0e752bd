//! How the migration's errors reach a client: a step or a backfill the migration's state does
//! not allow now is a 409 that says why; the database's own errors go through `AppError`'s
//! usual mapping (503 when it cannot be reached, a logged 500 otherwise).

use crate::error::AppError;
use crate::migration::backfill::BackfillError;
use crate::migration::runner::RunError;
use crate::migration::state::StateError;
use crate::migration::verify::VerifyError;

impl From<StateError> for AppError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Database(e) => e.into(),
            corrupt => AppError::internal(corrupt),
        }
    }
}

impl From<VerifyError> for AppError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::NotApplicable(_) => AppError::Refused(e.to_string()),
            VerifyError::Database(d) => d.into(),
        }
    }
}

impl From<BackfillError> for AppError {
    fn from(e: BackfillError) -> Self {
        match e {
            BackfillError::Database(d) => d.into(),
            refusal => AppError::Refused(refusal.to_string()),
        }
    }
}

impl From<RunError> for AppError {
    fn from(e: RunError) -> Self {
        if e.is_conflict() {
            return AppError::Refused(e.to_string());
        }
        match e {
            RunError::State(StateError::Database(d)) => d.into(),
            other => AppError::internal(other),
        }
    }
}
