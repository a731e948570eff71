//! Where a store reads an artifact from: a file of a local backup (or the
//! plaintext of a sealed one, opened into a scratch directory), or an object
//! in a repository, streamed: `verify --from` and `restore --from` read
//! nothing onto the local disk. Every [`ArtifactSource::open`] is a new pass
//! from the start: a restore's checks read the artifact end to end before
//! anything changes, and its load reads it again.
//!
//! An object is checked as it streams: its stored bytes against the
//! manifest's size and SHA-256, and a sealed one's plaintext against the
//! plaintext's; a pass that reaches the end of a different object fails
//! there, so a check that reads to the end proves it intact. The repository
//! side is `remote::reading`; this floor only says what it must do.

use std::fmt;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{open_regular, CHUNK};

/// An artifact in a repository, as [`ArtifactSource`] reads it.
pub trait ObjectSource: Send + Sync {
    /// A new pass over the object from its start, as plaintext, checked
    /// against the manifest as it ends. Must be read off the async runtime
    /// (a blocking thread): it waits for the network.
    fn open(&self) -> io::Result<Box<dyn Read + Send>>;
    /// The plaintext's size (the manifest's).
    fn size(&self) -> u64;
    /// Whether a pass has read the object to its end and found it intact.
    fn checked(&self) -> bool;
    /// Its URL, for messages.
    fn shown(&self) -> &str;
}

/// An artifact a store reads.
#[derive(Clone)]
pub enum ArtifactSource {
    File(PathBuf),
    Object(Arc<dyn ObjectSource>),
}

/// What [`ArtifactSource::open`] gives: buffered in large chunks.
pub type SourceReader = BufReader<Box<dyn Read + Send>>;

impl ArtifactSource {
    /// A pass over the artifact from its start (a local file must be a
    /// regular file under that very name, see [`open_regular`]).
    pub fn open(&self) -> io::Result<SourceReader> {
        let inner: Box<dyn Read + Send> = match self {
            ArtifactSource::File(path) => Box::new(open_regular(path)?),
            ArtifactSource::Object(object) => object.open()?,
        };
        Ok(BufReader::with_capacity(CHUNK, inner))
    }

    /// A pass over a zstd-compressed artifact, decompressed, for buffered
    /// line reading.
    pub fn open_zstd(&self) -> io::Result<BufReader<zstd::Decoder<'static, SourceReader>>> {
        Ok(BufReader::with_capacity(
            CHUNK,
            zstd::Decoder::with_buffer(self.open()?)?,
        ))
    }

    /// The artifact's size in bytes (the plaintext's, for a sealed object).
    pub fn size(&self) -> io::Result<u64> {
        match self {
            ArtifactSource::File(path) => Ok(open_regular(path)?.metadata()?.len()),
            ArtifactSource::Object(object) => Ok(object.size()),
        }
    }

    /// The local file, when the artifact is one.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            ArtifactSource::File(path) => Some(path),
            ArtifactSource::Object(_) => None,
        }
    }

    /// Whether reading it has proved it intact already (an object read to
    /// its end; a local file is hashed apart, before it is decoded).
    pub fn checked(&self) -> bool {
        match self {
            ArtifactSource::File(_) => false,
            ArtifactSource::Object(object) => object.checked(),
        }
    }

    /// Read it to its end (an object's pass checks it on the way).
    pub fn read_through(&self) -> io::Result<u64> {
        io::copy(&mut self.open()?, &mut io::sink())
    }

    /// Read at most `max` bytes of a small artifact (a record): more is an error.
    pub fn read_small(&self, max: u64) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.open()?.take(max + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{self} is larger than the {max} bytes expected"),
            ));
        }
        // Fewer than `max + 1` bytes: the pass met the end, where an
        // object is checked whole.
        Ok(bytes)
    }
}

impl fmt::Display for ArtifactSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArtifactSource::File(path) => write!(f, "{}", path.display()),
            ArtifactSource::Object(object) => f.write_str(object.shown()),
        }
    }
}

impl fmt::Debug for ArtifactSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactSource({self})")
    }
}
