//! `zdm demo`: proves the zero-downtime claim under live traffic, and shows what the naive
//! one-step migration breaks.
//!
//! Two real app instances (separate `zdm serve` processes) run on a scratch database of
//! their own; clients send mixed v1/v2, JSON/form, read/write traffic to them over HTTP while
//! the driver walks the whole migration, injecting faults on the way: a long transaction
//! holding `users` during the expand and the contract, a `kill -9` of the process running
//! the backfill (then a resume), and a rolling restart of one instance. At the end an audit
//! holds the database to every acknowledged write and every untouched row, and a report shows
//! per-phase latency and failures.
//!
//! With `--fault` the demo also breaks the app on purpose (see `Fault`), to show that the
//! audit sees the damage and the run fails.
//!
//! Here: the options, the run's timeline and the steps of `run`. The walks through the
//! migration are in `walk`, the instances in `fleet`, the clients in `traffic`, the audit in
//! `audit` (with its own `oracle`), the figures in `report` and their chart in `chart`.

pub mod audit;
pub mod chaos;
pub mod chart;
pub mod cpu;
pub mod failover;
pub mod fleet;
pub mod lived_in;
pub mod oracle;
pub mod report;
pub mod server_latency;
mod summary;
pub mod traffic;
mod walk;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use diesel::prelude::*;

use self::failover::Failover;
use self::fleet::{Fleet, InstanceSetup};
use self::report::{BackfillRun, DemoSummary, Marker, Segment};
use self::traffic::{Sample, TrafficControl};
use self::walk::{Admin, walk_naive, walk_zdm};
use crate::faults::InjectedFault;
use crate::tools::scratch::ScratchDatabase;

/// A fault the demo injects into its own instances, so that the audit has something to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// The first instance answers every `LOSE_EVERY`th update as saved but rolls it back.
    LoseWrites,
    /// Every instance's v1 writes skip the new columns whatever the phase (a broken
    /// dual-write, as from an instance still running expanded-phase code).
    LaggingV1,
}

/// With `--fault lose-writes`, the first instance loses one update in this many.
pub const LOSE_EVERY: u64 = 20;

impl Fault {
    pub fn name(self) -> &'static str {
        match self {
            Fault::LoseWrites => "lose-writes",
            Fault::LaggingV1 => "lagging-v1",
        }
    }

    pub fn describe(self) -> String {
        match self {
            Fault::LoseWrites => format!(
                "app-a answers every {LOSE_EVERY}th user update as saved, then rolls it back"
            ),
            Fault::LaggingV1 => {
                "v1 writes skip first_name/last_name on every instance (a broken dual-write)"
                    .to_owned()
            }
        }
    }

    /// The `zdm serve` arguments of instance `index` (of the instances only, never of the
    /// demo): faults are switched on by a flag, never by the environment.
    fn instance_args(self, index: usize) -> Vec<String> {
        let fault = match (self, index) {
            (Fault::LoseWrites, 0) => InjectedFault::LoseWrites(LOSE_EVERY),
            (Fault::LoseWrites, _) => return Vec::new(),
            (Fault::LaggingV1, _) => InjectedFault::LaggingV1Writes,
        };
        vec![format!("--inject-fault={fault}")]
    }
}

