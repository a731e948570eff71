//! Retention of the WAL archive, for `prune`: every archived file a kept
//! base backup may need stays — from the oldest kept base backup's first
//! segment on, on every timeline, and every timeline history (a few bytes
//! each, and recovery needs them to follow a branch) — and the older files
//! go.
//!
//! Why from the backup's *start*: recovery needs the archive only after the
//! backup's end (the WAL in between is inside the artifact), but the
//! `.backup` label and the segments written during the backup are what an
//! operator checks a backup against by hand; the few extra segments cost
//! little.
//!
//! When no kept backup is a base backup, nothing is removed: the archive
//! may be meant for the next base backup, and prune never guesses that a
//! cluster stopped archiving.
//!
//! Each file goes record first: readers believe only records, so a prune
//! killed midway leaves stored files without a record (ignored, removed
//! next time), never a record without its file.

use std::collections::BTreeMap;

use serde::Serialize;

use super::chain::Archive;
use super::name::WalKind;
use super::record::RECORD_SUFFIX;
use super::WalName;
use crate::error::Result;
use crate::manifest::Manifest;
use crate::stores::postgres::physical::lsn::{parse_segment_name, segment_name, Lsn};
use crate::stores::postgres::physical::PhysicalDetails;

/// Where a kept base backup's WAL begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStart {
    pub timeline: u32,
    pub segment: u64,
    pub segment_bytes: u64,
}

impl WalStart {
    /// The start of the base backup in `manifest`, if it holds one.
    pub fn of(manifest: &Manifest) -> Option<WalStart> {
        let record = manifest.artifacts.get(&super::SVC)?;
        let details = PhysicalDetails::of(record).ok()?;
        let start = Lsn::parse(&details.start_lsn)?;
        (details.wal_segment_bytes > 0).then(|| WalStart {
            timeline: details.timeline,
            segment: start.segment(details.wal_segment_bytes),
            segment_bytes: details.wal_segment_bytes,
        })
    }
}

/// What prune does (or would do) with the WAL archive.
#[derive(Debug, Clone, Serialize)]
pub struct WalPrune {
    pub location: String,
    /// The oldest segment kept: the first of the oldest kept base backup.
    pub keep_from: Option<String>,
    /// Archived files (segments, `.partial` segments, `.backup` labels)
    /// removed, or to be removed in a dry run, and the bytes they hold.
    pub removed_files: usize,
    pub freed_bytes: u64,
    pub kept_files: usize,
    /// Why nothing is removed, when nothing is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Remove (unless `dry_run`) the archived files older than the oldest of
/// `kept`; see the module doc. `None` when the location has no archive.
pub async fn prune(
    archive: &Archive,
    kept: &[WalStart],
    dry_run: bool,
) -> Result<Option<WalPrune>> {
    let files = archive.files().await?;
    if files.is_empty() {
        return Ok(None);
    }
    // The archived names, each with its stored files and record.
    let mut by_name: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for (file, bytes) in files {
        let name = [RECORD_SUFFIX, ".zst.age", ".zst"]
            .iter()
            .find_map(|suffix| file.strip_suffix(suffix))
            .filter(|name| WalName::parse(name).is_ok())
            .map(String::from);
        if let Some(name) = name {
            by_name.entry(name).or_default().push((file, bytes));
        }
    }
    let mut outcome = WalPrune {
        location: archive.location(),
        keep_from: None,
        removed_files: 0,
        freed_bytes: 0,
        kept_files: by_name.len(),
        note: None,
    };
    let Some(oldest) = kept.iter().min_by_key(|start| start.segment) else {
        outcome.note = Some("no kept backup is a PostgreSQL base backup: the archive is left as it is (it may be meant for the next one; remove it by hand if archiving has stopped)".into());
        return Ok(Some(outcome));
    };
    if kept.iter().any(|k| k.segment_bytes != oldest.segment_bytes) {
        outcome.note = Some(
            "the kept base backups disagree on the WAL segment size: the archive is left as it is"
                .into(),
        );
        return Ok(Some(outcome));
    }
    outcome.keep_from = Some(segment_name(
        oldest.timeline,
        oldest.segment,
        oldest.segment_bytes,
    ));
    for (name, mut files) in by_name {
        let kind = WalName::parse(&name)?.kind();
        let segment = match kind {
            WalKind::History => continue,
            _ => parse_segment_name(&name[..24], oldest.segment_bytes).map(|(_, s)| s),
        };
        if segment.is_none_or(|segment| segment >= oldest.segment) {
            continue;
        }
        outcome.removed_files += 1;
        outcome.kept_files -= 1;
        outcome.freed_bytes += files.iter().map(|(_, bytes)| bytes).sum::<u64>();
        if dry_run {
            continue;
        }
        // The record first (false sorts before true).
        files.sort_by_key(|(file, _)| !file.ends_with(RECORD_SUFFIX));
        for (file, _) in &files {
            archive.remove(file).await?;
        }
    }
    if !dry_run && outcome.removed_files > 0 {
        tracing::info!(
            removed = outcome.removed_files,
            keep_from = outcome.keep_from.as_deref().unwrap_or(""),
            "postgres: removed the archived WAL no kept base backup needs"
        );
    }
    Ok(Some(outcome))
}
