//! `zdm bench http`: the serving path against the database's own ceiling.
//!
//! Seeds users in a scratch database, starts one real `zdm serve` process on it and drives it
//! over HTTP from a built-in keep-alive load client: v1 point reads in baseline, v1 writes in
//! baseline (one column) and in dual_write (both forms), v2 point reads in read_new. In the
//! same run `pgbench` measures PostgreSQL's own point-select rate with the same concurrency.
//! Prints requests/s and p50/p99 per scenario, the server's peak RSS, and as its last lines
//! `read_vs_pgbench: R` and `dual_write_vs_single_write: W`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use actix_web::rt::net::TcpStream;
use anyhow::{Context, Result, bail};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::local_pg::BinarySearch;
use crate::migration::backfill;
use crate::tools::demo::fleet::Fleet;
use crate::tools::scratch::ScratchDatabase;
use crate::tools::stats::{ms, nearest_rank, peak_rss_mib};

#[derive(Debug, Clone)]
pub struct HttpBenchOptions {
    pub rows: u64,
    pub concurrency: usize,
    pub secs: f64,
    /// The server's requests and pgbench through a PgBouncer in transaction mode.
    pub pooler: bool,
    /// The server direct, its statements sent as behind a pooler (unnamed, no generic plan):
    /// the cost of that apart from the pooler's hop; pgbench then sends unnamed ones too.
    pub unnamed_statements: bool,
}

/// Server connections of the benchmark's PgBouncer: half the load's clients (at least two),
/// so that they are shared, for the server and pgbench alike.
fn pooler_server_connections(concurrency: usize) -> u32 {
    (concurrency / 2).max(2) as u32
}

#[derive(Debug, Clone, Copy)]
enum Scenario {
    V1Read,
    V1Write,
    V2Read,
}

#[derive(Debug, Clone)]
pub struct Figures {
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: usize,
}

