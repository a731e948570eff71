//! Reading a backup's artifacts straight out of the repository
//! (`verify --from`, `restore --from`): each pass is one GET streamed to the
//! store's reader, nothing written to the local disk.
//!
//! * The object's size is checked (HEAD) before anything reads it, and its
//!   ETag kept: every later pass asks for that very version (`If-Match`),
//!   so a restore's load reads the bytes its checks proved, or fails before
//!   it gets any.
//! * The stored bytes are hashed as they pass and compared with the
//!   manifest at the end; a sealed artifact is decrypted on the way and its
//!   plaintext compared too. A difference is an error at the end of the
//!   pass, which the store's check meets before anything is changed.
//! * Memory: [`QUEUED_CHUNKS`] chunks of the HTTP body wait for the reader.

use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::errors::remote_error;
use super::throttle::{Direction, Throttle};
use super::{key_tail, Remote};
use crate::artifact::{ArtifactSource, Digest256, ObjectSource};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::progress::Transfer;
use crate::seal::{self, Identities};
use crate::service::Service;

/// Chunks of the body waiting for the reader.
const QUEUED_CHUNKS: usize = 8;

/// One artifact of a backup in a repository, read as it streams.
struct RemoteArtifact {
    remote: Remote,
    key: ObjectPath,
    shown: String,
    service: Service,
    /// The record as stored (a sealed file's name, checksum and size).
    stored: ArtifactRecord,
    /// The keys of a sealed artifact.
    identities: Option<Arc<Identities>>,
    /// The plaintext's digest (the stored one for a clear artifact).
    plain: Digest256,
    etag: Option<String>,
    checked: Arc<AtomicBool>,
    runtime: tokio::runtime::Handle,
}

impl Remote {
    /// The artifact of `record` in backup `name`, for its store to read
    /// (with the record as the store reads it: a sealed one's plaintext).
    /// Its size is checked here; nothing of it is read yet.
    pub async fn artifact_source(
        &self,
        name: &str,
        service: Service,
        record: &ArtifactRecord,
        identities: Option<Arc<Identities>>,
    ) -> Result<(ArtifactSource, ArtifactRecord)> {
        let step = "check remote object";
        let key = self.key(&[name, &record.file]);
        let shown = format!("{}/{}", self.url, key_tail(&key));
        let meta = match self.store.head(&key).await {
            Ok(meta) => meta,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::damaged(step, format!("{shown} is missing"))
                    .service(service)
                    .hint("the remote backup is incomplete; push it again or use another backup"))
            }
            Err(e) => return Err(remote_error(step, &shown, e).service(service)),
        };
        if meta.size != record.bytes {
            return Err(Error::damaged(
                step,
                format!(
                    "{shown} has {} bytes, the manifest says {}",
                    meta.size, record.bytes
                ),
            )
            .service(service)
            .hint("the remote object is truncated or was replaced; use another backup"));
        }
        let identities = match record.encryption {
            Some(_) => {
                seal::identities_for(service, record, identities.as_deref())?;
                identities
            }
            None => None,
        };
        let plain = seal::plain_record(record);
        let source = RemoteArtifact {
            remote: self.clone(),
            key,
            shown,
            service,
            stored: record.clone(),
            identities,
            plain: Digest256 {
                sha256: plain.sha256.clone(),
                bytes: plain.bytes,
            },
            etag: meta.e_tag,
            checked: Arc::new(AtomicBool::new(false)),
            runtime: tokio::runtime::Handle::current(),
        };
        Ok((ArtifactSource::Object(Arc::new(source)), plain))
    }
}

impl ObjectSource for RemoteArtifact {
    fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        self.runtime.spawn(fetch(
            self.remote.clone(),
            self.key.clone(),
            self.shown.clone(),
            self.etag.clone(),
            self.stored.bytes,
            tx,
        ));
        let stored = StoredBytes {
            rx,
            current: Bytes::new(),
            hasher: Sha256::new(),
            bytes: 0,
            expected: Digest256 {
                sha256: self.stored.sha256.clone(),
                bytes: self.stored.bytes,
            },
            shown: self.shown.clone(),
            service: self.service,
            matched: false,
        };
        let Some(identities) = &self.identities else {
            return Ok(Box::new(Checked {
                inner: stored,
                then: None,
                hasher: Sha256::new(),
                bytes: 0,
                expected: self.plain.clone(),
                what: self.shown.clone(),
                service: self.service,
                checked: self.checked.clone(),
            }));
        };
        let shared = SharedStored(Arc::new(Mutex::new(stored)));
        let input = BufReader::with_capacity(crate::artifact::CHUNK, shared.clone());
        let plaintext = seal::decrypt_artifact(self.service, &self.stored, identities, input)
            .map_err(io::Error::other)?;
        Ok(Box::new(Checked {
            inner: plaintext,
            then: Some(shared),
            hasher: Sha256::new(),
            bytes: 0,
            expected: self.plain.clone(),
            what: format!("the plaintext of {}", self.shown),
            service: self.service,
            checked: self.checked.clone(),
        }))
    }

    fn size(&self) -> u64 {
        self.plain.bytes
    }

    fn checked(&self) -> bool {
        self.checked.load(Ordering::Relaxed)
    }

    fn shown(&self) -> &str {
        &self.shown
    }
}

