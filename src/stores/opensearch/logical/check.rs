//! The offline check of a logical export: every line decoded, its structure
//! and counts compared, and every record checked for what the load would be
//! refused.

use crate::artifact::ArtifactSource;
use std::collections::{BTreeMap, VecDeque};

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
pub(crate) fn check_logical(path: &ArtifactSource, record: &ArtifactRecord) -> Result<LoadNeeds> {
    let mut check = ExportCheck::new(path);
    let mut problem: Option<Error> = None;
    read_records(path, |line| {
        let result = match line {
            Ok((number, _, line)) => check.line(number, line),
            Err(e) => Err(e),
        };
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
    check.finish(record)
}

/// What [`check_logical`] knows while it reads an export, line by line.
struct ExportCheck<'p> {
    path: &'p ArtifactSource,
    first: bool,
    ended: bool,
    /// The index whose documents are being read, and how many so far.
    current: Option<(String, u64)>,
    total: u64,
    seen: BTreeMap<String, u64>,
    /// The data stream whose backing indices come next, and those still to come.
    stream: Option<(String, VecDeque<String>)>,
    /// Where the current index's documents go: (`_bulk` action, target).
    into: (&'static str, String),
    needs: LoadNeeds,
}

const STEP: &str = "verify export";

impl<'p> ExportCheck<'p> {
    fn new(path: &'p ArtifactSource) -> Self {
        ExportCheck {
            path,
            first: true,
            ended: false,
            current: None,
            total: 0,
            seen: BTreeMap::new(),
            stream: None,
            into: ("index", String::new()),
            needs: LoadNeeds::default(),
        }
    }

    /// The export is damaged: its structure is not what itbackup writes.
    fn fail(&self, msg: String) -> Error {
        Error::damaged(STEP, format!("{}: {msg}", self.path))
            .service(SVC)
            .hint("the artifact is truncated or damaged; use another backup")
    }

    /// What the load would be refused: named with its line.
    fn refuse(&self, number: usize, msg: String) -> Error {
        Error::damaged(STEP, format!("{} line {number}: {msg}", self.path))
            .service(SVC)
            .hint("the restore would fail on this record after replacing the index; the artifact is damaged or was not written by itbackup; nothing was changed: use another backup")
    }

    fn line(&mut self, number: usize, line: Line) -> Result<()> {
        if self.ended {
            return Err(self.fail("records after the end record".into()));
        }
        if self.first {
            self.first = false;
            return self.header(&line);
        }
        match line.kind.as_str() {
            "data_stream" => self.data_stream(number, &line),
            "index" => self.index(number, &line),
            "doc" => self.doc(number, &line),
            "index_end" => self.index_end(&line),
            "end" => {
                self.waiting()?;
                if line.docs != Some(self.total) || self.current.is_some() {
                    return Err(
                        self.fail("the end record does not match the documents read".into())
                    );
                }
                self.ended = true;
                Ok(())
            }
            "component_template" | "index_template" | "legacy_template" | "pipeline" => {
                let name = line.name.as_deref().unwrap_or_default();
                if !valid_object_name(name) {
                    return Err(self.refuse(
                        number,
                        format!(
                            "\"{name}\" is not a valid {} name",
                            line.kind.replace('_', " ")
                        ),
                    ));
                }
                Ok(())
            }
            other => Err(self.fail(format!("unknown record type '{other}'"))),
        }
    }

    fn header(&self, line: &Line) -> Result<()> {
        if line.kind != "header" || line.format.as_deref() != Some(LOGICAL_FORMAT) {
            return Err(self.fail("does not start with an itbackup OpenSearch header".into()));
        }
        if line.version != Some(LOGICAL_VERSION) {
            return Err(self.fail(format!(
                "format version {:?} is not supported",
                line.version
            )));
        }
        Ok(())
    }

    /// A data stream whose backing indices have not all come yet is damaged.
    fn waiting(&self) -> Result<()> {
        match &self.stream {
            Some((name, rest)) if !rest.is_empty() => Err(self.fail(format!(
                "data stream {name}: backing index {} is missing",
                rest[0]
            ))),
            _ => Ok(()),
        }
    }

    fn data_stream(&mut self, number: usize, line: &Line) -> Result<()> {
        self.waiting()?;
        let name = line.name.clone().unwrap_or_default();
        if !valid_index_name(&name) {
            return Err(self.refuse(
                number,
                format!("\"{name}\" is not a valid data stream name"),
            ));
        }
        let body = line.body.clone().unwrap_or(Value::Null);
        let backing: VecDeque<String> = body["indices"]
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
            return Err(self.fail(format!(
                "data stream {name}: its backing indices {backing:?} are not .ds-{name}-<generation> in generation order up to generation {}",
                body["generation"]
            )));
        }
        self.stream = Some((name, backing));
        Ok(())
    }

    fn index(&mut self, number: usize, line: &Line) -> Result<()> {
        let name = line.name.clone().unwrap_or_default();
        if !valid_index_name(&name) {
            return Err(self.refuse(number, format!("\"{name}\" is not a valid index name")));
        }
        if !line.body.as_ref().is_some_and(Value::is_object) {
            return Err(self.refuse(number, format!("index {name} has no definition")));
        }
        self.into = ("index", name.clone());
        let expected = match &self.stream {
            Some((_, rest)) if !rest.is_empty() => Some(rest[0].clone()),
            _ => None,
        };
        match expected {
            Some(expected) => {
                if expected != name {
                    return Err(self.fail(format!(
                        "index {name} where backing index {expected} of its data stream was expected"
                    )));
                }
                let (stream_name, rest) = self.stream.as_mut().expect("a stream is waiting");
                rest.pop_front();
                self.into = ("create", stream_name.clone());
            }
            None => self.stream = None,
        }
        self.current = Some((name, 0));
        Ok(())
    }

    fn doc(&mut self, number: usize, line: &Line) -> Result<()> {
        let Some((name, n)) = self.current.as_mut().filter(|(name, _)| {
            line.index.as_deref() == Some(name.as_str()) && line.source.is_some()
        }) else {
            return Err(self.fail("a document outside its index".into()));
        };
        *n += 1;
        let name = name.clone();
        let id = line.id.as_deref().unwrap_or_default();
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(self.refuse(
                number,
                format!(
                    "document id of {} bytes in index {name}: OpenSearch takes 1 to {MAX_ID_BYTES} bytes",
                    id.len()
                ),
            ));
        }
        let source = line.source.as_deref().expect("checked above");
        if !source.get().trim_start().starts_with('{') {
            return Err(self.refuse(
                number,
                format!("the _source of document \"{id}\" of index {name} is not a JSON object"),
            ));
        }
        let action = bulk_action(self.into.0, &self.into.1, Some(id), line.routing.as_deref());
        let entry = bulk_entry_len(&action, source);
        if entry > self.needs.largest_entry {
            self.needs = LoadNeeds {
                largest_entry: entry,
                line: number,
                index: name,
                id: id.to_string(),
            };
        }
        Ok(())
    }

    fn index_end(&mut self, line: &Line) -> Result<()> {
        let Some((name, n)) = self.current.take() else {
            return Err(self.fail("an index end without its index".into()));
        };
        if line.docs != Some(n) || line.name.as_deref() != Some(name.as_str()) {
            return Err(self.fail(format!(
                "index {name}: {n} documents, the export says {:?}",
                line.docs
            )));
        }
        self.total += n;
        self.seen.insert(name, n);
        Ok(())
    }

    /// After the last line: the export must have ended, and hold the counts
    /// the manifest recorded.
    fn finish(self, record: &ArtifactRecord) -> Result<LoadNeeds> {
        if !self.ended {
            return Err(self.fail("the export ends before its end record".into()));
        }
        for (index, want) in &record.counts {
            if self.seen.get(index) != Some(want) {
                return Err(self.fail(format!(
                    "index {index}: the manifest says {want} documents, the export holds {:?}",
                    self.seen.get(index)
                )));
            }
        }
        Ok(self.needs)
    }
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
