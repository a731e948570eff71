//! The tar stream of a base backup (`pg_basebackup -D - -Ft -X fetch`), read
//! once, as it flows: every file is hashed and, on a restore, written into
//! the new data directory; at the end the stream's own `backup_manifest`
//! (PostgreSQL's list of every file with its size and SHA-256, and the WAL
//! range the backup needs) is checked against what went by. So a backup is
//! proven whole while it is taken, `verify` proves it again without a
//! server, and a restore never starts a server on a data directory that
//! differs by one byte from what PostgreSQL wrote.
//!
//! A backup is data from outside (a repository, a forged file): names that
//! would leave the data directory (absolute, `..`), links, devices and
//! anything but files and directories are refused before they are written.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::lsn::Lsn;

/// The largest `backup_manifest` read into memory: about 200 bytes a file,
/// so room for several million files; more is a forged stream.
const MAX_MANIFEST_BYTES: u64 = 1 << 30;
/// The largest `backup_label` (a few hundred bytes in practice).
const MAX_LABEL_BYTES: u64 = 64 * 1024;

/// What a base backup's stream holds, proven against its own manifest.
#[derive(Debug, Clone, Default)]
pub struct BaseSummary {
    /// `START WAL LOCATION` of the backup label.
    pub start_lsn: Lsn,
    /// The end of the WAL range the backup needs to be consistent.
    pub end_lsn: Lsn,
    pub timeline: u32,
    /// `START TIME` of the backup label, as PostgreSQL wrote it.
    pub start_time: String,
    /// Regular files and their total size (what a restore writes).
    pub files: u64,
    pub data_bytes: u64,
    /// SHA-256 of the `backup_manifest` file.
    pub manifest_sha256: String,
    /// The WAL segments the stream carries (`pg_wal/<name>`).
    pub wal_segments: Vec<String>,
}

/// The per-file checksum PostgreSQL wrote into `backup_manifest`
/// (`pg_basebackup --manifest-checksums`), which the stream is checked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum FileChecksum {
    /// CRC-32C: PostgreSQL's default, computed in hardware on both sides;
    /// the artifact as a whole is SHA-256 (and, sealed, authenticated).
    #[serde(rename = "CRC32C")]
    Crc32c,
    /// What the first physical backups used (older manifests name none).
    #[default]
    #[serde(rename = "SHA256")]
    Sha256,
}

impl FileChecksum {
    /// The name pg_basebackup's `--manifest-checksums` and the manifest use.
    pub fn name(self) -> &'static str {
        match self {
            FileChecksum::Crc32c => "CRC32C",
            FileChecksum::Sha256 => "SHA256",
        }
    }
}

/// A running checksum of one file.
enum Running {
    Crc32c(u32),
    Sha256(Sha256),
}

impl Running {
    fn new(algorithm: FileChecksum) -> Running {
        match algorithm {
            FileChecksum::Crc32c => Running::Crc32c(0),
            FileChecksum::Sha256 => Running::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Running::Crc32c(crc) => *crc = crc32c::crc32c_append(*crc, bytes),
            Running::Sha256(hasher) => hasher.update(bytes),
        }
    }

    /// Hex, as backup_manifest writes it: PostgreSQL copies a CRC's four
    /// bytes in memory order (little-endian here) before hex-encoding them.
    fn finish(self) -> String {
        match self {
            Running::Crc32c(crc) => hex::encode(crc.to_le_bytes()),
            Running::Sha256(hasher) => hex::encode(hasher.finalize()),
        }
    }
}

/// Where a restore writes the files it reads, and as whom.
pub struct Extract<'a> {
    pub into: &'a Path,
    /// Owner of every file and directory written (the data directory's).
    pub owner: Option<(u32, u32)>,
}

#[derive(Deserialize)]
struct ManifestFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

#[derive(Deserialize)]
struct ManifestWalRange {
    #[serde(rename = "Timeline")]
    timeline: u32,
    #[serde(rename = "Start-LSN")]
    start: String,
    #[serde(rename = "End-LSN")]
    end: String,
}

