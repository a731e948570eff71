//! The offline check of a logical export: every line decoded as the restore
//! will decode it, the totals against the end record and the manifest.

use crate::artifact::ArtifactSource;
use std::collections::BTreeMap;

use super::props_bolt::TypedProps;
use super::{Record, CHUNK_BYTES, LOGICAL_FORMAT, LOGICAL_VERSION, MAX_LINE, SVC};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;

/// A logical export, decoded in full (offline).
pub(in crate::stores::neo4j) async fn check_logical(
    artifact: &ArtifactSource,
    record: &ArtifactRecord,
) -> Result<()> {
    let source = artifact.clone();
    let record = record.clone();
    crate::stores::blocking(SVC, move || check_export(&source, &record)).await
}

/// Full decode of a logical export: every line parsed and checked, the totals
/// against the end record and the manifest.
fn check_export(path: &ArtifactSource, record: &ArtifactRecord) -> Result<()> {
    let fail = |msg: String| {
        Error::damaged("verify export", format!("{path}: {msg}"))
            .service(SVC)
            .hint("the artifact is truncated or damaged; use another backup")
    };
    // The server waits for this check, so its cores are free: one thread
    // decompresses, the others decode chunks of lines, and the chunks'
    // tallies are put together here in file order.
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 4));
    let (work_tx, work_rx) = std::sync::mpsc::sync_channel::<(usize, Vec<u8>)>(workers * 2);
    let work_rx = std::sync::Mutex::new(work_rx);
    type Tally = std::result::Result<ChunkTally, ChunkError>;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<(usize, Tally)>();
    let read_error = std::sync::Mutex::new(None);
    let (mut nodes, mut rels, mut lines) = (0u64, 0u64, 0usize);
    let mut ended = false;
    std::thread::scope(|scope| -> Result<()> {
        let read_error = &read_error;
        scope.spawn(move || {
            let mut index = 0;
            crate::ndjson::read_chunks(path, SVC, CHUNK_BYTES, MAX_LINE, |chunk| match chunk {
                Ok(chunk) => {
                    index += 1;
                    work_tx.send((index - 1, chunk)).is_ok()
                }
                Err(e) => {
                    if let Ok(mut slot) = read_error.lock() {
                        *slot = Some(e);
                    }
                    false
                }
            });
        });
        for _ in 0..workers {
            let done = done_tx.clone();
            let work = &work_rx;
            scope.spawn(move || loop {
                let next = work.lock().map(|rx| rx.recv());
                let Ok(Ok((index, chunk))) = next else { return };
                if done.send((index, tally_chunk(index, &chunk))).is_err() {
                    return;
                }
            });
        }
        drop(done_tx);
        let mut waiting = BTreeMap::new();
        let mut next = 0;
        for (index, tally) in done_rx {
            waiting.insert(index, tally);
            while let Some(tally) = waiting.remove(&next) {
                next += 1;
                let tally = tally.map_err(|e| match e.kind {
                    ChunkProblem::Damaged(local) => {
                        crate::ndjson::damaged(path, SVC, lines + local, e.message)
                    }
                    ChunkProblem::Content => fail(e.message),
                })?;
                if ended && tally.lines > 0 {
                    return Err(fail("records after the end record".into()));
                }
                nodes += tally.nodes;
                rels += tally.rels;
                lines += tally.lines;
                if let Some((end_nodes, end_rels)) = tally.end {
                    if end_nodes != Some(nodes) || end_rels != Some(rels) {
                        return Err(fail(format!("{nodes} nodes and {rels} relationships read, the end record says {end_nodes:?} and {end_rels:?}")));
                    }
                    ended = true;
                }
            }
        }
        match read_error.lock().ok().and_then(|mut slot| slot.take()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })?;
    if !ended {
        return Err(fail("the export ends before its end record".into()));
    }
    for (key, want) in [("nodes", nodes), ("relationships", rels)] {
        if record.counts.get(key).is_some_and(|n| *n != want) {
            return Err(fail(format!(
                "the manifest says {:?} {key}, the export holds {want}",
                record.counts.get(key)
            )));
        }
    }
    Ok(())
}

