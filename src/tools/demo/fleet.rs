//! The app instances of a demo: real `zdm serve` processes on one database, and the small
//! load balancer the clients go through (an instance taken out of rotation gets no new
//! requests, as a real one drains before a restart).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub struct Instance {
    pub name: String,
    pub url: String,
    bind: String,
    child: Option<Child>,
    log: PathBuf,
}

/// Which instances take requests; shared with every client.
#[derive(Clone)]
pub struct Rotation {
    pub urls: Arc<Vec<String>>,
    up: Arc<Vec<AtomicBool>>,
    /// When each instance last went down by a fault and last came back, in ms since `epoch`
    /// (0: never): what the load balancer answers for a request it lost with its instance.
    faulted_ms: Arc<Vec<AtomicU64>>,
    back_ms: Arc<Vec<AtomicU64>>,
    epoch: Instant,
}

/// After an instance comes back, errors of connections to its old process are still its
/// fault's for this long (a client's pool may hold one).
const FAULT_ECHO: Duration = Duration::from_secs(2);

impl Rotation {
    /// A random instance in rotation (`None` if all are out).
    pub fn pick(&self, rng: &mut fastrand::Rng) -> Option<&str> {
        let up: Vec<usize> = (0..self.urls.len())
            .filter(|i| self.up[*i].load(Ordering::Acquire))
            .collect();
        if up.is_empty() {
            return None;
        }
        Some(&self.urls[up[rng.usize(..up.len())]])
    }

    pub fn set(&self, index: usize, up: bool) {
        self.up[index].store(up, Ordering::Release);
    }

    /// Whether an instance is in rotation.
    pub fn is_up(&self, index: usize) -> bool {
        self.up[index].load(Ordering::Acquire)
    }

