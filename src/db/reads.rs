//! Point reads of users by id, coalesced: reads that arrive together share one query.
//!
//! A request that reads one user hands its id to the reader thread and awaits the answer.
//! The reader takes every lookup that is waiting when it gets to them (up to `MAX_BATCH`),
//! reads them all with one `WHERE id = ANY($1)` on a connection of its own, and answers
//! each. Under load, sixteen concurrent reads cost a few queries instead of sixteen,
//! and far fewer thread wake-ups; a read arriving alone costs what it did before (one query,
//! one hop to a thread). No read waits for company: a batch is whatever queued up while the
//! reader was busy.
//!
//! One reader thread: while its query runs, the next lookups queue up and become the next
//! batch. With two, each lookup arriving while the other reader was busy woke a free one and
//! went alone: batches of about one, no fewer queries (measured with `zdm bench http`).
//!
//! Every lookup is read after it was queued, so a client still reads its own writes.

use std::collections::HashMap;
use std::sync::mpsc::{self, Receiver, Sender};

use tokio::sync::oneshot;

use super::users::{self, StoredUser};
use super::{DbPool, PoolLimits, build_generic_plan_pool};
use crate::domain::Phase;
use crate::error::AppError;

/// The most ids one query reads.
pub const MAX_BATCH: usize = 64;

type Answer = Result<Option<StoredUser>, AppError>;

struct Lookup {
    /// The phase whose schema the requester reads with.
    phase: Phase,
    id: i64,
    reply: oneshot::Sender<Answer>,
}

/// The handle requests read through; cloning it is cheap. The reader thread ends when the
/// last handle is dropped.
#[derive(Clone)]
pub struct UserReads {
    queue: Sender<Lookup>,
}

impl UserReads {
    /// Starts the reader thread, reading with a pool of one connection (generic plans, see
    /// `build_generic_plan_pool`) to `database_url`.
    pub fn start(
        database_url: &str,
        limits: PoolLimits,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let pool = build_generic_plan_pool(database_url, PoolLimits { size: 1, ..limits })?;
        let (queue, lookups) = mpsc::channel();
        std::thread::Builder::new()
            .name("zdm-reader".to_owned())
            .spawn(move || serve(&pool, &lookups))?;
        Ok(UserReads { queue })
    }

    /// The user `id` as the schema of `phase` stores it; `NotFound` if there is none.
    pub async fn find(&self, phase: Phase, id: i64) -> Result<StoredUser, AppError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Lookup { phase, id, reply })
            .map_err(|_| AppError::internal("the reader thread has stopped"))?;
        answer
            .await
            .map_err(|_| AppError::internal("the reader thread stopped"))??
            .ok_or(AppError::NotFound)
    }
}

fn serve(pool: &DbPool, lookups: &Receiver<Lookup>) {
    while let Ok(first) = lookups.recv() {
        let mut batch = vec![first];
        batch.extend(lookups.try_iter().take(MAX_BATCH - 1));
        answer(pool, batch);
    }
}

/// Reads and answers one batch: one query per phase among its lookups (one, unless the
/// instance switched phase while they queued).
fn answer(pool: &DbPool, mut batch: Vec<Lookup>) {
    while let Some(phase) = batch.first().map(|l| l.phase) {
        let (same, rest): (Vec<Lookup>, Vec<Lookup>) =
            batch.into_iter().partition(|l| l.phase == phase);
        batch = rest;
        let ids: Vec<i64> = same.iter().map(|l| l.id).collect();
        match read(pool, phase, &ids) {
            Ok(found) => {
                for lookup in same {
                    // Two requests may read the same id in one batch: each gets a copy.
                    let user = found.get(&lookup.id).cloned();
                    // A requester that gave up (its client left) no longer listens.
                    let _ = lookup.reply.send(Ok(user));
                }
            }
            Err(e) => {
                log::warn!("reading {} user(s) failed: {e:?}", ids.len());
                for lookup in same {
                    let _ = lookup.reply.send(Err(shared(&e)));
                }
            }
        }
    }
}

fn read(pool: &DbPool, phase: Phase, ids: &[i64]) -> Result<HashMap<i64, StoredUser>, AppError> {
    let mut conn = pool.get()?;
    let found = users::find_users(&mut conn, phase, ids)?;
    conn.mark_proven();
    Ok(found.into_iter().map(|u| (u.id, u)).collect())
}

/// The error of a batch for each of its requesters: the same status, the cause as text.
fn shared(e: &AppError) -> AppError {
    match e {
        AppError::Unavailable(cause) => AppError::Unavailable(cause.to_string().into()),
        other => AppError::internal(other.to_string()),
    }
}