#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The one-step migration instead of zdm's.
    pub naive: bool,
    /// After the contract, undo it under the same traffic: back to new_only (full_name
    /// re-added) and on to read_new (refilled by the reverse backfill).
    pub undo: bool,
    pub rows: u64,
    pub clients: usize,
    /// Seconds of traffic in each phase.
    pub phase_secs: f64,
    /// Percentage of requests that write.
    pub write_percent: u32,
    pub json_out: Option<PathBuf>,
    /// Where the HTML report and the instances' logs go.
    pub report_dir: PathBuf,
    /// Environment for the instances and the backfill processes.
    pub instance_env: Vec<(String, String)>,
    /// A fault to inject on purpose (the run must then fail).
    pub fault: Option<Fault>,
    /// Streaming replicas of the demo's server (URLs of any database on them: the demo points
    /// them at its scratch database): the instances read from them and the backfill waits
    /// for them.
    pub replica_servers: Vec<String>,
    /// Backfill batch size and sleep (throttled so it is visible under traffic).
    pub backfill_batch: i32,
    pub backfill_sleep_ms: i32,
    /// The batch time the backfill sizes its batches to, starting from `backfill_batch`
    /// (`zdm backfill --batch-target-ms`); none: batches of `backfill_batch` rows.
    pub backfill_batch_target_ms: Option<i32>,
    /// The backfill's workers (`zdm backfill --workers`); none given: as stored (one).
    pub backfill_workers: Option<crate::migration::backfill::Workers>,
    /// Requests through a PgBouncer in transaction mode (`--pooler`), the work that needs a
    /// session direct (`DIRECT_DATABASE_URL`).
    pub pooler: bool,
    /// The primary and standby the demo's server is, killed and promoted mid-backfill
    /// (`--failover`); the URL `run` is given then names both.
    pub failover: Option<Failover>,
    /// A walk and faults drawn from a seed instead of the fixed script (`--chaos`).
    pub chaos: Option<chaos::Chaos>,
    /// The file a chaos run's schedule was read from (`--schedule`), to replay it by.
    pub schedule_file: Option<PathBuf>,
}

impl DemoOptions {
    /// About a minute: small table, short phases.
    pub fn quick(report_dir: PathBuf) -> Self {
        Self {
            naive: false,
            undo: false,
            rows: 30_000,
            clients: 8,
            phase_secs: 3.0,
            write_percent: 30,
            json_out: None,
            report_dir,
            instance_env: Vec::new(),
            fault: None,
            replica_servers: Vec::new(),
            backfill_batch: 1000,
            backfill_sleep_ms: 100,
            backfill_batch_target_ms: None,
            backfill_workers: None,
            pooler: false,
            failover: None,
            chaos: None,
            schedule_file: None,
        }
    }

    pub fn full(report_dir: PathBuf) -> Self {
        Self {
            rows: 200_000,
            clients: 16,
            phase_secs: 10.0,
            backfill_batch: 2000,
            backfill_sleep_ms: 50,
            ..Self::quick(report_dir)
        }
    }
}

/// The run's clock and record: which segment the traffic is in, when faults happened.
struct Timeline {
    control: TrafficControl,
    segments: Vec<Segment>,
    markers: Vec<Marker>,
    /// Whether the backfill has run to the end.
    backfilled: bool,
    /// The segment in which a failover's standby was promoted, if one was.
    promoted_in: Option<usize>,
    /// How long the failover left the run without a primary.
    without_primary: Option<Duration>,
    /// The windows of a chaos run's faults (see `FaultWindow`).
    fault_windows: Vec<FaultWindow>,
    /// The faults a chaos run struck, by kind.
    faults_struck: std::collections::BTreeMap<String, usize>,
}

impl Timeline {
    /// The clock starts now, in no segment yet.
    fn start() -> Self {
        Self {
            control: TrafficControl {
                segment: Arc::new(AtomicUsize::new(0)),
                v2_enabled: Arc::new(AtomicBool::new(false)),
                stop: Arc::new(AtomicBool::new(false)),
                started: Instant::now(),
                async_promoted_in: Arc::new(AtomicUsize::new(traffic::NOT_PROMOTED)),
            },
            segments: Vec::new(),
            markers: Vec::new(),
            backfilled: false,
            promoted_in: None,
            without_primary: None,
            fault_windows: Vec::new(),
            faults_struck: Default::default(),
        }
    }

    fn now_ms(&self) -> u32 {
        self.control.started.elapsed().as_millis() as u32
    }

    fn enter(&mut self, name: &str) {
        let now = self.now_ms();
        if let Some(last) = self.segments.last_mut() {
            last.end_ms = now;
        }
        self.segments.push(Segment {
            name: name.to_owned(),
            start_ms: now,
            end_ms: now,
        });
        self.control
            .segment
            .store(self.segments.len() - 1, Ordering::Release);
        log::info!("demo: {name}");
    }

