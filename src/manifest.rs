//! `backup-manifest.json`: what a backup set holds and how to prove it intact.
//!
//! The manifest is a superset of the runbook's example: `timestamp` and
//! `services` (service → artifact file name) are kept exactly, everything else
//! is added. It is written last, so its presence marks a complete backup, and it
//! carries a checksum of its own so that a hand-edited or damaged manifest is
//! refused instead of trusted. The format is documented in `docs/manifest.md`
//! with a JSON Schema in `docs/manifest.schema.json`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::artifact::{self, ArtifactWriter};
use crate::consistency::{Consistency, Position};
use crate::error::{io_error, Error, Kind, Result};
use crate::service::Service;

pub const MANIFEST_FILE: &str = "backup-manifest.json";
pub const FORMAT_VERSION: u32 = 1;

/// Status of a backup set as recorded in its manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Complete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolInfo {
    pub name: String,
    pub version: String,
}

/// One stored file of a service's artifact (a database inside the PostgreSQL tar, say).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Everything known about one service's artifact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// File name inside the backup directory (the same as in `services`).
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    /// How the data was taken: `pg_dump`, `pg_dumpall`, `snapshot`, `logical`, `neo4j-admin-dump`.
    pub method: String,
    /// Layout of the file: `tar+custom`, `plain-sql`, `tar.gz`, `ndjson.zst`, `neo4j-dump`.
    pub format: String,
    /// Version string reported by the server the data came from.
    pub server_version: String,
    pub started_at: String,
    pub finished_at: String,
    /// Object counts at backup time (rows per table, documents per index, nodes per label …).
    pub counts: BTreeMap<String, u64>,
    /// Content digest per key of `counts` (the same keys), independent of
    /// the order the store returns its records in; recorded at backup time
    /// only where the method reads the data in one consistent view, the one
    /// the artifact holds. A key without a digest was not recorded (an older
    /// backup, a method that records none): its count is all there is to
    /// compare. See `docs/manifest.md` for how each store computes them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// Store-specific facts (databases, method choice and why, edition …).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// Present when the file is sealed with age: `file`, `sha256` and `bytes`
    /// then describe the sealed file, this the plaintext inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// The position in the store's history the data represents and when it
    /// was current (`docs/consistency.md`); absent in older backups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
}

impl ArtifactRecord {
    /// How long the store's backup took (0 when a time is unreadable).
    pub fn backup_seconds(&self) -> f64 {
        match (
            self.started_at.parse::<jiff::Timestamp>(),
            self.finished_at.parse::<jiff::Timestamp>(),
        ) {
            (Ok(a), Ok(b)) => (b.as_millisecond() - a.as_millisecond()) as f64 / 1000.0,
            _ => 0.0,
        }
    }

    /// The record of a store backup that has just begun: the rest is filled
    /// in as it runs, the file's facts when it ends.
    pub fn begun(server_version: String, started_at: String) -> Self {
        ArtifactRecord {
            file: String::new(),
            sha256: String::new(),
            bytes: 0,
            method: String::new(),
            format: String::new(),
            server_version,
            started_at,
            finished_at: String::new(),
            counts: BTreeMap::new(),
            digests: BTreeMap::new(),
            members: Vec::new(),
            details: Default::default(),
            encryption: None,
            position: None,
        }
    }
}

/// How an artifact is encrypted. Holds public facts only: no key, no secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Encryption {
    /// Always `age` (<https://age-encryption.org/v1>).
    pub scheme: String,
    /// The public keys it was sealed to; any matching identity opens it.
    pub recipients: Vec<String>,
    pub plaintext_sha256: String,
    pub plaintext_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The runbook's key: the backup's timestamp (`%Y%m%d_%H%M%S` unless given).
    pub timestamp: String,
    /// The runbook's key: service name → artifact file name.
    pub services: BTreeMap<Service, String>,
    pub format_version: u32,
    pub tool: ToolInfo,
    pub started_at: String,
    pub finished_at: String,
    pub status: Status,
    pub host: String,
    pub artifacts: BTreeMap<Service, ArtifactRecord>,
    /// How far apart the stores' positions are (absent in older backups,
    /// and when no store recorded a position).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// SHA-256 of this manifest's canonical JSON without this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_sha256: Option<String>,
}

impl Manifest {
    /// The checksum over the canonical serialisation of everything but the checksum.
    fn compute_checksum(&self) -> String {
        let mut unsealed = self.clone();
        unsealed.manifest_sha256 = None;
        let canonical = serde_json::to_vec(&unsealed).expect("manifest serialises");
        hex::encode(Sha256::digest(&canonical))
    }

