//! A private PostgreSQL cluster for development and tests, used when `DATABASE_URL` is unset.
//!
//! On first use it runs `initdb` under a git-ignored folder (`.zdm/` by default), then starts
//! the server with `pg_ctl` on a unix socket only (no TCP port is opened) and reuses it on later
//! runs. PostgreSQL refuses to run as root, so when this process is root the server binaries run
//! as the unprivileged `postgres` system user. A file lock serialises set-up, so two processes
//! starting at once cannot both run `initdb` or `pg_ctl start` on the same folder.
//!
//! Here: the cluster itself (set up, started, stopped). Its streaming replicas are in
//! `replica`, the search for the server binaries in `binaries`, and a throwaway cluster for
//! a test or a benchmark in `scratch`.

mod binaries;
mod replica;
mod scratch;

pub use binaries::BinarySearch;
pub use scratch::ScratchCluster;

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use diesel::prelude::*;
use nix::unistd::{Gid, Uid, User};

use self::binaries::{choose_binaries, major_version};
use crate::fnv::Fnv1a;

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

        let bin_dir = choose_binaries(&base_dir.join("pgdata"), search)?;
        let mut pg = LocalPg::at(base_dir, bin_dir, run_as);
        if !pg.data_dir.join("PG_VERSION").is_file() {
            pg.init_cluster()?;
        }
        if !pg.is_running() {
            pg.start()?;
            pg.started_here = true;
        }
        Ok(pg.with_socket_from_pid_file())
    }

    /// The cluster in `base_dir` (its data in `pgdata`), run by `bin_dir`'s binaries as
    /// `run_as`; not started.
    fn at(base_dir: PathBuf, bin_dir: PathBuf, run_as: Option<(Uid, Gid)>) -> Self {
        LocalPg {
            data_dir: base_dir.join("pgdata"),
            socket_dir: socket_dir_for(&base_dir),
            base_dir,
            bin_dir,
            run_as,
            started_here: false,
        }
    }

    /// Stops the private cluster under `base_dir` and its replicas, if they run, without
    /// starting or creating anything (`zdm db stop`). Returns the folders of those it stopped,
    /// replicas first.
    pub fn stop_all(base_dir: &Path) -> Result<Vec<PathBuf>, LocalPgError> {
        if !base_dir.is_dir() {
            return Ok(Vec::new());
        }
        let run_as = server_user()?;
        let base_dir = usable_base_dir(base_dir, run_as)?;
        let mut folders: Vec<PathBuf> = fs::read_dir(&base_dir)
            .map_err(io_err(format!("reading {}", base_dir.display())))?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().starts_with("replica-"))
            .map(|e| e.path())
            .collect();
        folders.sort();
        folders.push(base_dir);
        let mut stopped = Vec::new();
        for folder in folders {
            let data_dir = folder.join("pgdata");
            if !data_dir.join("PG_VERSION").is_file() {
                continue;
            }
            let _lock = lock_base_dir(&folder, run_as)?;
            let bin_dir = choose_binaries(&data_dir, &BinarySearch::default())?;
            let pg = LocalPg::at(folder, bin_dir, run_as);
            if pg.is_running() {
                pg.stop()?;
                stopped.push(pg.base_dir);
            }
        }
        Ok(stopped)
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
        crate::db::databases::create_if_missing(&mut conn, name).map_err(|source| {
            LocalPgError::Database {
                name: name.to_owned(),
                source,
            }
        })
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
        let fallback = std::env::temp_dir().join(format!("zdm-{:016x}", folder_hash(&base_dir)));
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

fn socket_dir_for(base_dir: &Path) -> PathBuf {
    let preferred = base_dir.join("run");
    if preferred.as_os_str().len() <= MAX_SOCKET_DIR_LEN {
        preferred
    } else {
        PathBuf::from(format!("/tmp/zdm-{:016x}", folder_hash(base_dir)))
    }
}

/// A stable short name for a folder: the hash of its path.
fn folder_hash(path: &Path) -> u64 {
    Fnv1a::of(path.as_os_str().as_encoded_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_the_socket_folder() {
        assert_eq!(percent_encode("/tmp/a b/run"), "/tmp/a%20b/run");
        assert_eq!(percent_encode("/x/é"), "/x/%C3%A9");
    }
}