    fn mark(&mut self, label: impl Into<String>) {
        let label = label.into();
        log::info!("demo fault: {label}");
        self.markers.push(Marker {
            at_ms: self.now_ms(),
            label,
        });
    }

    fn close(&mut self) {
        let now = self.now_ms();
        if let Some(last) = self.segments.last_mut() {
            last.end_ms = now;
        }
    }
}

/// How long after a fault's effect ended its effects may still show: the instances' pools
/// reconnect, a request sent during the fault finishes.
const FAULT_AFTERMATH_MS: u32 = 3_000;

/// A chaos run's fault, from when it struck until its effect ended (none yet: it lasts).
#[derive(Debug, Clone, Copy)]
struct FaultWindow {
    start_ms: u32,
    end_ms: Option<u32>,
    /// Whether the instances themselves may answer 503 while it lasts (and a little after):
    /// the database, the pooler or a replica is away, or a frozen instance holds locks that
    /// others wait for. A fault that only takes an instance down makes the load balancer
    /// answer for that instance's requests (`Outcome::LostWithInstance`), never the others.
    app_may_503: bool,
}

async fn pause(secs: f64) {
    actix_web::rt::time::sleep(Duration::from_secs_f64(secs)).await;
}

/// Runs `f` (database work, waiting for a child process) on the blocking thread pool, so the
/// clients' tasks keep running meanwhile.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    actix_web::rt::task::spawn_blocking(f)
        .await
        .context("a blocking step of the demo panicked")?
}

/// A connection of the demo's own to its scratch database.
fn connect(url: &str) -> Result<PgConnection> {
    PgConnection::establish(url).context("connecting to the scratch database")
}

/// Runs the demo against the server of `database_url` (in a scratch database) and returns
/// its summary; the report is in `opts.report_dir`.
pub async fn run(database_url: &str, opts: DemoOptions) -> Result<DemoSummary> {
    std::fs::create_dir_all(&opts.report_dir)
        .with_context(|| format!("creating the report folder {}", opts.report_dir.display()))?;
    if let Some(fault) = opts.fault {
        log::warn!(
            "FAULT INJECTED ON PURPOSE ({}): {}; the audit must catch it and this run must fail",
            fault.name(),
            fault.describe()
        );
    }
    let (scratch, seeded) = seed_scratch_database(database_url, opts.rows).await?;
    // Dropped before the scratch database.
    let roles = chaos_roles(&scratch, &opts).await?;
    // Requests (replica reads too) as the pooled role behind the pooler, else as the owner.
    let requests_role = roles.as_ref().map(|r| match opts.pooler {
        true => r.requests.as_str(),
        false => r.owner.as_str(),
    });
    let mut opts = with_replicas_of(opts, &scratch.name, requests_role);
    let direct_url = roles.as_ref().map_or(scratch.url.clone(), |r| {
        lived_in::as_role(&scratch.url, &r.owner)
    });
    // Dropped after the traffic has stopped.
    let pooler = if opts.pooler {
        Some(start_pooler(
            database_url,
            &scratch,
            &direct_url,
            requests_role,
            &mut opts,
        )?)
    } else {
        None
    };
    let instances_url = pooler.as_ref().map_or(direct_url, |p| p.1.clone());
    let fleet = start_instances(&instances_url, &opts).await?;
    let traffic =
        walk_under_traffic(fleet, &scratch.url, &opts, pooler.as_ref().map(|p| &p.0)).await?;
    drop(pooler);
    let audit = audit_the_table(&opts, &scratch.url, seeded, &traffic).await?;
    drop(roles);
    drop(scratch);
    let summary = summary::summarize(&opts, &traffic, audit);
    write_report(&opts, &summary, &traffic)?;
    Ok(summary)
}

