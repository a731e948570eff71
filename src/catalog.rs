//! The backups under a root: which are complete, which are debris, which is
//! newest; and [`BackupEntry`], what is known of one backup wherever it is
//! (a directory under a root, or a repository: `remote::Remote::backups`).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::artifact::PARTIAL_SUFFIX;
use crate::error::{io_error, Error, Result};
use crate::manifest::{Manifest, MANIFEST_FILE};

/// One backup: a directory under a root, or one in a repository.
#[derive(Debug, Serialize)]
pub struct BackupEntry {
    pub name: String,
    /// Its directory, or `URL/<name>` in a repository.
    pub path: PathBuf,
    pub complete: bool,
    /// Timestamp of the backup (from the manifest, else the directory name).
    pub timestamp: String,
    pub finished_at: Option<String>,
    pub services: Vec<String>,
    pub bytes: u64,
    /// Why the backup is not complete, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// In a repository: the newest modification of any of its objects (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    /// A PostgreSQL base backup's reach in the WAL archive (filled in by `list`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wal: Option<WalReach>,
    /// What the backup keeps outside its directory (an OpenSearch
    /// repository-method snapshot), described (filled in by `list`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub kept_outside: Vec<String>,
    /// How far apart its stores' positions are (from the manifest; none
    /// in backups older than positions).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<crate::consistency::Consistency>,
    #[serde(skip)]
    pub manifest: Option<Manifest>,
    /// Whether a manifest file exists (complete, or damaged when it does not validate).
    #[serde(skip)]
    pub has_manifest: bool,
    /// Its files: name → size.
    #[serde(skip)]
    pub files: std::collections::BTreeMap<String, u64>,
}

/// How far the WAL archive carries a base backup: what `list` shows for it
/// and `verify` proves.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WalReach {
    pub archive: String,
    /// The timeline recovery ends on.
    pub timeline: u32,
    /// Archived segments from the backup's end on, without a gap.
    pub segments: usize,
    pub last_segment: Option<String>,
    /// When the last of them was archived: `restore --until` reaches any
    /// moment from the backup's end up to about then.
    pub last_archived_at: Option<String>,
    /// Why the archive does not carry the backup on (a gap, a damaged
    /// segment, a timeline that does not follow on from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Every backup directory under `root`, oldest first. A missing root holds none.
pub fn scan(root: &Path) -> Result<Vec<BackupEntry>> {
    let step = "list backups";
    let read = match fs::read_dir(root) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(None, step, root.display(), e)),
    };
    let mut entries = Vec::new();
    for item in read {
        let item = item.map_err(|e| io_error(None, step, root.display(), e))?;
        let name = item.file_name().to_string_lossy().into_owned();
        // A symbolic link is never taken for a backup (itbackup never writes
        // one, and following it could restore something from elsewhere).
        let is_real_dir = fs::symlink_metadata(item.path()).is_ok_and(|m| m.is_dir());
        if name.starts_with('.') || !is_real_dir || is_reserved(&name) {
            continue;
        }
        entries.push(describe(&item.path(), name));
    }
    entries.sort_by(|a, b| {
        (a.finished_at.as_deref().unwrap_or(""), &a.timestamp)
            .cmp(&(b.finished_at.as_deref().unwrap_or(""), &b.timestamp))
    });
    Ok(entries)
}

fn describe(dir: &Path, name: String) -> BackupEntry {
    let files: std::collections::BTreeMap<String, u64> = fs::read_dir(dir)
        .map(|files| {
            files
                .filter_map(|f| {
                    let f = f.ok()?;
                    let meta = f.metadata().ok()?;
                    meta.is_file()
                        .then(|| (f.file_name().to_string_lossy().into_owned(), meta.len()))
                })
                .collect()
        })
        .unwrap_or_default();
    let bytes = files.values().sum();
    let has_manifest = dir.join(MANIFEST_FILE).exists();
    let mut entry = BackupEntry {
        timestamp: name.clone(),
        name,
        path: dir.to_path_buf(),
        complete: false,
        finished_at: None,
        services: Vec::new(),
        bytes,
        problem: None,
        modified: None,
        wal: None,
        kept_outside: Vec::new(),
        consistency: None,
        manifest: None,
        has_manifest,
        files,
    };
    match Manifest::read_dir(dir) {
        Ok(manifest) => entry.found_complete(manifest),
        Err(err) => {
            entry.services = guess_services(dir);
            entry.problem = Some(if has_manifest {
                err.message
            } else if is_in_progress(dir) {
                "no manifest: unfinished (in progress, interrupted or failed)".into()
            } else {
                "no manifest: incomplete".into()
            });
        }
    }
    entry
}