    fn new(urls: Vec<String>) -> Self {
        let count = urls.len();
        let zeros = || Arc::new((0..count).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        Self {
            urls: Arc::new(urls),
            up: Arc::new((0..count).map(|_| AtomicBool::new(false)).collect()),
            faulted_ms: zeros(),
            back_ms: zeros(),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Takes an instance out at once because a fault strikes it (a crash, a freeze), as a
    /// load balancer's health check would.
    pub fn fault(&self, index: usize) {
        self.faulted_ms[index].store(self.now_ms(), Ordering::Release);
        self.set(index, false);
    }

    /// Puts an instance back after its fault.
    pub fn back(&self, index: usize) {
        self.back_ms[index].store(self.now_ms(), Ordering::Release);
        self.set(index, true);
    }

    /// Whether a request to `url` sent at `sent` that got no answer (refused, reset, timed
    /// out) was lost to a fault of its instance: the instance is out, went down after the
    /// request was sent, or came back only just now. A load balancer answers such a request
    /// 503, as it has no instance that answered it.
    pub fn lost_to_a_fault(&self, url: &str, sent: Instant) -> bool {
        let Some(index) = self.urls.iter().position(|u| url.starts_with(u.as_str())) else {
            return false;
        };
        let sent_ms = sent.saturating_duration_since(self.epoch).as_millis() as u64;
        let faulted = self.faulted_ms[index].load(Ordering::Acquire);
        let back = self.back_ms[index].load(Ordering::Acquire);
        faulted != 0
            && (!self.up[index].load(Ordering::Acquire)
                || faulted >= sent_ms
                || self.now_ms() < back + FAULT_ECHO.as_millis() as u64)
    }
}

pub struct Fleet {
    pub instances: Vec<Instance>,
    pub rotation: Rotation,
    database_url: String,
    admin_token: String,
    /// What each instance is started with on top of the fleet's settings.
    setups: Vec<InstanceSetup>,
    /// Reads replicas answered in instances since restarted (their counters start again).
    earlier_replica_reads: u64,
}

/// What one instance of a fleet is started with, on top of the fleet's settings.
#[derive(Debug, Clone, Default)]
pub struct InstanceSetup {
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Its arguments after `serve` (the demo's `--inject-fault`).
    pub args: Vec<String>,
}

/// The ports instances listen on, below the kernel's ephemeral range (32768 and up on Linux),
/// from which outgoing connections and `bind(0)` take theirs: a port an instance gives up for
/// a restart could otherwise be taken in between by one of the many client connections of the
/// demo (or of a test beside it), and the instance come back unable to listen.
const INSTANCE_PORTS: std::ops::Range<u16> = 20_000..32_000;

fn free_port() -> Result<u16> {
    for _ in 0..200 {
        let port = fastrand::u16(INSTANCE_PORTS);
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {INSTANCE_PORTS:?} after 200 tries")
}

impl Fleet {
    /// The `DATABASE_URL` its instances are started with.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// Starts `count` instances with the same extra environment and waits until each answers
    /// `/healthz`.
    pub async fn start(
        count: usize,
        database_url: &str,
        admin_token: &str,
        log_dir: &std::path::Path,
        extra_env: Vec<(String, String)>,
    ) -> Result<Self> {
        let setup = InstanceSetup {
            env: extra_env,
            args: Vec::new(),
        };
        Self::start_each(database_url, admin_token, log_dir, vec![setup; count]).await
    }

    /// Starts one instance per entry of `setups` and waits until each answers `/healthz`.
    pub async fn start_each(
        database_url: &str,
        admin_token: &str,
        log_dir: &std::path::Path,
        setups: Vec<InstanceSetup>,
    ) -> Result<Self> {
        let count = setups.len();
        Self::start_first(database_url, admin_token, log_dir, setups, count).await
    }

    /// As `start_each`, but starts only the first `running` instances: the others wait for
    /// `start_again` (an instance that joins late).
    pub async fn start_first(
        database_url: &str,
        admin_token: &str,
        log_dir: &std::path::Path,
        setups: Vec<InstanceSetup>,
        running: usize,
    ) -> Result<Self> {
        let count = setups.len();
        let mut instances = Vec::new();
        for i in 0..count {
            let port = free_port()?;
            instances.push(Instance {
                name: format!("app-{}", (b'a' + i as u8) as char),
                url: format!("http://127.0.0.1:{port}"),
                bind: format!("127.0.0.1:{port}"),
                child: None,
                log: log_dir.join(format!("app-{}.log", (b'a' + i as u8) as char)),
            });
        }
        let rotation = Rotation::new(instances.iter().map(|i| i.url.clone()).collect());
        let mut fleet = Fleet {
            instances,
            rotation,
            database_url: database_url.to_owned(),
            admin_token: admin_token.to_owned(),
            setups,
            earlier_replica_reads: 0,
        };
        for i in 0..running {
            fleet.spawn(i)?;
        }
        for i in 0..running {
            fleet.wait_healthy(i).await?;
            fleet.rotation.set(i, true);
        }
        Ok(fleet)
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let instance = &mut self.instances[index];
        let name = &instance.name;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&instance.log)
            .with_context(|| format!("opening the log of {name}, {}", instance.log.display()))?;
        let stdout = log
            .try_clone()
            .with_context(|| format!("opening the log of {name}"))?;
        let exe = std::env::current_exe().context("finding the zdm executable")?;
        let child = Command::new(exe)
            .arg("serve")
            .args(&self.setups[index].args)
            .env("DATABASE_URL", &self.database_url)
            .env("ZDM_BIND", &instance.bind)
            .env("ADMIN_TOKEN", &self.admin_token)
            .env("ZDM_POOL_SIZE", "8")
            // A demo's phases last seconds: the contract waits one second with no client of
            // full_name, not the default five minutes.
            .env("ZDM_CONTRACT_QUIET_SECS", "1")
            .env("RUST_LOG", "warn")
            .envs(
                self.setups[index]
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting instance {name}"))?;
        instance.child = Some(child);
        Ok(())
    }

    /// Waits (up to 30 s) until the instance answers `/healthz` with 200, as itself: not
    /// another process that took its port while it was down.
    pub async fn wait_healthy(&self, index: usize) -> Result<()> {
        let instance = &self.instances[index];
        wait_until_healthy(&instance.url, self.pid(index), Duration::from_secs(30))
            .await
            .with_context(|| {
                format!(
                    "{} did not become healthy; see {}",
                    instance.name,
                    instance.log.display()
                )
            })
    }

    /// The phase each instance in rotation reports having applied (an instance out of it,
    /// stopped or frozen, learns the phase when it comes back, before it takes requests).
    pub async fn applied_phases(&self) -> Vec<Option<String>> {
        let client = reqwest::Client::new();
        let mut phases = Vec::new();
        for (index, instance) in self.instances.iter().enumerate() {
            if !self.rotation.is_up(index) {
                continue;
            }
            let phase = match client
                .get(format!("{}/healthz", instance.url))
                .timeout(Duration::from_secs(1))
                .send()
                .await
            {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["phase"].as_str().map(str::to_owned)),
                Err(_) => None,
            };
            phases.push(phase);
        }
        phases
    }

    /// Waits until every instance has applied `phase` (they follow the stored phase).
    pub async fn wait_applied(&self, phase: &str) -> Result<Duration> {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(15) {
            if self
                .applied_phases()
                .await
                .iter()
                .all(|p| p.as_deref() == Some(phase))
            {
                return Ok(started.elapsed());
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "the instances did not all apply {phase}: {:?}",
            self.applied_phases().await
        )
    }

    /// A rolling restart of one instance: out of rotation, wait for its requests in flight,
    /// SIGTERM (graceful shutdown), start it again, back into rotation once healthy.
    pub async fn rolling_restart(&mut self, index: usize) -> Result<Duration> {
        let started = Instant::now();
        self.rotation.set(index, false);
        actix_web::rt::time::sleep(Duration::from_millis(300)).await;
        self.earlier_replica_reads += self.replica_reads_of(index).await;
        let name = self.instances[index].name.clone();
        if let Some(mut child) = self.instances[index].child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            kill(pid, Signal::SIGTERM).with_context(|| format!("stopping {name} (SIGTERM)"))?;
            let waited = actix_web::rt::task::spawn_blocking(move || child.wait()).await;
            waited
                .context("the wait for the instance panicked")?
                .with_context(|| format!("waiting for {name} to stop"))?;
        }
        self.spawn(index)?;
        self.wait_healthy(index).await?;
        self.rotation.set(index, true);
        Ok(started.elapsed())
    }

    /// `kill -9` of an instance, out of rotation at once (its requests in flight are lost).
    pub async fn kill(&mut self, index: usize) -> Result<()> {
        self.rotation.fault(index);
        self.earlier_replica_reads += self.replica_reads_of(index).await;
        if let Some(mut child) = self.instances[index].child.take() {
            let name = &self.instances[index].name;
            child.kill().with_context(|| format!("killing {name}"))?;
            child
                .wait()
                .with_context(|| format!("waiting for {name} to die"))?;
        }
        Ok(())
    }

    /// `SIGSTOP` (`frozen`) or `SIGCONT` of an instance; frozen, it is out of rotation.
    pub fn freeze(&mut self, index: usize, frozen: bool) -> Result<()> {
        let Some(pid) = self.pid(index) else {
            bail!("{} does not run", self.instances[index].name);
        };
        if frozen {
            self.rotation.fault(index);
        }
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("{signal} to {}", self.instances[index].name))
    }

    /// Starts an instance that is not running (killed, or never started) and puts it in
    /// rotation once healthy; an instance that runs (thawed) goes back once healthy.
    pub async fn start_again(&mut self, index: usize) -> Result<()> {
        if self.instances[index].child.is_none() {
            self.spawn(index)?;
        }
        self.wait_healthy(index).await?;
        self.rotation.back(index);
        Ok(())
    }

    /// Whether an instance is in rotation.
    pub fn is_up(&self, index: usize) -> bool {
        self.rotation.is_up(index)
    }

    /// Reads of user data that replicas answered, over the whole run of the fleet.
    pub async fn replica_reads(&self) -> u64 {
        let mut total = self.earlier_replica_reads;
        for index in 0..self.instances.len() {
            total += self.replica_reads_of(index).await;
        }
        total
    }

    /// The `zdm_user_reads_total{server="replica"}` counter of one instance (0 if it cannot
    /// be read).
    async fn replica_reads_of(&self, index: usize) -> u64 {
        let text = match reqwest::get(format!("{}/metrics", self.instances[index].url)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return 0,
        };
        text.lines()
            .find_map(|line| line.strip_prefix("zdm_user_reads_total{server=\"replica\"} "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map_or(0, |value| value as u64)
    }

    /// The process id of an instance, while it runs.
    pub fn pid(&self, index: usize) -> Option<u32> {
        self.instances[index].child.as_ref().map(|c| c.id())
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// Stops every instance (SIGTERM, then SIGKILL after 10 s).
    pub fn stop(&mut self) {
        for instance in &mut self.instances {
            if let Some(mut child) = instance.child.take() {
                // A frozen one first thaws, to shut down gracefully.
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
                let started = Instant::now();
                while started.elapsed() < Duration::from_secs(10) {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits, up to `within`, until the `zdm serve` at `base` answers `/healthz` with 200 (every
/// 100 ms, each look given 1 s); else an error saying what it answered last. With `pid`, the
/// answer must come from that process (an instance's id carries its pid): another one there
/// took the port, and waiting longer will not help.
pub async fn wait_until_healthy(base: &str, pid: Option<u32>, within: Duration) -> Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{base}/healthz");
    let started = Instant::now();
    loop {
        let last = match client
            .get(&url)
            .timeout(Duration::from_secs(1))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let health: serde_json::Value = r.json().await.unwrap_or_default();
                let id = health["instance"].as_str().unwrap_or_default();
                match pid {
                    Some(pid) if !id.contains(&format!("-{pid}-")) => {
                        bail!("{base} is answered by another process ({id:?}), not pid {pid}")
                    }
                    _ => return Ok(()),
                }
            }
            Ok(r) => format!("/healthz answered {}", r.status()),
            Err(e) => e.to_string(),
        };
        if started.elapsed() >= within {
            bail!("{base} did not answer /healthz within {within:?}: {last}");
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_lost_with_its_instance_is_the_faults_and_no_other_is() {
        let rotation = Rotation::new(vec!["http://a".to_owned(), "http://b".to_owned()]);
        rotation.set(0, true);
        rotation.set(1, true);
        let sent = Instant::now();
        // No fault yet: a lost request is a failure.
        assert!(!rotation.lost_to_a_fault("http://a/api/v1/users/1", sent));
        std::thread::sleep(Duration::from_millis(5));
        rotation.fault(0);
        // Sent before the instance went down, or while it is down: the fault's.
        assert!(rotation.lost_to_a_fault("http://a/api/v1/users/1", sent));
        assert!(rotation.lost_to_a_fault("http://a/healthz", Instant::now()));
        // The other instance had no fault.
        assert!(!rotation.lost_to_a_fault("http://b/api/v1/users/1", sent));
        rotation.back(0);
        // Just back: a pooled connection to its old process may still fail.
        assert!(rotation.lost_to_a_fault("http://a/x", Instant::now()));
    }
}
