//! Where a backup's artifacts are written: files in the backup directory, or,
//! for `backup --upload URL --no-local`, uploads straight into the
//! repository, so that the local disk never holds an artifact whatever its
//! size. The stores only ask [`Artifacts::create`] for a writer; what is
//! behind it is decided once by the backup.
//!
//! The upload itself lives with the repositories (`remote::streaming`): this
//! floor only defines what it must do, so that the files-and-tools floor
//! never imports the repository code.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{ArtifactWriter, Digest256};

/// An artifact as it was stored by an upload: its object's file name (the
/// artifact's, plus `.age` when the upload sealed it: the backup then
/// records it as sealed) and the digest of those stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCopy {
    pub file: String,
    pub digest: Digest256,
}

/// One artifact's upload: bytes are written through it (blocking the
/// writer's thread while the upload is behind), and `finish` waits until
/// the object is complete. Dropped without `finish`, it is aborted: no
/// object is left under the artifact's name.
pub trait StreamUpload: Write + Send {
    fn finish(self: Box<Self>) -> io::Result<StoredCopy>;
}

/// Starts the uploads of one backup's artifacts.
pub trait StreamTarget: Send + Sync {
    fn start(&self, file: &str) -> io::Result<Box<dyn StreamUpload>>;
}

/// Where the artifacts of one backup go. The directory is there either way:
/// the stores' small records and work files are written into it.
#[derive(Clone)]
pub struct Artifacts {
    dir: PathBuf,
    stream: Option<Arc<dyn StreamTarget>>,
}

impl Artifacts {
    /// Artifacts are files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Artifacts {
            dir: dir.to_path_buf(),
            stream: None,
        }
    }

    /// Artifacts are uploaded through `target`; `dir` holds only what the
    /// stores write beside them.
    pub fn streamed(dir: &Path, target: Arc<dyn StreamTarget>) -> Self {
        Artifacts {
            dir: dir.to_path_buf(),
            stream: Some(target),
        }
    }

    /// The backup directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether artifacts go straight into a repository.
    pub fn is_streamed(&self) -> bool {
        self.stream.is_some()
    }

    /// A writer of the artifact `name`. A streamed one must be written from a
    /// blocking thread (as every large artifact is): it waits for the upload.
    pub fn create(&self, name: &str) -> io::Result<ArtifactWriter> {
        match &self.stream {
            None => ArtifactWriter::create(&self.dir, name),
            Some(target) => Ok(ArtifactWriter::streamed(
                &self.dir,
                name,
                target.start(name)?,
            )),
        }
    }
}
