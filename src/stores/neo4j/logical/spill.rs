//! Relationships grouped by start node before they are loaded.
//!
//! The export writes relationships in the order Neo4j scans them (by
//! relationship id), so their endpoints are random. Neo4j takes a lock on
//! both endpoints of every relationship a transaction creates and relinks
//! their relationship chains at commit; with random endpoints each batch
//! touches ~2 nodes per row and the batches in flight keep waiting for each
//! other's node locks. Grouped by start node, a batch touches each start node
//! once for all its relationships, and the batches in flight hold disjoint
//! start nodes: on the 1M-node/2M-relationship bench graph the relationship
//! phase went from 33 s to 27 s.
//!
//! While the nodes load (the server is then the bottleneck), a second reader
//! of the artifact writes each relationship line into one of a few hundred
//! scratch files by its start node's exported id; afterwards each file is
//! read back, sorted by start node in windows of bounded size, and handed on
//! in chunks of whole lines. Memory stays bounded whatever the graph's size;
//! the scratch files take about the size of the uncompressed relationship
//! lines and go with the restore's scratch directory.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::Path;

use crate::artifact::ArtifactSource;

use serde::Deserialize;

use super::{IdSet, SVC};
use crate::error::{io_error, Error, Result};

/// About this many relationships per scratch file...
const RELATIONSHIPS_PER_BUCKET: u64 = 16_384;
/// ...in at most this many files (plus one for ids that are not numeric).
const MAX_BUCKETS: u64 = 256;
/// Write buffer per scratch file.
const WRITE_BUFFER: usize = 16 * 1024;
/// A scratch file is sorted in windows of at most this many bytes.
const SORT_WINDOW: usize = 16 << 20;

const STEP: &str = "sort relationships";

/// The relationship lines of an export, in scratch files by start node.
pub(super) struct Spilled {
    /// Ordered by start node range; the last one holds non-numeric start ids.
    buckets: Vec<File>,
    pub relationships: u64,
}

/// What the spilling reader needs of a line.
#[derive(Deserialize)]
struct LineView<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    start: Option<std::borrow::Cow<'a, str>>,
}

/// Sorting key of a spilled line: its start node's exported id.
fn key_of(start: &str) -> Option<u64> {
    IdSet::numeric(start).map(|n| n as u64)
}

