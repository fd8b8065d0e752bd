//! The demo's clients: v1 and v2, JSON and HTML forms, reads and writes, over real HTTP to
//! the instances in rotation. Every request is timed; every acknowledged write goes into the
//! client's ledger, which the audit later holds the database to.
//!
//! Each client writes only rows it owns (the ones it created, and the seeded ids congruent to
//! its number), so "the last acknowledged value" of a row is well defined. The last tenth of
//! the seeded ids belongs to no client: those rows stand for the data nobody touches during a
//! migration, which the audit's checksum holds to what it was before the traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::audit::{Acknowledged, Ledger, RowState, StaleRead};
use super::fleet::Rotation;
use super::oracle::{Sent, SentName, split};
use crate::tools::seed::random_full_name;

/// The CSRF cookie of every client; its forms carry the token the app signs for it.
const FORM_COOKIE: &str = "ZGVtby1mb3JtLXRva2VuLWRlbW8tZm9ybS10b2tlbiE";

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// An unexpected HTTP status.
    Status(u16),
    /// 503 with `Retry-After`: no database to answer for now (a failover), try again later.
    /// The request may or may not have taken effect.
    Unavailable,
    /// No answer from an instance a fault took down (killed, frozen): the load balancer
    /// answers 503 for it. The request may or may not have taken effect.
    LostWithInstance,
    Timeout,
    /// Refused, reset or otherwise broken connection.
    Connection,
    /// 200, but not the value this client last wrote (a lost write, seen by a read).
    Stale,
    /// A 404 or a stale read of a row whose last acknowledged write came before an
    /// asynchronous standby was promoted: a loss PostgreSQL's asynchronous replication
    /// allows, counted apart (see `TrafficControl::async_promoted_in`).
    LostUpstream,
}

/// `TrafficControl::async_promoted_in` before any promotion (or with a synchronous standby).
pub const NOT_PROMOTED: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Milliseconds since the traffic started.
    pub at_ms: u32,
    pub latency_us: u32,
    pub segment: u8,
    pub outcome: Outcome,
}

/// The seeded ids at or below this one may be written by the clients; the rest by none.
pub fn last_owned_seeded_id(seeded_rows: i64) -> i64 {
    seeded_rows * 9 / 10
}

/// What the clients share with the driver.
#[derive(Clone)]
pub struct TrafficControl {
    pub segment: Arc<AtomicUsize>,
    pub v2_enabled: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    pub started: Instant,
    /// The segment in which an asynchronous standby was promoted (`NOT_PROMOTED` if none
    /// was): the writes acknowledged up to it may be gone.
    pub async_promoted_in: Arc<AtomicUsize>,
}

pub struct ClientResult {
    pub samples: Vec<Sample>,
    pub ledger: Ledger,
    /// Creates whose answer was lost: their id is unknown, so the audit cannot check them.
    pub unacknowledged_creates: u64,
}

#[derive(Clone, Copy, Debug)]
enum Api {
    V1Json,
    V2Json,
    V1Form,
    V2Form,
}

struct Client {
    index: usize,
    clients: usize,
    seeded_rows: i64,
    http: reqwest::Client,
    rotation: Rotation,
    control: TrafficControl,
    rng: fastrand::Rng,
    ledger: Ledger,
    samples: Vec<Sample>,
    write_percent: u32,
    created: u64,
    unacknowledged_creates: u64,
    /// The write position the app last set (`zdm_lsn=…`), sent back with every request as a
    /// browser would, so reads with replicas see this client's own writes.
    position_cookie: Option<String>,
    /// The CSRF token of `FORM_COOKIE`, as the app's form pages would give it.
    form_token: String,
}

/// As askama escapes text in a page (the five characters HTML gives meaning to).
fn html_escape(text: &str) -> String {
    text.replace('&', "&#38;")
        .replace('<', "&#60;")
        .replace('>', "&#62;")
        .replace('"', "&#34;")
        .replace('\'', "&#39;")
}

/// A v2 name: sometimes a multi-word first name ("Mary Ann"), so that split(join) differs.
fn v2_name(rng: &mut fastrand::Rng) -> (String, String) {
    let (first, last) = split(&random_full_name(rng));
    if rng.u32(0..4) == 0 && !last.is_empty() {
        return (format!("{first} Ann"), last);
    }
    (first, last)
}

impl Client {
    fn record(&mut self, started: Instant, segment: usize, outcome: Outcome) {
        self.samples.push(Sample {
            at_ms: started.duration_since(self.control.started).as_millis() as u32,
            latency_us: started.elapsed().as_micros().min(u32::MAX as u128) as u32,
            segment: segment as u8,
            outcome,
        });
    }