    /// Write the manifest into `dir` atomically (`*.partial`, fsync, rename, fsync dir).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let pending = self.write_partial(dir)?;
        let commit = || -> std::io::Result<()> {
            pending.commit()?;
            artifact::sync_dir(dir)
        };
        commit().map_err(|e| {
            pending.discard();
            io_error(None, "write manifest", pending.target.display(), e)
        })
    }

    /// Write the manifest into `dir` as `*.partial`, synced, not yet under
    /// its name: a backup writes it before it renames its artifacts, so that
    /// a manifest that does not fit fails the run while nothing looks done.
    pub fn write_partial(&self, dir: &Path) -> Result<artifact::PendingArtifact> {
        let mut sealed = self.clone();
        sealed.manifest_sha256 = Some(self.compute_checksum());
        let mut json = serde_json::to_vec_pretty(&sealed).expect("manifest serialises");
        json.push(b'\n');
        let write = || -> std::io::Result<artifact::PendingArtifact> {
            let mut writer = ArtifactWriter::create(dir, MANIFEST_FILE)?;
            writer.write_all(&json)?;
            writer.finish()
        };
        write().map_err(|e| io_error(None, "write manifest", dir.join(MANIFEST_FILE).display(), e))
    }

    /// Read and validate the manifest in `dir`.
    pub fn read_dir(dir: &Path) -> Result<Self> {
        Self::read_file(&dir.join(MANIFEST_FILE))
    }

    /// Read and validate a manifest file: syntax, format version, checksum, consistency.
    pub fn read_file(path: &Path) -> Result<Self> {
        let step = "read manifest";
        let text = artifact::read_manifest_bytes(path).map_err(|e| {
            let err = io_error(None, step, path.display(), e);
            if path.symlink_metadata().is_ok() {
                err
            } else {
                err.of_kind(Kind::NotFound).hint("no backup-manifest.json: the backup is incomplete (interrupted or failed) or the path is wrong; `itbackup list` shows complete backups")
            }
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and validate manifest bytes read from `origin` (a path or URL).
    pub fn parse(text: &[u8], origin: &str) -> Result<Self> {
        let step = "read manifest";
        let invalid = |e: serde_json::Error| {
            Error::damaged(step, format!("{origin} is not a valid manifest: {e}"))
                .hint("the manifest is damaged; restore from another backup (`itbackup list`) or from the remote copy")
        };
        // serde_json keeps the last of two equal keys: a manifest could then
        // say two things at once and still match its checksum. Refused at
        // every level before the manifest is read for real.
        serde_json::from_slice::<NoDuplicateKeys>(text).map_err(invalid)?;
        let manifest: Manifest = serde_json::from_slice(text).map_err(invalid)?;
        manifest.validate().map_err(|msg| {
            Error::damaged(step, format!("{origin}: {msg}")).hint(
                "the manifest was altered or damaged after the backup was written; do not trust this backup, use another one",
            )
        })?;
        Ok(manifest)
    }

    /// Check everything that can be checked without touching the artifacts.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported by this itbackup (supports {FORMAT_VERSION})",
                self.format_version
            ));
        }
        match &self.manifest_sha256 {
            None => return Err("manifest_sha256 is missing".into()),
            Some(sum) if *sum != self.compute_checksum() => {
                return Err("manifest_sha256 does not match the manifest's content".into())
            }
            Some(_) => {}
        }
        if !is_safe_component(&self.timestamp) {
            return Err(format!(
                "timestamp '{}' is not a plain name",
                self.timestamp
            ));
        }
        if self.services.is_empty() {
            return Err("the manifest lists no service".into());
        }
        if self.services.keys().ne(self.artifacts.keys()) {
            return Err("`services` and `artifacts` name different services".into());
        }
        for (service, file) in &self.services {
            let record = &self.artifacts[service];
            if record.file != *file {
                return Err(format!(
                    "{service}: services names '{file}' but artifacts name '{}'",
                    record.file
                ));
            }
            if !is_safe_component(file) {
                return Err(format!(
                    "{service}: artifact file '{file}' is not a plain file name"
                ));
            }
            if let Some(member) = record.members.iter().find(|m| !is_safe_relative(&m.name)) {
                return Err(format!(
                    "{service}: member '{}' is not a relative path inside the artifact",
                    member.name
                ));
            }
            if !is_sha256(&record.sha256)
                || record.members.iter().any(|m| !is_sha256(&m.sha256))
                || record
                    .encryption
                    .as_ref()
                    .is_some_and(|e| !is_sha256(&e.plaintext_sha256))
            {
                return Err(format!("{service}: a sha256 is not 64 hex digits"));
            }
        }
        Ok(())
    }
}

/// Any JSON value whose objects, at every depth, have no key twice; it
/// keeps nothing, so checking costs no memory beyond the keys of one object.
struct NoDuplicateKeys;

impl<'de> Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("duplicate key \"{key}\"")));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<Self::Value, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(NoDuplicateKeys)
    }
}

/// A name that stays inside the directory it is joined to.
pub fn is_safe_component(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\\')
        && !name.contains('\0')
}

