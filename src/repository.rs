//! Where backups live, decided once from the command line: the local root,
//! or a repository (`--from URL`: the location that holds backup
//! directories, or one backup in it, whose location is then meant). `list`
//! and `status` read their backups through it, described the same way
//! ([`BackupEntry`]: name, completeness, manifest, files and sizes) wherever
//! they are.

use std::path::{Path, PathBuf};

use crate::catalog::{self, BackupEntry};
use crate::error::Result;
use crate::remote::Remote;

pub enum Repository {
    /// A directory of backup directories (`--root`).
    Local(PathBuf),
    /// An object store location (`s3://`, `gs://`, `az://`, WebDAV, `file://`).
    Remote(Remote),
}

impl Repository {
    /// The repository `from` names, else the local `root`.
    pub async fn of(root: &Path, from: Option<&str>) -> Result<Repository> {
        Ok(match from {
            Some(url) => Repository::Remote(Remote::locate(url).await?.0),
            None => Repository::Local(root.to_path_buf()),
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
}
