//! One run at a time per backup root.
//!
//! The lock is an advisory `flock` on `<root>/.itbackup.lock`: the kernel drops it
//! when the holder dies, so a killed run never leaves a stale lock behind. The
//! file also records who holds it, so the second run can say whom it waits for.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::artifact::create_private_dir;
use crate::error::{io_error, Error, Result};

pub const LOCK_FILE: &str = ".itbackup.lock";

/// Held for as long as the value lives.
#[derive(Debug)]
pub struct RootLock {
    _file: File,
    pub path: PathBuf,
}

impl RootLock {
    /// Take the lock on `root` for `command`, or fail naming the current holder.
    pub fn acquire(root: &Path, command: &str) -> Result<Self> {
        let step = "lock backup root";
        create_private_dir(root).map_err(|e| io_error(None, step, root.display(), e))?;
        let path = root.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_error(None, step, path.display(), e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    "another itbackup process".to_string()
                } else {
                    holder.to_string()
                };
                return Err(Error::failure(
                    step,
                    format!("{} is locked by {holder}", root.display()),
                )
                .hint("wait for that run to finish (only one backup or restore runs per root at a time), or stop it"));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(io_error(None, step, path.display(), e))
            }
        }
        let started = jiff::Timestamp::now();
        let holder = format!(
            "itbackup {command} (pid {}, started {started})\n",
            std::process::id()
        );
        let record = (|| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(holder.as_bytes())?;
            file.flush()
        })();
        record.map_err(|e| io_error(None, step, path.display(), e))?;
        Ok(RootLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = RootLock::acquire(dir.path(), "backup").unwrap();
        let err = RootLock::acquire(dir.path(), "restore").unwrap_err();
        assert!(err.message.contains("itbackup backup (pid"), "{err}");
        drop(first);
        RootLock::acquire(dir.path(), "restore").unwrap();
    }
}
