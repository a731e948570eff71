//! Local directories a remote backup is downloaded into (`pull`), and the
//! staging directories under a root (`backup --upload --no-local`'s).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::Remote;
use crate::artifact::create_private_dir;
use crate::error::{io_error, Error, Result};
use crate::manifest::MANIFEST_FILE;

/// Name prefix of staging directories under a root (hidden from `list`;
/// `prune` removes them when a crash left them behind).
pub const STAGING_PREFIX: &str = ".itbackup-staging-";

/// A private staging directory under `root` for a downloaded backup; removed
/// when dropped.
pub fn staging_dir(root: &Path, purpose: &str) -> Result<tempfile::TempDir> {
    create_private_dir(root).map_err(|e| io_error(None, "create staging", root.display(), e))?;
    tempfile::Builder::new()
        .prefix(&format!("{STAGING_PREFIX}{purpose}-"))
        .tempdir_in(root)
        .map_err(|e| io_error(None, "create staging", root.display(), e))
}

/// What `pull` did.
#[derive(Debug, Serialize)]
pub struct PullOutcome {
    pub dir: PathBuf,
    pub timestamp: String,
    pub bytes: u64,
    /// What was downloaded this time (less when a killed pull was resumed).
    pub downloaded_bytes: u64,
    pub seconds: f64,
}

/// `itbackup pull`: download a backup into `parent/<name>`, never over a
/// complete local backup.
pub async fn pull(url: &str, parent: &Path) -> Result<PullOutcome> {
    let started = std::time::Instant::now();
    let (remote, name) = Remote::locate(url).await?;
    let name = match name {
        Some(name) => name,
        None => remote.newest_complete().await?,
    };
    let dir = parent.join(&name);
    if dir.join(MANIFEST_FILE).exists() {
        return Err(Error::failure(
            "download",
            format!("{} already holds a complete backup", dir.display()),
        )
        .hint("remove it first, or pull into another directory"));
    }
    let _lock = crate::lock::RootLock::acquire(parent, "pull")?;
    // A pull killed half-way is resumed by the next one into the same place.
    let (manifest, downloaded_bytes) = remote.fetch(&name, &dir).await?;
    Ok(PullOutcome {
        dir,
        timestamp: manifest.timestamp.clone(),
        bytes: manifest.artifacts.values().map(|r| r.bytes).sum(),
        downloaded_bytes,
        seconds: started.elapsed().as_secs_f64(),
    })
}