/// What one chunk of an export's lines holds, for the checks that depend on
/// the lines before it.
#[derive(Default)]
struct ChunkTally {
    lines: usize,
    nodes: u64,
    rels: u64,
    /// The end record's counts, if the chunk holds it (as its last line).
    end: Option<(Option<u64>, Option<u64>)>,
}

struct ChunkError {
    kind: ChunkProblem,
    message: String,
}

enum ChunkProblem {
    /// The line at this place in the chunk (1-based) does not decode.
    Damaged(usize),
    /// The lines decode but do not make an export.
    Content,
}

/// Decode every line of the chunk at `index` as the restore will decode it,
/// properties included (what passes here, the restore can load), and count
/// what it holds.
fn tally_chunk(index: usize, chunk: &[u8]) -> std::result::Result<ChunkTally, ChunkError> {
    let content = |message: String| ChunkError {
        kind: ChunkProblem::Content,
        message,
    };
    let mut tally = ChunkTally::default();
    for bytes in chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        tally.lines += 1;
        let line: Record<TypedProps> = serde_json::from_slice(bytes).map_err(|e| ChunkError {
            kind: ChunkProblem::Damaged(tally.lines),
            message: e.to_string(),
        })?;
        if tally.end.is_some() {
            return Err(content("records after the end record".into()));
        }
        if index == 0 && tally.lines == 1 {
            if line.kind == "header"
                && line.format.as_deref() == Some(LOGICAL_FORMAT)
                && line.version == Some(LOGICAL_VERSION)
            {
                continue;
            }
            return Err(content(
                "does not start with an itbackup Neo4j header of a supported version".into(),
            ));
        }
        match line.kind.as_ref() {
            "node" => tally.nodes += 1,
            "rel" if line.start.is_some() && line.end.is_some() && line.rel_type.is_some() => {
                tally.rels += 1
            }
            "rel" => return Err(content("a relationship without type or endpoints".into())),
            "constraint" | "index" if line.statement.is_some() => {}
            "end" => tally.end = Some((line.nodes, line.relationships)),
            other => return Err(content(format!("unexpected record '{other}'"))),
        }
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Service;

    /// An export of `nodes` nodes spanning several chunks, `extra` lines
    /// appended after its end record, checked as the restore checks it.
    fn check_written_export(nodes: u64, stated: u64, extra: &[&str]) -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("neo4j.ndjson.zst");
        let mut text = format!(
            "{{\"type\":\"header\",\"format\":\"{LOGICAL_FORMAT}\",\"version\":{LOGICAL_VERSION}}}\n"
        );
        for n in 0..nodes {
            text += &format!("{{\"type\":\"node\",\"id\":\"4:db:{n}\",\"labels\":[\"L\"],\"props\":{{\"s\":[\"STRING\",\"{}\"]}}}}\n", "x".repeat(90));
        }
        text += &format!("{{\"type\":\"end\",\"nodes\":{stated},\"relationships\":0}}\n");
        for line in extra {
            text += line;
            text += "\n";
        }
        std::fs::write(&path, zstd::encode_all(text.as_bytes(), 1).unwrap()).unwrap();
        let mut record = crate::manifest::tests::sample().artifacts[&Service::Postgres].clone();
        record.counts.clear();
        check_export(&ArtifactSource::File(path.clone()), &record)
    }

    #[test]
    fn verification_follows_the_export_across_chunks() {
        // 6,000 lines of ~150 bytes: several chunks, decoded in parallel.
        check_written_export(6000, 6000, &[]).unwrap();
        let wrong = check_written_export(6000, 5999, &[])
            .unwrap_err()
            .to_string();
        assert!(
            wrong.contains("6000 nodes and 0 relationships read"),
            "{wrong}"
        );
        let after = check_written_export(
            6000,
            6000,
            &[r#"{"type":"node","id":"4:db:x","labels":[]}"#],
        )
        .unwrap_err()
        .to_string();
        assert!(after.contains("records after the end record"), "{after}");
        let damaged = check_written_export(6000, 6000, &["{not json"])
            .unwrap_err()
            .to_string();
        assert!(damaged.contains("damaged at line 6003"), "{damaged}");
    }
}