    /// A row this client owns and believes present: one it wrote, or a seeded one (ids
    /// `index + 1`, `index + 1 + clients`, ... up to `last_owned_seeded_id`) it has not
    /// deleted.
    fn owned_present(&mut self) -> Option<i64> {
        let last_owned = last_owned_seeded_id(self.seeded_rows);
        for _ in 0..8 {
            let candidate = if self.rng.bool() && !self.ledger.rows.is_empty() {
                let keys: Vec<i64> = self.ledger.rows.keys().copied().collect();
                keys[self.rng.usize(..keys.len())]
            } else {
                let per_client = (last_owned / self.clients as i64).max(1);
                self.rng.i64(0..per_client) * self.clients as i64 + self.index as i64 + 1
            };
            match self
                .ledger
                .rows
                .get(&candidate)
                .map(|a| a.states.as_slice())
            {
                None if candidate > last_owned => continue,
                None | Some([RowState::Seeded | RowState::Written(_)]) => return Some(candidate),
                _ => continue,
            }
        }
        None
    }

    /// Whether the row's last acknowledged write came before an asynchronous standby was
    /// promoted, and so may have been lost with the old primary.
    fn lost_upstream(&self, id: i64) -> bool {
        let promoted = self.control.async_promoted_in.load(Ordering::Acquire);
        self.ledger
            .rows
            .get(&id)
            .is_some_and(|a| promoted != NOT_PROMOTED && a.segment <= promoted)
    }

    /// `outcome`, or `LostUpstream` for a 404 of a row lost with the old primary.
    fn unless_lost_upstream(&self, id: i64, outcome: Outcome) -> Outcome {
        match outcome {
            Outcome::Status(404) if self.lost_upstream(id) => Outcome::LostUpstream,
            other => other,
        }
    }

    /// The state the client last saw acknowledged for one of its present rows.
    fn current_state(&self, id: i64) -> RowState {
        match self.ledger.rows.get(&id).map(|a| a.states.as_slice()) {
            Some([state]) => state.clone(),
            _ => RowState::Seeded,
        }
    }

    /// The last write the client saw acknowledged for a row; `None` for a seeded row not
    /// written yet.
    fn current(&self, id: i64) -> Option<Sent> {
        match self.current_state(id) {
            RowState::Written(sent) => Some(sent),
            _ => None,
        }
    }

    fn pick_api(&mut self) -> Api {
        let v2 = self.control.v2_enabled.load(Ordering::Acquire);
        match (self.rng.u32(0..4), v2) {
            (0, _) | (1, false) => Api::V1Json,
            (1, true) => Api::V2Json,
            (2, _) | (3, false) => Api::V1Form,
            (3, true) => Api::V2Form,
            _ => Api::V1Json,
        }
    }

    async fn send(
        &mut self,
        request: reqwest::RequestBuilder,
        expect: u16,
    ) -> (Outcome, Option<reqwest::Response>) {
        // Forms need the CSRF cookie and its token; a client that is no browser sends the
        // cookie itself, and keeps the cookie that carries its write position.
        let cookies = match &self.position_cookie {
            Some(position) => format!("zdm_csrf={FORM_COOKIE}; {position}"),
            None => format!("zdm_csrf={FORM_COOKIE}"),
        };
        let sent = Instant::now();
        let answer = request.header("cookie", cookies).send().await;
        if let Ok(r) = &answer
            && let Some(position) = r
                .headers()
                .get_all("set-cookie")
                .iter()
                .filter_map(|v| v.to_str().ok()?.split(';').next())
                .find(|c| c.starts_with(&format!("{}=", crate::replicas::COOKIE)))
        {
            self.position_cookie = Some(position.to_owned());
        }
        match answer {
            Ok(r) if r.status().as_u16() == expect => (Outcome::Ok, Some(r)),
            Ok(r)
                if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    && r.headers().contains_key(reqwest::header::RETRY_AFTER) =>
            {
                (Outcome::Unavailable, Some(r))
            }
            Ok(r) => {
                log::debug!("{} answered {} (expected {expect})", r.url(), r.status());
                (Outcome::Status(r.status().as_u16()), Some(r))
            }
            // No answer from an instance a fault took down: the load balancer answers 503.
            Err(e)
                if e.url()
                    .is_some_and(|u| self.rotation.lost_to_a_fault(u.as_str(), sent)) =>
            {
                (Outcome::LostWithInstance, None)
            }
            Err(e) if e.is_timeout() => (Outcome::Timeout, None),
            Err(_) => (Outcome::Connection, None),
        }
    }

