//! A backup streamed into the repository (`backup --upload URL --no-local`):
//! each artifact goes from its store through SHA-256 (and age, when the
//! backup is encrypted) straight into a multipart upload under its final
//! name; nothing of it is written to the local disk.
//!
//! What is held meanwhile, per artifact: the queue between the store's
//! writer and the uploader ([`QUEUED_PIECES`] pieces of [`PIECE`] bytes),
//! the part being filled and the parts in flight ([`STREAM_PARTS_IN_FLIGHT`]
//! of `PART_SIZE`): about 34 MiB of memory at most, whatever the artifact's
//! size. The writer waits while the upload is behind.
//!
//! The repository's rules hold as for `push`: an object counts only once the
//! manifest, uploaded last after every artifact was read back and matched,
//! names it. A failed run aborts its unfinished uploads and deletes the
//! finished ones; a killed run leaves at most finished artifacts without a
//! manifest (an incomplete backup, which `list` shows and `prune` removes)
//! and unfinished multipart uploads, which the object store never shows and
//! expires by its own rules.

use std::io::{self, Write};
use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::errors::remote_error;
use super::throttle::{Direction, Throttle};
use super::{key_tail, Remote, PART_SIZE};
use crate::artifact::{Digest256, StoredCopy, StreamTarget, StreamUpload};
use crate::error::{Error, Result};
use crate::progress::Transfer;
use crate::seal::{self, Recipients, SEALED_SUFFIX};

/// Bytes handed to the uploader at a time.
const PIECE: usize = 1024 * 1024;
/// Pieces waiting for the uploader.
const QUEUED_PIECES: usize = 2;
/// Parts of one streamed artifact uploading at once.
const STREAM_PARTS_IN_FLIGHT: usize = 2;

/// What the writer hands the uploader.
enum Piece {
    Data(Vec<u8>),
    /// Everything was written: complete the upload.
    End,
}

/// The artifacts of backup `name` in `remote`, sealed to `seal` if given.
pub struct StreamingBackup {
    remote: Remote,
    name: String,
    seal: Option<Arc<Recipients>>,
    runtime: tokio::runtime::Handle,
}

impl Remote {
    /// Where a streaming backup named `name` writes its artifacts. Called on
    /// the runtime, whose handle runs the uploads.
    pub fn stream_backup(&self, name: &str, seal: Option<Arc<Recipients>>) -> StreamingBackup {
        StreamingBackup {
            remote: self.clone(),
            name: name.to_string(),
            seal,
            runtime: tokio::runtime::Handle::current(),
        }
    }
}

impl StreamTarget for StreamingBackup {
    fn start(&self, file: &str) -> io::Result<Box<dyn StreamUpload>> {
        let stored = match self.seal {
            Some(_) => format!("{file}{SEALED_SUFFIX}"),
            None => file.to_string(),
        };
        let key = self.remote.key(&[&self.name, &stored]);
        let (tx, rx) = mpsc::channel(QUEUED_PIECES);
        let task = self
            .runtime
            .spawn(upload_pieces(self.remote.clone(), key, rx));
        let pieces = PieceSender {
            tx,
            piece: Vec::with_capacity(PIECE),
            hasher: Sha256::new(),
            bytes: 0,
            runtime: self.runtime.clone(),
            task: Some(task),
        };
        let sink = match &self.seal {
            None => Sink::Plain(pieces),
            Some(recipients) => Sink::Sealed(Box::new(seal::encrypt_to(recipients, pieces)?)),
        };
        Ok(Box::new(ObjectUpload {
            sink: Some(sink),
            file: stored,
        }))
    }
}

/// The stored bytes' way: as written, or through age first.
enum Sink {
    Plain(PieceSender),
    Sealed(Box<age::stream::StreamWriter<PieceSender>>),
}

struct ObjectUpload {
    sink: Option<Sink>,
    file: String,
}

