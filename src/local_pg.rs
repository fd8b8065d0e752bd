//! A private PostgreSQL cluster for development and tests, used when `DATABASE_URL` is unset.
//!
//! On first use it runs `initdb` under a git-ignored folder (`.zdm/` by default), then starts
//! the server with `pg_ctl` on a unix socket only (no TCP port is opened) and reuses it on later
//! runs. PostgreSQL refuses to run as root, so when this process is root the server binaries run
//! as the unprivileged `postgres` system user. A file lock serialises set-up, so two processes
//! starting at once cannot both run `initdb` or `pg_ctl start` on the same folder.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diesel::prelude::*;
use diesel::sql_types::Text;
use nix::unistd::{Gid, Uid, User};

/// The superuser `initdb` creates; connections over the private socket use trust auth.
const SUPERUSER: &str = "postgres";
/// The port only names the socket file (`.s.PGSQL.<port>`); no TCP listener is opened.
const PORT: u16 = 5432;
/// Settings the private server starts with, on top of PostgreSQL's defaults, which are sized
/// for a small machine: with `max_wal_size = 1GB` a backfill of millions of rows makes a
/// checkpoint every few seconds ("checkpoints are occurring too frequently", says its log),
/// and after each one every page it touches writes its whole image to the WAL again. Common
/// production values; WAL beyond `min_wal_size` is recycled once the burst is over.
const SERVER_SETTINGS: &[(&str, &str)] = &[
    ("shared_buffers", "1GB"),
    ("max_wal_size", "8GB"),
    ("checkpoint_timeout", "15min"),
    // The contract's client check reads which statements still use full_name.
    ("shared_preload_libraries", "pg_stat_statements"),
    // Room for the statements of many databases (a test run makes hundreds), so that entries
    // the contract watches are not evicted by others' churn (an eviction counts as a use).
    ("pg_stat_statements.max", "20000"),
];
/// Unix socket paths are limited to about 107 bytes; longer folders get a socket under /tmp.
const MAX_SOCKET_DIR_LEN: usize = 80;

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH, in `pg_config --bindir` \
         or in /usr/lib/postgresql/*/bin.\n\
         Install them (Debian/Ubuntu: `apt-get install postgresql`; Fedora: `dnf install postgresql-server`; \
         macOS: `brew install postgresql`), or set DATABASE_URL to use a PostgreSQL server you already run."
    )]
    BinariesNotFound,
    #[error(
        "the cluster in {data_dir} was made by PostgreSQL {wanted}, but only these server binaries were found: {found}. \
         Install PostgreSQL {wanted}, or move {data_dir} away to start a fresh cluster"
    )]
    VersionMismatch {
        data_dir: String,
        wanted: String,
        found: String,
    },
    #[error(
        "running as root, but there is no unprivileged `postgres` user to run the server as \
         (PostgreSQL refuses to run as root). Create one (`useradd --system postgres`) or run as a normal user"
    )]
    NoServerUser,
    #[error("{what} failed: {detail}")]
    Command { what: String, detail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("could not set up the database {name}: {source}")]
    Database {
        name: String,
        #[source]
        source: diesel::result::Error,
    },
    #[error("could not connect to the private PostgreSQL: {0}")]
    Connect(#[from] diesel::ConnectionError),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalPgError {
    let context = context.into();
    move |source| LocalPgError::Io { context, source }
}

/// Where to look for the server binaries; a parameter so the search itself can be tested.
#[derive(Debug, Clone)]
pub struct BinarySearch {
    pub path: Option<OsString>,
    pub pg_config: PathBuf,
    pub lib_root: PathBuf,
}

impl Default for BinarySearch {
    fn default() -> Self {
        Self {
            path: std::env::var_os("PATH"),
            pg_config: PathBuf::from("pg_config"),
            lib_root: PathBuf::from("/usr/lib/postgresql"),
        }
    }
}

impl BinarySearch {
    /// Folders holding both `initdb` and `pg_ctl`, in the order of preference: PATH,
    /// `pg_config --bindir`, then `/usr/lib/postgresql/*/bin` newest version first.
    pub fn candidates(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Some(path) = &self.path {
            dirs.extend(std::env::split_paths(path));
        }
        if let Ok(out) = Command::new(&self.pg_config).arg("--bindir").output()
            && out.status.success()
        {
            dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
        if let Ok(entries) = fs::read_dir(&self.lib_root) {
            let mut versioned: Vec<(Vec<u32>, PathBuf)> = entries
                .filter_map(Result::ok)
                .map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let version = name.split('.').filter_map(|p| p.parse().ok()).collect();
                    (version, e.path().join("bin"))
                })
                .collect();
            versioned.sort_by(|a, b| b.0.cmp(&a.0));
            dirs.extend(versioned.into_iter().map(|(_, dir)| dir));
        }
        let mut found: Vec<PathBuf> = Vec::new();
        for dir in dirs {
            let complete = dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
            if complete && !found.contains(&dir) {
                found.push(dir);
            }
        }
        found
    }
}

/// The major version a server binary folder reports (`pg_ctl --version` → "15").
fn major_version(bin_dir: &Path) -> Option<String> {
    let out = Command::new(bin_dir.join("pg_ctl"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().last()?;
    version.split('.').next().map(str::to_owned)
}

/// A running private cluster, reachable over its unix socket.
#[derive(Debug, Clone)]
pub struct LocalPg {
    pub base_dir: PathBuf,
    pub data_dir: PathBuf,
    pub socket_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: Option<(Uid, Gid)>,
    /// Whether this call started the server (rather than finding it running).
    pub started_here: bool,
}

impl LocalPg {
    /// Starts (initialising on first use) the private cluster under `base_dir`, or attaches to
    /// it when it already runs. Safe to call from several processes at once.
    pub fn ensure_running(base_dir: &Path) -> Result<Self, LocalPgError> {
        Self::ensure_running_with(base_dir, &BinarySearch::default())
    }

    pub fn ensure_running_with(
        base_dir: &Path,
        search: &BinarySearch,
    ) -> Result<Self, LocalPgError> {
        let run_as = server_user()?;
        let base_dir = usable_base_dir(base_dir, run_as)?;
        let _lock = lock_base_dir(&base_dir, run_as)?;

        let data_dir = base_dir.join("pgdata");
        let bin_dir = choose_binaries(&data_dir, search)?;
        let socket_dir = socket_dir_for(&base_dir);
        let mut pg = LocalPg {
            base_dir,
            data_dir,
            socket_dir,
            bin_dir,
            run_as,
            started_here: false,
        };
        if !pg.data_dir.join("PG_VERSION").is_file() {
            pg.init_cluster()?;
        }
        if !pg.is_running() {
            pg.start()?;
            pg.started_here = true;
        }
        Ok(pg.with_socket_from_pid_file())
    }

    /// A libpq URL for `database` over the private socket.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres:///{database}?host={}&port={PORT}&user={SUPERUSER}",
            percent_encode(&self.socket_dir.to_string_lossy())
        )
    }

    /// Creates `name` if it does not exist yet (the app's database on first run).
    pub fn create_database_if_missing(&self, name: &str) -> Result<(), LocalPgError> {
        let mut conn = PgConnection::establish(&self.url("postgres"))?;
        create_database_if_missing(&mut conn, name).map_err(|source| LocalPgError::Database {
            name: name.to_owned(),
            source,
        })
    }

    /// Starts (creating it on first use) streaming replica number `index` of this private
    /// primary, in `<base>/replica-<index>`, on a unix socket of its own. The replica is made
    /// with `pg_basebackup -R` (hot standby, following the primary over a streaming
    /// replication connection on the primary's socket) and reused by later calls.
    pub fn ensure_replica(&self, index: usize) -> Result<LocalPg, LocalPgError> {
        let base_dir =
            usable_base_dir(&self.base_dir.join(format!("replica-{index}")), self.run_as)?;
        let _lock = lock_base_dir(&base_dir, self.run_as)?;
        let mut replica = LocalPg {
            data_dir: base_dir.join("pgdata"),
            socket_dir: socket_dir_for(&base_dir),
            base_dir,
            bin_dir: self.bin_dir.clone(),
            run_as: self.run_as,
            started_here: false,
        };
        if !replica.data_dir.join("PG_VERSION").is_file() {
            replica.clone_primary(self)?;
        }
        if !replica.is_running() {
            replica.start()?;
            replica.started_here = true;
        }
        Ok(replica.with_socket_from_pid_file())
    }

    /// A base backup of `primary` into place, configured to stream from it.
    fn clone_primary(&self, primary: &LocalPg) -> Result<(), LocalPgError> {
        let scratch = self.base_dir.join("pgdata.init");
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(io_err("removing an unfinished base backup"))?;
        }
        log::info!(
            "cloning the private primary into a replica in {}",
            self.data_dir.display()
        );
        let out = self
            .command("pg_basebackup")
            .arg("-D")
            .arg(&scratch)
            .args([
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-U",
                SUPERUSER,
                "-p",
                &PORT.to_string(),
            ])
            .arg("-h")
            .arg(&primary.socket_dir)
            .output()
            .map_err(io_err("running pg_basebackup"))?;
        check(out, "pg_basebackup")?;
        // The name the replica streams under (its walreceiver's application_name), which a
        // primary's `synchronous_standby_names` refers to.
        let auto_conf = scratch.join("postgresql.auto.conf");
        let mut text =
            fs::read_to_string(&auto_conf).map_err(io_err("reading postgresql.auto.conf"))?;
        text.push_str(&format!("cluster_name = '{}'\n", self.standby_name()));
        fs::write(&auto_conf, text).map_err(io_err("writing postgresql.auto.conf"))?;
        fs::rename(&scratch, &self.data_dir).map_err(io_err("moving the replica into place"))
    }

    /// The name this replica streams under: `zdm_` and its folder's name (`zdm_replica_1`).
    pub fn standby_name(&self) -> String {
        let folder = self
            .base_dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy();
        format!("zdm_{}", folder.replace('-', "_"))
    }

    /// Makes `standby` (a replica of this primary) synchronous: from now on a commit here is
    /// acknowledged only once the standby has flushed it (`synchronous_commit = on`), so a
    /// failover to it loses no acknowledged write. Set with `ALTER SYSTEM` on this primary
    /// only, after the standby was cloned: a promoted standby does not wait for a standby of
    /// its own (an HA manager clears the setting on promotion for the same reason). Returns
    /// once the primary reports the standby as `sync` (within 60 s).
    pub fn make_synchronous(&self, standby: &LocalPg) -> Result<(), LocalPgError> {
        let name = standby.standby_name();
        let mut conn = PgConnection::establish(&self.url("postgres"))?;
        let database = |source| LocalPgError::Database {
            name: "postgres".to_owned(),
            source,
        };
        // ALTER SYSTEM runs outside any transaction, so one statement at a time.
        for sql in [
            format!(
                "ALTER SYSTEM SET synchronous_standby_names = '{}'",
                quote_ident(&name)
            ),
            "ALTER SYSTEM SET synchronous_commit = on".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            diesel::sql_query(sql)
                .execute(&mut conn)
                .map_err(database)?;
        }
        let started = std::time::Instant::now();
        loop {
            let sync: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
                "EXISTS (SELECT FROM pg_stat_replication WHERE sync_state = 'sync' AND application_name = ",
            )
            .bind::<Text, _>(&name)
            .sql(")"))
            .get_result(&mut conn)
            .map_err(database)?;
            if sync {
                return Ok(());
            }
            if started.elapsed() > std::time::Duration::from_secs(60) {
                return Err(LocalPgError::Command {
                    what: format!("making {name} a synchronous standby"),
                    detail: "the primary did not report it as sync within 60 s".to_owned(),
                });
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Promotes this standby to a primary (`pg_ctl promote`, as an HA manager does when the
    /// primary is lost), returning once it accepts writes.
    pub fn promote(&self) -> Result<(), LocalPgError> {
        let out = self
            .command("pg_ctl")
            .arg("promote")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", "60"])
            .output()
            .map_err(io_err("running pg_ctl promote"))?;
        check(out, "pg_ctl promote")
    }

    /// The postmaster's process id (the first line of `postmaster.pid`), for a test or a demo
    /// that kills the server as a crash would.
    pub fn postmaster_pid(&self) -> Result<i32, LocalPgError> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .map_err(io_err("reading postmaster.pid"))?;
        text.lines()
            .next()
            .and_then(|line| line.trim().parse().ok())
            .ok_or_else(|| LocalPgError::Command {
                what: "reading postmaster.pid".to_owned(),
                detail: "no process id on its first line".to_owned(),
            })
    }

    /// A libpq URL for `database` naming every server of `servers` in turn, taking the first
    /// that accepts writes (`target_session_attrs=read-write`): what an application uses to
    /// follow a failover by itself.
    pub fn multi_host_url(servers: &[&LocalPg], database: &str) -> String {
        let hosts: Vec<String> = servers
            .iter()
            .map(|pg| percent_encode(&pg.socket_dir.to_string_lossy()))
            .collect();
        let ports: Vec<String> = servers.iter().map(|_| PORT.to_string()).collect();
        format!(
            "postgres:///{database}?host={}&port={}&user={SUPERUSER}&target_session_attrs=read-write",
            hosts.join(","),
            ports.join(",")
        )
    }

    /// Stops the server (fast shutdown: open sessions are ended, data is flushed).
    pub fn stop(&self) -> Result<(), LocalPgError> {
        let out = self
            .command("pg_ctl")
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w"])
            .output()
            .map_err(io_err("running pg_ctl stop"))?;
        check(out, "pg_ctl stop")
    }

    /// A server program: next to the chosen `initdb`, or else in another folder of the same
    /// installation (a PATH folder may hold only some of them).
    fn program(&self, program: &str) -> PathBuf {
        let here = self.bin_dir.join(program);
        if here.is_file() {
            return here;
        }
        let wanted = major_version(&self.bin_dir);
        BinarySearch::default()
            .candidates()
            .into_iter()
            .map(|dir| dir.join(program))
            .find(|p| p.is_file() && p.parent().and_then(major_version) == wanted)
            .unwrap_or(here)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.program(program));
        cmd.current_dir(&self.base_dir);
        // Keep libpq settings of the caller (PGHOST, PGPORT...) away from the tools we drive.
        for var in ["PGHOST", "PGPORT", "PGDATA", "PGUSER", "PGDATABASE"] {
            cmd.env_remove(var);
        }
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid.as_raw()).gid(gid.as_raw());
        }
        cmd
    }

    fn init_cluster(&self) -> Result<(), LocalPgError> {
        // initdb into a scratch folder and rename it into place, so a crash half-way leaves
        // nothing that looks like a cluster.
        let scratch = self.base_dir.join("pgdata.init");
        if scratch.exists() {
            fs::remove_dir_all(&scratch).map_err(io_err("removing an unfinished initdb"))?;
        }
        log::info!(
            "initialising a private PostgreSQL cluster in {}",
            self.data_dir.display()
        );
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(&scratch)
            .args(["-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale"])
            .output()
            .map_err(io_err("running initdb"))?;
        check(out, "initdb")?;
        let conf = scratch.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).map_err(io_err("reading postgresql.conf"))?;
        text.push_str(
            "\n# zdm: a private cluster reached over a unix socket only.\n\
             listen_addresses = ''\n\
             max_connections = 300\n\
             include_if_exists = 'zdm_socket.conf'\n",
        );
        fs::write(&conf, text).map_err(io_err("writing postgresql.conf"))?;
        fs::rename(&scratch, &self.data_dir).map_err(io_err("moving the new cluster into place"))
    }

    fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .arg("status")
            .arg("-D")
            .arg(&self.data_dir)
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    }

    fn start(&self) -> Result<(), LocalPgError> {
        fs::create_dir_all(&self.socket_dir).map_err(io_err("creating the socket folder"))?;
        self.chown(&self.socket_dir)?;
        // The socket folder is written on every start so a moved project keeps working.
        let socket_conf = format!(
            "unix_socket_directories = '{}'\nport = {PORT}\n",
            self.socket_dir.to_string_lossy().replace('\'', "''")
        );
        let conf_path = self.data_dir.join("zdm_socket.conf");
        fs::write(&conf_path, socket_conf).map_err(io_err("writing zdm_socket.conf"))?;
        self.chown(&conf_path)?;
        let log_file = self.base_dir.join("postgres.log");
        log::info!(
            "starting the private PostgreSQL (log: {})",
            log_file.display()
        );
        let out = self
            .command("pg_ctl")
            .arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log_file)
            .arg("-o")
            .arg(server_options())
            .args(["-w", "-t", "60"])
            .output()
            .map_err(io_err("running pg_ctl start"))?;
        check(out, "pg_ctl start").map_err(|err| match err {
            LocalPgError::Command { what, detail } => LocalPgError::Command {
                what,
                detail: format!("{detail}\n{}", tail(&log_file, 2000)),
            },
            other => other,
        })
    }

    /// The running server's socket folder is line 5 of `postmaster.pid`; trust it over our guess
    /// in case the server was started from elsewhere.
    fn with_socket_from_pid_file(mut self) -> Self {
        if let Ok(pid_file) = fs::read_to_string(self.data_dir.join("postmaster.pid"))
            && let Some(dir) = pid_file.lines().nth(4).filter(|l| !l.trim().is_empty())
        {
            self.socket_dir = PathBuf::from(dir.trim());
        }
        self
    }

    fn chown(&self, path: &Path) -> Result<(), LocalPgError> {
        chown_to(path, self.run_as)
    }
}

/// `SERVER_SETTINGS` as options of the server's command line.
fn server_options() -> String {
    SERVER_SETTINGS
        .iter()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn chown_to(path: &Path, run_as: Option<(Uid, Gid)>) -> Result<(), LocalPgError> {
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(path, Some(uid.as_raw()), Some(gid.as_raw())).map_err(io_err(
            format!("handing {} to the postgres user", path.display()),
        ))?;
    }
    Ok(())
}

/// `None` when we can run the server ourselves; the `postgres` user when we are root.
pub(crate) fn server_user() -> Result<Option<(Uid, Gid)>, LocalPgError> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name(SUPERUSER) {
        Ok(Some(user)) => Ok(Some((user.uid, user.gid))),
        _ => Err(LocalPgError::NoServerUser),
    }
}

/// The server user must be able to reach the folder. When root runs from a folder the
/// `postgres` user cannot enter (under /root, say), the cluster lives under the system's temp
/// folder instead, named after the requested folder so each checkout keeps its own.
fn usable_base_dir(base_dir: &Path, run_as: Option<(Uid, Gid)>) -> Result<PathBuf, LocalPgError> {
    fs::create_dir_all(base_dir).map_err(io_err(format!("creating {}", base_dir.display())))?;
    let base_dir = base_dir
        .canonicalize()
        .map_err(io_err(format!("resolving {}", base_dir.display())))?;
    let Some((uid, gid)) = run_as else {
        return Ok(base_dir);
    };
    let reachable = Command::new("/bin/sh")
        .args(["-c", "cd \"$1\"", "sh"])
        .arg(&base_dir)
        .uid(uid.as_raw())
        .gid(gid.as_raw())
        .current_dir("/")
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false);
    let dir = if reachable {
        base_dir
    } else {
        let fallback = std::env::temp_dir().join(format!("zdm-{:016x}", fnv1a(&base_dir)));
        log::warn!(
            "the postgres user cannot enter {}; keeping the private cluster in {}",
            base_dir.display(),
            fallback.display()
        );
        fs::create_dir_all(&fallback)
            .map_err(io_err(format!("creating {}", fallback.display())))?;
        fallback
    };
    chown_to(&dir, run_as)?;
    Ok(dir)
}

/// Holds an exclusive lock on `<base>/lock` until dropped.
fn lock_base_dir(base_dir: &Path, run_as: Option<(Uid, Gid)>) -> Result<File, LocalPgError> {
    let path = base_dir.join("lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    chown_to(&path, run_as)?;
    file.lock()
        .map_err(io_err(format!("locking {}", path.display())))?;
    Ok(file)
}

fn choose_binaries(data_dir: &Path, search: &BinarySearch) -> Result<PathBuf, LocalPgError> {
    let candidates = search.candidates();
    if candidates.is_empty() {
        return Err(LocalPgError::BinariesNotFound);
    }
    // An existing cluster can only be run by binaries of the major version that made it.
    let Ok(wanted) = fs::read_to_string(data_dir.join("PG_VERSION")) else {
        return Ok(candidates[0].clone());
    };
    let wanted = wanted.trim().to_owned();
    let versions: Vec<(PathBuf, Option<String>)> = candidates
        .into_iter()
        .map(|dir| {
            let version = major_version(&dir);
            (dir, version)
        })
        .collect();
    if let Some((dir, _)) = versions
        .iter()
        .find(|(_, v)| v.as_deref() == Some(wanted.as_str()))
    {
        return Ok(dir.clone());
    }
    let found = versions
        .iter()
        .map(|(dir, v)| format!("{} ({})", dir.display(), v.as_deref().unwrap_or("?")))
        .collect::<Vec<_>>()
        .join(", ");
    Err(LocalPgError::VersionMismatch {
        data_dir: data_dir.display().to_string(),
        wanted,
        found,
    })
}

fn socket_dir_for(base_dir: &Path) -> PathBuf {
    let preferred = base_dir.join("run");
    if preferred.as_os_str().len() <= MAX_SOCKET_DIR_LEN {
        preferred
    } else {
        PathBuf::from(format!("/tmp/zdm-{:016x}", fnv1a(base_dir)))
    }
}

/// A stable short name for a folder (FNV-1a of its path).
fn fnv1a(path: &Path) -> u64 {
    path.as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        })
}

fn check(out: Output, what: &str) -> Result<(), LocalPgError> {
    if out.status.success() {
        return Ok(());
    }
    Err(LocalPgError::Command {
        what: what.to_owned(),
        detail: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .trim()
        .to_owned(),
    })
}

fn tail(path: &Path, max: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let start = text.len().saturating_sub(max);
    let start = (start..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    format!("server log ({}):\n{}", path.display(), &text[start..])
}

/// Percent-encodes a socket path for a libpq URL query value.
pub(crate) fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"/-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    exists: bool,
}

/// A private PostgreSQL of its own (primary and replicas) under `base`, for a test or a
/// benchmark that stops, restarts or clones it without disturbing anything else. Stopped and
/// removed, replicas included, when dropped (also on a failure or a panic).
pub struct ScratchCluster {
    pub base: PathBuf,
    replicas: Vec<LocalPg>,
}

impl ScratchCluster {
    /// A fresh cluster under `base` (whatever a killed earlier run left there is removed).
    pub fn new(base: PathBuf) -> Self {
        let _ = fs::remove_dir_all(&base);
        Self {
            base,
            replicas: Vec::new(),
        }
    }

    /// The primary, started (created on first use).
    pub fn primary(&self) -> Result<LocalPg, LocalPgError> {
        LocalPg::ensure_running(&self.base)
    }

    /// Streaming replica number 1 of the primary, stopped with the cluster.
    pub fn replica(&mut self, primary: &LocalPg) -> Result<LocalPg, LocalPgError> {
        let replica = primary.ensure_replica(1)?;
        self.replicas.push(replica.clone());
        Ok(replica)
    }

    /// Replica number 1 as a synchronous standby of the primary (see
    /// `LocalPg::make_synchronous`): a failover to it loses no acknowledged write.
    pub fn synchronous_standby(&mut self, primary: &LocalPg) -> Result<LocalPg, LocalPgError> {
        let standby = self.replica(primary)?;
        primary.make_synchronous(&standby)?;
        Ok(standby)
    }
}

impl Drop for ScratchCluster {
    fn drop(&mut self) {
        for replica in &self.replicas {
            let _ = replica.stop();
        }
        // A primary killed on purpose (a failover) stays down: it is not started to be stopped.
        if postmaster_alive(&self.base.join("pgdata"))
            && let Ok(pg) = LocalPg::ensure_running(&self.base)
        {
            let _ = pg.stop();
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Whether the postmaster named by `data_dir`'s `postmaster.pid` is alive.
fn postmaster_alive(data_dir: &Path) -> bool {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
        .is_some_and(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok())
}

/// Creates the database `name` when missing, on a connection to any other database.
pub fn create_database_if_missing(conn: &mut PgConnection, name: &str) -> QueryResult<()> {
    let found =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1) AS exists")
            .bind::<Text, _>(name)
            .get_result::<Exists>(conn)?;
    if !found.exists {
        diesel::sql_query(format!("CREATE DATABASE {}", quote_ident(name))).execute(conn)?;
    }
    Ok(())
}

/// Quotes an SQL identifier (database names cannot be bound as parameters).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_binaries_gives_one_clear_error_naming_the_package_and_database_url() {
        let empty = std::env::temp_dir().join(format!("zdm-empty-{}", std::process::id()));
        fs::create_dir_all(&empty).unwrap();
        let search = BinarySearch {
            path: Some(empty.clone().into_os_string()),
            pg_config: empty.join("no-pg_config"),
            lib_root: empty.join("no-lib"),
        };
        let err = choose_binaries(&empty.join("pgdata"), &search).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("apt-get install postgresql"), "{text}");
        assert!(text.contains("DATABASE_URL"), "{text}");
        fs::remove_dir_all(&empty).unwrap();
    }

    #[test]
    fn urls_encode_the_socket_folder() {
        assert_eq!(percent_encode("/tmp/a b/run"), "/tmp/a%20b/run");
        assert_eq!(percent_encode("/x/é"), "/x/%C3%A9");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("zdm"), "\"zdm\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
