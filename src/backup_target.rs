//! Where one backup goes, decided once before anything runs: its directory,
//! its name (the timestamp in the directory, the file and the repository
//! names), whether it is staged for an upload, and the root whose lock
//! guards it. The hooks and the backup are given the same value, so what a
//! hook is told is where the backup is really written.
//!
//! (Not to be confused with `target.rs`: where a *store* runs.)

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::remote::STAGING_PREFIX;

/// Format of default timestamps and directory names.
pub const TIMESTAMP_FORMAT: &str = "%Y%m%d_%H%M%S";

pub fn default_timestamp() -> String {
    jiff::Zoned::now().strftime(TIMESTAMP_FORMAT).to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupTarget {
    /// The directory the backup is written to: `--out`, `<root>/<timestamp>`,
    /// or with `--no-local` the staging directory under the root.
    pub dir: PathBuf,
    /// The backup's name.
    pub timestamp: String,
    /// Staged for an upload and removed once the remote copy is verified.
    pub staged: bool,
    /// Where the root lock is taken: the parent of `dir`.
    pub lock_root: PathBuf,
    /// The operator named the backup (`--out` or `--timestamp`): a complete
    /// backup of that name is taken again on purpose. A default name never
    /// replaces a backup.
    pub named: bool,
}

impl BackupTarget {
    /// The target of a backup under `root`. Without `--out` and
    /// `--timestamp`, the name is the current second's, followed by `-2`,
    /// `-3` … when a backup of that second (complete, partial or staged) is
    /// already there.
    pub fn resolve(
        root: &Path,
        out: Option<&Path>,
        timestamp: Option<&str>,
        no_local: bool,
    ) -> Result<Self> {
        let named = out.is_some() || timestamp.is_some();
        let timestamp = match (timestamp, out) {
            (Some(ts), _) => {
                check_timestamp(ts)?;
                ts.to_string()
            }
            // The directory is the operator's; the name only labels files.
            (None, Some(_)) => default_timestamp(),
            (None, None) => fresh_name(root, &default_timestamp()),
        };
        let staged = no_local && out.is_none();
        let dir = match out {
            Some(out) => out.to_path_buf(),
            None if staged => staging_dir(root, &timestamp),
            None => root.join(&timestamp),
        };
        let lock_root = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(BackupTarget {
            dir,
            timestamp,
            staged,
            lock_root,
            named,
        })
    }
}

fn staging_dir(root: &Path, name: &str) -> PathBuf {
    root.join(format!("{STAGING_PREFIX}upload-{name}"))
}

/// `base`, else the first of `base-2`, `base-3` … that no backup under the
/// root uses, as a directory or staged for an upload.
fn fresh_name(root: &Path, base: &str) -> String {
    let taken = |name: &str| root.join(name).exists() || staging_dir(root, name).exists();
    let mut candidate = base.to_string();
    let mut n = 1;
    while taken(&candidate) {
        n += 1;
        candidate = format!("{base}-{n}");
    }
    candidate
}

fn check_timestamp(ts: &str) -> Result<()> {
    let ok = !ts.is_empty()
        && ts.len() <= 64
        && ts
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
        && !ts.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "timestamp '{ts}' may only hold letters, digits, '_', '-' and '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_name_skips_the_names_already_used_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(
            fresh_name(root.path(), "20250101_030000"),
            "20250101_030000"
        );
        std::fs::create_dir(root.path().join("20250101_030000")).unwrap();
        std::fs::create_dir(staging_dir(root.path(), "20250101_030000-2")).unwrap();
        assert_eq!(
            fresh_name(root.path(), "20250101_030000"),
            "20250101_030000-3"
        );
    }

    #[test]
    fn a_staged_backup_is_written_where_its_target_says() {
        let root = Path::new("/srv/backup");
        let t = BackupTarget::resolve(root, None, Some("TS"), true).unwrap();
        assert_eq!(t.dir, root.join(".itbackup-staging-upload-TS"));
        assert_eq!(t.lock_root, root);
        assert!(t.staged && t.named);
        let t = BackupTarget::resolve(root, Some(Path::new("/x/y")), None, true).unwrap();
        assert_eq!(t.dir, Path::new("/x/y"));
        assert_eq!(t.lock_root, Path::new("/x"));
        assert!(!t.staged && t.named);
        assert!(BackupTarget::resolve(root, None, Some("../x"), false).is_err());
    }
}