/// Write every relationship line of the export at `path` into scratch files
/// under `scratch` by start node. `relationships` (from the manifest, if it
/// says) sizes the files. Blocking: run it on a blocking thread.
pub(super) fn spill(
    path: &ArtifactSource,
    scratch: &Path,
    relationships: Option<u64>,
) -> Result<Spilled> {
    let scratch_error = |e: std::io::Error| io_error(Some(SVC), STEP, scratch.display(), e);
    let wanted = relationships.map_or(MAX_BUCKETS / 4, |n| n.div_ceil(RELATIONSHIPS_PER_BUCKET));
    let count = wanted.clamp(1, MAX_BUCKETS) as usize;
    let mut writers = Vec::with_capacity(count + 1);
    for _ in 0..=count {
        let file = tempfile::tempfile_in(scratch).map_err(scratch_error)?;
        writers.push(BufWriter::with_capacity(WRITE_BUFFER, file));
    }

    let mut highest_node: u64 = 0;
    let mut width: Option<u64> = None;
    let mut spilled = 0u64;
    let mut outcome: Result<()> = Ok(());
    crate::ndjson::read_lines(path, SVC, super::MAX_LINE, |line| {
        let (number, line) = match line {
            Ok(line) => line,
            Err(e) => {
                outcome = Err(e);
                return false;
            }
        };
        let view: LineView = match serde_json::from_slice(line) {
            Ok(view) => view,
            Err(e) => {
                outcome = Err(crate::ndjson::damaged(path, SVC, number, e.to_string()));
                return false;
            }
        };
        match view.kind.as_ref() {
            // Nodes come before relationships: their ids bound the start ids.
            "node" if width.is_none() => {
                if let Some(n) = view.id.as_deref().and_then(key_of) {
                    highest_node = highest_node.max(n);
                }
            }
            "rel" => {
                let width = *width.get_or_insert((highest_node / count as u64) + 1);
                let start = view.start.as_deref().unwrap_or_default();
                let (bucket, key) = match key_of(start) {
                    Some(n) => (((n / width) as usize).min(count - 1), n),
                    None => (count, 0),
                };
                // The key in front of the line: the sort needs no second parse.
                if let Err(e) = write_keyed(&mut writers[bucket], key, line) {
                    outcome = Err(scratch_error(e));
                    return false;
                }
                spilled += 1;
            }
            _ => {}
        }
        true
    });
    outcome?;

    let mut buckets = Vec::with_capacity(writers.len());
    for writer in writers {
        let mut file = writer
            .into_inner()
            .map_err(|e| scratch_error(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(scratch_error)?;
        buckets.push(file);
    }
    Ok(Spilled {
        buckets,
        relationships: spilled,
    })
}

/// A spilled line: `key<TAB>line<NEWLINE>` (a line of NDJSON holds no newline).
fn write_keyed(writer: &mut impl Write, key: u64, line: &[u8]) -> std::io::Result<()> {
    write!(writer, "{key}\t")?;
    writer.write_all(line)?;
    writer.write_all(b"\n")
}

impl Spilled {
    /// Hand the spilled lines (without their keys) to `sink` in chunks of
    /// whole lines of about `bytes`, each scratch file sorted by start node in
    /// windows of at most `SORT_WINDOW`; `sink` returns false to stop.
    /// Blocking: run it on a blocking thread.
    pub fn read_sorted(self, bytes: usize, mut sink: impl FnMut(Result<Vec<u8>>) -> bool) {
        let io = |e: std::io::Error| io_error(Some(SVC), STEP, "a scratch file", e);
        let mut chunk = Vec::with_capacity(bytes + bytes / 2);
        let mut window = Vec::new();
        let mut order: Vec<(u64, usize, usize)> = Vec::new();
        for file in self.buckets {
            let mut reader = BufReader::new(file);
            loop {
                // One window: whole keyed lines up to SORT_WINDOW bytes.
                window.clear();
                order.clear();
                while window.len() < SORT_WINDOW {
                    let at = window.len();
                    match reader.read_until(b'\n', &mut window) {
                        Ok(0) => break,
                        Ok(_) => match parse_keyed(&window[at..]) {
                            Some((key, skip)) => order.push((key, at + skip, window.len())),
                            None => {
                                sink(Err(Error::failure(
                                    STEP,
                                    "a scratch file holds a line it was not given",
                                )
                                .service(SVC)));
                                return;
                            }
                        },
                        Err(e) => {
                            sink(Err(io(e)));
                            return;
                        }
                    }
                }
                if order.is_empty() {
                    break;
                }
                // Stable: a node's relationships keep their export order.
                order.sort_by_key(|&(key, _, _)| key);
                for &(_, from, to) in &order {
                    chunk.extend_from_slice(&window[from..to]);
                    if chunk.len() >= bytes {
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(bytes + bytes / 2));
                        if !sink(Ok(full)) {
                            return;
                        }
                    }
                }
            }
        }
        if !chunk.is_empty() {
            sink(Ok(chunk));
        }
    }
}

/// The key of a keyed line and where its NDJSON line starts.
fn parse_keyed(keyed: &[u8]) -> Option<(u64, usize)> {
    let tab = keyed.iter().position(|b| *b == b'\t')?;
    let key = std::str::from_utf8(&keyed[..tab]).ok()?.parse().ok()?;
    Some((key, tab + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relationships_come_back_grouped_by_start_node() {
        let dir = tempfile::tempdir().unwrap();
        let export = dir.path().join("export.ndjson.zst");
        let node =
            |n: u32| format!(r#"{{"type":"node","id":"4:db:{n}","labels":[],"props":{{}}}}"#);
        let rel = |id: u32, start: &str| {
            format!(
                r#"{{"type":"rel","id":"5:db:{id}","rel_type":"R","start":"{start}","end":"4:db:0","props":{{}}}}"#
            )
        };
        let mut lines = vec![r#"{"type":"header"}"#.to_string()];
        lines.extend((0..50).map(node));
        let starts = [
            "4:db:40", "4:db:3", "odd", "4:db:40", "4:db:0", "4:db:17", "4:db:3",
        ];
        lines.extend(starts.iter().enumerate().map(|(i, s)| rel(i as u32, s)));
        lines.push(r#"{"type":"end"}"#.to_string());
        let text = lines.join("\n") + "\n";
        std::fs::write(&export, zstd::encode_all(text.as_bytes(), 1).unwrap()).unwrap();

        // Three buckets: start ids 0..17, 17..34, 34..50, then "odd".
        let source = ArtifactSource::File(export.clone());
        let spilled = spill(&source, dir.path(), Some(3 * RELATIONSHIPS_PER_BUCKET)).unwrap();
        assert_eq!(spilled.relationships, 7);
        let mut out = Vec::new();
        spilled.read_sorted(64, |chunk| {
            out.extend(chunk.unwrap());
            true
        });
        let got: Vec<String> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        // Sorted by start (0, 3, 3, 17, 40, 40), ties in export order, "odd" last.
        assert_eq!(
            got,
            ["5:db:4", "5:db:1", "5:db:6", "5:db:5", "5:db:0", "5:db:3", "5:db:2"]
        );
    }
}