#[derive(Deserialize)]
struct BackupManifest {
    #[serde(rename = "Files")]
    files: Vec<ManifestFile>,
    #[serde(rename = "WAL-Ranges")]
    wal_ranges: Vec<ManifestWalRange>,
    #[serde(rename = "Manifest-Checksum")]
    checksum: String,
}

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// Read a base backup's tar stream to its end, checking every file against
/// the stream's `backup_manifest`, and write it out when `extract` is set.
pub fn read(
    reader: impl Read,
    extract: Option<&Extract<'_>>,
    algorithm: FileChecksum,
) -> io::Result<BaseSummary> {
    let mut archive = tar::Archive::new(reader);
    let mut seen: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut label = None;
    let mut manifest = None;
    let mut summary = BaseSummary::default();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry_name(&entry)?;
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            if let Some(extract) = extract {
                create_dir(&extract.into.join(&name), extract.owner)?;
            }
            continue;
        }
        if !kind.is_file() {
            return Err(invalid(format!(
                "{name}: a {kind:?} entry; a base backup of itbackup holds only files and directories (a cluster with tablespaces cannot be streamed by pg_basebackup -D -)"
            )));
        }
        if name == "backup_manifest" {
            let mut bytes = Vec::new();
            (&mut entry)
                .take(MAX_MANIFEST_BYTES + 1)
                .read_to_end(&mut bytes)?;
            if bytes.len() as u64 > MAX_MANIFEST_BYTES {
                return Err(invalid("backup_manifest is larger than 1 GiB"));
            }
            if let Some(extract) = extract {
                write_file(&extract.into.join(&name), extract.owner, &bytes[..])?;
            }
            summary.manifest_sha256 = hex::encode(Sha256::digest(&bytes));
            manifest = Some(bytes);
            continue;
        }
        let mut hasher = HashingRead {
            inner: &mut entry,
            hasher: Running::new(algorithm),
            bytes: 0,
            keep: (name == "backup_label").then(Vec::new),
        };
        match extract {
            Some(extract) => {
                write_file(&extract.into.join(&name), extract.owner, &mut hasher)?;
            }
            None => {
                io::copy(&mut hasher, &mut io::sink())?;
            }
        }
        if let Some(kept) = hasher.keep.take() {
            if kept.len() as u64 > MAX_LABEL_BYTES {
                return Err(invalid("backup_label is larger than 64 KiB"));
            }
            label = Some(String::from_utf8_lossy(&kept).into_owned());
        }
        if let Some(segment) = name.strip_prefix("pg_wal/") {
            if segment.len() == 24 && segment.bytes().all(|b| b.is_ascii_hexdigit()) {
                summary.wal_segments.push(segment.to_string());
            }
        }
        summary.files += 1;
        summary.data_bytes += hasher.bytes;
        let digest = hasher.hasher.finish();
        if seen.insert(name.clone(), (hasher.bytes, digest)).is_some() {
            return Err(invalid(format!("{name} is in the stream twice")));
        }
    }
    let label = label.ok_or_else(|| invalid("the stream has no backup_label"))?;
    let manifest = manifest.ok_or_else(|| invalid("the stream has no backup_manifest"))?;
    read_label(&label, &mut summary)?;
    check_against_manifest(&manifest, &seen, &mut summary, algorithm)?;
    Ok(summary)
}

/// The entry's path, relative and inside the data directory.
fn entry_name<R: Read>(entry: &tar::Entry<'_, R>) -> io::Result<String> {
    let path = entry.path()?;
    let mut clean = PathBuf::new();
    for part in path.components() {
        match part {
            Component::Normal(p) => clean.push(p),
            Component::CurDir => {}
            _ => {
                return Err(invalid(format!(
                    "{}: a path that leaves the data directory",
                    path.display()
                )))
            }
        }
    }
    let name = clean.to_string_lossy().into_owned();
    if name.is_empty() {
        return Err(invalid("an entry without a name"));
    }
    Ok(name)
}

