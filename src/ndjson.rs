//! Reading the zstd-compressed NDJSON that the logical methods write, one
//! record at a time, so memory holds a line, never a file.

use std::io::BufRead;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::artifact;
use crate::error::{io_error, Error, Result};
use crate::service::Service;

/// Decode `path` line by line, handing each record to `sink`, which returns
/// false to stop. A damaged line ends the reading with an error naming it.
pub fn read<T: DeserializeOwned>(
    path: &Path,
    service: Service,
    mut sink: impl FnMut(Result<T>) -> bool,
) {
    read_lines(path, service, |line| match line {
        Ok((number, bytes)) => {
            let parsed = serde_json::from_slice::<T>(bytes)
                .map_err(|e| damaged(path, service, number, e.to_string()));
            let failed = parsed.is_err();
            sink(parsed) && !failed
        }
        Err(e) => {
            sink(Err(e));
            false
        }
    })
}

/// Hand each raw line of `path` (without its newline) and its 1-based number
/// to `sink`, which returns false to stop. For readers that decode a line in
/// more than one way, or later than they read it.
pub fn read_lines(
    path: &Path,
    service: Service,
    mut sink: impl FnMut(Result<(usize, &[u8])>) -> bool,
) {
    let mut reader = match artifact::open_zstd(path) {
        Ok(r) => r,
        Err(e) => {
            sink(Err(io_error(Some(service), STEP, path.display(), e)));
            return;
        }
    };
    // One buffer for every line: a line costs no allocation.
    let mut line = Vec::new();
    for number in 1.. {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => return,
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if !sink(Ok((number, &line))) {
                    return;
                }
            }
            Err(e) => {
                sink(Err(damaged(path, service, number, e.to_string())));
                return;
            }
        }
    }
}

/// Hand the lines of `path` to `sink` in chunks of whole lines (each but
/// perhaps the last ending in a newline) of about `bytes`, which returns false
/// to stop: for readers that route lines in bulk to another thread.
pub fn read_chunks(
    path: &Path,
    service: Service,
    bytes: usize,
    mut sink: impl FnMut(Result<Vec<u8>>) -> bool,
) {
    let mut reader = match artifact::open_zstd(path) {
        Ok(r) => r,
        Err(e) => {
            sink(Err(io_error(Some(service), STEP, path.display(), e)));
            return;
        }
    };
    let mut number = 0;
    loop {
        // Lines are read straight into the chunk: no copy per line.
        let mut chunk = Vec::with_capacity(bytes + bytes / 2);
        while chunk.len() < bytes {
            number += 1;
            match reader.read_until(b'\n', &mut chunk) {
                Ok(0) => {
                    if !chunk.is_empty() {
                        sink(Ok(chunk));
                    }
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    sink(Err(damaged(path, service, number, e.to_string())));
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

/// The error for line `number` of `path`, which does not read or decode.
pub fn damaged(path: &Path, service: Service, number: usize, what: String) -> Error {
    Error::failure(
        STEP,
        format!("{} is damaged at line {number}: {what}", path.display()),
    )
    .service(service)
    .hint("the artifact is truncated or damaged; use another backup")
}
