//! Finding the PostgreSQL server binaries: on PATH, through `pg_config`, or in
//! `/usr/lib/postgresql/*/bin`, of the major version an existing cluster needs.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::LocalPgError;

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
pub(super) fn major_version(bin_dir: &Path) -> Option<String> {
    let out = Command::new(bin_dir.join("pg_ctl"))
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().last()?;
    version.split('.').next().map(str::to_owned)
}

pub(super) fn choose_binaries(
    data_dir: &Path,
    search: &BinarySearch,
) -> Result<PathBuf, LocalPgError> {
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
}
