//! Where backups live, decided once from the command line: the local root,
//! or a repository (`--from URL`: the location that holds backup
//! directories, or one backup in it, whose location is then meant).
//!
//! Every command that reads or removes backups goes through here: `list` and
//! `status` read their descriptions ([`BackupEntry`]: name, completeness,
//! manifest, files and sizes, the same wherever they are), `restore` and
//! `verify` open one backup ([`open_backup`]: in place, or in its repository,
//! whose artifacts then stream to the stores as they are checked and
//! restored: nothing is downloaded first), and `prune` removes through
//! [`Repository::remove`]. `push` and `pull` move a backup between the two
//! kinds, so they hold one of each.

use std::path::{Path, PathBuf};

use crate::catalog::{self, BackupEntry};
use crate::error::Result;
use crate::lock::RootLock;
use crate::manifest::Manifest;
use crate::remote::Remote;

pub enum Repository {
    /// A directory of backup directories (`--root`).
    Local(PathBuf),
    /// An object store location (`s3://`, `gs://`, `az://`, WebDAV, `file://`).
    Remote(Remote),
}

impl Repository {
    /// The repository at `url`, else the local `root`; `url` names the
    /// location itself (prune, push), so nothing is asked of the store yet.
    pub fn at(root: &Path, url: Option<&str>) -> Result<Repository> {
        Ok(match url {
            Some(url) => Repository::Remote(Remote::open(url)?),
            None => Repository::Local(root.to_path_buf()),
        })
    }

    /// The repository `from` names, else the local `root`, and the backup
    /// `from` names when it points at one backup rather than the location.
    pub async fn locate(root: &Path, from: Option<&str>) -> Result<(Repository, Option<String>)> {
        Ok(match from {
            Some(url) => {
                let (remote, name) = Remote::locate(url).await?;
                (Repository::Remote(remote), name)
            }
            None => (Repository::Local(root.to_path_buf()), None),
        })
    }

    /// For messages: the root's path or the repository's URL.
    pub fn describe(&self) -> String {
        match self {
            Repository::Local(root) => root.display().to_string(),
            Repository::Remote(remote) => remote.url.clone(),
        }
    }

    /// Every backup, complete or not, oldest first.
    pub async fn backups(&self) -> Result<Vec<BackupEntry>> {
        match self {
            Repository::Local(root) => catalog::scan(root),
            Repository::Remote(remote) => remote.backups().await,
        }
    }

    /// Keep backup and restore runs out while held (released on drop). A
    /// root that does not exist holds nothing to protect; object stores have
    /// no locks, so a backup being uploaded is protected by having no
    /// manifest yet (prune's grace period).
    pub fn lock(&self, purpose: &str) -> Result<Option<RootLock>> {
        match self {
            Repository::Local(root) if root.is_dir() => Ok(Some(RootLock::acquire(root, purpose)?)),
            _ => Ok(None),
        }
    }

    /// Remove the backup `name` and everything in it. The caller has decided
    /// that it may go (prune's plan); a local directory is first renamed so
    /// that a crash midway leaves nothing taken for a backup.
    pub async fn remove(&self, name: &str) -> Result<()> {
        if catalog::is_reserved(name) {
            return Err(crate::error::Error::failure(
                "remove backup",
                format!("{name} in {} is not a backup; not removed", self.describe()),
            ));
        }
        match self {
            Repository::Local(root) => catalog::remove_dir(root, name),
            Repository::Remote(remote) => remote.remove(name).await,
        }
    }
}

/// A backup opened for reading.
pub struct OpenBackup {
    /// Where its files are read from: its own directory, or the staging
    /// directory a repository's copy was downloaded into.
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// For messages and reports: its directory, or `URL/<name>`.
    pub shown: PathBuf,
    /// The root a restore locks: the backup's parent directory, or the local
    /// root the download was staged under.
    pub lock_root: PathBuf,
    /// The repository's URL, when the backup comes from one.
    pub repository: Option<String>,
    /// The backup in its repository, whose artifacts are read as they stream.
    pub remote: Option<RemoteBackup>,
}

/// A backup in a repository.
pub struct RemoteBackup {
    pub remote: Remote,
    pub name: String,
}

/// Which backup a restore or verify reads.
#[derive(Debug, Clone, Copy)]
pub struct BackupChoice<'a> {
    /// The local root (`--root`), where the newest complete backup is looked
    /// for and downloads are staged.
    pub root: &'a Path,
    /// `--path DIR`: a backup directory anywhere.
    pub path: Option<&'a Path>,
    /// `--manifest FILE`: the backup beside that manifest.
    pub manifest: Option<&'a Path>,
    /// `--from URL`: a repository's backup, or its newest complete one.
    pub from: Option<&'a str>,
}

/// Open the backup `choice` names. Of a repository's backup only the
/// manifest is read here (`dir` is then its URL): its artifacts stream from
/// the repository when they are verified and restored (`verify_backup`).
pub async fn open_backup(choice: BackupChoice<'_>) -> Result<OpenBackup> {
    let Some(url) = choice.from else {
        let (dir, manifest) = catalog::locate(choice.root, choice.path, choice.manifest)?;
        let lock_root = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."));
        return Ok(OpenBackup {
            shown: dir.clone(),
            dir,
            manifest,
            lock_root,
            repository: None,
            remote: None,
        });
    };
    let (remote, name) = Remote::locate(url).await?;
    let name = match name {
        Some(name) => name,
        None => remote.newest_complete().await?,
    };
    Ok(OpenBackup {
        manifest: remote.read_manifest(&name).await?,
        dir: remote_path(&remote, &name),
        shown: remote_path(&remote, &name),
        lock_root: choice.root.to_path_buf(),
        repository: Some(remote.url.clone()),
        remote: Some(RemoteBackup { remote, name }),
    })
}

/// `URL/<name>`, how a repository's backup is shown.
fn remote_path(remote: &Remote, name: &str) -> PathBuf {
    PathBuf::from(format!("{}/{name}", remote.url.trim_end_matches('/')))
}