    async fn step(&mut self) {
        let Some(base) = self.rotation.pick(&mut self.rng).map(str::to_owned) else {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
            return;
        };
        let segment = self.control.segment.load(Ordering::Acquire);
        let write = self.rng.u32(0..100) < self.write_percent;
        if !write {
            self.read(&base, segment).await;
            return;
        }
        match self.rng.u32(0..10) {
            0..=3 => self.create(&base, segment).await,
            4..=8 => self.update(&base, segment).await,
            _ => self.delete(&base, segment).await,
        }
    }

    async fn read(&mut self, base: &str, segment: usize) {
        let Some(id) = self.owned_present() else {
            return;
        };
        let v2 = self.control.v2_enabled.load(Ordering::Acquire) && self.rng.bool();
        let version = if v2 { "v2" } else { "v1" };
        // One read in four loads the edit page, as a person in a browser would.
        let page = self.rng.u32(0..4) == 0;
        let path = if page {
            format!("{base}/{version}/users/{id}/edit")
        } else {
            format!("{base}/api/{version}/users/{id}")
        };
        let started = Instant::now();
        let (mut outcome, response) = self.send(self.http.get(&path), 200).await;
        // A read must show the last acknowledged write, if this client made one, as the
        // audit's oracle says it reads back.
        if let (Outcome::Ok, Some(response), Some(sent)) = (outcome, response, self.current(id)) {
            let expected: Vec<String> = if v2 {
                let (first, last) = sent.v2_name();
                vec![first, last]
            } else {
                vec![sent.v1_name()]
            };
            let (seen_ok, seen) = if page {
                let html = response.text().await.unwrap_or_default();
                let shows =
                    |value: &String| html.contains(&format!(r#"value="{}""#, html_escape(value)));
                (
                    expected.iter().all(shows),
                    "the edit page without it".to_owned(),
                )
            } else {
                let body: Value = response.json().await.unwrap_or_default();
                let fields: &[&str] = if v2 {
                    &["first_name", "last_name"]
                } else {
                    &["full_name"]
                };
                let seen: Vec<&str> = fields
                    .iter()
                    .map(|f| body[*f].as_str().unwrap_or_default())
                    .collect();
                (seen == expected, format!("{seen:?}"))
            };
            if !seen_ok && self.lost_upstream(id) {
                outcome = Outcome::LostUpstream;
            } else if !seen_ok {
                outcome = Outcome::Stale;
                self.ledger.stale_reads.push(StaleRead {
                    id,
                    segment,
                    expected: format!("{version} {expected:?}"),
                    seen,
                });
            }
        }
        let outcome = self.unless_lost_upstream(id, outcome);
        self.record(started, segment, outcome);
    }

    fn email(&mut self) -> String {
        self.created += 1;
        format!(
            "demo.c{}.{}.{:x}@example.com",
            self.index,
            self.created,
            self.control.started.elapsed().as_nanos() & 0xffff
        )
    }

    /// A write of a new name through `api`: a create when `id` is `None`, else an update.
    /// `email` is the row's (`None`: the seeded one, unknown to the client; JSON updates only).
    /// Returns the request, the status that acknowledges it, and what it sent.
    fn name_write(
        &mut self,
        base: &str,
        api: Api,
        id: Option<i64>,
        email: Option<&str>,
    ) -> (reqwest::RequestBuilder, u16, Sent) {
        let (version, fields, name) = match api {
            Api::V1Json | Api::V1Form => {
                let full = random_full_name(&mut self.rng);
                let name = SentName::Full(full.clone());
                ("v1", vec![("full_name", full)], name)
            }
            Api::V2Json | Api::V2Form => {
                let (first, last) = v2_name(&mut self.rng);
                let name = SentName::Parts(first.clone(), last.clone());
                ("v2", vec![("first_name", first), ("last_name", last)], name)
            }
        };
        let sent = Sent {
            name,
            email: email.map(str::to_owned),
        };
        let email = email.unwrap_or_default();
        let row = id.map(|id| format!("/{id}")).unwrap_or_default();
        let (request, expect) = if matches!(api, Api::V1Json | Api::V2Json) {
            let mut body: serde_json::Map<String, Value> = fields
                .into_iter()
                .map(|(k, v)| (k.to_owned(), Value::String(v)))
                .collect();
            if id.is_none() {
                body.insert("email".to_owned(), Value::String(email.to_owned()));
            }
            let url = format!("{base}/api/{version}/users{row}");
            match id {
                None => (self.http.post(url).json(&body), 201),
                Some(_) => (self.http.put(url).json(&body), 200),
            }
        } else {
            let mut form: Vec<(&str, String)> = fields;
            form.push(("email", email.to_owned()));
            form.push(("csrf", self.form_token.clone()));
            (
                self.http
                    .post(format!("{base}/{version}/users{row}"))
                    .form(&form),
                303,
            )
        };
        (request, expect, sent)
    }

    async fn create(&mut self, base: &str, segment: usize) {
        let api = self.pick_api();
        let email = self.email();
        let (request, expect, sent) = self.name_write(base, api, None, Some(&email));
        let started = Instant::now();
        let (outcome, response) = self.send(request, expect).await;
        self.record(started, segment, outcome);
        let id = match (outcome, response) {
            (Outcome::Ok, Some(r)) if expect == 201 => {
                r.json::<Value>().await.ok().and_then(|b| b["id"].as_i64())
            }
            // The form redirects to the list page starting just before the new row.
            (Outcome::Ok, Some(r)) => r
                .headers()
                .get("location")
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.split("after_id=").nth(1))
                .and_then(|rest| rest.split('&').next())
                .and_then(|n| n.parse::<i64>().ok())
                .map(|n| n + 1),
            (
                Outcome::Timeout
                | Outcome::Connection
                | Outcome::Unavailable
                | Outcome::LostWithInstance,
                _,
            ) => {
                self.unacknowledged_creates += 1;
                None
            }
            _ => None,
        };
        if let Some(id) = id {
            self.ledger.rows.insert(
                id,
                Acknowledged {
                    states: vec![RowState::Written(sent)],
                    segment,
                },
            );
        }
    }

    async fn update(&mut self, base: &str, segment: usize) {
        let Some(id) = self.owned_present() else {
            return;
        };
        // A seeded row's email is unknown until written: forms need it, JSON keeps it.
        let email = self.current(id).and_then(|sent| sent.email);
        let api = match (self.pick_api(), email.is_none()) {
            (Api::V1Form, true) => Api::V1Json,
            (Api::V2Form, true) => Api::V2Json,
            (api, _) => api,
        };
        let (request, expect, sent) = self.name_write(base, api, Some(id), email.as_deref());
        let started = Instant::now();
        let (outcome, _) = self.send(request, expect).await;
        let outcome = self.unless_lost_upstream(id, outcome);
        self.record(started, segment, outcome);
        self.settle(id, segment, outcome, RowState::Written(sent));
    }

    async fn delete(&mut self, base: &str, segment: usize) {
        let Some(id) = self.owned_present() else {
            return;
        };
        // Half through the API, half through the page's delete form.
        let (request, expect) = if self.rng.bool() {
            (self.http.delete(format!("{base}/api/v1/users/{id}")), 204)
        } else {
            let form = [("csrf", self.form_token.as_str())];
            (
                self.http
                    .post(format!("{base}/v1/users/{id}/delete"))
                    .form(&form),
                303,
            )
        };
        let started = Instant::now();
        let (outcome, _) = self.send(request, expect).await;
        let outcome = self.unless_lost_upstream(id, outcome);
        self.record(started, segment, outcome);
        self.settle(id, segment, outcome, RowState::Deleted);
    }

    /// Records what a write sent in `segment` means for the row: the new state when
    /// acknowledged, either state when the answer was lost (or was a 503: the database may
    /// have committed before it went away), nothing when refused.
    fn settle(&mut self, id: i64, segment: usize, outcome: Outcome, new: RowState) {
        let states = match outcome {
            Outcome::Ok => vec![new],
            Outcome::Timeout
            | Outcome::Connection
            | Outcome::Unavailable
            | Outcome::LostWithInstance => {
                vec![self.current_state(id), new]
            }
            Outcome::Status(_) | Outcome::Stale | Outcome::LostUpstream => return,
        };
        self.ledger
            .rows
            .insert(id, Acknowledged { states, segment });
    }
}

/// Starts `clients` clients; they run until `control.stop` is set. `form_key` is the app's
/// key for the user forms' CSRF tokens.
pub fn start(
    form_key: &[u8],
    clients: usize,
    seeded_rows: i64,
    write_percent: u32,
    rotation: Rotation,
    control: TrafficControl,
) -> Vec<actix_web::rt::task::JoinHandle<ClientResult>> {
    (0..clients)
        .map(|index| {
            let mut client = Client {
                index,
                clients,
                seeded_rows,
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap_or_default(),
                rotation: rotation.clone(),
                control: control.clone(),
                rng: fastrand::Rng::with_seed(index as u64 + 1),
                ledger: Ledger::default(),
                samples: Vec::new(),
                write_percent,
                created: 0,
                unacknowledged_creates: 0,
                position_cookie: None,
                form_token: crate::secrets::user_form_token(form_key, FORM_COOKIE),
            };
            actix_web::rt::spawn(async move {
                while !client.control.stop.load(Ordering::Acquire) {
                    client.step().await;
                    actix_web::rt::time::sleep(Duration::from_millis(5)).await;
                }
                ClientResult {
                    samples: client.samples,
                    ledger: client.ledger,
                    unacknowledged_creates: client.unacknowledged_creates,
                }
            })
        })
        .collect()
}