/// Closed-loop load: `concurrency` clients, each sending its next request when the previous
/// one is answered, over kept-alive connections, for `secs`. Runs on two threads so the
/// client is not the bottleneck of a two-core machine, and speaks HTTP/1.1 straight over TCP
/// (pre-formatted requests, `httparse` for the answers): like pgbench, the load client should
/// cost as little CPU as it can, since it shares the machine with what it measures.
fn drive(base: &str, scenario: Scenario, rows: u64, concurrency: usize, secs: f64) -> Figures {
    let threads = 2.min(concurrency).max(1);
    let host = base.trim_start_matches("http://").to_owned();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (host, stop) = (host.clone(), stop.clone());
            let tasks = concurrency / threads + usize::from(t < concurrency % threads);
            std::thread::spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let joins: Vec<_> = (0..tasks)
                        .map(|task| {
                            let (host, stop) = (host.clone(), stop.clone());
                            let seed = (t * 1000 + task) as u64;
                            actix_web::rt::spawn(async move {
                                connection_loop(&host, scenario, rows, seed, &stop).await
                            })
                        })
                        .collect();
                    let mut all = (Vec::new(), 0);
                    for join in joins {
                        if let Ok((l, e)) = join.await {
                            all.0.extend(l);
                            all.1 += e;
                        }
                    }
                    all
                })
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for handle in handles {
        if let Ok((l, e)) = handle.join() {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Figures {
        requests_per_s: latencies.len() as f64 / elapsed,
        p50_ms: ms(nearest_rank(&latencies, 0.5)),
        p99_ms: ms(nearest_rank(&latencies, 0.99)),
        errors,
    }
}

/// One kept-alive connection sending requests of `scenario` one after the other until
/// `stop`; returns the latencies of the successful ones and the number of failures (an
/// answer other than 2xx, or a broken connection, which is then made again).
async fn connection_loop(
    host: &str,
    scenario: Scenario,
    rows: u64,
    seed: u64,
    stop: &AtomicBool,
) -> (Vec<Duration>, usize) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut request = Vec::with_capacity(256);
    let mut buffer = Vec::with_capacity(4096);
    let mut stream: Option<TcpStream> = None;
    while !stop.load(Ordering::Relaxed) {
        let conn = match &mut stream {
            Some(conn) => conn,
            None => match TcpStream::connect(host).await {
                Ok(conn) => {
                    let _ = conn.set_nodelay(true);
                    buffer.clear();
                    stream.insert(conn)
                }
                Err(_) => {
                    errors += 1;
                    actix_web::rt::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        write_request(&mut request, scenario, host, rng.u64(1..=rows), &mut rng);
        let t0 = Instant::now();
        let answered = match conn.write_all(&request).await {
            Ok(()) => read_response(conn, &mut buffer).await,
            Err(e) => Err(e),
        };
        match answered {
            Ok(status) if (200..300).contains(&status) => latencies.push(t0.elapsed()),
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                stream = None;
            }
        }
    }
    (latencies, errors)
}

/// The bytes of one request of `scenario` for user `id`, into `out`.
fn write_request(
    out: &mut Vec<u8>,
    scenario: Scenario,
    host: &str,
    id: u64,
    rng: &mut fastrand::Rng,
) {
    use std::io::Write;
    out.clear();
    let _ = match scenario {
        Scenario::V1Read => write!(
            out,
            "GET /api/v1/users/{id} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
        Scenario::V2Read => write!(
            out,
            "GET /api/v2/users/{id} HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
        Scenario::V1Write => {
            let body = format!(r#"{{"full_name":"Bench User{} Tester"}}"#, rng.u32(..));
            write!(
                out,
                "PUT /api/v1/users/{id} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
    };
}

/// Reads one answer (head and `Content-Length` body) from `conn`; returns its status code.
/// Bytes past the answer stay in `buffer` for the next one.
async fn read_response(conn: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<u16> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(buffer) {
            Ok(httparse::Status::Complete(head)) => {
                let status = response.code.ok_or_else(|| invalid("no status"))?;
                let length = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .ok_or_else(|| invalid("an answer without Content-Length"))?;
                while buffer.len() < head + length {
                    if conn.read_buf(buffer).await? == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                }
                buffer.drain(..head + length);
                return Ok(status);
            }
            Ok(httparse::Status::Partial) => {
                if conn.read_buf(buffer).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            Err(e) => return Err(invalid(&e.to_string())),
        }
    }
}

/// Runs `work` (database work, a child process, a load that blocks its thread) on the
/// blocking thread pool, off the runtime that drives the server's admin API.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    actix_web::rt::task::spawn_blocking(work)
        .await
        .context("a blocking step of the benchmark panicked")?
}

/// Vacuums `users` and, where allowed (superuser), writes a checkpoint.
fn settle(url: &str) -> Result<()> {
    let mut conn = PgConnection::establish(url).context("connecting to the scratch database")?;
    conn.batch_execute("VACUUM users")
        .context("vacuuming users")?;
    let _ = conn.batch_execute("CHECKPOINT");
    Ok(())
}

/// `pgbench` next to the server binaries (or on PATH).
fn pgbench() -> Option<PathBuf> {
    let mut dirs = BinarySearch::default().candidates();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter()
        .map(|d| d.join("pgbench"))
        .find(|p| p.is_file())
}

/// PostgreSQL's own rate for one point select by id, same concurrency, prepared statements.
fn pgbench_point_select(
    url: &str,
    rows: u64,
    concurrency: usize,
    secs: f64,
    columns: &str,
    mode: &str,
) -> Result<Figures> {
    let bin = pgbench().context("pgbench was not found next to the PostgreSQL server binaries")?;
    let script = std::env::temp_dir().join(format!("zdm-bench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        format!("\\set id random(1, {rows})\nSELECT {columns} FROM users WHERE id = :id;\n"),
    )
    .with_context(|| format!("writing pgbench's script {}", script.display()))?;
    let output = Command::new(bin)
        .args(["-n", "-M", mode, "-r"])
        .arg(format!("-c{concurrency}"))
        .arg(format!("-j{}", 2.min(concurrency)))
        .arg(format!("-T{}", secs.ceil() as u64))
        .arg("-f")
        .arg(&script)
        .arg(url)
        .output()
        .context("running pgbench")?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let number_after = |label: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.contains(label))?;
        line.split(label)
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Ok(Figures {
        requests_per_s: number_after("tps = ")
            .with_context(|| format!("no tps in pgbench's output: {text}"))?,
        p50_ms: number_after("latency average = ").unwrap_or(0.0),
        p99_ms: 0.0,
        errors: 0,
    })
}

/// The one `zdm serve` under load, on the scratch database, with the admin API that walks it
/// through the migration.
struct Served {
    fleet: Fleet,
    /// The server's URL.
    base: String,
    /// The scratch database's URL.
    url: String,
    admin: reqwest::Client,
    opts: HttpBenchOptions,
}

impl Served {
    /// Starts the server on the database of `url` (its requests through `requests_url`, a
    /// pooler, where given), its pool as large as the load's concurrency, its log in `logs`.
    async fn start(
        url: &str,
        requests_url: Option<&str>,
        logs: &Path,
        opts: &HttpBenchOptions,
    ) -> Result<Self> {
        let token = crate::startup::generate_token();
        let mut env = vec![("ZDM_POOL_SIZE".to_owned(), opts.concurrency.to_string())];
        // Behind a pooler, or as if (`unnamed_statements`): a DIRECT_DATABASE_URL makes the
        // server treat DATABASE_URL as a transaction-mode pooler.
        if requests_url.is_some() || opts.unnamed_statements {
            env.push(("DIRECT_DATABASE_URL".to_owned(), url.to_owned()));
        }
        let fleet = Fleet::start(1, requests_url.unwrap_or(url), &token, logs, env).await?;
        Ok(Self {
            base: fleet.instances[0].url.clone(),
            fleet,
            url: url.to_owned(),
            admin: reqwest::Client::new(),
            opts: opts.clone(),
        })
    }

    /// Runs the load of `scenario`. Each scenario starts from the same state of the table:
    /// the dead rows of the writes or the backfill before it vacuumed and the dirty pages
    /// written out, untimed (else the second write scenario paid for the first's autovacuum
    /// and checkpoint).
    async fn load(&self, scenario: Scenario) -> Result<Figures> {
        let (base, url) = (self.base.clone(), self.url.clone());
        let HttpBenchOptions {
            rows,
            concurrency,
            secs,
            ..
        } = self.opts;
        blocking(move || settle(&url).map(|()| drive(&base, scenario, rows, concurrency, secs)))
            .await
    }

    /// Advances the migration to each of `phases` in turn, through the admin API, waiting
    /// each time until the server has applied it.
    async fn advance_through(&self, phases: [&str; 2]) -> Result<()> {
        for to in phases {
            let r = self
                .admin
                .post(format!("{}/api/admin/migration/advance", self.base))
                .bearer_auth(self.fleet.admin_token())
                .json(&json!({ "confirm": null }))
                .send()
                .await
                .with_context(|| format!("advancing to {to}"))?;
            if !r.status().is_success() {
                bail!("advancing to {to}: {}", r.text().await.unwrap_or_default());
            }
            self.fleet.wait_applied(to).await?;
        }
        Ok(())
    }
}

/// Runs the backfill of the database of `url` to the end, without pauses: the step between
/// dual_write and backfilled, untimed.
async fn backfill_to_the_end(url: &str) -> Result<()> {
    let url = url.to_owned();
    blocking(move || {
        let mut conn =
            PgConnection::establish(&url).context("connecting to the scratch database")?;
        backfill::set_knobs(&mut conn, backfill::Knobs::sleep(0))
            .context("setting the backfill's knobs")?;
        backfill::run(&mut conn, backfill::Direction::Forward, |_| {})
            .context("running the backfill")?;
        Ok(())
    })
    .await
}

/// PostgreSQL's own rate for the point select of the v2 read, with the load's concurrency
/// for as long as each scenario: the ceiling the serving path is measured against.
async fn pgbench_ceiling(url: &str, opts: &HttpBenchOptions) -> Result<Figures> {
    let url = url.to_owned();
    let HttpBenchOptions {
        rows,
        concurrency,
        secs,
        pooler,
        unnamed_statements,
    } = *opts;
    blocking(move || {
        pgbench_point_select(
            &url,
            rows,
            concurrency,
            secs,
            "id, first_name, last_name, email",
            pgbench_mode(pooler || unnamed_statements),
        )
    })
    .await
}

/// pgbench's query mode: named prepared statements, except through a transaction-mode
/// pooler, which keeps no statement between transactions (PgBouncer 1.18): there, unnamed
/// ones (`extended`), as zdm's requests send them.
fn pgbench_mode(pooler: bool) -> &'static str {
    if pooler { "extended" } else { "prepared" }
}

/// One scenario's line of the report.
fn figures_line(label: &str, f: &Figures) -> String {
    format!(
        "{label:<34} {:>8.0} req/s   p50 {:>6.2} ms   p99 {:>6.2} ms   errors {}",
        f.requests_per_s, f.p50_ms, f.p99_ms, f.errors
    )
}

/// Starts a PgBouncer in transaction mode in front of the server of `database_url`, its logs
/// under `logs`; returns it with the URL of the scratch database through it.
fn start_pooler(
    database_url: &str,
    scratch: &ScratchDatabase,
    logs: &Path,
    opts: &HttpBenchOptions,
    say: &mut impl FnMut(&str),
) -> Result<(crate::pgbouncer::PgBouncer, String)> {
    let (upstream, user) = crate::pgbouncer::Upstream::from_url(
        database_url,
        pooler_server_connections(opts.concurrency),
    )?;
    let bouncer = crate::pgbouncer::PgBouncer::start(&logs.join("pgbouncer"), &upstream, &[&user])
        .context("starting pgbouncer")?;
    let url = bouncer.url(&scratch.name, &user);
    say(&format!(
        "through pgbouncer, transaction mode, {} server connections",
        upstream.pool_size
    ));
    Ok((bouncer, url))
}

/// Runs the benchmark on the server of `database_url` and prints its figures; returns the
/// last two, `(read_vs_pgbench, dual_write_vs_single_write)`.
pub async fn http_benchmark(
    database_url: &str,
    opts: HttpBenchOptions,
    mut say: impl FnMut(&str),
) -> Result<(f64, f64)> {
    say(&format!("seeding {} users...", opts.rows));
    let scratch = {
        let (server, rows) = (database_url.to_owned(), opts.rows);
        blocking(move || ScratchDatabase::seeded(&server, "zdm_bench_http", rows, 11)).await?
    };
    let logs = std::env::temp_dir().join(format!("zdm-bench-http-{}", std::process::id()));
    std::fs::create_dir_all(&logs)
        .with_context(|| format!("creating the log folder {}", logs.display()))?;
    // Through the pooler, the requests and pgbench alike; the steps and the backfill direct.
    let pooler = if opts.pooler {
        Some(start_pooler(
            database_url,
            &scratch,
            &logs,
            &opts,
            &mut say,
        )?)
    } else {
        None
    };
    let requests_url = pooler.as_ref().map(|(_, url)| url.as_str());
    let mut served = Served::start(&scratch.url, requests_url, &logs, &opts).await?;
    let pid = served.fleet.pid(0).context("the server is not running")?;
    let HttpBenchOptions {
        rows,
        concurrency,
        secs,
        ..
    } = opts;
    say(&format!(
        "load: {concurrency} keep-alive clients, {secs} s per scenario, {rows} users"
    ));
    let v1_read = served.load(Scenario::V1Read).await?;
    say(&figures_line("GET  /api/v1/users/{id} baseline", &v1_read));
    let single_write = served.load(Scenario::V1Write).await?;
    say(&figures_line(
        "PUT  /api/v1/users/{id} baseline",
        &single_write,
    ));
    served.advance_through(["expanded", "dual_write"]).await?;
    let dual_write = served.load(Scenario::V1Write).await?;
    say(&figures_line(
        "PUT  /api/v1/users/{id} dual_write",
        &dual_write,
    ));
    backfill_to_the_end(&scratch.url).await?;
    served.advance_through(["backfilled", "read_new"]).await?;
    let v2_read = served.load(Scenario::V2Read).await?;
    say(&figures_line("GET  /api/v2/users/{id} read_new", &v2_read));
    let rss = peak_rss_mib(Some(pid));
    served.fleet.stop();

    let ceiling = pgbench_ceiling(requests_url.unwrap_or(&scratch.url), &opts).await?;
    say(&format!(
        "{:<34} {:>8.0} tx/s    avg {:>6.2} ms   (pgbench, {} point select, {concurrency} clients)",
        "pgbench SELECT ... WHERE id = :id",
        ceiling.requests_per_s,
        ceiling.p50_ms,
        pgbench_mode(opts.pooler || opts.unnamed_statements)
    ));
    drop(pooler);
    say(&format!(
        "peak server RSS: {}",
        rss.map_or("unknown".to_owned(), |m| format!("{m:.1} MiB"))
    ));
    let errors = v1_read.errors + single_write.errors + dual_write.errors + v2_read.errors;
    if errors > 0 {
        say(&format!("errors during the load: {errors}"));
    }
    drop(scratch);
    let _ = std::fs::remove_dir_all(&logs);
    let read_ratio = v2_read.requests_per_s / ceiling.requests_per_s;
    let write_ratio = dual_write.requests_per_s / single_write.requests_per_s;
    say(&format!("read_vs_pgbench: {read_ratio:.2}"));
    say(&format!("dual_write_vs_single_write: {write_ratio:.2}"));
    Ok((read_ratio, write_ratio))
}
