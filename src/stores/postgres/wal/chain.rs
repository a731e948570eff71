//! The WAL a point-in-time restore will replay, checked before the server
//! is stopped: every segment from the base backup's end to the target, on
//! the timelines PostgreSQL will follow (`recovery_target_timeline =
//! 'latest'`: the newest timeline whose history files follow on from the
//! backup's), present in the archive and intact (re-hashed, or read back
//! from the repository). A gap is named; nothing is changed.
//!
//! Why it matters: PostgreSQL takes a `restore_command` that fails as "no
//! more WAL". A recovery to `latest` with a segment missing or damaged in
//! the middle would end there and promote, quietly losing every commit
//! after it; here it is an error while the old cluster is still whole.

use std::collections::BTreeSet;
use std::path::Path;

use super::{LocalArchive, RemoteArchive, WalName, WalRecord, SVC, WAL_DIR};
use crate::error::{Error, Result};
use crate::seal::Identities;
use crate::stores::postgres::physical::lsn::{parse_segment_name, segment_name, Lsn};

/// Where a restore reads the archive from.
pub enum Archive {
    Local(LocalArchive),
    Remote(RemoteArchive),
}

/// How far the replay goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainEnd {
    /// The base backup alone (its own WAL is inside it).
    Backup,
    /// Through the segment holding this position.
    Lsn(Lsn),
    /// Through the first segment archived at or after this moment, and on
    /// to the end of the archive (the first commit after it, where recovery
    /// stops, may be in any later segment).
    Time(jiff::Timestamp),
    /// Every segment archived.
    Latest,
}

/// How much of each archived file the walk reads.
#[derive(Clone, Copy)]
pub enum Depth<'a> {
    /// Names (and the records a time target needs): how far the archive
    /// reaches, without reading it (`list`).
    Names,
    /// Every segment re-hashed, or read back from a repository (`verify`).
    Hash,
    /// Every file fetched, checked, and archived again, plain, in this
    /// local archive: what PostgreSQL's `restore_command` reads then, with
    /// no key or repository credentials in the server's hands (a restore).
    Stage(&'a LocalArchive),
}

/// Where the base backup's WAL ends.
#[derive(Debug, Clone, Copy)]
pub struct ChainStart {
    pub timeline: u32,
    pub end_lsn: Lsn,
    pub segment_bytes: u64,
}

/// What the check found.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// The timeline recovery ends on (before its promotion to a new one).
    pub timeline: u32,
    /// Every segment the replay needs from the archive, in order.
    pub segments: Vec<String>,
    /// When the last of them was archived.
    pub last_archived_at: Option<String>,
    /// The timeline history files recovery reads.
    pub histories: Vec<String>,
}

impl Archive {
    pub fn location(&self) -> String {
        match self {
            Archive::Local(archive) => archive.dir.display().to_string(),
            Archive::Remote(archive) => archive.location(),
        }
    }

    /// The archive of a backup location: `wal/` of the repository at
    /// `url`, else of the local `root`.
    pub fn at(root: &Path, url: Option<&str>) -> Result<Archive> {
        Ok(match url {
            Some(url) => Archive::Remote(RemoteArchive::open(url)?),
            None => Archive::Local(LocalArchive::new(root)),
        })
    }

    /// [`Archive::at`] a repository.
    pub fn of(repository: &crate::repository::Repository) -> Result<Archive> {
        match repository {
            crate::repository::Repository::Local(root) => Archive::at(root, None),
            crate::repository::Repository::Remote(remote) => {
                Archive::at(Path::new(""), Some(&remote.url))
            }
        }
    }

