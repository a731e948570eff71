//! The record of one archived file, `<name>.json` beside the stored
//! `<name>.zst` (or `<name>.zst.age`): what PostgreSQL handed over (its size
//! and SHA-256) and what is stored (file name, size, SHA-256, compression,
//! encryption recipients).
//!
//! The record is the archive's commit mark, as the manifest is a backup's: it
//! is written last, after the stored file is durable, so a stored file
//! without a record is the debris of an interrupted push and counts as not
//! archived (the push PostgreSQL retries replaces it). A sidecar rather than
//! a checksum in the file name: `fetch` finds a segment by its name alone
//! (no listing of a directory of tens of thousands of segments, no LIST
//! request on a repository), both checksums fit (the stored bytes', which
//! `verify` and a remote copy check without a key, and the plaintext's, which
//! decompression and decryption must reproduce), and the stored file stays a
//! plain `.zst` (or `.zst.age`) that `zstd -d` (after `age -d`) opens by hand.

use serde::{Deserialize, Serialize};

use super::name::WalName;
use crate::artifact::Digest256;
use crate::error::{Error, Result};

/// File name suffix of a record.
pub const RECORD_SUFFIX: &str = ".json";
/// File name suffix of a stored (compressed) file.
pub const STORED_SUFFIX: &str = ".zst";
/// A record is a few hundred bytes; anything far larger is not one.
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Encryption of a stored file (the recipients are public keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalEncryption {
    pub scheme: String,
    pub recipients: Vec<String>,
}

/// What is archived under one name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRecord {
    /// The name PostgreSQL gave the file.
    pub name: String,
    /// Size and SHA-256 of the file as PostgreSQL handed it over.
    pub bytes: u64,
    pub sha256: String,
    /// The stored file, in the same directory: `<name>.zst` or `<name>.zst.age`.
    pub file: String,
    pub file_bytes: u64,
    pub file_sha256: String,
    pub compression: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<WalEncryption>,
    /// When the push finished (RFC 3339, UTC): the archive's age for `status`.
    pub archived_at: String,
    pub itbackup_version: String,
}

impl WalRecord {
    /// The record's file name for `name`.
    pub fn file_name(name: &WalName) -> String {
        format!("{name}{RECORD_SUFFIX}")
    }

    /// The stored file's name for `name`, sealed or not.
    pub fn stored_name(name: &WalName, sealed: bool) -> String {
        let sealed = if sealed {
            crate::seal::SEALED_SUFFIX
        } else {
            ""
        };
        format!("{name}{STORED_SUFFIX}{sealed}")
    }

    /// What PostgreSQL handed over.
    pub fn plaintext(&self) -> Digest256 {
        Digest256 {
            sha256: self.sha256.clone(),
            bytes: self.bytes,
        }
    }

    /// What is stored.
    pub fn stored(&self) -> Digest256 {
        Digest256 {
            sha256: self.file_sha256.clone(),
            bytes: self.file_bytes,
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("a record serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parse and check the record read from `origin` for `name`: it must be
    /// about that name, and name a stored file of it (never another path).
    pub fn parse(bytes: &[u8], name: &WalName, origin: &str) -> Result<WalRecord> {
        let damaged = |why: String| {
            Error::damaged("read WAL record", format!("{origin}: {why}"))
                .hint("the archive's record of this file is damaged; the segment cannot be trusted: take a new base backup")
        };
        let record: WalRecord =
            serde_json::from_slice(bytes).map_err(|e| damaged(format!("not a WAL record: {e}")))?;
        let sealed = record.encryption.is_some();
        if record.name != name.as_str() || record.file != Self::stored_name(name, sealed) {
            return Err(damaged(format!(
                "it describes {} (stored as {}), not {name}",
                record.name, record.file
            )));
        }
        let hex64 = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex64(&record.sha256) || !hex64(&record.file_sha256) {
            return Err(damaged("its checksums are not SHA-256 digests".into()));
        }
        if record.compression != "zstd" {
            return Err(damaged(format!(
                "compression '{}' is not one this version reads (zstd)",
                record.compression
            )));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &WalName) -> WalRecord {
        WalRecord {
            name: name.to_string(),
            bytes: 16 * 1024 * 1024,
            sha256: "a".repeat(64),
            file: WalRecord::stored_name(name, false),
            file_bytes: 1000,
            file_sha256: "b".repeat(64),
            compression: "zstd".into(),
            encryption: None,
            archived_at: "2026-01-01T00:00:00Z".into(),
            itbackup_version: "0.1.0".into(),
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let name = WalName::parse("000000010000000000000001").unwrap();
        let written = record(&name);
        let read = WalRecord::parse(&written.to_json(), &name, "x").unwrap();
        assert_eq!(read, written);
    }

    #[test]
    fn a_record_of_another_file_or_pointing_elsewhere_is_damaged() {
        let name = WalName::parse("000000010000000000000001").unwrap();
        let other = WalName::parse("000000010000000000000002").unwrap();
        let err = WalRecord::parse(&record(&other).to_json(), &name, "x").unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::DamagedBackup);
        let mut escaping = record(&name);
        escaping.file = "../../etc/passwd".into();
        let err = WalRecord::parse(&escaping.to_json(), &name, "x").unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::DamagedBackup);
        let err = WalRecord::parse(b"{}", &name, "x").unwrap_err();
        assert_eq!(err.kind, crate::error::Kind::DamagedBackup);
    }
}
