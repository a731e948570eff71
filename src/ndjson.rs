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
    let step = "read export";
    let reader = match artifact::open_zstd(path) {
        Ok(r) => r,
        Err(e) => {
            sink(Err(io_error(Some(service), step, path.display(), e)));
            return;
        }
    };
    let damaged = |number: usize, what: String| {
        Error::failure(
            step,
            format!("{} is damaged at line {number}: {what}", path.display()),
        )
        .service(service)
        .hint("the artifact is truncated or damaged; use another backup")
    };
    for (index, line) in reader.split(b'\n').enumerate() {
        let parsed = line
            .map_err(|e| damaged(index + 1, e.to_string()))
            .and_then(|bytes| {
                serde_json::from_slice::<T>(&bytes).map_err(|e| damaged(index + 1, e.to_string()))
            });
        let failed = parsed.is_err();
        if !sink(parsed) || failed {
            return;
        }
    }
}