/// The roles production would use, for a chaos run's instances and backfill (none for the
/// demo: the server of a `DATABASE_URL` may not let new roles log in without a password).
async fn chaos_roles(
    scratch: &ScratchDatabase,
    opts: &DemoOptions,
) -> Result<Option<lived_in::RunRoles>> {
    if opts.chaos.is_none() {
        return Ok(None);
    }
    let (url, name) = (scratch.url.clone(), scratch.name.clone());
    let roles = blocking(move || lived_in::RunRoles::create(&url, &name)).await?;
    log::info!(
        "chaos: the instances and the backfill run as {} (owns users){}",
        roles.owner,
        if opts.pooler {
            format!(", requests through the pooler as {}", roles.requests)
        } else {
            String::new()
        }
    );
    Ok(Some(roles))
}

/// A scratch database seeded with `rows` users, and every seeded row as digests, taken before
/// any client writes: the rows no client writes are held to them at the end.
async fn seed_scratch_database(
    database_url: &str,
    rows: u64,
) -> Result<(ScratchDatabase, audit::Snapshot)> {
    let server = database_url.to_owned();
    let scratch = blocking(move || ScratchDatabase::seeded(&server, "zdm_demo", rows, 7)).await?;
    let url = scratch.url.clone();
    let seeded = blocking(move || {
        let mut conn = connect(&url)?;
        audit::Snapshot::take(&mut conn).context("reading the seeded rows before the traffic")
    })
    .await?;
    Ok((scratch, seeded))
}

/// Server connections of the demo's PgBouncer, per database and user: fewer than the two
/// instances' pools together (16 each, and a point reader each), so they are shared.
const POOLER_SERVER_CONNECTIONS: u32 = 8;

/// Starts a PgBouncer in transaction mode in front of the scratch database; the instances
/// (and the backfill processes) get its URL as `DATABASE_URL`, as `requests_role` if given,
/// and `direct_url` (the scratch database's) as `DIRECT_DATABASE_URL`. Returns it with the URL
/// through it.
fn start_pooler(
    server_url: &str,
    scratch: &ScratchDatabase,
    direct_url: &str,
    requests_role: Option<&str>,
    opts: &mut DemoOptions,
) -> Result<(crate::pgbouncer::PgBouncer, String)> {
    let (upstream, user) =
        crate::pgbouncer::Upstream::from_url(server_url, POOLER_SERVER_CONNECTIONS)?;
    let dir = std::env::temp_dir().join(format!("zdm-demo-pgb-{}", std::process::id()));
    let requests = requests_role.unwrap_or(&user);
    let mut users = vec![user.as_str()];
    if requests != user {
        users.push(requests);
    }
    let bouncer = crate::pgbouncer::PgBouncer::start(&dir, &upstream, &users)
        .context("starting the demo's pgbouncer")?;
    let url = bouncer.url(&scratch.name, requests);
    opts.instance_env
        .push(("DIRECT_DATABASE_URL".to_owned(), direct_url.to_owned()));
    Ok((bouncer, url))
}

/// The replicas replay the scratch database too; the instances and the backfill get its URL
/// on each of them (as `role`, if given).
fn with_replicas_of(mut opts: DemoOptions, scratch_name: &str, role: Option<&str>) -> DemoOptions {
    if !opts.replica_servers.is_empty() {
        let urls: Vec<String> = opts
            .replica_servers
            .iter()
            .map(|server| crate::db::with_database(server, scratch_name))
            .map(|url| match role {
                Some(role) => lived_in::as_role(&url, role),
                None => url,
            })
            .collect();
        opts.instance_env
            .push(("DATABASE_REPLICA_URLS".to_owned(), urls.join(",")));
    }
    opts
}

/// Starts the two instances on the scratch database at `url`, each with the demo's
/// environment and its part of the injected fault.
async fn start_instances(url: &str, opts: &DemoOptions) -> Result<Fleet> {
    let token = crate::startup::generate_token();
    let running = opts
        .chaos
        .as_ref()
        .map_or(2, |c| c.schedule.setup.instances as usize);
    // A chaos run has one more, which may join late.
    let count = running + usize::from(opts.chaos.is_some());
    let setups = (0..count)
        .map(|index| InstanceSetup {
            env: opts.instance_env.clone(),
            args: opts
                .fault
                .map(|f| f.instance_args(index))
                .unwrap_or_default(),
        })
        .collect();
    Fleet::start_first(url, &token, &opts.report_dir, setups, running).await
}

