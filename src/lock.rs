//! One run at a time per backup root, and one writer at a time per store.
//!
//! Both locks are advisory `flock`s: the kernel drops them when the holder
//! dies, so a killed run never leaves a stale lock behind. Each file also
//! records who holds it, so the second run can say whom it waits for.
//!
//! * [`RootLock`]: `<root>/.itbackup.lock`, one backup, restore or prune per
//!   backup root.
//! * [`StoreLock`]: one file per *server* (service and normalised address) in
//!   a directory every itbackup process on the host shares ([`lock_dir`]),
//!   whatever root, backup or remote repository it works with: two restores
//!   of different backups into the same servers can no longer interleave.
//!   It protects against processes on this host only; see docs/operations.md
//!   for several hosts.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::artifact::create_private_dir;
use crate::error::{io_error, Error, Kind, Result};
use crate::service::Service;
use sha2::Digest;

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
        take(&mut file, &path, step, command, || {
            format!("{} is locked by", root.display())
        })
        .map_err(|e| {
            e.hint("wait for that run to finish (only one backup or restore runs per root at a time), or stop it")
        })?;
        Ok(RootLock { _file: file, path })
    }
}

/// Try the flock on `file`; on success record `command` and this pid in it,
/// else fail with `what()` followed by the holder it records.
fn take(
    file: &mut File,
    path: &Path,
    step: &str,
    command: &str,
    what: impl FnOnce() -> String,
) -> Result<()> {
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            let holder = if holder.is_empty() {
                "another itbackup process"
            } else {
                holder
            };
            return Err(Error::new(
                Kind::Locked,
                step,
                format!("{} {holder}", what()),
            ));
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
    // A lock file another user created may be read-only to us: the lock is
    // held all the same, only the holder's name is not recorded.
    if let Err(e) = record {
        tracing::debug!("cannot record the holder in {}: {e}", path.display());
    }
    Ok(())
}

/// Where the store locks of this host live: `IT_LOCK_DIR`, else
/// `<tmp>/itbackup-locks` (sticky and writable by all, like /tmp itself, so
/// that itbackup processes of every user on the host meet there).
pub fn lock_dir() -> PathBuf {
    std::env::var_os("IT_LOCK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("itbackup-locks"))
}

/// The server a store's address names, for the lock: scheme, credentials
/// and path dropped, host in lower case, `localhost` as 127.0.0.1, the
/// service's default port filled in. `postgres://u:pw@LocalHost/x` and
/// `127.0.0.1:5432` are the same server.
pub fn server_key(service: Service, address: &str) -> String {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let authority = rest
        .split(['/', '?', '#'])
        .next()
        .unwrap_or("")
        .to_lowercase();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port))
            if !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit())
                && !host.ends_with(':') =>
        {
            (host.to_string(), port.to_string())
        }
        _ => (authority.clone(), service.default_port().to_string()),
    };
    let host = match host.as_str() {
        "localhost" | "[::1]" | "::1" | "" => "127.0.0.1".to_string(),
        _ => host,
    };
    format!("{service} {host}:{port}")
}

/// The file of the server `key` in [`lock_dir`] with this extension.
fn server_file(service: Service, key: &str, extension: &str) -> PathBuf {
    let hash = sha2::Sha256::digest(key.as_bytes());
    lock_dir().join(format!("{service}-{}.{extension}", hex::encode(&hash[..8])))
}

/// A server an itbackup run of this host stopped (the Neo4j dump method) and
/// has not started again: recorded before the stop, cleared once the server
/// answers again. A run killed in between leaves the record; the next run
/// that takes the server's lock knows from it that the server is down
/// because of itbackup, not because the operator stopped it, and starts it.
/// A stopped server's record is one line; more is not ours.
const STOPPED_RECORD_MAX: u64 = 4096;

pub struct StoppedServer {
    path: PathBuf,
}

impl StoppedServer {
    /// The record for the server at `address` (it may not exist).
    pub fn of(service: Service, address: &str) -> Self {
        StoppedServer {
            path: server_file(service, &server_key(service, address), "stopped"),
        }
    }