/// One GET of the object (the version checked first), streamed into `tx`.
async fn fetch(
    remote: Remote,
    key: ObjectPath,
    shown: String,
    etag: Option<String>,
    size: u64,
    tx: mpsc::Sender<io::Result<Bytes>>,
) {
    let step = "read remote object";
    let options = GetOptions {
        if_match: etag,
        ..Default::default()
    };
    let got = match remote.store.get_opts(&key, options).await {
        Ok(got) => got,
        Err(object_store::Error::Precondition { .. }) => {
            let changed = Error::damaged(step, format!("{shown} changed since it was checked"))
                .hint("something replaced the object during the run; nothing was read from the new one; use another backup or run again");
            let _ = tx.send(Err(io::Error::other(changed))).await;
            return;
        }
        Err(e) => {
            let _ = tx
                .send(Err(io::Error::other(remote_error(step, &shown, e))))
                .await;
            return;
        }
    };
    let mut stream = got.into_stream();
    let mut throttle = Throttle::new(Direction::Download);
    let progress = Transfer::start(&format!("read {}", key_tail(&key)), size);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| io::Error::other(remote_error(step, &shown, e)));
        let failed = chunk.is_err();
        if let Ok(chunk) = &chunk {
            throttle.pass(chunk.len()).await;
            progress.advance(chunk.len() as u64);
        }
        // The reader went away (it read what it needed, or failed): stop.
        if tx.send(chunk).await.is_err() || failed {
            return;
        }
    }
}

/// The object's bytes as they arrive, hashed; compared with the manifest at
/// their end.
struct StoredBytes {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    hasher: Sha256,
    bytes: u64,
    expected: Digest256,
    shown: String,
    service: Service,
    matched: bool,
}

impl Read for StoredBytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None if self.matched => return Ok(0),
                None => {
                    let found = Digest256 {
                        sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
                        bytes: self.bytes,
                    };
                    if found != self.expected {
                        return Err(mismatch(self.service, &self.shown));
                    }
                    self.matched = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len());
        let chunk = self.current.split_to(n);
        buf[..n].copy_from_slice(&chunk);
        self.hasher.update(&chunk);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The stored bytes of a sealed artifact, read by the decryption and, at
/// the plaintext's end, drained to their own end (and so compared).
#[derive(Clone)]
struct SharedStored(Arc<Mutex<StoredBytes>>);

impl Read for SharedStored {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut stored = self
            .0
            .lock()
            .map_err(|_| io::Error::other("a reader of the artifact failed"))?;
        stored.read(buf)
    }
}

/// What the store reads, hashed; at its end compared with the manifest
/// (after draining the stored bytes, `then`, of a sealed artifact), and the
/// artifact marked as proved intact.
struct Checked<R> {
    inner: R,
    then: Option<SharedStored>,
    hasher: Sha256,
    bytes: u64,
    expected: Digest256,
    what: String,
    service: Service,
    checked: Arc<AtomicBool>,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 || buf.is_empty() {
            self.hasher.update(&buf[..n]);
            self.bytes += n as u64;
            return Ok(n);
        }
        let found = Digest256 {
            sha256: hex::encode(self.hasher.clone().finalize()),
            bytes: self.bytes,
        };
        if found != self.expected {
            return Err(mismatch(self.service, &self.what));
        }
        if let Some(stored) = &mut self.then {
            io::copy(stored, &mut io::sink())?;
        }
        self.checked.store(true, Ordering::Relaxed);
        Ok(0)
    }
}

fn mismatch(service: Service, what: &str) -> io::Error {
    io::Error::other(
        Error::damaged(
            "read remote object",
            format!("{what} does not match its sha256 in the manifest"),
        )
        .service(service)
        .hint("the remote object was altered or damaged; use another backup"),
    )
}
