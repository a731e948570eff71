//! The offline check of a logical export: every line decoded, its structure
//! and counts compared, and every record checked for what the load would be
//! refused.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;

use super::*;
use crate::stores::opensearch::SVC;

/// A name OpenSearch takes for an index or data stream (lowercase, none of
/// `\ / * ? " < > | , # :` or spaces, not starting with `_ - +`, at most 255
/// bytes). The restore puts names into request paths (`DELETE <name>`): a
/// wildcard or a path there would reach other indices.
fn valid_index_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.starts_with(['_', '-', '+'])
        && !name.chars().any(|c| {
            c.is_uppercase() || c.is_whitespace() || c.is_control() || "\\/*?\"<>|,#:%".contains(c)
        })
}

/// A template or pipeline name that stays one path segment.
fn valid_object_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "\\/*?#%,".contains(c))
}

/// Full decode of a logical export: every line parsed, the structure and the
/// per-index document counts checked against the trailer and the manifest,
/// and every record checked for what the load would be refused (names
/// OpenSearch does not take, ids longer than it takes, sources that are not
/// objects). Answers what the load needs of the cluster, which the restore
/// compares with the cluster's limits before it changes anything.
pub(crate) fn check_logical(path: &Path, record: &ArtifactRecord) -> Result<LoadNeeds> {
    let step = "verify export";
    let fail = |msg: String| {
        Error::failure(step, format!("{}: {msg}", path.display()))
            .service(SVC)
            .hint("the artifact is truncated or damaged; use another backup")
    };
    let mut first = true;
    let mut ended = false;
    let mut current: Option<(String, u64)> = None;
    let mut total = 0u64;
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    // The data stream whose backing indices come next, and those still to come.
    let mut stream: Option<(String, std::collections::VecDeque<String>)> = None;
    // Where the current index's documents go: (`_bulk` action, target).
    let mut into: (&str, String) = ("index", String::new());
    let mut needs = LoadNeeds::default();
    let mut problem: Option<Error> = None;
    read_records(path, |line| {
        let (number, line) = match line {
            Ok((number, _, line)) => (number, line),
            Err(e) => {
                problem = Some(e);
                return false;
            }
        };
        // What the load would be refused: named with its line.
        let refuse = |msg: String| {
            Error::failure(step, format!("{} line {number}: {msg}", path.display()))
                .service(SVC)
                .hint("the restore would fail on this record after replacing the index; the artifact is damaged or was not written by itbackup; nothing was changed: use another backup")
        };
        let result = (|| {
            if ended {
                return Err(fail("records after the end record".into()));
            }
            if first {
                first = false;
                if line.kind != "header" || line.format.as_deref() != Some(LOGICAL_FORMAT) {
                    return Err(fail(
                        "does not start with an itbackup OpenSearch header".into(),
                    ));
                }
                if line.version != Some(LOGICAL_VERSION) {
                    return Err(fail(format!(
                        "format version {:?} is not supported",
                        line.version
                    )));
                }
                return Ok(());
            }
            let waiting =
                |stream: &Option<(String, std::collections::VecDeque<String>)>| match stream {
                    Some((name, rest)) if !rest.is_empty() => Err(fail(format!(
                        "data stream {name}: backing index {} is missing",
                        rest[0]
                    ))),
                    _ => Ok(()),
                };
            match line.kind.as_str() {
                "data_stream" => {
                    waiting(&stream)?;
                    let name = line.name.clone().unwrap_or_default();
                    if !valid_index_name(&name) {
                        return Err(refuse(format!(
                            "\"{name}\" is not a valid data stream name"
                        )));
                    }
                    let body = line.body.clone().unwrap_or(Value::Null);
                    let backing: std::collections::VecDeque<String> = body["indices"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|i| i.as_str().map(String::from))
                        .collect();
                    // Rollover makes backing indices in generation order:
                    // the restore reaches each so, and only so.
                    let generations: Vec<Option<u64>> = backing
                        .iter()
                        .map(|i| backing_generation(&name, i))
                        .collect();
                    let ordered = generations.windows(2).all(|w| w[0] < w[1]);
                    let last = generations.last().copied().flatten();
                    if name.is_empty()
                        || backing.is_empty()
                        || generations.iter().any(Option::is_none)
                        || !ordered
                        || body["generation"].as_u64().is_some_and(|g| Some(g) != last)
                    {
                        return Err(fail(format!(
                            "data stream {name}: its backing indices {backing:?} are not .ds-{name}-<generation> in generation order up to generation {}",
                            body["generation"]
                        )));
                    }
                    stream = Some((name, backing));
                }
                "index" => {
                    let name = line.name.clone().unwrap_or_default();
                    if !valid_index_name(&name) {
                        return Err(refuse(format!("\"{name}\" is not a valid index name")));
                    }
                    if !line.body.as_ref().is_some_and(Value::is_object) {
                        return Err(refuse(format!("index {name} has no definition")));
                    }
                    into = ("index", name.clone());
                    match &mut stream {
                        Some((stream_name, rest)) if !rest.is_empty() => {
                            if rest.front() != Some(&name) {
                                return Err(fail(format!(
                                    "index {name} where backing index {} of its data stream was expected",
                                    rest[0]
                                )));
                            }
                            rest.pop_front();
                            into = ("create", stream_name.clone());
                        }
                        _ => stream = None,
                    }
                    current = Some((name, 0))
                }
                "doc" => match &mut current {
                    Some((name, n))
                        if line.index.as_deref() == Some(name.as_str())
                            && line.source.is_some() =>
                    {
                        *n += 1;
                        let id = line.id.as_deref().unwrap_or_default();
                        if id.is_empty() || id.len() > MAX_ID_BYTES {
                            return Err(refuse(format!(
                                "document id of {} bytes in index {name}: OpenSearch takes 1 to {MAX_ID_BYTES} bytes",
                                id.len()
                            )));
                        }
                        let source = line.source.as_deref().expect("checked above");
                        if !source.get().trim_start().starts_with('{') {
                            return Err(refuse(format!(
                                "the _source of document \"{id}\" of index {name} is not a JSON object"
                            )));
                        }
                        let action =
                            bulk_action(into.0, &into.1, Some(id), line.routing.as_deref());
                        let entry = bulk_entry_len(&action, source);
                        if entry > needs.largest_entry {
                            needs = LoadNeeds {
                                largest_entry: entry,
                                line: number,
                                index: name.clone(),
                                id: id.to_string(),
                            };
                        }
                    }
                    _ => return Err(fail("a document outside its index".into())),
                },
                "index_end" => {
                    let Some((name, n)) = current.take() else {
                        return Err(fail("an index end without its index".into()));
                    };
                    if line.docs != Some(n) || line.name.as_deref() != Some(name.as_str()) {
                        return Err(fail(format!(
                            "index {name}: {n} documents, the export says {:?}",
                            line.docs
                        )));
                    }
                    total += n;
                    seen.insert(name, n);
                }
                "end" => {
                    waiting(&stream)?;
                    if line.docs != Some(total) || current.is_some() {
                        return Err(fail(
                            "the end record does not match the documents read".into(),
                        ));
                    }
                    ended = true;
                }
                "component_template" | "index_template" | "legacy_template" | "pipeline" => {
                    let name = line.name.as_deref().unwrap_or_default();
                    if !valid_object_name(name) {
                        return Err(refuse(format!(
                            "\"{name}\" is not a valid {} name",
                            line.kind.replace('_', " ")
                        )));
                    }
                }
                other => return Err(fail(format!("unknown record type '{other}'"))),
            }
            Ok(())
        })();
        match result {
            Ok(()) => true,
            Err(e) => {
                problem = Some(e);
                false
            }
        }
    });
    if let Some(e) = problem {
        return Err(e);
    }
    if !ended {
        return Err(fail("the export ends before its end record".into()));
    }
    for (index, want) in &record.counts {
        if seen.get(index) != Some(want) {
            return Err(fail(format!(
                "index {index}: the manifest says {want} documents, the export holds {:?}",
                seen.get(index)
            )));
        }
    }
    Ok(needs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_reach_other_indices_are_not_valid() {
        for name in ["itb-b", ".ds-logs-000001", "a.b_c+d"] {
            assert!(valid_index_name(name), "{name}");
        }
        for name in ["", "*", "_all", "a/b", "A", "a,b", "a?x", "..", "a b", "-x"] {
            assert!(!valid_index_name(name), "{name}");
        }
        assert!(valid_object_name("logs-template"));
        assert!(!valid_object_name("../_all"));
    }
}