/// The start of the WAL, the timeline and the start time, from `backup_label`.
fn read_label(label: &str, summary: &mut BaseSummary) -> io::Result<()> {
    let field = |key: &str| {
        label
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .map(str::trim)
            .ok_or_else(|| invalid(format!("backup_label has no {key}")))
    };
    let start = field("START WAL LOCATION:")?;
    summary.start_lsn = Lsn::parse(start.split_whitespace().next().unwrap_or(""))
        .ok_or_else(|| invalid(format!("backup_label: bad START WAL LOCATION '{start}'")))?;
    let timeline = field("START TIMELINE:")?;
    summary.timeline = timeline
        .parse()
        .map_err(|_| invalid(format!("backup_label: bad START TIMELINE '{timeline}'")))?;
    summary.start_time = field("START TIME:")?.to_string();
    Ok(())
}

/// Every file the manifest lists went by with its size and SHA-256, and
/// nothing else did; the manifest's own checksum holds.
fn check_against_manifest(
    bytes: &[u8],
    seen: &BTreeMap<String, (u64, String)>,
    summary: &mut BaseSummary,
    algorithm: FileChecksum,
) -> io::Result<()> {
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("backup_manifest is not UTF-8"))?;
    let manifest: BackupManifest = serde_json::from_str(text)
        .map_err(|e| invalid(format!("backup_manifest does not parse: {e}")))?;
    // PostgreSQL's rule: the SHA-256 of everything before the checksum line.
    let covered = text
        .rfind("\"Manifest-Checksum\"")
        .ok_or_else(|| invalid("backup_manifest has no Manifest-Checksum"))?;
    let computed = hex::encode(Sha256::digest(&bytes[..covered]));
    if !computed.eq_ignore_ascii_case(&manifest.checksum) {
        return Err(invalid(format!(
            "backup_manifest's checksum is {} but its content hashes to {computed}",
            manifest.checksum
        )));
    }
    let mut listed = std::collections::BTreeSet::new();
    for file in &manifest.files {
        let path = match (&file.path, &file.encoded_path) {
            (Some(path), _) => path.clone(),
            (None, Some(encoded)) => String::from_utf8_lossy(
                &hex::decode(encoded)
                    .map_err(|_| invalid(format!("backup_manifest: bad Encoded-Path {encoded}")))?,
            )
            .into_owned(),
            (None, None) => return Err(invalid("backup_manifest: a file without a path")),
        };
        let (size, checksum) = seen.get(&path).ok_or_else(|| {
            invalid(format!(
                "{path} is in backup_manifest but not in the stream"
            ))
        })?;
        if *size != file.size {
            return Err(invalid(format!(
                "{path}: {size} bytes in the stream, {} in backup_manifest",
                file.size
            )));
        }
        let expected_algorithm = algorithm.name();
        match (file.algorithm.as_deref(), file.checksum.as_deref()) {
            (Some(name), Some(expected))
                if name == expected_algorithm && expected.eq_ignore_ascii_case(checksum) => {}
            (Some(name), Some(expected)) if name == expected_algorithm => {
                return Err(invalid(format!(
                    "{path}: {name} {checksum} in the stream, {expected} in backup_manifest"
                )))
            }
            (found, _) => {
                return Err(invalid(format!(
                    "{path}: backup_manifest has a {} checksum, not the {expected_algorithm} this backup was taken with",
                    found.unwrap_or("missing")
                )))
            }
        }
        listed.insert(path);
    }
    // WAL segments are left out of backup_manifest by PostgreSQL (its
    // pg_verifybackup parses them instead): here they must be the ones the
    // WAL range needs, each present, and are covered by the artifact's hash.
    if let Some(extra) = seen
        .keys()
        .find(|name| !listed.contains(*name) && !is_wal_segment(name))
    {
        return Err(invalid(format!(
            "{extra} is in the stream but not in backup_manifest"
        )));
    }
    let range = manifest
        .wal_ranges
        .last()
        .ok_or_else(|| invalid("backup_manifest has no WAL range"))?;
    summary.end_lsn = Lsn::parse(&range.end)
        .ok_or_else(|| invalid(format!("backup_manifest: bad End-LSN {}", range.end)))?;
    for segment in needed_segments(
        summary.timeline,
        summary.start_lsn,
        summary.end_lsn,
        segment_bytes(seen),
    ) {
        if !summary.wal_segments.contains(&segment) {
            return Err(invalid(format!(
                "pg_wal/{segment} is missing: the base backup needs the WAL from {} to {}",
                summary.start_lsn, summary.end_lsn
            )));
        }
    }
    if range.timeline != summary.timeline || Lsn::parse(&range.start) != Some(summary.start_lsn) {
        return Err(invalid(format!(
            "backup_manifest's WAL range (timeline {}, from {}) is not backup_label's (timeline {}, from {})",
            range.timeline, range.start, summary.timeline, summary.start_lsn
        )));
    }
    Ok(())
}

