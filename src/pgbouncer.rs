//! A PgBouncer of zdm's own in transaction mode, in front of a PostgreSQL server: what the
//! tests put between the instances and the database, as production does (DESIGN §6). Its
//! configuration is written to a folder of its own, it listens on a unix socket there, and it
//! stops (and the folder goes) when the value is dropped.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The port only names the socket file (`.s.PGSQL.<port>`); no TCP listener is opened.
const PORT: u16 = 6432;

#[derive(Debug, thiserror::Error)]
pub enum PgBouncerError {
    #[error(
        "pgbouncer was not found on PATH or in /usr/sbin: install it (Debian/Ubuntu: `apt-get install pgbouncer`)"
    )]
    NotFound,
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("pgbouncer did not start within 10 s; its log says:\n{log}")]
    NotStarted { log: String },
    #[error(
        "a pooler goes in front of a server named by host and port (the private PostgreSQL, or a URL with them): {0}"
    )]
    NoUpstream(String),
    #[error(transparent)]
    LocalPg(#[from] crate::local_pg::LocalPgError),
}

/// Where PgBouncer sends its server connections, and how many it keeps per database and user.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// A host name or a unix socket folder.
    pub host: String,
    pub port: u16,
    /// Server connections per database and user: fewer than the clients, so that every
    /// server connection is shared between transactions of different clients.
    pub pool_size: u32,
}

impl Upstream {
    /// The server of `url` (its first host, or the socket folder of `host=`) and the user
    /// it names (the one the pooler's clients log in as).
    pub fn from_url(url: &str, pool_size: u32) -> Result<(Self, String), PgBouncerError> {
        let no_upstream = || PgBouncerError::NoUpstream(crate::db::describe_url(url));
        let parts = crate::db::PgUrl::parse(url);
        let first = parts.hosts.split(',').next().unwrap_or_default();
        let (host, port) = match first.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => {
                (Some(host.to_owned()), Some(port.to_owned()))
            }
            _ => ((!first.is_empty()).then(|| first.to_owned()), None),
        };
        // libpq's host= and port= may list several servers: the first of each pair.
        let first_of = |list: String| list.split(',').next().unwrap_or_default().to_owned();
        let host = parts
            .param("host")
            .map(first_of)
            .or(host)
            .ok_or_else(no_upstream)?;
        let port = parts
            .param("port")
            .map(first_of)
            .or(port)
            .unwrap_or_else(|| "5432".to_owned());
        let user = parts
            .param("user")
            .or(parts.user.map(str::to_owned))
            .ok_or_else(no_upstream)?;
        Ok((
            Upstream {
                host,
                port: port.parse().map_err(|_| no_upstream())?,
                pool_size,
            },
            user,
        ))
    }
}

pub struct PgBouncer {
    dir: PathBuf,
    /// Replaced by `restart`.
    child: std::sync::Mutex<Child>,
    /// Server connections per database and user, as started.
    pool_size: u32,
}

/// An I/O error of the pooler's files or process in `dir`, saying `what` was being done.
fn io_error(dir: &Path, what: &str) -> impl FnOnce(std::io::Error) -> PgBouncerError + use<> {
    let what = format!("{what} ({})", dir.display());
    move |source| PgBouncerError::Io { what, source }
}

/// PgBouncer's configuration: every database to `upstream`, transaction mode, `dir`'s socket.
fn write_config(ini: &Path, dir: &Path, upstream: &Upstream) -> std::io::Result<()> {
    let config = format!(
        "[databases]\n\
         * = host={host} port={port}\n\
         [pgbouncer]\n\
         unix_socket_dir = {dir}\n\
         listen_port = {PORT}\n\
         auth_type = trust\n\
         auth_file = {dir}/users.txt\n\
         pool_mode = transaction\n\
         default_pool_size = {size}\n\
         min_pool_size = 0\n\
         reserve_pool_size = 0\n\
         max_client_conn = 2000\n\
         ignore_startup_parameters = extra_float_digits\n\
         server_login_retry = 1\n\
         logfile = {dir}/pgbouncer.log\n\
         pidfile = {dir}/pgbouncer.pid\n",
        host = upstream.host,
        port = upstream.port,
        dir = dir.display(),
        size = upstream.pool_size,
    );
    std::fs::write(ini, config)
}

impl PgBouncer {
    /// Starts PgBouncer in transaction mode under `dir` (made afresh), letting in `users`
    /// without a password (the server behind it decides who may connect).
    pub fn start(dir: &Path, upstream: &Upstream, users: &[&str]) -> Result<Self, PgBouncerError> {
        let binary = find_binary()?;
        let io = |what: &str| io_error(dir, what);
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(io("creating pgbouncer's folder"))?;
        let users: String = users.iter().map(|u| format!("\"{u}\" \"\"\n")).collect();
        std::fs::write(dir.join("users.txt"), users).map_err(io("writing its users"))?;
        let ini = dir.join("pgbouncer.ini");
        write_config(&ini, dir, upstream).map_err(io("writing pgbouncer.ini"))?;
        let child = spawn(dir, binary)?;
        Ok(PgBouncer {
            dir: dir.to_owned(),
            child: std::sync::Mutex::new(child),
            pool_size: upstream.pool_size,
        })
    }

