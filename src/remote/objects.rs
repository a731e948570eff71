//! Single objects outside backup directories, read and written one at a
//! time: the WAL archive (`<prefix>/wal/…`, see stores/postgres/wal) keeps
//! one object per segment plus a small record of it, and needs no manifest
//! of a whole backup. Uploads are checked as `push` checks artifacts: what
//! was sent is hashed, then the object is read back through SHA-256.

use std::path::Path;

use object_store::ObjectStoreExt;

use super::errors::remote_error;
use super::{key_tail, Remote};
use crate::artifact::Digest256;
use crate::error::{Error, Result};

impl Remote {
    /// The bytes of the small object `parts` (at most `max`), or `None` when
    /// it does not exist. A larger object is refused before it is read.
    pub async fn read_small(&self, parts: &[&str], max: u64) -> Result<Option<Vec<u8>>> {
        let key = self.key(parts);
        let shown = format!("{}/{}", self.url, key_tail(&key));
        let got = match self.store.get(&key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(remote_error("read remote object", &shown, e)),
        };
        if got.meta.size > max {
            return Err(Error::damaged(
                "read remote object",
                format!(
                    "{shown} has {} bytes, at most {max} expected",
                    got.meta.size
                ),
            )
            .hint("the object is damaged or was replaced"));
        }
        let bytes = got
            .bytes()
            .await
            .map_err(|e| remote_error("read remote object", &shown, e))?;
        Ok(Some(bytes.to_vec()))
    }

    /// The size of the object `parts`, or `None` when it does not exist.
    pub async fn object_size(&self, parts: &[&str]) -> Result<Option<u64>> {
        let key = self.key(parts);
        match self.store.head(&key).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_error(
                "read remote object",
                &format!("{}/{}", self.url, key_tail(&key)),
                e,
            )),
        }
    }

    /// Upload the local file `local` as `parts`, streamed, and check the
    /// object: what was sent must be `expected` (else the local file changed
    /// or is damaged), and the object read back must hash to it too.
    pub async fn upload_checked(
        &self,
        parts: &[&str],
        local: &Path,
        expected: &Digest256,
    ) -> Result<()> {
        let key = self.key(parts);
        let sent = self.upload_file(local, &key).await?;
        if &sent != expected {
            return Err(Error::damaged(
                "upload",
                format!(
                    "{} does not match its recorded sha256; the local copy is damaged",
                    local.display()
                ),
            ));
        }
        self.stream_object(&key, None, expected).await
    }

    /// Download the object `parts` into `file`, checked against `expected`
    /// (a missing, shorter or altered object is a damaged-backup error).
    pub async fn download_checked(
        &self,
        parts: &[&str],
        file: &mut tokio::fs::File,
        expected: &Digest256,
    ) -> Result<()> {
        self.stream_object(&self.key(parts), Some(file), expected)
            .await
    }

    /// Read the object `parts` through SHA-256 without keeping it: it must
    /// be `expected` (a missing, shorter or altered object is a
    /// damaged-backup error).
    pub async fn check_object(&self, parts: &[&str], expected: &Digest256) -> Result<()> {
        self.stream_object(&self.key(parts), None, expected).await
    }

    /// The names of the objects directly under `parts` (one level: the WAL
    /// archive is flat).
    pub async fn list_names(&self, parts: &[&str]) -> Result<Vec<String>> {
        Ok(self
            .list_sized(parts)
            .await?
            .into_iter()
            .map(|(name, _)| name)
            .collect())
    }

    /// [`Self::list_names`], with each object's size.
    pub async fn list_sized(&self, parts: &[&str]) -> Result<Vec<(String, u64)>> {
        use futures::StreamExt;
        let prefix = self.key(parts);
        let depth = prefix.parts().count();
        let shown = format!("{}/{}", self.url, key_tail(&prefix));
        let mut listing = self.store.list(Some(&prefix));
        let mut names = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| remote_error("list remote objects", &shown, e))?;
            let rest: Vec<_> = meta.location.parts().skip(depth).collect();
            if let [name] = &rest[..] {
                names.push((name.as_ref().to_string(), meta.size));
            }
        }
        Ok(names)
    }
}