fn is_wal_segment(name: &str) -> bool {
    name.strip_prefix("pg_wal/").is_some_and(|segment| {
        segment.len() == 24 && segment.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The size of the stream's WAL segments (every one has it), 16 MiB by default.
fn segment_bytes(seen: &BTreeMap<String, (u64, String)>) -> u64 {
    seen.iter()
        .find(|(name, _)| is_wal_segment(name))
        .map(|(_, (size, _))| *size)
        .filter(|size| size.is_power_of_two())
        .unwrap_or(16 * 1024 * 1024)
}

/// The names of the segments holding the WAL from `start` to `end`.
fn needed_segments(timeline: u32, start: Lsn, end: Lsn, bytes: u64) -> Vec<String> {
    let last = if end.0 > 0 { Lsn(end.0 - 1) } else { end };
    (start.segment(bytes)..=last.segment(bytes).max(start.segment(bytes)))
        .map(|segment| super::lsn::segment_name(timeline, segment, bytes))
        .collect()
}

/// Hashes (and counts) what is read through it; keeps it too when asked
/// (the small `backup_label`).
struct HashingRead<R> {
    inner: R,
    hasher: Running,
    bytes: u64,
    keep: Option<Vec<u8>>,
}

impl<R: Read> Read for HashingRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        if let Some(keep) = &mut self.keep {
            if (keep.len() as u64) <= MAX_LABEL_BYTES {
                keep.extend_from_slice(&buf[..n]);
            }
        }
        Ok(n)
    }
}

/// A directory of the data directory (0700, as PostgreSQL requires).
fn create_dir(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    match fs::create_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => {}
        Err(e) => return Err(with_path(e, path)),
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|e| with_path(e, path))?;
    chown(path, owner)
}

/// A file of the data directory (0600), created anew: an existing one is a
/// second copy in the stream, or something that is not ours.
fn write_file(path: &Path, owner: Option<(u32, u32)>, mut content: impl Read) -> io::Result<()> {
    if let Some(parent) = path.parent() {
        if !parent.is_dir() {
            fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
        }
    }
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| with_path(e, path))?;
    // Large writes: relation files are up to 1 GiB each.
    let mut file = io::BufWriter::with_capacity(crate::artifact::CHUNK, file);
    io::copy(&mut content, &mut file).map_err(|e| with_path(e, path))?;
    file.flush().map_err(|e| with_path(e, path))?;
    chown(path, owner)
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> io::Result<()> {
    match owner {
        Some((uid, gid)) => {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| with_path(e, path))
        }
        None => Ok(()),
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// fsync every file and directory under `dir` (after an extraction: the
/// server must not start on files a power cut could still take away).
pub fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| with_path(e, dir))? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            sync_tree(&path)?;
        } else {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| with_path(e, &path))?;
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| with_path(e, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CRC-32C's check value, as backup_manifest writes it (memory order).
    #[test]
    fn crc32c_is_written_as_postgresql_writes_it() {
        let mut crc = Running::new(FileChecksum::Crc32c);
        crc.update(b"1234");
        crc.update(b"56789");
        assert_eq!(crc.finish(), "839206e3");
        let mut sha = Running::new(FileChecksum::Sha256);
        sha.update(b"");
        assert!(sha.finish().starts_with("e3b0c442"));
    }
}