    /// `kill -9` of PgBouncer and a start of a new one with the same configuration, as a
    /// crash and its supervisor's restart would: every client connection through it breaks.
    /// Returns at once; `is_listening` says when the new one takes connections.
    pub fn restart(&self) -> Result<(), PgBouncerError> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(self.socket());
        let _ = std::fs::remove_file(self.dir.join("pgbouncer.pid"));
        *child = spawn_process(&self.dir, find_binary()?)?;
        Ok(())
    }

    /// Whether PgBouncer listens on its socket.
    pub fn is_listening(&self) -> bool {
        self.socket().exists()
    }

    fn socket(&self) -> PathBuf {
        socket_in(&self.dir)
    }

    /// Sends the pooler's new server connections to the server of `url` from now on (as
    /// many as it started with), as an HA manager does after a failover: the configuration is
    /// rewritten and PgBouncer reloads it (SIGHUP), closing its connections to the old server
    /// as they are released.
    pub fn retarget(&self, url: &str) -> Result<(), PgBouncerError> {
        let (upstream, _) = Upstream::from_url(url, self.pool_size)?;
        write_config(&self.dir.join("pgbouncer.ini"), &self.dir, &upstream)
            .map_err(io_error(&self.dir, "rewriting pgbouncer.ini"))?;
        let pid = self.child.lock().unwrap_or_else(|e| e.into_inner()).id();
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).map_err(|e| {
            io_error(&self.dir, "reloading pgbouncer (SIGHUP)")(std::io::Error::from(e))
        })
    }

    /// The URL of `database` through the pooler, as `user`.
    pub fn url(&self, database: &str, user: &str) -> String {
        format!(
            "postgres:///{database}?host={}&port={PORT}&user={user}",
            crate::local_pg::percent_encode(&self.dir.to_string_lossy())
        )
    }
}

/// The socket PgBouncer in `dir` listens on.
fn socket_in(dir: &Path) -> PathBuf {
    dir.join(format!(".s.PGSQL.{PORT}"))
}

/// Starts PgBouncer on the configuration in `dir` and waits for its socket.
fn spawn(dir: &Path, binary: PathBuf) -> Result<Child, PgBouncerError> {
    let mut child = spawn_process(dir, binary)?;
    let socket = socket_in(dir);
    let started = Instant::now();
    while !socket.exists() {
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("pgbouncer.log")).unwrap_or_default();
            return Err(PgBouncerError::NotStarted { log });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// Starts PgBouncer on the configuration in `dir`, without waiting for it.
fn spawn_process(dir: &Path, binary: PathBuf) -> Result<Child, PgBouncerError> {
    let io = |what: &str| io_error(dir, what);
    let mut command = Command::new(binary);
    command
        .arg(dir.join("pgbouncer.ini"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // PgBouncer refuses to run as root: it runs as the user the private PostgreSQL does.
    if let Some((uid, gid)) = crate::local_pg::server_user()? {
        for entry in std::fs::read_dir(dir).map_err(io("listing pgbouncer's folder"))? {
            let path = entry.map_err(io("listing pgbouncer's folder"))?.path();
            std::os::unix::fs::chown(&path, Some(uid.as_raw()), Some(gid.as_raw()))
                .map_err(io("handing pgbouncer's files to its user"))?;
        }
        std::os::unix::fs::chown(dir, Some(uid.as_raw()), Some(gid.as_raw()))
            .map_err(io("handing pgbouncer's folder to its user"))?;
        command.uid(uid.as_raw()).gid(gid.as_raw());
    }
    command.spawn().map_err(io("starting pgbouncer"))
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn find_binary() -> Result<PathBuf, PgBouncerError> {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|dir| dir.join("pgbouncer"))
        .find(|p| p.is_file())
        .ok_or(PgBouncerError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::Upstream;

    #[test]
    fn the_upstream_is_the_urls_first_host_or_its_socket_folder() {
        let (up, user) = Upstream::from_url(
            "postgres:///zdm?host=%2Ftmp%2Fpg&port=5433&user=postgres",
            2,
        )
        .unwrap();
        assert_eq!(
            (up.host.as_str(), up.port, user.as_str()),
            ("/tmp/pg", 5433, "postgres")
        );
        let (up, user) =
            Upstream::from_url("postgres://zdm:secret@db1:5440,db2:5441/zdm", 2).unwrap();
        assert_eq!(
            (up.host.as_str(), up.port, user.as_str()),
            ("db1", 5440, "zdm")
        );
        let (up, _) = Upstream::from_url(
            "postgres:///zdm?host=%2Fa,%2Fb&port=5432,5433&user=postgres&target_session_attrs=read-write",
            2,
        )
        .unwrap();
        assert_eq!((up.host.as_str(), up.port), ("/a", 5432));
        assert!(Upstream::from_url("postgres:///zdm", 2).is_err());
    }
}