    /// Every file in the archive, records and stored files alike, with its size.
    pub async fn files(&self) -> Result<Vec<(String, u64)>> {
        match self {
            Archive::Local(archive) => {
                let fail = |e| {
                    crate::error::io_error(Some(SVC), "list WAL archive", archive.dir.display(), e)
                };
                let entries = match std::fs::read_dir(&archive.dir) {
                    Ok(entries) => entries,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(fail(e)),
                };
                let mut files = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(fail)?;
                    let meta = entry.metadata().map_err(fail)?;
                    if meta.is_file() {
                        files.push((entry.file_name().to_string_lossy().into_owned(), meta.len()));
                    }
                }
                Ok(files)
            }
            Archive::Remote(archive) => archive.remote().list_sized(&[WAL_DIR]).await,
        }
    }

    /// Every name that has a record (stored files without one are not archived).
    pub async fn names(&self) -> Result<BTreeSet<String>> {
        Ok(self
            .files()
            .await?
            .into_iter()
            .filter_map(|(f, _)| {
                f.strip_suffix(super::record::RECORD_SUFFIX)
                    .map(String::from)
            })
            .collect())
    }

    /// Remove one file of the archive (prune: a record before its stored file).
    pub async fn remove(&self, file: &str) -> Result<()> {
        match self {
            Archive::Local(archive) => {
                let path = archive.dir.join(file);
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(
                        crate::error::io_error(Some(SVC), "remove archived WAL", path.display(), e),
                    ),
                    _ => Ok(()),
                }
            }
            Archive::Remote(archive) => archive
                .remote()
                .delete_object(WAL_DIR, file)
                .await
                .map_err(|e| e.service(SVC)),
        }
    }

    /// The record of the newest segment archived (on the newest timeline),
    /// if any: what `status` judges the archive's age by.
    pub async fn newest(&self) -> Result<Option<WalRecord>> {
        let names = self.names().await?;
        let Some(newest) = names
            .iter()
            .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
            .max()
        else {
            return Ok(None);
        };
        self.record(&WalName::parse(newest)?).await
    }

    async fn record(&self, name: &WalName) -> Result<Option<WalRecord>> {
        match self {
            Archive::Local(archive) => archive.record(name),
            Archive::Remote(archive) => archive.record(name).await,
        }
    }

    /// The stored file of `record` is there and hashes to its record.
    async fn check(&self, record: &WalRecord) -> Result<()> {
        match self {
            Archive::Local(archive) => {
                let stored = archive.stored_path(record);
                let record = record.clone();
                crate::stores::blocking(SVC, move || super::stream::check_stored(&stored, &record))
                    .await
            }
            Archive::Remote(archive) => archive
                .remote()
                .check_object(&[WAL_DIR, &record.file], &record.stored())
                .await
                .map_err(|e| {
                    e.service(SVC)
                        .hint("the WAL chain is broken at this segment: recover to a point before it, or take a new base backup")
                }),
        }
    }

    /// The plaintext of a small archived file (a timeline history).
    async fn read_history(
        &self,
        name: &WalName,
        identities: Option<&Identities>,
        scratch: &Path,
    ) -> Result<String> {
        let dest = scratch.join(format!("history-{name}"));
        match self {
            Archive::Local(archive) => {
                archive.fetch(name, &dest, identities)?;
            }
            Archive::Remote(archive) => {
                archive.fetch(name, &dest, identities).await?;
            }
        }
        let text = crate::artifact::read_small_text(&dest, 1024 * 1024).map_err(|e| {
            crate::error::io_error(Some(SVC), "read timeline history", dest.display(), e)
        });
        let _ = std::fs::remove_file(&dest);
        text
    }
}

/// One timeline of the path recovery follows, and the position where the
/// next one branches off it (`None` for the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Leg {
    timeline: u32,
    until: Option<Lsn>,
}

/// A history file's lines: `<parent timeline>\t<switch position>\t<reason>`.
fn parse_history(text: &str) -> Option<Vec<(u32, Lsn)>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let mut fields = line.split_whitespace();
            let timeline = fields.next()?.parse().ok()?;
            let switch = Lsn::parse(fields.next()?)?;
            Some((timeline, switch))
        })
        .collect()
}