/// What the clients and the walk left: the audit and the report are made of it.
struct Traffic {
    timeline: Timeline,
    samples: Vec<Sample>,
    ledgers: Vec<audit::Ledger>,
    unacknowledged_creates: u64,
    replica_reads: u64,
    lock_timeouts: usize,
    backfill: Option<BackfillRun>,
    /// Why the walk stopped half-way (a gate refused, an instance failed), if it did.
    walk_error: Option<String>,
    /// How busy the machine's CPUs were, through the run (none without `/proc/stat`).
    cpu: Vec<cpu::CpuSample>,
    /// The instances' own latency histograms, through the run.
    server: server_latency::ServerLatency,
}

/// Sends the clients' traffic while the driver walks the migration (the naive one with
/// `--naive`), then stops the clients and the instances. A walk that stops half-way is not an
/// error here: the run is still audited and reported, and the report says where and why.
async fn walk_under_traffic(
    mut fleet: Fleet,
    url: &str,
    opts: &DemoOptions,
    pooler: Option<&crate::pgbouncer::PgBouncer>,
) -> Result<Traffic> {
    let admin = Admin::of(&fleet)?;
    let mut timeline = Timeline::start();
    let control = timeline.control.clone();
    let cpu = cpu::CpuSampler::start(control.started).context("starting the CPU sampler")?;
    let server = server_latency::Sampler::start(fleet.rotation.urls.clone(), control.started);
    timeline.enter("baseline");
    if let Some(fault) = opts.fault {
        timeline.mark(format!(
            "injected fault {}: {}",
            fault.name(),
            fault.describe()
        ));
    }
    // The clients' forms carry the token the instances sign for their cookie, as a browser's
    // would after loading the page.
    let form_key = crate::db::admin_auth::user_form_key(&mut connect(url)?)
        .context("reading the user forms' key")?;
    let clients = traffic::start(
        &form_key,
        opts.clients,
        opts.rows as i64,
        opts.write_percent,
        fleet.rotation.clone(),
        control.clone(),
    );
    let walked = if opts.naive {
        walk_naive(&mut fleet, url, opts, &mut timeline)
            .await
            .map(|()| (0, None))
    } else if let Some(chaos) = &opts.chaos {
        chaos::walk_chaos(&mut fleet, &admin, url, opts, pooler, &mut timeline, chaos).await
    } else {
        walk_zdm(&mut fleet, &admin, url, opts, pooler, &mut timeline).await
    };
    control.stop.store(true, Ordering::Release);
    let mut samples = Vec::new();
    let mut ledgers = Vec::new();
    let mut unacknowledged_creates = 0;
    for client in clients {
        let result = client.await.context("a traffic client panicked")?;
        samples.extend(result.samples);
        ledgers.push(result.ledger);
        unacknowledged_creates += result.unacknowledged_creates;
    }
    timeline.close();
    let cpu = cpu.finish();
    let server = server.finish().await;
    let replica_reads = fleet.replica_reads().await;
    fleet.stop();
    let (lock_timeouts, backfill, walk_error) = match walked {
        Ok((lock_timeouts, backfill)) => (lock_timeouts, backfill, None),
        Err(e) => {
            log::error!("the migration stopped: {e:#}");
            (0, None, Some(format!("{e:#}")))
        }
    };
    Ok(Traffic {
        timeline,
        samples,
        ledgers,
        unacknowledged_creates,
        replica_reads,
        lock_timeouts,
        backfill,
        walk_error,
        cpu,
        server,
    })
}