impl BackupEntry {
    /// Its manifest was read and validated: the backup is complete, and
    /// the manifest says when and what.
    pub fn found_complete(&mut self, manifest: Manifest) {
        self.complete = true;
        self.problem = None;
        self.timestamp = manifest.timestamp.clone();
        self.finished_at = Some(manifest.finished_at.clone());
        self.services = manifest.services.keys().map(|s| s.to_string()).collect();
        self.consistency = manifest.consistency.clone();
        self.manifest = Some(manifest);
    }
}

/// Services whose artifacts (finished or not) lie in an incomplete directory.
fn guess_services(dir: &Path) -> Vec<String> {
    let mut services: Vec<String> = fs::read_dir(dir)
        .map(|files| {
            files
                .filter_map(|f| {
                    let name = f.ok()?.file_name().to_string_lossy().into_owned();
                    let service = name.split('_').next()?.to_string();
                    crate::service::Service::ALL
                        .iter()
                        .any(|s| s.as_str() == service)
                        .then_some(service)
                })
                .collect()
        })
        .unwrap_or_default();
    services.sort();
    services.dedup();
    services
}

fn is_in_progress(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|mut files| {
            files.any(|f| {
                f.map(|f| f.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX))
                    .unwrap_or(false)
            })
        })
        .unwrap_or(false)
}

/// The newest complete backup among `entries` (as [`scan`] orders them, oldest first).
pub fn newest_complete_entry(entries: &[BackupEntry]) -> Option<&BackupEntry> {
    entries.iter().rev().find(|entry| entry.complete)
}

/// The newest complete backup under `root`.
pub fn newest_complete(root: &Path) -> Result<PathBuf> {
    newest_complete_entry(&scan(root)?)
        .map(|entry| entry.path.clone())
        .ok_or_else(|| {
            Error::not_found(
                "find backup",
                format!("no complete backup under {}", root.display()),
            )
            .hint("pass --path DIR, set --root/IT_BACKUP_ROOT to where the backups are, or run `itbackup backup` first")
        })
}

/// The backup directory and manifest a request points at: `--manifest`,
/// `--path`, or the newest complete backup under `root`.
pub fn locate(
    root: &Path,
    path: Option<&Path>,
    manifest: Option<&Path>,
) -> Result<(PathBuf, Manifest)> {
    match (path, manifest) {
        (_, Some(file)) => {
            let manifest = Manifest::read_file(file)?;
            let dir = file
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            Ok((dir, manifest))
        }
        (Some(dir), None) => Ok((dir.to_path_buf(), Manifest::read_dir(dir)?)),
        (None, None) => {
            let dir = newest_complete(root)?;
            let manifest = Manifest::read_dir(&dir)?;
            Ok((dir, manifest))
        }
    }
}

/// A backup being removed is first renamed to this prefix, so that a crash in
/// the middle of the removal leaves a name nobody takes for a backup.
pub const REMOVING_PREFIX: &str = ".itbackup-removing-";

/// Names in a root (or repository) that are never a backup: `wal/` holds
/// PostgreSQL's archived WAL, which prune and list leave to its own code.
const RESERVED: [&str; 1] = ["wal"];

/// Whether `name` in a root is reserved for something other than a backup.
pub fn is_reserved(name: &str) -> bool {
    RESERVED.contains(&name)
}

/// Remove the backup directory `name` under `root`. It is renamed first: the
/// backup disappears in one step, and a crash during the removal of its files
/// leaves a name that is not taken for a backup (prune finishes it later).
pub fn remove_dir(root: &Path, name: &str) -> Result<()> {
    let step = "remove backup";
    if !crate::manifest::is_safe_component(name) {
        return Err(Error::failure(
            step,
            format!("refusing to remove {name} under {}", root.display()),
        ));
    }
    let path = root.join(name);
    let meta = fs::symlink_metadata(&path).map_err(|e| io_error(None, step, path.display(), e))?;
    if !meta.is_dir() {
        return Err(Error::failure(
            step,
            format!("{} is not a directory; not removed", path.display()),
        ));
    }
    let doomed = if name.starts_with(REMOVING_PREFIX) {
        path.clone()
    } else {
        let doomed = root.join(format!("{REMOVING_PREFIX}{name}"));
        fs::rename(&path, &doomed).map_err(|e| io_error(None, step, path.display(), e))?;
        crate::artifact::sync_dir(root).map_err(|e| io_error(None, step, root.display(), e))?;
        doomed
    };
    fs::remove_dir_all(&doomed).map_err(|e| io_error(None, step, doomed.display(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symbolic_link_is_never_taken_for_a_backup() {
        let root = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let real = root.path().join("20250201_101500");
        fs::create_dir(&real).unwrap();
        crate::manifest::tests::sample().write(&real).unwrap();
        crate::manifest::tests::sample()
            .write(elsewhere.path())
            .unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), root.path().join("20990101_000000")).unwrap();
        let entries = scan(root.path()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].path, real);
    }
}
