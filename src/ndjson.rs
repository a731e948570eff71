//! Reading the zstd-compressed NDJSON that the logical methods write, one
//! record at a time, so memory holds a line, never a file.
//!
//! Every reader takes the longest line it accepts (`max_line`, the store's
//! bound for one record, shared by its export, its verification and its
//! load): a longer line is refused when it is met, without being held whole.

use std::fmt::Display;
use std::io::{self, BufRead, Read};

use crate::artifact::ArtifactSource;
use crate::error::{io_error, Error, Result};
use crate::service::Service;

/// Hand each raw line of `path` (without its newline) and its 1-based number
/// to `sink`, which returns false to stop. For readers that decode a line in
/// more than one way, or later than they read it.
pub fn read_lines(
    source: &ArtifactSource,
    service: Service,
    max_line: usize,
    mut sink: impl FnMut(Result<(usize, &[u8])>) -> bool,
) {
    let mut reader = match source.open_zstd() {
        Ok(r) => r,
        Err(e) => {
            sink(Err(io_error(Some(service), STEP, source, e)));
            return;
        }
    };
    // One buffer for every line: a line costs no allocation.
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        match (&mut reader)
            .take(limit(max_line))
            .read_until(b'\n', &mut line)
        {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                } else if line.len() > max_line {
                    sink(Err(too_long(source, service, number, max_line)));
                    return;
                }
                if !sink(Ok((number, &line))) {
                    return;
                }
            }
            Err(e) => {
                sink(Err(read_failed(source, service, number, e)));
                return;
            }
        }
    }
}

/// Hand the lines of `path` to `sink` in chunks of whole lines (each but
/// perhaps the last ending in a newline) of about `bytes`, which returns false
/// to stop: for readers that route lines in bulk to another thread.
pub fn read_chunks(
    source: &ArtifactSource,
    service: Service,
    bytes: usize,
    max_line: usize,
    mut sink: impl FnMut(Result<Vec<u8>>) -> bool,
) {
    let mut reader = match source.open_zstd() {
        Ok(r) => r,
        Err(e) => {
            sink(Err(io_error(Some(service), STEP, source, e)));
            return;
        }
    };
    let mut number = 0;
    loop {
        // Lines are read straight into the chunk: no copy per line.
        let mut chunk = Vec::with_capacity(bytes + bytes / 2);
        while chunk.len() < bytes {
            number += 1;
            let start = chunk.len();
            match (&mut reader)
                .take(limit(max_line))
                .read_until(b'\n', &mut chunk)
            {
                Ok(0) => {
                    if !chunk.is_empty() {
                        sink(Ok(chunk));
                    }
                    return;
                }
                Ok(_) if chunk.last() != Some(&b'\n') && chunk.len() - start > max_line => {
                    sink(Err(too_long(source, service, number, max_line)));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    sink(Err(read_failed(source, service, number, e)));
                    return;
                }
            }
        }
        if !sink(Ok(chunk)) {
            return;
        }
    }
}

const STEP: &str = "read export";

/// How much one read may take: a line of `max_line` bytes and its newline,
/// or one byte more, which tells a longer line.
fn limit(max_line: usize) -> u64 {
    max_line as u64 + 1
}

/// The error for line `number` of `path`, longer than `max_line` bytes.
pub fn too_long(path: impl Display, service: Service, number: usize, max_line: usize) -> Error {
    Error::damaged(
        STEP,
        format!(
            "{} line {number} is longer than {} ({max_line} bytes), the most a {service} restore loads as one record",
            path,
            crate::human::size(max_line as u64)
        ),
    )
    .service(service)
    .hint("itbackup never exports such a line (the backup refuses it), so the artifact is damaged or was not written by itbackup; nothing was changed: use another backup")
}

/// The error for line `number` of `path`, which does not read or decode.
pub fn damaged(path: impl Display, service: Service, number: usize, what: String) -> Error {
    Error::damaged(STEP, format!("{path} is damaged at line {number}: {what}"))
        .service(service)
        .hint("the artifact is truncated or damaged; use another backup")
}

/// A read that failed at line `number`: the repository's own error when the
/// artifact streams from one (unreachable, or an object that is not the one
/// the manifest names), else a damaged artifact.
fn read_failed(source: &ArtifactSource, service: Service, number: usize, e: io::Error) -> Error {
    match crate::error::carried(e) {
        Ok(carried) => carried.service(service),
        Err(e) => damaged(source, service, number, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_longer_than_the_bound_is_refused_without_being_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.ndjson.zst");
        let text = format!("{{\"a\":1}}\n\"{}\"\n{{\"b\":2}}\n", "x".repeat(5000));
        std::fs::write(&path, zstd::encode_all(text.as_bytes(), 1).unwrap()).unwrap();
        let mut seen = Vec::new();
        let mut error = None;
        read_lines(
            &ArtifactSource::File(path.clone()),
            Service::Opensearch,
            1000,
            |line| match line {
                Ok((number, bytes)) => {
                    seen.push((number, bytes.len()));
                    true
                }
                Err(e) => {
                    error = Some(e.message);
                    false
                }
            },
        );
        assert_eq!(seen, [(1, 7)]);
        assert!(error.unwrap().contains("line 2 is longer than"));
        let mut chunks = 0;
        let mut error = None;
        read_chunks(
            &ArtifactSource::File(path.clone()),
            Service::Neo4j,
            64,
            1000,
            |chunk| match chunk {
                Ok(_) => {
                    chunks += 1;
                    true
                }
                Err(e) => {
                    error = Some(e.message);
                    false
                }
            },
        );
        assert!(error.unwrap().contains("line 2 is longer than"));
        let mut lines = 0;
        read_lines(
            &ArtifactSource::File(path.clone()),
            Service::Opensearch,
            6000,
            |line| {
                lines += usize::from(line.is_ok());
                true
            },
        );
        assert_eq!(lines, 3, "a line within the bound is read whole");
    }
}
