//! The content check after a restore (the sandbox drill): every index a
//! logical backup recorded a digest for, read whole and digested as the
//! export digested it ([`logical`](super::logical)'s scan).

use std::collections::BTreeMap;

use crate::error::Result;
use crate::manifest::ArtifactRecord;

use super::OpenSearch;

impl OpenSearch {
    /// The digests of the indices `record.digests` names that the cluster
    /// holds now; see [`Store::content_digests`](crate::stores::Store::content_digests).
    pub(super) async fn index_digests(
        &self,
        record: &ArtifactRecord,
    ) -> Result<BTreeMap<String, String>> {
        if record.digests.is_empty() {
            return Ok(BTreeMap::new());
        }
        let present = self.index_sizes("*", "list indices").await?;
        let mut digests = BTreeMap::new();
        for name in record.digests.keys() {
            let Some(index) = present.find(name) else {
                continue;
            };
            let digest = self.digest_documents(&index).await?;
            digests.insert(name.clone(), digest.hex());
        }
        Ok(digests)
    }
}