impl Write for ObjectUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.sink {
            Some(Sink::Plain(pieces)) => pieces.write(buf),
            Some(Sink::Sealed(sealer)) => sealer.write(buf),
            None => Err(io::Error::other("the upload was finished")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StreamUpload for ObjectUpload {
    fn finish(mut self: Box<Self>) -> io::Result<StoredCopy> {
        let pieces = match self.sink.take() {
            Some(Sink::Plain(pieces)) => pieces,
            // The last chunk and the tag are written by the sealer's finish.
            Some(Sink::Sealed(sealer)) => sealer.finish()?,
            None => return Err(io::Error::other("the upload was finished")),
        };
        let digest = pieces.finish()?;
        Ok(StoredCopy {
            file: std::mem::take(&mut self.file),
            digest,
        })
    }
}

/// The stored bytes, hashed and cut into pieces for the uploader.
struct PieceSender {
    tx: mpsc::Sender<Piece>,
    piece: Vec<u8>,
    hasher: Sha256,
    bytes: u64,
    runtime: tokio::runtime::Handle,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl PieceSender {
    /// Hand the piece over, waiting while the uploader is behind. A closed
    /// queue means the upload failed: its own error is the one answered.
    fn send(&mut self, piece: Piece) -> io::Result<()> {
        if self.tx.blocking_send(piece).is_ok() {
            return Ok(());
        }
        Err(self.upload_error())
    }

    /// The uploader's result, once it has stopped.
    fn upload_error(&mut self) -> io::Error {
        match self.task.take().map(|task| self.runtime.block_on(task)) {
            Some(Ok(Err(e))) => io::Error::other(e),
            Some(Err(e)) => io::Error::other(format!("the upload stopped: {e}")),
            Some(Ok(Ok(()))) | None => io::Error::other("the upload stopped"),
        }
    }

    /// Send what is left and the end; wait for the object to be complete.
    fn finish(mut self) -> io::Result<Digest256> {
        if !self.piece.is_empty() {
            let piece = std::mem::take(&mut self.piece);
            self.send(Piece::Data(piece))?;
        }
        self.send(Piece::End)?;
        match self.task.take().map(|task| self.runtime.block_on(task)) {
            Some(Ok(Ok(()))) => Ok(Digest256 {
                sha256: hex::encode(std::mem::take(&mut self.hasher).finalize()),
                bytes: self.bytes,
            }),
            Some(Ok(Err(e))) => Err(io::Error::other(e)),
            Some(Err(e)) => Err(io::Error::other(format!("the upload stopped: {e}"))),
            None => Err(io::Error::other("the upload stopped")),
        }
    }
}

impl Write for PieceSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(PIECE - self.piece.len());
        self.piece.extend_from_slice(&buf[..n]);
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if self.piece.len() == PIECE {
            let piece = std::mem::replace(&mut self.piece, Vec::with_capacity(PIECE));
            self.send(Piece::Data(piece))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The uploader: pieces into a multipart upload, completed at the end,
/// aborted when the writer goes away without one or a part fails.
async fn upload_pieces(
    remote: Remote,
    key: ObjectPath,
    mut rx: mpsc::Receiver<Piece>,
) -> Result<()> {
    let step = "upload";
    let shown = format!("{}/{}", remote.url, key_tail(&key));
    let upload = remote
        .store
        .put_multipart(&key)
        .await
        .map_err(|e| remote_error(step, &shown, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
    let mut throttle = Throttle::new(Direction::Upload);
    let progress = Transfer::open_ended(&format!("upload {}", key_tail(&key)));
    loop {
        match rx.recv().await {
            Some(Piece::Data(piece)) => {
                if let Err(e) = writer.wait_for_capacity(STREAM_PARTS_IN_FLIGHT).await {
                    let _ = writer.abort().await;
                    return Err(remote_error(step, &shown, e));
                }
                throttle.pass(piece.len()).await;
                progress.advance(piece.len() as u64);
                writer.write(&piece);
            }
            Some(Piece::End) => {
                return writer
                    .finish()
                    .await
                    .map(|_| ())
                    .map_err(|e| remote_error(step, &shown, e));
            }
            None => {
                let _ = writer.abort().await;
                return Err(Error::failure(
                    step,
                    format!("{shown}: the artifact's writer stopped before its end"),
                ));
            }
        }
    }
}