/// The timelines PostgreSQL follows from the backup's: the newest one whose
/// history files exist one after the other, which must descend from the
/// backup's timeline after the backup's end.
async fn legs(
    archive: &Archive,
    names: &BTreeSet<String>,
    start: &ChainStart,
    identities: Option<&Identities>,
    scratch: &Path,
) -> Result<Vec<Leg>> {
    let mut newest = start.timeline;
    while names.contains(&format!("{:08X}.history", newest + 1)) {
        newest += 1;
    }
    if newest == start.timeline {
        return Ok(vec![Leg {
            timeline: newest,
            until: None,
        }]);
    }
    let name = WalName::parse(&format!("{newest:08X}.history"))?;
    let text = archive.read_history(&name, identities, scratch).await?;
    let history = parse_history(&text).ok_or_else(|| {
        Error::damaged(
            "check WAL chain",
            format!("{name} in {} does not parse", archive.location()),
        )
        .service(SVC)
    })?;
    let mut legs: Vec<Leg> = history
        .iter()
        .skip_while(|(timeline, _)| *timeline != start.timeline)
        .map(|(timeline, switch)| Leg {
            timeline: *timeline,
            until: Some(*switch),
        })
        .collect();
    match legs.first() {
        Some(Leg { until: Some(switch), .. }) if *switch >= start.end_lsn => {}
        _ => {
            return Err(Error::failure(
                "check WAL chain",
                format!(
                    "the archive's newest timeline {newest} does not continue the base backup's (timeline {} up to {}): PostgreSQL would refuse to recover",
                    start.timeline, start.end_lsn
                ),
            )
            .service(SVC)
            .hint("the base backup is older than a previous point-in-time restore's branch point: choose a newer base backup, or restore the backup alone (no --until); nothing was changed"))
        }
    }
    legs.push(Leg {
        timeline: newest,
        until: None,
    });
    Ok(legs)
}

/// Walk every segment from the base backup's end to `end`, as deep as
/// `depth` says; see the module doc.
pub async fn check(
    archive: &Archive,
    start: &ChainStart,
    end: ChainEnd,
    identities: Option<&Identities>,
    scratch: &Path,
    depth: Depth<'_>,
) -> Result<Chain> {
    // The backup alone reads nothing of the archive, not even its listing.
    let names = match end {
        ChainEnd::Backup => BTreeSet::new(),
        _ => archive.names().await?,
    };
    walk(archive, &names, start, end, identities, scratch, depth).await
}

/// [`check`] on the archive's `names` listed once (`list` walks from every
/// base backup).
pub async fn walk(
    archive: &Archive,
    names: &BTreeSet<String>,
    start: &ChainStart,
    end: ChainEnd,
    identities: Option<&Identities>,
    scratch: &Path,
    depth: Depth<'_>,
) -> Result<Chain> {
    if end == ChainEnd::Backup {
        return Ok(Chain {
            timeline: start.timeline,
            ..Chain::default()
        });
    }
    let legs = legs(archive, names, start, identities, scratch).await?;
    let bytes = start.segment_bytes;
    // The timeline a segment is read from: the newest leg that has begun by it.
    let timeline_of = |segment: u64| {
        let mut timeline = legs[0].timeline;
        for pair in legs.windows(2) {
            if let Some(switch) = pair[0].until {
                if segment >= switch.segment(bytes) {
                    timeline = pair[1].timeline;
                }
            }
        }
        timeline
    };
    let last_timeline = legs.last().expect("one leg at least").timeline;
    // The newest segment archived on the last timeline: anything missing
    // before it is a gap, not the end.
    let newest_archived = names
        .iter()
        .filter_map(|n| parse_segment_name(n, bytes))
        .filter(|(timeline, _)| *timeline == last_timeline)
        .map(|(_, segment)| segment)
        .max();
    let mut chain = Chain {
        timeline: last_timeline,
        histories: legs
            .iter()
            .skip(1)
            .map(|leg| format!("{:08X}.history", leg.timeline))
            .collect(),
        ..Chain::default()
    };
    if let Depth::Stage(stage) = depth {
        for history in &chain.histories {
            stage_one(archive, &WalName::parse(history)?, identities, stage).await?;
        }
    }
    let mut segment = start.end_lsn.segment(bytes);
    // For a time target: a segment archived at or after T has been seen.
    let mut time_reached = false;
    loop {
        let timeline = timeline_of(segment);
        let file = segment_name(timeline, segment, bytes);
        let name = WalName::parse(&file)?;
        // By name alone, a record is read only where a time is compared.
        let by_name = matches!(depth, Depth::Names) && !matches!(end, ChainEnd::Time(_));
        let record = match (names.contains(&file), depth) {
            (true, _) if by_name => Some(None),
            // Staged: fetched and checked once, its record read with it.
            (true, Depth::Stage(stage)) => {
                Some(Some(stage_one(archive, &name, identities, stage).await?))
            }
            (true, _) => archive.record(&name).await?.map(Some),
            (false, _) => None,
        };
        let Some(record) = record else {
            let beyond = newest_archived.is_some_and(|newest| newest > segment);
            return match end {
                ChainEnd::Latest if !beyond => {
                    if by_name {
                        chain.last_archived_at = last_archived_at(archive, &chain).await?;
                    }
                    Ok(chain)
                }
                // Past T, everything there was given (see `time_reached`).
                ChainEnd::Time(_) if time_reached => Ok(chain),
                _ if beyond || timeline != last_timeline => Err(gap(archive, &file, start, end)),
                ChainEnd::Time(t) => Err(Error::not_found(
                    "check WAL chain",
                    format!(
                        "the WAL archive {} ends before {t}: its last segment on the way there{} — the commits after it were never archived",
                        archive.location(),
                        chain.segments.last().map(|s| format!(" is {s}, archived at {}", chain.last_archived_at.as_deref().unwrap_or("?"))).unwrap_or_else(|| " is inside the base backup".into()),
                    ),
                )
                .service(SVC)
                .hint("choose an earlier --until, or --until latest for everything archived; check archiving (SELECT * FROM pg_stat_archiver); nothing was changed")),
                _ => Err(gap(archive, &file, start, end)),
            };
        };
        if let (Depth::Hash, Some(record)) = (depth, &record) {
            archive.check(record).await?;
        }
        chain.segments.push(file);
        let archived_at = record.map(|r| r.archived_at);
        chain.last_archived_at.clone_from(&archived_at);
        let done = match end {
            ChainEnd::Lsn(lsn) => segment >= lsn.segment(bytes),
            // A segment archived after T may still end before T (the
            // archiver runs behind), and recovery stops only at the first
            // commit after T, wherever that is: from the first segment
            // archived at or after T on, every segment there is given
            // (PostgreSQL reads no further than it needs), and the chain
            // ends where the archive ends or breaks.
            ChainEnd::Time(t) => {
                time_reached |= archived_at
                    .and_then(|at| at.parse::<jiff::Timestamp>().ok())
                    .is_some_and(|at| at >= t);
                false
            }
            ChainEnd::Latest | ChainEnd::Backup => false,
        };
        if done {
            if by_name {
                chain.last_archived_at = last_archived_at(archive, &chain).await?;
            }
            return Ok(chain);
        }
        segment += 1;
    }
}

