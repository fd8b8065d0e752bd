//! Clients that write while the database goes away under the app (a crash, a failover), and
//! the check that every write they were told was saved is there afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diesel::prelude::*;
use serde_json::{Value, json};

use crate::helpers::ADMIN_TOKEN;

/// A stored name: (full_name, first_name, last_name).
pub type Stored = (String, Option<String>, Option<String>);

/// What a row may hold after the writes to it: the last acknowledged one, or any sent after
/// it whose answer did not say (a 503, or no answer: it may have committed or not).
#[derive(Default)]
pub struct Expected {
    pub acknowledged: Option<Stored>,
    pub maybe: Vec<Stored>,
}

/// What the writers saw, counted as a user would.
#[derive(Default)]
pub struct Tally {
    pub acknowledged: AtomicUsize,
    pub unavailable: AtomicUsize,
    /// 503s that do not say when to try again (`Retry-After`).
    pub unavailable_without_retry_after: AtomicUsize,
    /// Any other answer than 200 or 503 (a 500, a 409...), with its status and path.
    pub others: Mutex<Vec<String>>,
    /// Requests that got no answer at all (a hang past the client's timeout, a reset).
    pub no_answer: AtomicUsize,
}

/// The status of an answer; a 503 without `Retry-After` is counted apart.
pub fn answer_of(response: &reqwest::Response, tally: &Tally) -> u16 {
    let status = response.status().as_u16();
    if status == 503 && !response.headers().contains_key("retry-after") {
        tally
            .unavailable_without_retry_after
            .fetch_add(1, Ordering::Relaxed);
    }
    status
}

/// A client that renames its own users, through v1 and v2 in turn, until `stop`, recording
/// every write in `log` and every answer in `tally`.
pub async fn writer(
    address: String,
    ids: Vec<i64>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<HashMap<i64, Expected>>>,
    tally: Arc<Tally>,
    tag: &'static str,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = ids[n % ids.len()];
        n += 1;
        let (path, body, stored) = if n % 2 == 0 {
            let full = format!("Writer{id} N{n} {tag}");
            (
                format!("{address}/api/v1/users/{id}"),
                json!({ "full_name": full }),
                (
                    full,
                    Some(format!("Writer{id}")),
                    Some(format!("N{n} {tag}")),
                ),
            )
        } else {
            let (first, last) = (format!("Mary Ann{n}"), format!("W{id}"));
            (
                format!("{address}/api/v2/users/{id}"),
                json!({ "first_name": first, "last_name": last }),
                (format!("{first} {last}"), Some(first), Some(last)),
            )
        };
        let status = client
            .put(&path)
            .json(&body)
            .send()
            .await
            .map(|r| answer_of(&r, &tally));
        {
            let mut log = log.lock().unwrap();
            let expected = log.entry(id).or_default();
            match status {
                Ok(200) => {
                    expected.acknowledged = Some(stored);
                    expected.maybe.clear();
                    tally.acknowledged.fetch_add(1, Ordering::Relaxed);
                }
                Ok(503) => {
                    expected.maybe.push(stored);
                    tally.unavailable.fetch_add(1, Ordering::Relaxed);
                }
                Ok(other) => {
                    expected.maybe.push(stored);
                    tally.others.lock().unwrap().push(format!("{other} {path}"));
                }
                Err(_) => {
                    expected.maybe.push(stored);
                    tally.no_answer.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if !matches!(status, Ok(200)) {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `writers` writers on disjoint users of their own.
pub fn start_writers(
    address: &str,
    writers: i64,
    stop: &Arc<AtomicBool>,
    log: &Arc<Mutex<HashMap<i64, Expected>>>,
    tally: &Arc<Tally>,
    tag: &'static str,
) -> Vec<actix_web::rt::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let ids = (0..50).map(|i| 1 + w + writers * i).collect();
            actix_web::rt::spawn(writer(
                address.to_owned(),
                ids,
                Arc::clone(stop),
                Arc::clone(log),
                Arc::clone(tally),
                tag,
            ))
        })
        .collect()
}

/// Every acknowledged write is on `conn`'s server with its values (or one sent after it
/// whose answer did not say).
pub fn assert_every_acknowledged_write_is_there(
    conn: &mut PgConnection,
    log: &HashMap<i64, Expected>,
) {
    use zdm::schema::expanded::users;
    let ids: Vec<i64> = log.keys().copied().collect();
    let stored: Vec<(i64, Stored)> = users::table
        .filter(users::id.eq_any(&ids))
        .select((
            users::id,
            (users::full_name, users::first_name, users::last_name),
        ))
        .load(conn)
        .unwrap();
    assert_eq!(stored.len(), ids.len());
    for (id, row) in stored {
        let expected = &log[&id];
        let allowed = expected
            .acknowledged
            .iter()
            .chain(&expected.maybe)
            .any(|e| *e == row);
        assert!(
            allowed || expected.acknowledged.is_none(),
            "user {id} holds {row:?}, not its last acknowledged write {:?} (or a later unanswered one {:?})",
            expected.acknowledged,
            expected.maybe
        );
    }
}

/// The admin API's migration status, or `None` while the instance or the database cannot
/// answer it.
pub async fn admin_status(client: &reqwest::Client, address: &str) -> Option<Value> {
    let response = client
        .get(format!("{address}/api/admin/migration"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .ok()?;
    if response.status() != 200 {
        return None;
    }
    response.json().await.ok()
}