/// Holds the table, as the run left it, to the clients' ledgers and the seeded rows.
async fn audit_the_table(
    opts: &DemoOptions,
    url: &str,
    seeded: audit::Snapshot,
    traffic: &Traffic,
) -> Result<audit::AuditResult> {
    let url = url.to_owned();
    let ledgers = traffic.ledgers.clone();
    let names: Vec<String> = traffic
        .timeline
        .segments
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let backfilled = traffic.timeline.backfilled;
    // With an asynchronous standby, what was acknowledged before the promotion may be gone.
    let async_promotion = traffic
        .timeline
        .promoted_in
        .filter(|_| opts.failover.as_ref().is_some_and(|f| !f.synchronous));
    blocking(move || {
        let mut conn = connect(&url)?;
        let record = audit::RunRecord {
            ledgers: &ledgers,
            seeded: &seeded,
            segment_names: &names,
            backfilled,
            async_promotion,
        };
        audit::audit(&mut conn, &record).context("auditing the table after the traffic")
    })
    .await
}

/// The file of a run's HTML report in `report_dir`: one per mode and injected fault or
/// failover (`demo-zdm.html`, `demo-naive.html`, `demo-zdm-lose-writes.html`,
/// `demo-zdm-failover.html`), so that a run meant to fail, or one of another set-up, never
/// overwrites the proof, the report the dashboard links.
pub fn report_file(report_dir: &Path, summary: &DemoSummary) -> PathBuf {
    let failover = summary.failover.as_ref().map(|f| match f.standby.as_str() {
        "synchronous" => "failover".to_owned(),
        other => format!("failover-{other}"),
    });
    if let Some(seed) = summary.seed {
        // A chaos run: the last one that passed, and each that failed under its seed.
        let control = if summary.control { "-control" } else { "" };
        let fault = summary
            .injected_fault
            .as_ref()
            .map(|f| format!("-{f}"))
            .unwrap_or_default();
        let name = match summary.passed {
            true => format!("demo-chaos{control}{fault}.html"),
            false => format!("demo-chaos{control}{fault}-seed-{seed}.html"),
        };
        return report_dir.join(name);
    }
    let name = match (&summary.injected_fault, failover) {
        (None, None) if summary.mode == "zdm" => crate::routes::admin_pages::DEMO_REPORT.to_owned(),
        (None, None) => format!("demo-{}.html", summary.mode),
        (Some(fault), _) => format!("demo-{}-{fault}.html", summary.mode),
        (None, Some(failover)) => format!("demo-{}-{failover}.html", summary.mode),
    };
    report_dir.join(name)
}

/// Writes the HTML report (see `report_file`) and, if asked for, the summary as JSON.
fn write_report(opts: &DemoOptions, summary: &DemoSummary, traffic: &Traffic) -> Result<()> {
    let html = report::html(summary, &traffic.timeline.segments, &traffic.samples)
        .context("rendering the report")?;
    let report_file = report_file(&opts.report_dir, summary);
    std::fs::write(&report_file, &html)
        .with_context(|| format!("writing the report {}", report_file.display()))?;
    if let Some(path) = &opts.json_out {
        write_json(path, summary)?;
    }
    log::info!("report written to {}", report_file.display());
    Ok(())
}

/// Writes `value` as pretty JSON to `path` (a summary, a chaos schedule).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let json = serde_json::to_string_pretty(value).context("serialising to JSON")?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_and_fault_has_a_report_of_its_own_and_the_dashboard_links_the_proof() {
        let dir = Path::new("reports");
        let file = |mode: &str, fault: Option<Fault>| {
            let summary = DemoSummary {
                mode: mode.to_owned(),
                injected_fault: fault.map(|f| f.name().to_owned()),
                ..DemoSummary::default()
            };
            report_file(dir, &summary)
        };
        assert_eq!(file("zdm", None), dir.join("demo-zdm.html"));
        assert_eq!(
            file("zdm", None),
            dir.join(crate::routes::admin_pages::DEMO_REPORT)
        );
        assert_eq!(file("naive", None), dir.join("demo-naive.html"));
        assert_eq!(
            file("zdm", Some(Fault::LoseWrites)),
            dir.join("demo-zdm-lose-writes.html")
        );
        assert_eq!(
            file("zdm", Some(Fault::LaggingV1)),
            dir.join("demo-zdm-lagging-v1.html")
        );
    }
}