    /// Note, before stopping the server, who stops it and why.
    pub fn record(&self, service: Service, command: &str) -> Result<()> {
        let holder = format!(
            "itbackup {command} (pid {}) stopped it at {}\n",
            std::process::id(),
            jiff::Timestamp::now()
        );
        // The lock directory is writable by all: never follow a link there.
        let write = || -> std::io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o644)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&self.path)?;
            file.write_all(holder.as_bytes())?;
            file.sync_all()
        };
        write().map_err(|e| {
            io_error(
                Some(service),
                "record the stopped server",
                self.path.display(),
                e,
            )
        })
    }

    /// Who stopped the server and has not started it again, if anyone.
    /// The lock directory is writable by all: only a short regular file of
    /// this user counts (never a link, a FIFO or another user's forgery,
    /// which would make a run start a server nobody of ours stopped).
    pub fn left_by(&self) -> Option<String> {
        let file = match crate::artifact::open_regular(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; not taken as a record of a stopped server",
                    self.path.display()
                );
                return None;
            }
        };
        let owner = std::os::unix::fs::MetadataExt::uid(&file.metadata().ok()?);
        // SAFETY: geteuid cannot fail and touches no memory.
        if owner != unsafe { libc::geteuid() } {
            tracing::warn!("{} belongs to uid {owner}, not to this user; not taken as a record of a stopped server", self.path.display());
            return None;
        }
        let mut text = String::new();
        file.take(STOPPED_RECORD_MAX)
            .read_to_string(&mut text)
            .ok()?;
        Some(text.trim().to_string())
    }

    /// The server answers again.
    pub fn clear(&self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// Locks this process holds, by file: taking a store lock twice in one
/// process (a drill runs a backup and a restore) shares the first.
static HELD: Mutex<Option<HashMap<PathBuf, Weak<File>>>> = Mutex::new(None);

/// One writer at a time per server: held by a backup, restore or drill of
/// the store for as long as the value lives.
#[derive(Debug, Clone)]
pub struct StoreLock {
    _file: Arc<File>,
    pub path: PathBuf,
}

impl StoreLock {
    /// Take the lock of the server `key` (see [`server_key`]) for `command`,
    /// or fail naming the current holder.
    pub fn acquire(service: Service, key: &str, command: &str) -> Result<Self> {
        let step = "lock the store";
        let dir = lock_dir();
        let lock_error = |e: std::io::Error, at: &Path| {
            io_error(Some(service), step, at.display(), e).hint(
                "set IT_LOCK_DIR to a directory every itbackup process on this host can write",
            )
        };
        if !dir.is_dir() {
            match std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
            {
                Ok(()) => std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))
                    .map_err(|e| lock_error(e, &dir))?,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(lock_error(e, &dir)),
            }
        }
        let path = server_file(service, key, "lock");
        let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
        let held = held.get_or_insert_with(HashMap::new);
        if let Some(file) = held.get(&path).and_then(Weak::upgrade) {
            return Ok(StoreLock { _file: file, path });
        }
        // Readable by all: it holds a pid and a command, nothing secret, and
        // other users' runs must be able to open it to take the lock.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .or_else(|_| {
                OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&path)
            })
            .map_err(|e| lock_error(e, &path))?;
        take(&mut file, &path, step, command, || {
            format!("{service} at {} is being written by", key.split_once(' ').map_or(key, |(_, a)| a))
        })
        .map_err(|e| {
            e.service(service).hint(format!(
                "one backup, restore or drill at a time per server, whatever its backup root: wait for that run to finish, or stop it (lock file {})",
                path.display()
            ))
        })?;
        let file = Arc::new(file);
        held.insert(path.clone(), Arc::downgrade(&file));
        Ok(StoreLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_server_record_is_read_only_from_a_short_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let stopped = StoppedServer {
            path: dir.path().join("neo4j.stopped"),
        };
        assert_eq!(stopped.left_by(), None);
        stopped.record(Service::Neo4j, "restore").unwrap();
        assert!(stopped
            .left_by()
            .unwrap()
            .starts_with("itbackup restore (pid"));
        std::fs::remove_file(&stopped.path).unwrap();
        // A link to an endless file would hang the run; a FIFO would block it.
        std::os::unix::fs::symlink("/dev/zero", &stopped.path).unwrap();
        assert_eq!(stopped.left_by(), None);
        std::fs::remove_file(&stopped.path).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &stopped.path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert_eq!(stopped.left_by(), None);
        std::fs::remove_file(&stopped.path).unwrap();
        std::fs::write(&stopped.path, "x".repeat(1 << 20)).unwrap();
        assert_eq!(
            stopped.left_by().unwrap().len(),
            STOPPED_RECORD_MAX as usize
        );
    }

    #[test]
    fn second_holder_is_refused_and_told_who_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = RootLock::acquire(dir.path(), "backup").unwrap();
        let err = RootLock::acquire(dir.path(), "restore").unwrap_err();
        assert!(err.message.contains("itbackup backup (pid"), "{err}");
        assert_eq!(err.kind, Kind::Locked);
        drop(first);
        RootLock::acquire(dir.path(), "restore").unwrap();
    }

    #[test]
    fn one_server_has_one_key_however_its_address_is_written() {
        let pg = |a| server_key(Service::Postgres, a);
        assert_eq!(pg("localhost:5432"), pg("127.0.0.1"));
        assert_eq!(pg("postgres://u:pw@LocalHost/db"), pg("127.0.0.1:5432"));
        assert_ne!(pg("127.0.0.1:5433"), pg("127.0.0.1:5432"));
        let os = |a| server_key(Service::Opensearch, a);
        assert_eq!(
            os("http://admin:secret@localhost:9200/"),
            "opensearch 127.0.0.1:9200"
        );
        assert!(!os("http://admin:secret@db:9200").contains("secret"));
        assert_eq!(
            server_key(Service::Neo4j, "bolt://localhost"),
            "neo4j 127.0.0.1:7687"
        );
    }

    #[test]
    fn a_store_lock_is_shared_within_a_process_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        std::env::set_var("IT_LOCK_DIR", dir.path());
        let key = server_key(Service::Neo4j, "bolt://127.0.0.1:1");
        let first = StoreLock::acquire(Service::Neo4j, &key, "restore").unwrap();
        // The same process again (a drill's backup, then its restore): shared.
        let again = StoreLock::acquire(Service::Neo4j, &key, "backup").unwrap();
        // Another open file description, as another process would have: refused.
        let mut other = File::open(&first.path).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        let mut holder = String::new();
        other.read_to_string(&mut holder).unwrap();
        assert!(holder.starts_with("itbackup restore (pid"), "{holder}");
        drop((first, again));
        other.try_lock().unwrap();
    }
}
