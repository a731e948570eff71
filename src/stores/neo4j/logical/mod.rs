//! The logical method: an online export over Bolt into zstd-compressed
//! NDJSON (format in `docs/neo4j-logical.md`), its offline check, and its
//! restore in batches. The files: `export.rs` (backup; `props_json.rs`
//! writes a row's properties), `check.rs` (offline check), `load.rs` (the
//! restore; `spill.rs` groups relationships by start node), `import.rs`
//! (`--neo4j-load import`: neo4j-admin's bulk import, the server stopped;
//! `import_csv.rs` writes its CSV files).

use std::borrow::Cow;
use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{neo_error, quote, Neo4j, SVC};
use crate::manifest::ArtifactRecord;
use crate::process::mask_userinfo;
use crate::stores::BackupContext;

mod batch;
mod check;
mod export;
mod id_map;
mod import;
mod import_csv;
mod load;
mod props_bolt;
mod props_json;
mod spill;

pub(super) use check::check_logical;
pub(super) use import::PreparedImport;

const LOGICAL_FORMAT: &str = "itbackup-neo4j-ndjson";
const LOGICAL_VERSION: u32 = 1;
/// Temporary label and index of earlier versions' restores: never counted or exported.
pub(super) const TEMP_LABEL: &str = "__ItbRestore";
const TEMP_INDEX: &str = "itbackup_restore_id";
/// Lines travel in chunks of about this size: from the export to the
/// artifact's writer, and from the artifact's reader to the verification
/// and the restore.
const CHUNK_BYTES: usize = 256 * 1024;
/// The longest line of the logical format (one node or relationship with its
/// properties). The restore sends a line as one row of one transaction, which
/// Neo4j holds several times over in its transaction memory (a 100 MB line
/// failed with MemoryPoolOutOfMemoryError). The export refuses a longer
/// line, the verification and the load's readers refuse it too.
const MAX_LINE: usize = 32 << 20;
/// A batch is sent once its lines reach this many bytes (or `batch_size`
/// rows): a transaction's rows stay about this size, whatever the rows.
const BATCH_BYTES: usize = 8 << 20;

/// A header, schema or end line of the logical format. Node and relationship
/// lines are written by [`Entity::write`]; every line is read as
/// [`Record`].
#[derive(Debug, Default, Serialize)]
struct Line {
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    statement: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relationships: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
}

impl Line {
    fn new(kind: &str) -> Self {
        Line {
            kind: kind.into(),
            ..Default::default()
        }
    }
}

/// One line of the logical format, as the restore and the verification read
/// it: names borrowed from the line, properties decoded as `P` (skipped with
/// `IgnoredAny`, checked and converted with [`props_bolt::TypedProps`]).
#[derive(Deserialize)]
pub(super) struct Record<'a, P> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    #[serde(default, borrow)]
    pub rel_type: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub start: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub end: Option<Cow<'a, str>>,
    #[serde(default)]
    pub statement: Option<String>,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub version: Option<u32>,
    #[serde(default)]
    pub nodes: Option<u64>,
    #[serde(default)]
    pub relationships: Option<u64>,
    /// Decoded to check it (verification) or skipped (routing); a batch
    /// decodes its lines' properties again when it is sent.
    #[serde(default)]
    #[allow(dead_code)]
    pub props: Option<P>,
}

/// Exported node ids, compact: element ids end in a dense integer.
#[derive(Default)]
struct IdSet {
    bits: Vec<u64>,
    other: HashSet<String>,
}

impl IdSet {
    fn numeric(id: &str) -> Option<usize> {
        id.rsplit(':').next()?.parse().ok()
    }
    fn insert(&mut self, id: &str) {
        match Self::numeric(id) {
            Some(n) if n < (1 << 36) => {
                let word = n / 64;
                if word >= self.bits.len() {
                    self.bits.resize(word + 1, 0);
                }
                self.bits[word] |= 1 << (n % 64);
            }
            _ => {
                self.other.insert(id.to_string());
            }
        }
    }
    fn contains(&self, id: &str) -> bool {
        match Self::numeric(id) {
            Some(n) if n < (1 << 36) => self
                .bits
                .get(n / 64)
                .is_some_and(|w| w & (1 << (n % 64)) != 0),
            _ => self.other.contains(id),
        }
    }
}

impl Neo4j {
    /// The `--dry-run` steps of a logical backup.
    pub(in crate::stores::neo4j) fn plan_logical_backup(
        &self,
        ctx: &BackupContext<'_>,
    ) -> Vec<String> {
        let db = &self.settings.database;
        vec![
            format!("connect to {} as {} (database {db}), online: no downtime", mask_userinfo(&self.settings.uri), self.settings.user),
            "SHOW CONSTRAINTS / SHOW INDEXES: every schema definition".into(),
            "MATCH (x): every node with its labels and properties; then MATCH (a)-[x]->(b): every relationship".into(),
            format!("write {}/neo4j_{}.ndjson.zst", ctx.dir.display(), ctx.timestamp),
        ]
    }

    /// The `--dry-run` steps of a logical restore.
    pub(in crate::stores::neo4j) fn plan_logical_restore(
        &self,
        record: &ArtifactRecord,
    ) -> Vec<String> {
        if self.settings.load == super::settings::Neo4jLoad::Import {
            return self.plan_import_restore(record);
        }
        vec![
            format!("wipe database {}: drop constraints and indexes, DETACH DELETE every node in batches", self.settings.database),
            format!("load nodes then relationships from {} in batches of {} ({} transactions in flight)", record.file, self.settings.batch_size, self.settings.transactions),
            "create constraints and indexes, wait for them, remove the temporary restore markers".into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_set_holds_numeric_and_other_ids() {
        let mut set = IdSet::default();
        set.insert("4:0b5c:12345");
        set.insert("weird-id");
        assert!(set.contains("4:0b5c:12345"));
        assert!(!set.contains("4:0b5c:12346"));
        assert!(set.contains("weird-id"));
    }
}