/// When the last segment of `chain` was archived, from its record.
async fn last_archived_at(archive: &Archive, chain: &Chain) -> Result<Option<String>> {
    let Some(last) = chain.segments.last() else {
        return Ok(None);
    };
    Ok(archive
        .record(&WalName::parse(last)?)
        .await?
        .map(|r| r.archived_at))
}

/// Fetch `name` (checked against its record, opened when sealed) and archive
/// it again, plain, in `stage`; its record in the archive.
async fn stage_one(
    archive: &Archive,
    name: &WalName,
    identities: Option<&Identities>,
    stage: &LocalArchive,
) -> Result<WalRecord> {
    let plain = stage.dir.join(format!(".{name}.fetched"));
    let record = match archive {
        Archive::Local(archive) => archive.fetch(name, &plain, identities),
        Archive::Remote(archive) => archive.fetch(name, &plain, identities).await,
    };
    let stored = record.and_then(|record| stage.push(&plain, name, None).map(|_| record));
    let _ = std::fs::remove_file(&plain);
    stored
}

fn gap(archive: &Archive, missing: &str, start: &ChainStart, end: ChainEnd) -> Error {
    Error::not_found(
        "check WAL chain",
        format!(
            "{missing} is missing from the WAL archive {}: the chain from the base backup (timeline {}, {}) to {end:?} breaks there",
            archive.location(),
            start.timeline,
            start.end_lsn
        ),
    )
    .service(SVC)
    .hint("recover to a point before that segment (--until a time or position before it), or use a newer base backup; check archiving (SELECT * FROM pg_stat_archiver); nothing was changed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_files_are_read_line_by_line() {
        let text = "1\t0/9000000\tno recovery target specified\n\n2\t0/A0000A0\tbefore 2026-12-01 00:00:00+00\n";
        assert_eq!(
            parse_history(text),
            Some(vec![(1, Lsn(0x0900_0000)), (2, Lsn(0x0A00_00A0))])
        );
        assert_eq!(parse_history("x\ty\n"), None);
    }
}