/// A relative path of plain names (`databases/000.dump`): never absolute,
/// never `..`.
fn is_safe_relative(path: &str) -> bool {
    path.split('/').all(is_safe_component)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::fs;

    pub fn sample() -> Manifest {
        let mut counts = BTreeMap::new();
        counts.insert("app/public.t".to_string(), 3);
        let record = ArtifactRecord {
            file: "postgres_20250201_101500.tar".into(),
            sha256: "a".repeat(64),
            bytes: 10,
            method: "pg_dump".into(),
            format: "tar+custom".into(),
            server_version: "15.1".into(),
            started_at: "2025-02-01T10:15:00Z".into(),
            finished_at: "2025-02-01T10:15:01Z".into(),
            counts,
            digests: BTreeMap::new(),
            members: vec![],
            details: Default::default(),
            encryption: None,
            position: None,
        };
        Manifest {
            timestamp: "20250201_101500".into(),
            services: [(Service::Postgres, record.file.clone())].into(),
            format_version: FORMAT_VERSION,
            tool: ToolInfo {
                name: "itbackup".into(),
                version: "0.1.0".into(),
            },
            started_at: "2025-02-01T10:15:00Z".into(),
            finished_at: "2025-02-01T10:15:01Z".into(),
            status: Status::Complete,
            host: "h".into(),
            artifacts: [(Service::Postgres, record)].into(),
            consistency: None,
            manifest_sha256: None,
        }
    }

    #[test]
    fn round_trips_and_detects_tampering() {
        let dir = tempfile::tempdir().unwrap();
        sample().write(dir.path()).unwrap();
        let back = Manifest::read_dir(dir.path()).unwrap();
        assert_eq!(
            back.services[&Service::Postgres],
            "postgres_20250201_101500.tar"
        );

        let path = dir.path().join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace("\"bytes\": 10", "\"bytes\": 11")).unwrap();
        let err = Manifest::read_dir(dir.path()).unwrap_err();
        assert!(err.message.contains("does not match"), "{err}");

        fs::write(&path, "{ not json").unwrap();
        assert!(Manifest::read_dir(dir.path()).is_err());
    }

    /// A record without digests serialises as before they existed, so the
    /// checksums of older manifests still hold; one with digests keeps them.
    #[test]
    fn digests_are_written_only_when_recorded() {
        let dir = tempfile::tempdir().unwrap();
        sample().write(dir.path()).unwrap();
        let text = fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(!text.contains("digests"), "{text}");

        let mut with_digests = sample();
        let record = with_digests.artifacts.get_mut(&Service::Postgres).unwrap();
        record.digests.insert("app/public.t".into(), "12345".into());
        with_digests.write(dir.path()).unwrap();
        let back = Manifest::read_dir(dir.path()).unwrap();
        assert_eq!(
            back.artifacts[&Service::Postgres].digests["app/public.t"],
            "12345"
        );
    }

    /// A manifest written before positions existed (no `position`, no
    /// `consistency`) still reads, its checksum still holds, and it shows
    /// no window.
    #[test]
    fn an_older_manifest_without_positions_still_reads() {
        let mut older = serde_json::to_value(sample()).unwrap();
        let record = &older["artifacts"]["postgres"];
        assert!(record.get("position").is_none() && older.get("consistency").is_none());
        let unsealed = serde_json::to_vec(&older).unwrap();
        older["manifest_sha256"] = hex::encode(Sha256::digest(&unsealed)).into();
        let text = serde_json::to_vec_pretty(&older).unwrap();
        let back = Manifest::parse(&text, "older").unwrap();
        assert!(back.consistency.is_none());
        assert!(back.artifacts[&Service::Postgres].position.is_none());
    }

    #[test]
    fn positions_round_trip_under_the_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample();
        let record = m.artifacts.get_mut(&Service::Postgres).unwrap();
        let at: jiff::Timestamp = "2025-02-01T10:15:00.123Z".parse().unwrap();
        record.position = Some(Position::point("exported_snapshot", at));
        m.consistency = Consistency::of(m.artifacts.iter().map(|(s, r)| (*s, r.position.as_ref())));
        m.write(dir.path()).unwrap();
        let back = Manifest::read_dir(dir.path()).unwrap();
        assert_eq!(back.consistency, m.consistency);
        assert_eq!(back.consistency.unwrap().window_seconds, 0.0);
    }

    #[test]
    fn refuses_file_names_that_leave_the_directory() {
        let mut m = sample();
        m.services.insert(Service::Postgres, "../etc/passwd".into());
        m.artifacts.get_mut(&Service::Postgres).unwrap().file = "../etc/passwd".into();
        m.manifest_sha256 = Some(m.compute_checksum());
        assert!(m.validate().unwrap_err().contains("plain file name"));
    }
}
